//! HTTP/1.x decoder: two captured byte streams of one connection in, request/response pairs out.
//!
//! # Model
//! Each stream (requests, responses) is a small state machine: `Start` (between messages) →
//! `Head` (start line + header fields) → `Body` (skipped by count) → `Start`. Only a head that is
//! split across chunks is copied (into a per-stream buffer capped at [`MAX_HEAD_BYTES`]); a head
//! that fits one chunk is parsed in place, and bodies are never buffered. Memory per decoder is
//! therefore bounded by two head buffers plus the pending queue ([`MAX_PENDING`] entries).
//!
//! A request enters the pending queue as soon as its head is complete (not when its body is), so
//! that a response that comes before the request body is finished (`100 Continue`, an early
//! `413`) still pairs with it. Each final response takes the oldest pending request; interim
//! `1xx` responses (except `101`) take nothing.
//!
//! # Gaps and resynchronisation
//! A chunk whose `len` exceeds its captured bytes ends in a gap. Inside a body of known length
//! (Content-Length, or chunk data) the gap is skipped by count and counted as body bytes. When
//! framing cannot survive the gap, the stream *resynchronises*: every later chunk is discarded
//! until one that begins with a message start ([`detect`]). Precisely:
//! - **Request head cut by a gap** (`truncated_headers` and `resyncs` both +1): the request is
//!   still queued, from whatever the captured prefix shows: method, path, host and trace headers
//!   when their lines were captured whole. If even the request line was cut, a placeholder with
//!   method [`UNKNOWN_METHOD`] and empty path and route is queued. Either way its response still
//!   pairs with it; its request body size is not known and reported as 0.
//! - **A request that starts inside a gap** (e.g. a pipelined request after a Content-Length body
//!   that ends in the gap): same placeholder, same counts.
//! - **Response head cut by a gap** (`truncated_headers`, `resyncs` +1): if the status line was
//!   captured, the response takes its request and is held, with its body running until the next
//!   chunk that begins with a status line, or until close; it is then emitted with
//!   `complete = true` and `end_ns` = `last_ns` of the last chunk before that status line (or
//!   before close). A held body's byte count includes every byte seen (framing unknown). If the
//!   status line itself was cut, the oldest pending request is dropped as unpaired.
//! - **A response that starts inside a gap**: the oldest pending request is dropped as unpaired.
//! - **Chunked body whose size lines fall in a gap** (`resyncs` +1): a response is held as above;
//!   a request body is abandoned (the request is already queued; its body count stays partial).
//!
//! # Errors
//! A start line that is not HTTP/1.x is [`DecodeError::NotHttp`] while nothing was decoded yet on
//! that stream, `Malformed("bad_request_line" | "bad_status_line")` afterwards. Framing that can
//! not be trusted (bad or conflicting Content-Length, bad chunk size, head over 16 KiB) is
//! [`DecodeError::Malformed`]. After an error the decoder stays failed: `feed` repeats the error.
//!
//! # Upgrades
//! `101 Switching Protocols`, or a `2xx` to `CONNECT`, completes the exchange and makes
//! [`Http1Decoder::upgraded`] true; later bytes are ignored. After a `CONNECT` request the
//! request stream ignores bytes (tunnel data may be sent optimistically) until the response.

use std::collections::VecDeque;

use super::{route, Chunk, Stream};

/// Largest head (start line + header fields + the empty line) accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most requests waiting for a response on one connection; beyond it the oldest is dropped.
pub const MAX_PENDING: usize = 256;
/// Method of a request whose request line was lost in a capture gap.
pub const UNKNOWN_METHOD: &str = "UNKNOWN";
/// Longest method token accepted; longer ones are not HTTP.
const MAX_METHOD_TOKEN: usize = 32;
/// Characters of the method kept in [`HttpExchange::method`].
const MAX_METHOD_CHARS: usize = 16;
const MAX_PATH_BYTES: usize = 256;
const MAX_HOST_BYTES: usize = 256;
/// W3C traceparent version 00 is 55 characters; later versions may append fields.
const MAX_TRACEPARENT_BYTES: usize = 128;
/// W3C tracestate is at most 32 members; 512 covers what propagators actually send.
const MAX_TRACESTATE_BYTES: usize = 512;
const MAX_CHUNK_EXT_BYTES: u32 = 4096;
const MAX_TRAILER_BYTES: u32 = MAX_HEAD_BYTES as u32;

/// One HTTP/1.x request/response pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    /// As sent, e.g. "GET"; non-standard tokens allowed, cut to 16 characters.
    /// [`UNKNOWN_METHOD`] when the request line was lost in a capture gap.
    pub method: String,
    /// Request-target path without query string or fragment, cut to 256 bytes. `*` for
    /// `OPTIONS *`, the `host:port` authority for `CONNECT`, empty when unknown.
    pub path: String,
    /// Low-cardinality template from [`route::template`]; empty for `CONNECT` and when the path
    /// is unknown.
    pub route: String,
    pub status: u16,
    /// `first_ns` of the chunk holding the first request byte.
    pub start_ns: u64,
    /// `last_ns` of the chunk holding the last response byte (see the module docs for responses
    /// cut by close or held across a resync).
    pub end_ns: u64,
    /// Body payload bytes (chunked framing excluded), including bytes skipped in gaps.
    pub request_body_bytes: u64,
    /// Body payload bytes (chunked framing excluded), including bytes skipped in gaps.
    pub response_body_bytes: u64,
    /// The authority of an absolute-form target, else the Host header.
    pub host: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// false when the connection closed before the response body was complete
    pub complete: bool,
}

/// Why a stream cannot be decoded as HTTP/1.x.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not HTTP/1.x")]
    NotHttp,
    #[error("malformed HTTP/1.x: {0}")]
    Malformed(&'static str),
}

impl DecodeError {
    /// Low-cardinality snake_case reason, fit for a metric label: "not_http",
    /// "bad_request_line", "bad_status_line", "bad_header", "bad_content_length",
    /// "conflicting_content_length", "bad_transfer_encoding", "bad_chunk_size", "bad_chunk_end",
    /// "headers_too_large", "trailers_too_large".
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::NotHttp => "not_http",
            DecodeError::Malformed(reason) => reason,
        }
    }
}

/// Non-fatal things the decoder noticed since the last call to take_stats.
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

/// Progress through a chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    /// Reading the hex chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: skipping extensions (and the CR) up to the line feed.
    Ext {
        value: u64,
        len: u32,
    },
    /// Chunk data left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    Trailer {
        line: u32,
        total: u32,
    },
}

impl Chunked {
    const START: Chunked = Chunked::Size {
        value: 0,
        digits: 0,
    };

    fn after_size(value: u64) -> Chunked {
        if value == 0 {
            Chunked::Trailer { line: 0, total: 0 }
        } else {
            Chunked::Data(value)
        }
    }

    /// Advances over `data`: (bytes consumed, payload bytes among them, body finished). When the
    /// body finishes, consumption stops right after it.
    fn step(&mut self, data: &[u8]) -> Result<(usize, u64, bool), DecodeError> {
        const BAD_SIZE: DecodeError = DecodeError::Malformed("bad_chunk_size");
        const BAD_END: DecodeError = DecodeError::Malformed("bad_chunk_end");
        let mut i = 0;
        let mut payload = 0u64;
        while i < data.len() {
            match *self {
                Chunked::Data(left) => {
                    let n = left.min((data.len() - i) as u64);
                    i += n as usize;
                    payload += n;
                    *self = if n == left {
                        Chunked::DataCr
                    } else {
                        Chunked::Data(left - n)
                    };
                }
                Chunked::DataCr => {
                    *self = match data[i] {
                        b'\r' => Chunked::DataLf,
                        b'\n' => Chunked::START,
                        _ => return Err(BAD_END),
                    };
                    i += 1;
                }
                Chunked::DataLf => {
                    if data[i] != b'\n' {
                        return Err(BAD_END);
                    }
                    *self = Chunked::START;
                    i += 1;
                }
                Chunked::Size { value, digits } => {
                    let c = data[i];
                    i += 1;
                    if let Some(d) = hex_value(c) {
                        if digits >= 16 {
                            return Err(BAD_SIZE);
                        }
                        *self = Chunked::Size {
                            value: value << 4 | u64::from(d),
                            digits: digits + 1,
                        };
                    } else if digits == 0 {
                        return Err(BAD_SIZE);
                    } else if c == b'\n' {
                        *self = Chunked::after_size(value);
                    } else if matches!(c, b';' | b' ' | b'\t' | b'\r') {
                        *self = Chunked::Ext { value, len: 1 };
                    } else {
                        return Err(BAD_SIZE);
                    }
                }
                Chunked::Ext { value, len } => {
                    let c = data[i];
                    i += 1;
                    if c == b'\n' {
                        *self = Chunked::after_size(value);
                    } else if len >= MAX_CHUNK_EXT_BYTES {
                        return Err(BAD_SIZE);
                    } else {
                        *self = Chunked::Ext {
                            value,
                            len: len + 1,
                        };
                    }
                }
                Chunked::Trailer { line, total } => {
                    let c = data[i];
                    i += 1;
                    match c {
                        b'\n' if line == 0 => return Ok((i, payload, true)),
                        b'\n' => *self = Chunked::Trailer { line: 0, total },
                        b'\r' => {}
                        _ if total >= MAX_TRAILER_BYTES => {
                            return Err(DecodeError::Malformed("trailers_too_large"))
                        }
                        _ => {
                            *self = Chunked::Trailer {
                                line: line + 1,
                                total: total + 1,
                            }
                        }
                    }
                }
            }
        }
        Ok((i, payload, false))
    }
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    /// Bytes left (never 0: an empty body is no body).
    Length(u64),
    Chunked(Chunked),
    /// Response without Content-Length or chunked: ends when the connection closes.
    UntilClose,
}

