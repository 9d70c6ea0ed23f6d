//! Kafka binary-protocol decoder: two captured byte streams of one connection in, request /
//! response exchanges out.
//!
//! # Model
//! Both streams are sequences of frames: a big-endian `int32` size, then that many bytes. Each
//! stream is a small state machine: `Size` (reading the 4-byte prefix) → `Body` (collecting the
//! frame) → `Size`. A frame that fits one chunk is decoded in place; a frame split across
//! chunks is copied into a per-stream buffer, of which at most [`MAX_FRAME_BUFFER`] bytes are
//! kept (the rest is skipped by length, and the frame is decoded from the kept prefix).
//!
//! A request frame is decoded when it ends: its header (api key and version, correlation id,
//! client id; header v0/v1/v2 per [`apis::request_header_version`]) and, for the APIs listed
//! in the `body` module, the topics, partitions and record counts of its body. It then waits
//! in the pending queue ([`MAX_PENDING`] entries; beyond it the oldest is dropped as unpaired).
//! A response frame is paired by correlation id; since a broker answers a connection's
//! requests in order, pending requests older than the one answered are dropped as unpaired.
//! The response's header version (v1 with tagged fields for flexible versions, except
//! ApiVersions which always answers with v0) comes from its request. Its body adds per-topic
//! error codes and partition counts (and, for Fetch, record counts) to the request's topics.
//!
//! Produce with `acks = 0` gets no response: it is emitted when its request frame ends, with
//! `response_bytes = 0` and `end_ns` = `last_ns` of that chunk. Some brokers answer it anyway
//! (librdkafka's mock cluster does): a response to one of the last [`MAX_ACKS0_IDS`] such
//! requests is dropped quietly rather than counted as unexpected.
//!
//! # Gaps and resynchronisation
//! A chunk whose `len` exceeds its captured bytes ends in a gap.
//! - **Gap inside a frame** whose size is known: the frame is skipped by length and decoded
//!   from its captured prefix, which usually holds the header and often the topics. A
//!   response whose body decoding ran out of captured bytes is emitted with
//!   `complete = false`; a request yields what its prefix showed.
//! - **A frame whose size prefix falls in a gap** (`truncated_headers` and `resyncs` both +1):
//!   framing is lost. The stream discards chunks until one that begins with a frame start: a
//!   request that passes [`detect()`], or a response of sane size whose correlation id is
//!   pending. For the response stream the oldest pending request is dropped as unpaired (its
//!   response is assumed to be the lost one).
//! - **Header cut by a gap** (`truncated_headers` +1): a request whose correlation id was
//!   captured is still queued (client id unknown); one whose was not is lost, and its
//!   response will count as unexpected. A response whose correlation id was not captured
//!   drops the oldest pending request as unpaired.
//!
//! - **Fetch responses walked by the kernel** (framed capture, `agent-ebpf/src/io/framing/
//!   kafka.rs`) arrive as their captured fields with each `records` field a run
//!   ([`Decoder::skipped`] of kind `RECORDS_RUN`): the run is a hole in the frame's
//!   buffer ([`wire::Hole`], at most [`MAX_HOLES`] per frame) that carries its record count,
//!   and the body parser passes over it, so the records of every partition are counted
//!   exactly whatever the response's size. A `records` field neither captured whole nor one
//!   hole makes the exchange incomplete.
//!
//! # Errors
//! A first request frame whose header is not a plausible Kafka header ([`apis::plausible`],
//! a client id that fits the frame), or a first frame of either stream with an impossible
//! size, is [`NOT_KAFKA`]; after a frame was decoded the same faults are
//! `Malformed("bad_request_header" | "bad_frame_size")`. A body that does not parse is not an
//! error: framing does not depend on it, so the exchange keeps what was decoded. After an
//! error the decoder stays failed: `feed` repeats the error.

mod apis;
mod body;
mod detect;
pub mod errors;
mod topics;
mod wire;

use std::collections::VecDeque;

