//! Fuzzes the W3C `traceparent` parser with arbitrary header values (any client can send one).
//!
//! Checks: no panic; an accepted header has non-zero ids, and writing it back in version-00
//! form parses to the same context.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::export::otlp::context::{hex, parse_traceparent};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let Some(tp) = parse_traceparent(header) else {
        return;
    };
    assert_ne!(tp.trace_id, [0; 16]);
    assert_ne!(tp.parent_id, [0; 8]);
    let again = format!(
        "00-{}-{}-{:02x}",
        hex(&tp.trace_id),
        hex(&tp.parent_id),
        u8::from(tp.sampled)
    );
    assert_eq!(parse_traceparent(&again), Some(tp), "{header:?} -> {again}");
});