/// What a capture gap did to a body.
enum GapOutcome {
    /// The gap ended inside the body; framing is intact.
    Inside,
    /// The body ended inside the gap; `leftover` gap bytes follow it.
    Completed { leftover: u64 },
    /// The gap hid framing (chunk sizes): the body's end is unknown.
    Lost,
}

impl Body {
    /// Advances over captured bytes: (bytes consumed, payload bytes, body finished).
    fn step(&mut self, data: &[u8]) -> Result<(usize, u64, bool), DecodeError> {
        match self {
            Body::Length(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                Ok((n as usize, n, *left == 0))
            }
            Body::Chunked(state) => state.step(data),
            Body::UntilClose => Ok((data.len(), data.len() as u64, false)),
        }
    }

    /// Skips `gap` uncaptured bytes: (payload bytes, outcome).
    fn skip_gap(&mut self, gap: u64) -> (u64, GapOutcome) {
        match self {
            Body::Length(left) if gap < *left => {
                *left -= gap;
                (gap, GapOutcome::Inside)
            }
            Body::Length(left) => (
                *left,
                GapOutcome::Completed {
                    leftover: gap - *left,
                },
            ),
            Body::Chunked(Chunked::Data(left)) if gap <= *left => {
                let left = *left - gap;
                *self = Body::Chunked(if left == 0 {
                    Chunked::DataCr
                } else {
                    Chunked::Data(left)
                });
                (gap, GapOutcome::Inside)
            }
            Body::Chunked(_) => (gap, GapOutcome::Lost),
            Body::UntilClose => (gap, GapOutcome::Inside),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between messages (blank lines are skipped here).
    Start,
    /// Inside a head.
    Head,
    Body(Body),
    /// Framing lost: discard chunks until one begins with a message start.
    Resync,
    /// Request stream after CONNECT: tunnel bytes, ignored.
    Tunnel,
}

/// Where the end of a head was found.
enum HeadAt {
    /// The whole head is `data[..end]` of the current chunk.
    InPlace(usize),
    /// The head is complete in the stream's buffer; `consumed` bytes of this chunk were used.
    Buffered(usize),
    /// Not complete yet: all of the chunk went into the buffer.
    Partial,
}

/// One direction's framing state.
#[derive(Debug)]
struct Half {
    stream: Stream,
    state: State,
    /// A head that spans chunks, up to [`MAX_HEAD_BYTES`].
    head: Vec<u8>,
    /// Where to resume looking for the end of a buffered head.
    scan_from: usize,
    /// The start of the buffered head's first line was checked to look like HTTP.
    start_ok: bool,
    /// `first_ns` of the chunk holding the current message's first byte.
    first_ns: u64,
    /// A start line was decoded on this stream: later garbage is Malformed, not NotHttp.
    synced: bool,
}

impl Half {
    fn new(stream: Stream) -> Self {
        Half {
            stream,
            state: State::Start,
            head: Vec::new(),
            scan_from: 0,
            start_ok: false,
            first_ns: 0,
            synced: false,
        }
    }

    fn begin(&mut self, first_ns: u64) {
        self.state = State::Head;
        self.head.clear();
        self.scan_from = 0;
        self.start_ok = false;
        self.first_ns = first_ns;
    }

    fn start_line_error(&self) -> DecodeError {
        match (self.synced, self.stream) {
            (false, _) => DecodeError::NotHttp,
            (true, Stream::Request) => DecodeError::Malformed("bad_request_line"),
            (true, Stream::Response) => DecodeError::Malformed("bad_status_line"),
        }
    }

    /// Checks that the first bytes of a head can begin a start line, so that garbage fails
    /// fast instead of filling the head buffer.
    fn check_start(&mut self, first: &[u8]) -> Result<(), DecodeError> {
        if self.start_ok {
            return Ok(());
        }
        match start_prefix(self.stream, first) {
            Some(decided) => {
                self.start_ok = decided;
                Ok(())
            }
            None => Err(self.start_line_error()),
        }
    }

    /// Looks for the end of the current head in `data` (non-empty), continuing a buffered head.
    fn locate_head(&mut self, data: &[u8]) -> Result<HeadAt, DecodeError> {
        const TOO_LARGE: DecodeError = DecodeError::Malformed("headers_too_large");
        if self.head.is_empty() {
            let window = &data[..data.len().min(MAX_HEAD_BYTES)];
            self.check_start(window)?;
            return match find_head_end(window, 0) {
                Ok(end) => Ok(HeadAt::InPlace(end)),
                Err(_) if window.len() == MAX_HEAD_BYTES => Err(TOO_LARGE),
                Err(resume) => {
                    self.head.extend_from_slice(window);
                    self.scan_from = resume;
                    Ok(HeadAt::Partial)
                }
            };
        }
        let old = self.head.len();
        let take = data.len().min(MAX_HEAD_BYTES - old);
        self.head.extend_from_slice(&data[..take]);
        if !self.start_ok {
            match start_prefix(self.stream, &self.head) {
                Some(decided) => self.start_ok = decided,
                None => return Err(self.start_line_error()),
            }
        }
        match find_head_end(&self.head, self.scan_from) {
            Ok(end) => {
                self.head.truncate(end);
                Ok(HeadAt::Buffered(end - old))
            }
            Err(_) if self.head.len() == MAX_HEAD_BYTES => Err(TOO_LARGE),
            Err(resume) => {
                self.scan_from = resume;
                Ok(HeadAt::Partial)
            }
        }
    }
}

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    seq: u64,
    method: String,
    path: String,
    route: String,
    host: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    start_ns: u64,
    body_bytes: u64,
    head: bool,
    connect: bool,
}

/// The response being received (head done), or held across a resync.
#[derive(Debug)]
struct Current {
    /// None for an unexpected response: framed, then dropped.
    req: Option<Pending>,
    status: u16,
    body_bytes: u64,
    /// `last_ns` of the last chunk that carried bytes of this response.
    end_ns: u64,
}

/// Decoder for one connection. See the module docs for semantics.
#[derive(Debug)]
pub struct Http1Decoder {
    req: Half,
    resp: Half,
    pending: VecDeque<Pending>,
    cur: Option<Current>,
    /// The request whose body the request stream is reading, by sequence number.
    req_body_seq: Option<u64>,
    next_seq: u64,
    upgraded: bool,
    failed: Option<DecodeError>,
    stats: DecoderStats,
    /// The last path and its route: keep-alive connections mostly repeat a path, and the
    /// template is then not recomputed.
    last_route: Option<(String, String)>,
}

impl Default for Http1Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Http1Decoder {
    pub fn new() -> Self {
        Http1Decoder {
            req: Half::new(Stream::Request),
            resp: Half::new(Stream::Response),
            pending: VecDeque::new(),
            cur: None,
            req_body_seq: None,
            next_seq: 0,
            upgraded: false,
            failed: None,
            stats: DecoderStats::default(),
            last_route: None,
        }
    }

    /// Feed one syscall's bytes. Err means the stream is not HTTP/1 or broken beyond repair: the
    /// caller stops decoding the connection. Completed exchanges are pushed to `out`.
    pub fn feed(
        &mut self,
        chunk: &Chunk<'_>,
        out: &mut Vec<HttpExchange>,
    ) -> Result<(), DecodeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.upgraded {
            return Ok(());
        }
        let result = match chunk.stream {
            Stream::Request => self.feed_request(chunk),
            Stream::Response => self.feed_response(chunk, out),
        };
        if let Err(e) = result {
            self.failed = Some(e);
        }
        debug_assert!(self.req.head.len() <= MAX_HEAD_BYTES);
        debug_assert!(self.resp.head.len() <= MAX_HEAD_BYTES);
        debug_assert!(self.pending.len() <= MAX_PENDING);
        result
    }

