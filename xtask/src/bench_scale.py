"""The workload of `cargo xtask bench scale`: many open connections in many processes.

Usage: bench_scale.py <connections> <processes> <seconds> <cgroup root or ->

An asyncio HTTP/1.1 server (this process) and <processes> client processes (forked), each
in a cgroup of its own under <cgroup root> (cgroup v2; `-` for none), together holding
<connections> keep-alive connections to the server (so twice as many sockets). Each client
connection sends one request at start-up. Then, on stdin:

- `idle\n`: nothing happens for a while (the caller measures);
- `active\n`: every connection sends one request per second for <seconds> s;
- `quit\n`: everyone exits.

After start-up and after each phase a line goes to stdout: `ready <requests>`, `done
<requests>` (requests answered so far, all clients together).
"""

import asyncio
import os
import resource
import signal
import socket
import sys

connections, processes, seconds = (int(a) for a in sys.argv[1:4])
cgroup_root = sys.argv[4]
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
REQUEST = b"GET /scale HTTP/1.1\r\nHost: scale\r\n\r\n"

_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = max(hard, 4 * connections + 1024)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
except (ValueError, OSError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                return
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def one_request(reader, writer):
    writer.write(REQUEST)
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(2)


def client(index, port, count, to_parent, from_parent):
    """One client process: `count` connections; answers the parent's phases."""
    if cgroup_root != "-":
        path = os.path.join(cgroup_root, f"c{index}")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    async def main():
        conns = []
        for _ in range(count):
            conns.append(await asyncio.open_connection("127.0.0.1", port))
        answered = 0
        for r, w in conns:
            await one_request(r, w)
            answered += 1
        os.write(to_parent, f"{answered}\n".encode())
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, os.read, from_parent, 64)
            if not command or command.startswith(b"quit"):
                return
            if command.startswith(b"active"):
                done = 0
                for _ in range(seconds):
                    tick = loop.time()
                    await asyncio.gather(*(one_request(r, w) for r, w in conns))
                    done += len(conns)
                    await asyncio.sleep(max(0.0, 1.0 - (loop.time() - tick)))
                os.write(to_parent, f"{done}\n".encode())

    asyncio.run(main())
    os._exit(0)


def fork_clients(port):
    """Forks the clients before any event loop runs (a child of a running loop cannot start
    its own)."""
    children = []
    per = [connections // processes + (1 if i < connections % processes else 0)
           for i in range(processes)]
    for index, count in enumerate(per):
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(up_r)
            os.close(down_w)
            listener.close()
            client(index, port, count, up_w, down_r)
        os.close(up_w)
        os.close(down_r)
        children.append((pid, up_r, down_w))
    return children


async def parent(children):
    server = await asyncio.start_server(serve, sock=listener)
    loop = asyncio.get_running_loop()

    async def collect():
        total = 0
        for _, up, _ in children:
            line = await loop.run_in_executor(None, os.read, up, 64)
            total += int(line.decode().strip() or 0)
        return total

    print(f"ready {await collect()}", flush=True)
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if command == "active":
            for _, _, down in children:
                os.write(down, b"active\n")
            print(f"done {await collect()}", flush=True)
        elif command == "idle":
            print("done 0", flush=True)
        else:
            break
    for pid, _, down in children:
        os.write(down, b"quit\n")
    for pid, _, _ in children:
        os.waitpid(pid, 0)
    server.close()
    # The connection handlers are still waiting: leave without cancelling them one by one.
    sys.stdout.flush()
    os._exit(0)


signal.signal(signal.SIGPIPE, signal.SIG_DFL)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(65535)
asyncio.run(parent(fork_clients(listener.getsockname()[1])))
