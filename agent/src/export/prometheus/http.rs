//! HTTP metrics (`http.*` semantic conventions): request duration and body sizes, by method,
//! status, route and port, for servers and (with the server's labels) clients.

use std::hash::Hash;

use super::histogram::{ExemplarTarget, Histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::budget::{SeriesBudget, SeriesKind};
use super::cache::{Lookup, Origin, SeriesCache};
use super::HistFamily;
use crate::exchange::{Detail, Exchange, Role};
use crate::export::labels::{PeerLabels, WorkloadLabels};

/// What an HTTP series holds besides its label values (measured, see `budget`).
pub const SERIES_KIND: SeriesKind = SeriesKind { fixed_bytes: 4900 };

/// Semantic-convention default buckets for `http.*.request.duration`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Body-size buckets: powers of 4 from 64 B to 64 MiB.
pub const SIZE_BUCKETS: [f64; 11] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];

pub(super) fn duration_histogram() -> Histogram {
    Histogram::new(&DURATION_BUCKETS)
}

fn size_histogram() -> Histogram {
    Histogram::new(&SIZE_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpServerLabels {
    pub http_request_method: String,
    pub http_response_status_code: u16,
    pub http_route: String,
    pub network_protocol_version: &'static str,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpClientLabels {
    pub http_request_method: String,
    pub http_response_status_code: u16,
    pub http_route: String,
    pub network_protocol_version: &'static str,
    #[prometheus(flatten)]
    pub peer: PeerLabels,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// The three families of one side (server or client), by its label type.
pub struct HttpFamilies<L> {
    pub duration: HistFamily<L>,
    pub request_body: HistFamily<L>,
    pub response_body: HistFamily<L>,
    /// The name the series budget counts this side under.
    metric: &'static str,
}

impl<L> HttpFamilies<L>
where
    L: Clone + Hash + Eq + Send + Sync + 'static,
{
    fn new(metric: &'static str) -> Self {
        HttpFamilies {
            duration: Family::new_with_constructor(duration_histogram),
            request_body: Family::new_with_constructor(size_histogram),
            response_body: Family::new_with_constructor(size_histogram),
            metric,
        }
    }

    /// The series of `labels`, if the budget admits it; a new one is registered for expiry.
    fn series(
        &self,
        budget: &SeriesBudget,
        workload: &WorkloadLabels,
        labels: &L,
    ) -> Option<HttpSeries> {
        let families = [&self.duration, &self.request_body, &self.response_body];
        let admitted = budget.admit(self.metric, labels, SERIES_KIND, |expiry| {
            expiry.register(workload, &families, Histogram::count)
        });
        admitted.then(|| HttpSeries {
            duration: self.duration.get_or_create(labels).clone(),
            request_body: self.request_body.get_or_create(labels).clone(),
            response_body: self.response_body.get_or_create(labels).clone(),
        })
    }
}

/// The HTTP families of both sides.
pub struct HttpMetrics {
    pub server: HttpFamilies<HttpServerLabels>,
    pub client: HttpFamilies<HttpClientLabels>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let m = HttpMetrics {
            server: HttpFamilies::new("http_server_request_duration_seconds"),
            client: HttpFamilies::new("http_client_request_duration_seconds"),
        };
        register!(registry,
            "http_server_request_duration" [Seconds]: m.server.duration,
                "Duration of HTTP server requests, first request byte read to last response byte written";
            "http_client_request_duration" [Seconds]: m.client.duration,
                "Duration of HTTP client requests, first request byte written to last response byte read";
            "http_server_request_body_size" [Bytes]: m.server.request_body,
                "Size of HTTP server request bodies";
            "http_server_response_body_size" [Bytes]: m.server.response_body,
                "Size of HTTP server response bodies";
            "http_client_request_body_size" [Bytes]: m.client.request_body,
                "Size of HTTP client request bodies";
            "http_client_response_body_size" [Bytes]: m.client.response_body,
                "Size of HTTP client response bodies";
        );
        m
    }

    /// The series of an exchange's labels, if the budget admits it.
    fn series(
        &self,
        budget: &SeriesBudget,
        exchange: &Exchange,
        key: &HttpLookup<'_>,
        peer: PeerLabels,
    ) -> Option<HttpSeries> {
        let workload = WorkloadLabels::of(&exchange.endpoint.process);
        let (method, status, route) = (key.method.to_owned(), key.status, key.route.to_owned());
        let server_port = key.origin.port;
        match key.origin.role {
            Role::Server => {
                let labels = HttpServerLabels {
                    http_request_method: method,
                    http_response_status_code: status,
                    http_route: route,
                    network_protocol_version: key.version,
                    server_port,
                    workload,
                };
                self.server.series(budget, &labels.workload, &labels)
            }
            Role::Client => {
                let labels = HttpClientLabels {
                    http_request_method: method,
                    http_response_status_code: status,
                    http_route: route,
                    network_protocol_version: key.version,
                    peer,
                    server_port,
                    workload,
                };
                self.client.series(budget, &labels.workload, &labels)
            }
        }
    }
}

/// The three histograms one exchange updates.
pub(super) struct HttpSeries {
    duration: Histogram,
    request_body: Histogram,
    response_body: Histogram,
}

/// Owned label values of a cached series.
pub(super) struct HttpKey {
    origin: Origin,
    method: &'static str,
    status: u16,
    route: String,
    version: &'static str,
}

/// An exchange's label values, borrowed.
#[derive(Hash)]
struct HttpLookup<'a> {
    origin: Origin,
    method: &'static str,
    status: u16,
    route: &'a str,
    version: &'static str,
}

impl Lookup<HttpKey> for HttpLookup<'_> {
    fn matches(&self, key: &HttpKey) -> bool {
        self.origin == key.origin
            && self.status == key.status
            && self.method == key.method
            && self.route == key.route
            && self.version == key.version
    }
    fn to_owned_key(&self) -> HttpKey {
        HttpKey {
            origin: self.origin,
            method: self.method,
            status: self.status,
            route: self.route.to_owned(),
            version: self.version,
        }
    }
}

