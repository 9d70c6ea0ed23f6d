//! End-to-end: spans over OTLP to a real receiver ([`Receiver`]: the official OTLP protobuf
//! bindings behind grpcio and an HTTP server), from real clients (curl, psql) and servers (the
//! Python HTTP test server, PostgreSQL) on loopback.
//!
//! Other traffic on the machine may be traced as well, so spans are picked by the test
//! server's port and counted exactly among those.
//!
//! The TLS tests make a CA and certificates with `openssl` at run time ([`Pki`]).

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::tls::Pki;
use harness::{
    curl, python_kafka_client, wait_for_metric, wait_until, Agent, AgentOptions, GrpcServer,
    MockKafka, PgServer, PyServer, Receiver, TempDir,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const SERVER: u64 = 2;
const CLIENT: u64 = 3;

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn res<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["resource"][key]
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Spans of `kind` whose server port is `port`, sorted by start time.
fn spans_to(receiver: &Receiver, port: u16, kind: u64) -> Vec<Value> {
    let mut spans: Vec<Value> = receiver
        .spans()
        .into_iter()
        .filter(|s| {
            u(&s["kind"]) == kind && attr(s, "server.port").as_u64() == Some(u64::from(port))
        })
        .collect();
    spans.sort_by_key(|s| u(&s["start"]));
    spans
}

/// Waits until exactly `n` spans of `kind` to `port` arrived, and stay `n` for another second.
fn expect_spans(receiver: &Receiver, port: u16, kind: u64, n: usize) -> Vec<Value> {
    let arrived = wait_until(WAIT, Duration::from_millis(200), || {
        spans_to(receiver, port, kind).len() >= n
    });
    std::thread::sleep(Duration::from_millis(1500));
    let spans = spans_to(receiver, port, kind);
    assert!(
        arrived && spans.len() == n,
        "wanted {n} spans of kind {kind} to port {port}, got {}: {spans:#?}",
        spans.len()
    );
    spans
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// N curl requests → exactly N SERVER and N CLIENT spans, named from the route, attributed,
/// with wall-clock times inside the test's own window, each client span around its server span.
fn http_requests_become_spans(protocol: &str) {
    let receiver = Receiver::start();
    let server = PyServer::http_test_server();
    let agent = receiver.agent(protocol);
    let n = 5;
    let before = unix_ns();
    for _ in 0..n {
        curl(&[&server.url("/sleep/50")]).unwrap();
    }
    let after = unix_ns();
    let port = server.port();
    let servers = expect_spans(&receiver, port, SERVER, n);
    let clients = expect_spans(&receiver, port, CLIENT, n);
    for (s, c) in servers.iter().zip(&clients) {
        for span in [s, c] {
            assert_eq!(
                span["transport"],
                protocol.split('/').next().unwrap_or(""),
                "{span}"
            );
            assert_eq!(span["name"], "GET /sleep/{id}", "{span}");
            assert_eq!(attr(span, "http.request.method"), "GET");
            assert_eq!(attr(span, "http.route"), "/sleep/{id}");
            assert_eq!(attr(span, "url.path"), "/sleep/50");
            assert_eq!(u(attr(span, "http.response.status_code")), 200);
            assert_eq!(attr(span, "server.address"), "127.0.0.1");
            assert_eq!(attr(span, "network.peer.address"), "127.0.0.1");
            assert_eq!(span["status_code"], 0, "{span}");
            assert_eq!(span["trace_id"].as_str().map(str::len), Some(32));
            assert_eq!(res(span, "telemetry.distro.name"), "periscope");
            assert!(
                u(&span["start"]) >= before && u(&span["end"]) <= after,
                "{span} outside {before}..{after}"
            );
            assert!(u(&span["end"]) - u(&span["start"]) >= 50_000_000, "{span}");
        }
        assert_eq!(attr(s, "client.address"), "127.0.0.1");
        // `url.full` on the client span only (curl's Host is `127.0.0.1:<port>`).
        assert_eq!(attr(c, "url.full"), server.url("/sleep/50").as_str(), "{c}");
        assert!(attr(s, "url.full").is_null(), "{s}");
        assert_eq!(u(res(s, "process.pid")), u64::from(server.pid()));
        // The service is named after the executable (Debian: python3.11).
        assert!(res(s, "service.name")
            .as_str()
            .is_some_and(|n| n.starts_with("python3")));
        assert_eq!(res(c, "process.executable.name"), "curl");
        // `telemetry.sdk.language` is the workload's, by its executable's name: the Python
        // server's is `python`, curl's (C) is not told.
        assert_eq!(res(s, "telemetry.sdk.language"), "python", "{s}");
        assert!(res(c, "telemetry.sdk.language").is_null(), "{c}");
        // curl is seen on this node: its span is the root, the server's its child, and the
        // times nest.
        assert_eq!(c["parent_span_id"], "", "{c}");
        assert_eq!(s["parent_span_id"], c["span_id"], "{s}\n{c}");
        assert_eq!(s["trace_id"], c["trace_id"]);
        assert!(
            u(&c["start"]) <= u(&s["start"]) && u(&s["end"]) <= u(&c["end"]),
            "client {c}\nserver {s}"
        );
    }
    let traces: std::collections::BTreeSet<String> =
        clients.iter().map(|c| c["trace_id"].to_string()).collect();
    assert_eq!(traces.len(), n, "one trace per request");
    let m = receiver.agrees_with(&agent);
    assert_eq!(m.sum("periscope_spans_dropped_total", &[]), 0.0);
    // The exports themselves are not traced (else each batch would make the next one).
    for collector in [receiver.http_port(), receiver.grpc_port()] {
        let own = [SERVER, CLIENT].map(|kind| spans_to(&receiver, collector, kind).len());
        assert_eq!(own, [0, 0], "spans of the exports to port {collector}");
    }
}

/// Exemplars: a real Prometheus (exemplar storage on) scrapes the agent in OpenMetrics; the
/// latency buckets of the server's and the client's series carry exemplars whose trace and
/// span ids are those of spans the collector received, of the same kind and port, with a
/// value inside the bucket. The classic text format carries none.
#[test]
fn latency_buckets_carry_exemplars_of_exported_spans() {
    let receiver = Receiver::start();
    let server = PyServer::http_test_server();
    let agent = receiver.agent("grpc");
    let prometheus = harness::Prometheus::start("periscope", &[agent.addr()], None).unwrap();
    let port = server.port();
    // Two latency buckets (le 0.025 and le 0.25) on each side.
    for path in [
        "/sleep/5",
        "/sleep/5",
        "/sleep/5",
        "/sleep/120",
        "/sleep/120",
    ] {
        curl(&[&server.url(path)]).unwrap();
    }
    let servers = expect_spans(&receiver, port, SERVER, 5);
    let clients = expect_spans(&receiver, port, CLIENT, 5);
    for (metric, spans) in [
        ("http_server_request_duration_seconds_bucket", &servers),
        ("http_client_request_duration_seconds_bucket", &clients),
    ] {
        let expr = format!("{metric}{{server_port=\"{port}\"}}");
        let mut answer = Value::Null;
        let found = wait_until(WAIT, Duration::from_millis(500), || {
            let text = prometheus.query_exemplars(&expr, 300).unwrap();
            answer = serde_json::from_str(&text).expect("JSON");
            exemplars_of(&answer).len() >= 2
        });
        assert!(
            found,
            "no exemplars for {expr}: {answer}\n{}",
            prometheus.log()
        );
        for (le, labels, value) in exemplars_of(&answer) {
            let span = spans
                .iter()
                .find(|s| s["span_id"] == labels["span_id"])
                .unwrap_or_else(|| panic!("exemplar {labels} names no span sent: {spans:#?}"));
            assert_eq!(span["trace_id"], labels["trace_id"], "{span}");
            assert!(value <= le && value > 0.0, "{value} in bucket {le}");
        }
        let buckets: std::collections::BTreeSet<String> = exemplars_of(&answer)
            .iter()
            .map(|(le, _, _)| le.to_string())
            .collect();
        assert_eq!(buckets.len(), 2, "{answer}");
    }
    let classic = harness::http_get(agent.addr(), "/metrics", Duration::from_secs(10)).unwrap();
    assert!(
        !classic.text().contains(" # {"),
        "exemplars in classic text"
    );
}

/// (bucket bound, labels, value) of every exemplar in a `query_exemplars` answer.
fn exemplars_of(answer: &Value) -> Vec<(f64, Value, f64)> {
    let mut out = Vec::new();
    for series in answer["data"].as_array().into_iter().flatten() {
        let le = series["seriesLabels"]["le"]
            .as_str()
            .and_then(|l| l.parse::<f64>().ok())
            .unwrap_or(f64::INFINITY);
        for e in series["exemplars"].as_array().into_iter().flatten() {
            let value = e["value"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1.0);
            out.push((le, e["labels"].clone(), value));
        }
    }
    out
}

#[test]
fn http_spans_over_grpc() {
    http_requests_become_spans("grpc");
}

#[test]
fn http_spans_over_http_protobuf() {
    http_requests_become_spans("http/protobuf");
}

/// The OpenTelemetry environment: the traces-specific protocol and headers win over the
/// general ones (spans arrive over HTTP/protobuf with the traces header although the general
/// settings say gRPC and another header), `OTEL_EXPORTER_OTLP_TIMEOUT` is taken, and
/// `OTEL_RESOURCE_ATTRIBUTES` joins every resource without overriding a process's own
/// `service.name`.
#[test]
fn opentelemetry_environment_variables_are_honoured() {
    let receiver = Receiver::start();
    let server = PyServer::http_test_server();
    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "http/protobuf".to_owned(),
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=general".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "x-tenant=team%20a".to_owned(),
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000".to_owned()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "k8s.cluster.name=ci,deployment.environment.name=test,service.name=nope".to_owned(),
        ),
    ];
    let _agent = receiver.agent_at("http/protobuf", "http://127.0.0.1", &env);
    for i in 0..3 {
        curl(&[&server.url(&format!("/a/{i}"))]).unwrap();
    }
    let spans = expect_spans(&receiver, server.port(), SERVER, 3);
    for span in &spans {
        assert_eq!(span["transport"], "http", "{span}");
        assert_eq!(span["tenant"], "team a", "{span}");
        assert_eq!(res(span, "k8s.cluster.name"), "ci", "{span}");
        assert_eq!(res(span, "deployment.environment.name"), "test", "{span}");
        assert_ne!(res(span, "service.name"), "nope", "{span}");
    }
    // A bad value stops start-up with the setting's name.
    let out = std::process::Command::new(harness::agent_binary())
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
        .env("OTEL_RESOURCE_ATTRIBUTES", "novalue")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OTEL_RESOURCE_ATTRIBUTES"), "{stderr}");
}

