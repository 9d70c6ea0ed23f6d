//! The tests every decoder gets, written once: a connection driver with synthetic timestamps
//! for hand-built conversations, and the golden tests over recorded traffic
//! (`agent/tests/fixtures/<protocol>/`): the golden output, the same traffic re-split at every
//! byte boundary, and the same traffic under capture limits. A protocol describes itself with
//! a [`Golden`] (how to print an exchange, which capture limits to try) and calls the three
//! runners from its `tests.rs`.

use super::fixture::{self, Fixture};
use super::framed_model::{Piece, Walker};
use super::{Chunk, DecodeError, Decoder, DecoderStats, Run, Stream, Timed, REGISTRY};

/// Drives a decoder with synthetic timestamps: chunk number `t` has `first_ns = 10 t` and
/// `last_ns = 10 t + 5`; `close` happens at the next `10 t`.
pub struct Conn<D: Decoder> {
    pub dec: D,
    pub out: Vec<D::Exchange>,
    pub t: u64,
}

impl<D: Decoder> Conn<D> {
    /// A fresh connection (seen from its first byte).
    pub fn new() -> Self {
        Self::with(D::start(false))
    }

    pub fn with(dec: D) -> Self {
        Conn {
            dec,
            out: Vec::new(),
            t: 0,
        }
    }

    /// Feeds `bytes` on `stream`, followed by a capture gap of `gap` bytes.
    pub fn feed(&mut self, stream: Stream, bytes: &[u8], gap: u64) -> Result<(), DecodeError> {
        self.t += 1;
        let chunk = Chunk {
            stream,
            first_ns: self.t * 10,
            last_ns: self.t * 10 + 5,
            bytes,
            len: bytes.len() as u64 + gap,
        };
        self.dec.feed(&chunk, &mut self.out)
    }

    pub fn req(&mut self, bytes: &[u8]) -> &mut Self {
        self.feed(Stream::Request, bytes, 0)
            .expect("request decodes");
        self
    }

    pub fn resp(&mut self, bytes: &[u8]) -> &mut Self {
        self.feed(Stream::Response, bytes, 0)
            .expect("response decodes");
        self
    }

    pub fn req_gap(&mut self, bytes: &[u8], gap: u64) -> &mut Self {
        self.feed(Stream::Request, bytes, gap)
            .expect("request decodes");
        self
    }

    pub fn resp_gap(&mut self, bytes: &[u8], gap: u64) -> &mut Self {
        self.feed(Stream::Response, bytes, gap)
            .expect("response decodes");
        self
    }

    pub fn close(&mut self) -> &mut Self {
        self.t += 1;
        self.dec.close(self.t * 10, &mut self.out);
        self
    }

    /// The exchanges completed so far.
    pub fn take(&mut self) -> Vec<D::Exchange> {
        std::mem::take(&mut self.out)
    }
}

/// A small deterministic xorshift generator for the "random bytes never panic" tests.
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Request or response, evenly.
    pub fn stream(&mut self) -> Stream {
        if self.u64().is_multiple_of(2) {
            Stream::Request
        } else {
            Stream::Response
        }
    }

    /// A capture gap of under 100 kB one time in `one_in`, else none.
    pub fn gap(&mut self, one_in: u64) -> u64 {
        if self.u64().is_multiple_of(one_in) {
            self.u64() % 100_000
        } else {
            0
        }
    }

    /// `bytes` as the chunk of step `t` (`first_ns = 10t`, `last_ns = 10t + 5`), on a random
    /// stream, with a capture gap one time in `one_in`.
    pub fn chunk<'a>(&mut self, t: u64, bytes: &'a [u8], one_in: u64) -> Chunk<'a> {
        let stream = self.stream();
        let gap = self.gap(one_in);
        Chunk {
            stream,
            first_ns: t * 10,
            last_ns: t * 10 + 5,
            bytes,
            len: bytes.len() as u64 + gap,
        }
    }
}