use super::text::capped_string;
pub use super::DecodeError;
pub use super::DecoderStats;
use super::{Chunk, Decoder, Run, Sticky, Stream};
use body::Summary;
pub use detect::detect;
pub use topics::{TopicNames, MAX_TOPIC_NAMES};
use wire::{Hole, Reader, Stop};

/// Most requests waiting for a response on one connection; beyond it the oldest is dropped.
pub const MAX_PENDING: usize = 1024;
/// Bytes of one frame kept for decoding when it spans chunks; the rest is skipped by length.
pub const MAX_FRAME_BUFFER: usize = 1 << 20;
/// Topics kept per exchange; further topics are not reported.
pub const MAX_TOPICS: usize = 64;
/// Topic id → name pairs kept per Metadata exchange.
pub const MAX_METADATA_TOPICS: usize = 1024;
/// Topic names and client ids are cut to this many bytes (Kafka caps topic names at 249).
pub const MAX_NAME_BYTES: usize = 256;
/// Largest request frame accepted: the broker's default `socket.request.max.bytes`.
pub const MAX_REQUEST_FRAME: i32 = 100 << 20;
/// Largest response frame accepted (Fetch responses are bounded by the client's
/// `fetch.max.bytes`, 50 MiB by default).
pub const MAX_RESPONSE_FRAME: i32 = 1 << 30;
/// Smallest request frame: api_key, api_version, correlation_id.
const MIN_REQUEST_FRAME: i32 = 8;
/// Smallest response frame: correlation_id.
const MIN_RESPONSE_FRAME: i32 = 4;
/// Topic ids learnt from this connection's Metadata responses, used to name Fetch v13+ topics.
const MAX_KNOWN_TOPIC_IDS: usize = 256;
/// Correlation ids of recent acks=0 Produce requests remembered (see the module docs).
pub const MAX_ACKS0_IDS: usize = 16;
/// The kind of a run that is (the part of a syscall inside) a Fetch response's `records`
/// field, its count the field's records (the kernel's `RUN_KAFKA_RECORDS`).
pub const RECORDS_RUN: u8 = b'R';
/// Holes (kernel-counted `records` fields) kept per frame; beyond it a run is a capture gap.
pub const MAX_HOLES: usize = 1024;
/// A buffer grown past this by one large frame is released after the frame.
const KEEP_BUFFER_CAPACITY: usize = 64 * 1024;

/// One topic of an exchange: the request's topics, merged with the response's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicStats {
    /// Topic name (None when only a topic id is known and no Metadata on this connection
    /// named it), cut to [`MAX_NAME_BYTES`].
    pub name: Option<String>,
    /// Topic id, from versions that carry one (Fetch v13+, Produce v13+, Metadata v10+).
    pub topic_id: Option<[u8; 16]>,
    /// Partitions named in the request, or in the response when it names more (Metadata and
    /// OffsetFetch for all topics).
    pub partitions: u32,
    /// Produce request: sum of `recordsCount` of its record batches. Fetch response: the same
    /// over the returned batches whose headers were captured. Else 0.
    pub record_count: u64,
    /// First non-zero topic or partition error code in the response, else 0.
    pub error_code: i16,
}

/// One Kafka request and its response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaExchange {
    pub api_key: i16,
    /// The protocol guide's name for the API key ("Produce", "Fetch", ...), "Unknown" for
    /// keys above 74.
    pub api_name: &'static str,
    pub api_version: i16,
    pub correlation_id: i32,
    /// Cut to [`MAX_NAME_BYTES`]; None when null, absent (header v0) or lost in a gap.
    pub client_id: Option<String>,
    /// Request topics merged with the response's per-topic errors and partitions, at most
    /// [`MAX_TOPICS`].
    pub topics: Vec<TopicStats>,
    /// Produce only.
    pub acks: Option<i16>,
    /// The response's top-level error code if non-zero (Fetch v7+, OffsetFetch v2+, group and
    /// coordinator APIs, ApiVersions, Metadata v13+), else its first non-zero per-topic or
    /// per-partition one, else 0. Always 0 for APIs whose body is not decoded.
    pub error_code: i16,
    /// Metadata v10+ responses: topic id → name, so the caller can name Fetch v13+ topics
    /// node-wide.
    pub metadata_topics: Vec<([u8; 16], String)>,
    /// `first_ns` of the chunk where the request frame began.
    pub start_ns: u64,
    /// `last_ns` of the chunk where the response frame ended (see [`KafkaDecoder::close`]).
    pub end_ns: u64,
    /// Frame sizes including the 4-byte size prefix.
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// false when the response was cut by close, or a capture gap cut it before the decoder
    /// read what it decodes of its body (the header was still paired), or a `records` field
    /// of the Produce request or Fetch response was neither captured whole nor counted by the
    /// kernel's walk (its record count is a lower bound).
    pub complete: bool,
}

