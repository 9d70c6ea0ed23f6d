//! End-to-end: HTTP/2 and gRPC in clear text (`h2c` with prior knowledge or by `Upgrade`). Real servers
//! (Python `grpcio`, nginx with `http2`), real clients (`grpcio`, curl, h2load), exact counts
//! per method and status on both ends.

use std::process::Command;
use std::time::Duration;

use harness::{wait_for_metric, Agent, GrpcServer, Nginx, PyServer, TempDir};

const RPC_SERVER: &str = "rpc_server_call_duration_seconds_count";
const RPC_CLIENT: &str = "rpc_client_call_duration_seconds_count";
const HTTP_SERVER: &str = "http_server_request_duration_seconds_count";
const HTTP_CLIENT: &str = "http_client_request_duration_seconds_count";
const WAIT: Duration = Duration::from_secs(20);

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
    let server = GrpcServer::start();
    let agent = Agent::start(&[]).unwrap();
    // Large messages too: one DATA frame each, sent with the trailers in one `sendmsg` of
    // many iovecs; the kernel walks the frames, so the trailers are seen.
    server.run_client(&[("BIG", "100000,1000000,70000")]);
    let port = server.port().to_string();
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
    h2load(&url("/ok"), 300, 3);
    for path in ["/missing", "/missing", "/users/7", "/users/8"] {
        harness::curl(&["--http2-prior-knowledge", "-o", "/dev/null", &url(path)]).unwrap();
    }
    let expected = [
        (Some("/ok"), "200", 300.0),
        (Some("/missing"), "404", 2.0),
        (Some("/users/{id}"), "200", 2.0),
    ];
    counted_on_both_ends_as_http2(&agent, nginx.port(), &expected, 304.0);
}

/// An ASGI app under hypercorn, which accepts `Upgrade: h2c`: `/missing` answers 404, `/big`
/// 1 MB, any other path 200 with its path as the body.
const HYPERCORN_H2C: &str = r#"
import asyncio, sys
from hypercorn.asyncio import serve
from hypercorn.config import Config

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    status = 404 if scope["path"] == "/missing" else 200
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    body = b"x" * 1_000_000 if scope["path"] == "/big" else scope["path"].encode()
    await send({"type": "http.response.body", "body": body})

config = Config()
config.bind = [f"127.0.0.1:{sys.argv[1]}"]
asyncio.run(serve(app, config))
"#;

