"""HTTP/1.1 GETs at a fixed rate for `cargo xtask abuse`.

argv: port rate seconds per_connection [random]
Sends `rate` requests a second for `seconds` over keep-alive connections, opening a new one
after every `per_connection` requests (1: a connection per request). With `random`, every
path is /u/<10 random letters g-z> (never an id to the route templating, so each is a new
route). Prints `responses N errors E` at the end: N complete responses read.
"""
import random
import socket
import sys
import time

port, rate, seconds, per_connection = (
    int(sys.argv[1]),
    float(sys.argv[2]),
    float(sys.argv[3]),
    int(sys.argv[4]),
)
random_paths = len(sys.argv) > 5 and sys.argv[5] == "random"
LETTERS = "ghijklmnopqrstuvwxyz"


def read_response(sock, pending):
    """Reads one response (headers + Content-Length body); returns leftover bytes."""
    data = pending
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    return rest[length:]


responses = errors = 0
sock = None
on_this = 0
pending = b""
start = time.monotonic()
i = 0
while True:
    due = start + i / rate
    now = time.monotonic()
    if due - start >= seconds:
        break
    if due > now:
        time.sleep(due - now)
    i += 1
    try:
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port))
            on_this, pending = 0, b""
        if random_paths:
            path = "/u/" + "".join(random.choice(LETTERS) for _ in range(10))
        else:
            path = "/soak"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        pending = read_response(sock, pending)
        responses += 1
        on_this += 1
        if on_this >= per_connection:
            sock.close()
            sock = None
    except OSError:
        errors += 1
        if sock is not None:
            sock.close()
        sock = None
if sock is not None:
    sock.close()
print(f"responses {responses} errors {errors}", flush=True)
