//! HTTP/2 decoder (RFC 9113, cleartext `h2c` with prior knowledge or after an `Upgrade: h2c`
//! the HTTP/1 decoder hands over ([`Http2Decoder::after_upgrade`]), and the plaintext of TLS
//! `h2`): two captured byte streams of one connection in, one [`HttpExchange`] per stream out,
//! with the gRPC call it carried.
//!
//! # Model
//! Each direction is a frame reader (`frames.rs`: 9-byte headers, header-block payloads kept,
//! DATA payloads only counted) feeding an HPACK context (`hpack.rs`) and the stream table. The
//! client direction starts with the 24-byte preface. A header block (HEADERS or PUSH_PROMISE,
//! then CONTINUATIONs up to END_HEADERS) is assembled up to [`MAX_BLOCK_BYTES`] and decoded
//! when it ends: HPACK's dynamic table must see every block of its direction in order, so
//! every block is decoded, push promises and trailers included. `SETTINGS_HEADER_TABLE_SIZE`
//! from one side bounds the table of the other side's encoder.
//!
//! # Pairing
//! Streams pair themselves: a client HEADERS opens stream `n` (method, `:path`,
//! `:authority`, `content-type`, trace context, `grpc-timeout`), the server's HEADERS on `n`
//! give the status (interim 1xx skipped), a later server HEADERS are the trailers
//! (`grpc-status`), and the server's END_STREAM completes the exchange. A Trailers-Only
//! response (one HEADERS with END_STREAM) is both. At most [`MAX_STREAMS`] streams are open;
//! beyond it the oldest (lowest id) is dropped as unpaired.
//!
//! # Timing
//! As for HTTP/1: from `first_ns` of the chunk holding the first byte of the request's HEADERS
//! frame to `last_ns` of the chunk holding the last byte of the frame that ended the response
//! (END_STREAM, or the RST_STREAM that cut it).
//!
//! # Resets
//! `RST_STREAM` ends a stream. With a response head seen, the exchange is emitted incomplete;
//! before one, a gRPC call is emitted with the status the gRPC spec maps the reset to
//! (CANCEL → CANCELLED, or DEADLINE_EXCEEDED when the request's `grpc-timeout` had run out;
//! REFUSED_STREAM → UNAVAILABLE, ...) and status 0, since that is what its client saw; a plain
//! HTTP request is dropped as unpaired. `GOAWAY` drops the streams above its last stream id
//! (the server never processed them) as unpaired.
//!
//! # Gaps and connections adopted mid-stream
//! A capture gap inside a DATA payload is skipped by length (body counts stay exact). A gap
//! that cuts a header block, or hides a frame header (framing lost: `resyncs` +1), may have
//! taken HPACK insertions with it: that direction's dynamic table becomes unknown. The reader
//! resumes at the next chunk that starts with a chain of plausible frame headers; from then on
//! static-table and literal fields decode, and a field that refers to the unknown table is
//! never guessed: a request without a decoded `:method`/`:path` gets [`UNKNOWN_METHOD`] and an
//! empty path, a response without `:status` status 0 (`truncated_headers` +1 each). A
//! connection found already open starts that way on both sides, without the preface.
//!
//! # Errors
//! A client that does not start with the preface is [`NOT_HTTP2`]. A header block whose HPACK
//! is malformed (`hpack_*` reasons) cannot be followed further, nor can a frame that breaks the
//! protocol's structure (`bad_padding`, `continuation_expected`): both are
//! [`DecodeError::Malformed`].

use std::collections::BTreeMap;

use super::http::{GrpcCall, HttpExchange, HttpVersion, UNKNOWN_METHOD};
use super::text::capped_string;
pub use super::DecodeError;
use super::{route, Chunk, Decoder, DecoderStats, Sticky, Stream};

mod detect;
mod frames;
mod hpack;
mod streams;

pub use detect::{could_start, detect, joins_mid_stream, PREFACE};
use frames::{Outcome, Payload, Reader};
use hpack::Hpack;
use streams::{Side, StreamState};

