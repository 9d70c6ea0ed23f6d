use super::*;
use crate::exchange::testkit::pod_process as process;
use crate::exchange::{Endpoint, PostgresDetail};
use crate::protocol::http1::HttpExchange;
use crate::protocol::kafka::{KafkaExchange, TopicStats};
use crate::protocol::postgres::PgExchange;

fn exchange(role: Role, detail: Detail) -> Exchange {
    Exchange {
        role,
        start_ns: 1,
        end_ns: 2,
        endpoint: Endpoint {
            process: process(),
            peer: Some("10.0.0.2:5000".parse().expect("literal")),
            server_port: Some(8080),
            tid: Some(7),
            conn_id: 1,
            peer_conn: None,
            tls: false,
        },
        detail,
    }
}

fn http(status: u16, method: &str) -> Detail {
    Detail::Http(HttpExchange {
        method: method.into(),
        path: "/users/42".into(),
        route: "/users/{id}".into(),
        status,
        start_ns: 1,
        end_ns: 2,
        request_body_bytes: 0,
        response_body_bytes: 3,
        host: Some("shop:8080".into()),
        traceparent: None,
        tracestate: Some("a=b".into()),
        complete: true,
        version: Default::default(),
        grpc: None,
        stream_id: None,
    })
}

fn kafka(api: &'static str, error_code: i16) -> Detail {
    Detail::Kafka(KafkaExchange {
        // The key of each API name, as the decoder sets both.
        api_key: match api {
            "Produce" => 0,
            "Fetch" => 1,
            "ListOffsets" => 2,
            "Metadata" => 3,
            _ => 18,
        },
        api_name: api,
        api_version: 9,
        correlation_id: 1,
        client_id: Some("c1".into()),
        topics: vec![TopicStats {
            name: Some("orders".into()),
            topic_id: None,
            partitions: 1,
            record_count: 3,
            error_code,
        }],
        acks: None,
        error_code,
        metadata_topics: Vec::new(),
        start_ns: 1,
        end_ns: 2,
        request_bytes: 10,
        response_bytes: 10,
        complete: true,
    })
}

fn get<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn s(v: &str) -> Option<Value> {
    Some(Value::Str(v.into()))
}

#[test]
fn http_spans_are_named_from_the_route_and_fail_by_side() {
    let span = describe(&exchange(Role::Server, http(503, "GET")), None);
    assert_eq!(span.name, "GET /users/{id}");
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.error.as_deref(), Some(""));
    assert_eq!(get(&span, "error.type").cloned(), s("503"));
    assert_eq!(get(&span, "server.address").cloned(), s("shop"));
    assert_eq!(get(&span, "client.address").cloned(), s("10.0.0.2"));
    assert_eq!(get(&span, "server.port").cloned(), Some(Value::Int(8080)));
    // A tracestate without a valid traceparent is not passed on.
    assert_eq!(span.trace_state, "");
    assert!(describe(&exchange(Role::Server, http(404, "GET")), None)
        .error
        .is_none());
    let client = describe(&exchange(Role::Client, http(404, "GET")), None);
    assert_eq!(client.kind, SpanKind::Client);
    assert!(client.error.is_some());
    assert!(get(&client, "client.address").is_none());
    let odd = describe(&exchange(Role::Server, http(200, "BREW")), None);
    assert_eq!(odd.name, "HTTP /users/{id}");
    assert_eq!(get(&odd, "http.request.method").cloned(), s("_OTHER"));
}

fn with_http(detail: Detail, f: impl FnOnce(&mut HttpExchange)) -> Detail {
    match detail {
        Detail::Http(mut h) => {
            f(&mut h);
            Detail::Http(h)
        }
        other => other,
    }
}

/// HTTP conventions: `url.full` is required on a client span, and a server span has none.
#[test]
fn http_client_spans_carry_the_full_url() {
    let client = describe(&exchange(Role::Client, http(200, "GET")), None);
    assert_eq!(
        get(&client, "url.full").cloned(),
        s("http://shop:8080/users/42")
    );
    let server = describe(&exchange(Role::Server, http(200, "GET")), None);
    assert!(get(&server, "url.full").is_none());
    assert_eq!(get(&server, "url.path").cloned(), s("/users/42"));
    assert_eq!(get(&server, "url.scheme").cloned(), s("http"));
    // Over TLS the scheme is https.
    let mut tls = exchange(Role::Client, http(200, "GET"));
    tls.endpoint.tls = true;
    assert_eq!(
        get(&describe(&tls, None), "url.full").cloned(),
        s("https://shop:8080/users/42")
    );
}

/// Credentials in a Host header (or `:authority`) reach neither `url.full` nor
/// `server.address`.
#[test]
fn userinfo_never_reaches_a_span() {
    let detail = with_http(http(200, "GET"), |h| {
        h.host = Some("alice:s3cret@shop:8080".into())
    });
    let span = describe(&exchange(Role::Client, detail), None);
    assert_eq!(
        get(&span, "url.full").cloned(),
        s("http://shop:8080/users/42")
    );
    assert_eq!(get(&span, "server.address").cloned(), s("shop"));
    let leaked = span
        .attributes
        .iter()
        .any(|(_, v)| matches!(v, Value::Str(v) if v.contains("s3cret") || v.contains("alice")));
    assert!(!leaked, "{:?}", span.attributes);
}

