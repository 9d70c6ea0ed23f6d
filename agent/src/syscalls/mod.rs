//! Per-cgroup (so per container or pod), per-syscall statistics: counts, errors by errno class
//! and latency histograms, aggregated in the kernel (`agent-ebpf/src/syscalls.rs`) and read
//! here every [`POLL_INTERVAL`].
//!
//! Exported series:
//! - `syscall_duration_seconds` (histogram, log2 buckets from 256 ns to ~69 s) with labels
//!   `syscall`, `cgroup_path`, `container_id`;
//! - `syscall_errors_total` (counter) with the same labels plus `error_type` (the errno class,
//!   see `agent_ebpf::errno_class`).
//!
//! The kernel keeps per-CPU u32 counters that wrap; [`Poller`] adds the wrapping difference of
//! each per-CPU sum to 64-bit totals, so what is exported only ever grows. Entries of cgroups
//! that were removed are exported for a grace period, then deleted from the kernel table.

pub mod table;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_ebpf::{
    SyscallFilter, SyscallKey, SyscallStats, ERRNO_CLASSES, ERRNO_CLASS_NAMES, LATENCY_BUCKETS,
    LATENCY_MIN_SHIFT, SYSCALL_NR_LIMIT,
};
use aya::maps::{MapData, PerCpuHashMap, PerCpuValues};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, LabelSetEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::export::labels::WorkloadLabels;
use crate::metadata::cgroup_paths::CgroupPaths;
use crate::metadata::ClusterView;

/// How often the kernel table is read. Exported values lag the kernel by at most this much.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Name of the duration histogram, as `periscope_series_dropped_total{metric}` names it.
pub const DURATION_METRIC: &str = "syscall_duration_seconds";

/// Default `--syscalls-max-series`: (cgroup, syscall) pairs kept.
pub const DEFAULT_MAX_SERIES: u32 = 4096;

/// Default `--syscalls-grace-seconds`: how long a removed cgroup's series stay exported.
pub const DEFAULT_GRACE_SECONDS: u64 = 300;

/// The `default` selection: syscalls that tell where a service spends its time or fails. Names
/// the running architecture lacks are left out (arm64: `poll`, `select`, `epoll_wait`, `open`,
/// `fork`, `vfork`; their successors are in the list).
#[rustfmt::skip]
pub const DEFAULT_SYSCALLS: &[&str] = &[
    // file and socket I/O
    "read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2",
    "pwritev2", "sendfile", "splice", "fsync", "fdatasync", "io_uring_enter",
    // network
    "socket", "connect", "accept", "accept4", "sendto", "recvfrom", "sendmsg", "recvmsg",
    "sendmmsg", "recvmmsg", "shutdown",
    // waiting
    "poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "epoll_ctl", "futex", "futex_waitv", "futex_wait", "futex_wake", "nanosleep",
    "clock_nanosleep",
    // memory
    "mmap", "munmap", "mprotect", "madvise", "brk",
    // files
    "open", "openat", "openat2", "close", "newfstatat", "statx",
    // processes
    "clone", "clone3", "fork", "vfork", "execve", "execveat", "wait4",
];

/// Which syscalls get statistics (`--syscalls`): none, or a set of syscall numbers (of this
/// architecture).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    nrs: BTreeSet<u32>,
}

impl Selection {
    /// Parses `none`, or a comma-separated list of syscall names and `default` (the
    /// [`DEFAULT_SYSCALLS`]), e.g. `default,getppid`.
    pub fn parse(text: &str) -> Result<Selection, String> {
        let items: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.is_empty() {
            return Err("empty: give `default`, `none` or syscall names".to_owned());
        }
        if items == ["none"] {
            return Ok(Selection::default());
        }
        let mut nrs = BTreeSet::new();
        for item in items {
            match item {
                // Those this architecture has (arm64 has no `open`, `poll`, `fork`, ...).
                "default" => nrs.extend(DEFAULT_SYSCALLS.iter().filter_map(|n| selectable(n).ok())),
                "none" => return Err("`none` cannot be combined with syscall names".to_owned()),
                name => {
                    nrs.insert(selectable(name)?);
                }
            }
        }
        Ok(Selection { nrs })
    }

