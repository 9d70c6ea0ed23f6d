//! HTTP/1.x decoder: two captured byte streams of one connection in, request/response pairs out.
//!
//! # Model
//! Each stream (requests, responses) is a small state machine: `Start` (between messages) →
//! `Head` (start line + header fields) → `Body` (skipped by count) → `Start`. Only a head that is
//! split across chunks is copied (into a per-stream buffer capped at [`MAX_HEAD_BYTES`], released
//! once the head is parsed); a head that fits one chunk is parsed in place, and bodies are never
//! buffered. Memory per decoder is therefore bounded by two head buffers plus the pending queue
//! ([`MAX_PENDING`] entries, released when empty): an idle keep-alive connection holds neither.
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
//! until one that begins with a message start ([`detect()`]). Precisely:
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
//! A start line that is not HTTP/1.x is [`NOT_HTTP`] while nothing was decoded yet on
//! that stream, `Malformed("bad_request_line" | "bad_status_line")` afterwards. Framing that can
//! not be trusted (bad or conflicting Content-Length, bad chunk size, head over 16 KiB) is
//! [`DecodeError::Malformed`]. After an error the decoder stays failed: `feed` repeats the error.
//!
//! # Upgrades
//! `101 Switching Protocols` to `h2c` (the request's and the response's `Upgrade` both list
//! it) hands the connection to an HTTP/2 decoder, which every later byte goes to (the rest of
//! the 101's chunk included): the upgrade request becomes stream 1, whose HTTP/2 response
//! completes it, so one request makes one exchange, reported as HTTP/2 (RFC 7540 §3.2). Any
//! other `101 Switching Protocols`, or a `2xx` to `CONNECT`, completes the exchange and makes
//! [`Http1Decoder::upgraded`] true; later bytes are ignored. After a `CONNECT` request the
//! request stream ignores bytes (tunnel data may be sent optimistically) until the response.

use std::collections::VecDeque;

use super::http2::{Http2Decoder, Upgrade};
use super::text::capped_string;
pub use super::DecodeError;
use super::{route, Chunk, Decoder, Sticky, Stopped, Stream};

mod detect;
mod framing;
mod parse;

pub use detect::{could_start, detect};
use framing::{Body, Chunked, GapOutcome, Half, HeadAt, State};
use parse::{
    parse_fields, parse_request_line, parse_status_line, skip_blank_lines, split_line, split_target,
};

/// Largest head (start line + header fields + the empty line) accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most requests waiting for a response on one connection; beyond it the oldest is dropped.
pub const MAX_PENDING: usize = 256;
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

pub use super::http::{HttpExchange, HttpVersion, UNKNOWN_METHOD};

/// The stream is not HTTP/1.x. Once a start line was decoded, faults are
/// [`DecodeError::Malformed`]: "bad_request_line", "bad_status_line", "bad_header",
/// "bad_content_length", "conflicting_content_length", "bad_transfer_encoding",
/// "bad_chunk_size", "bad_chunk_end", "headers_too_large", "trailers_too_large".
pub const NOT_HTTP: DecodeError = DecodeError::NotProtocol("not_http");

/// The sinks still name it here; it lives in `protocol` with the [`Decoder`] trait.
pub use super::DecoderStats;

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
    /// Asked for `Upgrade: h2c`.
    h2c: bool,
}

/// The response being received (head done), or held across a resync.
#[derive(Debug)]
struct Current {
    /// None for an unexpected response: framed, then dropped.
    req: Option<Pending>,
    status: u16,
    /// The status line's version.
    version: HttpVersion,
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
    /// Boxed: a connection is idle between responses most of the time, and the 200 bytes of a
    /// `Current` would be in every decoder (responses without a body never store one).
    cur: Option<Box<Current>>,
    /// The request whose body the request stream is reading, by sequence number.
    req_body_seq: Option<u64>,
    next_seq: u64,
    upgraded: bool,
    /// After `101 Switching Protocols` to `h2c`: the connection's HTTP/2 decoder, which every
    /// later byte goes to.
    h2: Option<Box<Http2Decoder>>,
    failed: Sticky,
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
            h2: None,
            failed: Sticky::default(),
            stats: DecoderStats::default(),
            last_route: None,
        }
    }
}

