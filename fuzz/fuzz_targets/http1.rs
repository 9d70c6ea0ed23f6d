//! Fuzzes the HTTP/1.x decoder with arbitrary chunk sequences, gaps included (input format:
//! `periscope_fuzz`).
//!
//! Checks: those of `Driver::check` (no panic, ordered timestamps, one-byte re-chunking gives
//! the same exchanges, error and stats), and capped fields stay capped. The HTTP/2 decoder an
//! `Upgrade: h2c` hands over to is fuzzed through here too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::protocol::http1::{Http1Decoder, HttpVersion};
use periscope_fuzz::Driver;

fuzz_target!(|data: &[u8]| {
    Driver::new(data).check::<Http1Decoder>(|x| {
        assert!(x.method.len() <= 16, "{x:?}");
        assert!(x.path.len() <= 256, "{x:?}");
        // After an `Upgrade: h2c` the exchanges are HTTP/2 ones, whose status is 0 when the
        // response had no `:status` the decoder could read (never a guess).
        if x.version != HttpVersion::Http2 {
            assert!((100..=999).contains(&x.status), "{x:?}");
        }
        assert!(!x.route.contains('?'), "{x:?}");
    });
});
