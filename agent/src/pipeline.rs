//! The event loop: drains the kernel's ring buffer, hands each event to connection tracking
//! (`conn`), and through it to the sinks (`export`), and carries the kernel-side effects
//! tracking asks for back to capture.
//!
//! Model: one task owns the [`Tracker`], the sinks and the kernel tables ([`Maps`]). Two timers
//! drive it. The drain timer is paced by the rate events arrive at, so that the ring is drained
//! in short bursts ([`next_drain_in`], `DRAIN_BURST_BYTES`): the kernel never wakes us (see
//! `agent-ebpf`), which saves a wake-up per event at the cost of latency bounded by
//! `DRAIN_MAX_INTERVAL_MS`. The one-second tick folds the kernel's per-CPU counters and
//! (with `--bpf-stats`) the programs' run times into the self-metrics, and now and then expires
//! connections whose close was lost.
//!
//! Seams: capture hands over typed [`Record`]s (it did the bounds check and the raw read); the
//! tracker answers with [`KernelAction`]s, applied by capture after each drain, never in the
//! middle of one. Nothing here touches a BPF map or parses a raw record.
//!
//! Errors: a malformed record is counted (`malformed_events`) and skipped; kernel-side losses
//! are counted by reason from the kernel's own counters (`kernel_events_lost`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_ebpf::{
    EventKind, COUNTERS_LEN, COUNTER_NAMES, DRAIN_BURST_BYTES, DRAIN_MAX_INTERVAL_MS,
    DRAIN_MIN_INTERVAL_MS, DRAIN_TARGET_FILL,
};

use crate::capture::ring::{program_stats, Record};
use crate::capture::Maps;
use crate::conn::{listeners, KernelAction, Tracker};
use crate::export::prometheus::{Metrics, MetricsSink};
use crate::export::Fanout;
use crate::internal_events::kernel::{KernelEventsLost, LossLogLimits, SyscallSeriesDropped};

/// Reads events until the task is dropped.
pub struct Reader {
    maps: Maps,
    /// Programs whose run time is exported (with `--bpf-stats`).
    programs: Vec<(u32, String)>,
    tracker: Tracker,
    sink: Fanout,
    kernel_counters: KernelCounters,
    actions: Vec<KernelAction>,
    /// Processes found speaking TLS without plaintext, for the TLS probe discovery.
    tls_pids: Option<TlsPids>,
}

/// Tells the TLS probe discovery (`capture::tls`) about processes whose connections turned
/// out to be encrypted, each at most once per `TLS_PIDS_FORGET` ticks.
struct TlsPids {
    sender: std::sync::mpsc::SyncSender<u32>,
    sent: rustc_hash::FxHashSet<u32>,
}

/// Seconds after which a process is named to the discovery again.
const TLS_PIDS_FORGET: u64 = 60;

impl TlsPids {
    fn notice(&mut self, actions: &[KernelAction]) {
        for action in actions {
            if let KernelAction::MuteSocket {
                tgid, tls: true, ..
            } = action
            {
                // A full queue drops the hint: the periodic scan still finds the library.
                if self.sent.insert(*tgid) {
                    let _ = self.sender.try_send(*tgid);
                }
            }
        }
    }
}

impl Reader {
    pub fn new(maps: Maps, metrics: Arc<Metrics>) -> Reader {
        Reader {
            maps,
            programs: Vec::new(),
            tracker: Tracker::new(Path::new("/proc")),
            sink: Fanout {
                metrics: MetricsSink::new(metrics),
                spans: None,
            },
            kernel_counters: KernelCounters::default(),
            actions: Vec::new(),
            tls_pids: None,
        }
    }

    /// Names processes found speaking TLS to the TLS probe discovery.
    pub fn set_tls_pids(&mut self, sender: std::sync::mpsc::SyncSender<u32>) {
        self.tls_pids = Some(TlsPids {
            sender,
            sent: Default::default(),
        });
    }

    /// Watches only what `selection` admits (`--include-*`, `--exclude-*`).
    pub fn set_selection(&mut self, selection: crate::selection::Selection) {
        self.tracker.set_selection(selection);
    }

    /// Decodes only these protocols.
    pub fn set_protocols(&mut self, protocols: crate::conn::decoder::Protocols) {
        self.tracker.set_protocols(protocols);
    }

    /// `--decoder-memory-budget`.
    pub fn set_decoder_memory_budget(&mut self, bytes: usize) {
        self.tracker.set_decoder_memory_budget(bytes);
    }

    /// Names processes' pods and connections' peers through the cluster view from now on.
    pub fn set_cluster(&mut self, cluster: Arc<dyn crate::metadata::ClusterView>) {
        self.tracker.set_cluster(cluster.clone());
        self.sink.metrics.set_cluster(cluster);
    }

    /// Sends every exchange to this span sink too (OTLP tracing on).
    pub fn set_span_sink(&mut self, spans: crate::export::otlp::SpanSink) {
        self.sink.spans = Some(spans);
    }