    /// The connection closed at `ts_ns`: finish a read-until-close response (HTTP/1.0 style, no
    /// Content-Length, not chunked) as complete; a response cut mid-body is emitted with
    /// complete=false; requests with no response at all are counted as unpaired, not emitted.
    ///
    /// End times: a read-until-close or held response ends at the `last_ns` of its last chunk;
    /// a response cut mid-body at `max(ts_ns, last_ns of its last chunk)`. A response whose head
    /// was incomplete, and a request whose head was incomplete, count as unpaired. The decoder is
    /// then reset (stats are kept) and may be reused.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<HttpExchange>) {
        if self.failed.is_none() && !self.upgraded {
            match self.resp.state {
                State::Body(Body::UntilClose) | State::Resync => {
                    if let Some(cur) = self.cur.take() {
                        let end = cur.end_ns;
                        emit(cur, end, true, out);
                    }
                }
                State::Body(_) => {
                    if let Some(cur) = self.cur.take() {
                        let end = cur.end_ns.max(ts_ns);
                        emit(cur, end, false, out);
                    }
                }
                _ => {}
            }
            if self.req.state == State::Head {
                self.stats.unpaired_requests += 1;
            }
        }
        if self.cur.take().is_some_and(|c| c.req.is_some()) {
            self.stats.unpaired_requests += 1;
        }
        self.stats.unpaired_requests += self.pending.len() as u64;
        let stats = self.stats;
        *self = Self::new();
        self.stats = stats;
    }

    /// True after a 101 Switching Protocols (or a CONNECT 2xx): the caller stops decoding.
    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// Counters since the last call, reset.
    pub fn take_stats(&mut self) -> DecoderStats {
        std::mem::take(&mut self.stats)
    }

    fn feed_request(&mut self, c: &Chunk<'_>) -> Result<(), DecodeError> {
        let data = c.bytes;
        match self.req.state {
            State::Tunnel => return Ok(()),
            State::Resync if detect(data) == Some(Stream::Request) => self.req.state = State::Start,
            State::Resync => return Ok(()),
            _ => {}
        }
        let mut pos = 0;
        while pos < data.len() {
            match self.req.state {
                State::Tunnel | State::Resync => return Ok(()),
                State::Start => {
                    pos += skip_blank_lines(&data[pos..]);
                    if pos < data.len() {
                        self.req.begin(c.first_ns);
                    }
                }
                State::Head => match self.req.locate_head(&data[pos..])? {
                    HeadAt::InPlace(end) => {
                        self.request_head(&data[pos..pos + end], false)?;
                        pos += end;
                    }
                    HeadAt::Buffered(consumed) => {
                        let head = std::mem::take(&mut self.req.head);
                        let result = self.request_head(&head, false);
                        self.req.head = head;
                        self.req.head.clear();
                        result?;
                        pos += consumed;
                    }
                    HeadAt::Partial => pos = data.len(),
                },
                State::Body(mut body) => {
                    let (n, payload, done) = body.step(&data[pos..])?;
                    pos += n;
                    self.add_request_body(payload);
                    if done {
                        self.end_request_body();
                    } else {
                        self.req.state = State::Body(body);
                    }
                }
            }
        }
        let gap = c.gap();
        if gap > 0 {
            self.request_gap(gap, c)?;
        }
        Ok(())
    }

    /// Applies the gap at the end of a request chunk.
    fn request_gap(&mut self, mut gap: u64, c: &Chunk<'_>) -> Result<(), DecodeError> {
        loop {
            match self.req.state {
                State::Start => {
                    // A message starts in the gap: keep its place in the queue.
                    self.stats.truncated_headers += 1;
                    self.stats.resyncs += 1;
                    self.push_placeholder(c.first_ns);
                    self.req.state = State::Resync;
                    return Ok(());
                }
                State::Head => {
                    self.stats.truncated_headers += 1;
                    self.stats.resyncs += 1;
                    let head = std::mem::take(&mut self.req.head);
                    let result = self.request_head(&head, true);
                    self.req.head = head;
                    self.req.head.clear();
                    return result;
                }
                State::Body(mut body) => {
                    let (payload, outcome) = body.skip_gap(gap);
                    self.add_request_body(payload);
                    match outcome {
                        GapOutcome::Inside => {
                            self.req.state = State::Body(body);
                            return Ok(());
                        }
                        GapOutcome::Completed { leftover } => {
                            self.end_request_body();
                            if leftover == 0 {
                                return Ok(());
                            }
                            gap = leftover;
                        }
                        GapOutcome::Lost => {
                            self.stats.resyncs += 1;
                            self.req_body_seq = None;
                            self.req.state = State::Resync;
                            return Ok(());
                        }
                    }
                }
                State::Resync | State::Tunnel => return Ok(()),
            }
        }
    }

    /// A complete (or, when `truncated`, gap-cut) request head: queue the request and set up
    /// its body.
    fn request_head(&mut self, head: &[u8], truncated: bool) -> Result<(), DecodeError> {
        let (line, rest) = match split_line(head) {
            Some(split) => split,
            None => {
                // Only reachable when truncated: the request line itself was cut.
                self.push_placeholder(self.req.first_ns);
                self.req.state = State::Resync;
                return Ok(());
            }
        };
        let Some((method, target)) = parse_request_line(line) else {
            return Err(self.req.start_line_error());
        };
        self.req.synced = true;
        let fields = parse_fields(rest, !truncated)?;
        let connect = method == b"CONNECT";
        let body = if connect || truncated {
            None
        } else {
            match (fields.chunked, fields.content_length) {
                (Some(true), _) => Some(Body::Chunked(Chunked::START)),
                (Some(false), _) => return Err(DecodeError::Malformed("bad_transfer_encoding")),
                (None, Some(n)) if n > 0 => Some(Body::Length(n)),
                (None, _) => None,
            }
        };

        let (path, authority) = split_target(target, connect);
        let path = capped_string(path, MAX_PATH_BYTES);
        let route = if connect || path.is_empty() {
            String::new()
        } else {
            match &self.last_route {
                Some((last_path, route)) if *last_path == path => route.clone(),
                _ => {
                    let route = route::template(&path);
                    self.last_route = Some((path.clone(), route.clone()));
                    route
                }
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.push_pending(Pending {
            seq,
            method: capped_string(&method[..method.len().min(MAX_METHOD_CHARS)], usize::MAX),
            path,
            route,
            host: authority
                .or(fields.host)
                .map(|h| capped_string(h, MAX_HOST_BYTES)),
            traceparent: fields
                .traceparent
                .map(|v| capped_string(v, MAX_TRACEPARENT_BYTES)),
            tracestate: fields
                .tracestate
                .map(|v| capped_string(v, MAX_TRACESTATE_BYTES)),
            start_ns: self.req.first_ns,
            body_bytes: 0,
            head: method == b"HEAD",
            connect,
        });
        self.req.state = match body {
            _ if connect => State::Tunnel,
            _ if truncated => State::Resync,
            Some(body) => {
                self.req_body_seq = Some(seq);
                State::Body(body)
            }
            None => State::Start,
        };
        Ok(())
    }

    fn push_placeholder(&mut self, start_ns: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.push_pending(Pending {
            seq,
            method: UNKNOWN_METHOD.to_owned(),
            path: String::new(),
            route: String::new(),
            host: None,
            traceparent: None,
            tracestate: None,
            start_ns,
            body_bytes: 0,
            head: false,
            connect: false,
        });
    }

    fn push_pending(&mut self, p: Pending) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.stats.unpaired_requests += 1;
        }
        self.pending.push_back(p);
    }

    fn add_request_body(&mut self, n: u64) {
        let Some(seq) = self.req_body_seq else {
            return;
        };
        if let Some(p) = self.pending.back_mut().filter(|p| p.seq == seq) {
            p.body_bytes += n;
        } else if let Some(p) = self
            .cur
            .as_mut()
            .and_then(|c| c.req.as_mut())
            .filter(|p| p.seq == seq)
        {
            p.body_bytes += n;
        }
    }

    fn end_request_body(&mut self) {
        self.req_body_seq = None;
        self.req.state = State::Start;
    }

    fn feed_response(
        &mut self,
        c: &Chunk<'_>,
        out: &mut Vec<HttpExchange>,
    ) -> Result<(), DecodeError> {
        let data = c.bytes;
        match self.resp.state {
            State::Resync if detect(data) == Some(Stream::Response) => {
                // The held response (if any) ended with the previous chunk.
                if let Some(cur) = self.cur.take() {
                    let end = cur.end_ns;
                    emit(cur, end, true, out);
                }
                self.resp.state = State::Start;
            }
            State::Resync => {
                if let Some(cur) = self.cur.as_mut() {
                    cur.body_bytes += c.len.max(data.len() as u64);
                    cur.end_ns = c.last_ns;
                }
                return Ok(());
            }
            _ => {}
        }
        let mut pos = 0;
        while pos < data.len() {
            match self.resp.state {
                // Resync is only entered at the end of a chunk; Tunnel is request-only.
                State::Tunnel | State::Resync => return Ok(()),
                State::Start => {
                    pos += skip_blank_lines(&data[pos..]);
                    if pos < data.len() {
                        self.resp.begin(c.first_ns);
                    }
                }
                State::Head => {
                    match self.resp.locate_head(&data[pos..])? {
                        HeadAt::InPlace(end) => {
                            self.response_head(&data[pos..pos + end], c, false, out)?;
                            pos += end;
                        }
                        HeadAt::Buffered(consumed) => {
                            let head = std::mem::take(&mut self.resp.head);
                            let result = self.response_head(&head, c, false, out);
                            self.resp.head = head;
                            self.resp.head.clear();
                            result?;
                            pos += consumed;
                        }
                        HeadAt::Partial => pos = data.len(),
                    }
                    if self.upgraded {
                        return Ok(());
                    }
                }
                State::Body(mut body) => {
                    let (n, payload, done) = body.step(&data[pos..])?;
                    pos += n;
                    if let Some(cur) = self.cur.as_mut() {
                        cur.body_bytes += payload;
                        cur.end_ns = c.last_ns;
                    }
                    if done {
                        self.finish_response(out);
                    } else {
                        self.resp.state = State::Body(body);
                    }
                }
            }
        }
        let gap = c.gap();
        if gap > 0 {
            self.response_gap(gap, c, out)?;
        }
        Ok(())
    }

    /// Applies the gap at the end of a response chunk.
    fn response_gap(
        &mut self,
        mut gap: u64,
        c: &Chunk<'_>,
        out: &mut Vec<HttpExchange>,
    ) -> Result<(), DecodeError> {
        loop {
            match self.resp.state {
                State::Start => {
                    // A response starts in the gap; assume it answered the oldest request.
                    self.stats.truncated_headers += 1;
                    self.stats.resyncs += 1;
                    if self.pending.pop_front().is_some() {
                        self.stats.unpaired_requests += 1;
                    }
                    self.resp.state = State::Resync;
                    return Ok(());
                }
                State::Head => {
                    self.stats.truncated_headers += 1;
                    self.stats.resyncs += 1;
                    let head = std::mem::take(&mut self.resp.head);
                    let result = self.response_head(&head, c, true, out);
                    self.resp.head = head;
                    self.resp.head.clear();
                    return result;
                }
                State::Body(mut body) => {
                    let (payload, outcome) = body.skip_gap(gap);
                    if let Some(cur) = self.cur.as_mut() {
                        cur.body_bytes += payload;
                        cur.end_ns = c.last_ns;
                    }
                    match outcome {
                        GapOutcome::Inside => {
                            self.resp.state = State::Body(body);
                            return Ok(());
                        }
                        GapOutcome::Completed { leftover } => {
                            self.finish_response(out);
                            if leftover == 0 {
                                return Ok(());
                            }
                            gap = leftover;
                        }
                        GapOutcome::Lost => {
                            // Hold the response until the next status line or close.
                            self.stats.resyncs += 1;
                            self.resp.state = State::Resync;
                            return Ok(());
                        }
                    }
                }
                State::Resync | State::Tunnel => return Ok(()),
            }
        }
    }

    /// A complete (or, when `truncated`, gap-cut) response head.
    fn response_head(
        &mut self,
        head: &[u8],
        c: &Chunk<'_>,
        truncated: bool,
        out: &mut Vec<HttpExchange>,
    ) -> Result<(), DecodeError> {
        let after = if truncated {
            State::Resync
        } else {
            State::Start
        };
        let Some((line, rest)) = split_line(head) else {
            // Only reachable when truncated: the status line itself was cut.
            if self.pending.pop_front().is_some() {
                self.stats.unpaired_requests += 1;
            }
            self.resp.state = State::Resync;
            return Ok(());
        };
        let Some(status) = parse_status_line(line) else {
            return Err(self.resp.start_line_error());
        };
        self.resp.synced = true;
        let fields = parse_fields(rest, !truncated)?;
        if (100..200).contains(&status) && status != 101 {
            // Interim: the final response is still to come.
            self.resp.state = after;
            return Ok(());
        }
        let req = self.pending.pop_front();
        if req.is_none() {
            self.stats.unexpected_responses += 1;
        }
        let (head_req, connect) = req.as_ref().map_or((false, false), |p| (p.head, p.connect));
        let cur = Current {
            req,
            status,
            body_bytes: 0,
            end_ns: c.last_ns,
        };
        if status == 101 || (connect && (200..300).contains(&status)) {
            emit(cur, c.last_ns, true, out);
            self.upgraded = true;
            return Ok(());
        }
        if connect && self.req.state == State::Tunnel {
            // Refused tunnel: the connection stays HTTP.
            self.req.state = State::Start;
        }
        if head_req || status == 204 || status == 304 {
            emit(cur, c.last_ns, true, out);
            self.resp.state = after;
            return Ok(());
        }
        if truncated {
            self.cur = Some(cur);
            self.resp.state = State::Resync;
            return Ok(());
        }
        let body = match (fields.chunked, fields.content_length) {
            (Some(true), _) => Body::Chunked(Chunked::START),
            (Some(false), _) => Body::UntilClose,
            (None, Some(0)) => {
                emit(cur, c.last_ns, true, out);
                self.resp.state = State::Start;
                return Ok(());
            }
            (None, Some(n)) => Body::Length(n),
            (None, None) => Body::UntilClose,
        };
        self.cur = Some(cur);
        self.resp.state = State::Body(body);
        Ok(())
    }

    fn finish_response(&mut self, out: &mut Vec<HttpExchange>) {
        if let Some(cur) = self.cur.take() {
            let end = cur.end_ns;
            emit(cur, end, true, out);
        }
        self.resp.state = State::Start;
    }
}