impl Http1Decoder {
    fn pending_bytes(p: &Pending) -> usize {
        std::mem::size_of::<Pending>()
            + p.method.capacity()
            + p.path.capacity()
            + p.route.capacity()
            + p.host.as_ref().map_or(0, String::capacity)
            + p.traceparent.as_ref().map_or(0, String::capacity)
            + p.tracestate.as_ref().map_or(0, String::capacity)
    }
}

impl Decoder for Http1Decoder {
    const PROTOCOL: &'static str = "http1";
    type Exchange = HttpExchange;

    /// HTTP/1 needs no state from before: a connection joined mid-stream resynchronises like
    /// after a gap.
    fn start(_mid_stream: bool) -> Self {
        Self::new()
    }

    /// Feed one syscall's bytes. Err means the stream is not HTTP/1 or broken beyond repair: the
    /// caller stops decoding the connection. Completed exchanges are pushed to `out`.
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<HttpExchange>) -> Result<(), DecodeError> {
        self.failed.check()?;
        if let Some(h2) = self.h2.as_mut() {
            return h2.feed(chunk, out);
        }
        if self.upgraded {
            return Ok(());
        }
        let result = match chunk.stream {
            Stream::Request => self.feed_request(chunk),
            Stream::Response => self.feed_response(chunk, out),
        };
        debug_assert!(self.req.head.len() <= MAX_HEAD_BYTES);
        debug_assert!(self.resp.head.len() <= MAX_HEAD_BYTES);
        debug_assert!(self.pending.len() <= MAX_PENDING);
        self.failed.keep(result)
    }

    /// The connection closed at `ts_ns`: finish a read-until-close response (HTTP/1.0 style, no
    /// Content-Length, not chunked) as complete; a response cut mid-body is emitted with
    /// complete=false; requests with no response at all are counted as unpaired, not emitted.
    ///
    /// End times: a read-until-close or held response ends at the `last_ns` of its last chunk;
    /// a response cut mid-body at `max(ts_ns, last_ns of its last chunk)`. A response whose head
    /// was incomplete, and a request whose head was incomplete, count as unpaired. The decoder is
    /// then reset (stats are kept) and may be reused.
    fn close(&mut self, ts_ns: u64, out: &mut Vec<HttpExchange>) {
        if let Some(h2) = self.h2.as_mut() {
            h2.close(ts_ns, out);
            self.stats += h2.take_stats();
        }
        if !self.failed.is_failed() && !self.upgraded {
            match self.resp.state {
                State::Body(Body::UntilClose) | State::Resync => {
                    if let Some(cur) = self.cur.take() {
                        let end = cur.end_ns;
                        emit(*cur, end, true, out);
                    }
                }
                State::Body(_) => {
                    if let Some(cur) = self.cur.take() {
                        let end = cur.end_ns.max(ts_ns);
                        emit(*cur, end, false, out);
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
        self.stats = std::mem::take(self).stats;
    }

    fn take_stats(&mut self) -> DecoderStats {
        if let Some(h2) = self.h2.as_mut() {
            self.stats += h2.take_stats();
        }
        std::mem::take(&mut self.stats)
    }

    fn heap_bytes(&self) -> usize {
        self.h2.as_ref().map_or(0, |h2| h2.heap_bytes())
            + self.req.head.capacity()
            + self.resp.head.capacity()
            + super::sampled_bytes(self.pending.iter(), 0, Self::pending_bytes)
            + self
                .cur
                .as_ref()
                .and_then(|c| c.req.as_ref())
                .map_or(0, Self::pending_bytes)
            + self
                .last_route
                .as_ref()
                .map_or(0, |(a, b)| a.capacity() + b.capacity())
    }

    fn stopped(&self) -> Option<Stopped> {
        self.upgraded().then_some(Stopped::Upgraded)
    }
}

impl Http1Decoder {
    /// True after a 101 Switching Protocols (or a CONNECT 2xx): the caller stops decoding.
    pub fn upgraded(&self) -> bool {
        self.upgraded
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
                        // Taken for good: an idle stream keeps no buffer.
                        let head = std::mem::take(&mut self.req.head);
                        let result = self.request_head(&head, false);
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
                    // Taken for good: an idle stream keeps no buffer.
                    let head = std::mem::take(&mut self.req.head);
                    let result = self.request_head(&head, true);
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
            h2c: fields.upgrade_h2c,
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
            h2c: false,
        });
    }

    /// The oldest pending request. An emptied queue gives its buffer back: a keep-alive
    /// connection is idle with no request pending most of the time, and would otherwise keep
    /// room for four (~700 B).
    fn pop_pending(&mut self) -> Option<Pending> {
        let p = self.pending.pop_front();
        if self.pending.is_empty() {
            self.pending = VecDeque::new();
        }
        p
    }

    fn push_pending(&mut self, p: Pending) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.stats.unpaired_requests += 1;
        }
        if self.pending.capacity() == 0 {
            // Room for one: a keep-alive connection has one request in flight most of the
            // time, and the default first growth (four) held 700 B on every connection with a
            // request outstanding (`bench scale`: 14 MB at 20,000 sockets, freed and
            // fragmented again after every exchange).
            self.pending.reserve_exact(1);
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
                    emit(*cur, end, true, out);
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
                            // Taken for good: an idle stream keeps no buffer.
                            let head = std::mem::take(&mut self.resp.head);
                            let result = self.response_head(&head, c, false, out);
                            result?;
                            pos += consumed;
                        }
                        HeadAt::Partial => pos = data.len(),
                    }
                    if let Some(h2) = self.h2.as_mut() {
                        // The server's first HTTP/2 frames may follow the 101 in one write.
                        let rest = Chunk {
                            bytes: &data[pos..],
                            len: c.len - pos as u64,
                            ..*c
                        };
                        return h2.feed(&rest, out);
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
                    if self.pop_pending().is_some() {
                        self.stats.unpaired_requests += 1;
                    }
                    self.resp.state = State::Resync;
                    return Ok(());
                }
                State::Head => {
                    self.stats.truncated_headers += 1;
                    self.stats.resyncs += 1;
                    // Taken for good: an idle stream keeps no buffer.
                    let head = std::mem::take(&mut self.resp.head);
                    let result = self.response_head(&head, c, true, out);
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
            if self.pop_pending().is_some() {
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
        let req = self.pop_pending();
        if req.is_none() {
            self.stats.unexpected_responses += 1;
        }
        let (head_req, connect) = req.as_ref().map_or((false, false), |p| (p.head, p.connect));
        // The status line's `HTTP/1.x` (checked by `parse_status_line`).
        let version = match line.get(7) {
            Some(b'0') => HttpVersion::Http10,
            _ => HttpVersion::Http11,
        };
        let cur = Current {
            req,
            status,
            version,
            body_bytes: 0,
            end_ns: c.last_ns,
        };
        if status == 101 && fields.upgrade_h2c && cur.req.as_ref().is_some_and(|p| p.h2c) {
            // The request becomes HTTP/2 stream 1: one exchange, answered in HTTP/2.
            let p = cur.req.expect("checked above");
            self.h2 = Some(Box::new(Http2Decoder::after_upgrade(Upgrade {
                method: p.method,
                path: p.path,
                host: p.host,
                traceparent: p.traceparent,
                tracestate: p.tracestate,
                start_ns: p.start_ns,
                request_body_bytes: p.body_bytes,
            })));
            return Ok(());
        }
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
            self.cur = Some(Box::new(cur));
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
        self.cur = Some(Box::new(cur));
        self.resp.state = State::Body(body);
        Ok(())
    }

    fn finish_response(&mut self, out: &mut Vec<HttpExchange>) {
        if let Some(cur) = self.cur.take() {
            let end = cur.end_ns;
            emit(*cur, end, true, out);
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
        version: cur.version,
        grpc: None,
        stream_id: None,
    });
}

#[cfg(test)]
mod tests;
