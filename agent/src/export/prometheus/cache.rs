//! Series handles by label values, one generic cache for every family: a busy series costs one
//! hash and a few compares per exchange instead of building and hashing a label set of fresh
//! strings.
//!
//! A family looks a series up with a borrowed key (the exchange's values as they are) and
//! stores an owned one; [`Lookup`] ties the two. Entries are grouped by the borrowed key's
//! hash, so the owned key is never hashed. The cache is bounded by [`SERIES_CACHE_MAX`]
//! entries: beyond it, it starts over (the families keep the data).

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use rustc_hash::{FxHashMap, FxHasher};

use crate::exchange::{Exchange, Role};

/// Beyond this many cached series the cache starts over.
pub const SERIES_CACHE_MAX: usize = 16384;

/// A borrowed key that finds an owned key `O`.
pub trait Lookup<O>: Hash {
    /// Whether `owned` holds the same values as `self`.
    fn matches(&self, owned: &O) -> bool;
    /// The owned key to store for `self`.
    fn to_owned_key(&self) -> O;
}

/// Handles `S` of series keyed by owned label values `O`.
pub struct SeriesCache<O, S> {
    entries: FxHashMap<u64, Vec<(O, S)>>,
    len: usize,
}

impl<O, S> Default for SeriesCache<O, S> {
    fn default() -> Self {
        SeriesCache {
            entries: FxHashMap::default(),
            len: 0,
        }
    }
}

impl<O, S> SeriesCache<O, S> {
    /// The series of `key`, made by `create` when the cache does not hold it (`None` from
    /// `create`, e.g. the series budget refused it, caches nothing).
    pub fn get_or_create(
        &mut self,
        key: &impl Lookup<O>,
        create: impl FnOnce() -> Option<S>,
    ) -> Option<&mut S> {
        let mut hasher = FxHasher::default();
        key.hash(&mut hasher);
        let hash = hasher.finish();
        let found = self
            .entries
            .get(&hash)
            .and_then(|bucket| bucket.iter().position(|(k, _)| key.matches(k)));
        if found.is_none() {
            let series = create()?;
            if self.len >= SERIES_CACHE_MAX {
                self.clear();
            }
            self.len += 1;
            let bucket = self.entries.entry(hash).or_default();
            bucket.push((key.to_owned_key(), series));
        }
        let bucket = self.entries.get_mut(&hash)?;
        let index = found.unwrap_or(bucket.len() - 1);
        bucket.get_mut(index).map(|(_, series)| series)
    }

    /// Forgets every series.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.len = 0;
    }

    /// How many series the cache holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The values every exchange family keys its series by: which end the process is, the server
/// port, the server's address (for a client), and the process.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Origin {
    pub role: Role,
    pub port: u16,
    pub peer: Option<IpAddr>,
    /// `ProcessInfo::seq`: unique per process value, so a new value makes new labels.
    pub process: u64,
}

impl Origin {
    pub fn of(exchange: &Exchange) -> Origin {
        Origin {
            role: exchange.role,
            port: exchange.endpoint.server_port.unwrap_or(0),
            peer: exchange.server_ip(),
            process: exchange.endpoint.process.seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Hash)]
    struct Name<'a>(&'a str);

    impl Lookup<String> for Name<'_> {
        fn matches(&self, owned: &String) -> bool {
            self.0 == owned
        }
        fn to_owned_key(&self) -> String {
            self.0.to_owned()
        }
    }

    #[test]
    fn creates_once_refuses_without_caching_and_starts_over_at_the_cap() {
        let mut cache = SeriesCache::<String, u32>::default();
        let mut made = 0;
        for _ in 0..3 {
            let series = cache.get_or_create(&Name("a"), || {
                made += 1;
                Some(made)
            });
            assert_eq!(series.copied(), Some(1));
        }
        assert_eq!(made, 1);
        assert!(cache.get_or_create(&Name("b"), || None).is_none());
        assert_eq!(cache.len(), 1);
        *cache.get_or_create(&Name("b"), || Some(7)).expect("made") += 1;
        assert_eq!(cache.get_or_create(&Name("b"), || None).copied(), Some(8));
        for i in 2..SERIES_CACHE_MAX {
            cache.get_or_create(&Name(&i.to_string()), || Some(0));
        }
        assert_eq!(cache.len(), SERIES_CACHE_MAX);
        cache.get_or_create(&Name("one more"), || Some(0));
        assert_eq!(cache.len(), 1, "started over");
        assert!(cache.get_or_create(&Name("a"), || None).is_none());
        cache.clear();
        assert!(cache.is_empty());
    }
}
