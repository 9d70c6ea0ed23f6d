//! Fuzzes the HTTP/2 decoder (frames, HPACK, streams) with arbitrary chunk sequences, gaps
//! included (input format: `periscope_fuzz`).
//!
//! Checks: those of `Driver::check` (no panic, ordered timestamps, one-byte re-chunking gives
//! the same exchanges, error and stats), and capped fields stay capped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::protocol::http2::Http2Decoder;
use periscope_fuzz::Driver;

fuzz_target!(|data: &[u8]| {
    Driver::new(data).check::<Http2Decoder>(|x| {
        assert!(x.method.len() <= 16, "{x:?}");
        assert!(x.path.len() <= 256, "{x:?}");
        assert!(!x.route.contains('?'), "{x:?}");
        if let Some(g) = &x.grpc {
            assert!(g.service.len() + g.method.len() < 256, "{x:?}");
        }
    });
});
