//! The guard of every name, label, value, help text and bucket the Prometheus sink renders:
//! one exchange of each protocol and role (and each connection and self-metric event) goes
//! through a fresh registry, and the text must equal `testdata/golden.txt`, captured from the
//! code before the sink was split by family. Regenerate with `PERISCOPE_BLESS=1` only when a
//! change of the exposition is intended.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::*;
use crate::conn::{EndReason, MuteReason, Sink};
use crate::exchange::testkit::{
    exchange, host_process, http, kafka, pod_process, server, sql, topic,
};
use crate::exchange::{Detail, Exchange, Role};
use crate::export::labels::MetricLabel;
use crate::metadata::testkit::OnePeer;
use crate::protocol::http1::DecoderStats;

/// Names 10.0.0.9 as a pod of `shop/orders`; knows no other address.
const CLUSTER: OnePeer = OnePeer {
    generation: 0,
    ip: [10, 0, 0, 9],
    service_name: "orders-svc",
};

fn incomplete(mut detail: Detail) -> Detail {
    match &mut detail {
        Detail::Http(h) => h.complete = false,
        Detail::Kafka(k) => k.complete = false,
        Detail::Postgres(p) => p.statement.complete = false,
    }
    detail
}

/// One exchange of each protocol and role, with the variations the labels depend on.
pub(crate) fn exchanges() -> Vec<Exchange> {
    use Role::{Client, Server};
    let pod = pod_process;
    let host = host_process;
    let get_user = |sizes| {
        let detail = http("GET", 200, "/users/{id}", sizes);
        exchange(Server, pod(), "10.0.0.2:5000", 8080, 20, detail)
    };
    vec![
        // HTTP server: known method, and one normalised to _OTHER with a 5xx.
        get_user((10, 300)),
        get_user((0, 5000)),
        exchange(
            Server,
            pod(),
            "10.0.0.2:5001",
            8080,
            3000,
            http("BREW", 503, "/pot", (0, 0)),
        ),
        // HTTP client: a named peer, an unnamed one, an incomplete response.
        exchange(
            Client,
            pod(),
            "10.0.0.9:80",
            80,
            7,
            http("POST", 404, "/orders", (70_000, 12)),
        ),
        exchange(
            Client,
            host(),
            "192.0.2.1:443",
            443,
            120,
            incomplete(http("DELETE", 500, "", (0, 0))),
        ),
        // PostgreSQL client and server, with and without error, collection and namespace.
        exchange(
            Client,
            pod(),
            "10.0.0.9:5432",
            5432,
            2,
            sql("SELECT", Some("users"), Some(3), None, Some("shop")),
        ),
        exchange(
            Client,
            host(),
            "192.0.2.5:5432",
            5432,
            600,
            sql("BEGIN", None, None, None, None),
        ),
        exchange(
            Server,
            pod(),
            "10.0.0.3:40000",
            5432,
            8,
            incomplete(sql(
                "INSERT",
                Some("orders"),
                None,
                Some("23505"),
                Some("shop"),
            )),
        ),
        // Kafka client: Produce with a failing and an unnamed topic, Fetch, an unknown error.
        exchange(
            Client,
            pod(),
            "10.0.0.9:9092",
            9092,
            4,
            kafka(
                0,
                "Produce",
                vec![topic(Some("orders"), 3, 0), topic(None, 2, 3)],
                3,
            ),
        ),
        exchange(
            Client,
            pod(),
            "10.0.0.9:9092",
            9092,
            550,
            kafka(1, "Fetch", vec![topic(Some("orders"), 5, 0)], 0),
        ),
        exchange(
            Client,
            host(),
            "192.0.2.7:9092",
            9092,
            1,
            kafka(18, "ApiVersions", vec![], 999),
        ),
        // Kafka broker: Produce with a top-level error no topic carries, Metadata without topics.
        exchange(
            Server,
            pod(),
            "10.0.0.4:33000",
            9092,
            30,
            incomplete(kafka(0, "Produce", vec![topic(Some("orders"), 2, 0)], 7)),
        ),
        exchange(
            Server,
            pod(),
            "10.0.0.4:33000",
            9092,
            1,
            kafka(1, "Fetch", vec![topic(Some("orders"), 0, 0)], 0),
        ),
        exchange(
            Server,
            pod(),
            "10.0.0.4:33000",
            9092,
            1,
            kafka(3, "Metadata", vec![], 5),
        ),
    ]
}