/// The batch span processor's settings by their OpenTelemetry names: batches of at most
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans, sent every `OTEL_BSP_SCHEDULE_DELAY` ms; and a batch
/// whose collector is unreachable is given up after `OTEL_BSP_EXPORT_TIMEOUT` ms, long before
/// its five attempts with backoff (0.25 + 0.5 + 1 + 2 s) would have run out.
#[test]
fn batch_span_processor_settings_are_honoured() {
    let receiver = Receiver::start();
    let server = PyServer::http_test_server();
    let env = [
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let agent = receiver.agent_at("http/protobuf", "http://127.0.0.1", &env);
    for i in 0..7 {
        curl(&[&server.url(&format!("/b/{i}"))]).unwrap();
    }
    // Server and client spans: 14 in requests of at most 2 spans.
    expect_spans(&receiver, server.port(), SERVER, 7);
    expect_spans(&receiver, server.port(), CLIENT, 7);
    let mut per_request = std::collections::BTreeMap::<u64, usize>::new();
    for span in receiver.spans() {
        *per_request.entry(u(&span["request"])).or_default() += 1;
    }
    assert!(per_request.len() >= 7, "{per_request:?}");
    assert!(per_request.values().all(|&n| n <= 2), "{per_request:?}");
    receiver.agrees_with(&agent);
    drop(agent);

    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:1".to_owned(),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ("OTEL_BSP_EXPORT_TIMEOUT", "300".to_owned()),
    ];
    let agent = Agent::start_with(AgentOptions {
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        ..AgentOptions::default()
    })
    .unwrap();
    curl(&[&server.url("/unreachable")]).unwrap();
    let dropped = |m: &harness::Metrics| {
        m.sum(
            "periscope_spans_dropped_total",
            &[("reason", "export_failed")],
        )
    };
    let started = std::time::Instant::now();
    assert!(wait_until(WAIT, Duration::from_millis(50), || {
        dropped(&agent.metrics()) >= 2.0
    }));
    // Flushed within a second, then given up: two attempts (at 0, then after a jittered
    // 0.125-0.25 s), as the next one (0.25-0.5 s later again) would start past 0.3 s.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let m = agent.metrics();
    assert_eq!(
        m.sum("periscope_span_export_errors_total", &[]),
        2.0,
        "{}",
        m.text()
    );
}

