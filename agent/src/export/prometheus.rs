//! RED metrics and self-metrics in the Prometheus registry.
//!
//! Names follow the OpenTelemetry semantic conventions with dots turned into underscores and
//! the unit appended (`http.server.request.duration` → `http_server_request_duration_seconds`).
//! `process_pid` is deliberately not a label: pids change on every restart and would make
//! series churn; the process is named by `service_name` (and `container_id`).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use rustc_hash::{FxHashMap, FxHasher};

use super::expiry::PodSeries;
use super::labels::{PeerLabels, WorkloadLabels};
use crate::conn::{EndReason, MuteReason, Sink};
use crate::exchange::{Detail, Exchange, PostgresDetail, Role};
use crate::metadata::ClusterView;
use crate::protocol::http1::{DecoderStats, HttpExchange};
use crate::protocol::kafka::{KafkaExchange, TopicStats};

/// Semantic-convention default buckets for `http.*.request.duration`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Body-size buckets: powers of 4 from 64 B to 64 MiB.
pub const SIZE_BUCKETS: [f64; 11] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpServerLabels {
    pub http_request_method: String,
    pub http_response_status_code: u16,
    pub http_route: String,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpClientLabels {
    pub http_request_method: String,
    pub http_response_status_code: u16,
    pub http_route: String,
    #[prometheus(flatten)]
    pub peer: PeerLabels,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// Semantic-convention buckets for `db.client.operation.duration`.
pub const DB_DURATION_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// Buckets for returned-row and message-count histograms.
pub const COUNT_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0,
];

/// Labels of database operation metrics (`db.*` semantic conventions).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabels {
    pub db_system_name: String,
    pub db_operation_name: String,
    pub db_collection_name: String,
    pub db_namespace: String,
    /// SQLSTATE of a failed operation, empty when it succeeded.
    pub error_type: String,
    /// The database server (client side only).
    #[prometheus(flatten)]
    pub peer: PeerLabels,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// Labels of messaging operation metrics (`messaging.*` semantic conventions).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessagingLabels {
    pub messaging_system: String,
    pub messaging_operation_name: String,
    pub messaging_destination_name: String,
    /// Kafka error name (or code) of a failed operation, empty when it succeeded.
    pub error_type: String,
    /// The broker (client side only).
    #[prometheus(flatten)]
    pub peer: PeerLabels,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabel {
    pub metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HooksLabels {
    pub syscall_hooks: String,
    pub kernel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolReasonLabels {
    pub protocol: String,
    pub reason: String,
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

fn db_duration_histogram() -> Histogram {
    Histogram::new(DB_DURATION_BUCKETS)
}

fn count_histogram() -> Histogram {
    Histogram::new(COUNT_BUCKETS)
}

/// A cap on the distinct label sets of each metric, so that hostile or unbounded input (random
/// paths, table names, topics) cannot grow memory and series without limit. Label sets beyond
/// the cap are dropped and counted in `periscope_series_dropped_total{metric}`.
pub struct SeriesBudget {
    max: std::sync::atomic::AtomicUsize,
    seen: std::sync::Mutex<FxHashMap<&'static str, rustc_hash::FxHashSet<u64>>>,
}

impl Default for SeriesBudget {
    fn default() -> Self {
        SeriesBudget {
            max: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_SERIES),
            seen: std::sync::Mutex::default(),
        }
    }
}

/// Default `--max-series`: label sets per metric.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

impl SeriesBudget {
    /// Whether `labels` may have a series in `metric`: yes if it already has one or the cap
    /// is not reached.
    fn admit(&self, metric: &'static str, labels: &impl Hash) -> Admission {
        let key = hash_of(labels);
        let Ok(mut seen) = self.seen.lock() else {
            return Admission::Dropped;
        };
        let set = seen.entry(metric).or_default();
        if set.contains(&key) {
            return Admission::Known;
        }
        if set.len() >= self.max.load(Ordering::Relaxed) {
            return Admission::Dropped;
        }
        set.insert(key);
        Admission::New
    }

    /// Frees the place of a removed series.
    fn forget(&self, metric: &'static str, labels: &impl Hash) {
        if let Ok(mut seen) = self.seen.lock() {
            if let Some(set) = seen.get_mut(metric) {
                set.remove(&hash_of(labels));
            }
        }
    }
}

/// What the series budget said of a label set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    /// The series exists.
    Known,
    /// The series is new and fits under the cap.
    New,
    /// The series is new and the cap is reached: drop the observation.
    Dropped,
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut hasher = FxHasher::default();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Every metric Periscope exports.
#[derive(Clone)]
pub struct Metrics {
    pub http_server_duration: HistFamily<HttpServerLabels>,
    pub http_client_duration: HistFamily<HttpClientLabels>,
    pub http_server_request_body: HistFamily<HttpServerLabels>,
    pub http_server_response_body: HistFamily<HttpServerLabels>,
    pub http_client_request_body: HistFamily<HttpClientLabels>,
    pub http_client_response_body: HistFamily<HttpClientLabels>,
    pub db_client_duration: HistFamily<DbLabels>,
    pub db_server_duration: HistFamily<DbLabels>,
    pub db_client_rows: HistFamily<DbLabels>,
    pub db_server_rows: HistFamily<DbLabels>,
    pub messaging_client_duration: HistFamily<MessagingLabels>,
    pub messaging_server_duration: HistFamily<MessagingLabels>,
    pub messaging_client_sent: Family<MessagingLabels, Counter>,
    pub messaging_client_consumed: Family<MessagingLabels, Counter>,
    pub messaging_server_received: Family<MessagingLabels, Counter>,
    pub messaging_server_delivered: Family<MessagingLabels, Counter>,
    pub events_read: Family<KindLabel, Counter>,
    /// `events_read` series by kind, created once (no label set built per event).
    pub events_by_kind: EventCounters,
    pub kernel_events_lost: Family<ReasonLabel, Counter>,
    pub kernel_events_sent: Counter,
    pub captured_bytes: Counter,
    pub truncated_captures: Counter,
    pub malformed_events: Counter,
    pub parse_errors: Family<ProtocolReasonLabels, Counter>,
    pub decoder_anomalies: Family<ProtocolReasonLabels, Counter>,
    pub connections_tracked: Gauge,
    pub connections_opened: Family<ReasonLabel, Counter>,
    pub connections_ended: Family<ReasonLabel, Counter>,
    pub connections_muted: Family<ReasonLabel, Counter>,
    pub incomplete_exchanges: Counter,
    pub hooks_info: Family<HooksLabels, Gauge>,
    pub series_dropped: Family<MetricLabel, Counter>,
    budget: Arc<SeriesBudget>,
    /// Series that name a pod, to remove when the pod is gone.
    pod_series: Arc<PodSeries>,
    pub series_expired: Counter,
    /// 1 while the Kubernetes API server answers, 0 while it does not.
    pub kubernetes_connected: Gauge,
    /// Kubernetes watch failures, by reason.
    pub kubernetes_errors: Family<ReasonLabel, Counter>,
    pub program_runs: Family<ProgramLabel, Counter>,
    pub program_run_time: Family<ProgramLabel, Counter<f64, AtomicU64>>,
    program_seen: Arc<std::sync::Mutex<FxHashMap<String, (u64, u64)>>>,
    pub process_cpu_seconds: Counter<f64, AtomicU64>,
    pub process_resident_memory: Gauge<i64>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let mut m = Metrics {
            http_server_duration: Family::new_with_constructor(duration_histogram),
            http_client_duration: Family::new_with_constructor(duration_histogram),
            http_server_request_body: Family::new_with_constructor(size_histogram),
            http_server_response_body: Family::new_with_constructor(size_histogram),
            http_client_request_body: Family::new_with_constructor(size_histogram),
            http_client_response_body: Family::new_with_constructor(size_histogram),
            db_client_duration: Family::new_with_constructor(db_duration_histogram),
            db_server_duration: Family::new_with_constructor(db_duration_histogram),
            db_client_rows: Family::new_with_constructor(count_histogram),
            db_server_rows: Family::new_with_constructor(count_histogram),
            messaging_client_duration: Family::new_with_constructor(duration_histogram),
            messaging_server_duration: Family::new_with_constructor(duration_histogram),
            messaging_client_sent: Family::default(),
            messaging_client_consumed: Family::default(),
            messaging_server_received: Family::default(),
            messaging_server_delivered: Family::default(),
            events_read: Family::default(),
            events_by_kind: EventCounters::default(),
            kernel_events_lost: Family::default(),
            kernel_events_sent: Counter::default(),
            captured_bytes: Counter::default(),
            truncated_captures: Counter::default(),
            malformed_events: Counter::default(),
            parse_errors: Family::default(),
            decoder_anomalies: Family::default(),
            connections_tracked: Gauge::default(),
            connections_opened: Family::default(),
            connections_ended: Family::default(),
            connections_muted: Family::default(),
            incomplete_exchanges: Counter::default(),
            hooks_info: Family::default(),
            series_dropped: Family::default(),
            budget: Arc::default(),
            pod_series: Arc::default(),
            series_expired: Counter::default(),
            kubernetes_connected: Gauge::default(),
            kubernetes_errors: Family::default(),
            program_runs: Family::default(),
            program_run_time: Family::default(),
            program_seen: Arc::default(),
            process_cpu_seconds: Counter::default(),
            process_resident_memory: Gauge::default(),
        };
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests, first request byte read to last response byte written",
            Unit::Seconds,
            m.http_server_duration.clone(),
        );
        registry.register_with_unit(
            "http_client_request_duration",
            "Duration of HTTP client requests, first request byte written to last response byte read",
            Unit::Seconds,
            m.http_client_duration.clone(),
        );
        registry.register_with_unit(
            "http_server_request_body_size",
            "Size of HTTP server request bodies",
            Unit::Bytes,
            m.http_server_request_body.clone(),
        );
        registry.register_with_unit(
            "http_server_response_body_size",
            "Size of HTTP server response bodies",
            Unit::Bytes,
            m.http_server_response_body.clone(),
        );
        registry.register_with_unit(
            "http_client_request_body_size",
            "Size of HTTP client request bodies",
            Unit::Bytes,
            m.http_client_request_body.clone(),
        );
        registry.register_with_unit(
            "http_client_response_body_size",
            "Size of HTTP client response bodies",
            Unit::Bytes,
            m.http_client_response_body.clone(),
        );
        registry.register_with_unit(
            "db_client_operation_duration",
            "Duration of database operations seen from the client, first request byte sent to last response byte read",
            Unit::Seconds,
            m.db_client_duration.clone(),
        );
        registry.register_with_unit(
            "db_server_operation_duration",
            "Duration of database operations seen from the server process, first request byte read to last response byte written",
            Unit::Seconds,
            m.db_server_duration.clone(),
        );
        registry.register(
            "db_client_response_returned_rows",
            "Rows returned by database operations, seen from the client",
            m.db_client_rows.clone(),
        );
        registry.register(
            "db_server_response_returned_rows",
            "Rows returned by database operations, seen from the server process",
            m.db_server_rows.clone(),
        );
        registry.register_with_unit(
            "messaging_client_operation_duration",
            "Duration of messaging operations seen from the client",
            Unit::Seconds,
            m.messaging_client_duration.clone(),
        );
        registry.register_with_unit(
            "messaging_server_operation_duration",
            "Duration of messaging operations seen from the broker process",
            Unit::Seconds,
            m.messaging_server_duration.clone(),
        );
        registry.register(
            "messaging_client_sent_messages",
            "Messages a client sent to the broker (records in Produce requests)",
            m.messaging_client_sent.clone(),
        );
        registry.register(
            "messaging_client_consumed_messages",
            "Messages a client received from the broker (records in Fetch responses)",
            m.messaging_client_consumed.clone(),
        );
        registry.register(
            "messaging_server_received_messages",
            "Messages the broker process received (records in Produce requests)",
            m.messaging_server_received.clone(),
        );
        registry.register(
            "messaging_server_delivered_messages",
            "Messages the broker process delivered (records in Fetch responses)",
            m.messaging_server_delivered.clone(),
        );
        let own = registry.sub_registry_with_prefix("periscope");
        m.events_by_kind = EventCounters::new(&m.events_read);
        own.register(
            "events_read",
            "Ring-buffer events read by userspace, by kind",
            m.events_read.clone(),
        );
        own.register(
            "kernel_events_lost",
            "Events the kernel programs could not deliver, by reason",
            m.kernel_events_lost.clone(),
        );
        own.register(
            "kernel_events_sent",
            "Events the kernel programs wrote to the ring buffer",
            m.kernel_events_sent.clone(),
        );
        own.register_with_unit(
            "captured",
            "Payload bytes copied from the kernel",
            Unit::Bytes,
            m.captured_bytes.clone(),
        );
        own.register(
            "truncated_captures",
            "Data events whose payload was cut by the capture limit",
            m.truncated_captures.clone(),
        );
        own.register(
            "malformed_events",
            "Ring-buffer records that were too short or of an unknown kind",
            m.malformed_events.clone(),
        );
        own.register(
            "parse_errors",
            "Connections dropped from decoding because their bytes did not parse",
            m.parse_errors.clone(),
        );
        own.register(
            "decoder_anomalies",
            "Recoverable decoder events: resyncs, unpaired requests, unexpected responses, truncated headers",
            m.decoder_anomalies.clone(),
        );
        own.register(
            "connections_tracked",
            "Connections currently tracked in userspace",
            m.connections_tracked.clone(),
        );
        own.register(
            "connections_opened",
            "Connections that started being tracked, by how they were found",
            m.connections_opened.clone(),
        );
        own.register(
            "connections_ended",
            "Connections that stopped being tracked, by reason",
            m.connections_ended.clone(),
        );
        own.register(
            "connections_muted",
            "Connections whose capture was switched off in the kernel, by reason",
            m.connections_muted.clone(),
        );
        own.register(
            "incomplete_exchanges",
            "Exchanges whose response was cut short by the connection closing",
            m.incomplete_exchanges.clone(),
        );
        own.register(
            "bpf_program_runs",
            "Times each kernel program ran (with --bpf-stats)",
            m.program_runs.clone(),
        );
        own.register_with_unit(
            "bpf_program_run_time",
            "CPU time spent in each kernel program (with --bpf-stats)",
            Unit::Seconds,
            m.program_run_time.clone(),
        );
        own.register(
            "series_dropped",
            "Observations dropped because their metric already had --max-series label sets",
            m.series_dropped.clone(),
        );
        own.register(
            "series_expired",
            "Series removed because their pod was deleted more than --series-grace ago, or because they saw nothing for --series-ttl",
            m.series_expired.clone(),
        );
        own.register(
            "hooks_info",
            "Which mechanism the syscall hooks use (tp_btf or raw_tracepoint), and the kernel",
            m.hooks_info.clone(),
        );
        registry.register_with_unit(
            "process_cpu",
            "Total user and system CPU time spent by the agent",
            Unit::Seconds,
            m.process_cpu_seconds.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the agent",
            Unit::Bytes,
            m.process_resident_memory.clone(),
        );
        m
    }

    fn series(&self, exchange: &Exchange, http: &HttpExchange, peer: PeerLabels) -> Option<Series> {
        let workload = WorkloadLabels::of(&exchange.endpoint.process);
        let method = normalize_method(&http.method).to_owned();
        let server_port = exchange.endpoint.server_port.unwrap_or(0);
        match exchange.role {
            Role::Server => {
                let labels = HttpServerLabels {
                    http_request_method: method,
                    http_response_status_code: http.status,
                    http_route: http.route.clone(),
                    server_port,
                    workload,
                };
                self.http_series(
                    "http_server_request_duration_seconds",
                    &labels.workload,
                    &labels,
                    [
                        &self.http_server_duration,
                        &self.http_server_request_body,
                        &self.http_server_response_body,
                    ],
                )
            }
            Role::Client => {
                let labels = HttpClientLabels {
                    http_request_method: method,
                    http_response_status_code: http.status,
                    http_route: http.route.clone(),
                    peer,
                    server_port,
                    workload,
                };
                self.http_series(
                    "http_client_request_duration_seconds",
                    &labels.workload,
                    &labels,
                    [
                        &self.http_client_duration,
                        &self.http_client_request_body,
                        &self.http_client_response_body,
                    ],
                )
            }
        }
    }

    /// The duration and body-size histograms of an HTTP series (`families` in that order), if
    /// the budget admits it; a new series is registered for expiry.
    fn http_series<L>(
        &self,
        metric: &'static str,
        workload: &WorkloadLabels,
        labels: &L,
        families: [&HistFamily<L>; 3],
    ) -> Option<Series>
    where
        L: Clone + Hash + Eq + Send + Sync + 'static,
    {
        match self.admit(metric, labels) {
            Admission::Dropped => return None,
            Admission::New => self.expire(metric, workload, labels, &families, Histogram::count),
            Admission::Known => {}
        }
        let [duration, request_body, response_body] = families;
        Some(Series {
            duration: duration.get_or_create(labels).clone(),
            request_body: request_body.get_or_create(labels).clone(),
            response_body: response_body.get_or_create(labels).clone(),
        })
    }

    /// Records one SQL statement from the client's or the server process's side.
    /// The duration and rows histograms of a statement's series, if the budget admits it.
    fn db_series(
        &self,
        exchange: &Exchange,
        pg: &PostgresDetail,
        peer: PeerLabels,
    ) -> Option<DbSeries> {
        let statement = &pg.statement;
        let labels = DbLabels {
            db_system_name: "postgresql".to_owned(),
            db_operation_name: statement.operation.clone(),
            db_collection_name: statement.collection.clone().unwrap_or_default(),
            db_namespace: pg.db_namespace.clone().unwrap_or_default(),
            error_type: statement.error_sqlstate.clone().unwrap_or_default(),
            peer,
            server_port: exchange.endpoint.server_port.unwrap_or(0),
            workload: WorkloadLabels::of(&exchange.endpoint.process),
        };
        let (metric, duration, rows) = match exchange.role {
            Role::Client => (
                "db_client_operation_duration_seconds",
                &self.db_client_duration,
                &self.db_client_rows,
            ),
            Role::Server => (
                "db_server_operation_duration_seconds",
                &self.db_server_duration,
                &self.db_server_rows,
            ),
        };
        match self.admit(metric, &labels) {
            Admission::Dropped => return None,
            Admission::New => {
                let families = [duration, rows];
                self.expire(
                    metric,
                    &labels.workload,
                    &labels,
                    &families,
                    Histogram::count,
                );
            }
            Admission::Known => {}
        }
        Some(DbSeries {
            duration: duration.get_or_create(&labels).clone(),
            rows: rows.get_or_create(&labels).clone(),
        })
    }

    /// Records a Kafka exchange: one observation per topic it names (or one without a
    /// destination), and the record counts of Produce and Fetch.
    fn record_kafka(&self, exchange: &Exchange, kafka: &KafkaExchange, peer: PeerLabels) {
        let workload = WorkloadLabels::of(&exchange.endpoint.process);
        let operation = match kafka.api_key {
            0 => "send",
            1 => "receive",
            _ => kafka.api_name,
        };
        let any_topic_failed = kafka.topics.iter().any(|t| t.error_code != 0);
        let labels = |topic: Option<&TopicStats>| {
            let error = match topic {
                Some(t) if t.error_code != 0 => t.error_code,
                _ if !any_topic_failed => kafka.error_code,
                _ => 0,
            };
            MessagingLabels {
                messaging_system: "kafka".to_owned(),
                messaging_operation_name: operation.to_owned(),
                messaging_destination_name: match topic {
                    Some(t) => t.name.clone().unwrap_or_else(|| "unknown".to_owned()),
                    None => String::new(),
                },
                error_type: kafka_error_name(error),
                peer: peer.clone(),
                server_port: exchange.endpoint.server_port.unwrap_or(0),
                workload: workload.clone(),
            }
        };
        let (metric, duration, produced, fetched) = match exchange.role {
            Role::Client => (
                "messaging_client_operation_duration_seconds",
                &self.messaging_client_duration,
                &self.messaging_client_sent,
                &self.messaging_client_consumed,
            ),
            Role::Server => (
                "messaging_server_operation_duration_seconds",
                &self.messaging_server_duration,
                &self.messaging_server_received,
                &self.messaging_server_delivered,
            ),
        };
        let seconds = exchange.duration_seconds();
        let admit = |labels: &MessagingLabels| match self.admit(metric, labels) {
            Admission::Dropped => false,
            Admission::New => {
                let workload = &labels.workload;
                self.expire(metric, workload, labels, &[duration], Histogram::count);
                self.expire(metric, workload, labels, &[produced, fetched], Counter::get);
                true
            }
            Admission::Known => true,
        };
        if kafka.topics.is_empty() {
            let labels = labels(None);
            if admit(&labels) {
                duration.get_or_create(&labels).observe(seconds);
            }
        }
        for topic in &kafka.topics {
            let labels = labels(Some(topic));
            if !admit(&labels) {
                continue;
            }
            duration.get_or_create(&labels).observe(seconds);
            if topic.record_count > 0 {
                match kafka.api_key {
                    0 => produced.get_or_create(&labels).inc_by(topic.record_count),
                    1 => fetched.get_or_create(&labels).inc_by(topic.record_count),
                    _ => 0,
                };
            }
        }
        if !kafka.complete {
            self.incomplete_exchanges.inc();
        }
    }

    /// Registers the Kubernetes watch's self-metrics (only when attribution is on, so that a
    /// standalone agent exports no "disconnected" gauge for alerts to fire on).
    pub fn register_kubernetes(&self, registry: &mut Registry) {
        let own = registry.sub_registry_with_prefix("periscope");
        own.register(
            "kubernetes_connected",
            "1 while the Kubernetes API server answers, 0 while it does not",
            self.kubernetes_connected.clone(),
        );
        own.register(
            "kubernetes_errors",
            "Kubernetes watch failures, by reason",
            self.kubernetes_errors.clone(),
        );
    }

    /// Sets the cap on label sets per metric (`--max-series`).
    pub fn set_max_series(&self, max: usize) {
        self.budget.max.store(max, Ordering::Relaxed);
    }

    /// Checks the series budget, counting a drop when it is exhausted.
    fn admit(&self, metric: &'static str, labels: &impl Hash) -> Admission {
        let admission = self.budget.admit(metric, labels);
        if admission == Admission::Dropped {
            self.series_dropped
                .get_or_create(&MetricLabel {
                    metric: metric.to_owned(),
                })
                .inc();
        }
        admission
    }

    /// Registers a new series (`labels` in each of `families`) for both ways of expiring: with
    /// its pod, and when idle.
    fn expire<L, M, C>(
        &self,
        metric: &'static str,
        workload: &WorkloadLabels,
        labels: &L,
        families: &[&Family<L, M, C>],
        activity: fn(&M) -> u64,
    ) where
        L: Clone + Hash + Eq + Send + Sync + 'static,
        M: Send + Sync + 'static,
        C: prometheus_client::metrics::family::MetricConstructor<M> + Clone + Send + Sync + 'static,
    {
        self.expire_with_pod(metric, workload, labels, families);
        self.expire_when_idle(metric, labels, families, activity);
    }

    /// Registers a new series (`labels` in each of `families`) to be removed once none of its
    /// families has moved for `--series-ttl`; `activity` reads one metric's count.
    fn expire_when_idle<L, M, C>(
        &self,
        metric: &'static str,
        labels: &L,
        families: &[&Family<L, M, C>],
        activity: fn(&M) -> u64,
    ) where
        L: Clone + Hash + Eq + Send + Sync + 'static,
        M: Send + Sync + 'static,
        C: prometheus_client::metrics::family::MetricConstructor<M> + Clone + Send + Sync + 'static,
    {
        let families: Vec<Family<L, M, C>> = families.iter().map(|f| (*f).clone()).collect();
        let (read, read_labels) = (families.clone(), labels.clone());
        let labels = labels.clone();
        let budget = self.budget.clone();
        self.pod_series.register_idle(
            Box::new(move || {
                read.iter()
                    .filter_map(|f| f.get(&read_labels).map(|m| activity(&m)))
                    .sum()
            }),
            Box::new(move || {
                let mut removed = false;
                for family in &families {
                    removed |= family.remove(&labels);
                }
                if removed {
                    budget.forget(metric, &labels);
                }
                removed
            }),
            std::time::Instant::now(),
        );
    }

    /// Removes the series that have seen nothing for `ttl` (see `export::expiry`).
    pub fn expire_idle(&self, ttl: std::time::Duration) {
        let removed = self.pod_series.sweep_idle(ttl, std::time::Instant::now());
        self.series_expired.inc_by(removed);
    }

    /// Registers a new series (`labels` in each of `families`) to be removed once its pod has
    /// been deleted for the grace period.
    fn expire_with_pod<L, M, C>(
        &self,
        metric: &'static str,
        workload: &WorkloadLabels,
        labels: &L,
        families: &[&Family<L, M, C>],
    ) where
        L: Clone + Hash + Eq + Send + Sync + 'static,
        M: Send + Sync + 'static,
        C: prometheus_client::metrics::family::MetricConstructor<M> + Clone + Send + Sync + 'static,
    {
        let Some(pod) = workload.pod_key() else {
            return;
        };
        let families: Vec<Family<L, M, C>> = families.iter().map(|f| (*f).clone()).collect();
        let labels = labels.clone();
        let budget = self.budget.clone();
        self.pod_series.register(
            pod,
            Box::new(move || {
                for family in &families {
                    family.remove(&labels);
                }
                budget.forget(metric, &labels);
            }),
        );
    }

    /// Removes the series of pods deleted at least `grace` ago (see `export::expiry`).
    pub fn expire_pods(&self, exists: impl Fn(&str, &str) -> bool, grace: std::time::Duration) {
        let removed = self
            .pod_series
            .sweep(exists, grace, std::time::Instant::now());
        self.series_expired.inc_by(removed);
    }

    /// Advances a kernel program's run count and run time to the kernel's current totals.
    pub fn set_program_stats(&self, program: &str, runs: u64, run_time_ns: u64) {
        let Ok(mut seen) = self.program_seen.lock() else {
            return;
        };
        let last = seen.entry(program.to_owned()).or_insert((0, 0));
        let label = ProgramLabel {
            program: program.to_owned(),
        };
        if runs > last.0 {
            self.program_runs
                .get_or_create(&label)
                .inc_by(runs - last.0);
        }
        if run_time_ns > last.1 {
            self.program_run_time
                .get_or_create(&label)
                .inc_by((run_time_ns - last.1) as f64 / 1e9);
        }
        *last = (runs.max(last.0), run_time_ns.max(last.1));
    }

    /// Refreshes the agent's own CPU and memory gauges from `/proc/self`.
    pub fn refresh_process_stats(&self) {
        if let Some((cpu, rss)) = own_usage() {
            let seen = self.process_cpu_seconds.get();
            if cpu > seen {
                self.process_cpu_seconds.inc_by(cpu - seen);
            }
            self.process_resident_memory.set(rss as i64);
        }
    }
}

/// CPU seconds (user + system) and resident bytes of this process.
fn own_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised comm: state is field 3; utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(((utime + stime) as f64 / ticks, rss_pages * page))
}

