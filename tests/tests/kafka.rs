//! End-to-end: librdkafka's mock cluster (the real protocol over real TCP) driven by two
//! independent clients, kafka-python and kcat, counted from both ends exactly.

use std::time::Duration;

use harness::{kcat, python_kafka_client, wait_for_metric, Agent, MockKafka};

const CLIENT: &str = "messaging_client_operation_duration_seconds_count";
const SERVER: &str = "messaging_server_operation_duration_seconds_count";
const WAIT: Duration = Duration::from_secs(15);

#[test]
fn produce_and_consume_are_counted_per_topic() {
    let kafka = MockKafka::start();
    let agent = Agent::start(&[]).unwrap();
    let port = kafka.port().to_string();
    // kafka-python: five messages, each sent and acknowledged on its own (one Produce each).
    let out = python_kafka_client(
        &kafka,
        r#"
import os
from kafka import KafkaProducer
p = KafkaProducer(bootstrap_servers=os.environ["BOOTSTRAP"], acks=1, api_version=(2, 0, 0), linger_ms=0)
for i in range(5):
    p.send("orders", b"order %d" % i, partition=0).get(timeout=10)
p.close()
print("sent")
"#,
    )
    .unwrap();
    assert_eq!(out.trim(), "sent");
    let orders = [
        ("server_port", port.as_str()),
        ("messaging_system", "kafka"),
        ("messaging_destination_name", "orders"),
    ];
    let send = [
        orders[0],
        orders[1],
        orders[2],
        ("messaging_operation_name", "send"),
    ];
    wait_for_metric(&agent, CLIENT, &send, 5.0, WAIT).unwrap();
    wait_for_metric(&agent, SERVER, &send, 5.0, WAIT).unwrap();
    wait_for_metric(
        &agent,
        "messaging_client_sent_messages_total",
        &orders,
        5.0,
        WAIT,
    )
    .unwrap();
    wait_for_metric(
        &agent,
        "messaging_server_received_messages_total",
        &orders,
        5.0,
        WAIT,
    )
    .unwrap();

    // kcat: three more messages (however it batches them), then read all eight back.
    kcat(&kafka, &["-P", "-t", "orders", "-p", "0"], "a\nb\nc\n").unwrap();
    wait_for_metric(
        &agent,
        "messaging_client_sent_messages_total",
        &orders,
        8.0,
        WAIT,
    )
    .unwrap();
    let read = kcat(
        &kafka,
        &[
            "-C",
            "-t",
            "orders",
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-q",
        ],
        "",
    )
    .unwrap();
    assert_eq!(read.lines().count(), 8, "{read}");
    wait_for_metric(
        &agent,
        "messaging_client_consumed_messages_total",
        &orders,
        8.0,
        WAIT,
    )
    .unwrap();
    let m = agent.metrics();
    let receive = [
        orders[0],
        orders[2],
        ("messaging_operation_name", "receive"),
    ];
    assert!(m.sum(CLIENT, &receive) >= 1.0, "{}", m.text());
    assert!(m.sum(SERVER, &receive) >= 1.0);
    assert_eq!(
        m.sum("periscope_parse_errors_total", &[("protocol", "kafka")]),
        0.0
    );
}

#[test]
fn broker_errors_become_error_type() {
    let kafka = MockKafka::start();
    kcat(&kafka, &["-P", "-t", "events", "-p", "0"], "x\n").unwrap();
    let agent = Agent::start(&[]).unwrap();
    // Fetching far past the end of the partition: the broker answers OFFSET_OUT_OF_RANGE.
    let _ = kcat(
        &kafka,
        &["-C", "-t", "events", "-p", "0", "-o", "1000", "-e", "-q"],
        "",
    );
    let port = kafka.port().to_string();
    let failed = [
        ("server_port", port.as_str()),
        ("messaging_destination_name", "events"),
        ("error_type", "OFFSET_OUT_OF_RANGE"),
    ];
    harness::wait_until(WAIT, Duration::from_millis(100), || {
        agent.metrics().sum(CLIENT, &failed) >= 1.0
    });
    let m = agent.metrics();
    assert!(m.sum(CLIENT, &failed) >= 1.0, "{}", m.text());
    assert!(m.sum(SERVER, &failed) >= 1.0);
}