/// `Upgrade: h2c` (curl `--http2` and `nghttp -u` on `http://` URLs): the upgrade request is
/// answered on HTTP/2 stream 1, so each request is one HTTP/2 exchange (no `101` of its own),
/// and the requests after it on the connection are ordinary streams.
#[test]
fn h2c_upgrade_from_curl_and_nghttp_is_counted_exactly() {
    let server = PyServer::start(HYPERCORN_H2C);
    let agent = Agent::start(&[]).unwrap();
    for path in ["/ok", "/ok", "/ok", "/missing", "/users/7"] {
        let out = Command::new("curl")
            .args(["-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version}"])
            .arg(server.url(path))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2", "{out:?}");
    }
    // One connection: 1 MB by the upgrade (stream 1), then /users/8 and /missing as streams
    // 3 and 5, sent while stream 1's DATA frames are still coming: the kernel frames HTTP/2
    // after the 101, so the frames behind the large ones in a syscall are seen.
    let out = Command::new("nghttp")
        .args(["-u", "-n"])
        .args([
            server.url("/big"),
            server.url("/users/8"),
            server.url("/missing"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let expected = [
        (Some("/ok"), "200", 3.0),
        (Some("/big"), "200", 1.0),
        (Some("/missing"), "404", 2.0),
        (Some("/users/{id}"), "200", 2.0),
    ];
    counted_on_both_ends_as_http2(&agent, server.port(), &expected, 8.0);
    let m = agent.metrics();
    let port = server.port().to_string();
    let switching = [
        ("server_port", port.as_str()),
        ("http_response_status_code", "101"),
    ];
    assert_eq!(m.sum(HTTP_SERVER, &switching), 0.0, "{}", m.text());
    // Nothing lost, unpaired or cut on the way (on any connection of the machine: the agent
    // and the test's own are all there is).
    assert_eq!(
        m.sum("periscope_decoder_anomalies_total", &[]),
        0.0,
        "{}",
        m.text()
    );
}

/// `h2load -n <n> -c <connections> -m 10 <url>`, every request answered 2xx.
fn h2load(url: &str, n: u32, connections: u32) {
    let out = Command::new("h2load")
        .args([
            "-n",
            &n.to_string(),
            "-c",
            &connections.to_string(),
            "-m",
            "10",
            url,
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("{n} succeeded")) && report.contains(&format!("{n} 2xx")),
        "{report}"
    );
}

/// Waits until the server and the client ends each counted `n` HTTP/2 requests per
/// (route, status) on `port`, then checks that they counted exactly `total` in all, and that
/// nothing failed to parse.
fn counted_on_both_ends_as_http2(
    agent: &Agent,
    port: u16,
    expected: &[(Option<&str>, &str, f64)],
    total: f64,
) {
    let port = port.to_string();
    for &(route, status, n) in expected {
        let mut l = vec![
            ("server_port", port.as_str()),
            ("http_response_status_code", status),
            ("network_protocol_version", "2"),
        ];
        l.extend(route.map(|r| ("http_route", r)));
        wait_for_metric(agent, HTTP_SERVER, &l, n, WAIT).unwrap();
        wait_for_metric(agent, HTTP_CLIENT, &l, n, WAIT).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    let m = agent.metrics();
    let on_port = [("server_port", port.as_str())];
    for side in [HTTP_SERVER, HTTP_CLIENT] {
        assert_eq!(m.sum(side, &on_port), total, "{side}\n{}", m.text());
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
    h2load(&url("/ok"), 100, 2);
    let expected = [(None, "200", 105.0), (None, "404", 2.0)];
    counted_on_both_ends_as_http2(&agent, nginx.port(), &expected, 107.0);
}

/// A gRPC connection opened before the agent started: the HPACK tables of both directions
/// began before the agent saw them, so a field that refers to an entry inserted earlier is
/// unknown (grpcio sends a repeated call's `:path` and `content-type` as such references).
/// Every call made after start-up is counted exactly once on each end (the side of a chunk
/// whose fields say nothing is the socket's); a method first used after start-up (its `:path`
/// sent literally) is named; nothing is invented: a call whose path is unknown has no route
/// or method name, and the unknown fields are counted by reason.
#[test]
fn a_grpc_connection_adopted_mid_stream_is_counted_without_invented_names() {
    let server = GrpcServer::start();
    let client = r#"
import os, sys, time, grpc
ident = lambda b: b
ch = grpc.insecure_channel("127.0.0.1:" + os.environ["PORT"])
m = lambda name: ch.unary_unary("/periscope.test.Echo/" + name, request_serializer=ident, response_deserializer=ident)
for i in range(5):
    assert m("Say")(b"before %d" % i) == b"before %d" % i
print("connected", flush=True)
while not os.path.exists(os.environ["PERISCOPE_GO"]):
    time.sleep(0.05)
for i in range(10):
    assert m("Say")(b"after %d" % i) == b"after %d" % i
for _ in range(3):
    try:
        m("Lookup")(b"k")
        raise SystemExit("Lookup succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
print("done", flush=True)
time.sleep(30)
"#;
    let (agent, _client) = harness::start_agent_mid_client(
        Command::new("python3")
            .args(["-c", client])
            .env("PORT", server.port().to_string()),
        &[],
    )
    .unwrap();
    let port = server.port().to_string();
    let on_port = [("server_port", port.as_str())];
    let sides = [(RPC_SERVER, HTTP_SERVER), (RPC_CLIENT, HTTP_CLIENT)];
    let counted = |m: &harness::Metrics, (rpc_side, http_side): (&str, &str)| {
        m.sum(rpc_side, &on_port) + m.sum(http_side, &on_port)
    };
    // The first request seen opens its header block with a reference to the unknown table,
    // which does not tell the side: the socket does (the server's local port listens).
    harness::wait_until(WAIT, Duration::from_millis(200), || {
        let m = agent.metrics();
        sides.iter().all(|&side| counted(&m, side) >= 13.0)
    });
    std::thread::sleep(Duration::from_secs(1));
    let m = agent.metrics();
    for side in sides {
        assert_eq!(counted(&m, side), 13.0, "{side:?}\n{}", m.text());
    }
    assert_eq!(
        m.sum(
            "periscope_decoder_anomalies_total",
            &[("protocol", "http2"), ("reason", "unexpected_response")],
        ),
        0.0,
        "{}",
        m.text()
    );
    for (rpc_side, http_side) in sides {
        // Lookup, first sent after start-up, is named on every call: as RPC when the content
        // type was decoded, else as HTTP with its path (the content type, sent before as a
        // table entry, is unknown).
        let lookup = m.sum(rpc_side, &[("rpc_method", "periscope.test.Echo/Lookup")])
            + m.sum(http_side, &[("http_route", "/periscope.test.Echo/Lookup")]);
        assert_eq!(lookup, 3.0, "{rpc_side}\n{}", m.text());
        // Nothing else is named: the other calls have no method or route.
        for s in m
            .samples(rpc_side)
            .iter()
            .chain(m.samples(http_side).iter())
        {
            if s.labels.get("server_port").map(String::as_str) != Some(port.as_str()) {
                continue;
            }
            for label in ["rpc_method", "http_route"] {
                let name = s.labels.get(label).map(String::as_str).unwrap_or("");
                assert!(
                    name.is_empty() || name.ends_with("periscope.test.Echo/Lookup"),
                    "{label}={name} invented\n{}",
                    m.text()
                );
            }
        }
    }
    assert!(
        m.sum(
            "periscope_decoder_anomalies_total",
            &[("protocol", "http2"), ("reason", "truncated_headers")]
        ) > 0.0,
        "the unknown fields are counted\n{}",
        m.text()
    );
}
