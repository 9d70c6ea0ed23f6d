//! End-to-end: the agent pushes its metrics over OTLP (`OTEL_METRICS_EXPORTER=otlp`) to a real
//! receiver ([`Receiver`]: the official OTLP protobuf bindings behind grpcio and an HTTP
//! server), and what arrives is what its own Prometheus endpoint says, series by series.
//!
//! The mapping the tests hold the agent to:
//! - Names: the OpenTelemetry name the Prometheus name was made from
//!   (`http_server_request_duration_seconds` ↔ `http.server.request.duration`, unit `s`;
//!   `periscope_metric_exports_total` ↔ `periscope.metric_exports`).
//! - Kinds: histograms are explicit-bucket Histograms (bounds = the `le` values without
//!   `+Inf`, bucket counts not cumulative), counters monotonic Sums of doubles; all cumulative
//!   (temporality 2), with a start time that stays put from export to export.
//! - Labels: semantic-convention labels become attributes with dots ([`ATTRIBUTES`]; status code
//!   and port as integers), workload labels the data point's resource ([`RESOURCE`]); points
//!   without workload labels (self-metrics) are under the agent's own resource.
//!
//! An export is the points of one request (the receiver numbers them); the tests read the
//! latest request holding the series they look at, so an agent sending one request per
//! resource passes too. Other traffic on the machine may be measured as well, so series are
//! picked by the test server's port.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{
    curl, wait_for_metric, wait_until, Agent, AgentOptions, Metrics, PyServer, Receiver,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// `OTEL_METRIC_EXPORT_INTERVAL` of the tests, in ms (the default is a minute).
const INTERVAL_MS: u64 = 1000;

/// Prometheus label → OTLP attribute key, for the labels of the series compared here. A label
/// in neither this table nor [`RESOURCE`] fails the comparison by its name, so that a new
/// label is mapped on purpose.
const ATTRIBUTES: [(&str, &str); 7] = [
    ("http_request_method", "http.request.method"),
    ("http_response_status_code", "http.response.status_code"),
    ("http_route", "http.route"),
    ("network_protocol_version", "network.protocol.version"),
    ("server_port", "server.port"),
    ("server_address", "server.address"),
    ("error_type", "error.type"),
];

/// Workload label → resource attribute key of the data point.
const RESOURCE: [(&str, &str); 6] = [
    ("service_name", "service.name"),
    ("container_id", "container.id"),
    ("k8s_namespace_name", "k8s.namespace.name"),
    ("k8s_pod_name", "k8s.pod.name"),
    ("k8s_container_name", "k8s.container.name"),
    ("k8s_node_name", "k8s.node.name"),
];

/// Attributes sent as integers; every other one is a string.
const INT_ATTRIBUTES: [&str; 2] = ["http.response.status_code", "server.port"];

const SERVER_DURATION: &str = "http.server.request.duration";
const CLIENT_DURATION: &str = "http.client.request.duration";

/// The histograms compared with the Prometheus endpoint: Prometheus family, OTLP name, unit.
const HISTOGRAMS: [(&str, &str, &str); 3] = [
    ("http_server_request_duration_seconds", SERVER_DURATION, "s"),
    ("http_client_request_duration_seconds", CLIENT_DURATION, "s"),
    (
        "http_server_request_body_size_bytes",
        "http.server.request.body.size",
        "By",
    ),
];

/// Cumulative, in `AggregationTemporality`.
const CUMULATIVE: u64 = 2;

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn start_agent(env: &[(&str, String)]) -> anyhow::Result<Agent> {
    Agent::start_with(AgentOptions {
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        ..AgentOptions::default()
    })
}

/// An OTLP attribute value as the text of the Prometheus label it came from.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A Prometheus series' labels (`le` aside) as OTLP (attributes, resource), values as text.
/// Empty values are left out: Prometheus treats an empty label as a missing one.
fn otlp_labels(
    labels: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let key = |table: &[(&str, &str)], label: &str| {
        table
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, k)| (*k).to_owned())
    };
    let (mut attributes, mut resource) = (BTreeMap::new(), Vec::new());
    for (label, value) in labels {
        if label == "le" || value.is_empty() {
            continue;
        }
        if let Some(k) = key(&ATTRIBUTES, label) {
            attributes.insert(k, value.clone());
        } else if let Some(k) = key(&RESOURCE, label) {
            resource.push((k, value.clone()));
        } else {
            panic!("no OTLP mapping known for the Prometheus label {label}: add it to ATTRIBUTES or RESOURCE");
        }
    }
    (attributes, resource)
}

