//! The histogram every exchange family observes into: fixed buckets, a sum and a count, and
//! for each bucket the exemplar of one sampled request in it (the ids of its span), which
//! OpenMetrics carries after the bucket's line:
//!
//! ```text
//! http_server_request_duration_seconds_bucket{...,le="0.01"} 42 # {trace_id="4bf9…",span_id="00f0…"} 0.0071 1764900000.123
//! ```
//!
//! The crate's own `HistogramWithExemplars` sets an exemplar only while counting an
//! observation. Periscope counts a request as soon as it is decoded, but its span's trace id
//! is settled up to `otlp::parents::HOLD` later (a span joins the trace of a caller that ends
//! after it), and only a span that is sampled and sent may be named. So an exemplar is set
//! apart from counting ([`Histogram::set_exemplar`], by the span exporter, through an
//! [`ExemplarTarget`]), and the histogram encodes itself (`Exemplar::new` is Periscope's patch
//! of prometheus-client, see `vendor/prometheus-client/PERISCOPE.md`).
//!
//! The classic Prometheus text format has no exemplars: `export::http` strips them there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::export::otlp::context::hex;

/// How often a bucket offers a span as its exemplar at most (scrapes are 10–60 s apart).
pub const EXEMPLAR_EVERY_NS: u64 = 1_000_000_000;

/// A sampled span's ids: what an exemplar names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl EncodeLabelSet for SpanIds {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        [
            ("trace_id", hex(&self.trace_id)),
            ("span_id", hex(&self.span_id)),
        ]
        .encode(encoder)
    }
}

/// A bucket's exemplar: the span, its observed value, and when the span ended.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ids: SpanIds,
    value: f64,
    at: SystemTime,
}

/// A histogram with fixed bucket bounds (a `+Inf` bucket is added) and an exemplar per bucket.
/// Clones share the same counts.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    sum: f64,
    count: u64,
    /// Per bucket (the bounds', then `+Inf`), not cumulative.
    buckets: Box<[u64]>,
    /// Per bucket as `buckets`; empty until the first exemplar (most series never get one).
    exemplars: Vec<Option<Sample>>,
    /// Per bucket, when (the exchange's clock, ns) a span was last offered as its exemplar;
    /// empty until the first offer.
    offered: Vec<u64>,
}

impl Histogram {
    /// A histogram with these upper bounds (finite and increasing).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            state: Arc::new(Mutex::new(State {
                sum: 0.0,
                count: 0,
                buckets: vec![0; bounds.len() + 1].into_boxed_slice(),
                exemplars: Vec::new(),
                offered: Vec::new(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds valid counts.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bucket `v` falls in: the first whose bound is at least `v`, else `+Inf`.
    fn bucket(&self, v: f64) -> usize {
        self.bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len())
    }

    /// Counts one observation.
    pub fn observe(&self, v: f64) {
        let bucket = self.bucket(v);
        let mut s = self.state();
        s.sum += v;
        s.count += 1;
        s.buckets[bucket] += 1;
    }

    /// Counts one observation, and with `exemplar` says where its span's exemplar would go:
    /// at most once per [`EXEMPLAR_EVERY_NS`] per bucket (by `now_ns`, the exchange's own
    /// clock), so that under load a series does not hand the span exporter a target per span
    /// (measured: +12% agent CPU per traced request when every span had one).
    pub fn observe_with_exemplar(
        &self,
        v: f64,
        exemplar: bool,
        now_ns: u64,
    ) -> Option<ExemplarTarget> {
        if !exemplar {
            self.observe(v);
            return None;
        }
        let bucket = self.bucket(v);
        let mut s = self.state();
        s.sum += v;
        s.count += 1;
        s.buckets[bucket] += 1;
        if s.offered.is_empty() {
            s.offered = vec![0; self.bounds.len() + 1];
        }
        let last = s.offered[bucket];
        if last != 0 && now_ns.saturating_sub(last) < EXEMPLAR_EVERY_NS {
            return None;
        }
        s.offered[bucket] = now_ns.max(1);
        drop(s);
        Some(ExemplarTarget::new(self, v))
    }

