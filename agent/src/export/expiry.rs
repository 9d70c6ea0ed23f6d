//! Series of deleted pods expire: each series that names a pod registers how to remove it, and
//! a periodic sweep removes the series of pods that have been gone for the grace period.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

/// (namespace, pod name).
pub type PodKey = (String, String);

type Remover = Box<dyn Fn() + Send + Sync>;

/// The removable series of every pod, and when each pod was first seen gone.
#[derive(Default)]
pub struct PodSeries {
    removers: Mutex<FxHashMap<PodKey, Vec<Remover>>>,
    gone_since: Mutex<FxHashMap<PodKey, Instant>>,
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
}
