//! Fuzzes the HTTP/1.x decoder with arbitrary chunk sequences, gaps included.
//!
//! Input format, repeated until the input runs out:
//! - control byte: bit 0 = stream (0 request, 1 response); bits 1-2 = gap size class
//!   (0 none, 1 one byte follows, 2 two bytes follow, 3 four bytes follow, little-endian);
//! - length byte, then that many data bytes (fewer if the input ends).
//!
//! Checks: no panic; exchanges have end_ns >= start_ns (timestamps are monotonic); capped
//! fields stay capped; and, for inputs without gaps, decoding the same streams in one-byte
//! chunks gives the same exchanges, error and stats (chunk boundaries must not matter).
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::protocol::http1::{DecodeError, DecoderStats, Http1Decoder, HttpExchange};
use periscope::protocol::{Chunk, Stream};
use periscope_fuzz::parse;

type Outcome = (Vec<HttpExchange>, Option<DecodeError>, DecoderStats);

fn run<'a>(records: impl Iterator<Item = (Stream, u64, &'a [u8])>) -> Outcome {
    let mut dec = Http1Decoder::new();
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
        if dec.upgraded() {
            break;
        }
    }
    dec.close(t + 10, &mut out);
    (out, err, dec.take_stats())
}

fn strip_times(xs: &[HttpExchange]) -> Vec<HttpExchange> {
    xs.iter()
        .map(|x| HttpExchange {
            start_ns: 0,
            end_ns: 0,
            ..x.clone()
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let records = parse(data);
    let (out, err, stats) = run(records.iter().map(|r| (r.stream, r.gap, r.bytes)));
    for x in &out {
        assert!(x.end_ns >= x.start_ns, "{x:?}");
        assert!(x.method.len() <= 16, "{x:?}");
        assert!(x.path.len() <= 256, "{x:?}");
        assert!((100..=999).contains(&x.status), "{x:?}");
        assert!(!x.route.contains('?'), "{x:?}");
    }
    if records.iter().all(|r| r.gap == 0) {
        let bytes = records
            .iter()
            .flat_map(|r| r.bytes.chunks(1).map(move |b| (r.stream, 0u64, b)));
        let (out1, err1, stats1) = run(bytes);
        assert_eq!(
            strip_times(&out),
            strip_times(&out1),
            "one-byte chunks differ"
        );
        assert_eq!(err, err1, "one-byte chunks differ in error");
        assert_eq!(stats, stats1, "one-byte chunks differ in stats");
    }
});
