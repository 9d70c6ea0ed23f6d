//! Sinks: the Prometheus registry and the HTTP endpoint that serves it, and OTLP spans.

pub mod expiry;
pub mod http;
pub mod labels;
pub mod otlp;
pub mod prometheus;

use crate::conn::{EndReason, MuteReason, Sink};
use crate::exchange::Exchange;
use crate::protocol::http1::DecoderStats;

/// The reader's sink: metrics always, spans when tracing is on. Each exchange goes to the
/// metrics first; the span sink's part is a clone into a bounded queue, sent on at `flush`.
pub struct Fanout {
    pub metrics: prometheus::MetricsSink,
    pub spans: Option<otlp::SpanSink>,
}

impl Fanout {
    /// Hands the exchanges of this drain to the span exporter (see [`otlp::SpanSink`]).
    pub fn flush(&mut self) {
        if let Some(spans) = &mut self.spans {
            spans.flush();
        }
    }
}

impl Sink for Fanout {
    fn exchange(&mut self, exchange: &Exchange) {
        let exemplar = self.metrics.record(exchange, self.spans.is_some());
        if let Some(spans) = &mut self.spans {
            spans.exchange(exchange, exemplar);
        }
    }
    fn opened(&mut self, how: &'static str) {
        self.metrics.opened(how);
    }
    fn ended(&mut self, reason: EndReason) {
        self.metrics.ended(reason);
    }
    fn muted(&mut self, reason: MuteReason) {
        self.metrics.muted(reason);
    }
    fn parse_error(&mut self, protocol: &'static str, reason: &'static str) {
        self.metrics.parse_error(protocol, reason);
    }
    fn decoder_stats(&mut self, protocol: &'static str, stats: DecoderStats) {
        self.metrics.decoder_stats(protocol, stats);
    }
    fn inexact(&mut self, protocol: &'static str, reason: &'static str) {
        self.metrics.inexact(protocol, reason);
    }
}