/// How one protocol's golden tests run.
pub struct Golden<D: Decoder> {
    /// The fixture directory, `agent/tests/fixtures/<fixtures>/`.
    pub fixtures: &'static str,
    /// Fewer fixtures than this means they were not recorded.
    pub at_least: usize,
    /// One exchange without its timestamps: what re-chunking must not change. Golden files
    /// add ` @start..end` in chunk indices.
    pub line: fn(&D::Exchange) -> String,
    /// What else the golden file records about the connection, read from the decoder after
    /// the last chunk and before `close` (a line before the stats), if anything.
    pub state: fn(&D) -> Option<String>,
    /// Further checks on every fixture's full decode (beyond the golden file).
    pub check: fn(&Fixture, &Decoded<D>),
    /// Split points tried per run of same-stream bytes: every one when the run is shorter,
    /// else evenly spaced (big fixtures cost seconds per split in debug builds).
    pub splits_per_run: usize,
    /// Capture limits tried, ascending; at the last one (above every header the decoder needs)
    /// the same exchanges come out, compared by `key`.
    pub limits: &'static [usize],
    /// From this limit on, every exchange is one of the full decode's (by `key`); chunks
    /// holding several messages may still lose the later ones to the gap.
    pub subset_from: Option<usize>,
    /// What must survive a capture limit: the pairing, not the details.
    pub key: fn(&D::Exchange) -> String,
}

/// What decoding one recorded connection gave.
pub struct Decoded<D: Decoder> {
    pub exchanges: Vec<D::Exchange>,
    pub stats: DecoderStats,
    /// [`Golden::state`] before close.
    pub state: Option<String>,
}

/// A fixture's chunks as slices.
pub fn slices(chunks: &[(Stream, Vec<u8>)]) -> Vec<(Stream, &[u8])> {
    chunks.iter().map(|(s, b)| (*s, b.as_slice())).collect()
}

/// Merges consecutive chunks of the same stream into runs.
fn runs(chunks: &[(Stream, Vec<u8>)]) -> Vec<(Stream, Vec<u8>)> {
    let mut runs: Vec<(Stream, Vec<u8>)> = Vec::new();
    for (s, b) in chunks {
        match runs.last_mut() {
            Some((last, run)) if last == s => run.extend_from_slice(b),
            _ => runs.push((*s, b.clone())),
        }
    }
    runs
}

impl<D: Decoder> Golden<D> {
    /// The fixtures, as many as recorded.
    pub fn load(&self) -> Vec<Fixture> {
        let fixtures = fixture::load(self.fixtures);
        assert!(
            fixtures.len() >= self.at_least,
            "fixtures missing: run record.py"
        );
        fixtures
    }

    /// Replays chunks through a fresh decoder as one connection: chunk `i` moved at `i` ns
    /// (first and last byte), and the connection closes after the last. Each chunk keeps only
    /// its first `limit` bytes; the rest becomes a gap. An error names the chunk.
    pub fn decode_limited(
        &self,
        chunks: &[(Stream, &[u8])],
        limit: usize,
    ) -> Result<Decoded<D>, (usize, DecodeError)> {
        let mut dec = D::start(false);
        let mut out = Vec::new();
        for (i, (stream, bytes)) in chunks.iter().enumerate() {
            let chunk = Chunk {
                stream: *stream,
                first_ns: i as u64,
                last_ns: i as u64,
                bytes: &bytes[..bytes.len().min(limit)],
                len: bytes.len() as u64,
            };
            dec.feed(&chunk, &mut out).map_err(|e| (i, e))?;
        }
        let state = (self.state)(&dec);
        dec.close(chunks.len() as u64, &mut out);
        Ok(Decoded {
            exchanges: out,
            stats: dec.take_stats(),
            state,
        })
    }

    /// [`Self::decode_limited`] without a limit; every recorded chunk must decode.
    pub fn decode(&self, chunks: &[(Stream, &[u8])]) -> Decoded<D> {
        self.decode_limited(chunks, usize::MAX)
            .unwrap_or_else(|(i, e)| panic!("fixture decodes: chunk {i}: {e}"))
    }

    /// The exchanges without times, and the stats: what re-chunking must not change.
    fn untimed(&self, d: &Decoded<D>) -> (Vec<String>, DecoderStats) {
        (d.exchanges.iter().map(self.line).collect(), d.stats)
    }
}

/// The three golden tests of a protocol, `golden_fixtures`,
/// `golden_fixtures_resplit_at_every_byte_boundary` and `golden_fixtures_under_a_capture_limit`,
/// from its [`Golden`].
macro_rules! golden_tests {
    ($spec:expr) => {
        #[test]
        fn golden_fixtures() {
            $crate::protocol::testkit::golden_fixtures(&$spec);
        }

        #[test]
        fn golden_fixtures_resplit_at_every_byte_boundary() {
            $crate::protocol::testkit::golden_fixtures_resplit_at_every_byte_boundary(&$spec);
        }

        #[test]
        fn golden_fixtures_under_a_capture_limit() {
            $crate::protocol::testkit::golden_fixtures_under_a_capture_limit(&$spec);
        }
    };
}
pub(crate) use golden_tests;

