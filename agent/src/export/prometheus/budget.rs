//! The series budget (`--max-series`, `--series-memory-budget`) and the expiry of the
//! exchange families' series.
//!
//! Two caps, so that hostile or unbounded input (random paths, table names, topics) cannot
//! grow memory and series without limit: at most `--max-series` distinct label sets per metric,
//! and at most `--series-memory-budget` bytes for all of them together. A series' bytes are
//! estimated when it is admitted: a measured cost per family kind (its histograms, map entries,
//! cache entry and expiry registration) plus [`LABEL_COPIES`] times its label values' bytes
//! (`tests::series_cost_estimates_bound_what_a_series_holds` checks the estimate against
//! what the allocator hands out). Label sets beyond either cap are dropped and counted in
//! `periscope_series_dropped_total{metric}`; the first drop of each kind is logged.
//!
//! Every admitted series is registered for both ways of expiring (see `export::expiry`): with
//! its pod, and when idle. Removing a series frees its place and its bytes.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use rustc_hash::{FxHashMap, FxHasher};

use crate::export::expiry::PodSeries;
use crate::export::labels::{MetricLabel, WorkloadLabels};

/// Default `--max-series`: label sets per metric.
pub const DEFAULT_MAX_SERIES: usize = 5_000;

/// Default `--series-memory-budget`: bytes the exchange families' series may hold together.
pub const DEFAULT_MEMORY_BUDGET: usize = 64 << 20;

/// How many times a series holds its label values: once per family map key, in its cache
/// entry and in its expiry registration (measured: 5 for SQL, 6 for HTTP, 7 for Kafka).
pub const LABEL_COPIES: usize = 7;

/// The shape of a series, for the memory estimate: the measured bytes a series of this kind
/// holds besides its label values.
#[derive(Clone, Copy, Debug)]
pub struct SeriesKind {
    pub fixed_bytes: usize,
}

/// The label sets (by hash, with their estimated bytes) each metric holds, and the caps.
struct Admitted {
    max: AtomicUsize,
    memory_max: AtomicUsize,
    state: Mutex<AdmittedState>,
}

#[derive(Default)]
struct AdmittedState {
    seen: FxHashMap<&'static str, FxHashMap<u64, usize>>,
    /// The sum of the estimates in `seen`.
    bytes: usize,
}

impl Admitted {
    /// Whether `labels` may have a series in `metric`: yes if it already has one, or if
    /// neither cap is reached.
    fn admit(&self, metric: &'static str, labels: &impl Hash, kind: SeriesKind) -> Admission {
        let key = hash_of(labels);
        let Ok(mut state) = self.state.lock() else {
            return Admission::Dropped(Cap::Series);
        };
        let state = &mut *state;
        let set = state.seen.entry(metric).or_default();
        if set.contains_key(&key) {
            return Admission::Known;
        }
        if set.len() >= self.max.load(Ordering::Relaxed) {
            return Admission::Dropped(Cap::Series);
        }
        let bytes = kind.fixed_bytes + LABEL_COPIES * label_bytes(labels);
        if state.bytes + bytes > self.memory_max.load(Ordering::Relaxed) {
            return Admission::Dropped(Cap::Memory);
        }
        set.insert(key, bytes);
        state.bytes += bytes;
        Admission::New
    }

    /// Frees the place and the bytes of a removed series.
    fn forget(&self, metric: &'static str, labels: &impl Hash) {
        if let Ok(mut state) = self.state.lock() {
            let freed = state
                .seen
                .get_mut(metric)
                .and_then(|set| set.remove(&hash_of(labels)));
            state.bytes -= freed.unwrap_or(0);
        }
    }

    fn bytes(&self) -> usize {
        self.state.lock().map_or(0, |state| state.bytes)
    }
}

/// What the series budget said of a label set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    /// The series exists.
    Known,
    /// The series is new and fits under the caps.
    New,
    /// The series is new and a cap is reached: drop the observation.
    Dropped(Cap),
}

/// Which cap refused a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cap {
    /// `--max-series` label sets in the metric.
    Series,
    /// `--series-memory-budget` bytes in all series.
    Memory,
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut hasher = FxHasher::default();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The bytes of a label set's values as hashing sees them: every string's bytes and a few per
/// value, an upper bound of what its strings take on the heap.
pub fn label_bytes(value: &impl Hash) -> usize {
    struct Length(usize);
    impl Hasher for Length {
        fn finish(&self) -> u64 {
            self.0 as u64
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0 += bytes.len();
        }
    }
    let mut length = Length(0);
    value.hash(&mut length);
    length.0
}

/// The cap on series per metric, what it dropped, and the expiry of what it admitted.
pub struct SeriesBudget {
    admitted: Arc<Admitted>,
    /// Series that name a pod, to remove when the pod is gone; and every series, to remove
    /// when idle.
    expiry: PodSeries,
    /// `periscope_series_dropped_total{metric}`.
    dropped: Family<MetricLabel, Counter>,
    /// `periscope_series_expired_total`.
    expired: Counter,
    /// `periscope_series_memory_bytes`: the estimate of what the admitted series hold.
    memory: Gauge,
    /// Whether a drop by each cap was logged (`[Series, Memory]`): once per run each.
    logged: [AtomicBool; 2],
}

