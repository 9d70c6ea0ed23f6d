"""A real OTLP trace receiver for the tests: OTLP/HTTP (protobuf) and OTLP/gRPC, decoded with
the official protobuf bindings (PyPI opentelemetry-proto) and grpcio.

Usage: otlp_receiver.py <ready port> <http port> <grpc port> <output file>
                        [<server cert> <server key> [<client CA>]]

With a server certificate and key (PEM) both ports serve TLS (HTTPS, and gRPC with
grpc.ssl_server_credentials); with a client CA too, gRPC requires a client certificate signed
by it (mutual TLS).

Each received span is appended to the output file as one JSON line (ids in hex, attributes as
a flat object, the resource's attributes, the transport it came by, the request's `x-tenant`
header or metadata, if any, and the HTTP request's `Content-Encoding`). OTLP/HTTP bodies may be
gzip-compressed (gRPC decompresses by itself). An HTTP request with `x-tenant: throttle-once`
is answered 429 with `Retry-After: 1` the first time (each line then says when, and when it
was received). The ready port is
opened last, so once it accepts both OTLP ports are listening.
"""

import gzip
import json
import socket
import time
import ssl
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

ready_port, http_port, grpc_port, out_path = (
    int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
cert_path, key_path, client_ca_path = (sys.argv[5:] + [None] * 3)[:3]
lock = threading.Lock()


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


throttled = set()
throttled_at = [None]


requests_seen = [0]


def record(request, transport, tenant=None, encoding=None):
    lines = []
    with lock:
        requests_seen[0] += 1
        number = requests_seen[0]
    for rs in request.resource_spans:
        resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for span in ss.spans:
                lines.append(json.dumps({
                    "transport": transport,
                    "request": number,
                    "tenant": tenant,
                    "encoding": encoding,
                    "received_at": time.time(),
                    "throttled_at": throttled_at[0],
                    "scope": ss.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "trace_state": span.trace_state,
                    "flags": span.flags,
                    "name": span.name,
                    "kind": span.kind,
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": {kv.key: value(kv.value) for kv in span.attributes},
                    "status_code": span.status.code,
                    "resource": resource,
                }))
    with lock, open(out_path, "a") as out:
        for line in lines:
            out.write(line + "\n")


class Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        tenant = self.headers.get("x-tenant")
        if tenant == "throttle-once" and tenant not in throttled:
            throttled.add(tenant)
            throttled_at[0] = time.time()
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        encoding = self.headers.get("Content-Encoding")
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            if self.path != "/v1/traces" or \
                    self.headers.get("Content-Type") != "application/x-protobuf":
                raise DecodeError("wrong path or content type")
            if encoding == "gzip":
                body = gzip.decompress(body)
            request.ParseFromString(body)
        except DecodeError as e:
            print("bad request:", self.path, e, flush=True)
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        record(request, "http", tenant, encoding)
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        record(request, "grpc", dict(context.invocation_metadata()).get("x-tenant"))
        return trace_service_pb2.ExportTraceServiceResponse()


grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), grpc_server)
http_server = ThreadingHTTPServer(("127.0.0.1", http_port), Http)
if cert_path:
    def read(path):
        with open(path, "rb") as f:
            return f.read()

    client_ca = read(client_ca_path) if client_ca_path else None
    credentials = grpc.ssl_server_credentials(
        [(read(key_path), read(cert_path))], root_certificates=client_ca,
        require_client_auth=client_ca is not None)
    grpc_server.add_secure_port(f"127.0.0.1:{grpc_port}", credentials)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    # A failed handshake (an untrusting client) raises in accept(), which the server survives.
    http_server.socket = context.wrap_socket(http_server.socket, server_side=True)
else:
    grpc_server.add_insecure_port(f"127.0.0.1:{grpc_port}")
grpc_server.start()
threading.Thread(target=http_server.serve_forever, daemon=True).start()

ready = socket.socket()
ready.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ready.bind(("127.0.0.1", ready_port))
ready.listen(16)
print("listening", flush=True)
while True:
    conn, _ = ready.accept()
    conn.close()