/// Without a usable Host the URL is built from the server's address on the socket: IPv6 in
/// brackets, the scheme's default port left out. A path that is not one (`OPTIONS *`, a
/// CONNECT's authority) or is unknown gives no URL.
#[test]
fn without_a_host_the_url_names_the_socket() {
    let no_host = |h: &mut HttpExchange| h.host = None;
    let span = describe(
        &exchange(Role::Client, with_http(http(200, "GET"), no_host)),
        None,
    );
    assert_eq!(
        get(&span, "url.full").cloned(),
        s("http://10.0.0.2:8080/users/42")
    );
    let bad_host = |h: &mut HttpExchange| h.host = Some("shop/evil path".into());
    let span = describe(
        &exchange(Role::Client, with_http(http(200, "GET"), bad_host)),
        None,
    );
    assert_eq!(
        get(&span, "url.full").cloned(),
        s("http://10.0.0.2:8080/users/42")
    );
    let mut v6 = exchange(Role::Client, with_http(http(200, "GET"), no_host));
    v6.endpoint.peer = Some("[2001:db8::1]:443".parse().expect("literal"));
    v6.endpoint.server_port = Some(443);
    v6.endpoint.tls = true;
    assert_eq!(
        get(&describe(&v6, None), "url.full").cloned(),
        s("https://[2001:db8::1]/users/42")
    );
    v6.endpoint.server_port = Some(8443);
    assert_eq!(
        get(&describe(&v6, None), "url.full").cloned(),
        s("https://[2001:db8::1]:8443/users/42")
    );
    for path in ["*", "shop:443", ""] {
        let detail = with_http(http(200, "OPTIONS"), |h| h.path = path.into());
        let span = describe(&exchange(Role::Client, detail), None);
        assert!(get(&span, "url.full").is_none(), "{path:?}");
    }
}

/// Messaging conventions 1.27+: `{messaging.operation.name} {destination}`, a Produce is
/// `send` (type `send`, not the deprecated `publish`), a Fetch `receive`; the Kafka API name
/// is kept in `periscope.kafka.api_name`.
#[test]
fn kafka_spans_are_named_by_operation_then_topic() {
    let produce = describe(&exchange(Role::Client, kafka("Produce", 0)), None);
    assert_eq!(produce.name, "send orders");
    assert_eq!(produce.kind, SpanKind::Producer);
    assert_eq!(
        get(&produce, "messaging.operation.name").cloned(),
        s("send")
    );
    assert_eq!(
        get(&produce, "messaging.operation.type").cloned(),
        s("send")
    );
    assert_eq!(
        get(&produce, "periscope.kafka.api_name").cloned(),
        s("Produce")
    );
    assert_eq!(
        get(&produce, "messaging.destination.name").cloned(),
        s("orders")
    );
    assert_eq!(
        get(&produce, "messaging.kafka.message.count").cloned(),
        Some(Value::Int(3))
    );
    assert!(produce.error.is_none());
    let fetch = describe(&exchange(Role::Client, kafka("Fetch", 3)), None);
    assert_eq!(fetch.name, "receive orders");
    assert_eq!(fetch.kind, SpanKind::Consumer);
    assert_eq!(
        get(&fetch, "messaging.operation.name").cloned(),
        s("receive")
    );
    assert_eq!(
        get(&fetch, "messaging.operation.type").cloned(),
        s("receive")
    );
    assert_eq!(get(&fetch, "periscope.kafka.api_name").cloned(), s("Fetch"));
    assert_eq!(
        get(&fetch, "error.type").cloned(),
        s("UNKNOWN_TOPIC_OR_PARTITION")
    );
    assert!(fetch.error.is_some());
    // Another API is its own operation, without a type.
    let other = describe(&exchange(Role::Client, kafka("ListOffsets", 0)), None);
    assert_eq!(other.kind, SpanKind::Client);
    assert_eq!(other.name, "ListOffsets orders");
    assert_eq!(
        get(&other, "messaging.operation.name").cloned(),
        s("ListOffsets")
    );
    assert!(get(&other, "messaging.operation.type").is_none());
    // The broker's span is named alike, SERVER, without a type.
    let broker = describe(&exchange(Role::Server, kafka("Produce", 0)), None);
    assert_eq!(broker.name, "send orders");
    assert_eq!(broker.kind, SpanKind::Server);
    assert_eq!(get(&broker, "messaging.operation.name").cloned(), s("send"));
    assert!(get(&broker, "messaging.operation.type").is_none());
}

/// Without a topic the span is the operation alone.
#[test]
fn kafka_spans_without_a_topic_are_the_operation() {
    let mut detail = kafka("Produce", 0);
    if let Detail::Kafka(k) = &mut detail {
        k.topics[0].name = None;
    }
    let span = describe(&exchange(Role::Client, detail), None);
    assert_eq!(span.name, "send");
    assert!(get(&span, "messaging.destination.name").is_none());
}