/// Turns a finished response into an exchange, if it had a request.
fn emit(cur: Current, end_ns: u64, complete: bool, out: &mut Vec<HttpExchange>) {
    let Some(p) = cur.req else {
        return;
    };
    out.push(HttpExchange {
        method: p.method,
        path: p.path,
        route: p.route,
        status: cur.status,
        start_ns: p.start_ns,
        end_ns,
        request_body_bytes: p.body_bytes,
        response_body_bytes: cur.body_bytes,
        host: p.host,
        traceparent: p.traceparent,
        tracestate: p.tracestate,
        complete,
    });
}

/// Cheap protocol detection on the first bytes seen on a connection: Some(Stream::Request) if they
/// start an HTTP/1.x request line (known method token + space), Some(Stream::Response) if they start
/// "HTTP/1.", else None. Must be fast and must not need more than ~16 bytes.
pub fn detect(bytes: &[u8]) -> Option<Stream> {
    // Standard methods, then the common WebDAV ones.
    const METHODS: [&[u8]; 16] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
        b"PROPFIND ",
        b"PROPPATCH ",
        b"MKCOL ",
        b"COPY ",
        b"MOVE ",
        b"LOCK ",
        b"UNLOCK ",
    ];
    match bytes.first()? {
        b'H' if bytes.starts_with(b"HTTP/1.") => Some(Stream::Response),
        b'A'..=b'Z' => METHODS
            .iter()
            .any(|m| bytes.starts_with(m))
            .then_some(Stream::Request),
        _ => None,
    }
}

/// Whether the first bytes of a head can begin a start line: Some(true) decided yes,
/// Some(false) undecided so far (too few bytes), None no.
fn start_prefix(stream: Stream, first: &[u8]) -> Option<bool> {
    match stream {
        Stream::Request => {
            // method token, then a space, within MAX_METHOD_TOKEN + 1 bytes.
            for (i, &b) in first.iter().take(MAX_METHOD_TOKEN + 1).enumerate() {
                if b == b' ' {
                    return (i > 0).then_some(true);
                }
                if !is_tchar(b) {
                    return None;
                }
            }
            (first.len() <= MAX_METHOD_TOKEN).then_some(false)
        }
        Stream::Response => {
            const PREFIX: &[u8] = b"HTTP/1.";
            let n = first.len().min(PREFIX.len());
            (first[..n] == PREFIX[..n]).then_some(n == PREFIX.len())
        }
    }
}

/// Finds the end of a head: Ok(index just past its empty line), or Err(where to resume).
fn find_head_end(b: &[u8], from: usize) -> Result<usize, usize> {
    let mut i = from;
    while let Some(off) = find_byte(&b[i..], b'\n') {
        let nl = i + off;
        match b.get(nl + 1) {
            None => return Err(nl),
            Some(b'\n') => return Ok(nl + 2),
            Some(b'\r') => match b.get(nl + 2) {
                None => return Err(nl),
                Some(b'\n') => return Ok(nl + 3),
                Some(_) => {}
            },
            Some(_) => {}
        }
        i = nl + 1;
    }
    Err(b.len())
}

/// Leading CR/LF bytes between messages (RFC 9112 §2.2 tolerates empty lines there).
fn skip_blank_lines(b: &[u8]) -> usize {
    b.iter().take_while(|&&c| c == b'\r' || c == b'\n').count()
}

/// The first line (without its line ending) and the rest, if the line is complete.
fn split_line(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nl = find_byte(b, b'\n')?;
    Some((strip_cr(&b[..nl]), &b[nl + 1..]))
}

/// Position of the first `needle` in `hay`, eight bytes at a time: heads are scanned for line
/// feeds on every request, and a byte loop was the decoder's top cost.
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut words = hay.chunks_exact(8);
    let mut offset = 0;
    for word in words.by_ref() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes) ^ pattern;
        // Flags bytes of x that are zero; the lowest flag is always exact (little-endian).
        let zero = x.wrapping_sub(LO) & !x & HI;
        if zero != 0 {
            return Some(offset + (zero.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| c == needle)
        .map(|i| offset + i)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// `method SP request-target SP HTTP/1.x` → (method, target).
fn parse_request_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let sp1 = line.iter().position(|&c| c == b' ')?;
    let sp2 = line.iter().rposition(|&c| c == b' ')?;
    if sp2 <= sp1 {
        return None;
    }
    let method = &line[..sp1];
    if method.is_empty() || method.len() > MAX_METHOD_TOKEN || !method.iter().all(|&c| is_tchar(c))
    {
        return None;
    }
    if !is_version(&line[sp2 + 1..]) {
        return None;
    }
    let target = trim(&line[sp1 + 1..sp2]);
    if target.is_empty() || target.iter().any(|&c| c < 0x20 || c == 0x7f) {
        return None;
    }
    Some((method, target))
}

/// `HTTP/1.x SP 3DIGIT [SP reason]` → status.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    if line.len() < 12 || !is_version(&line[..8]) || line[8] != b' ' {
        return None;
    }
    if line.len() > 12 && line[12] != b' ' {
        return None;
    }
    let mut status = 0u16;
    for &c in &line[9..12] {
        if !c.is_ascii_digit() {
            return None;
        }
        status = status * 10 + u16::from(c - b'0');
    }
    (status >= 100).then_some(status)
}

fn is_version(v: &[u8]) -> bool {
    v.len() == 8 && v.starts_with(b"HTTP/1.") && v[7].is_ascii_digit()
}

/// (path without query or fragment, authority if the target carries one).
fn split_target(target: &[u8], connect: bool) -> (&[u8], Option<&[u8]>) {
    if connect {
        return (target, Some(target));
    }
    let cut = |b: &'_ [u8]| -> usize {
        b.iter()
            .position(|&c| c == b'?' || c == b'#')
            .unwrap_or(b.len())
    };
    if target.first() == Some(&b'/') || target == b"*" {
        return (&target[..cut(target)], None);
    }
    // absolute-form: scheme "://" authority [path]
    if let Some(i) = target.windows(3).position(|w| w == b"://") {
        let after = &target[i + 3..];
        let auth_end = after
            .iter()
            .position(|&c| c == b'/' || c == b'?' || c == b'#')
            .unwrap_or(after.len());
        let rest = &after[auth_end..];
        let path = &rest[..cut(rest)];
        let authority = &after[..auth_end];
        let path: &[u8] = if path.is_empty() { b"/" } else { path };
        return (path, (!authority.is_empty()).then_some(authority));
    }
    (&target[..cut(target)], None)
}

/// The header fields the decoder needs.
#[derive(Default)]
struct Fields<'a> {
    host: Option<&'a [u8]>,
    traceparent: Option<&'a [u8]>,
    tracestate: Option<&'a [u8]>,
    content_length: Option<u64>,
    /// Some(whether the final transfer coding is chunked) when Transfer-Encoding was present.
    chunked: Option<bool>,
}