/// `OTEL_EXPORTER_OTLP_COMPRESSION=gzip` over both transports: the receiver inflates every
/// request and gets every span.
#[test]
fn gzip_compressed_exports_arrive_over_both_transports() {
    for protocol in ["http/protobuf", "grpc"] {
        let receiver = Receiver::start();
        let server = PyServer::http_test_server();
        let env = [("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".to_owned())];
        let agent = receiver.agent_at(protocol, "http://127.0.0.1", &env);
        for i in 0..5 {
            curl(&[&server.url(&format!("/z/{i}"))]).unwrap();
        }
        let spans = expect_spans(&receiver, server.port(), SERVER, 5);
        if protocol == "http/protobuf" {
            assert!(spans.iter().all(|s| s["encoding"] == "gzip"), "{spans:?}");
        }
        let m = receiver.agrees_with(&agent);
        assert_eq!(m.sum("periscope_span_export_errors_total", &[]), 0.0);
    }
}

/// A collector that answers 429 with `Retry-After: 1` is retried after that second, and the
/// batch then arrives whole.
#[test]
fn a_throttling_collector_is_retried_after_its_retry_after() {
    a_throttling_collector_is_retried_when_it_says("http/protobuf");
}

/// The gRPC form: RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` of 1 s in
/// `grpc-status-details-bin` (retryable only because of it, as the OTLP spec says).
#[test]
fn a_throttling_grpc_collector_is_retried_after_its_retry_info() {
    a_throttling_collector_is_retried_when_it_says("grpc");
}

fn a_throttling_collector_is_retried_when_it_says(protocol: &str) {
    let receiver = Receiver::start();
    let server = PyServer::http_test_server();
    let env = [(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "x-tenant=throttle-once".to_owned(),
    )];
    let agent = receiver.agent_at(protocol, "http://127.0.0.1", &env);
    for i in 0..3 {
        curl(&[&server.url(&format!("/t/{i}"))]).unwrap();
    }
    for span in expect_spans(&receiver, server.port(), SERVER, 3) {
        let (received, throttled) = (&span["received_at"], &span["throttled_at"]);
        let waited = received.as_f64().unwrap() - throttled.as_f64().expect("throttled first");
        // The backoff alone would have retried within 250 ms.
        assert!(
            waited >= 0.95,
            "retried {waited:.3} s after the throttling answer"
        );
    }
    let m = receiver.agrees_with(&agent);
    assert_eq!(
        m.sum("periscope_span_export_errors_total", &[]),
        1.0,
        "{}",
        m.text()
    );
    assert_eq!(
        m.sum("periscope_spans_dropped_total", &[]),
        0.0,
        "{}",
        m.text()
    );
}

/// A valid `traceparent` sent by curl puts curl's span into that trace under that parent, and
/// the server's span under curl's; an invalid one (upper-case hex) starts a new trace.
#[test]
fn incoming_traceparent_is_joined() {
    let receiver = Receiver::start();
    let server = PyServer::http_test_server();
    let _agent = receiver.agent("http/protobuf");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    curl(&[
        "-H",
        &format!("traceparent: 00-{trace}-{parent}-01"),
        "-H",
        "tracestate: vendor=x",
        &server.url("/a/1"),
    ])
    .unwrap();
    curl(&[
        "-H",
        &format!("traceparent: 00-{}-{parent}-01", trace.to_uppercase()),
        &server.url("/b/2"),
    ])
    .unwrap();
    let servers = expect_spans(&receiver, server.port(), SERVER, 2);
    let clients = expect_spans(&receiver, server.port(), CLIENT, 2);
    let named = |spans: &[Value], name: &str| -> Value {
        let found = spans.iter().find(|s| s["name"] == name);
        found
            .cloned()
            .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"))
    };
    let (joined, caller) = (
        named(&servers, "GET /a/{id}"),
        named(&clients, "GET /a/{id}"),
    );
    for span in [&joined, &caller] {
        assert_eq!(span["trace_id"], trace, "{span}");
        assert_eq!(span["trace_state"], "vendor=x", "{span}");
        assert_ne!(span["span_id"], parent);
    }
    assert_eq!(caller["parent_span_id"], parent);
    assert_eq!(joined["parent_span_id"], caller["span_id"]);
    let (fresh, caller) = (
        named(&servers, "GET /b/{id}"),
        named(&clients, "GET /b/{id}"),
    );
    assert_ne!(
        fresh["trace_id"].as_str().map(str::to_lowercase),
        Some(trace.to_owned())
    );
    assert_eq!(caller["parent_span_id"], "");
    assert_eq!(fresh["parent_span_id"], caller["span_id"]);
}