    /// Exports the run time of these kernel programs every second.
    pub fn watch_programs(&mut self, programs: Vec<(u32, String)>) {
        self.programs = programs;
    }

    /// Registers sockets that were open before start-up so their traffic is decoded too.
    pub fn adopt_existing_sockets(&mut self) -> usize {
        let mut adopted = 0;
        let mut next_id: u64 = 1 << 63;
        for found in listeners::discover_established(Path::new("/proc")) {
            if self.maps.adopt(found.tgid, found.fd, next_id) {
                self.tracker
                    .adopt(next_id, &found, &mut self.sink, &mut self.actions);
                next_id += 1;
                adopted += 1;
            }
        }
        self.maps.apply(self.actions.drain(..));
        adopted
    }

    /// The read loop: drains the ring buffer whenever it is readable, and every second folds the
    /// kernel's per-CPU counters into the self-metrics.
    pub async fn run(self) -> anyhow::Result<()> {
        let Reader {
            mut maps,
            programs,
            mut tracker,
            mut sink,
            mut kernel_counters,
            mut actions,
            mut tls_pids,
        } = self;
        let ring_bytes = maps.ring_bytes();
        // The kernel never wakes us (see agent-ebpf): drain on a timer paced by the rate
        // events arrive at.
        let mut next_drain = Duration::from_millis(DRAIN_MIN_INTERVAL_MS);
        let mut last_drain = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(next_drain) => {
                    let drained = maps.drain(|record| {
                        handle_record(record, &mut tracker, &mut sink, &mut actions);
                    });
                    if let Some(tls_pids) = &mut tls_pids {
                        tls_pids.notice(&actions);
                    }
                    maps.apply(actions.drain(..));
                    sink.flush();
                    let now = Instant::now();
                    next_drain =
                        next_drain_in(ring_bytes, drained, now - last_drain, next_drain);
                    last_drain = now;
                }
                _ = tick.tick() => {
                    ticks += 1;
                    if let Some(tls_pids) = &mut tls_pids {
                        if ticks.is_multiple_of(TLS_PIDS_FORGET) {
                            tls_pids.sent.clear();
                        }
                    }
                    kernel_counters.fold(&maps.counter_totals(), &sink.metrics.metrics);
                    sink.metrics
                        .metrics
                        .self_metrics
                        .decoder_memory_bytes
                        .set(tracker.decoder_memory() as i64);
                    if !programs.is_empty() {
                        fold_program_stats(&programs, &sink.metrics.metrics);
                    }
                    if ticks.is_multiple_of(5) {
                        tracker.expire_closed(monotonic_ns(), CLOSE_LOST_IDLE_NS, &mut sink);
                    }
                    if ticks.is_multiple_of(10) {
                        for (map, entries) in maps.occupancy() {
                            sink.metrics.metrics.self_metrics.map_entries(map, entries);
                        }
                    }
                    if ticks.is_multiple_of(30) {
                        tracker.expire_dead(&mut sink, &mut actions);
                        maps.apply(actions.drain(..));
                        maps.forget_dead();
                    }
                    sink.flush();
                }
            }
        }
    }
}

/// How long to wait before the next drain, after `drained` bytes arrived in `elapsed`: until
/// `DRAIN_BURST_BYTES` (at most `1 / DRAIN_TARGET_FILL` of the ring) would arrive at that rate,
/// within the bounds; when nothing arrived, twice the last wait up to the maximum.
fn next_drain_in(ring_bytes: u64, drained: u64, elapsed: Duration, last: Duration) -> Duration {
    let min = Duration::from_millis(DRAIN_MIN_INTERVAL_MS);
    let max = Duration::from_millis(DRAIN_MAX_INTERVAL_MS);
    if drained == 0 {
        return (last * 2).clamp(min, max);
    }
    let target = (ring_bytes / DRAIN_TARGET_FILL).min(DRAIN_BURST_BYTES) as f64;
    Duration::from_secs_f64(elapsed.as_secs_f64() * target / drained as f64).clamp(min, max)
}

/// How long a connection must have been idle before `/proc` is asked whether its descriptor
/// still holds a socket (long enough for a close event still in the ring buffer to arrive).
const CLOSE_LOST_IDLE_NS: u64 = 5_000_000_000;

/// `CLOCK_MONOTONIC` now, in ns: the clock of the kernel's event timestamps.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC is always available.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Counts one record by kind and hands it to connection tracking.
fn handle_record(
    record: Record<'_>,
    tracker: &mut Tracker,
    sink: &mut Fanout,
    actions: &mut Vec<KernelAction>,
) {
    let metrics = &sink.metrics.metrics;
    let Record::Event {
        header,
        kind,
        payload,
    } = record
    else {
        metrics.self_metrics.malformed_events.inc();
        return;
    };
    let by_kind = &metrics.self_metrics.events_by_kind;
    match kind {
        EventKind::Data => {
            by_kind.data.inc();
            metrics
                .self_metrics
                .captured_bytes
                .inc_by(payload.len() as u64);
            // A framed event's payload is records, not a prefix: what it skips is whole
            // bodies, never truncation.
            if header.frame_end == 0 && (payload.len() as i64) < header.ret_len {
                metrics.self_metrics.truncated_captures.inc();
            }
        }
        EventKind::Open => {
            by_kind.open.inc();
        }
        EventKind::Close => {
            by_kind.close.inc();
        }
        EventKind::ProcessExit => {
            by_kind.process_exit.inc();
        }
        EventKind::CloseRange => {
            by_kind.close_range.inc();
        }
        EventKind::Exec => {
            by_kind.exec.inc();
        }
    }
    tracker.on_event(&header, payload, sink, actions);
}

