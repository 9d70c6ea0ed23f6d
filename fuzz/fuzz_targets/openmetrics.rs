//! Fuzzes the OpenMetrics reader of the OTLP metrics push (`export/otlp/metrics`) and the
//! conversion after it. The text is the agent's own exposition, but its label values come from
//! tenants' traffic (routes, topics, SQL tables), so any text is tried.
//!
//! Checks: no panic; every histogram read has one more bucket count than bounds (a malformed
//! one is left out); the OTLP request encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::export::otlp::metrics::convert::{convert, StartTimes};
use periscope::export::otlp::metrics::openmetrics::{parse, Value};
use periscope::export::otlp::metrics::proto::encode_request;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let families = parse(text);
    let mut starts = StartTimes::default();
    let batch = convert(&families, &Vec::new(), &[], &mut starts, 1, 2);
    for (_, metrics) in &batch.resources {
        for metric in metrics {
            for point in &metric.points {
                if let Value::Histogram { bounds, counts, .. } = &point.value {
                    assert_eq!(counts.len(), bounds.len() + 1, "{point:?}");
                }
            }
        }
    }
    let _ = encode_request(&batch, 3);
});