/// The registry's text with each family's samples sorted (a family's series come out in hash
/// order).
pub(crate) fn render(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("encodes");
    let mut out = Vec::new();
    let mut samples: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            samples.sort_unstable();
            out.append(&mut samples);
            out.push(line);
        } else {
            samples.push(line);
        }
    }
    samples.sort_unstable();
    out.append(&mut samples);
    out.join("\n") + "\n"
}

#[test]
fn the_exposition_is_unchanged() {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    metrics.register_kubernetes(&mut registry);
    let mut sink = MetricsSink::new(metrics.clone());
    sink.set_cluster(Arc::new(CLUSTER));
    for exchange in exchanges() {
        sink.exchange(&exchange);
    }
    sink.opened("adopted");
    sink.opened("connect");
    sink.ended(EndReason::Closed);
    sink.muted(MuteReason::Tls);
    sink.parse_error("http1", "bad_request_line");
    sink.decoder_stats(
        "postgres",
        DecoderStats {
            resyncs: 1,
            unpaired_requests: 2,
            unexpected_responses: 0,
            truncated_headers: 4,
        },
    );
    let own = &metrics.self_metrics;
    own.events_by_kind.data.inc();
    own.events_by_kind.close.inc_by(2);
    metrics.set_program_stats("sys_exit_read", 10, 2_500_000_000);
    metrics.set_program_stats("sys_exit_read", 15, 3_000_000_000);
    own.kubernetes_connected.set(1);
    own.hooks_info
        .get_or_create(&HooksLabels {
            syscall_hooks: "tp_btf".into(),
            kernel: "6.1.0".into(),
            connect_hook: "tracepoint".into(),
        })
        .set(1);
    // The series cap: a known series still records, a new one is dropped and counted.
    metrics.set_max_series(1);
    for exchange in exchanges() {
        sink.exchange(&exchange);
    }
    let new_series = [
        http("PUT", 201, "/new", (1, 1)),
        sql("DELETE", Some("carts"), Some(1), None, None),
        kafka(0, "Produce", vec![topic(Some("new"), 1, 0)], 0),
    ];
    for detail in new_series {
        sink.exchange(&server(detail));
    }
    let text = render(&registry);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/export/prometheus/testdata/golden.txt"
    );
    if std::env::var_os("PERISCOPE_BLESS").is_some() {
        std::fs::write(path, &text).expect("writes the golden text");
    }
    let golden = std::fs::read_to_string(path).expect("golden text");
    let (want, got): (Vec<&str>, Vec<&str>) = (golden.lines().collect(), text.lines().collect());
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w, g, "line {} differs", i + 1);
    }
    assert_eq!(want.len(), got.len(), "line count differs");
}

/// The sample lines of `registry` whose metric name starts with `prefix`, sorted, without the
/// histogram buckets.
pub(crate) fn samples(registry: &Registry, prefix: &str) -> Vec<String> {
    render(registry)
        .lines()
        .filter(|l| l.starts_with(prefix) && !l.contains("_bucket{"))
        .map(str::to_owned)
        .collect()
}

/// A budget of `max` series per metric, and the drop counter it counts into.
pub(crate) fn budget(max: usize) -> (SeriesBudget, Family<MetricLabel, Counter>) {
    let dropped = Family::<MetricLabel, Counter>::default();
    let budget = SeriesBudget::new(dropped.clone(), Counter::default(), Default::default());
    budget.set_max(max);
    (budget, dropped)
}

/// What `periscope_series_dropped_total{metric}` counted.
pub(crate) fn dropped(family: &Family<MetricLabel, Counter>, metric: &str) -> u64 {
    let label = MetricLabel {
        metric: metric.to_owned(),
    };
    family.get(&label).map_or(0, |c| c.get())
}