/// Parses header field lines up to the empty line (or, for a truncated head, the last complete
/// line). `framing` false skips Content-Length/Transfer-Encoding (a truncated head's framing is
/// not used).
fn parse_fields(mut block: &[u8], framing: bool) -> Result<Fields<'_>, DecodeError> {
    const BAD: DecodeError = DecodeError::Malformed("bad_header");
    let mut f = Fields::default();
    while let Some((line, rest)) = split_line(block) {
        block = rest;
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // obs-fold continuation of the previous field: none of ours are folded in practice.
            continue;
        }
        // One pass over the name: find the colon, checking token characters on the way.
        let mut colon = 0;
        loop {
            match line.get(colon) {
                Some(b':') if colon > 0 => break,
                Some(&c) if is_tchar(c) => colon += 1,
                _ => return Err(BAD),
            }
        }
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        // Dispatch on length first: most fields are none of ours.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => f.host = Some(value),
            10 if name.eq_ignore_ascii_case(b"tracestate") => f.tracestate = Some(value),
            11 if name.eq_ignore_ascii_case(b"traceparent") => f.traceparent = Some(value),
            14 if framing && name.eq_ignore_ascii_case(b"content-length") => {
                for item in value.split(|&c| c == b',') {
                    let n = parse_decimal(trim(item))
                        .ok_or(DecodeError::Malformed("bad_content_length"))?;
                    if f.content_length.is_some_and(|old| old != n) {
                        return Err(DecodeError::Malformed("conflicting_content_length"));
                    }
                    f.content_length = Some(n);
                }
            }
            17 if framing && name.eq_ignore_ascii_case(b"transfer-encoding") => {
                let last = value.rsplit(|&c| c == b',').next().map(trim);
                f.chunked = Some(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
            }
            _ => {}
        }
    }
    Ok(f)
}

fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 9110 token character.
fn is_tchar(c: u8) -> bool {
    TCHAR[usize::from(c)]
}

const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        c += 1;
    }
    table
};

