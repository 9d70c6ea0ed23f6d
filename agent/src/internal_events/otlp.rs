//! The OTLP span exporter's events (`export/otlp/exporter.rs`), against [`SpanMetrics`].

use crate::export::otlp::SpanMetrics;

/// The collector accepted a batch, perhaps only part of it.
pub struct SpansExported<'a> {
    pub url: &'a http::Uri,
    /// Spans in the batch.
    pub count: u64,
    /// Spans the collector said it rejected (`partial_success`).
    pub rejected: u64,
    /// The previous attempts failed in the TLS handshake: say it works again.
    pub tls_recovered: bool,
}

impl SpansExported<'_> {
    pub fn emit(self, metrics: &SpanMetrics) {
        let SpansExported {
            url,
            count,
            rejected,
            tls_recovered,
        } = self;
        if tls_recovered {
            log::info!("TLS to the OTLP collector at {url} works again");
        }
        metrics.exported.inc_by(count.saturating_sub(rejected));
        if rejected > 0 {
            log::warn!("the OTLP collector rejected {rejected} of {count} spans");
            metrics.drop_spans("rejected", rejected);
        }
    }
}

/// One export attempt failed; the batch is retried if attempts remain.
pub struct SpanExportFailed<'a> {
    pub url: &'a http::Uri,
    pub count: u64,
    pub attempt: u32,
    pub attempts: u32,
    pub cause: ExportFailure<'a>,
}

/// Why an export attempt failed.
pub enum ExportFailure<'a> {
    /// The TLS handshake failed; `first` when this error differs from the last one logged
    /// (the certificate does not change between batches: warn once, then debug).
    Tls {
        error: &'a str,
        message: &'a str,
        first: bool,
    },
    /// A failure worth retrying (connection refused, 5xx, `UNAVAILABLE`).
    Retryable { message: &'a str },
    /// No answer within the attempt's time limit.
    TimedOut { limit: std::time::Duration },
}

impl SpanExportFailed<'_> {
    pub fn emit(self, metrics: &SpanMetrics) {
        let SpanExportFailed {
            url,
            count,
            attempt,
            attempts,
            cause,
        } = self;
        metrics.export_errors.inc();
        match cause {
            ExportFailure::Tls {
                error, first: true, ..
            } => log::warn!(
                "OTLP export: the TLS handshake with {url} failed: {error}; spans are dropped \
                 until it succeeds (further TLS failures are logged at debug level)"
            ),
            ExportFailure::Tls { message, .. } => log::debug!(
                "OTLP export of {count} spans failed (attempt {attempt}/{attempts}): {message}"
            ),
            ExportFailure::Retryable { message } => log::warn!(
                "OTLP export of {count} spans failed (attempt {attempt}/{attempts}): {message}"
            ),
            ExportFailure::TimedOut { limit } => log::warn!(
                "OTLP export of {count} spans timed out after {limit:?} (attempt \
                 {attempt}/{attempts})"
            ),
        }
    }
}

/// The collector refused a batch for good (a 4xx other than 429, a non-retryable gRPC status):
/// the spans are dropped without retrying.
pub struct SpanExportRefused<'a> {
    pub count: u64,
    pub message: &'a str,
}

impl SpanExportRefused<'_> {
    pub fn emit(self, metrics: &SpanMetrics) {
        metrics.export_errors.inc();
        log::warn!(
            "OTLP export of {} spans refused: {}",
            self.count,
            self.message
        );
        metrics.drop_spans("rejected", self.count);
    }
}

/// Every attempt of a batch failed: its spans are dropped.
pub struct SpanExportRetriesExhausted {
    pub count: u64,
    pub attempts: u32,
    /// The last failure was a TLS handshake already reported (see [`ExportFailure::Tls`]):
    /// logged at debug like the attempts were.
    pub quiet: bool,
}

impl SpanExportRetriesExhausted {
    pub fn emit(self, metrics: &SpanMetrics) {
        let SpanExportRetriesExhausted {
            count,
            attempts,
            quiet,
        } = self;
        if quiet {
            log::debug!("OTLP export: {count} spans dropped after {attempts} failed attempts");
        } else {
            log::warn!("OTLP export: {count} spans dropped after {attempts} failed attempts");
        }
        metrics.drop_spans("export_failed", count);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prometheus_client::registry::Registry;

    use super::{
        ExportFailure, SpanExportFailed, SpanExportRefused, SpanExportRetriesExhausted,
        SpansExported,
    };
    use crate::export::otlp::SpanMetrics;
    use crate::internal_events::testkit::assert_renders;

    fn metrics() -> (Registry, Arc<SpanMetrics>) {
        let mut registry = Registry::default();
        let metrics = SpanMetrics::register(&mut registry);
        (registry, metrics)
    }

    #[test]
    fn an_export_counts_what_the_collector_accepted_and_rejected() {
        let (registry, metrics) = metrics();
        let url: http::Uri = "http://collector:4318/v1/traces".parse().unwrap();
        SpansExported {
            url: &url,
            count: 10,
            rejected: 3,
            tls_recovered: true,
        }
        .emit(&metrics);
        assert_renders(
            &registry,
            &[
                "periscope_spans_exported_total 7",
                r#"periscope_spans_dropped_total{reason="rejected"} 3"#,
            ],
        );
    }

    #[test]
    fn each_failed_attempt_is_an_export_error() {
        let (registry, metrics) = metrics();
        let url: http::Uri = "https://collector:4317".parse().unwrap();
        let failed = |cause| SpanExportFailed {
            url: &url,
            count: 4,
            attempt: 1,
            attempts: 5,
            cause,
        };
        failed(ExportFailure::Tls {
            error: "unknown issuer",
            message: "handshake",
            first: true,
        })
        .emit(&metrics);
        failed(ExportFailure::Tls {
            error: "unknown issuer",
            message: "handshake",
            first: false,
        })
        .emit(&metrics);
        failed(ExportFailure::Retryable { message: "503" }).emit(&metrics);
        failed(ExportFailure::TimedOut {
            limit: std::time::Duration::from_secs(10),
        })
        .emit(&metrics);
        let text = assert_renders(&registry, &["periscope_span_export_errors_total 4"]);
        assert!(!text.contains("periscope_spans_dropped_total{"), "{text}");
    }

    #[test]
    fn a_refused_batch_is_an_error_and_dropped_as_rejected() {
        let (registry, metrics) = metrics();
        SpanExportRefused {
            count: 6,
            message: "400 Bad Request",
        }
        .emit(&metrics);
        assert_renders(
            &registry,
            &[
                "periscope_span_export_errors_total 1",
                r#"periscope_spans_dropped_total{reason="rejected"} 6"#,
            ],
        );
    }

    #[test]
    fn exhausted_retries_drop_the_batch_as_export_failed() {
        let (registry, metrics) = metrics();
        for quiet in [false, true] {
            SpanExportRetriesExhausted {
                count: 5,
                attempts: 5,
                quiet,
            }
            .emit(&metrics);
        }
        assert_renders(
            &registry,
            &[r#"periscope_spans_dropped_total{reason="export_failed"} 10"#],
        );
    }
}
