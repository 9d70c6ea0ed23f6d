//! Pure protocol decoders: bytes in, exchanges out. No I/O, no clocks, no kernel types.
//!
//! Every protocol is a folder (`http1/`, `postgres/`, `kafka/`) holding one [`Decoder`]; the
//! [`REGISTRY`] lists them in detection order, and the connection tracker (`conn`) knows
//! protocols only through it. The decoders import nothing outside `protocol`; `registry.rs` is
//! the one place here that knows the agent's `exchange::Detail`.
//!
//! # How to add a protocol
//! 1. **A folder** `protocol/<name>/`: `mod.rs` opens with the design notes (Model, Pairing,
//!    Gaps, Errors, as the other decoders do) and holds the decoder state machine; the jobs go
//!    in files of their own (`framing.rs`, `messages.rs`/`parse.rs`, `detect.rs`), the unit
//!    tests in a sibling `tests.rs`. The decoder implements [`Decoder`]: its own exchange type
//!    (whatever the protocol's unit is: a request/response pair, a statement), a
//!    [`DecodeError`] with its own reason labels when it gives up, [`DecoderStats`] for what
//!    it noticed, and [`Decoder::stopped`] if the conversation can leave the protocol (an
//!    upgrade, TLS). It imports nothing outside `protocol::{mod, text, route, sql}`.
//! 2. **Fixtures**: record real clients and servers into `agent/tests/fixtures/<name>/` (see
//!    the `record.py` next to the others) and run the generic golden harness from its
//!    `tests.rs`: a `testkit::Golden` (a golden-line formatter, the capture limits to try) and
//!    `testkit::golden_tests!`; `PERISCOPE_BLESS=1` writes the `.golden` files. Hand-built
//!    conversations use `testkit::Conn`. Its fuzz target is a few lines around
//!    `periscope_fuzz::Driver`; `cargo xtask bench decode` picks it up from the registry.
//! 3. **A registry entry** in `registry.rs`: the self-metric name, the `--protocols` names,
//!    the fixture directory, `detect` (the first bytes of a connection), `could_start` (too
//!    few bytes yet, but they may begin this protocol), `joins_mid_stream` (bytes of a
//!    connection found open that only the socket can place; `|_| false` for most) and the
//!    constructor.
//! 4. **The exchange mapping**: a `Detail` variant in `exchange.rs` and the one
//!    [`IntoDetail`] impl in `registry.rs` that wraps the protocol's exchange into it (this is
//!    also where node-wide state such as Kafka's topic names is applied, through [`Shared`]).
//! 5. **One arm per metric family**: every `match` on `Detail` in the sinks now fails to
//!    compile until it handles the new variant; the compiler lists them.
//!
//! A worked example, small enough to read in one go, is the line-based echo protocol in
//! `echo/` (test builds only): a folder's worth of decoder, a registry entry in a test
//! registry, and the same golden harness and connection-level detection as the real ones.

#[cfg(test)]
pub(crate) mod echo;
pub mod fixture;
#[cfg(test)]
pub(crate) mod framed_model;
pub mod http;
pub mod http1;
pub mod http2;
pub mod kafka;
pub mod postgres;
mod registry;
pub mod route;
pub mod sql;
#[cfg(test)]
pub(crate) mod testkit;
mod text;

pub use registry::{session, AnyDecoder, IntoDetail, Protocol, Protocols, Shared, REGISTRY};

/// Which half of a connection a chunk of bytes belongs to, from the protocol's point of view
/// (not the syscall's): the connection tracker maps (direction, role) to this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Client → server bytes.
    Request,
    /// Server → client bytes.
    Response,
}

/// Bytes moved by one syscall, as captured.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub stream: Stream,
    /// When the first byte of this chunk moved: a write's entry, a read's return.
    pub first_ns: u64,
    /// When the last byte of this chunk moved: the syscall's return.
    pub last_ns: u64,
    /// The captured prefix of the bytes.
    pub bytes: &'a [u8],
    /// The real number of bytes moved (`>= bytes.len()`): the rest is a gap the capture
    /// limit cut off, to be skipped by length.
    pub len: u64,
}

impl Chunk<'_> {
    /// Bytes moved but not captured.
    pub fn gap(&self) -> u64 {
        self.len.saturating_sub(self.bytes.len() as u64)
    }
}

/// Whole messages the kernel walked over without capturing them (framed capture: a run of
/// PostgreSQL `DataRow` or `CopyData` messages inside one syscall). They begin where the
/// stream's next header was due and fill exactly `bytes` bytes.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub stream: Stream,
    pub first_ns: u64,
    pub last_ns: u64,
    /// The protocol's message type (PostgreSQL's type byte).
    pub kind: u8,
    /// How many messages.
    pub count: u64,
    /// Their bytes, headers included.
    pub bytes: u64,
}

