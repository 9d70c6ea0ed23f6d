"""A TLS-terminating proxy in front of a plaintext Kafka broker, for the Kafka-over-SSL test.

librdkafka's mock cluster has no SSL listener, and a plain TLS proxy is not enough: Metadata
and FindCoordinator answers name the broker's own (plaintext) address, which clients then
connect to. So the proxy rewrites the broker's port after its host in every answer to its own
port (an int32 in place: no length changes). Threads and sockets wrapped by `ssl`, not
asyncio: asyncio's TLS goes through memory BIOs, which Periscope does not attribute (see the
README's TLS section). Usage: kafka_tls_proxy.py <broker port> <cert> <key>; prints
`PORT <n>` once listening.
"""
import socket
import ssl
import struct
import sys
import threading

BROKER_HOST = b"127.0.0.1"


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def pump(src, dst, rewrite):
    try:
        while True:
            head = read_exactly(src, 4)
            (size,) = struct.unpack(">i", head)
            body = read_exactly(src, size)
            if rewrite:
                body = rewrite(body)
            dst.sendall(head + body)
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    broker_port = int(sys.argv[1])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    listener = socket.create_server(("127.0.0.1", 0))
    own_port = listener.getsockname()[1]
    # The host as a classic (int16 length) and a compact (varint length + 1) string.
    hosts = [struct.pack(">h", len(BROKER_HOST)) + BROKER_HOST, bytes([len(BROKER_HOST) + 1]) + BROKER_HOST]

    def rewrite(body):
        for host in hosts:
            body = body.replace(host + struct.pack(">i", broker_port), host + struct.pack(">i", own_port))
        return body

    def serve(raw):
        try:
            client = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        broker = socket.create_connection(("127.0.0.1", broker_port))
        threading.Thread(target=pump, args=(client, broker, None), daemon=True).start()
        pump(broker, client, rewrite)

    print(f"PORT {own_port}", flush=True)
    while True:
        raw, _ = listener.accept()
        threading.Thread(target=serve, args=(raw,), daemon=True).start()


main()
