"""Kafka produce at a fixed rate for `cargo xtask abuse` (kafka-python, one Produce per
message, each acknowledged before the next).

argv: bootstrap topic rate seconds [random]
With `random`, every message goes to a new topic t_<10 random letters>. Prints `sent N`.
"""
import random
import sys
import time

from kafka import KafkaProducer

bootstrap, topic, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
random_topics = len(sys.argv) > 5 and sys.argv[5] == "random"
producer = KafkaProducer(
    bootstrap_servers=bootstrap, acks=1, api_version=(2, 0, 0), linger_ms=0
)
sent = 0
start = time.monotonic()
while True:
    due = start + sent / rate
    if due - start >= seconds:
        break
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    name = topic
    if random_topics:
        name = "t_" + "".join(random.choice("ghijklmnopqrstuvwxyz") for _ in range(10))
    producer.send(name, b"m%d" % sent, partition=0).get(timeout=30)
    sent += 1
producer.close()
print(f"sent {sent}", flush=True)