    /// Whether nothing is selected (`none`): the syscall programs are not attached at all.
    pub fn is_empty(&self) -> bool {
        self.nrs.is_empty()
    }

    /// The selected syscall numbers.
    pub fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.nrs.iter().copied()
    }

    /// The kernel's bitmap of this selection.
    pub fn filter(&self) -> SyscallFilter {
        let mut filter = SyscallFilter::default();
        for nr in &self.nrs {
            filter.insert(*nr);
        }
        filter
    }
}

/// The number of syscall `name`, if it can have statistics.
fn selectable(name: &str) -> Result<u32, String> {
    match name {
        // The exit hook never runs for these: there is no duration to measure.
        "exit" | "exit_group" => {
            return Err(format!("{name}: it never returns, so it has no duration"))
        }
        // It restores the registers of the interrupted code, so the exit hook cannot tell
        // which syscall returned.
        "rt_sigreturn" => return Err(format!("{name}: not measurable (it restores registers)")),
        _ => {}
    }
    let nr = table::NAMES
        .iter()
        .position(|n| !n.is_empty() && *n == name)
        .ok_or_else(|| {
            format!(
                "unknown syscall {name:?} ({} names, e.g. openat)",
                std::env::consts::ARCH
            )
        })?;
    debug_assert!(nr < SYSCALL_NR_LIMIT);
    Ok(nr as u32)
}

/// The name of syscall `nr` on this architecture (`nr_<n>` for a number the table does not know).
pub fn syscall_name(nr: u32) -> String {
    match table::NAMES.get(nr as usize) {
        Some(name) if !name.is_empty() => (*name).to_owned(),
        _ => format!("nr_{nr}"),
    }
}

/// The name of syscall `nr`'s own entry tracepoint (`syscalls:<event>`), `None` for a number
/// the table does not know. Usually `sys_enter_<name>`, but the kernel names an event after
/// the `SYSCALL_DEFINE` that implements the syscall, and a few of those differ from the
/// syscall's name.
pub fn enter_event(nr: u32) -> Option<String> {
    let name = table::NAMES.get(nr as usize).filter(|n| !n.is_empty())?;
    let defined = table::EVENTS
        .iter()
        .find(|(syscall, _)| syscall == name)
        .map_or(*name, |(_, event)| event);
    Some(format!("sys_enter_{defined}"))
}

/// Where syscalls came from. Built in one place, [`cgroup_labels`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CgroupLabels {
    /// The cgroup v2 path (empty when it could not be resolved: the cgroup was gone before the
    /// agent saw it, or the agent cannot see the host's cgroup hierarchy).
    pub cgroup_path: String,
    /// Container id from the path, and the pod and workload when the cluster knows it
    /// (`service_name` is empty outside pods: a cgroup is not one executable).
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// The labels of a cgroup's series.
pub fn cgroup_labels(path: Option<&str>, cluster: Option<&dyn ClusterView>) -> CgroupLabels {
    let path = path.unwrap_or_default();
    CgroupLabels {
        cgroup_path: path.to_owned(),
        workload: WorkloadLabels::of_cgroup(path, cluster),
    }
}

/// Labels of `syscall_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct SyscallLabels {
    pub syscall: String,
    #[prometheus(flatten)]
    pub cgroup: CgroupLabels,
}

/// Labels of `syscall_errors_total`, borrowed from the series' labels at scrape time.
struct ErrorLabels<'a> {
    syscall: &'a str,
    error_type: &'static str,
    cgroup: &'a CgroupLabels,
}

impl EncodeLabelSet for ErrorLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        [("syscall", self.syscall), ("error_type", self.error_type)].encode(encoder)?;
        self.cgroup.encode(encoder)
    }
}

