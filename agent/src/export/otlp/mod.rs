//! Spans over OTLP: every `Exchange` also becomes one span.
//!
//! The capture thread's whole cost is [`SpanSink::exchange`]: a clone of the exchange and a
//! non-blocking send into a bounded queue. When the queue is full the newest exchange is
//! dropped and counted (`periscope_spans_dropped_total{reason="queue_full"}`), so a collector
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
pub struct SpanSink {
    queue: mpsc::Sender<Queued>,
    metrics: Arc<SpanMetrics>,
}

impl SpanSink {
    /// A sink and the receiving end its exporter drains; the queue holds `capacity` exchanges.
    pub fn new(capacity: usize, metrics: Arc<SpanMetrics>) -> (SpanSink, mpsc::Receiver<Queued>) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        (SpanSink { queue, metrics }, rx)
    }

    /// Queues one exchange; a full queue drops it (the newest) and counts it.
    pub fn exchange(&self, exchange: &Exchange, exemplar: Option<ExemplarTarget>) {
        if let Err(e) = self.queue.try_send((exchange.clone(), exemplar)) {
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => "queue_full",
                mpsc::error::TrySendError::Closed(_) => "exporter_stopped",
            };
            self.metrics.drop_spans(reason, 1);
        }
    }
}

impl crate::conn::Sink for SpanSink {
    fn exchange(&mut self, exchange: &Exchange) {
        SpanSink::exchange(self, exchange, None);
    }
    // Connection bookkeeping is the metrics sink's business; spans only need exchanges.
    fn opened(&mut self, _how: &'static str) {}
    fn ended(&mut self, _reason: crate::conn::EndReason) {}
    fn muted(&mut self, _reason: crate::conn::MuteReason) {}
    fn parse_error(&mut self, _protocol: &'static str, _reason: &'static str) {}
    fn decoder_stats(
        &mut self,
        _protocol: &'static str,
        _stats: crate::protocol::http1::DecoderStats,
    ) {
    }
}