/// `error.type` of a Kafka error code: its protocol name for the common ones, else the number;
/// empty for success.
pub fn kafka_error_name(code: i16) -> String {
    let name = match code {
        0 => return String::new(),
        -1 => "UNKNOWN_SERVER_ERROR",
        1 => "OFFSET_OUT_OF_RANGE",
        2 => "CORRUPT_MESSAGE",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        5 => "LEADER_NOT_AVAILABLE",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        10 => "MESSAGE_TOO_LARGE",
        14 => "COORDINATOR_LOAD_IN_PROGRESS",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        17 => "INVALID_TOPIC_EXCEPTION",
        19 => "NOT_ENOUGH_REPLICAS",
        22 => "ILLEGAL_GENERATION",
        25 => "UNKNOWN_MEMBER_ID",
        27 => "REBALANCE_IN_PROGRESS",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        30 => "GROUP_AUTHORIZATION_FAILED",
        35 => "UNSUPPORTED_VERSION",
        36 => "TOPIC_ALREADY_EXISTS",
        41 => "NOT_CONTROLLER",
        58 => "SASL_AUTHENTICATION_FAILED",
        79 => "MEMBER_ID_REQUIRED",
        100 => "UNKNOWN_TOPIC_ID",
        other => return other.to_string(),
    };
    name.to_owned()
}