/// Upper bounds of the exported buckets in seconds: 2^(LATENCY_MIN_SHIFT + i) ns, then +Inf.
pub fn bucket_bounds_seconds() -> [f64; LATENCY_BUCKETS] {
    let mut bounds = [f64::INFINITY; LATENCY_BUCKETS];
    for (i, bound) in bounds.iter_mut().take(LATENCY_BUCKETS - 1).enumerate() {
        *bound = (1u64 << (LATENCY_MIN_SHIFT as usize + i)) as f64 / 1e9;
    }
    bounds
}

/// The counters of one kernel entry, summed over CPUs, with u32 counters added mod 2^32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    pub sum_ns: u64,
    pub errors: [u32; ERRNO_CLASSES],
    pub buckets: [u32; LATENCY_BUCKETS],
}

impl Folded {
    /// Sums the per-CPU values. u32 counters wrap; their sum mod 2^32 is still the true total
    /// mod 2^32, which is all [`Totals::advance`] needs.
    pub fn of<'a>(per_cpu: impl IntoIterator<Item = &'a SyscallStats>) -> Folded {
        let mut folded = Folded::default();
        for cpu in per_cpu {
            folded.sum_ns = folded.sum_ns.wrapping_add(cpu.sum_ns);
            for (sum, v) in folded.errors.iter_mut().zip(cpu.errors) {
                *sum = sum.wrapping_add(v);
            }
            for (sum, v) in folded.buckets.iter_mut().zip(cpu.buckets) {
                *sum = sum.wrapping_add(v);
            }
        }
        folded
    }
}