/// One psql query → one CLIENT span (psql) and one SERVER span (the backend), `SELECT orders`.
#[test]
fn postgres_query_spans() {
    let receiver = Receiver::start();
    let pg = PgServer::start();
    pg.psql(&["-c", "CREATE TABLE orders (id int, item text)"])
        .unwrap();
    let agent = receiver.agent("grpc");
    pg.psql(&["-c", "SELECT item FROM orders WHERE id = 42"])
        .unwrap();
    let port = pg.port();
    let spans: Vec<Value> = [SERVER, CLIENT]
        .into_iter()
        .flat_map(|kind| {
            expect_spans(&receiver, port, kind, 1)
                .into_iter()
                .filter(|s| s["name"] == "SELECT orders")
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for span in &spans {
        assert_eq!(attr(span, "db.system.name"), "postgresql");
        assert_eq!(attr(span, "db.namespace"), "postgres");
        assert_eq!(attr(span, "db.operation.name"), "SELECT");
        assert_eq!(attr(span, "db.collection.name"), "orders");
        assert_eq!(
            attr(span, "db.query.text"),
            "SELECT item FROM orders WHERE id = ?"
        );
        assert_eq!(u(attr(span, "db.response.returned_rows")), 0);
    }
    assert_eq!(res(&spans[1], "process.executable.name"), "psql");
    drop(agent);
}

/// The receiver goes away: capture and metrics go on, failed exports are counted, and spans
/// made after it is back arrive. Every span is either exported or counted as dropped.
#[test]
fn collector_outage_is_survived_and_counted() {
    let mut receiver = Receiver::start();
    let server = PyServer::http_test_server();
    let port = server.port().to_string();
    let mut agent = receiver.agent("http/protobuf");
    curl(&[&server.url("/before/1")]).unwrap();
    expect_spans(&receiver, server.port(), SERVER, 1);

    receiver.stop();
    let down = 4;
    for _ in 0..down {
        curl(&[&server.url("/down/1")]).unwrap();
    }
    let labels = [("server_port", port.as_str())];
    wait_for_metric(
        &agent,
        "http_server_request_duration_seconds_count",
        &labels,
        1.0 + down as f64,
        WAIT,
    )
    .unwrap();
    // Five attempts with backoff (0.25 + 0.5 + 1 + 2 s), then the batch is dropped.
    assert!(
        wait_until(WAIT, Duration::from_millis(200), || {
            let m = agent.metrics();
            m.sum("periscope_span_export_errors_total", &[]) >= 5.0
                && m.sum(
                    "periscope_spans_dropped_total",
                    &[("reason", "export_failed")],
                ) >= 2.0 * down as f64
        }),
        "{}",
        agent.metrics().text()
    );
    assert!(agent.is_running());

    receiver.restart();
    let after = 3;
    for _ in 0..after {
        curl(&[&server.url("/after/1")]).unwrap();
    }
    let named = |name: &str| {
        spans_to(&receiver, server.port(), SERVER)
            .iter()
            .filter(|s| s["name"] == name)
            .count()
    };
    assert!(wait_until(WAIT, Duration::from_millis(200), || named(
        "GET /after/{id}"
    ) >= after));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(named("GET /after/{id}"), after);
    assert_eq!(named("GET /before/{id}"), 1);
    // Spans made while it was down were dropped (counted above), or, for a batch still being
    // retried when it came back, exported late: never more than were made.
    assert!(named("GET /down/{id}") < down);
    wait_for_metric(
        &agent,
        "http_server_request_duration_seconds_count",
        &labels,
        (1 + down + after) as f64,
        WAIT,
    )
    .unwrap();
    receiver.agrees_with(&agent);
    assert!(agent.is_running());
}

/// `--traces-stdout` without a collector: one JSON line per span on the agent's stdout.
#[test]
fn spans_as_json_lines_on_stdout() {
    let server = PyServer::http_test_server();
    let agent = Agent::start(&["--traces-stdout"]).unwrap();
    let n = 3;
    for _ in 0..n {
        curl(&[&server.url("/status/201")]).unwrap();
    }
    let port = i64::from(server.port());
    let lines = |kind: &str| -> Vec<Value> {
        agent
            .full_log()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|s| s["kind"] == kind && s["attributes"]["server.port"].as_i64() == Some(port))
            .collect()
    };
    assert!(wait_until(WAIT, Duration::from_millis(200), || lines(
        "SERVER"
    )
    .len()
        >= n
        && lines("CLIENT").len() >= n));
    std::thread::sleep(Duration::from_millis(1000));
    for kind in ["SERVER", "CLIENT"] {
        let spans = lines(kind);
        assert_eq!(spans.len(), n, "{spans:#?}");
        for s in &spans {
            assert_eq!(s["name"], "GET /status/{id}");
            assert_eq!(s["attributes"]["http.response.status_code"], 201);
            assert_eq!(s["trace_id"].as_str().map(str::len), Some(32));
            assert_eq!(s["resource"]["telemetry.distro.name"], "periscope");
        }
    }
    let m = agent.metrics();
    assert_eq!(
        m.sum("periscope_spans_exported_total", &[]),
        0.0,
        "no collector"
    );
}

/// Five Produce requests (kafka-python, each acknowledged) → five PRODUCER spans from the
/// client and five SERVER spans from the broker, `send orders` (messaging conventions 1.27+),
/// one message each.
#[test]
fn kafka_produce_spans() {
    let receiver = Receiver::start();
    let kafka = MockKafka::start();
    let _agent = receiver.agent("grpc");
    let out = python_kafka_client(
        &kafka,
        r#"
import os
from kafka import KafkaProducer
p = KafkaProducer(bootstrap_servers=os.environ["BOOTSTRAP"], acks=1, api_version=(2, 0, 0), linger_ms=0)
for i in range(5):
    p.send("orders", b"order %d" % i, partition=0).get(timeout=10)
p.close()
print("sent")
"#,
    )
    .unwrap();
    assert_eq!(out.trim(), "sent");
    let port = kafka.port();
    let send = |kind: u64| -> Vec<Value> {
        spans_to(&receiver, port, kind)
            .into_iter()
            .filter(|s| s["name"] == "send orders")
            .collect()
    };
    assert!(wait_until(WAIT, Duration::from_millis(200), || send(4)
        .len()
        >= 5
        && send(SERVER).len() >= 5));
    std::thread::sleep(Duration::from_millis(1500));
    for kind in [4, SERVER] {
        let spans = send(kind);
        assert_eq!(spans.len(), 5, "{spans:#?}");
        for span in &spans {
            assert_eq!(attr(span, "messaging.system"), "kafka");
            assert_eq!(attr(span, "messaging.destination.name"), "orders");
            assert_eq!(attr(span, "messaging.operation.name"), "send");
            assert_eq!(attr(span, "periscope.kafka.api_name"), "Produce");
            assert_eq!(
                attr(span, "messaging.operation.type").as_str(),
                (kind == 4).then_some("send")
            );
            assert_eq!(u(attr(span, "messaging.kafka.message.count")), 1);
            assert_eq!(span["status_code"], 0);
        }
    }
}

/// A gateway that calls a backend from the thread handling each request.
const GATEWAY: &str = r#"
import sys, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

backend = int(sys.argv[2])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b"hello\n"
        if self.path == "/proxy":
            with urllib.request.urlopen("http://127.0.0.1:%d/status/200" % backend) as r:
                body = r.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

/// The backend call a gateway thread makes while handling a request is that request's child:
/// same trace, parent = the server span.
#[test]
fn calls_made_while_serving_are_children() {
    let receiver = Receiver::start();
    let backend = PyServer::http_test_server();
    let gateway = PyServer::launch(GATEWAY, &[&backend.port().to_string()]).unwrap();
    let _agent = receiver.agent("grpc");
    // The first request only makes the gateway known as a server.
    curl(&[&gateway.url("/hello")]).unwrap();
    expect_spans(&receiver, gateway.port(), SERVER, 1);
    let n = 3;
    for _ in 0..n {
        assert_eq!(curl(&[&gateway.url("/proxy")]).unwrap(), "status 200\n");
    }
    let servers: Vec<Value> = expect_spans(&receiver, gateway.port(), SERVER, 1 + n)
        .into_iter()
        .filter(|s| s["name"] == "GET /proxy")
        .collect();
    let calls: Vec<Value> = expect_spans(&receiver, backend.port(), CLIENT, n);
    assert_eq!(servers.len(), n);
    for call in &calls {
        assert_eq!(
            u(res(call, "process.pid")),
            u64::from(gateway.pid()),
            "{call}"
        );
        let parent = servers
            .iter()
            .find(|s| s["span_id"] == call["parent_span_id"])
            .unwrap_or_else(|| panic!("no server span is the parent of {call}\n{servers:#?}"));
        assert_eq!(parent["trace_id"], call["trace_id"]);
        assert!(u(&parent["start"]) <= u(&call["start"]) && u(&call["end"]) <= u(&parent["end"]));
    }
    let parents: std::collections::BTreeSet<String> = calls
        .iter()
        .map(|c| c["parent_span_id"].to_string())
        .collect();
    assert_eq!(parents.len(), n, "one call per request");
}

/// An app that reads an order from PostgreSQL for each `GET /orders/<n>` (row `(n - 1) % 10 +
/// 1`): on its own connection per thread, opened on the thread's first request, or with
/// `pooled` as its last argument from one `psycopg_pool.ConnectionPool` of 3 connections shared
/// by all its request threads (so a database connection serves many threads in turn).
const ORDERS_APP: &str = r#"
import sys, threading
import psycopg
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

db_url = sys.argv[2]
pooled = sys.argv[-1] == "pooled"
local = threading.local()
if pooled:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(db_url, min_size=3, max_size=3, kwargs={"autocommit": True})
    pool.wait()

QUERY = "SELECT item FROM orders WHERE id = %s"


def item(order):
    if pooled:
        with pool.connection() as db:
            return db.execute(QUERY, (order,)).fetchone()[0]
    if not hasattr(local, "db"):
        local.db = psycopg.connect(db_url, autocommit=True)
    return local.db.execute(QUERY, (order,)).fetchone()[0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        order = (int(self.path.rsplit("/", 1)[-1]) - 1) % 10 + 1
        body = (item(order) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

/// PostgreSQL with an `orders` table of 10 rows, and [`ORDERS_APP`] serving from it (`mode`:
/// `"pooled"`, or `""` for a connection per thread).
fn orders_app(mode: &str) -> (PgServer, PyServer) {
    let pg = PgServer::start();
    pg.psql(&[
        "-c",
        "CREATE TABLE orders (id int, item text); \
         INSERT INTO orders SELECT i, 'item ' || i FROM generate_series(1, 10) i",
    ])
    .unwrap();
    let db_url = format!("{}?sslmode=disable&gssencmode=disable", pg.url("postgres"));
    let app = PyServer::launch(ORDERS_APP, &[&db_url, mode]).unwrap();
    (pg, app)
}

/// curl → nginx (reverse proxy) → Python app → PostgreSQL, none of them propagating context:
/// each request is one trace of six spans, each the child of the one before, with times that
/// nest. A `traceparent` sent by curl (which nginx passes on) puts the whole tree in its trace.
#[test]
fn a_request_through_four_processes_is_one_trace() {
    request_through_four_processes("auto", "sock_ops", false);
}

/// The same with nginx serving HTTPS: its two sides of the first hop are TLS plaintext from
/// the TLS uprobes, and join the trace like socket bytes do.
#[test]
fn a_request_through_https_nginx_is_one_trace() {
    request_through_four_processes("auto", "sock_ops", true);
}

/// The same with the connect hook for kernels before 6.10 (`--connect-hook tracepoint`).
#[test]
fn a_request_through_four_processes_is_one_trace_with_the_tracepoint_connect_hook() {
    request_through_four_processes("tracepoint", "tracepoint", false);
}

/// curl → nginx → Python → PostgreSQL, with `--connect-hook <hook>` (which must end up as
/// `tier` in `periscope_hooks_info`); with `https` curl speaks HTTPS to nginx.
fn request_through_four_processes(hook: &str, tier: &str, https: bool) {
    let receiver = Receiver::start();
    let (pg, app) = orders_app("");
    let certs = TempDir::new("nginx-certs").unwrap();
    let listen = if https {
        let (cert, key) = harness::tls::self_signed(certs.path()).unwrap();
        format!(
            "listen 127.0.0.1:@PORT@ ssl; ssl_certificate {}; ssl_certificate_key {};",
            cert.display(),
            key.display()
        )
    } else {
        "listen 127.0.0.1:@PORT@;".to_owned()
    };
    let nginx = harness::Nginx::start_with_config(&format!(
        "server {{ {listen} location / {{ proxy_pass http://127.0.0.1:{}; }} }}",
        app.port()
    ));
    let url = |path: &str| {
        let scheme = if https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", nginx.port())
    };
    let curl = |args: &[&str]| {
        let mut all = vec!["-k"];
        all.extend_from_slice(args);
        curl(&all)
    };
    let agent = receiver.agent_at(
        "grpc",
        "http://127.0.0.1",
        &[("PERISCOPE_CONNECT_HOOK", hook.to_owned())],
    );
    let info = agent.metrics().samples("periscope_hooks_info");
    assert_eq!(info[0].labels["connect_hook"], tier, "{info:?}");
    // The first request makes nginx and the app known as servers: only then are the calls
    // their threads make held for a parent.
    assert_eq!(curl(&[&url("/orders/1")]).unwrap(), "item 1\n");
    expect_spans(&receiver, app.port(), SERVER, 1);
    let n = 4;
    for i in 2..2 + n {
        assert_eq!(
            curl(&[&url(&format!("/orders/{i}"))]).unwrap(),
            format!("item {i}\n")
        );
    }
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let header = format!("traceparent: 00-{trace}-00f067aa0ba902b7-01");
    assert_eq!(
        curl(&["-H", &header, &url("/orders/9")]).unwrap(),
        "item 9\n"
    );
    let total = 2 + n;
    // Hop by hop, in call order: (port, kind), and what each span must be called.
    let hops = [
        (nginx.port(), CLIENT, "GET /orders/{id}"),
        (nginx.port(), SERVER, "GET /orders/{id}"),
        (app.port(), CLIENT, "GET /orders/{id}"),
        (app.port(), SERVER, "GET /orders/{id}"),
        (pg.port(), CLIENT, "SELECT orders"),
        (pg.port(), SERVER, "SELECT orders"),
    ];
    let spans: Vec<Vec<Value>> = hops
        .iter()
        .map(|(port, kind, name)| {
            let spans = expect_spans(&receiver, *port, *kind, total);
            assert!(spans.iter().all(|s| s["name"] == *name), "{spans:#?}");
            spans
        })
        .collect();
    let execs = ["curl", "nginx", "nginx", "python3", "python3", "postgres"];
    // The first hop is HTTPS when asked, the second plain HTTP.
    let schemes = [https, https, false, false];
    for (hop, tls) in spans.iter().zip(schemes) {
        let want = if tls { "https" } else { "http" };
        assert!(
            hop.iter().all(|s| attr(s, "url.scheme") == want),
            "{hop:#?}"
        );
    }
    // Request by request (spans are sorted by start), skipping the first.
    for r in 1..total {
        let chain: Vec<&Value> = spans.iter().map(|hop| &hop[r]).collect();
        let root = chain[0];
        assert_eq!(
            root["parent_span_id"],
            if r == total - 1 {
                "00f067aa0ba902b7"
            } else {
                ""
            }
        );
        if r == total - 1 {
            assert_eq!(root["trace_id"], trace);
        }
        for (span, exe) in chain.iter().zip(execs) {
            assert_eq!(
                span["trace_id"], root["trace_id"],
                "request {r}: {chain:#?}"
            );
            let name = res(span, "process.executable.name").as_str().unwrap_or("");
            assert!(name.starts_with(exe), "{name} is not {exe}");
        }
        for pair in chain.windows(2) {
            let (parent, child) = (pair[0], pair[1]);
            assert_eq!(
                child["parent_span_id"], parent["span_id"],
                "request {r}: {chain:#?}"
            );
            assert!(
                u(&parent["start"]) <= u(&child["start"]) && u(&child["end"]) <= u(&parent["end"]),
                "request {r}: {child} not inside {parent}"
            );
        }
    }
    let traces: std::collections::BTreeSet<String> =
        spans[0].iter().map(|s| s["trace_id"].to_string()).collect();
    assert_eq!(traces.len(), total, "one trace per request");
}

/// One `requests.Session` (a pool of 3 keep-alive connections) shared by 8 threads, each
/// getting `/orders/<i>` for its share of 1..=N: connections pass from thread to thread.
const POOLED_CLIENT: &str = r#"
import sys, threading, requests
from requests.adapters import HTTPAdapter

port, n = int(sys.argv[1]), int(sys.argv[2])
session = requests.Session()
session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=3, pool_block=True))
failures = []


def work(t):
    for i in range(1 + t, n + 1, 8):
        r = session.get(f"http://127.0.0.1:{port}/orders/{i}", timeout=10)
        if r.status_code != 200:
            failures.append(i)


threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not failures, failures
"#;

/// `n` requests for `/orders/<first>`… pipelined in one write on one connection; reads all
/// the answers.
const PIPELINED_CLIENT: &str = r#"
import socket, sys

port, first, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"".join(
    f"GET /orders/{i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    for i in range(first, first + n)
))
seen = b""
while seen.count(b"HTTP/1.1 200") < n:
    chunk = s.recv(65536)
    assert chunk, "closed early"
    seen += chunk