/// A point's attributes as text, empty values left out.
fn point_attributes(point: &Value) -> BTreeMap<String, String> {
    point["attributes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), text(v)))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// Whether `a` and `b` are points of the same series (attributes and resource).
fn same_series(a: &Value, b: &Value) -> bool {
    a["attributes"] == b["attributes"] && a["resource"] == b["resource"]
}

fn on_port(port: u16) -> impl Fn(&Value) -> bool {
    move |p| p["attributes"]["server.port"].as_u64() == Some(u64::from(port))
}

/// The points named `name` that `keep` keeps, by export (request number), oldest first.
fn exports(
    receiver: &Receiver,
    name: &str,
    keep: impl Fn(&Value) -> bool,
) -> BTreeMap<u64, Vec<Value>> {
    let mut by_request = BTreeMap::<u64, Vec<Value>>::new();
    for p in receiver.metric_points() {
        if p["name"] == name && keep(&p) {
            by_request.entry(u(&p["request"])).or_default().push(p);
        }
    }
    by_request
}

/// The points of the latest export holding any (empty if none).
fn latest(exports: &BTreeMap<u64, Vec<Value>>) -> Vec<Value> {
    exports.values().next_back().cloned().unwrap_or_default()
}

/// The total `count` of histogram points.
fn count(points: &[Value]) -> u64 {
    points.iter().map(|p| u(&p["count"])).sum()
}

/// One Prometheus histogram series: its labels (no `le`), count, sum and its buckets
/// (`le`, cumulative count), by `le`.
#[derive(Debug)]
struct PromHistogram {
    labels: BTreeMap<String, String>,
    count: f64,
    sum: f64,
    buckets: Vec<(f64, f64)>,
}

/// The series of histogram `family` whose `server_port` is `port`.
fn prom_histograms(m: &Metrics, family: &str, port: u16) -> Vec<PromHistogram> {
    let port = port.to_string();
    let sums = m.samples(&format!("{family}_sum"));
    let buckets = m.samples(&format!("{family}_bucket"));
    m.samples(&format!("{family}_count"))
        .into_iter()
        .filter(|c| c.labels.get("server_port") == Some(&port))
        .map(|c| {
            let sum = sums
                .iter()
                .find(|s| s.labels == c.labels)
                .unwrap_or_else(|| panic!("no {family}_sum{c}"))
                .value;
            let mut series_buckets: Vec<(f64, f64)> = buckets
                .iter()
                .filter(|b| {
                    let mut labels = b.labels.clone();
                    labels.remove("le");
                    labels == c.labels
                })
                .map(|b| {
                    let le = &b.labels["le"];
                    let le = le.parse().unwrap_or_else(|_| panic!("le {le:?}"));
                    (le, b.value)
                })
                .collect();
            series_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            PromHistogram {
                labels: c.labels,
                count: c.value,
                sum,
                buckets: series_buckets,
            }
        })
        .collect()
}

/// Every Prometheus series of histogram `family` to `port` has exactly one OTLP point in
/// `points` (and there are no others) with the mapped attributes and resource, the same count
/// and sum, bounds equal to its `le` values and bucket counts equal to its de-cumulated
/// buckets.
fn assert_histograms_agree(m: &Metrics, family: &str, points: &[Value], port: u16) {
    let series = prom_histograms(m, family, port);
    assert!(
        !series.is_empty(),
        "no {family} series for port {port}:\n{}",
        m.text()
    );
    assert_eq!(
        points.len(),
        series.len(),
        "{family}: {} Prometheus series {series:#?}, OTLP points {points:#?}",
        series.len()
    );
    for s in &series {
        let (attributes, resource) = otlp_labels(&s.labels);
        let matching: Vec<&Value> = points
            .iter()
            .filter(|p| {
                point_attributes(p) == attributes
                    && resource.iter().all(|(k, v)| text(&p["resource"][k]) == *v)
            })
            .collect();
        let what = format!("{family}{:?}", s.labels);
        assert_eq!(
            matching.len(),
            1,
            "{what}: want one OTLP point with attributes {attributes:?} and resource \
             holding {resource:?}, among {points:#?}"
        );
        let p = matching[0];
        assert_eq!(u(&p["count"]) as f64, s.count, "{what}: {p}");
        let sum = f(&p["sum"]);
        assert!(
            (sum - s.sum).abs() <= 1e-9,
            "{what}: sum {sum} vs {}",
            s.sum
        );
        let (last_le, _) = *s.buckets.last().expect("a +Inf bucket");
        assert!(last_le.is_infinite(), "{what}: {:?}", s.buckets);
        let bounds: Vec<f64> = s.buckets[..s.buckets.len() - 1]
            .iter()
            .map(|(le, _)| *le)
            .collect();
        let sent_bounds: Vec<f64> = p["explicit_bounds"]
            .as_array()
            .expect("explicit_bounds")
            .iter()
            .map(f)
            .collect();
        assert!(
            sent_bounds.len() == bounds.len()
                && sent_bounds
                    .iter()
                    .zip(&bounds)
                    .all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs()),
            "{what}: bounds {sent_bounds:?} vs le {bounds:?}"
        );
        let mut previous = 0.0;
        let per_bucket: Vec<u64> = s
            .buckets
            .iter()
            .map(|(_, cumulative)| {
                let n = cumulative - previous;
                previous = *cumulative;
                n as u64
            })
            .collect();
        let sent: Vec<u64> = p["bucket_counts"]
            .as_array()
            .expect("bucket_counts")
            .iter()
            .map(u)
            .collect();
        assert_eq!(sent, per_bucket, "{what}: bucket counts, {:?}", s.buckets);
    }
}

/// What every pushed histogram point says besides its values: its unit, a cumulative
/// explicit-bucket histogram, integer attributes sent as integers, and a start time in this
/// test's window before its time.
fn assert_histogram_point(p: &Value, unit: &str, not_before: u64) {
    assert_eq!(p["type"], "histogram", "{p}");
    assert_eq!(p["unit"], unit, "{p}");
    assert_eq!(u(&p["temporality"]), CUMULATIVE, "{p}");
    for key in INT_ATTRIBUTES {
        let v = &p["attributes"][key];
        assert!(v.is_null() || v.is_u64(), "{key} is not an integer: {p}");
    }
    let (start, time) = (u(&p["start"]), u(&p["time"]));
    assert!(
        not_before <= start && start < time && time <= unix_ns(),
        "start {start} and time {time} not in order after {not_before}: {p}"
    );
}

/// Each series of `latest` was in `previous` with the same start time (cumulative: the start
/// stays put), at an earlier time about an interval before.
fn assert_start_kept(previous: &[Value], latest: &[Value]) {
    for p in latest {
        let before = previous
            .iter()
            .find(|q| same_series(q, p))
            .unwrap_or_else(|| panic!("{p}\nnot in the export before: {previous:#?}"));
        assert_eq!(before["start"], p["start"], "{before}\n{p}");
        let gap = u(&p["time"]).saturating_sub(u(&before["time"]));
        let interval = INTERVAL_MS * 1_000_000;
        assert!(
            (interval / 2..=interval * 3).contains(&gap),
            "{gap} ns between exports, the interval is {INTERVAL_MS} ms:\n{before}\n{p}"
        );
    }
}

/// 5 × `/sleep/5` and 2 × `/status/404` by curl to the Python test server → once traffic
/// stops, the latest export's server and client histograms (and the request body sizes) for
/// that port are the Prometheus endpoint's series, value for value, under the workloads'
/// resources, and the agent counts its successful pushes.
fn http_metrics_pushed(protocol: &str) {
    let not_before = unix_ns();
    let receiver = Receiver::start();
    let server = PyServer::http_test_server();
    let interval = INTERVAL_MS.to_string();
    let agent = if protocol == "grpc" {
        // The general endpoint and protocol (shared with spans), a list of exporters and the
        // one temporality accepted, said explicitly.
        receiver.agent_at(
            "grpc",
            "http://127.0.0.1",
            &[
                ("OTEL_METRICS_EXPORTER", "prometheus,otlp".to_owned()),
                ("OTEL_METRIC_EXPORT_INTERVAL", interval),
                (
                    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                    "cumulative".to_owned(),
                ),
            ],
        )
    } else {
        // The metrics endpoint (used as given), protocol and compression win over the general
        // gRPC settings.
        let endpoint = format!("http://127.0.0.1:{}/v1/metrics", receiver.http_port());
        receiver.agent_at(
            "grpc",
            "http://127.0.0.1",
            &[
                ("OTEL_METRICS_EXPORTER", "otlp".to_owned()),
                ("OTEL_METRIC_EXPORT_INTERVAL", interval),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", endpoint),
                (
                    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                    "http/protobuf".to_owned(),
                ),
                ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip".to_owned()),
            ],
        )
    };
    for _ in 0..5 {
        curl(&[&server.url("/sleep/5")]).unwrap();
    }
    for _ in 0..2 {
        curl(&[&server.url("/status/404")]).unwrap();
    }
    let port = server.port();
    let pushed = |name: &str| count(&latest(&exports(&receiver, name, on_port(port))));
    let arrived = wait_until(WAIT, Duration::from_millis(200), || {
        pushed(SERVER_DURATION) == 7 && pushed(CLIENT_DURATION) == 7
    });
    assert!(
        arrived,
        "pushed server {} and client {} requests to port {port}, not 7 and 7\n{}",
        pushed(SERVER_DURATION),
        pushed(CLIENT_DURATION),
        agent.metrics().text()
    );
    // No more traffic: two more exports of the same values, then the endpoint says the same.
    std::thread::sleep(Duration::from_millis(INTERVAL_MS * 5 / 2));
    let m = agent.metrics();
    for (family, name, unit) in HISTOGRAMS {
        let exports = exports(&receiver, name, on_port(port));
        let latest = latest(&exports);
        assert_histograms_agree(&m, family, &latest, port);
        for p in &latest {
            assert_histogram_point(p, unit, not_before);
        }
        let previous = exports.values().nth_back(1).expect("two exports");
        assert_start_kept(previous, &latest);
    }

    // The workloads and their attributes, as the test made them.
    let server_points = latest(&exports(&receiver, SERVER_DURATION, on_port(port)));
    let client_points = latest(&exports(&receiver, CLIENT_DURATION, on_port(port)));
    for p in &server_points {
        let service = p["resource"]["service.name"].as_str().unwrap_or_default();
        // Named after the executable (Debian: python3.11).
        assert!(service.starts_with("python3"), "{p}");
    }
    for p in &client_points {
        assert_eq!(p["resource"]["service.name"], "curl", "{p}");
        assert_eq!(p["attributes"]["server.address"], "127.0.0.1", "{p}");
    }
    for points in [&server_points, &client_points] {
        let mut by_status = BTreeMap::<u64, u64>::new();
        for p in points.iter() {
            let a = &p["attributes"];
            assert_eq!(a["http.request.method"], "GET", "{p}");
            let route = a["http.route"].as_str().unwrap_or_default();
            let status = u(&a["http.response.status_code"]);
            let want = if status == 404 {
                "/status/{id}"
            } else {
                "/sleep/{id}"
            };
            assert_eq!(route, want, "{p}");
            *by_status.entry(status).or_default() += u(&p["count"]);
        }
        assert_eq!(
            by_status,
            BTreeMap::from([(200, 5), (404, 2)]),
            "{points:#?}"
        );
    }

    // The agent's own pushes, a cumulative counter under its own resource.
    let own = latest(&exports(&receiver, "periscope.metric_exports", |_| true));
    assert!(!own.is_empty(), "no periscope.metric_exports pushed");
    for p in &own {
        assert_eq!(p["type"], "sum", "{p}");
        assert_eq!(p["is_monotonic"], true, "{p}");
        assert_eq!(u(&p["temporality"]), CUMULATIVE, "{p}");
        assert_eq!(p["value_kind"], "double", "{p}");
        assert_eq!(p["resource"]["service.name"], "periscope", "{p}");
    }
    let value = |result: &str| {
        own.iter()
            .filter(|p| p["attributes"]["result"] == result)
            .map(|p| f(&p["value"]))
            .sum::<f64>()
    };
    let prometheus_ok = m.sum("periscope_metric_exports_total", &[("result", "ok")]);
    assert!(
        value("ok") > 0.0 && value("ok") <= prometheus_ok,
        "pushed ok {}, /metrics {prometheus_ok}: {own:#?}",
        value("ok")
    );
    assert_eq!(value("failed"), 0.0, "{own:#?}");
    assert_eq!(
        m.sum("periscope_metric_exports_total", &[("result", "failed")]),
        0.0,
        "{}",
        m.text()
    );

    // Every request came by the transport asked for (gzip-compressed over HTTP), and
    // `target_info` is the agent's resource, not a metric.
    let points = receiver.metric_points();
    let transport = protocol.split('/').next().unwrap_or_default();
    for p in &points {
        assert_eq!(p["transport"], transport, "{p}");
        assert!(
            !p["name"].as_str().unwrap_or_default().starts_with("target"),
            "{p}"
        );
        if protocol == "http/protobuf" {
            assert_eq!(p["encoding"], "gzip", "{p}");
        }
    }
}

#[test]
fn http_metrics_pushed_over_grpc() {
    http_metrics_pushed("grpc");
}

#[test]
fn http_metrics_pushed_over_http_protobuf() {
    http_metrics_pushed("http/protobuf");
}

/// Only cumulative temporality is offered: `delta` or `lowmemory` stop start-up with an error
/// that names the setting and the value.
#[test]
fn a_delta_temporality_preference_stops_start_up_with_its_name() {
    let receiver = Receiver::start();
    for preference in ["delta", "lowmemory"] {
        let err = start_agent(&[
            ("OTEL_METRICS_EXPORTER", "otlp".to_owned()),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                format!("http://127.0.0.1:{}", receiver.grpc_port()),
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                preference.to_owned(),
            ),
        ])
        .expect_err("the agent started with a temporality it does not offer");
        let err = format!("{err:#}");
        // The harness' own words for an agent that exited before it was ready.
        assert!(err.contains("exited"), "{err}");
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"),
            "{err}"
        );
        assert!(err.to_lowercase().contains(preference), "{err}");
    }
    assert!(receiver.metric_points().is_empty());
}

