//! Series expire two ways. Each series that names a pod is removed by a periodic sweep once
//! its pod has been gone for the grace period. And every series registers how to read its
//! activity (a count that grows with each observation): one whose count has not moved for the
//! idle time-to-live is removed, so that series of processes that are gone, or of ports and
//! routes seen once, do not pile up.
//!
//! Registrations are keyed by series ([`SeriesKey`]): a series removed one way and admitted
//! again replaces its registration instead of adding one, and removing it either way forgets
//! it for both. So what is kept here never outgrows the series that exist (the cap), whatever
//! the churn, and also when idle expiry is off (`--series-ttl 0`, no idle sweep ever runs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};

/// (namespace, pod name).
pub type PodKey = (String, String);

/// One registration: the metric, its label set's hash, and which of the series'
/// registrations this is (a series whose families are read apart registers more than once).
pub type SeriesKey = (&'static str, u64, u8);

/// A series' activity: a count that grows with every observation (0 when it has none yet).
pub type Activity = Box<dyn Fn() -> u64 + Send + Sync>;
/// Removes a series; says whether there was one to remove.
pub type Remover = Box<dyn Fn() -> bool + Send + Sync>;

struct Registered {
    pod: Option<PodKey>,
    activity: Activity,
    remove: Remover,
    /// The activity at the last idle sweep (`u64::MAX` before the first), and since when it
    /// has not moved.
    last: u64,
    since: Instant,
}

#[derive(Default)]
struct Tables {
    series: FxHashMap<SeriesKey, Registered>,
    by_pod: FxHashMap<PodKey, FxHashSet<SeriesKey>>,
    gone_since: FxHashMap<PodKey, Instant>,
}

impl Tables {
    fn unlink(&mut self, key: &SeriesKey, pod: Option<&PodKey>) {
        let Some(pod) = pod else { return };
        if let Some(keys) = self.by_pod.get_mut(pod) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_pod.remove(pod);
                self.gone_since.remove(pod);
            }
        }
    }
}

/// The removable series, by pod and by activity, and when each pod was first seen gone.
#[derive(Default)]
pub struct PodSeries {
    tables: Mutex<Tables>,
    /// Bumped whenever series were removed, so series caches holding handles start over.
    epoch: AtomicU64,
}

impl PodSeries {
    /// Registers a series for both ways of expiring (by `pod`, when it has one, and when
    /// idle), replacing an earlier registration of the same key.
    pub fn register(
        &self,
        key: SeriesKey,
        pod: Option<PodKey>,
        activity: Activity,
        remove: Remover,
        now: Instant,
    ) {
        let Ok(mut tables) = self.tables.lock() else {
            return;
        };
        if let Some(pod) = &pod {
            tables.by_pod.entry(pod.clone()).or_default().insert(key);
        }
        let entry = Registered {
            pod,
            activity,
            remove,
            last: u64::MAX,
            since: now,
        };
        if let Some(old) = tables.series.insert(key, entry) {
            let new_pod = tables.series.get(&key).and_then(|e| e.pod.clone());
            if old.pod.is_some() && old.pod != new_pod {
                tables.unlink(&key, old.pod.as_ref());
            }
        }
    }

