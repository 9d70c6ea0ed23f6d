//! RED metrics and self-metrics in the Prometheus registry.
//!
//! Names follow the OpenTelemetry semantic conventions with dots turned into underscores and
//! the unit appended (`http.server.request.duration` → `http_server_request_duration_seconds`).
//! `process_pid` is deliberately not a label: pids change on every restart and would make
//! series churn; the process is named by `service_name` (and `container_id`).
//!
//! # Layout
//! Each family of metrics is one file that owns its label types, its families and its
//! recorder: [`http`], [`rpc`] (gRPC), [`db`] (SQL), [`messaging`] (Kafka), and [`self_metrics`] (the
//! `periscope_*` self-metrics and the agent's process gauges). The values a label holds come
//! from the exchange's protocol-neutral view (`crate::exchange`), as the span sink's do.
//!
//! # Recording
//! One style for every family: a recorder keeps a [`cache::SeriesCache`] of pre-resolved
//! series handles keyed by the exchange's label values, so a busy series costs one hash and a
//! few compares instead of building a label set of fresh strings. A series the cache does not
//! hold is admitted by the [`budget::SeriesBudget`] (`--max-series` label sets per metric; the
//! rest are dropped and counted), registered for expiry, and its handles resolved once.
//!
//! # Bounds
//! The budget caps the series of each metric; the caches start over beyond
//! [`cache::SERIES_CACHE_MAX`] entries, and whenever series were removed or the cluster view
//! changed (a cached handle or peer name may be stale).

/// Registers families in `registry`, one line each: `"name" [Unit]: handle, "help";`.
/// A table rather than one call per family, so that names, units and help texts read as a list.
macro_rules! register {
    ($registry:expr, $($name:literal $([$unit:ident])?: $metric:expr, $help:literal;)*) => {$(
        $crate::export::prometheus::register!(@one $registry, $name, [$($unit)?], $metric, $help);
    )*};
    (@one $registry:expr, $name:literal, [], $metric:expr, $help:literal) => {
        $registry.register($name, $help, $metric.clone())
    };
    (@one $registry:expr, $name:literal, [$unit:ident], $metric:expr, $help:literal) => {
        $registry.register_with_unit(
            $name,
            $help,
            prometheus_client::registry::Unit::$unit,
            $metric.clone(),
        )
    };
}
pub(crate) use register;

pub mod budget;
pub mod cache;
pub mod db;
pub mod histogram;
pub mod http;
pub mod messaging;
pub mod rpc;
pub mod self_metrics;
pub mod target;

use std::sync::Arc;

use histogram::{ExemplarTarget, Histogram};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::labels::PeerLabels;
use crate::conn::{EndReason, MuteReason, Sink};
use crate::exchange::{Detail, Exchange};
use crate::metadata::ClusterView;
use crate::protocol::http1::DecoderStats;

pub use budget::{SeriesBudget, DEFAULT_MAX_SERIES, DEFAULT_MEMORY_BUDGET};
pub use self_metrics::{DeltaCounter, EventCounters, HooksLabels, SelfMetrics};

/// A family of histograms made with a fixed constructor (its buckets).
pub type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric Periscope exports, by component.
pub struct Metrics {
    pub http: http::HttpMetrics,
    pub db: db::DbMetrics,
    pub messaging: messaging::MessagingMetrics,
    pub rpc: rpc::RpcMetrics,
    /// The `periscope_*` self-metrics and the process gauges.
    pub self_metrics: SelfMetrics,
    /// The series cap and expiry of the exchange families.
    pub series: SeriesBudget,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let http = http::HttpMetrics::register(registry);
        let db = db::DbMetrics::register(registry);
        let messaging = messaging::MessagingMetrics::register(registry);
        let rpc = rpc::RpcMetrics::register(registry);
        let self_metrics = SelfMetrics::register(registry);
        let series = SeriesBudget::new(
            self_metrics.series_dropped.clone(),
            self_metrics.series_expired.clone(),
            self_metrics.series_memory.clone(),
        );
        Metrics {
            http,
            db,
            messaging,
            rpc,
            self_metrics,
            series,
        }
    }

    /// Registers the Kubernetes watch's self-metrics (only when attribution is on, so that a
    /// standalone agent exports no "disconnected" gauge for alerts to fire on).
    pub fn register_kubernetes(&self, registry: &mut Registry) {
        self.self_metrics.register_kubernetes(registry);
    }

    /// Sets the cap on label sets per metric (`--max-series`).
    pub fn set_max_series(&self, max: usize) {
        self.series.set_max(max);
    }

    /// Sets the cap on the bytes of all exchange series (`--series-memory-budget`).
    pub fn set_series_memory_budget(&self, bytes: usize) {
        self.series.set_memory_max(bytes);
    }

    /// Removes the series that have seen nothing for `ttl` (see `export::expiry`).
    pub fn expire_idle(&self, ttl: std::time::Duration) {
        self.series.expire_idle(ttl);
    }

    /// Removes the series of pods deleted at least `grace` ago (see `export::expiry`).
    pub fn expire_pods(&self, exists: impl Fn(&str, &str) -> bool, grace: std::time::Duration) {
        self.series.expire_pods(exists, grace);
    }

    /// Advances a kernel program's run count and run time to the kernel's current totals.
    pub fn set_program_stats(&self, program: &str, runs: u64, run_time_ns: u64) {
        self.self_metrics
            .set_program_stats(program, runs, run_time_ns);
    }

    /// Refreshes the agent's own CPU and memory gauges from `/proc/self`.
    pub fn refresh_process_stats(&self) {
        self.self_metrics.refresh_process_stats();
    }
}