impl Run {
    /// The same bytes as a capture gap.
    pub fn as_gap(&self) -> Chunk<'static> {
        Chunk {
            stream: self.stream,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            bytes: &[],
            len: self.bytes,
        }
    }
}

/// Non-fatal things a decoder noticed since the last call to [`Decoder::take_stats`]. Every
/// decoder counts the same four things; what a "header" is depends on the protocol (an HTTP
/// head, a PostgreSQL message, a Kafka frame header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Framing was lost (counted when it is lost); decoding resumes at the next chunk that
    /// begins with a message start.
    pub resyncs: u64,
    /// Requests that never got a response (closed, or dropped on resync/overflow).
    pub unpaired_requests: u64,
    /// Responses with no pending request.
    pub unexpected_responses: u64,
    /// Header block cut by a capture gap.
    pub truncated_headers: u64,
}

impl std::ops::AddAssign for DecoderStats {
    fn add_assign(&mut self, other: DecoderStats) {
        self.resyncs += other.resyncs;
        self.unpaired_requests += other.unpaired_requests;
        self.unexpected_responses += other.unexpected_responses;
        self.truncated_headers += other.truncated_headers;
    }
}

/// Why a decoder stopped decoding a connection without an error: what follows is no longer
/// this protocol in clear text, and the caller stops capturing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The connection switched protocols (HTTP `101 Switching Protocols`, a `CONNECT` tunnel).
    Upgraded,
    /// The conversation switched to TLS (a PostgreSQL `SSLRequest` answered `S`).
    Tls,
}

/// When an exchange happened: what the generic machinery (golden tests, fuzzing, the
/// connection tracker) needs of every protocol's exchange type.
pub trait Timed {
    /// `(start_ns, end_ns)`, as the protocol's timing rules define them.
    fn span(&self) -> (u64, u64);
    /// The same, writable: comparisons that must not depend on timing clear them.
    fn span_mut(&mut self) -> (&mut u64, &mut u64);
}

/// Implements [`Timed`] for exchange types whose times are their `start_ns` and `end_ns`
/// fields.
macro_rules! timed {
    ($($exchange:ty),+) => {$(
        impl $crate::protocol::Timed for $exchange {
            fn span(&self) -> (u64, u64) {
                (self.start_ns, self.end_ns)
            }

            fn span_mut(&mut self) -> (&mut u64, &mut u64) {
                (&mut self.start_ns, &mut self.end_ns)
            }
        }
    )+};
}
pub(crate) use timed;

/// Why a decoder gave up on a connection: the caller stops decoding it and counts a parse
/// error by [`DecodeError::reason`]. After an error a decoder stays failed: `feed` repeats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not this protocol: a stream's first message did not parse. Holds the
    /// reason label, `not_<protocol>` (each protocol names its own: `http1::NOT_HTTP`, ...).
    #[error("not this protocol ({0})")]
    NotProtocol(&'static str),
    /// The protocol, broken beyond repair after messages were decoded (an impossible length,
    /// an unknown message type): a snake_case reason each decoder documents.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// A decoder's error, sticky: once a feed failed, every later feed repeats the error (the
/// contract of [`Decoder::feed`]). Reset with the decoder at close.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sticky(Option<DecodeError>);

impl Sticky {
    /// The earlier failure, if any, as this feed's result.
    pub fn check(&self) -> Result<(), DecodeError> {
        self.0.map_or(Ok(()), Err)
    }

    /// Remembers a feed's failure and passes its result on.
    pub fn keep(&mut self, result: Result<(), DecodeError>) -> Result<(), DecodeError> {
        if let Err(e) = result {
            self.0 = Some(e);
        }
        result
    }

    pub fn is_failed(&self) -> bool {
        self.0.is_some()
    }
}

impl DecodeError {
    /// Low-cardinality snake_case reason, fit for a metric label.
    pub fn reason(&self) -> &'static str {
        match *self {
            DecodeError::NotProtocol(reason) | DecodeError::Malformed(reason) => reason,
        }
    }
}