/// Records HTTP exchanges through its series cache.
pub(super) type HttpRecorder = SeriesCache<HttpKey, HttpSeries>;

impl HttpRecorder {
    /// Observes one HTTP exchange's duration and body sizes; `peer` names a client's server.
    pub fn record(
        &mut self,
        metrics: &HttpMetrics,
        budget: &SeriesBudget,
        exchange: &Exchange,
        peer: impl FnOnce() -> PeerLabels,
        exemplar: bool,
    ) -> Option<ExemplarTarget> {
        let Detail::Http(http) = &exchange.detail else {
            return None;
        };
        let key = HttpLookup {
            origin: Origin::of(exchange),
            method: crate::exchange::normalize_method(&http.method),
            status: http.status,
            route: exchange.target().unwrap_or_default(),
            version: http.version.as_str(),
        };
        let create = || metrics.series(budget, exchange, &key, peer());
        let series = self.get_or_create(&key, create)?;
        series.request_body.observe(exchange.request_size() as f64);
        series
            .response_body
            .observe(exchange.response_size() as f64);
        let seconds = exchange.duration_seconds();
        series
            .duration
            .observe_with_exemplar(seconds, exemplar, exchange.end_ns)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::exchange::testkit::{exchange, host_process, http, server};
    use crate::export::prometheus::tests::{budget, dropped, samples};

    const WORKLOAD: &str = r#"service_name="shop",container_id="abc",k8s_namespace_name="prod",k8s_pod_name="shop-1",k8s_container_name="app",k8s_node_name="n1",k8s_owner_kind="StatefulSet",k8s_owner_name="shop""#;

    #[test]
    fn records_duration_and_body_sizes_by_side() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let (budget, _) = budget(10);
        let mut recorder = HttpRecorder::default();
        let peer = || PeerLabels::of(Some([10, 0, 0, 9].into()), None);
        for _ in 0..2 {
            let e = server(http("PATCH", 204, "/a/{id}", (100, 0)));
            recorder.record(&metrics, &budget, &e, peer, false);
        }
        let e = exchange(
            Role::Client,
            host_process(),
            "10.0.0.9:80",
            80,
            7,
            http("X", 502, "", (0, 9)),
        );
        recorder.record(&metrics, &budget, &e, peer, false);
        let server_labels = format!(
            r#"{{http_request_method="PATCH",http_response_status_code="204",http_route="/a/{{id}}",network_protocol_version="1.1",server_port="8080",{WORKLOAD}}}"#
        );
        assert_eq!(
            samples(&registry, "http_server_request_duration_seconds"),
            [
                format!("http_server_request_duration_seconds_count{server_labels} 2"),
                format!("http_server_request_duration_seconds_sum{server_labels} 0.04"),
            ]
        );
        assert_eq!(
            samples(&registry, "http_server_request_body_size_bytes_sum"),
            [format!(
                "http_server_request_body_size_bytes_sum{server_labels} 200.0"
            )]
        );
        let client_labels = r#"{http_request_method="_OTHER",http_response_status_code="502",http_route="",network_protocol_version="1.1",server_address="10.0.0.9",server_port="80",service_name="psql",container_id=""}"#;
        assert_eq!(
            samples(&registry, "http_client_response_body_size_bytes"),
            [
                format!("http_client_response_body_size_bytes_count{client_labels} 1"),
                format!("http_client_response_body_size_bytes_sum{client_labels} 9.0"),
            ]
        );
    }

    #[test]
    fn the_series_cap_drops_new_label_sets_and_expiry_frees_their_place() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let (budget, drops) = budget(1);
        let mut recorder = HttpRecorder::default();
        let peer = PeerLabels::default;
        let first = server(http("GET", 200, "/first", (0, 0)));
        let second = server(http("GET", 200, "/second", (0, 0)));
        recorder.record(&metrics, &budget, &first, peer, false);
        recorder.record(&metrics, &budget, &second, peer, false);
        recorder.record(&metrics, &budget, &first, peer, false);
        let metric = "http_server_request_duration_seconds";
        assert_eq!(dropped(&drops, metric), 1);
        let counts = samples(&registry, "http_server_request_duration_seconds_count");
        assert_eq!(counts.len(), 1);
        assert!(counts[0].contains(r#"http_route="/first""#) && counts[0].ends_with(" 2"));
        // Idle for the ttl (0 here): the first sweep sees the activity, the second removes.
        budget.expire_idle(Duration::ZERO);
        assert_eq!(budget.epoch(), 0);
        budget.expire_idle(Duration::ZERO);
        assert_eq!(budget.epoch(), 1);
        assert!(samples(&registry, "http_server_request").is_empty());
        // The place is free again; the cache must start over to see it.
        recorder.clear();
        recorder.record(&metrics, &budget, &second, peer, false);
        assert_eq!(dropped(&drops, metric), 1);
        assert_eq!(
            samples(&registry, "http_server_request_duration_seconds_count").len(),
            1
        );
        // A deleted pod's series go after the grace period.
        budget.expire_pods(|_, _| false, Duration::ZERO);
        assert!(samples(&registry, "http_server_request").is_empty());
    }
}