/// The series budget's estimate of a series' bytes must cover what recording one really holds
/// (family entries, histograms, cache entry, expiry registration, the budget's own entry),
/// without overstating it by much, for every family kind and short and long label values.
#[test]
fn series_cost_estimates_bound_what_a_series_holds() {
    use crate::test_alloc::held_by_this_thread;
    type Make = fn(&str) -> Exchange;
    let kinds: [(&str, Make); 5] = [
        ("http server", |r| server(http("GET", 200, r, (1, 1)))),
        ("http client", |r| {
            let detail = http("GET", 200, r, (1, 1));
            exchange(Role::Client, host_process(), "10.0.0.9:80", 80, 20, detail)
        }),
        ("db", |t| {
            server(sql("SELECT", Some(t), Some(1), None, Some("shop")))
        }),
        ("kafka", |t| {
            server(kafka(0, "Produce", vec![topic(Some(t), 1, 0)], 0))
        }),
        ("rpc", |m| {
            let mut detail = http("POST", 200, "/", (1, 1));
            if let Detail::Http(h) = &mut detail {
                h.grpc = Some(crate::protocol::http::GrpcCall {
                    service: "shop.Cart".into(),
                    method: m.to_owned(),
                    status: Some(0),
                });
            }
            server(detail)
        }),
    ];
    let mut failures = Vec::new();
    for (name, make) in kinds {
        for len in [8usize, 200] {
            let mut registry = Registry::default();
            let metrics = Arc::new(Metrics::register(&mut registry));
            metrics.set_max_series(100_000);
            let mut sink = MetricsSink::new(metrics.clone());
            let n = 2000;
            let exchanges: Vec<Exchange> = (0..n).map(|i| make(&format!("/{i:0len$}"))).collect();
            sink.exchange(&exchanges[0]);
            let (held, estimated) = (held_by_this_thread(), metrics.series.memory_bytes());
            for e in &exchanges[1..] {
                sink.exchange(e);
            }
            let held = (held_by_this_thread() - held) as usize / (n - 1);
            let estimated = (metrics.series.memory_bytes() - estimated) / (n - 1);
            if !(held <= estimated && estimated <= held * 13 / 10) {
                failures.push(format!(
                    "{name}, {len}-byte label: {held} bytes held per series, {estimated} estimated"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `--series-memory-budget`: new label sets beyond the bytes are dropped and counted, known
/// ones still record, and removing series frees their bytes for new ones.
#[test]
fn the_memory_budget_caps_all_series_together() {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    metrics.set_max_series(100);
    let one = http::SERIES_KIND.fixed_bytes;
    metrics.set_series_memory_budget(3 * one + 3 * one / 4);
    let mut sink = MetricsSink::new(metrics.clone());
    let get = |route: &str| server(http("GET", 200, route, (1, 1)));
    for route in ["/a", "/b", "/c", "/d", "/e", "/a"] {
        sink.exchange(&get(route));
    }
    let dropped = |m: &Metrics| {
        dropped(
            &m.self_metrics.series_dropped,
            "http_server_request_duration_seconds",
        )
    };
    assert_eq!(dropped(&metrics), 2, "/d and /e do not fit");
    let held = metrics.series.memory_bytes();
    assert!(held > 3 * one && held <= 3 * one + 3 * one / 4, "{held}");
    assert_eq!(metrics.self_metrics.series_memory.get(), held as i64);
    let count = samples(&registry, "http_server_request_duration_seconds_count");
    assert_eq!(count.len(), 3, "{count:?}");
    assert!(count.iter().any(|l| l.contains("/a") && l.ends_with(" 2")));
    // The first sweep sees the activity, the second removes.
    metrics.expire_idle(std::time::Duration::ZERO);
    metrics.expire_idle(std::time::Duration::ZERO);
    assert_eq!(metrics.series.memory_bytes(), 0);
    assert_eq!(metrics.self_metrics.series_memory.get(), 0);
    sink.exchange(&get("/d"));
    assert_eq!(dropped(&metrics), 2, "the freed bytes take /d");
    assert!(metrics.series.memory_bytes() > 0);
}