    /// How many series are registered (for tests and the memory bound).
    pub fn len(&self) -> usize {
        self.tables.lock().map_or(0, |t| t.series.len())
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the series of pods for which `exists` has said no for at least `grace`;
    /// returns how many series were removed.
    pub fn sweep(&self, exists: impl Fn(&str, &str) -> bool, grace: Duration, now: Instant) -> u64 {
        let Ok(mut tables) = self.tables.lock() else {
            return 0;
        };
        let Tables {
            series,
            by_pod,
            gone_since,
        } = &mut *tables;
        let mut removed = 0;
        by_pod.retain(|pod, keys| {
            if exists(&pod.0, &pod.1) {
                gone_since.remove(pod);
                return true;
            }
            let since = *gone_since.entry(pod.clone()).or_insert(now);
            if now.duration_since(since) < grace {
                return true;
            }
            gone_since.remove(pod);
            for key in keys.iter() {
                if let Some(entry) = series.remove(key) {
                    removed += u64::from((entry.remove)());
                }
            }
            false
        });
        if removed > 0 {
            self.epoch.fetch_add(1, Ordering::Relaxed);
        }
        removed
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Removes the series whose activity has not moved for `ttl`; returns how many.
    pub fn sweep_idle(&self, ttl: Duration, now: Instant) -> u64 {
        let Ok(mut tables) = self.tables.lock() else {
            return 0;
        };
        let mut removed = 0;
        let mut gone = Vec::new();
        tables.series.retain(|key, series| {
            let activity = (series.activity)();
            if activity != series.last {
                series.last = activity;
                series.since = now;
                return true;
            }
            if now.duration_since(series.since) < ttl {
                return true;
            }
            removed += u64::from((series.remove)());
            gone.push((*key, series.pod.take()));
            false
        });
        for (key, pod) in gone {
            tables.unlink(&key, pod.as_ref());
        }
        if removed > 0 {
            self.epoch.fetch_add(1, Ordering::Relaxed);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn pod(name: &str) -> Option<PodKey> {
        Some(("ns".into(), name.into()))
    }

    /// A registration whose activity is `count` and whose removal bumps `removed`.
    fn series(count: &Arc<AtomicU64>, removed: &Arc<AtomicUsize>) -> (Activity, Remover) {
        let (c, r) = (count.clone(), removed.clone());
        (
            Box::new(move || c.load(Ordering::Relaxed)),
            Box::new(move || {
                r.fetch_add(1, Ordering::Relaxed);
                true
            }),
        )
    }

    #[test]
    fn removes_only_after_the_grace_period_and_only_gone_pods() {
        let expiry = PodSeries::default();
        let count = Arc::new(AtomicU64::new(0));
        let removed = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        for (n, name) in ["a", "a", "b"].into_iter().enumerate() {
            let (activity, remove) = series(&count, &removed);
            expiry.register(("m", n as u64, 0), pod(name), activity, remove, t0);
        }
        let grace = Duration::from_secs(60);
        let only_b = |_: &str, pod: &str| pod == "b";
        assert_eq!(expiry.sweep(only_b, grace, t0), 0);
        assert_eq!(expiry.sweep(only_b, grace, t0 + Duration::from_secs(59)), 0);
        assert_eq!(expiry.epoch(), 0);
        assert_eq!(expiry.sweep(only_b, grace, t0 + Duration::from_secs(60)), 2);
        assert_eq!(removed.load(Ordering::Relaxed), 2);
        assert_eq!(expiry.epoch(), 1);
        assert_eq!(expiry.len(), 1);
        // A pod that comes back within the grace period keeps its series.
        let none = |_: &str, _: &str| false;
        assert_eq!(expiry.sweep(none, grace, t0 + Duration::from_secs(61)), 0);
        let all = |_: &str, _: &str| true;
        assert_eq!(expiry.sweep(all, grace, t0 + Duration::from_secs(100)), 0);
        assert_eq!(expiry.sweep(none, grace, t0 + Duration::from_secs(101)), 0);
        assert_eq!(expiry.sweep(none, grace, t0 + Duration::from_secs(200)), 1);
        assert_eq!(removed.load(Ordering::Relaxed), 3);
        assert!(expiry.is_empty());
    }

    #[test]
    fn series_are_removed_after_a_quiet_ttl_and_not_while_used() {
        let expiry = PodSeries::default();
        let count = Arc::new(AtomicU64::new(0));
        let removed = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let (activity, remove) = series(&count, &removed);
        expiry.register(("m", 1, 0), None, activity, remove, t0);
        let ttl = Duration::from_secs(60);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(expiry.sweep_idle(ttl, at(0)), 0);
        // Observed now and then: never removed.
        for minute in 1..5 {
            count.fetch_add(1, Ordering::Relaxed);
            assert_eq!(expiry.sweep_idle(ttl, at(minute * 59)), 0);
        }
        // Quiet: removed once the ttl has passed since the count last moved.
        assert_eq!(expiry.sweep_idle(ttl, at(4 * 59 + 59)), 0);
        assert_eq!(expiry.epoch(), 0);
        assert_eq!(expiry.sweep_idle(ttl, at(4 * 59 + 60)), 1);
        assert_eq!(removed.load(Ordering::Relaxed), 1);
        assert_eq!(expiry.epoch(), 1);
        assert_eq!(
            expiry.sweep_idle(ttl, at(1000)),
            0,
            "forgotten once removed"
        );
        assert!(expiry.is_empty());
    }

    /// Issue 15's leak: a series of a live pod that expired idle and came back registered its
    /// pod remover again each time, until the pod went; and with idle expiry off
    /// (`--series-ttl 0`) every series the pod sweep removed stayed registered for idleness.
    #[test]
    fn churn_never_grows_the_registrations() {
        let expiry = PodSeries::default();
        let count = Arc::new(AtomicU64::new(0));
        let removed = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        // The same two series of a live pod expire idle and come back 1,000 times.
        for round in 0..1000u64 {
            let now = t0 + Duration::from_secs(round * 120);
            for n in 0..2 {
                let (activity, remove) = series(&count, &removed);
                expiry.register(("m", n, 0), pod("live"), activity, remove, now);
            }
            assert_eq!(expiry.len(), 2);
            expiry.sweep_idle(ttl, now);
            assert_eq!(expiry.sweep_idle(ttl, now + ttl), 2);
            assert!(expiry.is_empty());
        }
        assert_eq!(removed.load(Ordering::Relaxed), 2000);
        // Idle expiry off: pods come and go, each with its series, swept by pod only.
        let grace = Duration::from_secs(1);
        for round in 0..1000u64 {
            let now = t0 + Duration::from_secs(round * 10);
            let name = format!("pod-{round}");
            let (activity, remove) = series(&count, &removed);
            expiry.register(("m", round, 0), pod(&name), activity, remove, now);
            let gone = |_: &str, p: &str| p != name.as_str();
            expiry.sweep(gone, grace, now + grace);
            expiry.sweep(gone, grace, now + 2 * grace);
            assert!(expiry.len() <= 1, "round {round}: {}", expiry.len());
        }
        // A series that moves to another pod is no longer swept with the first.
        let (activity, remove) = series(&count, &removed);
        expiry.register(("x", 0, 0), pod("p1"), activity, remove, t0);
        let (activity, remove) = series(&count, &removed);
        expiry.register(("x", 0, 0), pod("p2"), activity, remove, t0);
        let only_p2 = |_: &str, p: &str| p == "p2";
        expiry.sweep(only_p2, grace, t0);
        assert_eq!(expiry.sweep(only_p2, grace, t0 + grace), 0);
        assert_eq!(expiry.len(), 1);
    }
}
