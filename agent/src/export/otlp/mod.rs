//! Spans over OTLP: every `Exchange` also becomes one span.
//!
//! The capture thread's whole cost is [`SpanSink::exchange`]: a clone of the exchange into a
//! bounded queue, sent to the exporter once per drain of the ring buffer without waiting. When
//! the queue is full the newest exchange is dropped and counted (`periscope_spans_dropped_total{reason="queue_full"}`), so a collector
//! that is down or slow can never hold up capture or metrics. One tokio task
//! ([`exporter::run`]) drains the queue: it names the span, joins the trace of an incoming W3C
//! `traceparent`, samples, batches by process (one OTLP resource each) and sends the batch over
//! gRPC or HTTP/protobuf with retries and backoff, over TLS for `https://` endpoints
//! ([`tls`]).

pub mod context;
pub mod convert;
pub mod exporter;
pub mod metrics;
pub mod parents;
pub mod proto;
pub mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::exchange::Exchange;
use crate::export::labels::ReasonLabel;
use crate::export::prometheus::histogram::ExemplarTarget;
use crate::export::prometheus::register;

pub use exporter::{Batching, Protocol, Signal, TraceSettings};
pub use tls::TlsOptions;

/// The exporter's self-metrics.
#[derive(Default)]
pub struct SpanMetrics {
    /// Spans the collector accepted.
    pub exported: Counter,
    /// Spans lost, by reason: `queue_full`, `export_failed` (retries exhausted), `rejected`
    /// (the collector refused the batch, or accepted only part of it).
    pub dropped: Family<ReasonLabel, Counter>,
    /// Failed export attempts, retried ones included.
    pub export_errors: Counter,
}

impl SpanMetrics {
    /// Registers `periscope_spans_exported_total`, `periscope_spans_dropped_total{reason}` and
    /// `periscope_span_export_errors_total`.
    pub fn register(registry: &mut Registry) -> Arc<SpanMetrics> {
        let m = Arc::new(SpanMetrics::default());
        let own = registry.sub_registry_with_prefix("periscope");
        register!(own,
            "spans_exported": m.exported,
                "Spans accepted by the OTLP collector";
            "spans_dropped": m.dropped,
                "Spans lost before export, by reason";
            "span_export_errors": m.export_errors,
                "Failed OTLP export attempts (retries included)";
        );
        m
    }

    /// Counts `n` spans lost for `reason`.
    pub fn drop_spans(&self, reason: &str, n: u64) {
        self.dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }
}

/// An exchange on its way to the span exporter, with where its span's exemplar would go.
pub type Queued = (Exchange, Option<ExemplarTarget>);

/// Hands exchanges to the span exporter without ever waiting for it.
///
/// Exchanges are held until the reader's drain ends ([`SpanSink::flush`]) and then sent as one
/// message: sent one by one, each woke the exporter's task on the other runtime thread, ~10 µs
/// of CPU per span at a few thousand spans a second (`bench compare`, Flask with spans), against
/// ~2.5 µs under load, where the exporter never sleeps. The queue is bounded in exchanges:
/// held, sent and not yet taken by the exporter count together.
pub struct SpanSink {
    queue: mpsc::UnboundedSender<Vec<Queued>>,
    held: Vec<Queued>,
    /// Exchanges sent and not yet taken by the exporter.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    metrics: Arc<SpanMetrics>,
}

/// The exporter's end of a [`SpanSink`].
pub struct SpanQueue {
    rx: mpsc::UnboundedReceiver<Vec<Queued>>,
    queued: Arc<AtomicUsize>,
}

impl SpanQueue {
    /// The next batch of exchanges (None once the sink is gone and every batch was taken);
    /// they leave the queue's count.
    pub async fn recv(&mut self) -> Option<Vec<Queued>> {
        let batch = self.rx.recv().await?;
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        Some(batch)
    }

    /// The next batch if one is there, without waiting.
    pub fn try_recv(&mut self) -> Option<Vec<Queued>> {
        let batch = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        Some(batch)
    }
}

impl SpanSink {
    /// A sink and the receiving end its exporter drains; the queue holds `capacity` exchanges.
    pub fn new(capacity: usize, metrics: Arc<SpanMetrics>) -> (SpanSink, SpanQueue) {
        let (queue, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let sink = SpanSink {
            queue,
            held: Vec::new(),
            queued: queued.clone(),
            capacity: capacity.max(1),
            metrics,
        };
        (sink, SpanQueue { rx, queued })
    }

    /// Queues one exchange; a full queue drops it (the newest) and counts it.
    pub fn exchange(&mut self, exchange: &Exchange, exemplar: Option<ExemplarTarget>) {
        if self.queued.load(Ordering::Relaxed) + self.held.len() >= self.capacity {
            self.metrics.drop_spans("queue_full", 1);
            return;
        }
        self.held.push((exchange.clone(), exemplar));
    }

    /// Sends what was queued since the last flush to the exporter, in one message.
    pub fn flush(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.held);
        let n = batch.len();
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.queue.send(batch).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.metrics.drop_spans("exporter_stopped", n as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drain's exchanges reach the exporter as one message, and the bound counts what is held
    /// and what waits for the exporter together.
    #[test]
    fn exchanges_go_to_the_exporter_once_per_flush_within_the_bound() {
        let mut registry = Registry::default();
        let metrics = SpanMetrics::register(&mut registry);
        let (mut sink, mut queue) = SpanSink::new(3, metrics.clone());
        let all = crate::export::prometheus::tests::exchanges();
        sink.exchange(&all[0], None);
        sink.exchange(&all[1], None);
        assert!(
            queue.try_recv().is_none(),
            "nothing is sent before the drain ends"
        );
        sink.flush();
        sink.flush();
        sink.exchange(&all[2], None);
        // Two wait for the exporter and one is held: the fourth is over the bound.
        sink.exchange(&all[3], None);
        assert_eq!(
            metrics
                .dropped
                .get_or_create(&ReasonLabel {
                    reason: "queue_full".into()
                })
                .get(),
            1
        );
        assert_eq!(queue.try_recv().map(|b| b.len()), Some(2));
        assert!(queue.try_recv().is_none(), "an empty flush sends nothing");
        // Taken by the exporter: room again.
        sink.exchange(&all[3], None);
        sink.flush();
        assert_eq!(queue.try_recv().map(|b| b.len()), Some(2));
        drop(queue);
        sink.exchange(&all[0], None);
        sink.flush();
        let stopped = ReasonLabel {
            reason: "exporter_stopped".into(),
        };
        assert_eq!(metrics.dropped.get_or_create(&stopped).get(), 1);
    }
}