/// Semantic conventions: known methods as they are, anything else `_OTHER` (bounds cardinality).
pub fn normalize_method(method: &str) -> &str {
    match method {
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE" | "PATCH" => {
            method
        }
        _ => "_OTHER",
    }
}

/// The tracker's sink: turns what it reports into metric updates.
pub struct MetricsSink {
    pub metrics: Arc<Metrics>,
    series: SeriesCache,
    /// Like `series`, for database statements.
    db_series: FxHashMap<u64, Vec<(DbKey, DbSeries)>>,
    db_series_len: usize,
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
            series: SeriesCache::default(),
            db_series: FxHashMap::default(),
            db_series_len: 0,
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
            self.metrics.pod_series.epoch(),
            self.cluster.as_ref().map_or(0, |c| c.generation()),
        );
        if epoch != self.cache_epoch {
            self.cache_epoch = epoch;
            self.series = SeriesCache::default();
            self.db_series.clear();
            self.db_series_len = 0;
        }
    }

    fn peer_labels(&self, exchange: &Exchange) -> PeerLabels {
        peer_labels(self.cluster.as_deref(), exchange)
    }
}

/// The peer labels of an exchange: the server for a client, nothing for a server.
fn peer_labels(cluster: Option<&dyn ClusterView>, exchange: &Exchange) -> PeerLabels {
    match exchange.role {
        Role::Server => PeerLabels::default(),
        Role::Client => {
            let ip = exchange.endpoint.peer.map(|p| p.ip());
            let name = match (cluster, ip) {
                (Some(cluster), Some(ip)) => cluster.peer(ip),
                _ => None,
            };
            PeerLabels::of(ip, name.as_ref())
        }
    }
}