#[test]
fn sqlstate_errors_mark_the_span() {
    let detail = Detail::Postgres(PostgresDetail {
        statement: PgExchange {
            operation: "INSERT".into(),
            collection: Some("orders".into()),
            query_summary: "INSERT orders".into(),
            query_text: "INSERT INTO orders VALUES (?)".into(),
            statement_name: None,
            rows: None,
            error_sqlstate: Some("23505".into()),
            start_ns: 1,
            end_ns: 2,
            request_bytes: 10,
            response_bytes: 10,
            complete: true,
        },
        db_namespace: Some("shop".into()),
    });
    let span = describe(&exchange(Role::Client, detail), None);
    assert_eq!(span.name, "INSERT orders");
    assert_eq!(span.error.as_deref(), Some("SQLSTATE 23505"));
    assert_eq!(get(&span, "error.type").cloned(), s("23505"));
    assert_eq!(get(&span, "db.namespace").cloned(), s("shop"));
}

#[test]
fn the_resource_names_the_pod_and_its_workload() {
    let node = NodeResource {
        host_name: "node-a".into(),
        extra: Vec::new(),
    };
    let r = resource(&process(), &node);
    let get = |key: &str| r.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    assert_eq!(get("service.name"), s("shop"));
    assert_eq!(get("service.namespace"), s("prod"));
    assert_eq!(get("k8s.statefulset.name"), s("shop"));
    assert_eq!(get("k8s.deployment.name"), None);
    assert_eq!(get("k8s.container.name"), s("app"));
    assert_eq!(get("host.name"), s("node-a"));
    assert_eq!(get("process.executable.name"), s("shop-bin"));
    assert_eq!(get("process.pid"), Some(Value::Int(7)));
}

/// `telemetry.sdk.language` is the workload's language, when its executable's name tells,
/// never the agent's own `rust`; the SDK and the distribution are Periscope.
#[test]
fn the_sdk_language_is_the_workloads_not_the_agents() {
    let node = NodeResource::default();
    let get = |p: &ProcessInfo, key: &str| {
        resource(p, &node)
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    };
    let shop = process();
    assert_eq!(get(&shop, "telemetry.sdk.language"), None);
    assert_eq!(get(&shop, "telemetry.sdk.name"), s("periscope"));
    assert_eq!(get(&shop, "telemetry.distro.name"), s("periscope"));
    assert_eq!(
        get(&shop, "telemetry.sdk.version"),
        s(env!("CARGO_PKG_VERSION"))
    );
    let python = ProcessInfo {
        exe_name: "python3.11".into(),
        ..(*shop).clone()
    };
    assert_eq!(get(&python, "telemetry.sdk.language"), s("python"));
    // An unreadable executable falls back to comm, as `process.executable.name` does.
    let java = ProcessInfo {
        exe_name: String::new(),
        comm: "java".into(),
        ..(*shop).clone()
    };
    assert_eq!(get(&java, "process.executable.name"), s("java"));
    assert_eq!(get(&java, "telemetry.sdk.language"), s("java"));
}

/// `OTEL_RESOURCE_ATTRIBUTES` adds node-wide attributes to every resource; a process's own
/// attributes win, the last of a repeated key wins, `%XX` is decoded, and a pair without `=`
/// is refused with the setting's name.
#[test]
fn resource_attributes_from_the_environment_join_every_resource() {
    let node = NodeResource::new(
        "node-a".into(),
        Some(" k8s.cluster.name=prod%20eu , service.name=agent,team=a,team=b"),
    )
    .unwrap();
    let r = resource(&process(), &node);
    let get = |key: &str| r.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    assert_eq!(get("k8s.cluster.name"), s("prod eu"));
    assert_eq!(get("service.name"), s("shop"));
    assert_eq!(get("team"), s("b"));
    assert_eq!(r.iter().filter(|(k, _)| *k == "team").count(), 1);
    let err = NodeResource::new(String::new(), Some("a=1,nokey")).unwrap_err();
    assert!(
        err.to_string().contains("OTEL_RESOURCE_ATTRIBUTES"),
        "{err}"
    );
    assert!(NodeResource::new(String::new(), Some("=v")).is_err());
    assert!(NodeResource::new(String::new(), None)
        .unwrap()
        .extra
        .is_empty());
}

#[test]
fn hosts_lose_their_port() {
    assert_eq!(host_without_port("example.com:8080"), "example.com");
    assert_eq!(host_without_port("example.com"), "example.com");
    assert_eq!(host_without_port("[::1]:80"), "::1");
    assert_eq!(host_without_port("u:p@example.com:8080"), "example.com");
}

#[test]
fn the_wall_clock_is_close_to_system_time() {
    let clock = WallClock::measure();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let mapped = clock.unix_ns(clock_ns(libc::CLOCK_MONOTONIC) as u64) as i128;
    assert!((mapped - now).abs() < 50_000_000, "{mapped} vs {now}");
}