/// Largest header block (HEADERS + CONTINUATION payloads) decoded; a larger one is skipped
/// and leaves its direction's HPACK table unknown.
pub const MAX_BLOCK_BYTES: usize = 64 * 1024;
/// Most streams open at once on one connection (servers allow 100–250 by default).
pub const MAX_STREAMS: usize = 1024;
const MAX_METHOD_CHARS: usize = 16;
const MAX_PATH_BYTES: usize = 256;
const MAX_HOST_BYTES: usize = 256;
const MAX_TRACEPARENT_BYTES: usize = 128;
const MAX_TRACESTATE_BYTES: usize = 512;
/// Streams remembered as reset (see `Http2Decoder::reset`).
const RECENT_RESETS: usize = 8;

/// The client did not start with the connection preface.
pub const NOT_HTTP2: DecodeError = DecodeError::NotProtocol("not_http2");

/// A header block being assembled across CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    first_ns: u64,
    /// A PUSH_PROMISE's block: decoded for the table, its fields unused.
    push: bool,
    /// Part of it was lost or it outgrew `MAX_BLOCK_BYTES`: not decodable.
    cut: bool,
    bytes: Vec<u8>,
}

/// One direction of the connection.
struct Dir {
    reader: Reader,
    hpack: Hpack,
    block: Option<Block>,
}

impl Dir {
    fn new(mid_stream: bool) -> Dir {
        Dir {
            reader: Reader::new(mid_stream),
            hpack: if mid_stream {
                Hpack::new_unknown()
            } else {
                Hpack::new()
            },
            block: None,
        }
    }

    /// A block of this direction was lost: later references to its table are unknown.
    fn forget_table(&mut self) {
        if !self.hpack.is_unknown() {
            let mut unknown = Hpack::new_unknown();
            unknown.set_limit(self.hpack.limit());
            self.hpack = unknown;
        }
    }
}

/// Decoder for one HTTP/2 connection. See the module docs.
pub struct Http2Decoder {
    sticky: Sticky,
    mid_stream: bool,
    /// Preface bytes the client still owes.
    preface_left: usize,
    req: Dir,
    resp: Dir,
    streams: BTreeMap<u32, StreamState>,
    stats: DecoderStats,
    /// The last streams ended by a reset: their peer's frames may still be on the way (the
    /// answer to a request its client cancelled), which is not an unexpected response; and
    /// the last responses counted as unexpected, whose trailers are not counted again.
    reset: [u32; RECENT_RESETS],
    reset_next: usize,
    /// Scratch of `feed`: the frames a chunk ended and their kept payloads.
    seen: Vec<Seen>,
    arena: Vec<u8>,
}