/// At most `max` bytes as a String, cut at a character boundary; invalid UTF-8 is replaced.
fn capped_string(b: &[u8], max: usize) -> String {
    let b = &b[..b.len().min(max)];
    let mut s = match std::str::from_utf8(b) {
        Ok(s) => return s.to_owned(),
        // The cut fell inside a character: drop the partial character.
        Err(e) if e.error_len().is_none() => {
            return String::from_utf8_lossy(&b[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    };
    // Replacement characters take 3 bytes where the invalid byte took 1: cut again.
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a decoder with synthetic timestamps: chunk number `t` has `first_ns = 10 t` and
    /// `last_ns = 10 t + 5`.
    struct Conn {
        dec: Http1Decoder,
        out: Vec<HttpExchange>,
        t: u64,
    }

    impl Conn {
        fn new() -> Self {
            Conn {
                dec: Http1Decoder::new(),
                out: Vec::new(),
                t: 0,
            }
        }

        fn feed(&mut self, stream: Stream, bytes: &[u8], gap: u64) -> Result<(), DecodeError> {
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

        fn req(&mut self, bytes: &[u8]) -> &mut Self {
            self.feed(Stream::Request, bytes, 0)
                .expect("request decodes");
            self
        }

        fn resp(&mut self, bytes: &[u8]) -> &mut Self {
            self.feed(Stream::Response, bytes, 0)
                .expect("response decodes");
            self
        }

        fn req_gap(&mut self, bytes: &[u8], gap: u64) -> &mut Self {
            self.feed(Stream::Request, bytes, gap)
                .expect("request decodes");
            self
        }

        fn resp_gap(&mut self, bytes: &[u8], gap: u64) -> &mut Self {
            self.feed(Stream::Response, bytes, gap)
                .expect("response decodes");
            self
        }

        fn close(&mut self) -> &mut Self {
            self.t += 1;
            self.dec.close(self.t * 10, &mut self.out);
            self
        }

        fn take(&mut self) -> Vec<HttpExchange> {
            std::mem::take(&mut self.out)
        }
    }

    /// Compact view of an exchange, without timestamps.
    fn line(x: &HttpExchange) -> String {
        format!(
            "{} {} {} {} req_body={} resp_body={} complete={}",
            x.method,
            x.path,
            x.route,
            x.status,
            x.request_body_bytes,
            x.response_body_bytes,
            x.complete
        )
    }

    fn lines(xs: &[HttpExchange]) -> Vec<String> {
        xs.iter().map(line).collect()
    }

    const GET_A: &[u8] = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n";
    const OK_5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn keep_alive_pairs_in_order_with_timestamps() {
        let mut c = Conn::new();
        c.req(GET_A).resp(OK_5);
        c.req(b"GET /b?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .resp(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            [
                "GET /a /a 200 req_body=0 resp_body=5 complete=true",
                "GET /b /b 404 req_body=0 resp_body=0 complete=true"
            ]
        );
        assert_eq!((xs[0].start_ns, xs[0].end_ns), (10, 25));
        assert_eq!((xs[1].start_ns, xs[1].end_ns), (30, 45));
        assert_eq!(xs[0].host.as_deref(), Some("example.com"));
        c.close();
        assert!(c.take().is_empty());
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let mut c = Conn::new();
        c.req(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nPOST /3 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /4 HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nyy");
        c.resp(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nzzz");
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            [
                "GET /1 /{id} 200 req_body=0 resp_body=1 complete=true",
                "GET /2 /{id} 201 req_body=0 resp_body=2 complete=true",
                "POST /3 /{id} 202 req_body=3 resp_body=0 complete=true",
                "GET /4 /{id} 500 req_body=0 resp_body=3 complete=true",
            ]
        );
        // All requests came in one chunk; responses in two.
        assert!(xs.iter().all(|x| x.start_ns == 10));
        assert_eq!(
            xs.iter().map(|x| x.end_ns).collect::<Vec<_>>(),
            [25, 25, 35, 35]
        );
    }

    #[test]
    fn content_length_and_chunked_bodies_both_ways() {
        let mut c = Conn::new();
        c.req(b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Trailer: t\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n");
        c.req(b"PUT /p HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(
            lines(&c.take()),
            [
                "POST /up /up 200 req_body=7 resp_body=10 complete=true",
                "PUT /p /p 200 req_body=10 resp_body=2 complete=true",
            ]
        );
    }

    #[test]
    fn chunked_with_bare_lf_and_uppercase_hex() {
        let mut c = Conn::new();
        c.req(GET_A);
        c.resp(b"HTTP/1.1 200 OK\nTransfer-Encoding: Chunked\n\n1F\nabcdefghijklmnopqrstuvwxyz01234\n0\n\n");
        assert_eq!(
            lines(&c.take()),
            ["GET /a /a 200 req_body=0 resp_body=31 complete=true"]
        );
    }

    #[test]
    fn head_204_304_have_no_body_whatever_the_headers_say() {
        let mut c = Conn::new();
        c.req(b"HEAD /h HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /m HTTP/1.1\r\n\r\nGET /z HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nTransfer-Encoding: chunked\r\n\r\n");
        c.resp(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n");
        c.resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n");
        c.resp(OK_5);
        assert_eq!(
            lines(&c.take()),
            [
                "HEAD /h /h 200 req_body=0 resp_body=0 complete=true",
                "GET /n /n 204 req_body=0 resp_body=0 complete=true",
                "GET /m /m 304 req_body=0 resp_body=0 complete=true",
                "GET /z /z 200 req_body=0 resp_body=5 complete=true",
            ]
        );
    }

    #[test]
    fn continue_does_not_complete_the_exchange() {
        let mut c = Conn::new();
        c.req(b"POST /u HTTP/1.1\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n");
        c.resp(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(c.out.is_empty());
        c.req(b"abc").req(b"def");
        c.resp(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["POST /u /u 201 req_body=6 resp_body=0 complete=true"]
        );
        assert_eq!((xs[0].start_ns, xs[0].end_ns), (10, 55));
        assert!(!c.dec.upgraded());
    }

    #[test]
    fn early_response_pairs_before_request_body_ends() {
        let mut c = Conn::new();
        c.req(b"POST /big HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789");
        c.resp(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        c.req(b"rest of the body is dropped");
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["POST /big /big 413 req_body=10 resp_body=0 complete=true"]
        );
    }

    #[test]
    fn switching_protocols_completes_and_upgrades() {
        let mut c = Conn::new();
        c.req(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        c.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
        assert!(c.dec.upgraded());
        c.req(b"\x81\x85garbage that is not HTTP");
        c.resp(b"\x00\x01\x02");
        assert_eq!(
            lines(&c.take()),
            ["GET /ws /ws 101 req_body=0 resp_body=0 complete=true"]
        );
    }

    #[test]
    fn connect_tunnel() {
        let mut c = Conn::new();
        // Tunnel bytes may follow the CONNECT before the proxy answers.
        c.req(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01\x00");
        c.resp(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03");
        assert!(c.dec.upgraded());
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["CONNECT example.com:443  200 req_body=0 resp_body=0 complete=true"]
        );
        assert_eq!(xs[0].host.as_deref(), Some("example.com:443"));

        // A refused CONNECT leaves the connection in HTTP.
        let mut c = Conn::new();
        c.req(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n");
        c.resp(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n");
        assert!(!c.dec.upgraded());
        c.req(GET_A).resp(OK_5);
        assert_eq!(
            lines(&c.take()),
            [
                "CONNECT example.com:443  407 req_body=0 resp_body=0 complete=true",
                "GET /a /a 200 req_body=0 resp_body=5 complete=true",
            ]
        );
    }

    #[test]
    fn read_until_close_is_complete_at_close() {
        let mut c = Conn::new();
        c.req(b"GET /old HTTP/1.0\r\n\r\n");
        c.resp(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome");
        c.resp(b" more");
        assert!(c.out.is_empty());
        c.close();
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["GET /old /old 200 req_body=0 resp_body=9 complete=true"]
        );
        // Ends with the last response byte, not at close.
        assert_eq!((xs[0].start_ns, xs[0].end_ns), (10, 35));
    }

    #[test]
    fn unknown_transfer_coding_on_a_response_reads_until_close() {
        let mut c = Conn::new();
        c.req(GET_A);
        c.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc");
        c.close();
        assert_eq!(
            lines(&c.take()),
            ["GET /a /a 200 req_body=0 resp_body=3 complete=true"]
        );
    }

    #[test]
    fn response_cut_mid_body_is_incomplete() {
        let mut c = Conn::new();
        c.req(GET_A);
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal");
        c.close();
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["GET /a /a 200 req_body=0 resp_body=3 complete=false"]
        );
        assert_eq!(xs[0].end_ns, 30, "cut responses end at close");

        let mut c = Conn::new();
        c.req(GET_A);
        c.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab");
        c.close();
        assert_eq!(
            lines(&c.take()),
            ["GET /a /a 200 req_body=0 resp_body=2 complete=false"]
        );
    }

    #[test]
    fn unpaired_and_unexpected_are_counted_not_emitted() {
        let mut c = Conn::new();
        c.resp(OK_5);
        c.req(GET_A).req(GET_A);
        c.resp(OK_5);
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Le"); // head cut by close
        c.req(b"GET /partial HTTP/1.1\r\n");
        c.close();
        assert_eq!(c.take().len(), 1);
        assert_eq!(
            c.dec.take_stats(),
            DecoderStats {
                unexpected_responses: 1,
                unpaired_requests: 2,
                ..Default::default()
            }
        );
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn pending_queue_overflow_drops_oldest() {
        let mut c = Conn::new();
        for i in 0..MAX_PENDING + 3 {
            c.req(format!("GET /r{i} HTTP/1.1\r\n\r\n").as_bytes());
        }
        c.resp(OK_5);
        let xs = c.take();
        assert_eq!(xs[0].path, "/r3");
        assert_eq!(c.dec.take_stats().unpaired_requests, 3);
    }

    /// A conversation exercising most framing: keep-alive, chunked with extensions and
    /// trailers, HEAD, 100-continue, pipelining, query strings.
    const CONV_REQ: &[u8] = b"GET /users/42?x=1 HTTP/1.1\r\nHost: h\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n\
POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3;a=b\r\nabc\r\n0\r\nT: v\r\n\r\n\
HEAD /h HTTP/1.1\r\n\r\n\
\r\nPUT /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nwxyz\
GET /last HTTP/1.0\r\n\r\n";
    const CONV_RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.0 200 OK\r\n\r\nuntil close";
    const CONV_LINES: [&str; 5] = [
        "GET /users/42 /users/{id} 200 req_body=0 resp_body=3 complete=true",
        "POST /up /up 201 req_body=3 resp_body=18 complete=true",
        "HEAD /h /h 200 req_body=0 resp_body=0 complete=true",
        "PUT /p /p 204 req_body=4 resp_body=0 complete=true",
        "GET /last /last 200 req_body=0 resp_body=11 complete=true",
    ];

    /// Feeds all request pieces, then all response pieces, then closes.
    fn run_pieces(req: &[&[u8]], resp: &[&[u8]]) -> (Vec<String>, DecoderStats) {
        let mut c = Conn::new();
        for p in req {
            c.req(p);
        }
        for p in resp {
            c.resp(p);
        }
        c.close();
        (lines(&c.take()), c.dec.take_stats())
    }

    #[test]
    fn conversation_in_one_chunk_each() {
        let (got, stats) = run_pieces(&[CONV_REQ], &[CONV_RESP]);
        assert_eq!(got, CONV_LINES);
        assert_eq!(stats, DecoderStats::default());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        for k in 0..=CONV_REQ.len() {
            let (a, b) = CONV_REQ.split_at(k);
            let (got, stats) = run_pieces(&[a, b], &[CONV_RESP]);
            assert_eq!(got, CONV_LINES, "request split at {k}");
            assert_eq!(stats, DecoderStats::default(), "request split at {k}");
        }
        for k in 0..=CONV_RESP.len() {
            let (a, b) = CONV_RESP.split_at(k);
            let (got, stats) = run_pieces(&[CONV_REQ], &[a, b]);
            assert_eq!(got, CONV_LINES, "response split at {k}");
            assert_eq!(stats, DecoderStats::default(), "response split at {k}");
        }
    }

    #[test]
    fn split_at_every_pair_of_boundaries() {
        let req = b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nab";
        let resp =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;e\r\nx\r\n0\r\nT: 1\r\n\r\n";
        let want = ["POST /x /x 200 req_body=2 resp_body=1 complete=true"];
        for i in 0..=req.len() {
            for j in i..=req.len() {
                let (got, _) = run_pieces(&[&req[..i], &req[i..j], &req[j..]], &[resp]);
                assert_eq!(got, want, "request split at {i},{j}");
            }
        }
        for i in 0..=resp.len() {
            for j in i..=resp.len() {
                let (got, _) = run_pieces(&[req], &[&resp[..i], &resp[i..j], &resp[j..]]);
                assert_eq!(got, want, "response split at {i},{j}");
            }
        }
    }

    #[test]
    fn one_byte_chunks() {
        let req: Vec<&[u8]> = CONV_REQ.chunks(1).collect();
        let resp: Vec<&[u8]> = CONV_RESP.chunks(1).collect();
        assert_eq!(run_pieces(&req, &resp).0, CONV_LINES);
    }

    #[test]
    fn start_is_the_chunk_of_the_first_byte_and_end_of_the_last() {
        let mut c = Conn::new();
        c.req(b"GET /a HT")
            .req(b"TP/1.1\r\nHost: x\r")
            .req(b"\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe")
            .resp(b"llo");
        let xs = c.take();
        assert_eq!((xs[0].start_ns, xs[0].end_ns), (10, 55));
    }

    #[test]
    fn gap_inside_a_content_length_body_is_skipped_by_length() {
        let mut c = Conn::new();
        c.req_gap(
            b"POST /u HTTP/1.1\r\nContent-Length: 10000\r\n\r\n0123",
            9996,
        );
        c.req(GET_A);
        c.resp_gap(
            b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\nabc",
            30000,
        );
        c.resp_gap(b"abc", 39994);
        c.resp(OK_5);
        assert_eq!(
            lines(&c.take()),
            [
                "POST /u /u 200 req_body=10000 resp_body=70000 complete=true",
                "GET /a /a 200 req_body=0 resp_body=5 complete=true",
            ]
        );
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn gap_inside_chunk_data_is_skipped() {
        let mut c = Conn::new();
        c.req(GET_A);
        c.resp_gap(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nab",
            254,
        );
        c.resp(b"\r\n0\r\n\r\n");
        assert_eq!(
            lines(&c.take()),
            ["GET /a /a 200 req_body=0 resp_body=256 complete=true"]
        );
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn message_starting_in_a_gap_keeps_pairing() {
        // The second pipelined request starts in the gap of the first's body.
        let mut c = Conn::new();
        c.req_gap(b"POST /u HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", 30);
        c.req(b"Host: x\r\n\r\n"); // rest of the lost request: discarded (resync)
        c.req(b"GET /third HTTP/1.1\r\n\r\n");
        c.resp(OK_5).resp(OK_5).resp(OK_5);
        assert_eq!(
            lines(&c.take()),
            [
                "POST /u /u 200 req_body=4 resp_body=5 complete=true",
                "UNKNOWN   200 req_body=0 resp_body=5 complete=true",
                "GET /third /third 200 req_body=0 resp_body=5 complete=true",
            ]
        );
        assert_eq!(
            c.dec.take_stats(),
            DecoderStats {
                resyncs: 1,
                truncated_headers: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn truncated_request_head_keeps_what_was_captured() {
        let mut c = Conn::new();
        c.req_gap(b"GET /big/7?q HTTP/1.1\r\nHost: h\r\nCookie: aaaa", 9000);
        c.req(b"aaaaaaa\r\n\r\n"); // continuation: discarded until a request line
        c.req(b"GET /next HTTP/1.1\r\n\r\n");
        c.resp(OK_5).resp(OK_5);
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            [
                "GET /big/7 /big/{id} 200 req_body=0 resp_body=5 complete=true",
                "GET /next /next 200 req_body=0 resp_body=5 complete=true",
            ]
        );
        assert_eq!(xs[0].host.as_deref(), Some("h"));
        assert_eq!(
            c.dec.take_stats(),
            DecoderStats {
                resyncs: 1,
                truncated_headers: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn truncated_request_line_becomes_unknown() {
        let mut c = Conn::new();
        c.req_gap(b"GET /aaaa", 100);
        c.resp(OK_5);
        assert_eq!(
            lines(&c.take()),
            ["UNKNOWN   200 req_body=0 resp_body=5 complete=true"]
        );
    }

    #[test]
    fn truncated_response_head_is_held_until_the_next_status_line() {
        let mut c = Conn::new();
        c.req(GET_A).req(GET_A);
        c.resp_gap(b"HTTP/1.1 200 OK\r\nSet-Cookie: xx", 5000); // t=3
        c.resp(b"body bytes"); // t=4: part of the held response
        c.resp(OK_5); // t=5
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            [
                "GET /a /a 200 req_body=0 resp_body=10 complete=true",
                "GET /a /a 200 req_body=0 resp_body=5 complete=true",
            ]
        );
        assert_eq!(xs[0].end_ns, 45);
        assert_eq!(xs[1].end_ns, 55);
        assert_eq!(
            c.dec.take_stats(),
            DecoderStats {
                resyncs: 1,
                truncated_headers: 1,
                ..Default::default()
            }
        );

        // ...or until close.
        let mut c = Conn::new();
        c.req(GET_A);
        c.resp_gap(b"HTTP/1.1 503 Unavailable\r\n", 100);
        c.close();
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["GET /a /a 503 req_body=0 resp_body=0 complete=true"]
        );
        assert_eq!(xs[0].end_ns, 25);
    }

    #[test]
    fn truncated_head_of_bodiless_response_completes_at_once() {
        let mut c = Conn::new();
        c.req(b"HEAD /h HTTP/1.1\r\n\r\n").req(GET_A);
        c.resp_gap(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Long: aa", 9000);
        c.resp(OK_5);
        assert_eq!(
            lines(&c.take()),
            [
                "HEAD /h /h 200 req_body=0 resp_body=0 complete=true",
                "GET /a /a 200 req_body=0 resp_body=5 complete=true",
            ]
        );
    }

    #[test]
    fn truncated_status_line_drops_its_request() {
        let mut c = Conn::new();
        c.req(GET_A).req(b"GET /b HTTP/1.1\r\n\r\n");
        c.resp_gap(b"HTTP/1.1 2", 5000);
        c.resp(OK_5);
        assert_eq!(
            lines(&c.take()),
            ["GET /b /b 200 req_body=0 resp_body=5 complete=true"]
        );
        let stats = c.dec.take_stats();
        assert_eq!((stats.unpaired_requests, stats.truncated_headers), (1, 1));
    }

    #[test]
    fn chunk_sizes_lost_in_a_gap_hold_the_response_until_the_next_status_line() {
        let mut c = Conn::new();
        c.req(GET_A).req(GET_A);
        c.resp_gap(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
            500,
        ); // t=3
        c.resp(b"more data\r\n0\r\n\r\n"); // t=4
        c.resp(OK_5); // t=5
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            [
                // 4 framed + 500 in the gap + 16 of the next chunk (framing unknown: all count)
                "GET /a /a 200 req_body=0 resp_body=520 complete=true",
                "GET /a /a 200 req_body=0 resp_body=5 complete=true",
            ]
        );
        assert_eq!(xs[0].end_ns, 45);
        assert_eq!(c.dec.take_stats().resyncs, 1);
    }

    #[test]
    fn chunked_request_framing_lost_in_a_gap_resyncs_the_request_stream() {
        let mut c = Conn::new();
        c.req_gap(
            b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
            100,
        );
        c.req(b"ef\r\n0\r\n\r\n"); // discarded
        c.req(GET_A);
        c.resp(OK_5).resp(OK_5);
        assert_eq!(
            lines(&c.take()),
            [
                "POST /u /u 200 req_body=102 resp_body=5 complete=true",
                "GET /a /a 200 req_body=0 resp_body=5 complete=true",
            ]
        );
        assert_eq!(c.dec.take_stats().resyncs, 1);
    }

    #[test]
    fn chunk_ending_mid_header_line() {
        let mut c = Conn::new();
        c.req(b"GET /a HTTP/1.1\r\nHo")
            .req(b"st: split.example\r")
            .req(b"\n\r")
            .req(b"\n");
        c.resp(b"HTTP/1.1 200 OK\r\nContent-")
            .resp(b"Length: 1\r\n\r\nx");
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["GET /a /a 200 req_body=0 resp_body=1 complete=true"]
        );
        assert_eq!(xs[0].host.as_deref(), Some("split.example"));
    }

    #[test]
    fn header_names_are_case_insensitive_and_chunked_wins_over_length() {
        let mut c = Conn::new();
        c.req(b"GET /a HTTP/1.1\r\nHOST: up.example\r\nTraceParent: 00-abc-def-01\r\ntraceSTATE: k=v\r\n\r\n");
        c.resp(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nTRANSFER-ENCODING: CHUNKED\r\n\r\n1\r\nx\r\n0\r\n\r\n");
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["GET /a /a 200 req_body=0 resp_body=1 complete=true"]
        );
        assert_eq!(xs[0].host.as_deref(), Some("up.example"));
        assert_eq!(xs[0].traceparent.as_deref(), Some("00-abc-def-01"));
        assert_eq!(xs[0].tracestate.as_deref(), Some("k=v"));
    }

    #[test]
    fn repeated_identical_content_length_is_fine() {
        let mut c = Conn::new();
        c.req(b"POST /a HTTP/1.1\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nab");
        c.resp(OK_5);
        assert_eq!(
            lines(&c.take()),
            ["POST /a /a 200 req_body=2 resp_body=5 complete=true"]
        );
    }

    fn first_error(req: &[u8], resp: &[u8]) -> Option<DecodeError> {
        let mut c = Conn::new();
        c.feed(Stream::Request, req, 0)
            .and_then(|_| c.feed(Stream::Response, resp, 0))
            .err()
    }

    #[test]
    fn framing_errors_are_malformed() {
        let m = |r| Some(DecodeError::Malformed(r));
        assert_eq!(
            first_error(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                b""
            ),
            m("conflicting_content_length")
        );
        assert_eq!(
            first_error(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b""),
            m("bad_content_length")
        );
        assert_eq!(
            first_error(
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                b""
            ),
            m("bad_content_length")
        );
        assert_eq!(
            first_error(GET_A, b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n"),
            m("bad_content_length")
        );
        assert_eq!(
            first_error(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", b""),
            m("bad_transfer_encoding")
        );
        assert_eq!(
            first_error(
                GET_A,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
            ),
            m("bad_chunk_size")
        );
        assert_eq!(
            first_error(
                GET_A,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy"
            ),
            m("bad_chunk_end")
        );
        assert_eq!(
            first_error(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", b""),
            m("bad_header")
        );
        assert_eq!(
            first_error(b"GET / HTTP/1.1\r\nno colon\r\n\r\n", b""),
            m("bad_header")
        );
        // A bad start line after a good message is malformed, not "not HTTP".
        let mut c = Conn::new();
        c.req(GET_A);
        assert_eq!(
            c.feed(Stream::Request, b"\x00\x01\x02", 0),
            Err(DecodeError::Malformed("bad_request_line"))
        );
        // The decoder stays failed.
        assert_eq!(
            c.feed(Stream::Request, GET_A, 0),
            Err(DecodeError::Malformed("bad_request_line"))
        );
        assert_eq!(
            DecodeError::Malformed("bad_request_line").reason(),
            "bad_request_line"
        );
        assert_eq!(DecodeError::NotHttp.reason(), "not_http");
    }

    #[test]
    fn headers_over_16k_are_malformed_split_or_not() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 10, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            first_error(&big, b""),
            Some(DecodeError::Malformed("headers_too_large"))
        );
        let mut c = Conn::new();
        let mut err = None;
        for piece in big.chunks(1000) {
            if let Err(e) = c.feed(Stream::Request, piece, 0) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(DecodeError::Malformed("headers_too_large")));

        // Exactly at the limit is fine.
        let mut exact = b"GET / HTTP/1.1\r\nX: ".to_vec();
        exact.resize(MAX_HEAD_BYTES - 4, b'a');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exact.len(), MAX_HEAD_BYTES);
        assert_eq!(first_error(&exact, b""), None);
    }

    #[test]
    fn garbage_fails_fast() {
        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], // TLS ClientHello
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x00\x00\x00\x01",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"*1\r\n$4\r\nPING\r\n", // redis
            b"GETTING_LONGER_THAN_A_METHOD_CAN_EVER_BE /x HTTP/1.1\r\n",
        ] {
            assert_eq!(
                first_error(garbage, b""),
                Some(DecodeError::NotHttp),
                "{garbage:?}"
            );
        }
        assert_eq!(
            first_error(GET_A, b"SSH-2.0\r\n"),
            Some(DecodeError::NotHttp)
        );
        // Valid-looking method but not an HTTP/1 request line.
        assert_eq!(
            first_error(b"GET /x FTP/1.0\r\n\r\n", b""),
            Some(DecodeError::NotHttp)
        );
        assert_eq!(
            first_error(GET_A, b"HTTP/1.1 2000 OK\r\n\r\n"),
            Some(DecodeError::NotHttp)
        );
        // Garbage split into one-byte chunks fails on the first byte too.
        let mut c = Conn::new();
        assert_eq!(
            c.feed(Stream::Request, b"\x16", 0),
            Err(DecodeError::NotHttp)
        );
    }

    #[test]
    fn random_bytes_never_panic_and_stay_bounded() {
        // Small deterministic xorshift generator; no dependencies.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let alphabet = b"GET /HTP1.0\r\n:0123456789abcdefContent-Length: chunked;\x00\xff";
        for _ in 0..2000 {
            let mut dec = Http1Decoder::new();
            let mut out = Vec::new();
            for t in 0..20u64 {
                let len = (next() % 64) as usize;
                let bytes: Vec<u8> = if next() % 2 == 0 {
                    (0..len).map(|_| next() as u8).collect()
                } else {
                    (0..len)
                        .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                        .collect()
                };
                let stream = if next() % 2 == 0 {
                    Stream::Request
                } else {
                    Stream::Response
                };
                let gap = if next() % 4 == 0 { next() % 100_000 } else { 0 };
                let chunk = Chunk {
                    stream,
                    first_ns: t * 10,
                    last_ns: t * 10 + 5,
                    bytes: &bytes,
                    len: bytes.len() as u64 + gap,
                };
                let _ = dec.feed(&chunk, &mut out);
            }
            dec.close(1000, &mut out);
            for x in &out {
                assert!(x.end_ns >= x.start_ns);
                assert!(x.method.len() <= MAX_METHOD_CHARS);
            }
        }
    }

    #[test]
    fn query_absolute_form_asterisk() {
        let mut c = Conn::new();
        c.req(b"GET http://proxy.example:8080/x/1?y=2 HTTP/1.1\r\nHost: ignored\r\n\r\n");
        c.req(b"GET http://bare.example HTTP/1.1\r\n\r\n");
        c.req(b"OPTIONS * HTTP/1.1\r\n\r\n");
        c.req(b"GET /s?q=1#frag HTTP/1.1\r\n\r\n");
        c.req(b"GET /f#frag HTTP/1.1\r\n\r\n");
        for _ in 0..5 {
            c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            [
                "GET /x/1 /x/{id} 200 req_body=0 resp_body=0 complete=true",
                "GET / / 200 req_body=0 resp_body=0 complete=true",
                "OPTIONS * * 200 req_body=0 resp_body=0 complete=true",
                "GET /s /s 200 req_body=0 resp_body=0 complete=true",
                "GET /f /f 200 req_body=0 resp_body=0 complete=true",
            ]
        );
        assert_eq!(xs[0].host.as_deref(), Some("proxy.example:8080"));
        assert_eq!(xs[1].host.as_deref(), Some("bare.example"));
        assert!(xs
            .iter()
            .all(|x| !x.route.contains('?') && !x.path.contains('?')));
    }

    #[test]
    fn long_method_path_and_headers_are_capped() {
        let long_path = format!("/{}", "p".repeat(1000));
        let req = format!(
            "NONSTANDARDMETHOD_X {long_path} HTTP/1.1\r\nHost: {}\r\ntracestate: {}\r\n\r\n",
            "h".repeat(1000),
            "t".repeat(1000)
        );
        let mut c = Conn::new();
        c.req(req.as_bytes()).resp(OK_5);
        let x = &c.take()[0];
        assert_eq!(x.method, "NONSTANDARDMETHO");
        assert_eq!(x.path.len(), MAX_PATH_BYTES);
        assert_eq!(x.host.as_ref().map(String::len), Some(MAX_HOST_BYTES));
        assert_eq!(
            x.tracestate.as_ref().map(String::len),
            Some(MAX_TRACESTATE_BYTES)
        );
        // Multi-byte UTF-8 cut at a character boundary, invalid bytes replaced.
        assert_eq!(capped_string("aé".as_bytes(), 2), "a");
        assert_eq!(capped_string(b"a\xffb", 10), "a\u{fffd}b");
        assert_eq!(capped_string(b"\xff\xff\xff", 3), "\u{fffd}");
    }

    #[test]
    fn leading_blank_lines_between_messages_are_ignored() {
        let mut c = Conn::new();
        c.req(b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n");
        c.req(b"\r\nGET /b HTTP/1.1\r\n\r\n");
        c.resp(OK_5).resp(OK_5);
        assert_eq!(c.take().len(), 2);
    }

    #[test]
    fn find_byte_matches_a_plain_search() {
        let hay: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37) | 1).collect();
        for len in 0..hay.len() {
            for needle in [b'\n', 0x81, 0xff, 1, 0x25] {
                let mut h = hay[..len].to_vec();
                let want = h.iter().position(|&c| c == needle);
                assert_eq!(find_byte(&h, needle), want, "len {len} needle {needle}");
                if len > 0 {
                    h[len / 2] = needle;
                    h[len - 1] = needle;
                    let want = h.iter().position(|&c| c == needle);
                    assert_eq!(find_byte(&h, needle), want, "len {len} needle {needle}");
                }
            }
        }
    }

    #[test]
    fn detect_recognises_request_and_status_lines() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Some(Stream::Request));
        assert_eq!(detect(b"DELETE /x"), Some(Stream::Request));
        assert_eq!(detect(b"PROPFIND "), Some(Stream::Request));
        assert_eq!(detect(b"HTTP/1.1 200 OK"), Some(Stream::Response));
        assert_eq!(detect(b"HTTP/1.0 "), Some(Stream::Response));
        assert_eq!(detect(b"HTTP/2 200"), None);
        assert_eq!(detect(b"PRI * HTTP/2.0"), None);
        assert_eq!(detect(b"GET"), None);
        assert_eq!(detect(b"GETX /"), None);
        assert_eq!(detect(b"get / HTTP/1.1"), None);
        assert_eq!(detect(b""), None);
        assert_eq!(detect(b"\x16\x03\x01"), None);
    }

    #[test]
    fn feed_after_close_starts_fresh() {
        let mut c = Conn::new();
        c.req(GET_A).close();
        assert_eq!(c.dec.take_stats().unpaired_requests, 1);
        c.req(GET_A).resp(OK_5);
        assert_eq!(c.take().len(), 1);
    }

    // ---- golden tests over recorded traffic (tests/fixtures/http1, see record.py) ----

    use crate::protocol::fixture::Fixture;

    fn load_fixtures() -> Vec<Fixture> {
        crate::protocol::fixture::load("http1")
    }

    /// Golden line: fields, then `@start..end` in chunk indices (chunk i has first_ns =
    /// last_ns = i; close happens at the chunk count).
    fn golden_line(x: &HttpExchange) -> String {
        format!(
            "{} host={} @{}..{}",
            line(x),
            x.host.as_deref().unwrap_or("-"),
            x.start_ns,
            x.end_ns
        )
    }

    fn decode_fixture(chunks: &[(Stream, &[u8])]) -> (Vec<HttpExchange>, DecoderStats) {
        let mut dec = Http1Decoder::new();
        let mut out = Vec::new();
        for (i, (stream, bytes)) in chunks.iter().enumerate() {
            let chunk = Chunk {
                stream: *stream,
                first_ns: i as u64,
                last_ns: i as u64,
                bytes,
                len: bytes.len() as u64,
            };
            dec.feed(&chunk, &mut out).expect("fixture decodes");
        }
        dec.close(chunks.len() as u64, &mut out);
        (out, dec.take_stats())
    }

    #[test]
    fn golden_fixtures() {
        let fixtures = load_fixtures();
        assert!(fixtures.len() >= 7, "fixtures missing: run record.py");
        let bless = std::env::var_os("PERISCOPE_BLESS").is_some();
        for f in &fixtures {
            let chunks: Vec<(Stream, &[u8])> =
                f.chunks.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            let (xs, stats) = decode_fixture(&chunks);
            let mut got: Vec<String> = xs.iter().map(golden_line).collect();
            got.push(format!("stats {stats:?}"));
            let got = got.join("\n") + "\n";
            let path = crate::protocol::fixture::dir("http1").join(format!("{}.golden", f.name));
            if bless {
                std::fs::write(&path, &got).expect("golden writable");
            }
            let want = std::fs::read_to_string(&path).expect("golden file");
            assert_eq!(got, want, "fixture {}", f.name);
            assert!(xs.iter().all(|x| x.end_ns >= x.start_ns));
        }
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

    fn without_times(xs: &[HttpExchange]) -> Vec<String> {
        xs.iter()
            .map(|x| format!("{} host={}", line(x), x.host.as_deref().unwrap_or("-")))
            .collect()
    }

    #[test]
    fn golden_fixtures_resplit_at_every_byte_boundary() {
        for f in &load_fixtures() {
            let chunks: Vec<(Stream, &[u8])> =
                f.chunks.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            let want = without_times(&decode_fixture(&chunks).0);
            let runs = runs(&f.chunks);
            let merged: Vec<(Stream, &[u8])> =
                runs.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            assert_eq!(
                without_times(&decode_fixture(&merged).0),
                want,
                "{} merged",
                f.name
            );
            for r in 0..runs.len() {
                for k in 1..runs[r].1.len() {
                    let mut split = merged.clone();
                    let (a, b) = runs[r].1.split_at(k);
                    split[r] = (runs[r].0, a);
                    split.insert(r + 1, (runs[r].0, b));
                    assert_eq!(
                        without_times(&decode_fixture(&split).0),
                        want,
                        "{} run {r} split at {k}",
                        f.name
                    );
                }
            }
            // And everything in one-byte chunks.
            let bytes: Vec<(Stream, &[u8])> = runs
                .iter()
                .flat_map(|(s, b)| b.chunks(1).map(move |c| (*s, c)))
                .collect();
            assert_eq!(
                without_times(&decode_fixture(&bytes).0),
                want,
                "{} bytes",
                f.name
            );
        }
    }

    /// The fixtures as a capture limit would deliver them: each chunk keeps only its first
    /// `limit` bytes, the rest becomes a gap. Whatever the limit: no error, sane timestamps,
    /// never more exchanges than the full capture. With a limit above every head, the same
    /// requests pair with the same statuses.
    #[test]
    fn golden_fixtures_under_a_capture_limit() {
        for f in &load_fixtures() {
            let full: Vec<(Stream, &[u8])> =
                f.chunks.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            let want = decode_fixture(&full).0;
            for limit in [0usize, 1, 16, 64, 200, 1024] {
                let mut dec = Http1Decoder::new();
                let mut out = Vec::new();
                for (i, (stream, bytes)) in f.chunks.iter().enumerate() {
                    let chunk = Chunk {
                        stream: *stream,
                        first_ns: i as u64,
                        last_ns: i as u64,
                        bytes: &bytes[..bytes.len().min(limit)],
                        len: bytes.len() as u64,
                    };
                    dec.feed(&chunk, &mut out)
                        .unwrap_or_else(|e| panic!("{} limit {limit}: {e}", f.name));
                }
                dec.close(f.chunks.len() as u64, &mut out);
                assert!(out.len() <= want.len(), "{} limit {limit}", f.name);
                assert!(out.iter().all(|x| x.end_ns >= x.start_ns));
                if limit == 1024 {
                    let key = |x: &HttpExchange| (x.method.clone(), x.path.clone(), x.status);
                    assert_eq!(
                        out.iter().map(key).collect::<Vec<_>>(),
                        want.iter().map(key).collect::<Vec<_>>(),
                        "{} limit {limit}",
                        f.name
                    );
                }
            }
        }
    }

    /// Rough throughput: `cargo test --release -p agent --lib http1::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput() {
        let req = b"GET /api/v1/users/12345?expand=orders HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: keep-alive\r\n\r\n{\"id\":12345,\"name\":\"alice\"}";
        let mut dec = Http1Decoder::new();
        let mut out = Vec::with_capacity(1);
        let n = 1_000_000u64;
        let start = std::time::Instant::now();
        for i in 0..n {
            let rq = Chunk {
                stream: Stream::Request,
                first_ns: i,
                last_ns: i,
                bytes: req,
                len: req.len() as u64,
            };
            let rs = Chunk {
                stream: Stream::Response,
                bytes: resp,
                len: resp.len() as u64,
                ..rq
            };
            dec.feed(&rq, &mut out).unwrap();
            dec.feed(&rs, &mut out).unwrap();
            assert_eq!(out.len(), 1);
            out.clear();
        }
        let per = start.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "{per:.0} ns per request+response pair ({} + {} bytes)",
            req.len(),
            resp.len()
        );
    }
}