super::timed!(KafkaExchange);

/// The stream is not Kafka. Once a frame was decoded, faults are [`DecodeError::Malformed`]:
/// "bad_frame_size", "bad_request_header".
pub const NOT_KAFKA: DecodeError = DecodeError::NotProtocol("not_kafka");

/// A frame being received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frame {
    /// Body size (without the size prefix).
    size: u32,
    /// Body bytes passed so far, captured or in gaps.
    seen: u32,
    /// A gap cut the body: the buffer holds only a prefix.
    gap: bool,
    /// The buffer reached [`MAX_FRAME_BUFFER`]: it holds only a prefix.
    capped: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the size prefix: `have` of its 4 bytes are in `bytes`.
    Size {
        bytes: [u8; 4],
        have: u8,
    },
    Body(Frame),
    /// Framing lost: discard chunks until one begins with a frame start.
    Resync,
}

const START: State = State::Size {
    bytes: [0; 4],
    have: 0,
};

/// One direction's framing state.
#[derive(Debug)]
struct Half {
    state: State,
    /// The current frame's body prefix, when it spans chunks.
    buf: Vec<u8>,
    /// The runs of the kernel's walk inside `buf` (Fetch responses' `records` fields).
    holes: Vec<Hole>,
    /// `first_ns` of the chunk holding the current frame's first byte.
    first_ns: u64,
    /// `last_ns` of the last chunk that carried bytes of the current frame.
    last_ns: u64,
    /// A frame was decoded on this stream: later faults are Malformed, not NOT_KAFKA.
    synced: bool,
}

impl Half {
    fn new() -> Self {
        Half {
            state: START,
            buf: Vec::new(),
            holes: Vec::new(),
            first_ns: 0,
            last_ns: 0,
            synced: false,
        }
    }

    fn release_buffer(&mut self) {
        if self.buf.capacity() > KEEP_BUFFER_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        if self.holes.capacity() > 16 {
            self.holes = Vec::new();
        } else {
            self.holes.clear();
        }
    }
}

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    client_id: Option<String>,
    summary: Summary,
    start_ns: u64,
    request_bytes: u64,
}

/// How a frame's bytes ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cut {
    /// Only a prefix was captured (gap, or buffer cap).
    prefix: bool,
    /// The prefix ends because of a capture gap or close (not the buffer cap): decoding that
    /// runs out of bytes lost information.
    lost: bool,
}

/// Decoder for one connection. See the module docs for semantics.
#[derive(Debug)]
pub struct KafkaDecoder {
    req: Half,
    resp: Half,
    pending: VecDeque<Pending>,
    /// Recent acks=0 Produce correlation ids, newest last.
    acks0: VecDeque<i32>,
    /// Topic id → name from this connection's Metadata responses.
    topic_names: Vec<([u8; 16], String)>,
    failed: Sticky,
    stats: DecoderStats,
}

impl Default for KafkaDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl KafkaDecoder {
    pub fn new() -> Self {
        KafkaDecoder {
            req: Half::new(),
            resp: Half::new(),
            pending: VecDeque::new(),
            acks0: VecDeque::new(),
            topic_names: Vec::new(),
            failed: Sticky::default(),
            stats: DecoderStats::default(),
        }
    }
}