impl std::fmt::Debug for Http2Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Decoder")
            .field("mid_stream", &self.mid_stream)
            .field("preface_left", &self.preface_left)
            .field("open_streams", &self.streams.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Decoder for Http2Decoder {
    const PROTOCOL: &'static str = "http2";
    type Exchange = HttpExchange;

    fn start(mid_stream: bool) -> Self {
        Http2Decoder {
            sticky: Sticky::default(),
            mid_stream,
            preface_left: if mid_stream { 0 } else { PREFACE.len() },
            req: Dir::new(mid_stream),
            resp: Dir::new(mid_stream),
            streams: BTreeMap::new(),
            stats: DecoderStats::default(),
            reset: [0; RECENT_RESETS],
            reset_next: 0,
            seen: Vec::new(),
            arena: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<HttpExchange>) -> Result<(), DecodeError> {
        self.sticky.check()?;
        let result = self.feed_chunk(chunk, out);
        self.sticky.keep(result)
    }

    fn close(&mut self, ts_ns: u64, out: &mut Vec<HttpExchange>) {
        for (_, s) in std::mem::take(&mut self.streams) {
            match s.into_exchange(ts_ns, false) {
                Some(x) => out.push(x),
                None => self.stats.unpaired_requests += 1,
            }
        }
        let stats = self.stats;
        *self = Http2Decoder::start(self.mid_stream);
        self.stats = stats;
    }

    fn take_stats(&mut self) -> DecoderStats {
        std::mem::take(&mut self.stats)
    }

    fn heap_bytes(&self) -> usize {
        let dir = |d: &Dir| {
            d.reader.heap_bytes()
                + d.hpack.heap_bytes()
                + d.block.as_ref().map_or(0, |b| b.bytes.capacity())
        };
        dir(&self.req)
            + dir(&self.resp)
            + self.arena.capacity()
            + self.seen.capacity() * std::mem::size_of::<Seen>()
            + super::sampled_bytes(
                self.streams.values(),
                std::mem::size_of::<StreamState>() + 48,
                StreamState::heap_bytes,
            )
    }
}

/// The HTTP/1.1 request that asked for `Upgrade: h2c` and was answered `101`: it becomes
/// stream 1, half-closed from the client, whose response comes in HTTP/2 (RFC 7540 §3.2).
#[derive(Debug, Default)]
pub struct Upgrade {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub start_ns: u64,
    pub request_body_bytes: u64,
}

impl Http2Decoder {
    /// The decoder of a connection that switched to HTTP/2 after `upgrade`: both tables are
    /// known from here (HPACK starts afresh), the client owes the preface, and stream 1 waits
    /// for its response.
    pub fn after_upgrade(upgrade: Upgrade) -> Http2Decoder {
        let mut d = Http2Decoder::start(false);
        let fields = streams::Fields {
            method: Some(upgrade.method),
            path: Some(upgrade.path),
            authority: upgrade.host,
            traceparent: upgrade.traceparent,
            tracestate: upgrade.tracestate,
            ..streams::Fields::default()
        };
        let mut stream = StreamState::open(1, upgrade.start_ns, fields);
        stream.add_body(Side::Request, upgrade.request_body_bytes);
        d.streams.insert(1, stream);
        d
    }
}

impl Http2Decoder {
    fn feed_chunk(
        &mut self,
        chunk: &Chunk<'_>,
        out: &mut Vec<HttpExchange>,
    ) -> Result<(), DecodeError> {
        let mut bytes = chunk.bytes;
        let mut gap = chunk.gap();
        if chunk.stream == Stream::Request && self.preface_left > 0 {
            let at = PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(bytes.len());
            if bytes[..n] != PREFACE[at..at + n] {
                return Err(NOT_HTTP2);
            }
            self.preface_left -= n;
            bytes = &bytes[n..];
            if self.preface_left > 0 && gap > 0 {
                // The rest of the preface (and whatever followed) is in the gap.
                let skipped = gap.min(self.preface_left as u64);
                self.preface_left -= skipped as usize;
                gap -= skipped;
                if gap > 0 {
                    self.req.reader.lost = true;
                    self.stats.resyncs += 1;
                    self.req.forget_table();
                    return Ok(());
                }
            }
        }
        let dir = match chunk.stream {
            Stream::Request => &mut self.req,
            Stream::Response => &mut self.resp,
        };
        if dir.reader.lost {
            if chunk.stream == Stream::Request && bytes.starts_with(PREFACE) {
                // A connection taken for one joined late starts after all (TLS whose server
                // spoke first): its frames follow the preface, and the tables are complete
                // from here (an unknown table tracks every entry it sees inserted).
                bytes = &bytes[PREFACE.len()..];
                if bytes.is_empty() && gap == 0 {
                    dir.reader.lost = false;
                    return Ok(());
                }
            }
            if !frames::plausible_chain(bytes, bytes.len() as u64 + gap) {
                return Ok(());
            }
            dir.reader.lost = false;
            dir.block = None;
        }
        let mut arena = std::mem::take(&mut self.arena);
        arena.clear();
        let mut seen = std::mem::take(&mut self.seen);
        seen.clear();
        let outcome = dir
            .reader
            .read(bytes, gap, chunk.first_ns, chunk.last_ns, &mut |f| {
                let payload = match f.payload {
                    Payload::Whole(b) => {
                        let at = arena.len();
                        arena.extend_from_slice(b);
                        Kept::Whole(at..arena.len())
                    }
                    Payload::Counted(first) => Kept::Counted(first),
                    Payload::Cut => Kept::Cut,
                };
                seen.push(Seen {
                    header: f.header,
                    payload,
                    first_ns: f.first_ns,
                    last_ns: f.last_ns,
                });
            });
        let mut result = Ok(());
        for f in &seen {
            let payload = match &f.payload {
                Kept::Whole(range) => Payload::Whole(&arena[range.clone()]),
                Kept::Counted(first) => Payload::Counted(*first),
                Kept::Cut => Payload::Cut,
            };
            result = self.frame(chunk.stream, f, payload, out);
            if result.is_err() {
                break;
            }
        }
        if outcome == Outcome::Lost {
            self.stats.resyncs += 1;
            let dir = self.dir(chunk.stream);
            dir.block = None;
            dir.forget_table();
        }
        self.dir(chunk.stream).reader.shrink();
        self.arena = arena;
        self.seen = seen;
        result
    }

    fn dir(&mut self, stream: Stream) -> &mut Dir {
        match stream {
            Stream::Request => &mut self.req,
            Stream::Response => &mut self.resp,
        }
    }

    /// One whole frame of `stream`.
    fn frame(
        &mut self,
        stream: Stream,
        f: &Seen,
        payload: Payload<'_>,
        out: &mut Vec<HttpExchange>,
    ) -> Result<(), DecodeError> {
        let h = f.header;
        if self.dir(stream).block.is_some() && h.kind != frames::CONTINUATION {
            return Err(DecodeError::Malformed("continuation_expected"));
        }
        match h.kind {
            frames::HEADERS | frames::PUSH_PROMISE => {
                let push = h.kind == frames::PUSH_PROMISE;
                let (fragment, cut) = match payload {
                    Payload::Whole(p) => match header_fragment(&h, p) {
                        Some(fragment) => (fragment, false),
                        None => return Err(DecodeError::Malformed("bad_padding")),
                    },
                    _ => (&[][..], true),
                };
                let block = Block {
                    stream: h.stream,
                    end_stream: !push && h.has(frames::END_STREAM),
                    first_ns: f.first_ns,
                    push,
                    cut,
                    bytes: Vec::new(),
                };
                if h.has(frames::END_HEADERS) {
                    return self.block_done(stream, block, fragment, f.last_ns, out);
                }
                let mut block = block;
                block.bytes.extend_from_slice(fragment);
                self.dir(stream).block = Some(block);
            }
            frames::CONTINUATION => {
                let dir = self.dir(stream);
                let Some(mut block) = dir.block.take() else {
                    // Its HEADERS was lost with framing: nothing to add it to.
                    return Ok(());
                };
                if block.stream != h.stream {
                    return Err(DecodeError::Malformed("continuation_expected"));
                }
                match payload {
                    Payload::Whole(p) if block.bytes.len() + p.len() <= MAX_BLOCK_BYTES => {
                        block.bytes.extend_from_slice(p)
                    }
                    _ => {
                        block.cut = true;
                        block.bytes = Vec::new();
                    }
                }
                if h.has(frames::END_HEADERS) {
                    return self.block_done(stream, block, &[], f.last_ns, out);
                }
                self.dir(stream).block = Some(block);
            }
            frames::DATA => {
                let padding = match (h.has(frames::PADDED), payload) {
                    (false, _) => 0,
                    (true, Payload::Counted(Some(pad))) => 1 + u32::from(pad),
                    // The pad length was in a gap: the padding is rare enough to count as data.
                    (true, _) => 1,
                };
                let n = u64::from(h.len.saturating_sub(padding));
                let side = Side::of(stream);
                if let Some(s) = self.streams.get_mut(&h.stream) {
                    s.add_body(side, n);
                }
                if h.has(frames::END_STREAM) {
                    self.end_stream(stream, h.stream, f.last_ns, out);
                }
            }
            frames::RST_STREAM => {
                let code = match payload {
                    Payload::Whole(p) if p.len() >= 4 => {
                        Some(u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
                    }
                    _ => None,
                };
                self.reset[self.reset_next % RECENT_RESETS] = h.stream;
                self.reset_next += 1;
                if let Some(s) = self.streams.remove(&h.stream) {
                    match s.reset(code, f.last_ns) {
                        Some(x) => out.push(x),
                        None => self.stats.unpaired_requests += 1,
                    }
                }
            }
            frames::SETTINGS if !h.has(frames::ACK) => {
                if let Payload::Whole(p) = payload {
                    for setting in p.chunks_exact(6) {
                        let id = u16::from_be_bytes([setting[0], setting[1]]);
                        let value =
                            u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                        if id == SETTINGS_HEADER_TABLE_SIZE {
                            // It bounds the table of the other side's encoder.
                            self.dir(stream.other()).hpack.set_limit(value as usize);
                        }
                    }
                }
            }
            frames::GOAWAY if stream == Stream::Response => {
                if let Payload::Whole(p) = payload {
                    if p.len() >= 4 {
                        let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
                        let dropped = self.streams.split_off(&(last + 1));
                        self.stats.unpaired_requests += dropped.len() as u64;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A whole header block of `stream` (its last fragment in `tail`), ended by the frame that
    /// ended at `last_ns`.
    fn block_done(
        &mut self,
        stream: Stream,
        mut block: Block,
        tail: &[u8],
        last_ns: u64,
        out: &mut Vec<HttpExchange>,
    ) -> Result<(), DecodeError> {
        let bytes: &[u8] = if block.bytes.is_empty() {
            tail
        } else {
            block.bytes.extend_from_slice(tail);
            &block.bytes
        };
        let dir = self.dir(stream);
        let mut fields = streams::Fields::default();
        if block.cut || bytes.len() > MAX_BLOCK_BYTES {
            dir.forget_table();
            self.stats.truncated_headers += 1;
            fields.unknown = true;
        } else {
            let mut unknown = false;
            dir.hpack
                .decode(
                    bytes,
                    &mut |name, value| fields.take(name, value),
                    &mut || unknown = true,
                )
                .map_err(|e| DecodeError::Malformed(e.reason()))?;
            fields.unknown = unknown;
        }
        if block.push {
            return Ok(());
        }
        match stream {
            Stream::Request => self.request_headers(block.stream, block.first_ns, fields),
            Stream::Response => self.response_headers(block.stream, fields),
        }
        if block.end_stream {
            self.end_stream(stream, block.stream, last_ns, out);
        }
        Ok(())
    }

    fn request_headers(&mut self, id: u32, first_ns: u64, fields: streams::Fields) {
        if self.streams.contains_key(&id) {
            // Request trailers: nothing the exchange needs.
            return;
        }
        if fields.unknown && (fields.method.is_none() || fields.path.is_none()) {
            self.stats.truncated_headers += 1;
        }
        if self.streams.len() >= MAX_STREAMS {
            self.streams.pop_first();
            self.stats.unpaired_requests += 1;
        }
        self.streams
            .insert(id, StreamState::open(id, first_ns, fields));
    }

    fn response_headers(&mut self, id: u32, fields: streams::Fields) {
        let Some(s) = self.streams.get_mut(&id) else {
            // A pushed stream, a stream reset a moment ago, or a request lost with framing.
            if id % 2 == 1 && !self.reset.contains(&id) {
                self.stats.unexpected_responses += 1;
                // Its trailers are the same response: counted once.
                self.reset[self.reset_next % RECENT_RESETS] = id;
                self.reset_next += 1;
            }
            return;
        };
        if s.response_headers(fields) {
            self.stats.truncated_headers += 1;
        }
    }

    /// END_STREAM on `stream`'s side of stream `id`.
    fn end_stream(&mut self, stream: Stream, id: u32, last_ns: u64, out: &mut Vec<HttpExchange>) {
        // The request's end changes nothing: the response's end completes the exchange.
        if stream == Stream::Response {
            if let Some(s) = self.streams.remove(&id) {
                match s.into_exchange(last_ns, true) {
                    Some(x) => out.push(x),
                    None => self.stats.unpaired_requests += 1,
                }
            }
        }
    }
}

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;

/// A kept payload of the chunk being read, in the decoder's arena.
#[derive(Debug)]
enum Kept {
    Whole(std::ops::Range<usize>),
    Counted(Option<u8>),
    Cut,
}

/// A frame of the chunk being read.
#[derive(Debug)]
struct Seen {
    header: frames::Header,
    payload: Kept,
    first_ns: u64,
    last_ns: u64,
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload: without its pad length,
/// priority fields or promised stream id, and padding. None when the padding does not fit.
fn header_fragment<'a>(h: &frames::Header, p: &'a [u8]) -> Option<&'a [u8]> {
    let (pad, mut p) = if h.has(frames::PADDED) {
        let (&pad, rest) = p.split_first()?;
        (usize::from(pad), rest)
    } else {
        (0, p)
    };
    let skip = match h.kind {
        frames::HEADERS if h.has(frames::PRIORITY_FLAG) => 5,
        frames::PUSH_PROMISE => 4,
        _ => 0,
    };
    p = p.get(skip..)?;
    p.get(..p.len().checked_sub(pad)?)
}

impl Stream {
    fn other(self) -> Stream {
        match self {
            Stream::Request => Stream::Response,
            Stream::Response => Stream::Request,
        }
    }
}

#[cfg(test)]
mod tests;
