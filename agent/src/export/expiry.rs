//! Series expire two ways. Each series that names a pod registers how to remove it, and a
//! periodic sweep removes the series of pods that have been gone for the grace period. And
//! every series registers how to read its activity (a count that grows with each
//! observation): one whose count has not moved for the idle time-to-live is removed, so that
//! series of processes that are gone, or of ports and routes seen once, do not pile up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

/// (namespace, pod name).
pub type PodKey = (String, String);

type Remover = Box<dyn Fn() + Send + Sync>;

/// A series' activity: a count that grows with every observation (0 when it has none yet).
pub type Activity = Box<dyn Fn() -> u64 + Send + Sync>;
/// Removes a series; says whether there was one to remove.
pub type IdleRemover = Box<dyn Fn() -> bool + Send + Sync>;

struct Idle {
    activity: Activity,
    remove: IdleRemover,
    /// The activity at the last sweep (`u64::MAX` before the first), and since when it has
    /// not moved.
    last: u64,
    since: Instant,
}

/// The removable series of every pod, and when each pod was first seen gone.
#[derive(Default)]
pub struct PodSeries {
    removers: Mutex<FxHashMap<PodKey, Vec<Remover>>>,
    gone_since: Mutex<FxHashMap<PodKey, Instant>>,
    idle: Mutex<Vec<Idle>>,
    /// Bumped whenever series were removed, so series caches holding handles start over.
    epoch: AtomicU64,
}

impl PodSeries {
    /// Remembers how to remove one series of `pod`.
    pub fn register(&self, pod: PodKey, remove: Remover) {
        if let Ok(mut removers) = self.removers.lock() {
            removers.entry(pod).or_default().push(remove);
        }
    }

    /// Removes the series of pods for which `exists` has said no for at least `grace`;
    /// returns how many series were removed.
    pub fn sweep(&self, exists: impl Fn(&str, &str) -> bool, grace: Duration, now: Instant) -> u64 {
        let (Ok(mut removers), Ok(mut gone_since)) = (self.removers.lock(), self.gone_since.lock())
        else {
            return 0;
        };
        let mut removed = 0;
        removers.retain(|pod, series| {
            if exists(&pod.0, &pod.1) {
                gone_since.remove(pod);
                return true;
            }
            let since = *gone_since.entry(pod.clone()).or_insert(now);
            if now.duration_since(since) < grace {
                return true;
            }
            gone_since.remove(pod);
            for remove in series.iter() {
                remove();
            }
            removed += series.len() as u64;
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

    /// Remembers how to tell whether a new series is still used, and how to remove it.
    pub fn register_idle(&self, activity: Activity, remove: IdleRemover, now: Instant) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Idle {
                activity,
                remove,
                last: u64::MAX,
                since: now,
            });
        }
    }

    /// Removes the series whose activity has not moved for `ttl`; returns how many.
    pub fn sweep_idle(&self, ttl: Duration, now: Instant) -> u64 {
        let Ok(mut idle) = self.idle.lock() else {
            return 0;
        };
        let mut removed = 0;
        idle.retain_mut(|series| {
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
            false
        });
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

    #[test]
    fn removes_only_after_the_grace_period_and_only_gone_pods() {
        let series = PodSeries::default();
        let removed = Arc::new(AtomicUsize::new(0));
        for pod in ["a", "a", "b"] {
            let removed = removed.clone();
            series.register(
                ("ns".into(), pod.into()),
                Box::new(move || {
                    removed.fetch_add(1, Ordering::Relaxed);
                }),
            );
        }
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let only_b = |_: &str, pod: &str| pod == "b";
        assert_eq!(series.sweep(only_b, grace, t0), 0);
        assert_eq!(series.sweep(only_b, grace, t0 + Duration::from_secs(59)), 0);
        assert_eq!(series.epoch(), 0);
        assert_eq!(series.sweep(only_b, grace, t0 + Duration::from_secs(60)), 2);
        assert_eq!(removed.load(Ordering::Relaxed), 2);
        assert_eq!(series.epoch(), 1);
        // A pod that comes back within the grace period keeps its series.
        let none = |_: &str, _: &str| false;
        assert_eq!(series.sweep(none, grace, t0 + Duration::from_secs(61)), 0);
        let all = |_: &str, _: &str| true;
        assert_eq!(series.sweep(all, grace, t0 + Duration::from_secs(100)), 0);
        assert_eq!(series.sweep(none, grace, t0 + Duration::from_secs(101)), 0);
        assert_eq!(series.sweep(none, grace, t0 + Duration::from_secs(200)), 1);
        assert_eq!(removed.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn series_are_removed_after_a_quiet_ttl_and_not_while_used() {
        use std::sync::Arc;
        let series = PodSeries::default();
        let count = Arc::new(AtomicU64::new(0));
        let removed = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let (c, r) = (count.clone(), removed.clone());
        series.register_idle(
            Box::new(move || c.load(Ordering::Relaxed)),
            Box::new(move || r.fetch_add(1, Ordering::Relaxed) == 0),
            t0,
        );
        let ttl = Duration::from_secs(60);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(series.sweep_idle(ttl, at(0)), 0);
        // Observed now and then: never removed.
        for minute in 1..5 {
            count.fetch_add(1, Ordering::Relaxed);
            assert_eq!(series.sweep_idle(ttl, at(minute * 59)), 0);
        }
        // Quiet: removed once the ttl has passed since the count last moved.
        assert_eq!(series.sweep_idle(ttl, at(4 * 59 + 59)), 0);
        assert_eq!(series.epoch(), 0);
        assert_eq!(series.sweep_idle(ttl, at(4 * 59 + 60)), 1);
        assert_eq!(removed.load(Ordering::Relaxed), 1);
        assert_eq!(series.epoch(), 1);
        assert_eq!(
            series.sweep_idle(ttl, at(1000)),
            0,
            "forgotten once removed"
        );
    }
}
