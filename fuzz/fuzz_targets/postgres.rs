//! Fuzzes the PostgreSQL decoder with arbitrary chunk sequences, gaps included.
//!
//! Input format, repeated until the input runs out (the same as the http1 target):
//! - control byte: bit 0 = stream (0 request, 1 response); bits 1-2 = gap size class
//!   (0 none, 1 one byte follows, 2 two bytes follow, 3 four bytes follow, little-endian);
//!   bit 3 = decode with `PgDecoder::new_mid_stream` (read from the first control byte only);
//! - length byte, then that many data bytes (fewer if the input ends).
//!
//! Checks: no panic; exchanges have end_ns >= start_ns (timestamps are monotonic); capped
//! fields stay capped; and, for inputs without gaps that open with a start-up packet, decoding
//! the same streams in one-byte chunks gives the same exchanges, error and stats (chunk
//! boundaries must not matter). Joining mid-stream is excluded from that check: it syncs at a
//! chunk that begins with a plausible message, so it depends on chunking by design.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::protocol::postgres::{detect, DecodeError, DecoderStats, PgDecoder, PgExchange};
use periscope::protocol::{Chunk, Stream};
use periscope_fuzz::parse;

type Outcome = (Vec<PgExchange>, Option<DecodeError>, DecoderStats);

fn run<'a>(mid_stream: bool, records: impl Iterator<Item = (Stream, u64, &'a [u8])>) -> Outcome {
    let mut dec = if mid_stream {
        PgDecoder::new_mid_stream()
    } else {
        PgDecoder::new()
    };
    let mut out = Vec::new();
    let mut err = None;
    let mut t = 0u64;
    for (stream, gap, bytes) in records {
        t += 10;
        let chunk = Chunk {
            stream,
            first_ns: t,
            last_ns: t + 5,
            bytes,
            len: bytes.len() as u64 + gap,
        };
        if let Err(e) = dec.feed(&chunk, &mut out) {
            err = Some(e);
            break;
        }
        if dec.is_tls() {
            break;
        }
    }
    dec.close(t + 10, &mut out);
    (out, err, dec.take_stats())
}

fn strip_times(xs: &[PgExchange]) -> Vec<PgExchange> {
    xs.iter()
        .map(|x| PgExchange {
            start_ns: 0,
            end_ns: 0,
            ..x.clone()
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mid_stream = data.first().is_some_and(|c| c & 8 != 0);
    let records = parse(data);
    let (out, err, stats) = run(
        mid_stream,
        records.iter().map(|r| (r.stream, r.gap, r.bytes)),
    );
    for x in &out {
        assert!(x.end_ns >= x.start_ns, "{x:?}");
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
    }
    let opens_with_startup = records
        .first()
        .is_some_and(|r| r.stream == Stream::Request && detect(r.bytes, false).is_some());
    if !mid_stream && opens_with_startup && records.iter().all(|r| r.gap == 0) {
        let bytes = records
            .iter()
            .flat_map(|r| r.bytes.chunks(1).map(move |b| (r.stream, 0u64, b)));
        let (out1, err1, stats1) = run(false, bytes);
        assert_eq!(
            strip_times(&out),
            strip_times(&out1),
            "one-byte chunks differ"
        );
        assert_eq!(err, err1, "one-byte chunks differ in error");
        assert_eq!(stats, stats1, "one-byte chunks differ in stats");
    }
});