/// Folds the kernel's per-program run counts and times into the self-metrics.
fn fold_program_stats(programs: &[(u32, String)], metrics: &Metrics) {
    for (name, runs, run_time_ns) in program_stats(programs) {
        metrics.set_program_stats(name, runs, run_time_ns);
    }
}

/// What the kernel's counters had reached at the last fold, and the rate limits of their log
/// lines.
#[derive(Default)]
struct KernelCounters {
    last: [u64; COUNTERS_LEN as usize],
    limits: LossLogLimits,
}

impl KernelCounters {
    /// Folds the kernel's counter totals (`COUNTER_NAMES` order) into the self-metrics: what
    /// each moved since the last fold becomes an internal event.
    fn fold(&mut self, totals: &[Option<u64>], metrics: &Metrics) {
        let now = Instant::now();
        for (index, name) in COUNTER_NAMES.iter().enumerate() {
            let (Some(Some(total)), Some(last)) =
                (totals.get(index).copied(), self.last.get_mut(index))
            else {
                continue;
            };
            let moved = total.saturating_sub(*last);
            *last = total;
            match *name {
                "events_sent" => {
                    metrics.self_metrics.kernel_events_sent.inc_by(moved);
                }
                // Created at the first drop, as the other metrics' drop counts are.
                "syscall_table_full" if moved == 0 => {}
                "syscall_table_full" => SyscallSeriesDropped { dropped: moved }.emit(metrics),
                // Every reason's series exists from the first fold, at 0 until a loss.
                reason => KernelEventsLost {
                    index,
                    reason,
                    lost: moved,
                }
                .emit(metrics, &self.limits, now),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use agent_ebpf::COUNTER_NAMES;

    use super::{next_drain_in, KernelCounters};
    use crate::internal_events::testkit::{assert_renders, registered};

    #[test]
    fn kernel_counters_fold_what_moved_since_the_last_fold() {
        let (registry, metrics) = registered();
        let mut counters = KernelCounters::default();
        let index = |name| COUNTER_NAMES.iter().position(|n| *n == name).unwrap();
        let mut totals = [Some(0); COUNTER_NAMES.len()];
        counters.fold(&totals, &metrics);
        // Every loss reason is a series from the start; the syscall series cap only once hit.
        let text = assert_renders(
            &registry,
            &["periscope_kernel_events_lost_total{reason=\"ringbuf_full\"} 0"],
        );
        assert!(!text.contains("periscope_series_dropped_total{"), "{text}");
        totals[index("ringbuf_full")] = Some(5);
        totals[index("events_sent")] = Some(100);
        totals[index("syscall_table_full")] = Some(2);
        counters.fold(&totals, &metrics);
        totals[index("ringbuf_full")] = Some(7);
        totals[index("events_sent")] = None; // a failed read changes nothing
        counters.fold(&totals, &metrics);
        assert_renders(
            &registry,
            &[
                "periscope_kernel_events_lost_total{reason=\"ringbuf_full\"} 7",
                "periscope_kernel_events_sent_total 100",
                "periscope_series_dropped_total{metric=\"syscall_duration_seconds\"} 2",
            ],
        );
    }

    #[test]
    fn drains_are_paced_to_short_bursts() {
        let ms = Duration::from_millis;
        let ring = 8 << 20;
        // 100 KiB in 10 ms: 64 KiB take 6.4 ms at that rate.
        assert_eq!(
            next_drain_in(ring, 100 << 10, ms(10), ms(10)),
            ms(6) + ms(4) / 10
        );
        // 4 KiB in 10 ms (a few hundred requests a second): 64 KiB take 160 ms; capped at 50.
        assert_eq!(next_drain_in(ring, 4 << 10, ms(10), ms(10)), ms(50));
        // 64 MB/s (80k requests/s): the minimum, 1 ms (64 KiB, ~0.1 ms of decoding).
        assert_eq!(next_drain_in(ring, 320 << 10, ms(5), ms(5)), ms(1));
        // A small ring: an eighth of it per drain (8 KiB of 64 KiB: 100 KiB in 50 ms → 4 ms).
        assert_eq!(next_drain_in(64 << 10, 100 << 10, ms(50), ms(50)), ms(4));
        // Nothing arrived: back off to the maximum.
        assert_eq!(next_drain_in(ring, 0, ms(5), ms(5)), ms(10));
        assert_eq!(next_drain_in(ring, 0, ms(40), ms(40)), ms(50));
    }
}