s.close()
"#;

/// The span of `spans` whose `span_id` is `child`'s parent.
fn parent_of<'a>(spans: &'a [Value], child: &Value) -> Option<&'a Value> {
    spans
        .iter()
        .find(|s| s["span_id"] == child["parent_span_id"])
}

/// Connection pools: HTTP keep-alive connections shared by a client's threads, and database
/// connections shared by a server's threads, and requests pipelined on one connection. Each
/// server span is the child of exactly the client span of its own request (checked by path
/// for HTTP; for SQL, one call per request inside its parent's time), never of another
/// request that used the same connection.
#[test]
fn pooled_and_pipelined_connections_parent_each_span_to_its_own_request() {
    let receiver = Receiver::start();
    let (pg, app) = orders_app("pooled");
    let _agent = receiver.agent("grpc");
    // The first request makes the app known as a server (see `calls_made_while_serving…`).
    assert_eq!(curl(&[&app.url("/orders/0")]).unwrap(), "item 10\n");
    expect_spans(&receiver, app.port(), SERVER, 1);
    let (pooled, pipelined) = (64usize, 10usize);
    let run = |code: &str, args: &[String]| {
        let out = Command::new("python3")
            .arg("-c")
            .arg(code)
            .args(args)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(POOLED_CLIENT, &[app.port().to_string(), pooled.to_string()]);
    let first = 1000;
    run(
        PIPELINED_CLIENT,
        &[
            app.port().to_string(),
            first.to_string(),
            pipelined.to_string(),
        ],
    );
    let total = 1 + pooled + pipelined;
    let clients = expect_spans(&receiver, app.port(), CLIENT, total);
    let servers = expect_spans(&receiver, app.port(), SERVER, total);
    // The query of the very first request has no parent (the app was not known to serve yet).
    let sql_calls = expect_spans(&receiver, pg.port(), CLIENT, total);
    let second = u(&servers[1]["start"]);
    let parented_calls: Vec<Value> = sql_calls
        .iter()
        .filter(|c| u(&c["start"]) > second)
        .cloned()
        .collect();
    assert_eq!(parented_calls.len(), total - 1);
    let sql_servers = expect_spans(&receiver, pg.port(), SERVER, total);
    // HTTP: by path, which is unique per request.
    for server in &servers {
        let path = attr(server, "url.path");
        let parent = parent_of(&clients, server)
            .unwrap_or_else(|| panic!("no client span is the parent of {server}"));
        assert_eq!(attr(parent, "url.path"), path, "{server}\nparent {parent}");
        assert_eq!(parent["trace_id"], server["trace_id"]);
    }
    // SQL: each server request has exactly one query as its child, inside it, and each
    // query's server end is the child of that query (one each).
    for (children, parents, what) in [
        (&parented_calls, &servers, "query made while serving"),
        (&sql_servers, &sql_calls, "PostgreSQL server span"),
    ] {
        let mut seen = std::collections::BTreeSet::new();
        for child in children {
            let parent = parent_of(parents, child)
                .unwrap_or_else(|| panic!("no parent for the {what} {child}"));
            assert_eq!(parent["trace_id"], child["trace_id"], "{what}");
            assert!(
                u(&parent["start"]) <= u(&child["start"]) && u(&child["end"]) <= u(&parent["end"]),
                "{what} {child} not inside {parent}"
            );
            assert!(
                seen.insert(parent["span_id"].to_string()),
                "two children of {parent}"
            );
        }
    }
}

/// An `https://` collector whose CA is given in `OTEL_EXPORTER_OTLP_CERTIFICATE`: N requests →
/// exactly N SERVER spans over TLS, every one counted as exported, no export error. gRPC runs
/// with mutual TLS (the collector demands the client certificate) to `localhost`; OTLP/HTTP
/// with server TLS only to 127.0.0.1 (the certificate's IP address).
fn spans_over_tls(protocol: &str) {
    let pki = Pki::generate();
    let mutual = protocol == "grpc";
    let receiver = Receiver::start_with_pki(&pki, mutual);
    let server = PyServer::http_test_server();
    let mut env = vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem"))];
    let base = if mutual {
        env.push((
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            pki.path("client.pem"),
        ));
        env.push((
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            pki.path("client.key"),
        ));
        "https://localhost"
    } else {
        "https://127.0.0.1"
    };
    let agent = receiver.agent_at(protocol, base, &env);
    let n = 4;
    for _ in 0..n {
        curl(&[&server.url("/tls/1")]).unwrap();
    }
    let spans = expect_spans(&receiver, server.port(), SERVER, n);
    for span in &spans {
        assert_eq!(span["transport"], protocol.split('/').next().unwrap_or(""));
        assert_eq!(span["name"], "GET /tls/{id}", "{span}");
    }
    let m = receiver.agrees_with(&agent);
    assert_eq!(m.sum("periscope_span_export_errors_total", &[]), 0.0);
    assert!(!agent.log().contains("TLS handshake"), "{}", agent.log());
}

#[test]
fn spans_over_grpc_with_mutual_tls() {
    spans_over_tls("grpc");
}

#[test]
fn spans_over_https_protobuf() {
    spans_over_tls("http/protobuf");
}

/// A collector whose certificate the agent does not trust (its CA is not given): no span
/// arrives, capture and /metrics go on, failed exports are counted, and the TLS error is
/// logged once, not once per attempt.
#[test]
fn untrusted_collector_certificate_is_counted_not_fatal() {
    let pki = Pki::generate();
    let receiver = Receiver::start_with_pki(&pki, false);
    let server = PyServer::http_test_server();
    let mut agent = receiver.agent_at("grpc", "https://localhost", &[]);
    let n = 3;
    for _ in 0..n {
        curl(&[&server.url("/untrusted/1")]).unwrap();
    }
    let port = server.port().to_string();
    wait_for_metric(
        &agent,
        "http_server_request_duration_seconds_count",
        &[("server_port", port.as_str())],
        n as f64,
        WAIT,
    )
    .unwrap();
    // Two attempts at least, so that a warning per attempt would show as two.
    assert!(
        wait_until(WAIT, Duration::from_millis(200), || {
            agent
                .metrics()
                .sum("periscope_span_export_errors_total", &[])
                >= 2.0
        }),
        "{}",
        agent.metrics().text()
    );
    assert!(agent.is_running());
    assert_eq!(receiver.spans().len(), 0, "{:#?}", receiver.spans());
    assert_eq!(
        agent.metrics().sum("periscope_spans_exported_total", &[]),
        0.0
    );
    let log = agent.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS handshake with"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("certificate"), "{log}");
}

/// gRPC: ten concurrent calls on one HTTP/2 connection (their times overlap, so only the
/// stream pairs the two ends) and one carrying a `traceparent` in its metadata. Exactly one
/// SERVER and one CLIENT span per call, named by `rpc.method`, each server span the child of
/// its own call's client span.
#[test]
fn grpc_calls_become_spans_paired_by_stream() {
    let receiver = Receiver::start();
    let server = GrpcServer::start();
    let _agent = receiver.agent("grpc");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    server.run_python(
        r#"
import os, grpc
ident = lambda b: b
ch = grpc.insecure_channel("127.0.0.1:" + os.environ["PORT"])
nap = ch.unary_unary("/periscope.test.Echo/Nap", request_serializer=ident, response_deserializer=ident)
calls = [nap.future(b"x" * (i + 1)) for i in range(10)]
assert [len(c.result()) for c in calls] == [i + 1 for i in range(10)]
tp = "00-" + os.environ["TRACE"] + "-00f067aa0ba902b7-01"
assert nap(b"traced", metadata=(("traceparent", tp),)) == b"traced"
ch.close()
"#,
        &[("TRACE", trace)],
    );
    let port = server.port();
    let servers = expect_spans(&receiver, port, SERVER, 11);
    let clients = expect_spans(&receiver, port, CLIENT, 11);
    for span in servers.iter().chain(&clients) {
        assert_eq!(span["name"], "periscope.test.Echo/Nap", "{span}");
        assert_eq!(attr(span, "rpc.system.name"), "grpc");
        assert_eq!(attr(span, "rpc.method"), "periscope.test.Echo/Nap");
        assert_eq!(attr(span, "rpc.status_code"), "OK");
        assert_eq!(attr(span, "network.protocol.version"), "2");
        assert_eq!(span["status_code"], 0, "{span}");
    }
    // Each server span's parent is a distinct client span, in the same trace, whose time
    // holds it.
    let mut parents = std::collections::BTreeSet::new();
    for s in &servers {
        let parent = clients
            .iter()
            .find(|c| c["span_id"] == s["parent_span_id"])
            .unwrap_or_else(|| panic!("no client parent for {s}"));
        assert_eq!(s["trace_id"], parent["trace_id"]);
        assert!(u(&parent["start"]) <= u(&s["start"]) && u(&s["end"]) <= u(&parent["end"]));
        parents.insert(parent["span_id"].to_string());
    }
    assert_eq!(parents.len(), 11, "one client span per server span");
    assert_eq!(
        clients.iter().filter(|c| c["trace_id"] == trace).count(),
        1,
        "the traced call joins its traceparent"
    );
}
