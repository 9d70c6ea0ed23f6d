//! Fuzzes route templating with arbitrary paths: the template is a metric label, so it must
//! stay low-cardinality and carry nothing a path may hide (e-mail addresses, escapes, tokens).
//!
//! Checks: no panic; the template is `*` or starts with `/`; at most 8 segments, then
//! `/{...}`; each segment is `{id}` or a plain path word (≤ 32 bytes of `A-Za-z0-9-_.~:`, a
//! letter, ≤ 3 digits); no query string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::protocol::route::{template, MAX_SEGMENTS, MAX_WORD_BYTES, MAX_WORD_DIGITS};

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    let t = template(&path);
    if t == "*" {
        return;
    }
    assert!(t.starts_with('/'), "{t:?}");
    let segments: Vec<&str> = t[1..].split('/').filter(|s| !s.is_empty()).collect();
    let (last, kept) = match segments.split_last() {
        Some((&"{...}", kept)) => (true, kept),
        _ => (false, &segments[..]),
    };
    assert!(kept.len() <= MAX_SEGMENTS, "{t:?}");
    if last {
        assert_eq!(kept.len(), MAX_SEGMENTS, "{t:?}");
    }
    for segment in kept {
        if *segment == "{id}" {
            continue;
        }
        let b = segment.as_bytes();
        assert!(b.len() <= MAX_WORD_BYTES, "{t:?}");
        assert!(
            b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.~:".contains(c)),
            "{t:?}"
        );
        assert!(b.iter().any(u8::is_ascii_alphabetic), "{t:?}");
        assert!(b.iter().filter(|c| c.is_ascii_digit()).count() <= MAX_WORD_DIGITS, "{t:?}");
    }
});
