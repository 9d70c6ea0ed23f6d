//! Typed internal events: every notable thing the agent notices about itself is a struct here,
//! and its `emit` writes the log line and moves the self-metric together, so the two never
//! drift apart (the shape of vector's `src/internal_events/*.rs`).
//!
//! Model: the component that notices something builds the event with the facts it knows and
//! calls `emit(&metrics)` with the metric families it owns (`SpanMetrics` for the OTLP
//! exporter, `Metrics` for capture and the Kubernetes watch). The event decides the level and
//! wording of the line and which series moves; callers never pair a `log::warn!` with an
//! `.inc()` by hand.
//!
//! Rate limits: an event that could fire once per packet or per exchange must not log each
//! time. Today's rules, kept as they were before the events existed: the Kubernetes watch
//! reports each state *change* once (not each retry); a TLS handshake failure to the OTLP
//! collector is logged at warn once per distinct error, then at debug until an export
//! succeeds (the exporter keeps that state, the event takes it as `first`). Kernel-side losses
//! (`KernelEventsLost`) are folded once a second; their line goes through [`RateLimit`]: at
//! most one per reason per minute, naming what was lost since the last line. Per-event
//! counters with no log line (malformed records, truncated captures) stay plain counters in
//! the pipeline.
//!
//! Tests: each event renders its registry and checks the series it moved.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod kernel;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod otlp;
pub mod tls;

/// Lets a log line through at most once per `every`, and counts what it held back.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    state: Mutex<Option<(Instant, u64)>>,
}

impl RateLimit {
    pub const fn new(every: Duration) -> RateLimit {
        RateLimit {
            every,
            state: Mutex::new(None),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the occurrences (`count` each) held
    /// back since the last line; `None` while the limit holds (the occurrence is remembered).
    pub fn check(&self, now: Instant, count: u64) -> Option<u64> {
        // A poisoned lock only means a panic while logging: the value is still usable.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &mut *state {
            Some((last, held)) if now.duration_since(*last) < self.every => {
                *held += count;
                None
            }
            Some((last, held)) => {
                let since = std::mem::take(held);
                *last = now;
                Some(since)
            }
            None => {
                *state = Some((now, 0));
                Some(0)
            }
        }
    }
}

/// What every event's test needs: a registry holding the agent's metrics, and a check of the
/// lines it renders.
#[cfg(test)]
pub(crate) mod testkit {
    use prometheus_client::registry::Registry;

    use crate::export::prometheus::Metrics;

    /// A fresh registry with the agent's metric families in it.
    pub(crate) fn registered() -> (Registry, Metrics) {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        (registry, metrics)
    }

    /// The registry's text exposition.
    pub(crate) fn render(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encoding metrics");
        text
    }

    /// Asserts that `registry` renders each of `lines` as a whole line; returns the text for
    /// further checks.
    pub(crate) fn assert_renders(registry: &Registry, lines: &[&str]) -> String {
        let text = render(registry);
        for line in lines {
            assert!(text.lines().any(|l| l == *line), "{line} not in {text}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::RateLimit;

    #[test]
    fn a_rate_limit_lets_one_line_through_per_period_and_counts_the_rest() {
        let limit = RateLimit::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(limit.check(t0, 3), Some(0));
        assert_eq!(limit.check(t0 + Duration::from_secs(1), 2), None);
        assert_eq!(limit.check(t0 + Duration::from_secs(59), 4), None);
        assert_eq!(limit.check(t0 + Duration::from_secs(60), 1), Some(6));
        assert_eq!(limit.check(t0 + Duration::from_secs(61), 1), None);
    }
}