/// The three histograms one exchange updates.
#[derive(Clone)]
struct Series {
    duration: Histogram,
    request_body: Histogram,
    response_body: Histogram,
}

/// Series handles by label values, so that a busy series costs one hash and a few string
/// compares per exchange instead of building and hashing a label set with fresh strings.
#[derive(Default)]
struct SeriesCache {
    entries: FxHashMap<u64, Vec<(SeriesKey, Series)>>,
    len: usize,
}

/// Owned label values of a cached series; compared field by field on lookup.
#[derive(Clone, PartialEq, Eq)]
struct SeriesKey {
    role: Role,
    method: String,
    status: u16,
    route: String,
    port: u16,
    peer: Option<std::net::IpAddr>,
    process: u64,
}

/// The histograms one SQL statement updates.
#[derive(Clone)]
struct DbSeries {
    duration: Histogram,
    rows: Histogram,
}

/// Owned label values of a cached database series; compared field by field on lookup.
#[derive(Clone, PartialEq, Eq)]
struct DbKey {
    role: Role,
    operation: String,
    collection: Option<String>,
    namespace: Option<String>,
    error: Option<String>,
    port: u16,
    peer: Option<std::net::IpAddr>,
    process: u64,
}

/// Beyond this many cached series the cache starts over (the families keep the data).
const SERIES_CACHE_MAX: usize = 16384;

