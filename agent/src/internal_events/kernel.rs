//! Events of the kernel side, folded by the pipeline from the kernel's per-CPU counters once a
//! second (`agent_ebpf::COUNTER_NAMES`), against [`Metrics`].

use std::time::{Duration, Instant};

use agent_ebpf::COUNTERS_LEN;

use super::RateLimit;
use crate::export::labels::{MetricLabel, ReasonLabel};
use crate::export::prometheus::Metrics;

/// How often at most one reason's loss is logged: the counter moves every second under
/// overload, the log line does not.
pub const LOSS_LOG_EVERY: Duration = Duration::from_secs(60);

/// One rate limit per kernel counter, for [`KernelEventsLost`].
pub struct LossLogLimits([RateLimit; COUNTERS_LEN as usize]);

impl Default for LossLogLimits {
    fn default() -> Self {
        LossLogLimits(std::array::from_fn(|_| RateLimit::new(LOSS_LOG_EVERY)))
    }
}

/// The kernel could not deliver `lost` events (or could not track, or time, what it saw) for
/// `reason` (a `COUNTER_NAMES` entry) since the last fold. Emitted at every fold, with 0 too:
/// the reason's series exists from the start.
pub struct KernelEventsLost<'a> {
    /// Index of the counter in `COUNTER_NAMES`.
    pub index: usize,
    pub reason: &'a str,
    pub lost: u64,
}

impl KernelEventsLost<'_> {
    pub fn emit(self, metrics: &Metrics, limits: &LossLogLimits, now: Instant) {
        let KernelEventsLost {
            index,
            reason,
            lost,
        } = self;
        let counter = metrics
            .self_metrics
            .kernel_events_lost
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            });
        counter.inc_by(lost);
        let Some(limit) = limits.0.get(index).filter(|_| lost > 0) else {
            return;
        };
        if let Some(held) = limit.check(now, lost) {
            log::warn!(
                "the kernel side lost {} events ({reason}); {} in all \
                 (periscope_kernel_events_lost_total; at most one line per {}s per reason)",
                lost + held,
                counter.get(),
                LOSS_LOG_EVERY.as_secs()
            );
        }
    }
}

/// Syscalls of (cgroup, syscall) pairs beyond `--syscalls-max-series`: the series cap at work,
/// counted like the other metrics' drops (`series_dropped{metric}`), without a log line.
pub struct SyscallSeriesDropped {
    pub dropped: u64,
}

impl SyscallSeriesDropped {
    pub fn emit(self, metrics: &Metrics) {
        metrics
            .self_metrics
            .series_dropped
            .get_or_create(&MetricLabel {
                metric: crate::syscalls::DURATION_METRIC.to_owned(),
            })
            .inc_by(self.dropped);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{KernelEventsLost, LossLogLimits, SyscallSeriesDropped};
    use crate::internal_events::testkit::{assert_renders, registered};

    #[test]
    fn kernel_losses_count_by_reason_and_syscall_drops_by_metric() {
        let (registry, metrics) = registered();
        let limits = LossLogLimits::default();
        let now = Instant::now();
        for lost in [3, 4] {
            KernelEventsLost {
                index: 0,
                reason: "ringbuf_full",
                lost,
            }
            .emit(&metrics, &limits, now);
        }
        SyscallSeriesDropped { dropped: 2 }.emit(&metrics);
        let dropped = format!(
            "periscope_series_dropped_total{{metric=\"{}\"}} 2",
            crate::syscalls::DURATION_METRIC
        );
        assert_renders(
            &registry,
            &[
                "periscope_kernel_events_lost_total{reason=\"ringbuf_full\"} 7",
                &dropped,
            ],
        );
    }
}