    /// Names the span `ids` (ended at `at`) as the exemplar of the bucket `v` falls in,
    /// replacing the bucket's earlier one. `v` was counted already, by [`Histogram::observe`].
    pub fn set_exemplar(&self, v: f64, ids: SpanIds, at: SystemTime) {
        let bucket = self.bucket(v);
        let mut s = self.state();
        if s.exemplars.is_empty() {
            s.exemplars = vec![None; self.bounds.len() + 1];
        }
        s.exemplars[bucket] = Some(Sample { ids, value: v, at });
    }

    /// Observations counted so far (idle series expiry reads it).
    pub fn count(&self) -> u64 {
        self.state().count
    }

    /// Sum of the observations so far.
    #[cfg(test)]
    pub fn sum(&self) -> f64 {
        self.state().sum
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets, exemplars) = {
            let s = self.state();
            let buckets: Vec<(f64, u64)> = self
                .bounds
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(s.buckets.iter().copied())
                .collect();
            let exemplars: HashMap<usize, Exemplar<SpanIds, f64>> = s
                .exemplars
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.map(|e| (i, Exemplar::new(e.ids, e.value, Some(e.at)))))
                .collect();
            (s.sum, s.count, buckets, exemplars)
        };
        encoder.encode_histogram(sum, count, &buckets, Some(&exemplars))
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Where a counted exchange's exemplar would go: the duration histogram it was observed in and
/// the value. The metrics sink hands it with the exchange to the span exporter, which sets it
/// once the exchange's span is sampled and its trace settled.
#[derive(Clone, Debug)]
pub struct ExemplarTarget {
    pub histogram: Histogram,
    pub value: f64,
}

impl ExemplarTarget {
    pub fn new(histogram: &Histogram, value: f64) -> ExemplarTarget {
        ExemplarTarget {
            histogram: histogram.clone(),
            value,
        }
    }

    /// Sets the exemplar to the span `ids`, ended at `at`.
    pub fn set(&self, ids: SpanIds, at: SystemTime) {
        self.histogram.set_exemplar(self.value, ids, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::{Registry, Unit};

    const BOUNDS: [f64; 3] = [0.01, 0.1, 1.0];

    fn text(h: &Histogram) -> String {
        let mut registry = Registry::default();
        registry.register_with_unit("d", "A duration", Unit::Seconds, h.clone());
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    /// A bucket offers a span at most once a second (by the exchanges' clock); every
    /// observation is counted either way.
    #[test]
    fn a_bucket_offers_at_most_one_span_a_second() {
        let h = Histogram::new(&BOUNDS);
        let s = 1_000_000_000;
        let offered = |v: f64, at: u64| h.observe_with_exemplar(v, true, at).is_some();
        assert!(offered(0.05, 10 * s));
        assert!(!offered(0.05, 10 * s + 1));
        assert!(offered(0.5, 10 * s + 2), "another bucket");
        assert!(!offered(0.07, 11 * s - 1));
        assert!(offered(0.07, 11 * s));
        assert!(h.observe_with_exemplar(0.05, false, 20 * s).is_none());
        assert_eq!(h.count(), 6);
    }

    #[test]
    fn counts_by_bucket_and_names_a_span_per_bucket() {
        let h = Histogram::new(&BOUNDS);
        for v in [0.005, 0.01, 0.05, 0.5, 7.0] {
            h.observe(v);
        }
        assert_eq!(h.count(), 5);
        assert!((h.sum() - 7.565).abs() < 1e-9);
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_900_000_123);
        let ids = SpanIds {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
        };
        h.set_exemplar(0.05, ids, at);
        // A later span in the same bucket replaces it; the count does not move.
        let later = SpanIds {
            span_id: [0x02; 8],
            ..ids
        };
        h.set_exemplar(0.07, later, at);
        assert_eq!(h.count(), 5);
        let out = text(&h);
        assert!(out.contains("d_seconds_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(
            out.contains(
                "d_seconds_bucket{le=\"0.1\"} 3 # {trace_id=\"abababababababababababababababab\",span_id=\"0202020202020202\"} 0.07 1764900000.123\n"
            ),
            "{out}"
        );
        assert!(out.contains("d_seconds_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("d_seconds_count 5\n"), "{out}");
        assert_eq!(out.matches(" # {").count(), 1, "{out}");
    }
}