impl MetricsSink {
    /// Records one SQL statement through the database series cache: a busy series costs one
    /// hash and a few compares instead of nine label strings and two family lookups.
    fn postgres(&mut self, exchange: &Exchange, pg: &PostgresDetail) {
        let statement = &pg.statement;
        let endpoint = &exchange.endpoint;
        let port = endpoint.server_port.unwrap_or(0);
        let peer = match exchange.role {
            Role::Client => endpoint.peer.map(|p| p.ip()),
            Role::Server => None,
        };
        let process = endpoint.process.seq;
        let mut hasher = FxHasher::default();
        (
            exchange.role,
            &statement.operation,
            &statement.collection,
            &pg.db_namespace,
            &statement.error_sqlstate,
            port,
            peer,
            process,
        )
            .hash(&mut hasher);
        let hash = hasher.finish();
        let matches = |key: &DbKey| {
            key.role == exchange.role
                && key.port == port
                && key.process == process
                && key.peer == peer
                && key.operation == statement.operation
                && key.collection == statement.collection
                && key.namespace == pg.db_namespace
                && key.error == statement.error_sqlstate
        };
        let cached = self
            .db_series
            .get(&hash)
            .and_then(|bucket| bucket.iter().find(|(k, _)| matches(k)))
            .map(|(_, series)| series.clone());
        let series = match cached {
            Some(series) => series,
            None => {
                let peer_labels = self.peer_labels(exchange);
                let Some(series) = self.metrics.db_series(exchange, pg, peer_labels) else {
                    return;
                };
                if self.db_series_len >= SERIES_CACHE_MAX {
                    self.db_series.clear();
                    self.db_series_len = 0;
                }
                let key = DbKey {
                    role: exchange.role,
                    operation: statement.operation.clone(),
                    collection: statement.collection.clone(),
                    namespace: pg.db_namespace.clone(),
                    error: statement.error_sqlstate.clone(),
                    port,
                    peer,
                    process,
                };
                self.db_series
                    .entry(hash)
                    .or_default()
                    .push((key, series.clone()));
                self.db_series_len += 1;
                series
            }
        };
        if let Some(n) = statement.rows {
            series.rows.observe(n as f64);
        }
        series.duration.observe(exchange.duration_seconds());
        if !statement.complete {
            self.metrics.incomplete_exchanges.inc();
        }
    }

