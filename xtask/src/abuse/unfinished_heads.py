# `cargo xtask abuse hostile`: N loopback connections, each writing a request head of SIZE
# bytes that never ends, to an asyncio server that reads (and keeps) them, so that both ends'
# decoders hold the bytes. Prints "held" once every head is written, then holds them for
# HOLD seconds.
import asyncio, socket, sys

n, size, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])


async def main():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (size - 36)
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(head)
        conns.append(s)
        if i % 200 == 0:
            await asyncio.sleep(0.01)
    print("held", flush=True)
    await asyncio.sleep(hold)


asyncio.run(main())