/// The tracker's sink: turns what it reports into metric updates.
pub struct MetricsSink {
    pub metrics: Arc<Metrics>,
    http: http::HttpRecorder,
    db: db::DbRecorder,
    messaging: messaging::MessagingRecorder,
    rpc: rpc::RpcRecorder,
    /// Names client peers in a cluster; None in standalone mode.
    cluster: Option<Arc<dyn ClusterView>>,
    /// (series-expiry epoch, cluster view generation) the caches were filled under: when
    /// either moves, cached handles or peer names may be stale and the caches start over.
    cache_epoch: (u64, u64),
}

impl MetricsSink {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        MetricsSink {
            metrics,
            http: http::HttpRecorder::default(),
            db: db::DbRecorder::default(),
            messaging: messaging::MessagingRecorder::default(),
            rpc: rpc::RpcRecorder::default(),
            cluster: None,
            cache_epoch: (0, 0),
        }
    }

    /// Names client peers through `cluster` from now on.
    pub fn set_cluster(&mut self, cluster: Arc<dyn ClusterView>) {
        self.cluster = Some(cluster);
    }

    /// Empties the series caches when series were removed or the cluster view changed.
    fn check_cache_epoch(&mut self) {
        let epoch = (
            self.metrics.series.epoch(),
            self.cluster.as_ref().map_or(0, |c| c.generation()),
        );
        if epoch != self.cache_epoch {
            self.cache_epoch = epoch;
            self.http.clear();
            self.db.clear();
            self.messaging.clear();
            self.rpc.clear();
        }
    }
}

/// The peer labels of an exchange: the server for a client, nothing for a server.
pub(crate) fn peer_labels(cluster: Option<&dyn ClusterView>, exchange: &Exchange) -> PeerLabels {
    let Some(ip) = exchange.server_ip() else {
        return PeerLabels::default();
    };
    let name = cluster.and_then(|cluster| cluster.peer(ip));
    PeerLabels::of(Some(ip), name.as_ref())
}

impl MetricsSink {
    /// Records one exchange; with `exemplar`, also says where its span's exemplar would go
    /// (the duration series it was counted in), for the span exporter to set once the span is
    /// sampled (see [`histogram`]).
    pub fn record(&mut self, exchange: &Exchange, exemplar: bool) -> Option<ExemplarTarget> {
        self.check_cache_epoch();
        let metrics = &self.metrics;
        let peer = || peer_labels(self.cluster.as_deref(), exchange);
        let series = &metrics.series;
        let target = match &exchange.detail {
            Detail::Http(crate::protocol::http::HttpExchange {
                grpc: Some(grpc), ..
            }) => self
                .rpc
                .record(&metrics.rpc, series, exchange, grpc, peer, exemplar),
            Detail::Http(_) => self
                .http
                .record(&metrics.http, series, exchange, peer, exemplar),
            Detail::Postgres(pg) => {
                self.db
                    .record(&metrics.db, series, exchange, pg, peer, exemplar)
            }
            Detail::Kafka(kafka) => {
                self.messaging
                    .record(&metrics.messaging, series, exchange, kafka, peer, exemplar)
            }
        };
        if !exchange.complete() {
            metrics
                .self_metrics
                .inexact(exchange.protocol_label(), "incomplete");
        }
        target
    }
}

impl Sink for MetricsSink {
    fn exchange(&mut self, exchange: &Exchange) {
        self.record(exchange, false);
    }

    fn opened(&mut self, reason: &'static str) {
        self.metrics.self_metrics.opened(reason);
    }

    fn ended(&mut self, reason: EndReason) {
        self.metrics.self_metrics.ended(reason);
    }

    fn muted(&mut self, reason: MuteReason) {
        self.metrics.self_metrics.muted(reason);
    }

    fn parse_error(&mut self, protocol: &'static str, reason: &'static str) {
        self.metrics.self_metrics.parse_error(protocol, reason);
    }

    fn decoder_stats(&mut self, protocol: &'static str, stats: DecoderStats) {
        self.metrics.self_metrics.decoder_stats(protocol, stats);
    }

    fn inexact(&mut self, protocol: &'static str, reason: &'static str) {
        self.metrics.self_metrics.inexact(protocol, reason);
    }
}

#[cfg(test)]
pub(crate) mod tests;
