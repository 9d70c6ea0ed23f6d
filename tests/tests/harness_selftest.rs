//! Tests of the harness itself: real nginx, the Python test server, the OTLP receiver, curl,
//! wrk and promtool, and the exposition parser. None of them needs the agent (a stand-in plays
//! its part).

use std::time::{Duration, Instant};

use harness::{
    curl, free_port, parse_wrk, promtool_check_metrics, tcp_raw, wait_for_metric, wait_until, wrk,
    Agent, AgentOptions, Metrics, Nginx, PyServer, TempDir,
};

const SAMPLE: &str = r#"# HELP http_server_request_duration_seconds Duration of HTTP server requests.
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_bucket{http_request_method="GET",http_response_status_code="200",le="0.005"} 3
http_server_request_duration_seconds_bucket{http_request_method="GET",http_response_status_code="200",le="+Inf"} 4
http_server_request_duration_seconds_sum{http_request_method="GET",http_response_status_code="200"} 0.0125
http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200"} 4
http_server_request_duration_seconds_bucket{http_request_method="POST",http_response_status_code="500",le="0.005"} 0
http_server_request_duration_seconds_bucket{http_request_method="POST",http_response_status_code="500",le="+Inf"} 2
http_server_request_duration_seconds_sum{http_request_method="POST",http_response_status_code="500"} 1.5
http_server_request_duration_seconds_count{http_request_method="POST",http_response_status_code="500"} 2
# HELP periscope_kernel_events_lost_total Events the kernel could not hand over.\nSecond line.
# TYPE periscope_kernel_events_lost_total counter
periscope_kernel_events_lost_total{reason="ringbuf_full"} 7
periscope_kernel_events_lost_total{reason="truncated"} 1 1700000000000
# HELP weird_info Label values with escapes.
# TYPE weird_info gauge
weird_info{path="a\"b\\c\nd",empty=""} 1
weird_info{path="plain",} -Inf
"#;

#[test]
fn parses_prometheus_text() {
    let m = Metrics::parse(SAMPLE).unwrap();
    assert_eq!(
        m.sum("http_server_request_duration_seconds_count", &[]),
        6.0
    );
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("http_request_method", "POST")]
        ),
        2.0
    );
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("http_request_method", "PUT")]
        ),
        0.0
    );
    // A sample name is matched exactly: the family name matches nothing.
    assert_eq!(m.sum("http_server_request_duration_seconds", &[]), 0.0);
    let inf = m.samples("http_server_request_duration_seconds_bucket");
    assert_eq!(inf.len(), 4);
    assert_eq!(inf[1].labels["le"], "+Inf");
    assert_eq!(m.sum("periscope_kernel_events_lost_total", &[]), 8.0);
    let weird = m.samples("weird_info");
    assert_eq!(weird[0].labels["path"], "a\"b\\c\nd");
    assert_eq!(weird[0].labels["empty"], "");
    assert_eq!(weird[1].value, f64::NEG_INFINITY);
    assert_eq!(
        m.metric_type("http_server_request_duration_seconds"),
        Some("histogram")
    );
    assert_eq!(
        m.help("periscope_kernel_events_lost_total"),
        Some("Events the kernel could not hand over.\nSecond line.")
    );
    assert_eq!(m.text(), SAMPLE);
}

#[test]
fn parses_openmetrics_text() {
    // What the prometheus-client crate emits: `# UNIT`, exemplars, `# EOF`.
    let text =
        "# HELP requests Requests.\n# TYPE requests counter\n# UNIT requests_seconds seconds\n\
                requests_total{code=\"200\"} 5 # {trace_id=\"abc\"} 1.0 1700000000.1\n\
                requests_created{code=\"200\"} 1.7e9\n# EOF\n";
    let m = Metrics::parse(text).unwrap();
    assert_eq!(m.sum("requests_total", &[("code", "200")]), 5.0);
    assert_eq!(m.samples("requests_created")[0].value, 1.7e9);
    assert!(Metrics::parse(&format!("{text}after_eof 1\n")).is_err());
}