impl Decoder for KafkaDecoder {
    const PROTOCOL: &'static str = "kafka";
    type Exchange = KafkaExchange;

    /// A connection joined mid-stream resynchronises like after a gap.
    fn start(_mid_stream: bool) -> Self {
        Self::new()
    }

    /// Feed one syscall's bytes. Err means the stream is not Kafka or broken beyond repair: the
    /// caller stops decoding the connection. Completed exchanges are pushed to `out`.
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<KafkaExchange>) -> Result<(), DecodeError> {
        self.failed.check()?;
        let result = self.feed_stream(chunk, out);
        debug_assert!(self.req.buf.len() <= MAX_FRAME_BUFFER);
        debug_assert!(self.resp.buf.len() <= MAX_FRAME_BUFFER);
        debug_assert!(self.pending.len() <= MAX_PENDING);
        self.failed.keep(result)
    }

    /// The connection closed at `ts_ns`. A response cut mid-frame is emitted with
    /// `complete = false` and `end_ns = max(ts_ns, last_ns of its last chunk)` if its
    /// correlation id was captured and pending. Requests without a response (including one
    /// cut mid-frame) are counted as unpaired, not emitted. The decoder is then reset (stats
    /// are kept) and may be reused.
    fn close(&mut self, ts_ns: u64, out: &mut Vec<KafkaExchange>) {
        if !self.failed.is_failed() {
            if let State::Body(f) = self.resp.state {
                if self.resp.buf.len() >= 4 {
                    let buf = std::mem::take(&mut self.resp.buf);
                    let holes = std::mem::take(&mut self.resp.holes);
                    let end_ns = ts_ns.max(self.resp.last_ns);
                    let cut = Cut {
                        prefix: true,
                        lost: true,
                    };
                    self.response_frame(&buf, &holes, f.size, cut, end_ns, out);
                }
            }
            if matches!(
                self.req.state,
                State::Body(_) | State::Size { have: 1.., .. }
            ) {
                self.stats.unpaired_requests += 1;
            }
        }
        self.stats.unpaired_requests += self.pending.len() as u64;
        self.stats = std::mem::take(self).stats;
    }

    /// A `records` field walked by the kernel (see the module docs): a hole in the response
    /// frame's buffer. Any other run, or one that does not fit the frame, is a capture gap.
    fn skipped(&mut self, run: &Run, out: &mut Vec<KafkaExchange>) -> Result<(), DecodeError> {
        self.failed.check()?;
        if run.kind == RECORDS_RUN {
            let h = self.half(run.stream);
            if let State::Body(mut f) = h.state {
                let at = h.buf.len();
                let fits = run.bytes <= u64::from(f.size - f.seen) && !f.gap && !f.capped;
                let room = h.holes.len() < MAX_HOLES;
                let joined = match h.holes.last_mut() {
                    Some(last) if fits && last.at == at => {
                        last.len += run.bytes;
                        last.records = last.records.saturating_add(run.count);
                        true
                    }
                    _ if fits && room => {
                        h.holes.push(Hole {
                            at,
                            len: run.bytes,
                            records: run.count,
                        });
                        true
                    }
                    _ => false,
                };
                if joined {
                    f.seen += run.bytes as u32;
                    h.last_ns = run.last_ns;
                    h.state = State::Body(f);
                    if f.seen < f.size {
                        return Ok(());
                    }
                    let result = self.end_buffered_frame(run.stream, f, run.last_ns, out);
                    return self.failed.keep(result);
                }
            }
        }
        self.feed(&run.as_gap(), out)
    }

    fn take_stats(&mut self) -> DecoderStats {
        std::mem::take(&mut self.stats)
    }

    fn heap_bytes(&self) -> usize {
        self.req.buf.capacity()
            + self.resp.buf.capacity()
            + (self.req.holes.capacity() + self.resp.holes.capacity()) * std::mem::size_of::<Hole>()
            + super::sampled_bytes(self.pending.iter(), std::mem::size_of::<Pending>(), |p| {
                p.client_id.as_ref().map_or(0, String::capacity)
            })
            + self.acks0.len() * 4
            + super::sampled_bytes(self.topic_names.iter(), 40, |(_, name)| name.capacity())
    }
}