    /// Records an HTTP exchange through the series cache.
    fn http(&mut self, exchange: &Exchange, http: &HttpExchange) {
        let method = normalize_method(&http.method);
        let endpoint = &exchange.endpoint;
        let port = endpoint.server_port.unwrap_or(0);
        let peer = match exchange.role {
            Role::Client => endpoint.peer.map(|p| p.ip()),
            Role::Server => None,
        };
        let process = endpoint.process.seq;
        let mut hasher = FxHasher::default();
        (
            exchange.role,
            method,
            http.status,
            &http.route,
            port,
            peer,
            process,
        )
            .hash(&mut hasher);
        let hash = hasher.finish();
        let matches = |key: &SeriesKey| {
            key.role == exchange.role
                && key.status == http.status
                && key.port == port
                && key.process == process
                && key.peer == peer
                && key.method == method
                && key.route == http.route
        };
        let cache = &mut self.series;
        let series = match cache
            .entries
            .get(&hash)
            .and_then(|bucket| bucket.iter().find(|(k, _)| matches(k)))
        {
            Some((_, series)) => series.clone(),
            None => {
                let peer_labels = peer_labels(self.cluster.as_deref(), exchange);
                let Some(series) = self.metrics.series(exchange, http, peer_labels) else {
                    return;
                };
                if cache.len >= SERIES_CACHE_MAX {
                    cache.entries.clear();
                    cache.len = 0;
                }
                let key = SeriesKey {
                    role: exchange.role,
                    method: method.to_owned(),
                    status: http.status,
                    route: http.route.clone(),
                    port,
                    peer,
                    process,
                };
                cache
                    .entries
                    .entry(hash)
                    .or_default()
                    .push((key, series.clone()));
                cache.len += 1;
                series
            }
        };
        series.duration.observe(exchange.duration_seconds());
        series.request_body.observe(http.request_body_bytes as f64);
        series
            .response_body
            .observe(http.response_body_bytes as f64);
        if !http.complete {
            self.metrics.incomplete_exchanges.inc();
        }
    }
}

