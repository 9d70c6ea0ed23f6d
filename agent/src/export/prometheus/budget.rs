//! The series budget (`--max-series`) and the expiry of the exchange families' series.
//!
//! A cap on the distinct label sets of each metric, so that hostile or unbounded input
//! (random paths, table names, topics) cannot grow memory and series without limit. Label sets
//! beyond the cap are dropped and counted in `periscope_series_dropped_total{metric}`.
//!
//! Every admitted series is registered for both ways of expiring (see `export::expiry`): with
//! its pod, and when idle. Removing a series frees its place under the cap.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};

use crate::export::expiry::PodSeries;
use crate::export::labels::{MetricLabel, WorkloadLabels};

/// Default `--max-series`: label sets per metric.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

/// The label sets (by hash) each metric holds, and the cap on how many it may.
struct Admitted {
    max: AtomicUsize,
    seen: Mutex<FxHashMap<&'static str, FxHashSet<u64>>>,
}

impl Admitted {
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
}

impl SeriesBudget {
    /// A budget of [`DEFAULT_MAX_SERIES`] per metric that counts into these self-metrics.
    pub fn new(dropped: Family<MetricLabel, Counter>, expired: Counter) -> SeriesBudget {
        SeriesBudget {
            admitted: Arc::new(Admitted {
                max: AtomicUsize::new(DEFAULT_MAX_SERIES),
                seen: Mutex::default(),
            }),
            expiry: PodSeries::default(),
            dropped,
            expired,
        }
    }

    /// Sets the cap on label sets per metric (`--max-series`).
    pub fn set_max(&self, max: usize) {
        self.admitted.max.store(max, Ordering::Relaxed);
    }

    /// Bumped whenever series were removed, so series caches holding handles start over.
    pub fn epoch(&self) -> u64 {
        self.expiry.epoch()
    }

    /// Whether `labels` may have a series in `metric` (its series are `families`, by label
    /// set): a new series registers for expiry through `on_new`; one beyond the cap is counted
    /// as dropped and refused.
    pub fn admit<L>(
        &self,
        metric: &'static str,
        labels: &L,
        on_new: impl FnOnce(Expiry<'_, L>),
    ) -> bool
    where
        L: Hash,
    {
        match self.admitted.admit(metric, labels) {
            Admission::Known => true,
            Admission::New => {
                on_new(Expiry {
                    budget: self,
                    metric,
                    labels,
                    parts: std::cell::Cell::new(0),
                });
                true
            }
            Admission::Dropped => {
                self.dropped
                    .get_or_create(&MetricLabel {
                        metric: metric.to_owned(),
                    })
                    .inc();
                false
            }
        }
    }

    /// Removes the series that have seen nothing for `ttl`.
    pub fn expire_idle(&self, ttl: Duration) {
        let removed = self.expiry.sweep_idle(ttl, Instant::now());
        self.expired.inc_by(removed);
    }

    /// Removes the series of pods deleted at least `grace` ago.
    pub fn expire_pods(&self, exists: impl Fn(&str, &str) -> bool, grace: Duration) {
        let removed = self.expiry.sweep(exists, grace, Instant::now());
        self.expired.inc_by(removed);
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