#[test]
fn rejects_malformed_text() {
    for bad in [
        "foo{a=\"1\" 1\n",
        "foo{a=1} 1\n",
        "foo 1 2 3\n",
        "foo abc\n",
        "{a=\"b\"} 1\n",
        "foo{a=\"1\",a=\"2\"} 1\n",
        "foo\n",
    ] {
        assert!(Metrics::parse(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn promtool_accepts_good_and_rejects_bad_expositions() {
    promtool_check_metrics(SAMPLE).unwrap();
    let err = promtool_check_metrics("# TYPE foo counter\nfoo{a=\"1\" 1\n").unwrap_err();
    assert!(format!("{err:#}").contains("promtool"), "{err:#}");
    // Lint: a counter without the _total suffix.
    let err = promtool_check_metrics("# HELP foo Foo.\n# TYPE foo counter\nfoo 1\n").unwrap_err();
    assert!(format!("{err:#}").contains("_total"), "{err:#}");
}

#[test]
fn parses_wrk_output() {
    let out = "Running 1s test @ http://127.0.0.1:8080/\n  1 threads and 10 connections\n\
  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   412.00us  100.00us   2.00ms   90.00%\n\
    Req/Sec    20.00k     1.00k   22.00k    80.00%\n  Latency Distribution\n     50%  381.00us\n\
     75%  450.00us\n     90%    1.10ms\n     99%    2.00s\n  20123 requests in 1.00s, 3.00MB read\n\
  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 5\n\
Requests/sec:  20100.50\nTransfer/sec:      3.00MB\n";
    let r = parse_wrk(out).unwrap();
    assert_eq!(r.requests, 20123);
    assert_eq!(r.rps, 20100.50);
    assert!((r.p50_ms - 0.381).abs() < 1e-9);
    assert!((r.p90_ms - 1.1).abs() < 1e-9);
    assert_eq!(r.p99_ms, 2000.0);
    assert_eq!(r.socket_errors, 3);
    assert_eq!(r.non_2xx, 5);
    assert!(parse_wrk("garbage").is_err());
}

#[test]
fn wait_until_polls_until_true_or_timeout() {
    let start = Instant::now();
    let mut n = 0;
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(1),
        || {
            n += 1;
            n == 3
        }
    ));
    assert!(!wait_until(
        Duration::from_millis(50),
        Duration::from_millis(10),
        || false
    ));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn nginx_serves_curl_raw_pipelined_requests_and_wrk() {
    let nginx =
        Nginx::start(r#"location / { return 200 "ok\n"; } location /teapot { return 418; }"#);
    assert_eq!(curl(&[&nginx.url("/")]).unwrap(), "ok\n");
    assert_eq!(
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &nginx.url("/teapot")
        ])
        .unwrap(),
        "418"
    );
    assert_eq!(nginx.worker_pids().len(), 1, "one worker expected");

    let port = nginx.port();
    let raw = tcp_raw(
        port,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");

    let r = wrk(&nginx.url("/"), 1, 4, Duration::from_secs(1));
    assert!(r.requests > 100, "{}", r.output);
    assert!(
        r.rps > 0.0 && r.p50_ms > 0.0 && r.p50_ms <= r.p99_ms,
        "{r:?}"
    );
    assert_eq!(r.socket_errors + r.non_2xx, 0, "{}", r.output);

    let master = nginx.pid();
    let workers = nginx.worker_pids();
    drop(nginx);
    for pid in std::iter::once(master).chain(workers) {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "nginx pid {pid} survived drop"
        );
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn python_test_server_endpoints() {
    let py = PyServer::http_test_server();
    let code =
        |path: &str| curl(&["-o", "/dev/null", "-w", "%{http_code}", &py.url(path)]).unwrap();
    assert_eq!(curl(&[&py.url("/")]).unwrap(), "ok\n");
    assert_eq!(code("/status/503"), "503");
    assert_eq!(code("/status/204"), "204");
    assert_eq!(code("/notfound"), "404");
    assert_eq!(curl(&[&py.url("/status/201")]).unwrap(), "status 201\n");

    let started = Instant::now();
    assert_eq!(curl(&[&py.url("/sleep/200")]).unwrap(), "slept\n");
    assert!(started.elapsed() >= Duration::from_millis(200));

    assert_eq!(curl(&[&py.url("/big/100000")]).unwrap().len(), 100_000);
    let chunked = curl(&[&py.url("/chunked/3?delay_ms=10")]).unwrap();
    assert_eq!(chunked, "chunk 0\nchunk 1\nchunk 2\n");
    let raw_chunked = curl(&["--raw", &py.url("/chunked/2")]).unwrap();
    assert_eq!(raw_chunked, "8\r\nchunk 0\n\r\n8\r\nchunk 1\n\r\n0\r\n\r\n");

    assert_eq!(
        curl(&["-X", "POST", "--data-binary", "hello world", &py.url("/x")]).unwrap(),
        "11\n"
    );
    assert_eq!(
        curl(&[
            "-X",
            "POST",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "abcdef",
            &py.url("/x")
        ])
        .unwrap(),
        "6\n"
    );
    let head = curl(&["-I", &py.url("/big/1234")]).unwrap();
    assert!(head.contains("Content-Length: 1234"), "{head}");

    // Keep-alive and pipelining: two responses on one connection, each with Content-Length.
    let raw = tcp_raw(
        py.port(),
        b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\nGET /big/5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(
        text.contains("Content-Length: 11\r\n") && text.ends_with("xxxxx"),
        "{text}"
    );
}

#[test]
fn python_server_with_custom_script() {
    let py = PyServer::start(
        "import socket, sys\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n\
         while True:\n    c, _ = s.accept(); c.sendall(c.recv(100).upper()); c.close()\n",
    );
    assert_eq!(tcp_raw(py.port(), b"ping", Duration::from_secs(5)), b"PING");
    assert!(PyServer::launch("import sys; sys.exit(3)", &[]).is_err());
}

/// Plays the agent's part: serves /readyz and a /metrics whose counter counts scrapes, and
/// exits 0 on SIGINT, as the real agent must.
const FAKE_AGENT: &str = r##"#!/usr/bin/env python3
import signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
addr = sys.argv[sys.argv.index("--metrics-addr") + 1]
host, port = addr.rsplit(":", 1)
scrapes = 0
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        global scrapes
        if self.path == "/readyz":
            body = b"ready\n"
        elif self.path == "/metrics":
            scrapes += 1
            body = ("# TYPE scrapes counter\nscrapes_total{job=\"fake\"} %d\n# EOF\n" % scrapes).encode()
        else:
            self.send_response(404); self.end_headers(); return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
print("fake agent args:", sys.argv[1:], file=sys.stderr, flush=True)
HTTPServer((host, int(port)), H).serve_forever()
"##;

#[test]
fn agent_lifecycle_with_a_stand_in() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("fake-agent").unwrap();
    let bin = dir.path().join("fake-agent");
    std::fs::write(&bin, FAKE_AGENT).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut agent = Agent::start_with(AgentOptions {
        bin: Some(bin.clone()),
        args: vec!["--extra".into()],
        ..AgentOptions::default()
    })
    .unwrap();
    assert!(agent.log().contains("'--extra'"), "{}", agent.log());
    assert_eq!(
        agent.metrics().sum("scrapes_total", &[("job", "fake")]),
        1.0
    );
    wait_for_metric(&agent, "scrapes_total", &[], 5.0, Duration::from_secs(10)).unwrap();
    let err = wait_for_metric(
        &agent,
        "scrapes_total",
        &[("job", "other")],
        1.0,
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(format!("{err}").contains("last value 0"), "{err}");
    let pid = agent.pid();
    assert!(agent.stop().unwrap().success());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

    // A binary that exits at once: the error says so and includes its output.
    let err = Agent::start_with(AgentOptions {
        bin: Some("/bin/false".into()),
        ..AgentOptions::default()
    })
    .unwrap_err();
    assert!(format!("{err}").contains("exited"), "{err}");

    // One that never becomes ready: the timeout is reported.
    let sleeper = dir.path().join("sleeper");
    std::fs::write(&sleeper, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&sleeper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = Agent::start_with(AgentOptions {
        bin: Some(sleeper),
        ready_timeout: Duration::from_millis(500),
        ..AgentOptions::default()
    })
    .unwrap_err();
    assert!(format!("{err}").contains("not ready"), "{err}");
}

#[test]
fn free_ports_are_bindable() {
    let port = free_port();
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

/// Sends one hand-built `ExportMetricsServiceRequest` four times (gRPC, gRPC with gzip,
/// OTLP/HTTP, OTLP/HTTP with gzip) and one span over OTLP/HTTP; then sends bodies the receiver
/// must refuse (exit status 3 if it takes one).
const OTLP_CLIENT: &str = r#"
import gzip, sys, urllib.error, urllib.request, grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

http_port, grpc_port = sys.argv[1], sys.argv[2]


def kv(key, v):
    a = AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=v)
    return KeyValue(key=key, value=a)


r = metrics_service_pb2.ExportMetricsServiceRequest()
rm = r.resource_metrics.add()
rm.resource.attributes.extend([kv("service.name", "python3.11")])
sm = rm.scope_metrics.add()
h = sm.metrics.add(name="http.server.request.duration", unit="s", description="Duration")
h.histogram.aggregation_temporality = 2
h.histogram.data_points.add(
    start_time_unix_nano=10, time_unix_nano=20, count=7, sum=0.5, bucket_counts=[5, 0, 2],
    explicit_bounds=[0.005, 0.01]).attributes.extend(
        [kv("http.request.method", "GET"), kv("http.response.status_code", 404)])
s = sm.metrics.add(name="periscope.metric_exports")
s.sum.aggregation_temporality = 2
s.sum.is_monotonic = True
s.sum.data_points.add(as_double=3.0, start_time_unix_nano=10, time_unix_nano=20).attributes \
    .extend([kv("result", "ok")])
sm.metrics.add(name="g").gauge.data_points.add(as_int=-5, time_unix_nano=30)
q = sm.metrics.add(name="q")
q.summary.data_points.add(count=1, sum=float("inf"))
body = r.SerializeToString()

stub = metrics_service_pb2_grpc.MetricsServiceStub(grpc.insecure_channel("127.0.0.1:" + grpc_port))
stub.Export(r, metadata=(("x-tenant", "t"),))
stub.Export(r, compression=grpc.Compression.Gzip)


def post(path, data, encoding=None):
    headers = {"Content-Type": "application/x-protobuf"}
    if encoding:
        headers["Content-Encoding"] = encoding
    url = "http://127.0.0.1:" + http_port + path
    return urllib.request.urlopen(urllib.request.Request(url, data, headers, method="POST"))


post("/v1/metrics", body)
post("/v1/metrics", gzip.compress(body), "gzip")
traces = trace_service_pb2.ExportTraceServiceRequest()
traces.resource_spans.add().scope_spans.add().spans.add(name="GET /", trace_id=b"\1" * 16)
post("/v1/traces", traces.SerializeToString())
for path, data, encoding in [("/v1/logs", body, None), ("/v1/metrics", b"\xff\xff", None),
                             ("/v1/metrics", body, "gzip")]:
    try:
        post(path, data, encoding)
        sys.exit(3)
    except urllib.error.HTTPError as e:
        assert e.code == 400, e.code
"#;

/// The OTLP receiver decodes metrics over both transports, with and without gzip, writes one
/// JSON line per data point with its request's sequence number, and keeps spans apart.
#[test]
fn otlp_receiver_writes_metric_points_and_spans() {
    use serde_json::json;
    let receiver = harness::Receiver::start();
    harness::output_ok(
        std::process::Command::new("python3")
            .args(["-c", OTLP_CLIENT])
            .args([
                receiver.http_port().to_string(),
                receiver.grpc_port().to_string(),
            ]),
    )
    .unwrap();
    let points = receiver.metric_points();
    assert_eq!(points.len(), 16, "{points:#?}");
    let sent: Vec<(u64, &str, Option<&str>, Option<&str>)> = points
        .chunks(4)
        .map(|request| {
            let p = &request[0];
            assert!(request.iter().all(|q| q["request"] == p["request"]));
            (
                p["request"].as_u64().unwrap(),
                p["transport"].as_str().unwrap(),
                p["encoding"].as_str(),
                p["tenant"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [
            (1, "grpc", None, Some("t")),
            (2, "grpc", None, None),
            (3, "http", None, None),
            (4, "http", Some("gzip"), None),
        ]
    );
    let has = |point: &serde_json::Value, fields: serde_json::Value| {
        for (key, want) in fields.as_object().unwrap() {
            assert_eq!(&point[key], want, "{key} of {point}");
        }
    };
    for request in points.chunks(4) {
        let h = &request[0];
        has(
            h,
            json!({"name": "http.server.request.duration", "unit": "s",
            "description": "Duration", "type": "histogram", "temporality": 2, "count": 7,
            "sum": 0.5, "bucket_counts": [5, 0, 2], "explicit_bounds": [0.005, 0.01],
            "start": 10, "time": 20, "resource": {"service.name": "python3.11"},
            "attributes": {"http.request.method": "GET", "http.response.status_code": 404}}),
        );
        has(
            &request[1],
            json!({"name": "periscope.metric_exports", "type": "sum", "request_points": 4,
            "is_monotonic": true, "temporality": 2, "value": 3.0, "value_kind": "double",
            "attributes": {"result": "ok"}}),
        );
        has(
            &request[2],
            json!({"name": "g", "type": "gauge", "value": -5, "value_kind": "int",
            "temporality": null, "time": 30}),
        );
        has(
            &request[3],
            json!({"name": "q", "type": "summary", "sum": "+Inf"}),
        );
    }
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    has(
        &spans[0],
        json!({"name": "GET /", "request": 5, "transport": "http"}),
    );
}
