"""A lean OTLP/gRPC trace receiver for `cargo xtask bench traces`: it only counts.

Usage: bench_traces_receiver.py <stats port> <grpc port>

Every Export request is decoded with the official protobuf bindings (PyPI opentelemetry-proto,
the same as the tests' receiver, tests/tests/traces/otlp_receiver.py) and its spans counted.
Unlike the tests' receiver it stores and prints nothing, so that it costs as little as a
collector's front door can. A connection to the stats port is answered with one line,
`<spans> <export requests>`, and closed. The stats port is opened last, so once it accepts
the gRPC port is listening.
"""

import socket
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

stats_port, grpc_port = int(sys.argv[1]), int(sys.argv[2])
lock = threading.Lock()
spans = 0
requests = 0


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        global spans, requests
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with lock:
            spans += n
            requests += 1
        return trace_service_pb2.ExportTraceServiceResponse()


# The agent awaits each export's reply before it sends the next, so one worker is enough, and
# no second thread competes for the GIL.
server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
server.add_insecure_port(f"127.0.0.1:{grpc_port}")
server.start()

stats = socket.socket()
stats.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
stats.bind(("127.0.0.1", stats_port))
stats.listen(16)
print("listening", flush=True)
while True:
    conn, _ = stats.accept()
    with lock:
        line = f"{spans} {requests}\n"
    conn.sendall(line.encode())
    conn.close()