impl KafkaDecoder {
    fn half(&mut self, stream: Stream) -> &mut Half {
        match stream {
            Stream::Request => &mut self.req,
            Stream::Response => &mut self.resp,
        }
    }

    fn feed_stream(
        &mut self,
        c: &Chunk<'_>,
        out: &mut Vec<KafkaExchange>,
    ) -> Result<(), DecodeError> {
        let data = c.bytes;
        let stream = c.stream;
        if self.half(stream).state == State::Resync {
            if !self.frame_start(stream, data) {
                return Ok(());
            }
            self.half(stream).state = START;
        }
        let mut gap = c.gap();
        let mut pos = 0;
        while pos < data.len() {
            let h = self.half(stream);
            match h.state {
                State::Resync => return Ok(()),
                State::Size { mut bytes, have } => {
                    let have = usize::from(have);
                    if have == 0 {
                        h.first_ns = c.first_ns;
                    }
                    let n = (4 - have).min(data.len() - pos);
                    bytes[have..have + n].copy_from_slice(&data[pos..pos + n]);
                    pos += n;
                    if have + n < 4 {
                        h.state = State::Size {
                            bytes,
                            have: (have + n) as u8,
                        };
                        continue;
                    }
                    let size = i32::from_be_bytes(bytes);
                    let (min, max) = match stream {
                        Stream::Request => (MIN_REQUEST_FRAME, MAX_REQUEST_FRAME),
                        Stream::Response => (MIN_RESPONSE_FRAME, MAX_RESPONSE_FRAME),
                    };
                    if !(min..=max).contains(&size) {
                        return Err(if h.synced {
                            DecodeError::Malformed("bad_frame_size")
                        } else {
                            NOT_KAFKA
                        });
                    }
                    h.state = State::Body(Frame {
                        size: size as u32,
                        seen: 0,
                        gap: false,
                        capped: false,
                    });
                    h.buf.clear();
                    h.last_ns = c.last_ns;
                }
                State::Body(mut f) => {
                    h.last_ns = c.last_ns;
                    let avail = data.len() - pos;
                    let left = (f.size - f.seen) as usize;
                    if f.seen == 0
                        && (avail >= left || (avail as u64).saturating_add(gap) >= left as u64)
                    {
                        // The whole frame, or all of it that was captured, is in this chunk.
                        let take = avail.min(left);
                        let cut = Cut {
                            prefix: take < left,
                            lost: take < left,
                        };
                        if cut.prefix {
                            gap -= (left - take) as u64;
                        }
                        h.state = START;
                        let body = &data[pos..pos + take];
                        self.frame(stream, body, &[], f.size, cut, c.last_ns, out)?;
                        pos += take;
                        continue;
                    }
                    let n = avail.min(left);
                    if !f.gap && !f.capped {
                        let k = n.min(MAX_FRAME_BUFFER - h.buf.len());
                        h.buf.extend_from_slice(&data[pos..pos + k]);
                        f.capped = k < n;
                    }
                    f.seen += n as u32;
                    pos += n;
                    if f.seen < f.size {
                        h.state = State::Body(f);
                        continue;
                    }
                    self.end_buffered_frame(stream, f, c.last_ns, out)?;
                }
            }
        }
        if gap > 0 {
            self.gap(stream, gap, c.last_ns, out)?;
        }
        Ok(())
    }

    /// Decodes a frame collected in the stream's buffer.
    fn end_buffered_frame(
        &mut self,
        stream: Stream,
        f: Frame,
        end_ns: u64,
        out: &mut Vec<KafkaExchange>,
    ) -> Result<(), DecodeError> {
        let h = self.half(stream);
        h.state = START;
        let buf = std::mem::take(&mut h.buf);
        let holes = std::mem::take(&mut h.holes);
        let cut = Cut {
            prefix: f.gap || f.capped,
            lost: f.gap,
        };
        let result = self.frame(stream, &buf, &holes, f.size, cut, end_ns, out);
        let h = self.half(stream);
        h.buf = buf;
        h.holes = holes;
        h.release_buffer();
        result
    }

