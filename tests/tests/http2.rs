//! End-to-end: HTTP/2 and gRPC in clear text (`h2c` with prior knowledge). Real servers
//! (Python `grpcio`, nginx with `http2`), real clients (`grpcio`, curl, h2load), exact counts
//! per method and status on both ends.

use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{wait_for_metric, Agent, Nginx, TempDir};

const RPC_SERVER: &str = "rpc_server_call_duration_seconds_count";
const RPC_CLIENT: &str = "rpc_client_call_duration_seconds_count";
const HTTP_SERVER: &str = "http_server_request_duration_seconds_count";
const HTTP_CLIENT: &str = "http_client_request_duration_seconds_count";
const WAIT: Duration = Duration::from_secs(20);

/// A gRPC server on `grpcio` (generic handlers, raw-bytes messages, no generated stubs):
/// `Say` echoes, `Lookup` aborts NOT_FOUND (a Trailers-Only response), `Slow` sleeps 300 ms,
/// `Stream` answers five messages, `Collect` sums a client stream, `Chat` echoes a bidi
/// stream, `Big` answers the size it is asked for.
const GRPC_SERVER: &str = r#"
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

ident = lambda b: b
handlers = {
    "Say": grpc.unary_unary_rpc_method_handler(say, ident, ident),
    "Lookup": grpc.unary_unary_rpc_method_handler(lookup, ident, ident),
    "Slow": grpc.unary_unary_rpc_method_handler(slow, ident, ident),
    "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
    "Collect": grpc.stream_unary_rpc_method_handler(collect, ident, ident),
    "Chat": grpc.stream_stream_rpc_method_handler(chat, ident, ident),
    "Big": grpc.unary_unary_rpc_method_handler(big, ident, ident),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("periscope.test.Echo", handlers),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"#;

/// The client: every call shape on one channel (one connection), checking each answer.
const GRPC_CLIENT: &str = r#"
import os, grpc
ident = lambda b: b
ch = grpc.insecure_channel("127.0.0.1:" + os.environ["PORT"])
m = lambda kind, name: getattr(ch, kind)("/periscope.test.Echo/" + name, request_serializer=ident, response_deserializer=ident)
say = m("unary_unary", "Say")
for i in range(12):
    assert say(b"hello %d" % i) == b"hello %d" % i
futures = [say.future(b"x" * i) for i in range(20)]
assert [len(f.result()) for f in futures] == list(range(20))
for _ in range(4):
    try:
        m("unary_unary", "Lookup")(b"k")
        raise SystemExit("Lookup succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
for _ in range(2):
    try:
        m("unary_unary", "Slow")(b"z", timeout=0.05)
        raise SystemExit("Slow succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
for _ in range(3):
    assert len(list(m("unary_stream", "Stream")(b"s"))) == 5
for _ in range(3):
    assert m("stream_unary", "Collect")(iter([b"ab", b"cde", b"f"])) == b"6"
for _ in range(2):
    assert list(m("stream_stream", "Chat")(iter([b"1", b"22", b"333", b"4444"]))) == [b"1", b"22", b"333", b"4444"]
big = m("unary_unary", os.environ.get("BIG_METHOD", "Big"))
for n in [int(x) for x in os.environ.get("BIG", "").split(",") if x]:
    assert len(big(b"%d" % n)) == n
ch.close()
"#;

/// A running child, killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grpc_server() -> (Killed, u16) {
    let port = harness::free_port();
    let server = Killed(
        Command::new("python3")
            .args(["-c", GRPC_SERVER, &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = harness::wait_until(WAIT, Duration::from_millis(50), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "the gRPC server listens on {port}");
    (server, port)
}

fn grpc_client(port: u16, env: &[(&str, &str)]) {
    let out = Command::new("python3")
        .args(["-c", GRPC_CLIENT])
        .env("PORT", port.to_string())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the gRPC client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rpc<'a>(port: &'a str, method: &'a str, status: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("server_port", port),
        ("rpc_method", method),
        ("rpc_status_code", status),
    ]
}

/// Every gRPC call shape, errors included, from one `grpcio` client to one `grpcio` server
/// (one connection, streams interleaved by the 20 concurrent calls): exactly as many calls per
/// method and status on the server's side and on the client's.
#[test]
fn grpc_calls_of_every_shape_are_counted_exactly_on_both_ends() {
    let (_server, port) = grpc_server();
    let agent = Agent::start(&[]).unwrap();
    // Large messages too: one DATA frame each, sent with the trailers in one `sendmsg` of
    // many iovecs; the kernel walks the frames, so the trailers are seen.
    grpc_client(port, &[("BIG", "100000,1000000,70000")]);
    let port = port.to_string();
    let expected = [
        ("periscope.test.Echo/Big", "OK", 3.0),
        ("periscope.test.Echo/Say", "OK", 32.0),
        ("periscope.test.Echo/Lookup", "NOT_FOUND", 4.0),
        ("periscope.test.Echo/Slow", "DEADLINE_EXCEEDED", 2.0),
        ("periscope.test.Echo/Stream", "OK", 3.0),
        ("periscope.test.Echo/Collect", "OK", 3.0),
        ("periscope.test.Echo/Chat", "OK", 2.0),
    ];
    for (method, status, n) in expected {
        let l = rpc(&port, method, status);
        wait_for_metric(&agent, RPC_SERVER, &l, n, WAIT).unwrap();
        wait_for_metric(&agent, RPC_CLIENT, &l, n, WAIT).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    let m = agent.metrics();
    let on_port = [("server_port", port.as_str())];
    for side in [RPC_SERVER, RPC_CLIENT] {
        assert_eq!(m.sum(side, &on_port), 49.0, "{side}\n{}", m.text());
    }
    // gRPC is counted as RPC, not again as HTTP.
    assert_eq!(m.sum(HTTP_SERVER, &on_port), 0.0);
    assert_eq!(m.sum(HTTP_CLIENT, &on_port), 0.0);
    // The client saw every non-OK status as an error; the server only its own failure.
    let errors = |side, error| m.sum(side, &[("server_port", &port), ("error_type", error)]);
    assert_eq!(errors(RPC_CLIENT, "NOT_FOUND"), 4.0);
    assert_eq!(errors(RPC_SERVER, "NOT_FOUND"), 0.0);
    assert_eq!(errors(RPC_SERVER, "DEADLINE_EXCEEDED"), 2.0);
    assert_eq!(
        m.sum("periscope_parse_errors_total", &[]),
        0.0,
        "{}",
        m.text()
    );
    assert_eq!(
        m.sum("periscope_exchanges_inexact_total", &[]),
        0.0,
        "{}",
        m.text()
    );
}

/// nginx serving `h2c` (prior knowledge) to h2load (ten concurrent streams per connection)
/// and to curl: exact counts per route and status on both ends, labelled HTTP/2.
#[test]
fn nginx_h2c_from_h2load_and_curl_is_counted_exactly_per_status() {
    let nginx = Nginx::start_with_config(
        r#"server {
            listen 127.0.0.1:@PORT@ http2;
            location /ok { return 200 "ok\n"; }
            location /missing { return 404; }
            location /users/ { return 200 "user\n"; }
        }"#,
    );
    let agent = Agent::start(&[]).unwrap();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", nginx.port());
    let h2load = Command::new("h2load")
        .args(["-n", "300", "-c", "3", "-m", "10", &url("/ok")])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&h2load.stdout);
    assert!(
        report.contains("300 succeeded") && report.contains("300 2xx"),
        "{report}"
    );
    for path in ["/missing", "/missing", "/users/7", "/users/8"] {
        harness::curl(&["--http2-prior-knowledge", "-o", "/dev/null", &url(path)]).unwrap();
    }
    let port = nginx.port().to_string();
    let http = |route: &'static str, status: &'static str| {
        [
            ("server_port", port.clone()),
            ("http_route", route.to_owned()),
            ("http_response_status_code", status.to_owned()),
            ("network_protocol_version", "2".to_owned()),
        ]
    };
    for (route, status, n) in [
        ("/ok", "200", 300.0),
        ("/missing", "404", 2.0),
        ("/users/{id}", "200", 2.0),
    ] {
        let l = http(route, status);
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        wait_for_metric(&agent, HTTP_SERVER, &l, n, WAIT).unwrap();
        wait_for_metric(&agent, HTTP_CLIENT, &l, n, WAIT).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    let m = agent.metrics();
    let on_port = [("server_port", port.as_str())];
    for side in [HTTP_SERVER, HTTP_CLIENT] {
        assert_eq!(m.sum(side, &on_port), 304.0, "{side}\n{}", m.text());
    }
    assert_eq!(
        m.sum("periscope_parse_errors_total", &[]),
        0.0,
        "{}",
        m.text()
    );
}

/// HTTP/2 inside TLS (ALPN `h2`): nginx with `ssl http2`, curl and h2load as clients. The TLS
/// probes hand over the plaintext, which starts with the preface like `h2c`.
#[test]
fn https_with_http2_from_curl_and_h2load_is_counted_exactly() {
    let certs = TempDir::new("h2-certs").unwrap();
    let (cert, key) = harness::tls::self_signed(certs.path()).unwrap();
    let nginx = Nginx::start_with_config(&format!(
        r#"server {{
            listen 127.0.0.1:@PORT@ ssl http2;
            ssl_certificate {};
            ssl_certificate_key {};
            location /ok {{ return 200 "ok\n"; }}
            location /missing {{ return 404; }}
        }}"#,
        cert.display(),
        key.display()
    ));
    let agent = Agent::start(&[]).unwrap();
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", nginx.port());
    for _ in 0..5 {
        harness::curl(&["-k", "--http2", "-o", "/dev/null", &url("/ok")]).unwrap();
    }
    for _ in 0..2 {
        harness::curl(&["-k", "--http2", "-o", "/dev/null", &url("/missing")]).unwrap();
    }
    let h2load = Command::new("h2load")
        .args(["-n", "100", "-c", "2", "-m", "10", &url("/ok")])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&h2load.stdout);
    assert!(report.contains("100 succeeded"), "{report}");
    let port = nginx.port().to_string();
    for (status, n) in [("200", 105.0), ("404", 2.0)] {
        let l = [
            ("server_port", port.as_str()),
            ("http_response_status_code", status),
            ("network_protocol_version", "2"),
        ];
        wait_for_metric(&agent, HTTP_SERVER, &l, n, WAIT).unwrap();
        wait_for_metric(&agent, HTTP_CLIENT, &l, n, WAIT).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    let m = agent.metrics();
    let on_port = [("server_port", port.as_str())];
    for side in [HTTP_SERVER, HTTP_CLIENT] {
        assert_eq!(m.sum(side, &on_port), 107.0, "{side}\n{}", m.text());
    }
    assert_eq!(
        m.sum("periscope_parse_errors_total", &[]),
        0.0,
        "{}",
        m.text()
    );
}
