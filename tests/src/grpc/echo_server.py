"""A gRPC server on grpcio for the end-to-end tests: generic handlers, raw-bytes messages, no
generated stubs. Say echoes; Lookup aborts NOT_FOUND (a Trailers-Only response); Slow sleeps
300 ms; Stream answers five messages; Collect sums a client stream; Chat echoes a bidi stream;
Big answers as many bytes as asked; Nap sleeps 50 ms. Usage: echo_server.py PORT"""
import sys, time
from concurrent import futures
import grpc

def say(req, ctx): return req
def lookup(req, ctx): ctx.abort(grpc.StatusCode.NOT_FOUND, "nope")
def slow(req, ctx):
    time.sleep(0.3)
    return req
def stream(req, ctx):
    for i in range(5): yield req + bytes([i])
def collect(reqs, ctx): return b"%d" % sum(len(r) for r in reqs)
def chat(reqs, ctx):
    for r in reqs: yield r
def big(req, ctx): return b"r" * int(req)
def nap(req, ctx):
    time.sleep(0.05)
    return req

ident = lambda b: b
handlers = {
    "Say": grpc.unary_unary_rpc_method_handler(say, ident, ident),
    "Lookup": grpc.unary_unary_rpc_method_handler(lookup, ident, ident),
    "Slow": grpc.unary_unary_rpc_method_handler(slow, ident, ident),
    "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
    "Collect": grpc.stream_unary_rpc_method_handler(collect, ident, ident),
    "Chat": grpc.stream_stream_rpc_method_handler(chat, ident, ident),
    "Big": grpc.unary_unary_rpc_method_handler(big, ident, ident),
    "Nap": grpc.unary_unary_rpc_method_handler(nap, ident, ident),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("periscope.test.Echo", handlers),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