/// The kernel frames this protocol (`agent-ebpf/src/io/framing.rs`): each fixture, delivered
/// as the kernel's message walk delivers it (`framed_model`), gives the same exchanges as the
/// full bytes. Tried with the chunks as recorded, with each direction's run of chunks as one
/// syscall, and with every such run split in two at [`Golden::splits_per_run`] points; with
/// the default head size the exchanges are identical, with a 16-byte head as many.
pub fn golden_fixtures_framed<D: Decoder>(spec: &Golden<D>) {
    for f in &spec.load() {
        let full = spec.decode(&slices(&f.chunks));
        let want: Vec<String> = full.exchanges.iter().map(spec.line).collect();
        let runs = runs(&f.chunks);
        let mut shapes: Vec<(String, Syscalls)> = vec![
            ("as recorded".into(), slices(&f.chunks)),
            ("merged".into(), slices(&runs)),
        ];
        for r in 0..runs.len() {
            let len = runs[r].1.len();
            let step = (len / spec.splits_per_run).max(1);
            for k in (1..len).step_by(step) {
                let mut split = slices(&runs);
                let (a, b) = runs[r].1.split_at(k);
                split[r] = (runs[r].0, a);
                split.insert(r + 1, (runs[r].0, b));
                shapes.push((format!("run {r} split at {k}"), split));
            }
        }
        for (shape, syscalls) in &shapes {
            for cap in [4080, 16] {
                let got = decode_framed::<D>(syscalls, cap)
                    .unwrap_or_else(|e| panic!("{} {shape} cap {cap}: {e}", f.name));
                assert_eq!(got.stats.resyncs, 0, "{} {shape} cap {cap}", f.name);
                if cap == 4080 {
                    let got: Vec<String> = got.exchanges.iter().map(spec.line).collect();
                    assert_eq!(got, want, "{} {shape} cap {cap}", f.name);
                } else {
                    // Heads of 16 bytes cut SQL and topics: every exchange is still there.
                    assert_eq!(
                        got.exchanges.len(),
                        want.len(),
                        "{} {shape} cap {cap}",
                        f.name
                    );
                }
            }
        }
    }
}

/// One way of cutting a conversation into syscalls.
type Syscalls<'a> = Vec<(Stream, &'a [u8])>;