/// Exported totals of one series: only ever grow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub sum_ns: u64,
    pub errors: [u64; ERRNO_CLASSES],
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Totals {
    /// Adds what a kernel entry gained between two reads. Each u32 counter may have wrapped
    /// once: the difference mod 2^32 is right while fewer than 2^32 calls land in one bucket
    /// between reads (at [`POLL_INTERVAL`], far beyond any machine's syscall rate).
    pub fn advance(&mut self, last: &Folded, now: &Folded) {
        self.sum_ns = self
            .sum_ns
            .wrapping_add(now.sum_ns.wrapping_sub(last.sum_ns));
        for ((total, a), b) in self.errors.iter_mut().zip(last.errors).zip(now.errors) {
            *total += u64::from(b.wrapping_sub(a));
        }
        for ((total, a), b) in self.buckets.iter_mut().zip(last.buckets).zip(now.buckets) {
            *total += u64::from(b.wrapping_sub(a));
        }
    }

    /// Calls counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// One exported series and how many kernel entries feed it.
#[derive(Debug, Default)]
struct Series {
    totals: Totals,
    entries: usize,
}

/// What `/metrics` shows: the series, shared by the [`Poller`] (writer) and the
/// [`SyscallCollector`] (reader, at scrape time).
#[derive(Debug, Default)]
pub struct Exported {
    series: BTreeMap<SyscallLabels, Series>,
}

impl Exported {
    /// The totals of one series, if it is exported.
    pub fn totals(&self, labels: &SyscallLabels) -> Option<&Totals> {
        self.series.get(labels).map(|s| &s.totals)
    }

    /// Number of exported series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether no series is exported.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// Encodes the syscall metrics at scrape time from the poller's totals.
#[derive(Debug, Clone, Default)]
pub struct SyscallCollector {
    exported: Arc<Mutex<Exported>>,
}

impl SyscallCollector {
    /// A collector with nothing exported yet; give [`SyscallCollector::shared`] to the poller.
    pub fn new() -> SyscallCollector {
        SyscallCollector::default()
    }

    /// The state the poller writes.
    pub fn shared(&self) -> Arc<Mutex<Exported>> {
        self.exported.clone()
    }
}

impl Collector for SyscallCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(exported) = self.exported.lock() else {
            return Ok(());
        };
        let bounds = bucket_bounds_seconds();
        let mut buckets: Vec<(f64, u64)> = bounds.iter().map(|b| (*b, 0)).collect();
        {
            let mut metric = encoder.encode_descriptor(
                "syscall_duration",
                "Duration of syscalls, per syscall and cgroup, measured in the kernel from entry to exit",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (labels, series) in &exported.series {
                let totals = &series.totals;
                for (bucket, count) in buckets.iter_mut().zip(totals.buckets) {
                    bucket.1 = count;
                }
                metric
                    .encode_family(labels)?
                    .encode_histogram::<NoLabelSet>(
                        totals.sum_ns as f64 / 1e9,
                        totals.count(),
                        &buckets,
                        None,
                    )?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "syscall_errors",
            "Failed syscalls, per syscall, errno class and cgroup",
            None,
            MetricType::Counter,
        )?;
        for (labels, series) in &exported.series {
            for (class, count) in series.totals.errors.iter().enumerate() {
                if *count == 0 {
                    continue;
                }
                let labels = ErrorLabels {
                    syscall: &labels.syscall,
                    error_type: ERRNO_CLASS_NAMES.get(class).copied().unwrap_or("other"),
                    cgroup: &labels.cgroup,
                };
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(count, None)?;
            }
        }
        Ok(())
    }
}

/// Poller settings.
#[derive(Clone, Debug)]
pub struct PollerSettings {
    /// How long the series of a removed cgroup stay exported before its kernel entries are
    /// deleted.
    pub grace: Duration,
}

/// What the poller remembers of one kernel entry.
#[derive(Debug)]
struct Entry {
    last: Folded,
    labels: SyscallLabels,
}

/// Reads the kernel table into [`Exported`], resolves cgroup paths and removes entries of
/// cgroups that are gone.
pub struct Poller {
    table: PerCpuHashMap<MapData, SyscallKey, SyscallStats>,
    paths: CgroupPaths,
    entries: HashMap<SyscallKey, Entry>,
    /// Since when each cgroup with entries has been seen gone.
    gone_since: HashMap<u64, Instant>,
    exported: Arc<Mutex<Exported>>,
    settings: PollerSettings,
    /// Names pods; None in standalone mode.
    cluster: Option<Arc<dyn ClusterView>>,
    /// The cluster view's generation the entries' labels were made under.
    labelled_at: u64,
}

impl Poller {
    /// A poller over the kernel's statistics table, writing into `exported`.
    pub fn new(
        table: PerCpuHashMap<MapData, SyscallKey, SyscallStats>,
        exported: Arc<Mutex<Exported>>,
        settings: PollerSettings,
    ) -> Poller {
        Poller {
            table,
            paths: CgroupPaths::discover(),
            entries: HashMap::new(),
            gone_since: HashMap::new(),
            exported,
            settings,
            cluster: None,
            labelled_at: 0,
        }
    }

    /// Names the pods of cgroups through `cluster` from now on.
    pub fn set_cluster(&mut self, cluster: Arc<dyn ClusterView>) {
        self.cluster = Some(cluster);
    }

    /// Gives every entry the labels the cluster view now implies (a pod listed after its
    /// cgroup's first syscalls): later calls count under the new series, earlier ones stay
    /// where they were counted.
    fn relabel(&mut self, exported: &mut Exported) {
        let Some(cluster) = self.cluster.as_deref() else {
            return;
        };
        let generation = cluster.generation();
        if generation == self.labelled_at {
            return;
        }
        self.labelled_at = generation;
        for (key, entry) in self.entries.iter_mut() {
            let labels = SyscallLabels {
                syscall: entry.labels.syscall.clone(),
                cgroup: cgroup_labels(self.paths.get(key.cgroup_id), Some(cluster)),
            };
            if labels == entry.labels {
                continue;
            }
            if let Some(old) = exported.series.get_mut(&entry.labels) {
                old.entries = old.entries.saturating_sub(1);
            }
            exported.series.entry(labels.clone()).or_default().entries += 1;
            entry.labels = labels;
        }
    }

    /// Polls every [`POLL_INTERVAL`] until the task is dropped.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.poll(Instant::now());
        }
    }

    /// One read of the kernel table.
    pub fn poll(&mut self, now: Instant) {
        let mut read: Vec<(SyscallKey, Folded)> = Vec::with_capacity(self.entries.len() + 16);
        for item in self.table.iter() {
            match item {
                Ok((key, values)) => read.push((key, fold(&values))),
                // An entry deleted between listing and reading it, or a failed read: counted
                // at the next poll.
                Err(e) => log::debug!("syscall statistics: reading an entry: {e}"),
            }
        }
        if read.iter().any(|(key, _)| {
            !self.entries.contains_key(key) && self.paths.get(key.cgroup_id).is_none()
        }) {
            // A cgroup created since the last walk. The walk comes after the read, so any cgroup
            // that made a syscall counted in `read` existed before it and is found, unless it
            // was removed in between.
            self.paths.refresh();
        }
        let shared = self.exported.clone();
        let Ok(mut exported) = shared.lock() else {
            return;
        };
        self.relabel(&mut exported);
        for (key, now_folded) in read {
            let entry = self.entries.entry(key).or_insert_with(|| {
                let labels = SyscallLabels {
                    syscall: syscall_name(key.nr),
                    cgroup: cgroup_labels(self.paths.get(key.cgroup_id), self.cluster.as_deref()),
                };
                exported.series.entry(labels.clone()).or_default().entries += 1;
                Entry {
                    last: Folded::default(),
                    labels,
                }
            });
            if let Some(series) = exported.series.get_mut(&entry.labels) {
                series.totals.advance(&entry.last, &now_folded);
            }
            entry.last = now_folded;
        }
        self.expire(now, &mut exported);
    }

    /// Deletes the entries of cgroups that have been gone for the grace period.
    fn expire(&mut self, now: Instant, exported: &mut Exported) {
        let cgroups: BTreeSet<u64> = self.entries.keys().map(|k| k.cgroup_id).collect();
        self.gone_since.retain(|id, _| cgroups.contains(id));
        let missing: Vec<u64> = cgroups
            .into_iter()
            .filter(|id| !self.paths.exists(*id))
            .collect();
        if missing.iter().any(|id| !self.gone_since.contains_key(id)) {
            // Newly missing: removed, or renamed (then a walk finds it under its new path).
            self.paths.refresh();
        }
        let mut expired = BTreeSet::new();
        for id in missing {
            if self.paths.exists(id) {
                self.gone_since.remove(&id);
                continue;
            }
            let since = *self.gone_since.entry(id).or_insert(now);
            if now.duration_since(since) >= self.settings.grace {
                expired.insert(id);
            }
        }
        if expired.is_empty() {
            return;
        }
        let keys: Vec<SyscallKey> = self
            .entries
            .keys()
            .filter(|k| expired.contains(&k.cgroup_id))
            .copied()
            .collect();
        for key in keys {
            // The cgroup is empty (a cgroup with tasks cannot be removed), so nothing is lost.
            if let Err(e) = self.table.remove(&key) {
                log::debug!("syscall statistics: removing an entry: {e}");
            }
            let Some(entry) = self.entries.remove(&key) else {
                continue;
            };
            let drop_series = match exported.series.get_mut(&entry.labels) {
                Some(series) => {
                    series.entries = series.entries.saturating_sub(1);
                    series.entries == 0
                }
                None => false,
            };
            if drop_series {
                exported.series.remove(&entry.labels);
            }
        }
        for id in expired {
            self.gone_since.remove(&id);
        }
    }
}

fn fold(values: &PerCpuValues<SyscallStats>) -> Folded {
    Folded::of(values.iter())
}

#[cfg(test)]
mod tests;