    /// Applies the gap at the end of a chunk.
    fn gap(
        &mut self,
        stream: Stream,
        gap: u64,
        end_ns: u64,
        out: &mut Vec<KafkaExchange>,
    ) -> Result<(), DecodeError> {
        let h = self.half(stream);
        let leftover = match h.state {
            State::Resync => return Ok(()),
            State::Size { .. } => gap,
            State::Body(mut f) => {
                let left = u64::from(f.size - f.seen);
                f.gap = true;
                if gap < left {
                    f.seen += gap as u32;
                    h.state = State::Body(f);
                    return Ok(());
                }
                f.seen = f.size;
                self.end_buffered_frame(stream, f, end_ns, out)?;
                gap - left
            }
        };
        if leftover > 0 {
            // A frame (or its size prefix) lies in the gap: framing is lost.
            self.stats.truncated_headers += 1;
            self.stats.resyncs += 1;
            if stream == Stream::Response && self.pending.pop_front().is_some() {
                self.stats.unpaired_requests += 1;
            }
            self.half(stream).state = State::Resync;
        }
        Ok(())
    }

    /// Whether a chunk after lost framing begins with a frame start.
    fn frame_start(&self, stream: Stream, data: &[u8]) -> bool {
        match stream {
            Stream::Request => detect(data) == Some(Stream::Request),
            Stream::Response => {
                let mut r = Reader::new(data);
                match (r.i32(), r.i32()) {
                    (Ok(size), Ok(id)) => {
                        (MIN_RESPONSE_FRAME..=MAX_RESPONSE_FRAME).contains(&size)
                            && self.pending.iter().any(|p| p.correlation_id == id)
                    }
                    _ => false,
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn frame(
        &mut self,
        stream: Stream,
        body: &[u8],
        holes: &[Hole],
        size: u32,
        cut: Cut,
        end_ns: u64,
        out: &mut Vec<KafkaExchange>,
    ) -> Result<(), DecodeError> {
        match stream {
            Stream::Request => self.request_frame(body, holes, size, cut, end_ns, out),
            Stream::Response => {
                self.response_frame(body, holes, size, cut, end_ns, out);
                Ok(())
            }
        }
    }

    fn request_frame(
        &mut self,
        body: &[u8],
        holes: &[Hole],
        size: u32,
        cut: Cut,
        end_ns: u64,
        out: &mut Vec<KafkaExchange>,
    ) -> Result<(), DecodeError> {
        let bad = if self.req.synced {
            DecodeError::Malformed("bad_request_header")
        } else {
            NOT_KAFKA
        };
        let mut r = Reader::with_holes(body, holes);
        let (Ok(api_key), Ok(api_version), Ok(correlation_id)) = (r.i16(), r.i16(), r.i32()) else {
            // Only reachable with a cut prefix: a full frame has at least these 8 bytes.
            self.stats.truncated_headers += 1;
            return Ok(());
        };
        let sane = if self.req.synced {
            api_key >= 0 && api_version >= 0
        } else {
            apis::plausible(api_key, api_version)
        };
        if !sane {
            return Err(bad);
        }
        let header_version = apis::request_header_version(api_key, api_version);
        let mut header_cut = false;
        let mut client_id = None;
        if header_version >= 1 {
            let header = r.string(false).and_then(|id| {
                client_id = id.map(|id| capped_string(id, MAX_NAME_BYTES));
                r.tagged_fields(header_version >= 2)
            });
            match header {
                Ok(()) => {}
                Err(Stop::Short) if cut.prefix => {
                    self.stats.truncated_headers += 1;
                    header_cut = true;
                }
                Err(_) => return Err(bad),
            }
        }
        self.req.synced = true;
        let mut summary = Summary::new();
        if !header_cut {
            // A body that does not parse keeps what was read before the fault.
            let _ = body::request(api_key, api_version, &mut r, &mut summary);
        }
        let p = Pending {
            api_key,
            api_version,
            correlation_id,
            client_id,
            summary,
            start_ns: self.req.first_ns,
            request_bytes: u64::from(size) + 4,
        };
        if api_key == apis::PRODUCE && p.summary.acks == Some(0) {
            // acks=0: the broker sends no response.
            if self.acks0.len() >= MAX_ACKS0_IDS {
                self.acks0.pop_front();
            }
            self.acks0.push_back(correlation_id);
            let complete = !p.summary.inexact_records;
            let x = self.exchange(p, 0, end_ns, complete);
            out.push(x);
            return Ok(());
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.stats.unpaired_requests += 1;
        }
        self.pending.push_back(p);
        Ok(())
    }

    fn response_frame(
        &mut self,
        body: &[u8],
        holes: &[Hole],
        size: u32,
        cut: Cut,
        end_ns: u64,
        out: &mut Vec<KafkaExchange>,
    ) {
        let mut r = Reader::with_holes(body, holes);
        let Ok(correlation_id) = r.i32() else {
            // The correlation id was not captured: assume the oldest request was answered.
            self.stats.truncated_headers += 1;
            if self.pending.pop_front().is_some() {
                self.stats.unpaired_requests += 1;
            }
            return;
        };
        let Some(at) = self
            .pending
            .iter()
            .position(|p| p.correlation_id == correlation_id)
        else {
            if let Some(i) = self.acks0.iter().position(|&id| id == correlation_id) {
                self.acks0.remove(i);
            } else {
                self.stats.unexpected_responses += 1;
            }
            return;
        };
        // Responses come in request order: older requests were not answered.
        self.stats.unpaired_requests += at as u64;
        self.pending.drain(..at);
        let Some(mut p) = self.pending.pop_front() else {
            return;
        };
        self.resp.synced = true;
        p.summary.start_response();
        let decoded = if apis::response_header_version(p.api_key, p.api_version) == 1 {
            r.tagged_fields(true)
        } else {
            Ok(())
        }
        .and_then(|()| body::response(p.api_key, p.api_version, &mut r, &mut p.summary));
        p.summary.finish();
        let cut_short = cut.lost && decoded.is_err();
        let complete = !cut_short && !p.summary.inexact_records;
        if p.api_key == apis::METADATA {
            self.learn_topic_ids(&p.summary.metadata_topics);
        }
        let x = self.exchange(p, u64::from(size) + 4, end_ns, complete);
        out.push(x);
    }

    fn learn_topic_ids(&mut self, topics: &[([u8; 16], String)]) {
        for (id, name) in topics {
            if let Some(known) = self.topic_names.iter_mut().find(|(k, _)| k == id) {
                known.1.clone_from(name);
            } else if self.topic_names.len() < MAX_KNOWN_TOPIC_IDS {
                self.topic_names.push((*id, name.clone()));
            }
        }
    }

    fn exchange(
        &self,
        p: Pending,
        response_bytes: u64,
        end_ns: u64,
        complete: bool,
    ) -> KafkaExchange {
        let error_code = p.summary.error_code();
        let mut topics = p.summary.topics;
        for t in topics.iter_mut().filter(|t| t.name.is_none()) {
            if let Some(id) = t.topic_id {
                t.name = self
                    .topic_names
                    .iter()
                    .find(|(k, _)| *k == id)
                    .map(|(_, n)| n.clone());
            }
        }
        KafkaExchange {
            api_key: p.api_key,
            api_name: apis::name(p.api_key),
            api_version: p.api_version,
            correlation_id: p.correlation_id,
            client_id: p.client_id,
            topics,
            acks: p.summary.acks,
            error_code,
            metadata_topics: p.summary.metadata_topics,
            start_ns: p.start_ns,
            end_ns: end_ns.max(p.start_ns),
            request_bytes: p.request_bytes,
            response_bytes,
            complete,
        }
    }
}

#[cfg(test)]
mod tests;