/// Replays syscalls through the kernel walk model and a fresh decoder.
pub fn decode_framed<D: Decoder>(
    syscalls: &[(Stream, &[u8])],
    cap: u64,
) -> Result<Decoded<D>, String> {
    let mut walker = Walker::new(cap);
    let mut dec = D::start(false);
    let mut out = Vec::new();
    for (i, (stream, bytes)) in syscalls.iter().enumerate() {
        let t = i as u64;
        let pieces = walker.syscall(*stream, bytes)?.unwrap_or_else(|| {
            vec![Piece::Bytes {
                bytes: bytes.to_vec(),
                len: bytes.len() as u64,
            }]
        });
        for piece in pieces {
            match piece {
                Piece::Bytes { bytes, len } => {
                    let chunk = Chunk {
                        stream: *stream,
                        first_ns: t,
                        last_ns: t,
                        bytes: &bytes,
                        len,
                    };
                    dec.feed(&chunk, &mut out).map_err(|e| e.to_string())?;
                }
                Piece::Run { kind, count, bytes } => {
                    let run = Run {
                        stream: *stream,
                        first_ns: t,
                        last_ns: t,
                        kind,
                        count,
                        bytes,
                    };
                    dec.skipped(&run, &mut out).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    // A first write shorter than a start-up packet or a request header is not framed (the
    // kernel decides on the first syscall): prefix capture, as the model replays it.
    if syscalls.first().is_some_and(|(_, b)| b.len() > 8) {
        assert!(walker.framed(), "the kernel would not frame this fixture");
    }
    dec.close(syscalls.len() as u64, &mut out);
    Ok(Decoded {
        exchanges: out,
        stats: dec.take_stats(),
        state: None,
    })
}

/// Every exchange ends no earlier than it starts.
pub fn assert_ordered_times<X: Timed>(xs: &[X], what: &str) {
    for x in xs {
        let (start, end) = x.span();
        assert!(
            end >= start,
            "{what}: ends at {end} before it starts at {start}"
        );
    }
}

/// The golden files: every fixture decodes without error to exactly its `<name>.golden` (one
/// line per exchange with `@start..end` in chunk indices, then [`Golden::state`], then the
/// stats); `PERISCOPE_BLESS=1` rewrites them. Each fixture's first chunk is recognised as this
/// protocol by its registry entry, as a fresh connection; then [`Golden::check`] runs.
pub fn golden_fixtures<D: Decoder>(spec: &Golden<D>) {
    let bless = std::env::var_os("PERISCOPE_BLESS").is_some();
    let entry = REGISTRY.iter().find(|p| p.fixtures == spec.fixtures);
    for f in &spec.load() {
        if let (Some(entry), Some((stream, first))) = (entry, f.chunks.first()) {
            assert_eq!(
                (entry.detect)(first, false),
                Some(*stream),
                "{} detect",
                f.name
            );
        }
        let d = spec.decode(&slices(&f.chunks));
        let mut got: Vec<String> = d
            .exchanges
            .iter()
            .map(|x| {
                let (start, end) = x.span();
                format!("{} @{start}..{end}", (spec.line)(x))
            })
            .collect();
        got.extend(d.state.clone());
        got.push(format!("stats {:?}", d.stats));
        let got = got.join("\n") + "\n";
        let path = fixture::dir(spec.fixtures).join(format!("{}.golden", f.name));
        if bless {
            std::fs::write(&path, &got).expect("golden writable");
        }
        let want = std::fs::read_to_string(&path).expect("golden file");
        assert_eq!(got, want, "fixture {}", f.name);
        assert_ordered_times(&d.exchanges, &f.name);
        (spec.check)(f, &d);
    }
}

/// Chunk boundaries do not matter: each fixture gives the same exchanges (without times) and
/// the same stats with its same-stream chunks merged, with each merged run split in two at
/// every byte boundary (or [`Golden::splits_per_run`] of them), and in one-byte chunks.
pub fn golden_fixtures_resplit_at_every_byte_boundary<D: Decoder>(spec: &Golden<D>) {
    for f in &spec.load() {
        let want = spec.untimed(&spec.decode(&slices(&f.chunks)));
        let runs = runs(&f.chunks);
        let merged = slices(&runs);
        assert_eq!(
            spec.untimed(&spec.decode(&merged)),
            want,
            "{} merged",
            f.name
        );
        for r in 0..runs.len() {
            let len = runs[r].1.len();
            let step = (len / spec.splits_per_run).max(1);
            for k in (1..len).step_by(step) {
                let mut split = merged.clone();
                let (a, b) = runs[r].1.split_at(k);
                split[r] = (runs[r].0, a);
                split.insert(r + 1, (runs[r].0, b));
                assert_eq!(
                    spec.untimed(&spec.decode(&split)),
                    want,
                    "{} run {r} split at {k}",
                    f.name
                );
            }
        }
        let bytes: Vec<(Stream, &[u8])> = runs
            .iter()
            .flat_map(|(s, b)| b.chunks(1).map(move |c| (*s, c)))
            .collect();
        assert_eq!(spec.untimed(&spec.decode(&bytes)), want, "{} bytes", f.name);
    }
}

/// The fixtures as a capture limit would deliver them: each chunk keeps only its first
/// `limit` bytes, the rest becomes a gap. Whatever the limit: no error, sane timestamps,
/// never more exchanges than the full capture; from [`Golden::subset_from`] on, only
/// exchanges the full capture has; at the last limit, the same ones in the same order.
pub fn golden_fixtures_under_a_capture_limit<D: Decoder>(spec: &Golden<D>) {
    let last = *spec.limits.last().expect("at least one limit");
    for f in &spec.load() {
        let full = slices(&f.chunks);
        let want: Vec<String> = spec.decode(&full).exchanges.iter().map(spec.key).collect();
        for &limit in spec.limits {
            let got = spec
                .decode_limited(&full, limit)
                .unwrap_or_else(|(i, e)| panic!("{} limit {limit}: chunk {i}: {e}", f.name));
            assert!(
                got.exchanges.len() <= want.len(),
                "{} limit {limit}",
                f.name
            );
            assert_ordered_times(&got.exchanges, &f.name);
            let got: Vec<String> = got.exchanges.iter().map(spec.key).collect();
            if spec.subset_from.is_some_and(|from| limit >= from) {
                assert!(
                    got.iter().all(|k| want.contains(k)),
                    "{} limit {limit}",
                    f.name
                );
            }
            if limit == last {
                assert_eq!(got, want, "{} limit {limit}", f.name);
            }
        }
    }
}