impl SeriesBudget {
    /// A budget of [`DEFAULT_MAX_SERIES`] per metric and [`DEFAULT_MEMORY_BUDGET`] bytes that
    /// counts into these self-metrics.
    pub fn new(dropped: Family<MetricLabel, Counter>, expired: Counter, memory: Gauge) -> Self {
        SeriesBudget {
            admitted: Arc::new(Admitted {
                max: AtomicUsize::new(DEFAULT_MAX_SERIES),
                memory_max: AtomicUsize::new(DEFAULT_MEMORY_BUDGET),
                state: Mutex::default(),
            }),
            expiry: PodSeries::default(),
            dropped,
            expired,
            memory,
            logged: Default::default(),
        }
    }

    /// Sets the cap on label sets per metric (`--max-series`).
    pub fn set_max(&self, max: usize) {
        self.admitted.max.store(max, Ordering::Relaxed);
    }

    /// Sets the cap on the bytes of all series (`--series-memory-budget`).
    pub fn set_memory_max(&self, bytes: usize) {
        self.admitted.memory_max.store(bytes, Ordering::Relaxed);
    }

    /// The estimated bytes the admitted series hold.
    pub fn memory_bytes(&self) -> usize {
        self.admitted.bytes()
    }

    /// Bumped whenever series were removed, so series caches holding handles start over.
    pub fn epoch(&self) -> u64 {
        self.expiry.epoch()
    }

    /// Whether `labels` may have a series of `kind` in `metric`: a new series registers for
    /// expiry through `on_new`; one beyond a cap is counted as dropped and refused.
    pub fn admit<L>(
        &self,
        metric: &'static str,
        labels: &L,
        kind: SeriesKind,
        on_new: impl FnOnce(Expiry<'_, L>),
    ) -> bool
    where
        L: Hash,
    {
        match self.admitted.admit(metric, labels, kind) {
            Admission::Known => true,
            Admission::New => {
                self.memory.set(self.admitted.bytes() as i64);
                on_new(Expiry {
                    budget: self,
                    metric,
                    labels,
                    parts: std::cell::Cell::new(0),
                });
                true
            }
            Admission::Dropped(cap) => {
                self.log_first_drop(metric, cap);
                self.dropped
                    .get_or_create(&MetricLabel {
                        metric: metric.to_owned(),
                    })
                    .inc();
                false
            }
        }
    }

    /// The first drop by each cap is logged (the counter says how many followed).
    fn log_first_drop(&self, metric: &str, cap: Cap) {
        let (index, what) = match cap {
            Cap::Series => (0, "--max-series label sets in this metric"),
            Cap::Memory => (1, "--series-memory-budget bytes in all series"),
        };
        if !self.logged[index].swap(true, Ordering::Relaxed) {
            log::warn!(
                "series cap reached: a new series of {metric} is dropped, as will be every new \
                 series beyond {what} (counted in periscope_series_dropped_total{{metric}}; \
                 logged once)"
            );
        }
    }

    /// Removes the series that have seen nothing for `ttl`.
    pub fn expire_idle(&self, ttl: Duration) {
        let removed = self.expiry.sweep_idle(ttl, Instant::now());
        self.expired.inc_by(removed);
        self.memory.set(self.admitted.bytes() as i64);
    }

    /// Removes the series of pods deleted at least `grace` ago.
    pub fn expire_pods(&self, exists: impl Fn(&str, &str) -> bool, grace: Duration) {
        let removed = self.expiry.sweep(exists, grace, Instant::now());
        self.expired.inc_by(removed);
        self.memory.set(self.admitted.bytes() as i64);
    }
}

/// A series just admitted: registers its families for expiry.
pub struct Expiry<'a, L> {
    budget: &'a SeriesBudget,
    metric: &'static str,
    labels: &'a L,
    /// How many registrations this series made so far: each gets its own key.
    parts: std::cell::Cell<u8>,
}

impl<L> Expiry<'_, L>
where
    L: Clone + Hash + Eq + Send + Sync + 'static,
{
    /// Registers the series (its labels in each of `families`) for both ways of expiring: with
    /// the pod of `workload`, and once none of `families` has moved for `--series-ttl`;
    /// `activity` reads one metric's count. A series admitted again after it was removed
    /// replaces its registration.
    pub fn register<M, C>(
        &self,
        workload: &WorkloadLabels,
        families: &[&Family<L, M, C>],
        activity: fn(&M) -> u64,
    ) where
        M: Send + Sync + 'static,
        C: MetricConstructor<M> + Clone + Send + Sync + 'static,
    {
        let part = self.parts.get();
        self.parts.set(part.wrapping_add(1));
        let key = (self.metric, hash_of(self.labels), part);
        let families: Vec<Family<L, M, C>> = families.iter().map(|f| (*f).clone()).collect();
        let (read, read_labels) = (families.clone(), self.labels.clone());
        let (metric, labels) = (self.metric, self.labels.clone());
        let admitted = self.budget.admitted.clone();
        self.budget.expiry.register(
            key,
            workload.pod_key(),
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
                admitted.forget(metric, &labels);
                removed
            }),
            Instant::now(),
        );
    }
}