/// A collector that is not there (its port closed): the agent goes on measuring and serving
/// /metrics, counts each failed push, and once the collector is up the next push carries
/// everything measured meanwhile (cumulative: nothing is lost).
#[test]
fn an_unreachable_metrics_collector_is_counted_not_fatal() {
    let mut receiver = Receiver::start();
    receiver.stop();
    let server = PyServer::http_test_server();
    let mut agent = start_agent(&[
        ("OTEL_METRICS_EXPORTER", "otlp".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("http://127.0.0.1:{}/v1/metrics", receiver.http_port()),
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            "http/protobuf".to_owned(),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_owned()),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "1000".to_owned()),
    ])
    .unwrap();
    let failed = |agent: &Agent| {
        agent
            .metrics()
            .sum("periscope_metric_exports_total", &[("result", "failed")])
    };
    assert!(
        wait_until(WAIT, Duration::from_millis(100), || failed(&agent) >= 1.0),
        "{}",
        agent.metrics().text()
    );
    let n = 3;
    for _ in 0..n {
        curl(&[&server.url("/down/1")]).unwrap();
    }
    let port = server.port();
    let port_label = port.to_string();
    wait_for_metric(
        &agent,
        "http_server_request_duration_seconds_count",
        &[("server_port", port_label.as_str())],
        n as f64,
        WAIT,
    )
    .unwrap();
    let so_far = failed(&agent);
    assert!(
        wait_until(WAIT, Duration::from_millis(100), || failed(&agent)
            >= so_far + 2.0),
        "{}",
        agent.metrics().text()
    );
    assert!(agent.is_running());
    let m = agent.metrics();
    assert_eq!(
        m.sum("periscope_metric_exports_total", &[("result", "ok")]),
        0.0,
        "{}",
        m.text()
    );

    receiver.restart();
    let pushed = || count(&latest(&exports(&receiver, SERVER_DURATION, on_port(port))));
    assert!(
        wait_until(WAIT, Duration::from_millis(200), || pushed() == n),
        "pushed {} of {n}\n{}",
        pushed(),
        agent.metrics().text()
    );
    assert!(
        wait_until(WAIT, Duration::from_millis(100), || {
            agent
                .metrics()
                .sum("periscope_metric_exports_total", &[("result", "ok")])
                >= 1.0
        }),
        "{}",
        agent.metrics().text()
    );
    assert!(agent.is_running());
}
