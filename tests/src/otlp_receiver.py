"""A real OTLP receiver for the tests, traces and metrics: OTLP/HTTP (protobuf) and OTLP/gRPC,
decoded with the official protobuf bindings (PyPI opentelemetry-proto) and grpcio.

Usage: otlp_receiver.py <ready port> <http port> <grpc port> <output file>
                        [<server cert> <server key> [<client CA>]]

With a server certificate and key (PEM) both ports serve TLS (HTTPS, and gRPC with
grpc.ssl_server_credentials); with a client CA too, gRPC requires a client certificate signed
by it (mutual TLS).

Traces (`POST /v1/traces`, `TraceService/Export`): each received span is appended to the
output file as one JSON line (ids in hex, attributes as a flat object, the resource's
attributes, the transport it came by, the request's `x-tenant` header or metadata, if any, and
the HTTP request's `Content-Encoding`).

Metrics (`POST /v1/metrics`, `MetricsService/Export`): each received data point is appended to
`<output file>.metrics.jsonl` as one JSON line: the metric's `name`, `unit`, `description` and
`type` (`sum`, `gauge`, `histogram`, `exponential_histogram` or `summary`); `temporality` (the
enum number) and, for sums, `is_monotonic`; for sums and gauges the `value` and whether it was
sent as a `double` or an `int` (`value_kind`); for histograms `count`, `sum`, `bucket_counts`,
`explicit_bounds`, `min` and `max` (null when absent); `start` and `time` (unix ns), `flags`,
`exemplars`, `attributes`, `resource` and `scope`, and the request's `transport`, `tenant` and
`encoding` as for spans. Non-finite numbers are written as the strings "NaN", "+Inf", "-Inf"
(JSON has no such numbers).

Every line of either file carries `request`, the sequence number of the export request it came
in (one counter for both signals), and `received_at`; a metrics line also `request_points`, the
number of data points in its request, so that a reader can tell a request it sees only part of
(a large request's lines reach the file in more than one write). OTLP/HTTP bodies may be gzip-compressed
(gRPC decompresses by itself). An HTTP request with `x-tenant: throttle-once` is answered 429
with `Retry-After: 1` the first time, and a gRPC export with that metadata
RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` of 1 s the first time (each line then says when, `throttled_at`). The ready port
is opened last, so once it accepts both OTLP ports are listening.
"""

import gzip
import json
import math
import socket
import time
import ssl
import sys
import threading
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2, metrics_service_pb2_grpc)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

