//! Fuzzes the PostgreSQL decoder with arbitrary chunk sequences, gaps included (input format:
//! `periscope_fuzz`, plus bit 3 of the first control byte: decode as a connection joined
//! mid-stream).
//!
//! Checks: those of `Driver::check` (no panic, ordered timestamps, one-byte re-chunking gives
//! the same exchanges, error and stats), and capped fields stay capped. The re-chunking
//! comparison is made only for inputs that open with a start-up packet and are not joined
//! mid-stream: joining syncs at a chunk that begins with a plausible message, so it depends on
//! chunking by design.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::protocol::postgres::{detect, PgDecoder};
use periscope::protocol::Stream;
use periscope_fuzz::Driver;

fuzz_target!(|data: &[u8]| {
    let mid_stream = data.first().is_some_and(|c| c & 8 != 0);
    let driver = Driver::new(data).mid_stream(mid_stream);
    let opens_with_startup = driver
        .records
        .first()
        .is_some_and(|r| r.stream == Stream::Request && detect(r.bytes, false).is_some());
    driver
        .compare_one_byte_chunks(!mid_stream && opens_with_startup)
        .check::<PgDecoder>(|x| {
            assert!(x.query_text.len() <= 1024, "{x:?}");
            assert!(x.operation.len() <= 32, "{x:?}");
            assert!(!x.operation.is_empty(), "{x:?}");
            assert!(
                x.collection.as_ref().is_none_or(|c| c.len() <= 3 * 63 + 2),
                "{x:?}"
            );
            assert!(
                x.error_sqlstate.as_ref().is_none_or(|s| s.len() <= 5),
                "{x:?}"
            );
            assert!(x.query_summary.starts_with(&x.operation), "{x:?}");
        });
});
