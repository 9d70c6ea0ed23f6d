//! `ExportMetricsServiceRequest`, encoded by hand like the trace request (`otlp::proto`).
//! Field numbers are those of `opentelemetry/proto/metrics/v1/metrics.proto`; the end-to-end
//! tests decode the output with the official Python bindings.

use super::convert::{Batch, Metric};
use super::openmetrics::{Kind, Value};
use crate::export::otlp::proto::{
    fixed64, key_value, message, string, tag, varint, varint_field, SCOPE_NAME,
};

/// `AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: u64 = 2;

/// Encodes the request for `batch`, every point stamped `now_ns`.
pub fn encode_request(batch: &Batch, now_ns: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    for (resource, metrics) in &batch.resources {
        message(&mut out, 1, |rm| {
            message(rm, 1, |r| {
                for (key, value) in resource {
                    key_value(r, 1, key, value);
                }
            });
            message(rm, 2, |sm| {
                message(sm, 1, |scope| {
                    string(scope, 1, SCOPE_NAME);
                    string(scope, 2, env!("CARGO_PKG_VERSION"));
                });
                for metric in metrics {
                    message(sm, 2, |m| encode_metric(m, metric, now_ns));
                }
            });
        });
    }
    out
}

fn encode_metric(out: &mut Vec<u8>, metric: &Metric, now_ns: u64) {
    string(out, 1, &metric.name);
    if !metric.description.is_empty() {
        string(out, 2, &metric.description);
    }
    if !metric.unit.is_empty() {
        string(out, 3, metric.unit);
    }
    // gauge = 5, sum = 7, histogram = 9.
    let field = match metric.kind {
        Kind::Gauge => 5,
        Kind::Counter => 7,
        Kind::Histogram | Kind::Other => 9,
    };
    message(out, field, |data| {
        for point in &metric.points {
            message(data, 1, |p| match &point.value {
                Value::Number(v) => {
                    fixed64(p, 2, point.start_ns);
                    fixed64(p, 3, now_ns);
                    fixed64(p, 4, v.to_bits());
                    for (key, value) in &point.attributes {
                        key_value(p, 7, key, value);
                    }
                }
                Value::Histogram {
                    bounds,
                    counts,
                    sum,
                    count,
                } => {
                    fixed64(p, 2, point.start_ns);
                    fixed64(p, 3, now_ns);
                    fixed64(p, 4, *count);
                    fixed64(p, 5, sum.to_bits());
                    packed_fixed64(p, 6, counts.iter().copied());
                    packed_fixed64(p, 7, bounds.iter().map(|b| b.to_bits()));
                    for (key, value) in &point.attributes {
                        key_value(p, 9, key, value);
                    }
                }
            });
        }
        if metric.kind != Kind::Gauge {
            varint_field(data, 2, CUMULATIVE);
        }
        if metric.kind == Kind::Counter {
            varint_field(data, 3, 1);
        }
    });
}

/// A packed `repeated fixed64`/`double` field.
fn packed_fixed64(out: &mut Vec<u8>, field: u32, values: impl ExactSizeIterator<Item = u64>) {
    if values.len() == 0 {
        return;
    }
    tag(out, field, 2);
    varint(out, 8 * values.len() as u64);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}
