//! Fuzzes the Kafka decoder with arbitrary chunk sequences, gaps included (input format:
//! `periscope_fuzz`).
//!
//! Checks: those of `Driver::check` (no panic, `detect` never panics on any chunk, ordered
//! timestamps, one-byte re-chunking gives the same exchanges, error and stats), and capped
//! fields stay capped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::protocol::kafka::{KafkaDecoder, MAX_NAME_BYTES, MAX_TOPICS};
use periscope_fuzz::Driver;

fuzz_target!(|data: &[u8]| {
    Driver::new(data).check::<KafkaDecoder>(|x| {
        assert!(x.topics.len() <= MAX_TOPICS, "{x:?}");
        assert!(
            x.client_id.as_ref().map_or(0, String::len) <= MAX_NAME_BYTES,
            "{x:?}"
        );
        assert!(
            x.topics
                .iter()
                .all(|t| t.name.as_ref().map_or(0, String::len) <= MAX_NAME_BYTES),
            "{x:?}"
        );
    });
});