ready_port, http_port, grpc_port, out_path = (
    int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
metrics_path = out_path + ".metrics.jsonl"
cert_path, key_path, client_ca_path = (sys.argv[5:] + [None] * 3)[:3]
lock = threading.Lock()


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes(any_value.kvlist_value.values)
    if kind == "bytes_value":
        return any_value.bytes_value.hex()
    return num(getattr(any_value, kind)) if kind else None


def attributes(key_values):
    return {kv.key: value(kv.value) for kv in key_values}


def num(x):
    """A float JSON can carry: non-finite values as strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("+Inf" if x > 0 else "-Inf")
    return x


throttled = set()
throttled_at = [None]


requests_seen = [0]


def next_request():
    with lock:
        requests_seen[0] += 1
        return requests_seen[0]


def append(path, lines):
    with lock, open(path, "a") as out:
        for line in lines:
            out.write(line + "\n")


def record_spans(request, transport, tenant=None, encoding=None):
    number = next_request()
    lines = []
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
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
                    "attributes": attributes(span.attributes),
                    "status_code": span.status.code,
                    "resource": resource,
                }))
    append(out_path, lines)


def exemplars(point):
    return [{
        "trace_id": e.trace_id.hex(),
        "span_id": e.span_id.hex(),
        "time": e.time_unix_nano,
        "value": num(getattr(e, e.WhichOneof("value"))) if e.WhichOneof("value") else None,
        "attributes": attributes(e.filtered_attributes),
    } for e in point.exemplars]


def optional(point, field):
    return num(getattr(point, field)) if point.HasField(field) else None


def point_fields(kind, data, point):
    """What a data point of a metric of `kind` (its `data`: the Sum, Gauge, … message) says."""
    fields = {
        "start": point.start_time_unix_nano,
        "time": point.time_unix_nano,
        "flags": point.flags,
        "attributes": attributes(point.attributes),
    }
    if kind != "gauge" and kind != "summary":
        fields["temporality"] = data.aggregation_temporality
    if kind == "sum":
        fields["is_monotonic"] = data.is_monotonic
    if kind in ("sum", "gauge"):
        which = point.WhichOneof("value")
        fields["value_kind"] = {"as_double": "double", "as_int": "int"}.get(which)
        fields["value"] = num(getattr(point, which)) if which else None
    if kind == "histogram":
        fields.update({
            "count": point.count,
            "sum": optional(point, "sum"),
            "bucket_counts": list(point.bucket_counts),
            "explicit_bounds": [num(b) for b in point.explicit_bounds],
            "min": optional(point, "min"),
            "max": optional(point, "max"),
        })
    if kind == "exponential_histogram":
        fields.update({
            "count": point.count,
            "sum": optional(point, "sum"),
            "scale": point.scale,
            "zero_count": point.zero_count,
            "positive": {"offset": point.positive.offset,
                         "bucket_counts": list(point.positive.bucket_counts)},
            "negative": {"offset": point.negative.offset,
                         "bucket_counts": list(point.negative.bucket_counts)},
            "min": optional(point, "min"),
            "max": optional(point, "max"),
        })
    if kind == "summary":
        fields.update({
            "count": point.count,
            "sum": num(point.sum),
            "quantiles": [[q.quantile, num(q.value)] for q in point.quantile_values],
        })
    if kind != "summary":
        fields["exemplars"] = exemplars(point)
    return fields


def record_metrics(request, transport, tenant=None, encoding=None):
    number = next_request()
    lines = []
    for rm in request.resource_metrics:
        resource = attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                data = getattr(metric, kind) if kind else None
                for point in (data.data_points if data else []):
                    line = {
                        "transport": transport,
                        "request": number,
                        "tenant": tenant,
                        "encoding": encoding,
                        "received_at": time.time(),
                        "throttled_at": throttled_at[0],
                        "scope": sm.scope.name,
                        "name": metric.name,
                        "unit": metric.unit,
                        "description": metric.description,
                        "type": kind,
                        "resource": resource,
                    }
                    line.update(point_fields(kind, data, point))
                    lines.append(line)
    for line in lines:
        line["request_points"] = len(lines)
    append(metrics_path, [json.dumps(line, allow_nan=False) for line in lines])


# Path → (request message, response message, recorder).
SIGNALS = {
    "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest,
                   trace_service_pb2.ExportTraceServiceResponse, record_spans),
    "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest,
                    metrics_service_pb2.ExportMetricsServiceResponse, record_metrics),
}


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
        signal = SIGNALS.get(self.path)
        try:
            if signal is None or \
                    self.headers.get("Content-Type") != "application/x-protobuf":
                raise DecodeError("wrong path or content type")
            if encoding == "gzip":
                body = gzip.decompress(body)
            request = signal[0]()
            request.ParseFromString(body)
        except (DecodeError, OSError, EOFError, zlib.error) as e:
            print("bad request:", self.path, e, flush=True)
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        signal[2](request, "http", tenant, encoding)
        reply = signal[1]().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def grpc_tenant(context):
    return dict(context.invocation_metadata()).get("x-tenant")


def proto_field(number, payload):
    """One length-delimited protobuf field (payloads here are under 128 bytes)."""
    return bytes([(number << 3) | 2, len(payload)]) + payload


def retry_info_status(code, seconds):
    """A google.rpc.Status with a google.rpc.RetryInfo of `seconds`, encoded by hand (the
    googleapis protos are not installed): what `grpc-status-details-bin` carries."""
    delay = bytes([0x08, seconds])  # Duration.seconds
    retry_info = proto_field(1, delay)  # RetryInfo.retry_delay
    detail = proto_field(1, b"type.googleapis.com/google.rpc.RetryInfo") + proto_field(2, retry_info)
    return bytes([0x08, code]) + proto_field(2, b"throttled") + proto_field(3, detail)


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        tenant = grpc_tenant(context)
        if tenant == "throttle-once":
            with lock:
                first = tenant not in throttled
                if first:
                    throttled.add(tenant)
                    throttled_at[0] = time.time()
            if first:
                # RESOURCE_EXHAUSTED is retryable only with a RetryInfo, which says 1 s.
                context.set_trailing_metadata(
                    (("grpc-status-details-bin", retry_info_status(8, 1)),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "throttled")
        record_spans(request, "grpc", tenant)
        return trace_service_pb2.ExportTraceServiceResponse()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        record_metrics(request, "grpc", grpc_tenant(context))
        return metrics_service_pb2.ExportMetricsServiceResponse()


grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), grpc_server)
metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), grpc_server)
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
