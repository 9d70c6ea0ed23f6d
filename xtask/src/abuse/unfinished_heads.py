# `cargo xtask abuse hostile`: hostile connections held open, so that both ends' decoders keep
# what they were sent. argv: N SIZE HOLD PG_PORT PARSE_CONNS PARSES NAME_BYTES
# - N loopback connections to an asyncio server that reads (and keeps) everything: half write
#   an HTTP request head of SIZE bytes that never ends, half a Kafka Produce frame that
#   announces 1 MiB and sends SIZE bytes of it;
# - PARSE_CONNS connections to PostgreSQL (port PG_PORT, user postgres, trust) that each send
#   PARSES Parse messages with NAME_BYTES-byte statement names and never a Sync.
# Prints "held" once everything is written, then holds it for HOLD seconds.
import asyncio, socket, struct, sys

n, size, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
pg_port, parse_conns, parses, name_bytes = (int(a) for a in sys.argv[4:8])


def http_head():
    return b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (size - 36)


def kafka_frame():
    # Produce v7: size, api_key 0, api_version 7, correlation id, client id "hostile", then
    # transactional id null, acks -1, timeout, and padding that never completes the frame.
    header = struct.pack("!hhih", 0, 7, 1, 7) + b"hostile" + struct.pack("!hhi", -1, -1, 30000)
    body = header + b"\x00" * (size - len(header) - 4)
    return struct.pack("!i", 1 << 20) + body


def pg_message(kind, body):
    return kind + struct.pack("!I", len(body) + 4) + body


def pg_connect():
    s = socket.create_connection(("127.0.0.1", pg_port))
    params = b"user\0postgres\0database\0postgres\0\0"
    body = struct.pack("!I", 196608) + params
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    seen = b""
    while b"Z\x00\x00\x00\x05" not in seen:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("PostgreSQL closed the connection during start-up")
        seen += chunk
    return s


async def main():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(http_head() if i % 2 == 0 else kafka_frame())
        conns.append(s)
        if i % 200 == 0:
            await asyncio.sleep(0.01)
    for c in range(parse_conns):
        s = pg_connect()
        for i in range(parses):
            name = b"%04d" % i + b"n" * name_bytes
            s.sendall(pg_message(b"P", name + b"\0SELECT 1\0" + struct.pack("!H", 0)))
        conns.append(s)
    print("held", flush=True)
    await asyncio.sleep(hold)


asyncio.run(main())
