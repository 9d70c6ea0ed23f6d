//! The agent's self-metrics (`periscope_*`): what the capture read and lost, the connections it
//! tracks, decoder trouble, kernel program statistics, the series budget's drops and expiries,
//! the Kubernetes watch; and the agent's own CPU and memory (`process_*`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustc_hash::FxHashMap;

use crate::conn::{EndReason, MuteReason};
use crate::export::labels::{MetricLabel, ReasonLabel};
use crate::protocol::http1::DecoderStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HooksLabels {
    pub syscall_hooks: String,
    pub kernel: String,
    /// Where connects get their local address: `sock_ops`, `tracepoint` or `none`.
    pub connect_hook: String,
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

/// The `periscope_*` self-metrics and the `process_*` gauges.
#[derive(Default)]
pub struct SelfMetrics {
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
    pub decoder_memory_bytes: Gauge,
    pub kernel_map_entries: Family<MapLabel, Gauge>,
    pub connections_opened: Family<ReasonLabel, Counter>,
    pub connections_ended: Family<ReasonLabel, Counter>,
    pub connections_muted: Family<ReasonLabel, Counter>,
    pub exchanges_inexact: Family<ProtocolReasonLabels, Counter>,
    pub hooks_info: Family<HooksLabels, Gauge>,
    /// Files with TLS uprobes (`capture::tls`).
    pub tls_files_probed: Gauge,
    /// Files that could not be probed, by reason.
    pub tls_probe_failures: Family<ReasonLabel, Counter>,
    /// Observations dropped by a series cap, by metric (`export::prometheus::budget` and
    /// the pollers' own caps).
    pub series_dropped: Family<MetricLabel, Counter>,
    pub series_expired: Counter,
    /// The estimated bytes of the exchange families' series (`--series-memory-budget`).
    pub series_memory: Gauge,
    /// Scrapes of `/metrics` abandoned because the client read too slowly.
    pub scrapes_aborted: Counter,
    /// 1 while the Kubernetes API server answers, 0 while it does not.
    pub kubernetes_connected: Gauge,
    /// Kubernetes watch failures, by reason.
    pub kubernetes_errors: Family<ReasonLabel, Counter>,
    pub program_runs: Family<ProgramLabel, Counter>,
    pub program_run_time: Family<ProgramLabel, Counter<f64, AtomicU64>>,
    /// The kernel's last (runs, run time in ns) of each program, to advance the counters by.
    program_seen: Mutex<FxHashMap<String, (u64, u64)>>,
    pub process_cpu_seconds: Counter<f64, AtomicU64>,
    pub process_resident_memory: Gauge<i64>,
}

impl SelfMetrics {
    /// Creates the self-metrics and registers them in `registry` (the Kubernetes ones apart:
    /// see [`SelfMetrics::register_kubernetes`]).
    pub fn register(registry: &mut Registry) -> SelfMetrics {
        let mut m = SelfMetrics::default();
        m.events_by_kind = EventCounters::new(&m.events_read);
        let own = registry.sub_registry_with_prefix("periscope");
        register!(own,
            "events_read": m.events_read,
                "Ring-buffer events read by userspace, by kind";
            "kernel_events_lost": m.kernel_events_lost,
                "Events the kernel programs could not deliver, by reason";
            "kernel_events_sent": m.kernel_events_sent,
                "Events the kernel programs wrote to the ring buffer";
            "captured" [Bytes]: m.captured_bytes,
                "Payload bytes copied from the kernel";
            "truncated_captures": m.truncated_captures,
                "Data events whose payload was cut by the capture limit";
            "malformed_events": m.malformed_events,
                "Ring-buffer records that were too short or of an unknown kind";
            "parse_errors": m.parse_errors,
                "Connections dropped from decoding because their bytes did not parse";
            "decoder_anomalies": m.decoder_anomalies,
                "Recoverable decoder events: resyncs, unpaired requests, unexpected responses, truncated headers";
            "connections_tracked": m.connections_tracked,
                "Connections currently tracked in userspace";
            "decoder_memory_bytes": m.decoder_memory_bytes,
                "What the protocol decoders hold together, estimated (capped by --decoder-memory-budget; counted every second)";
            "kernel_map_entries": m.kernel_map_entries,
                "Entries in the kernel's socket and mute tables (counted every 10 s)";
            "connections_opened": m.connections_opened,
                "Connections that started being tracked, by how they were found";
            "connections_ended": m.connections_ended,
                "Connections that stopped being tracked, by reason";
            "connections_muted": m.connections_muted,
                "Connections whose capture was switched off in the kernel, by reason";
            "exchanges_inexact": m.exchanges_inexact,
                "Exchanges whose numbers are not exact, by protocol and reason: incomplete (exported, but the response was cut by the connection closing or by what was captured), unpaired (a request never answered as far as Periscope saw, not exported), events_lost (framed events of a connection were lost, ring buffer full: pairing restarted)";
            "bpf_program_runs": m.program_runs,
                "Times each kernel program ran (with --bpf-stats)";
            "bpf_program_run_time" [Seconds]: m.program_run_time,
                "CPU time spent in each kernel program (with --bpf-stats)";
            "series_dropped": m.series_dropped,
                "Observations dropped because their metric already had --max-series label sets, or all series held --series-memory-budget bytes";
            "scrapes_aborted": m.scrapes_aborted,
                "Scrapes of /metrics abandoned because the client read slower than the exposition was encoded";
            "series_memory" [Bytes]: m.series_memory,
                "Estimated bytes held by the HTTP, database and messaging series, against --series-memory-budget";
            "series_expired": m.series_expired,
                "Series removed because their pod was deleted more than --series-grace ago, or because they saw nothing for --series-ttl";
            "tls_files_probed": m.tls_files_probed,
                "Files (shared libraries or executables) whose SSL_read/SSL_write carry Periscope's uprobes";
            "tls_probe_failures": m.tls_probe_failures,
                "Files with TLS traffic that could not be probed, by reason: no_symbols, attach_failed, cap_reached";
            "hooks_info": m.hooks_info,
                "Which mechanism the syscall hooks use (fexit, tp_btf or raw_tracepoint), where connects get their local address (sock_ops, tracepoint or none), and the kernel";
        );
        register!(registry,
            "process_cpu" [Seconds]: m.process_cpu_seconds,
                "Total user and system CPU time spent by the agent";
            "process_resident_memory" [Bytes]: m.process_resident_memory,
                "Resident memory of the agent";
        );
        m
    }

    /// Registers the Kubernetes watch's self-metrics (only when attribution is on, so that a
    /// standalone agent exports no "disconnected" gauge for alerts to fire on).
    pub fn register_kubernetes(&self, registry: &mut Registry) {
        let own = registry.sub_registry_with_prefix("periscope");
        register!(own,
            "kubernetes_connected": self.kubernetes_connected,
                "1 while the Kubernetes API server answers, 0 while it does not";
            "kubernetes_errors": self.kubernetes_errors,
                "Kubernetes watch failures, by reason";
        );
    }

    /// A connection started being tracked, found by `reason`.
    pub fn opened(&self, reason: &'static str) {
        self.connections_opened
            .get_or_create(&reason_label(reason))
            .inc();
        self.connections_tracked.inc();
    }

    /// A connection stopped being tracked.
    pub fn ended(&self, reason: EndReason) {
        let label = reason_label(reason.as_str());
        self.connections_ended.get_or_create(&label).inc();
        self.connections_tracked.dec();
    }

    /// A connection's capture was switched off in the kernel.
    pub fn muted(&self, reason: MuteReason) {
        let label = reason_label(reason.as_str());
        self.connections_muted.get_or_create(&label).inc();
    }

    /// A scrape of `/metrics` was abandoned: its client read too slowly (logged at most once a
    /// minute).
    pub fn scrape_aborted(&self) {
        static LIMIT: crate::internal_events::RateLimit =
            crate::internal_events::RateLimit::new(std::time::Duration::from_secs(60));
        self.scrapes_aborted.inc();
        if let Some(held) = LIMIT.check(std::time::Instant::now(), 1) {
            log::warn!(
                "metrics endpoint: a scrape was abandoned, its client reading slower than the \
                 exposition is encoded ({held} more since the last line; \
                 periscope_scrapes_aborted_total)"
            );
        }
    }

    /// A connection was dropped from decoding because its bytes did not parse.
    pub fn parse_error(&self, protocol: &'static str, reason: &'static str) {
        self.parse_errors
            .get_or_create(&protocol_reason(protocol, reason))
            .inc();
    }

    /// How many entries a kernel map holds now.
    pub fn map_entries(&self, map: &str, entries: usize) {
        self.kernel_map_entries
            .get_or_create(&MapLabel {
                map: map.to_owned(),
            })
            .set(entries as i64);
    }

    /// One exchange of `protocol` is inexact for `reason`.
    pub fn inexact(&self, protocol: &'static str, reason: &'static str) {
        self.exchanges_inexact
            .get_or_create(&protocol_reason(protocol, reason))
            .inc();
    }

    /// Adds a decoder's recoverable anomalies.
    pub fn decoder_stats(&self, protocol: &'static str, stats: DecoderStats) {
        let pairs = [
            ("resync", stats.resyncs),
            ("unpaired_request", stats.unpaired_requests),
            ("unexpected_response", stats.unexpected_responses),
            ("truncated_headers", stats.truncated_headers),
        ];
        for (reason, n) in pairs {
            if n > 0 {
                self.decoder_anomalies
                    .get_or_create(&protocol_reason(protocol, reason))
                    .inc_by(n);
            }
        }
        if stats.unpaired_requests > 0 {
            self.exchanges_inexact
                .get_or_create(&protocol_reason(protocol, "unpaired"))
                .inc_by(stats.unpaired_requests);
        }
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

fn reason_label(reason: &str) -> ReasonLabel {
    ReasonLabel {
        reason: reason.to_owned(),
    }
}

fn protocol_reason(protocol: &str, reason: &str) -> ProtocolReasonLabels {
    ProtocolReasonLabels {
        protocol: protocol.to_owned(),
        reason: reason.to_owned(),
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

/// The `periscope_events_read_total` series, one per event kind.
#[derive(Clone, Default)]
pub struct EventCounters {
    pub data: Counter,
    pub open: Counter,
    pub close: Counter,
    pub process_exit: Counter,
    pub close_range: Counter,
    pub exec: Counter,
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
            close_range: get("close_range"),
            exec: get("exec"),
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
mod tests {
    use super::*;
    use crate::internal_events::testkit::assert_renders;

    #[test]
    fn connection_decoder_and_program_events_count_by_reason() {
        let mut registry = Registry::default();
        let m = SelfMetrics::register(&mut registry);
        m.opened("accept");
        m.opened("accept");
        m.ended(EndReason::ProcessExit);
        m.muted(MuteReason::UnknownProtocol);
        m.parse_error("kafka", "bad_frame_size");
        let stats = DecoderStats {
            unexpected_responses: 3,
            ..DecoderStats::default()
        };
        m.decoder_stats("http1", stats);
        m.set_program_stats("p", 5, 1_000_000_000);
        m.set_program_stats("p", 4, 500_000_000);
        m.set_program_stats("p", 7, 1_500_000_000);
        let text = assert_renders(
            &registry,
            &[
                r#"periscope_connections_opened_total{reason="accept"} 2"#,
                r#"periscope_connections_ended_total{reason="process_exit"} 1"#,
                r#"periscope_connections_muted_total{reason="unknown_protocol"} 1"#,
                "periscope_connections_tracked 1",
                r#"periscope_parse_errors_total{protocol="kafka",reason="bad_frame_size"} 1"#,
                r#"periscope_decoder_anomalies_total{protocol="http1",reason="unexpected_response"} 3"#,
                r#"periscope_bpf_program_runs_total{program="p"} 7"#,
                r#"periscope_bpf_program_run_time_seconds_total{program="p"} 1.5"#,
                r#"periscope_events_read_total{kind="open"} 0"#,
            ],
        );
        assert!(!text.contains("\nperiscope_kubernetes"), "{text}");
    }

    #[test]
    fn delta_counters_follow_the_kernel_total() {
        let (delta, counter) = (DeltaCounter::default(), Counter::default());
        delta.advance(&counter, 5);
        delta.advance(&counter, 5);
        delta.advance(&counter, 9);
        assert_eq!(counter.get(), 9);
    }
}