impl Sink for MetricsSink {
    fn exchange(&mut self, exchange: &Exchange) {
        self.check_cache_epoch();
        match &exchange.detail {
            Detail::Http(http) => self.http(exchange, http),
            Detail::Kafka(kafka) => {
                let peer = self.peer_labels(exchange);
                self.metrics.record_kafka(exchange, kafka, peer)
            }
            Detail::Postgres(pg) => self.postgres(exchange, pg),
        }
    }

    fn opened(&mut self, reason: &'static str) {
        self.metrics
            .connections_opened
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
        self.metrics.connections_tracked.inc();
    }

    fn ended(&mut self, reason: EndReason) {
        self.metrics
            .connections_ended
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_owned(),
            })
            .inc();
        self.metrics.connections_tracked.dec();
    }

    fn muted(&mut self, reason: MuteReason) {
        self.metrics
            .connections_muted
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    fn parse_error(&mut self, protocol: &'static str, reason: &'static str) {
        self.metrics
            .parse_errors
            .get_or_create(&ProtocolReasonLabels {
                protocol: protocol.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    fn decoder_stats(&mut self, protocol: &'static str, stats: DecoderStats) {
        let pairs = [
            ("resync", stats.resyncs),
            ("unpaired_request", stats.unpaired_requests),
            ("unexpected_response", stats.unexpected_responses),
            ("truncated_headers", stats.truncated_headers),
        ];
        for (reason, n) in pairs {
            if n > 0 {
                self.metrics
                    .decoder_anomalies
                    .get_or_create(&ProtocolReasonLabels {
                        protocol: protocol.to_owned(),
                        reason: reason.to_owned(),
                    })
                    .inc_by(n);
            }
        }
    }
}

/// The `periscope_events_read_total` series, one per event kind.
#[derive(Clone, Default)]
pub struct EventCounters {
    pub data: Counter,
    pub open: Counter,
    pub close: Counter,
    pub process_exit: Counter,
}

impl EventCounters {
    fn new(family: &Family<KindLabel, Counter>) -> Self {
        let get = |kind: &str| {
            family
                .get_or_create(&KindLabel {
                    kind: kind.to_owned(),
                })
                .clone()
        };
        EventCounters {
            data: get("data"),
            open: get("open"),
            close: get("close"),
            process_exit: get("process_exit"),
        }
    }
}

/// Keeps the last value of a kernel counter so the Prometheus counter grows by the difference.
#[derive(Default)]
pub struct DeltaCounter {
    last: AtomicU64,
}

impl DeltaCounter {
    pub fn advance(&self, counter: &Counter, now: u64) {
        let last = self.last.swap(now, Ordering::Relaxed);
        if now > last {
            counter.inc_by(now - last);
        }
    }
}

#[cfg(test)]
mod tests;