/// One connection's decoder for one protocol: the two captured byte streams in, in capture
/// order, and the protocol's exchanges out.
///
/// The contract every decoder keeps (and the generic tests in `testkit` check): chunk
/// boundaries do not change what is decoded; a capture gap (`Chunk::len` beyond the captured
/// bytes) is skipped by length or counted in [`DecoderStats`], never an error by itself; an
/// error is sticky (`feed` repeats it); memory is bounded by constants next to each buffer;
/// `close` flushes what the end of the connection completes and resets the decoder, keeping
/// its stats.
pub trait Decoder: Send + 'static {
    /// The `protocol` label of self-metrics ("http1", "postgresql", "kafka").
    const PROTOCOL: &'static str;
    /// What one completed exchange looks like for this protocol.
    type Exchange: Timed + Send + 'static;

    /// A decoder for a new connection, seen from its first byte (`mid_stream == false`), or
    /// for one found already open, whose bytes may start anywhere in a conversation.
    fn start(mid_stream: bool) -> Self
    where
        Self: Sized;

    /// Feeds one syscall's bytes; completed exchanges are pushed to `out`. Err means the
    /// stream is not this protocol or is broken beyond repair: the caller stops decoding the
    /// connection.
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Self::Exchange>)
        -> Result<(), DecodeError>;

    /// A run of whole messages the kernel counted instead of capturing (see [`Run`]). Only
    /// protocols whose messages the kernel frames get runs; the default treats the run as a
    /// capture gap.
    fn skipped(&mut self, run: &Run, out: &mut Vec<Self::Exchange>) -> Result<(), DecodeError> {
        self.feed(&run.as_gap(), out)
    }

    /// Bytes of `stream` were lost in unknown amount (framed events that never arrived):
    /// framing and pairing can no longer be trusted. The default skips a gap longer than any
    /// message, so the stream resynchronises on the next message start.
    fn lost(
        &mut self,
        stream: Stream,
        ts_ns: u64,
        out: &mut Vec<Self::Exchange>,
    ) -> Result<(), DecodeError> {
        let gap = Chunk {
            stream,
            first_ns: ts_ns,
            last_ns: ts_ns,
            bytes: &[],
            len: 1 << 40,
        };
        self.feed(&gap, out)
    }

    /// The connection closed at `ts_ns`: flush what can still be completed. The decoder is
    /// then reset (stats are kept) and may be reused.
    fn close(&mut self, ts_ns: u64, out: &mut Vec<Self::Exchange>);

    /// Counters since the last call, reset.
    fn take_stats(&mut self) -> DecoderStats;

    /// About how many heap bytes the decoder holds now (buffers, queues, names and SQL it
    /// keeps), for the tracker's global budget (`--decoder-memory-budget`). An estimate from
    /// lengths and capacities, cheap enough to ask after every feed.
    fn heap_bytes(&self) -> usize;

    /// Set once the conversation left the protocol (an upgrade, TLS): later bytes are ignored
    /// and the caller stops decoding.
    fn stopped(&self) -> Option<Stopped> {
        None
    }
}

/// Heap bytes of a collection for [`Decoder::heap_bytes`]: each item's fixed `size` plus its
/// variable part (`extra`), read from at most the first 16 items and scaled to all of them, so
/// that asking after every feed costs the same for a queue of 4096 as for one of 16.
pub fn sampled_bytes<'a, T: 'a>(
    items: impl ExactSizeIterator<Item = &'a T>,
    size: usize,
    extra: impl Fn(&T) -> usize,
) -> usize {
    const SAMPLE: usize = 16;
    let n = items.len();
    let sampled: usize = items.take(SAMPLE).map(extra).sum();
    n * size + sampled * n / n.clamp(1, SAMPLE)
}

/// Whether `bytes`, too few for detection to decide, could begin a message that starts with
/// a big-endian length prefix in a plausible range (Kafka frames, PostgreSQL start-up
/// packets). TLS records and most other binary protocols fail this at once.
pub fn could_start_with_length(bytes: &[u8]) -> bool {
    match bytes {
        [a, b, c, d, ..] => {
            let n = u32::from_be_bytes([*a, *b, *c, *d]);
            (8..=100 << 20).contains(&n)
        }
        // Lengths up to 100 MiB start with 0x00..=0x06.
        [first, ..] => *first <= 0x06,
        [] => false,
    }
}

#[cfg(test)]
mod sampled_bytes_tests {
    use super::sampled_bytes;

    #[test]
    fn exact_up_to_the_sample_and_scaled_beyond_it() {
        let small: Vec<usize> = (1..=10).collect();
        assert_eq!(sampled_bytes(small.iter(), 8, |x| *x), 10 * 8 + 55);
        assert_eq!(sampled_bytes(Vec::<usize>::new().iter(), 8, |x| *x), 0);
        // 4096 items of 100 variable bytes each: the first 16 stand for all of them.
        let big = vec![100usize; 4096];
        assert_eq!(sampled_bytes(big.iter(), 8, |x| *x), 4096 * 108);
    }
}
