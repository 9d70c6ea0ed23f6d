//! Fuzzes the SQL helpers (`normalize`, `split_statements`, `summarize`) with arbitrary text:
//! any pod can send any statement, and their output leaves the node as labels and span
//! attributes.
//!
//! Checks: no panic, no stack overflow (the fuzzer's threads have an ordinary stack), no
//! input slower than the per-input timeout (`cargo xtask test` runs this target with a large
//! `-max_len`, so a quadratic path times out); capped outputs stay capped; an operation is an
//! upper-case ASCII keyword; each statement is a piece of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::protocol::sql::{normalize, split_statements, summarize, MAX_QUERY_TEXT_BYTES};

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let text = normalize(&sql);
    assert!(text.len() <= MAX_QUERY_TEXT_BYTES, "{}", text.len());
    for statement in split_statements(&sql) {
        assert!(sql.contains(statement));
        let (operation, collection) = summarize(statement);
        assert!(operation.len() <= 32, "{operation:?}");
        assert!(operation.bytes().all(|c| c.is_ascii_uppercase()), "{operation:?}");
        assert!(collection.is_none_or(|c| c.len() <= 3 * 63 + 2));
    }
    let (operation, _) = summarize(&sql);
    assert!(operation.bytes().all(|c| c.is_ascii_uppercase()), "{operation:?}");
});
