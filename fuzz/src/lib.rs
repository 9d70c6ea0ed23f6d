//! What every fuzz target shares: turning the fuzzer's bytes into a sequence of syscall-sized
//! chunks, and the [`Driver`] that replays them through a decoder and makes the checks every
//! decoder owes. Each record is one control byte (bit 0: request or response stream; bits 1-2:
//! how many little-endian bytes of gap length follow, 0/1/2/4), the gap length, one length
//! byte, then that many payload bytes (fewer if the input ends). Bit 4 makes the record a run
//! of messages the kernel counted instead of capturing ([`Decoder::skipped`]): its gap length
//! is the run's bytes, its first payload byte the kind, the next four (little-endian) the
//! count. A target may give other control bits a meaning of its own.
//!
//! A target is then a few lines: `Driver::new(data).check::<TheDecoder>(|x| …)`, the closure
//! asserting the protocol's own field bounds.

use std::fmt::Debug;

use periscope::protocol::{
    Chunk, DecodeError, Decoder, DecoderStats, Run, Stream, Timed, REGISTRY,
};

/// One chunk: the stream it belongs to, the bytes the capture limit cut off after it, and the
/// captured bytes.
pub struct Record<'a> {
    pub stream: Stream,
    pub gap: u64,
    pub bytes: &'a [u8],
    /// A run (control bit 4), not bytes.
    pub run: bool,
}

/// Splits the fuzzer input into records.
pub fn parse(mut data: &[u8]) -> Vec<Record<'_>> {
    let mut records = Vec::new();
    while let [ctrl, rest @ ..] = data {
        data = rest;
        let run = ctrl & 16 != 0;
        let stream = if ctrl & 1 == 0 {
            Stream::Request
        } else {
            Stream::Response
        };
        let gap_bytes = match (ctrl >> 1) & 3 {
            0 => 0,
            1 => 1,
            2 => 2,
            _ => 4,
        };
        let n = gap_bytes.min(data.len());
        let mut le = [0u8; 8];
        le[..n].copy_from_slice(&data[..n]);
        let gap = u64::from_le_bytes(le);
        data = &data[n..];
        let Some((&len, rest)) = data.split_first() else {
            records.push(Record {
                stream,
                gap,
                bytes: &[],
                run,
            });
            break;
        };
        let len = usize::from(len).min(rest.len());
        records.push(Record {
            stream,
            gap,
            bytes: &rest[..len],
            run,
        });
        data = &rest[len..];
    }
    records
}

/// What replaying records through a decoder gave.
pub struct Outcome<D: Decoder> {
    pub exchanges: Vec<D::Exchange>,
    /// The error decoding stopped at, if any.
    pub error: Option<DecodeError>,
    pub stats: DecoderStats,
}

/// Feeds `records` (stream, gap, bytes, run) to `dec` as one connection, chunk `i` at `10 i`
/// ns, until the first error or until the decoder stops (an upgrade, TLS), then closes it.
pub fn run<'a, D: Decoder>(
    mut dec: D,
    records: impl Iterator<Item = (Stream, u64, &'a [u8], bool)>,
) -> Outcome<D> {
    let mut exchanges = Vec::new();
    let mut error = None;
    let mut t = 0u64;
    for (stream, gap, bytes, is_run) in records {
        t += 10;
        let result = if is_run {
            let mut count = [0u8; 4];
            let le = bytes.get(1..).unwrap_or_default();
            let n = le.len().min(4);
            count[..n].copy_from_slice(&le[..n]);
            let run = Run {
                stream,
                first_ns: t,
                last_ns: t + 5,
                kind: bytes.first().copied().unwrap_or(0),
                count: u64::from(u32::from_le_bytes(count)),
                bytes: gap,
            };
            dec.skipped(&run, &mut exchanges)
        } else {
            let chunk = Chunk {
                stream,
                first_ns: t,
                last_ns: t + 5,
                bytes,
                len: bytes.len() as u64 + gap,
            };
            dec.feed(&chunk, &mut exchanges)
        };
        if let Err(e) = result {
            error = Some(e);
            break;
        }
        if dec.stopped().is_some() {
            break;
        }
    }
    dec.close(t + 10, &mut exchanges);
    Outcome {
        exchanges,
        error,
        stats: dec.take_stats(),
    }
}

/// The same exchanges with their timestamps cleared.
pub fn untimed<X: Timed + Clone>(xs: &[X]) -> Vec<X> {
    xs.iter()
        .map(|x| {
            let mut x = x.clone();
            let (start, end) = x.span_mut();
            (*start, *end) = (0, 0);
            x
        })
        .collect()
}

/// One fuzz input, parsed, and how to decode it.
pub struct Driver<'a> {
    pub records: Vec<Record<'a>>,
    mid_stream: bool,
    compare_one_byte: bool,
}

impl<'a> Driver<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Driver {
            records: parse(data),
            mid_stream: false,
            compare_one_byte: true,
        }
    }

    /// Decode as a connection joined mid-stream.
    pub fn mid_stream(mut self, mid_stream: bool) -> Self {
        self.mid_stream = mid_stream;
        self
    }

    /// Whether this input may be compared with its one-byte re-chunking (inputs with gaps
    /// or runs never are): a decoder that syncs on chunk starts depends on chunking by design.
    pub fn compare_one_byte_chunks(mut self, compare: bool) -> Self {
        self.compare_one_byte = compare;
        self
    }

    /// The checks every decoder owes: detection never panics on any chunk; decoding never
    /// panics; every exchange ends no earlier than it starts and passes `each` (the
    /// protocol's own bounds); and, for inputs without gaps, decoding the same streams in
    /// one-byte chunks gives the same exchanges (times aside), error and stats.
    pub fn check<D>(&self, each: impl Fn(&D::Exchange))
    where
        D: Decoder,
        D::Exchange: Clone + PartialEq + Debug,
    {
        for p in REGISTRY.iter().filter(|p| p.name == D::PROTOCOL) {
            for r in &self.records {
                let _ = (p.detect)(r.bytes, self.mid_stream);
                let _ = (p.could_start)(r.bytes);
            }
        }
        let records = self.records.iter().map(|r| (r.stream, r.gap, r.bytes, r.run));
        let outcome = run(D::start(self.mid_stream), records);
        for x in &outcome.exchanges {
            let (start, end) = x.span();
            assert!(end >= start, "{x:?}");
            each(x);
        }
        if self.compare_one_byte && self.records.iter().all(|r| r.gap == 0 && !r.run) {
            let bytes = self
                .records
                .iter()
                .flat_map(|r| r.bytes.chunks(1).map(move |b| (r.stream, 0u64, b, false)));
            let one = run(D::start(self.mid_stream), bytes);
            assert_eq!(
                untimed(&outcome.exchanges),
                untimed(&one.exchanges),
                "one-byte chunks differ"
            );
            assert_eq!(outcome.error, one.error, "one-byte chunks differ in error");
            assert_eq!(outcome.stats, one.stats, "one-byte chunks differ in stats");
        }
    }
}
