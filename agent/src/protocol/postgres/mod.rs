//! PostgreSQL frontend/backend protocol (v3) decoder: the two captured byte streams of one
//! connection in, one [`PgExchange`] per executed statement out.
//!
//! # Framing
//! After start-up every message is a type byte and a big-endian int32 length that counts itself
//! but not the type byte. Start-up packets (StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest) have no type byte. Each direction is framed independently; a message may be
//! split across chunks at any byte, and a chunk may hold many messages. Only the messages whose
//! contents matter are looked into (Query, Parse, Bind, Execute, Close, start-up packets from the
//! frontend; CommandComplete and ErrorResponse from the backend); their body is parsed in place
//! when it is whole in one chunk, else copied into a per-direction buffer of at most
//! [`MAX_BUFFERED_BYTES`] (the rest is skipped by length and the prefix parsed). Every other body
//! (DataRow, CopyData, passwords and SASL messages, which are never stored) is skipped by count.
//! The frontend `D`/`C`/`H` (Describe, Close, Flush) and backend `D`/`C`/`H` (DataRow,
//! CommandComplete, CopyOutResponse) share letters: the direction decides.
//!
//! # Pairing
//! Requests are queued in the order sent; the backend answers in that order:
//! - **Simple query** (`Q`): its SQL is split into statements ([`sql::split_statements`]); each
//!   CommandComplete / EmptyQueryResponse / ErrorResponse completes the next statement, in order.
//!   An ErrorResponse aborts the rest of the string: later statements produce nothing (they never
//!   ran; not counted). ReadyForQuery ends the query. All statements of one `Q` start at the `Q`;
//!   its request bytes go to the first statement.
//! - **Extended query**: Parse/Bind/Describe messages accumulate into the next Execute, which is
//!   one exchange (start = the earliest of them; request bytes = all of them). A Sync ends the
//!   accumulation, so a Parse sent on its own to prepare (pgbench `-M prepared`) does not count
//!   into the first execution. Named statements are remembered across the connection (at most
//!   [`MAX_PREPARED`], oldest evicted), the unnamed one until the next unnamed Parse; portals
//!   map to their statement. CommandComplete, EmptyQueryResponse, PortalSuspended or
//!   ErrorResponse complete the oldest pending Execute (pipelines: many Executes before one
//!   Sync). After an ErrorResponse the server skips everything until Sync: the Executes queued
//!   behind the failed one are dropped at the ReadyForQuery that answers the Sync, counted in
//!   `unpaired_requests`, with no exchange. An ErrorResponse for a Parse or Bind that has no
//!   Execute (a failed prepare) produces no exchange.
//! - **COPY**: the COPY statement is one exchange ending at its CommandComplete (rows from the
//!   `COPY n` tag); frontend CopyData/CopyDone/CopyFail bytes count as its request bytes.
//! - **Start-up**: StartupMessage parameters are kept in [`StartupInfo`] (no secrets: password
//!   and SASL messages are skipped unread). An SSLRequest/GSSENCRequest answered `S`/`G` makes
//!   [`PgDecoder::is_tls`] true and the decoder ignores the rest. A CancelRequest produces no
//!   exchange (it is a separate connection with no response); Terminate neither; FunctionCall
//!   is not decoded (its result arrives like any unpaired response and is ignored).
//!
//! Response bytes (every backend message from the previous completion up to and including the
//! completing one) and DataRow counts go to the exchange being completed. `rows` is the count in
//! the CommandComplete tag when it has one (`SELECT n`, `INSERT 0 n`, `UPDATE n`, `DELETE n`,
//! `MERGE n`, `COPY n`, `FETCH n`, `MOVE n`), else the DataRow count when non-zero, else None.
//!
//! # Gaps, resynchronisation, joining mid-stream
//! A capture gap inside a body is skipped by length (a message parsed from a prefix counts in
//! `truncated_headers`). A gap that hides a message header loses framing (`resyncs` +1,
//! `truncated_headers` +1): that direction discards chunks until one that begins with a plausible
//! message of its direction (every message header in the chunk checks out). ReadyForQuery
//! re-aligns pairing: it completes the queue up to its Sync or Query, and what was not answered
//! on the way is counted unpaired. A request lost in a gap can make the responses after it pair
//! with the wrong request until the next ReadyForQuery.
//!
//! [`PgDecoder::new_mid_stream`] starts both directions in that resynchronising state, counting
//! nothing (the request direction also syncs at a start-up packet); [`PgDecoder::new`] does the same when the first request bytes are a typed message
//! rather than a start-up packet, or when response bytes come first. Until the first request is
//! queued, unmatched responses are not counted. A mid-stream connection that shows no plausible
//! request in [`MID_STREAM_GIVE_UP_CHUNKS`] request chunks is [`DecodeError::NotPostgres`].
//!
//! # Errors
//! Bytes that are not a start-up packet or a frontend message, or a backend stream whose first
//! message is not valid, are [`DecodeError::NotPostgres`]; an unknown message type or an
//! impossible length once a direction has decoded a message is [`DecodeError::Malformed`]. After
//! an error the decoder stays failed: `feed` repeats the error.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{sql, Chunk, Stream};

/// The same counters as the HTTP/1 decoder; `truncated_headers` counts messages cut by a gap.
pub use super::http1::DecoderStats;

/// Most bytes of one message body kept for parsing; the rest is skipped by length.
pub const MAX_BUFFERED_BYTES: usize = 64 * 1024;
/// Most requests waiting for a response; beyond it executions are only counted (so that later
/// responses still pair right), and past twice this the oldest are dropped as unpaired.
pub const MAX_PENDING: usize = 256;
/// Most named prepared statements remembered per connection; beyond it the oldest is evicted.
pub const MAX_PREPARED: usize = 1024;
/// Most named portals remembered per connection (they live until the transaction ends).
const MAX_PORTALS: usize = 64;
/// Request chunks a mid-stream connection may show without a plausible frontend message.
pub const MID_STREAM_GIVE_UP_CHUNKS: u32 = 256;
/// Operation of an EmptyQueryResponse (empty query string, used as a ping).
pub const EMPTY_OPERATION: &str = "EMPTY";
/// Operation when neither the SQL nor a CommandComplete tag tells it.
pub const UNKNOWN_OPERATION: &str = "UNKNOWN";

/// The server refuses start-up packets longer than this (MAX_STARTUP_PACKET_LENGTH).
const MAX_STARTUP_BYTES: u32 = 10_000;
/// The server refuses messages of 1 GiB or more.
const MAX_MESSAGE_BYTES: u32 = 0x3fff_ffff;
const PROTOCOL_MAJOR_3: u32 = 3;
const CANCEL_REQUEST: u32 = 80_877_102;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
/// Characters kept of each start-up parameter value.
const MAX_PARAM_CHARS: usize = 64;
/// Messages checked when deciding whether a chunk starts on a message boundary.
const PLAUSIBLE_MESSAGES: usize = 16;

/// One executed statement: a simple-query statement or an extended-protocol Execute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgExchange {
    /// `db.operation.name`: the statement's first keyword, upper-case ("SELECT", "BEGIN"); from
    /// the CommandComplete tag when the SQL is unknown (a statement prepared before the capture
    /// began); [`EMPTY_OPERATION`] for an empty query; else [`UNKNOWN_OPERATION`].
    pub operation: String,
    /// `db.collection.name`: the main table, see [`sql::summarize`].
    pub collection: Option<String>,
    /// `db.query.summary`: operation and collection, e.g. "SELECT orders".
    pub query_summary: String,
    /// `db.query.text`: the SQL with literals replaced by `?` ([`sql::normalize`]); empty when the
    /// SQL is unknown.
    pub query_text: String,
    /// Prepared statement name (extended protocol); None for the unnamed statement and simple
    /// queries.
    pub statement_name: Option<String>,
    /// Rows from the CommandComplete tag, else the DataRow count when non-zero.
    pub rows: Option<u64>,
    /// SQLSTATE of the ErrorResponse that ended it.
    pub error_sqlstate: Option<String>,
    /// `first_ns` of the chunk where the request began (the Query, or the earliest
    /// Parse/Bind/Describe/Execute of this execution).
    pub start_ns: u64,
    /// `last_ns` of the chunk holding the end of the completing message (at close: see
    /// [`PgDecoder::close`]).
    pub end_ns: u64,
    /// Frontend message bytes of this statement, COPY data included.
    pub request_bytes: u64,
    /// Backend message bytes attributed to it.
    pub response_bytes: u64,
    /// false when the connection closed while its response was still coming.
    pub complete: bool,
}

/// What the StartupMessage said about the session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartupInfo {
    /// The `database` parameter; the server defaults it to the user name, and so does this.
    pub database: Option<String>,
    pub user: Option<String>,
    pub application_name: Option<String>,
}

/// Why a stream cannot be decoded as PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not PostgreSQL")]
    NotPostgres,
    #[error("malformed PostgreSQL message: {0}")]
    Malformed(&'static str),
}

impl DecodeError {
    /// Low-cardinality snake_case reason, fit for a metric label: "not_postgres",
    /// "bad_message_type", "bad_message_length", "bad_startup_packet", "bad_encryption_answer".
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::NotPostgres => "not_postgres",
            DecodeError::Malformed(reason) => reason,
        }
    }
}

/// A statement's SQL, summarised once (per Parse, or per statement of a Query).
#[derive(Debug)]
struct Statement {
    operation: String,
    collection: Option<String>,
    summary: String,
    text: String,
}

impl Statement {
    fn new(sql: &str) -> Self {
        let (operation, collection) = sql::summarize(sql);
        Statement {
            summary: summary(&operation, collection.as_deref()),
            operation,
            collection,
            text: sql::normalize(sql),
        }
    }
}

fn summary(operation: &str, collection: Option<&str>) -> String {
    match collection {
        Some(c) => format!("{operation} {c}"),
        None => operation.to_owned(),
    }
}

/// A request waiting for its response.
#[derive(Debug)]
enum Pending {
    /// A simple Query; ended by ReadyForQuery.
    Simple(Simple),
    /// An Execute; ended by its completion message.
    Exec(Exec),
    /// A Sync; ended by ReadyForQuery.
    Sync,
    /// Executions beyond [`MAX_PENDING`]: their completions are consumed and counted unpaired.
    Untracked(u64),
}

#[derive(Debug)]
struct Simple {
    start_ns: u64,
    /// Given to the next statement completed (so the first gets the Query's bytes).
    request_bytes: u64,
    /// The SQL (at most [`MAX_BUFFERED_BYTES`]) and its statements as byte ranges, summarised
    /// when completed so a long script costs no more memory than its text.
    sql: Box<str>,
    statements: Vec<(u32, u32)>,
    next: usize,
    /// An ErrorResponse aborted the rest.
    failed: bool,
}

#[derive(Debug)]
struct Exec {
    start_ns: u64,
    request_bytes: u64,
    statement: Option<Arc<Statement>>,
    name: Option<Arc<str>>,
}

/// Parse/Bind/Describe messages waiting for their Execute.
#[derive(Clone, Copy, Debug)]
struct Building {
    start_ns: u64,
    bytes: u64,
}

/// What a Bind made of a portal. Shared pointers: a Bind/Execute of a known statement
/// allocates nothing.
#[derive(Clone, Debug, Default)]
struct Portal {
    statement: Option<Arc<Statement>>,
    name: Option<Arc<str>>,
}

/// Where a direction is in its byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// Request side of a fresh connection: its first 8 bytes tell a start-up packet from a
    /// typed message (a connection joined mid-stream).
    Undecided,
    /// Between untyped start-up packets (int32 length first).
    StartupHeader,
    /// Between typed messages.
    Header,
    /// The one-byte answer to an SSLRequest or GSSENCRequest.
    Answer { gss: bool },
    /// Inside a message body with `left` bytes to go. `ty` is 0 for start-up packets.
    Body {
        ty: u8,
        len: u32,
        left: u32,
        keep: bool,
    },
    /// No framing: discard chunks until one begins with a plausible message.
    Resync,
}

/// One direction's framing state.
#[derive(Debug)]
struct Half {
    stream: Stream,
    frame: Frame,
    /// Header bytes collected so far (8 while undecided, 4 for start-up, 5 typed).
    hdr: [u8; 8],
    have: u8,
    /// Prefix of a kept body that spans chunks.
    body: Vec<u8>,
    /// The kept body lost bytes to a gap.
    truncated: bool,
    /// `first_ns` of the chunk holding the current message's first byte.
    first_ns: u64,
    /// A message was decoded in this direction: later garbage is Malformed, not NotPostgres.
    synced: bool,
}

impl Half {
    fn new(stream: Stream, frame: Frame) -> Self {
        Half {
            stream,
            frame,
            hdr: [0; 8],
            have: 0,
            body: Vec::new(),
            truncated: false,
            first_ns: 0,
            synced: false,
        }
    }

    fn error(&self, reason: &'static str) -> DecodeError {
        if self.synced {
            DecodeError::Malformed(reason)
        } else {
            DecodeError::NotPostgres
        }
    }
}

/// Decoder for one connection. Feed it every chunk of both directions in capture order.
#[derive(Debug)]
pub struct PgDecoder {
    req: Half,
    resp: Half,
    pending: VecDeque<Pending>,
    building: Option<Building>,
    unnamed: Option<Arc<Statement>>,
    prepared: FxHashMap<String, (Portal, u64)>,
    /// Insertion order of `prepared` for eviction; entries whose sequence number no longer
    /// matches the map were closed or replaced.
    prepared_order: VecDeque<(String, u64)>,
    prepared_seq: u64,
    unnamed_portal: Portal,
    portals: Vec<(String, Portal)>,
    /// Backend bytes and DataRows since the last completion.
    resp_bytes: u64,
    data_rows: u64,
    /// `last_ns` of the latest response chunk (end time of an exchange cut by close).
    resp_last_ns: u64,
    startup: Option<StartupInfo>,
    /// StartupMessage sent, its ReadyForQuery not seen yet: that one answers no request.
    logging_in: bool,
    tls: bool,
    /// Joined mid-stream and no request queued yet: unmatched responses are not counted.
    joined: bool,
    unsynced_chunks: u32,
    failed: Option<DecodeError>,
    stats: DecoderStats,
}

impl Default for PgDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl PgDecoder {
    /// A fresh connection: a start-up packet is expected first; a typed frontend message first
    /// means the connection was joined mid-stream (as [`Self::new_mid_stream`]).
    pub fn new() -> Self {
        PgDecoder {
            req: Half::new(Stream::Request, Frame::Undecided),
            resp: Half::new(Stream::Response, Frame::Header),
            pending: VecDeque::new(),
            building: None,
            unnamed: None,
            prepared: FxHashMap::default(),
            prepared_order: VecDeque::new(),
            prepared_seq: 0,
            unnamed_portal: Portal::default(),
            portals: Vec::new(),
            resp_bytes: 0,
            data_rows: 0,
            resp_last_ns: 0,
            startup: None,
            logging_in: false,
            tls: false,
            joined: false,
            unsynced_chunks: 0,
            failed: None,
            stats: DecoderStats::default(),
        }
    }

    /// A connection found already open: both directions sync at the next chunk that begins
    /// with a plausible message; nothing before counts as an error.
    pub fn new_mid_stream() -> Self {
        let mut dec = Self::new();
        dec.req.frame = Frame::Resync;
        dec.resp.frame = Frame::Resync;
        dec.joined = true;
        dec
    }

    /// Feed one syscall's bytes. Err means the stream is not PostgreSQL or broken beyond repair:
    /// the caller stops decoding the connection. Completed exchanges are pushed to `out`.
    pub fn feed(
        &mut self,
        chunk: &Chunk<'_>,
        out: &mut Vec<PgExchange>,
    ) -> Result<(), DecodeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.tls {
            return Ok(());
        }
        let result = self.feed_chunk(chunk, out);
        if let Err(e) = result {
            self.failed = Some(e);
        }
        debug_assert!(self.req.body.len() <= MAX_BUFFERED_BYTES);
        debug_assert!(self.resp.body.len() <= MAX_BUFFERED_BYTES);
        debug_assert!(self.pending.len() <= 2 * MAX_PENDING + 1);
        debug_assert!(self.prepared.len() <= MAX_PREPARED);
        result
    }

    /// The connection closed at `ts_ns`. An execution whose response had begun is emitted with
    /// `complete = false` and `end_ns = max(ts_ns, last_ns of the last response chunk)`; queued
    /// requests with no response at all are counted unpaired. The decoder is then reset (stats
    /// are kept) and may be reused.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<PgExchange>) {
        if self.failed.is_none() && !self.tls && self.resp_bytes > 0 {
            let end = ts_ns.max(self.resp_last_ns);
            let started = match self.pending.front() {
                Some(Pending::Exec(_)) => true,
                Some(Pending::Simple(q)) => !q.failed && q.next < q.statements.len().max(1),
                _ => false,
            };
            if started {
                self.complete(Outcome::Cut, end, out);
            }
        }
        let unpaired: u64 = self.pending.iter().map(unanswered).sum();
        self.stats.unpaired_requests += unpaired;
        let stats = self.stats;
        *self = Self::new();
        self.stats = stats;
    }

    /// Database, user and application name once the StartupMessage was seen.
    pub fn startup(&self) -> Option<&StartupInfo> {
        self.startup.as_ref()
    }

    /// True once an SSLRequest was answered `S` (or a GSSENCRequest `G`): the rest is encrypted,
    /// the caller stops decoding and counts the connection as TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Counters since the last call, reset.
    pub fn take_stats(&mut self) -> DecoderStats {
        std::mem::take(&mut self.stats)
    }

    fn half(&mut self, stream: Stream) -> &mut Half {
        match stream {
            Stream::Request => &mut self.req,
            Stream::Response => &mut self.resp,
        }
    }

    fn feed_chunk(&mut self, c: &Chunk<'_>, out: &mut Vec<PgExchange>) -> Result<(), DecodeError> {
        if c.stream == Stream::Response {
            self.resp_last_ns = c.last_ns;
            if self.req.frame == Frame::Undecided
                && self.resp.frame == Frame::Header
                && !self.resp.synced
            {
                // The server never speaks first: this connection was open before we saw it.
                self.resp.frame = Frame::Resync;
                self.joined = true;
            }
        }
        let half = self.half(c.stream);
        if half.frame == Frame::Resync {
            if c.stream == Stream::Request && startup_packet(c.bytes).is_some() {
                half.frame = Frame::StartupHeader;
                half.have = 0;
                half.synced = true;
            } else if plausible(c.stream, c.bytes) {
                half.frame = Frame::Header;
                half.have = 0;
                half.synced = true;
            } else {
                if c.stream == Stream::Request && !half.synced {
                    self.unsynced_chunks += 1;
                    if self.unsynced_chunks >= MID_STREAM_GIVE_UP_CHUNKS {
                        return Err(DecodeError::NotPostgres);
                    }
                }
                return Ok(());
            }
        }
        self.consume(c.stream, c.bytes, c, out)?;
        let gap = c.gap();
        if gap > 0 && !self.tls {
            self.skip_gap(c.stream, gap, c, out)?;
        }
        Ok(())
    }

    /// Frames `data` (captured bytes of chunk `c`, or a replay of them).
    fn consume(
        &mut self,
        stream: Stream,
        data: &[u8],
        c: &Chunk<'_>,
        out: &mut Vec<PgExchange>,
    ) -> Result<(), DecodeError> {
        let mut pos = 0;
        while pos < data.len() {
            if self.tls {
                return Ok(());
            }
            let half = self.half(stream);
            match half.frame {
                Frame::Resync => return Ok(()),
                Frame::Answer { gss } => {
                    match (data[pos], gss) {
                        (b'S', false) | (b'G', true) => {
                            self.tls = true;
                            return Ok(());
                        }
                        (b'N', _) => {
                            half.frame = Frame::Header;
                            pos += 1;
                        }
                        // A server that does not know the request answers with an error.
                        (b'E', _) => half.frame = Frame::Header,
                        _ => return Err(DecodeError::Malformed("bad_encryption_answer")),
                    }
                }
                Frame::Undecided | Frame::StartupHeader | Frame::Header => {
                    let need = match half.frame {
                        Frame::Undecided => 8,
                        Frame::StartupHeader => 4,
                        _ => 5,
                    };
                    if half.have == 0 {
                        half.first_ns = c.first_ns;
                    }
                    let n = (need - usize::from(half.have)).min(data.len() - pos);
                    let have = usize::from(half.have);
                    half.hdr[have..have + n].copy_from_slice(&data[pos..pos + n]);
                    half.have += n as u8;
                    pos += n;
                    if usize::from(half.have) < need {
                        continue;
                    }
                    half.have = 0;
                    if half.frame == Frame::Undecided {
                        // Replay the 8 bytes as what they turned out to be, dated from the
                        // chunk of their first byte.
                        let first = half.hdr;
                        let replay = Chunk {
                            first_ns: half.first_ns,
                            ..*c
                        };
                        self.decide(&first)?;
                        self.consume(stream, &first, &replay, out)?;
                        continue;
                    }
                    self.header(stream, c, out)?;
                }
                Frame::Body {
                    ty,
                    len,
                    left,
                    keep,
                } => {
                    let n = (left as usize).min(data.len() - pos);
                    let bytes = &data[pos..pos + n];
                    pos += n;
                    if keep && left == len && n == len as usize {
                        // The whole body is in this chunk: parse it in place.
                        half.frame = half.next_frame(ty);
                        self.message(stream, ty, bytes, len, false, c, out)?;
                        continue;
                    }
                    if keep {
                        let room = MAX_BUFFERED_BYTES - half.body.len();
                        half.body.extend_from_slice(&bytes[..n.min(room)]);
                    }
                    let left = left - n as u32;
                    if left > 0 {
                        half.frame = Frame::Body {
                            ty,
                            len,
                            left,
                            keep,
                        };
                    } else {
                        half.frame = half.next_frame(ty);
                        self.finish_buffered(stream, ty, len, c, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Decides what the first 8 request bytes of a fresh connection are.
    fn decide(&mut self, first: &[u8; 8]) -> Result<(), DecodeError> {
        if startup_packet(first).is_some() {
            self.req.frame = Frame::StartupHeader;
            return Ok(());
        }
        if header_ok(Stream::Request, first[0], be32(&first[1..5])) && body_start_ok(first) {
            self.req.frame = Frame::Header;
            self.joined = true;
            if self.resp.frame == Frame::Header && !self.resp.synced && self.resp.have == 0 {
                self.resp.frame = Frame::Resync;
            }
            return Ok(());
        }
        Err(DecodeError::NotPostgres)
    }

    /// A complete header is in `hdr`: validate it and enter the body.
    fn header(
        &mut self,
        stream: Stream,
        c: &Chunk<'_>,
        out: &mut Vec<PgExchange>,
    ) -> Result<(), DecodeError> {
        let half = self.half(stream);
        let (ty, total) = if half.frame == Frame::StartupHeader {
            let len = be32(&half.hdr[..4]);
            if !(8..=MAX_STARTUP_BYTES).contains(&len) {
                return Err(half.error("bad_startup_packet"));
            }
            (0, len)
        } else {
            let (ty, len) = (half.hdr[0], be32(&half.hdr[1..5]));
            if !is_message_type(stream, ty) {
                return Err(half.error("bad_message_type"));
            }
            if !header_ok(stream, ty, len) {
                return Err(half.error("bad_message_length"));
            }
            (ty, len)
        };
        let len = total - 4;
        let keep = keeps(stream, ty);
        half.body.clear();
        half.truncated = false;
        if len == 0 {
            half.frame = half.next_frame(ty);
            return self.message(stream, ty, &[], 0, false, c, out);
        }
        half.frame = Frame::Body {
            ty,
            len,
            left: len,
            keep,
        };
        Ok(())
    }

    /// Hands a body that was buffered across chunks (or cut by a gap) to [`Self::message`].
    fn finish_buffered(
        &mut self,
        stream: Stream,
        ty: u8,
        len: u32,
        c: &Chunk<'_>,
        out: &mut Vec<PgExchange>,
    ) -> Result<(), DecodeError> {
        let half = self.half(stream);
        let body = std::mem::take(&mut half.body);
        let truncated = half.truncated;
        if truncated {
            self.stats.truncated_headers += 1;
        }
        let result = self.message(stream, ty, &body, len, truncated, c, out);
        let half = self.half(stream);
        if half.body.capacity() == 0 {
            half.body = body;
            half.body.clear();
        }
        result
    }

    /// Skips `gap` uncaptured bytes at the end of chunk `c`.
    fn skip_gap(
        &mut self,
        stream: Stream,
        gap: u64,
        c: &Chunk<'_>,
        out: &mut Vec<PgExchange>,
    ) -> Result<(), DecodeError> {
        let half = self.half(stream);
        match half.frame {
            Frame::Resync => Ok(()),
            Frame::Body {
                ty,
                len,
                left,
                keep,
            } => {
                if gap < u64::from(left) {
                    half.frame = Frame::Body {
                        ty,
                        len,
                        left: left - gap as u32,
                        keep,
                    };
                    half.truncated |= keep;
                    return Ok(());
                }
                half.truncated |= keep;
                half.frame = half.next_frame(ty);
                self.finish_buffered(stream, ty, len, c, out)?;
                if gap > u64::from(left) {
                    // The next message starts inside the gap.
                    self.lose_framing(stream);
                }
                Ok(())
            }
            Frame::Undecided => {
                // Too little was captured to tell: treat the connection as joined mid-stream.
                self.req.frame = Frame::Resync;
                self.joined = true;
                if self.resp.frame == Frame::Header && !self.resp.synced && self.resp.have == 0 {
                    self.resp.frame = Frame::Resync;
                }
                Ok(())
            }
            Frame::Header | Frame::StartupHeader | Frame::Answer { .. } => {
                self.lose_framing(stream);
                Ok(())
            }
        }
    }

    /// A gap hid a message header.
    fn lose_framing(&mut self, stream: Stream) {
        self.stats.resyncs += 1;
        self.stats.truncated_headers += 1;
        let half = self.half(stream);
        half.frame = Frame::Resync;
        half.have = 0;
        half.body.clear();
        if stream == Stream::Request {
            self.building = None;
        }
    }

    /// One whole message (or the captured prefix of its body, when `truncated`).
    #[allow(clippy::too_many_arguments)]
    fn message(
        &mut self,
        stream: Stream,
        ty: u8,
        body: &[u8],
        len: u32,
        truncated: bool,
        c: &Chunk<'_>,
        out: &mut Vec<PgExchange>,
    ) -> Result<(), DecodeError> {
        let half = self.half(stream);
        half.synced = true;
        let first_ns = half.first_ns;
        let bytes = u64::from(len) + if ty == 0 { 4 } else { 5 };
        match stream {
            Stream::Request if ty == 0 => self.startup_packet(body, truncated),
            Stream::Request => {
                self.request(ty, body, bytes, first_ns);
                Ok(())
            }
            Stream::Response => {
                self.response(ty, body, bytes, c.last_ns, out);
                Ok(())
            }
        }
    }

    fn startup_packet(&mut self, body: &[u8], truncated: bool) -> Result<(), DecodeError> {
        let Some(code) = body.get(..4).map(be32) else {
            // Cut by a gap before its code (only a gap can make a body this short): after
            // encryption negotiation it is most likely the StartupMessage.
            self.req.frame = Frame::Header;
            return Ok(());
        };
        match code {
            SSL_REQUEST => self.await_answer(false),
            GSSENC_REQUEST => self.await_answer(true),
            CANCEL_REQUEST => {}
            _ if code >> 16 == PROTOCOL_MAJOR_3 => {
                self.req.frame = Frame::Header;
                self.startup = Some(startup_info(&body[4..], truncated));
                self.logging_in = true;
            }
            _ => return Err(DecodeError::Malformed("bad_startup_packet")),
        }
        Ok(())
    }

    fn await_answer(&mut self, gss: bool) {
        if self.resp.frame == Frame::Header && self.resp.have == 0 {
            self.resp.frame = Frame::Answer { gss };
        }
    }

    fn request(&mut self, ty: u8, body: &[u8], bytes: u64, first_ns: u64) {
        match ty {
            b'Q' => {
                self.building = None;
                let (sql, _) = cstr(body);
                let sql: Box<str> = String::from_utf8_lossy(sql).into();
                let statements = sql::split_statements(&sql)
                    .into_iter()
                    .map(|s| {
                        let start = s.as_ptr() as usize - sql.as_ptr() as usize;
                        (start as u32, (start + s.len()) as u32)
                    })
                    .collect();
                self.push(Pending::Simple(Simple {
                    start_ns: first_ns,
                    request_bytes: bytes,
                    sql,
                    statements,
                    next: 0,
                    failed: false,
                }));
            }
            b'P' => {
                self.build(first_ns, bytes);
                let (name, rest) = cstr(body);
                let (sql, _) = cstr(rest);
                let statement = Arc::new(Statement::new(&String::from_utf8_lossy(sql)));
                if name.is_empty() {
                    self.unnamed = Some(statement);
                } else {
                    self.prepare(String::from_utf8_lossy(name).into_owned(), statement);
                }
            }
            b'B' => {
                self.build(first_ns, bytes);
                let (portal, rest) = cstr(body);
                let (name, _) = cstr(rest);
                let bound = self.statement(name);
                if portal.is_empty() {
                    self.unnamed_portal = bound;
                } else {
                    let portal = String::from_utf8_lossy(portal).into_owned();
                    self.portals.retain(|(p, _)| *p != portal);
                    if self.portals.len() >= MAX_PORTALS {
                        self.portals.remove(0);
                    }
                    self.portals.push((portal, bound));
                }
            }
            b'D' => self.build(first_ns, bytes),
            b'E' => {
                let (portal, _) = cstr(body);
                let bound = if portal.is_empty() {
                    self.unnamed_portal.clone()
                } else {
                    self.portals
                        .iter()
                        .find(|(p, _)| p.as_bytes() == portal)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default()
                };
                let built = self.building.take();
                self.push(Pending::Exec(Exec {
                    start_ns: built.map_or(first_ns, |b| b.start_ns),
                    request_bytes: built.map_or(0, |b| b.bytes) + bytes,
                    statement: bound.statement,
                    name: bound.name,
                }));
            }
            b'S' => {
                self.building = None;
                self.push(Pending::Sync);
            }
            b'C' => {
                let (kind, name) = body.split_first().map_or((0, &[][..]), |(k, r)| (*k, r));
                let (name, _) = cstr(name);
                match kind {
                    b'S' if name.is_empty() => self.unnamed = None,
                    b'S' => {
                        self.prepared.remove(String::from_utf8_lossy(name).as_ref());
                    }
                    b'P' if name.is_empty() => self.unnamed_portal = Portal::default(),
                    b'P' => self.portals.retain(|(p, _)| p.as_bytes() != name),
                    _ => {}
                }
            }
            b'd' | b'c' | b'f' => match self.pending.front_mut() {
                Some(Pending::Exec(x)) => x.request_bytes += bytes,
                Some(Pending::Simple(q)) => q.request_bytes += bytes,
                _ => {}
            },
            // Flush, Terminate, FunctionCall, password/SASL messages: nothing to record.
            _ => {}
        }
    }

    fn build(&mut self, first_ns: u64, bytes: u64) {
        let b = self.building.get_or_insert(Building {
            start_ns: first_ns,
            bytes: 0,
        });
        b.bytes += bytes;
    }

    /// The statement a Bind names, with its name (None for the unnamed statement).
    fn statement(&self, name: &[u8]) -> Portal {
        if name.is_empty() {
            return Portal {
                statement: self.unnamed.clone(),
                name: None,
            };
        }
        let known = std::str::from_utf8(name)
            .ok()
            .and_then(|n| self.prepared.get(n));
        match known {
            Some((p, _)) => p.clone(),
            // Prepared before the capture began (or evicted): name only.
            None => Portal {
                statement: None,
                name: Some(String::from_utf8_lossy(name).into()),
            },
        }
    }

    fn prepare(&mut self, name: String, statement: Arc<Statement>) {
        self.prepared_seq += 1;
        let seq = self.prepared_seq;
        if !self.prepared.contains_key(&name) {
            while self.prepared.len() >= MAX_PREPARED {
                let Some((old, old_seq)) = self.prepared_order.pop_front() else {
                    break;
                };
                if self.prepared.get(&old).is_some_and(|(_, s)| *s == old_seq) {
                    self.prepared.remove(&old);
                }
            }
        }
        if self.prepared_order.len() >= 2 * MAX_PREPARED {
            // Closed and re-prepared names leave stale entries behind: drop them.
            let prepared = &self.prepared;
            self.prepared_order
                .retain(|(n, s)| prepared.get(n).is_some_and(|(_, cur)| cur == s));
        }
        self.prepared_order.push_back((name.clone(), seq));
        let bound = Portal {
            statement: Some(statement),
            name: Some(name.as_str().into()),
        };
        self.prepared.insert(name, (bound, seq));
    }

    fn push(&mut self, p: Pending) {
        self.joined = false;
        if self.pending.len() >= MAX_PENDING {
            let n = match p {
                Pending::Exec(_) => 1,
                Pending::Simple(ref q) => q.statements.len().max(1) as u64,
                Pending::Untracked(n) => n,
                Pending::Sync => 0,
            };
            if n > 0 {
                if let Some(Pending::Untracked(m)) = self.pending.back_mut() {
                    *m += n;
                } else {
                    self.pending.push_back(Pending::Untracked(n));
                }
            }
            if matches!(p, Pending::Sync | Pending::Simple(_)) {
                self.pending.push_back(Pending::Sync);
            }
            while self.pending.len() > 2 * MAX_PENDING {
                if let Some(old) = self.pending.pop_front() {
                    self.stats.unpaired_requests += unanswered(&old);
                }
            }
            return;
        }
        self.pending.push_back(p);
    }

    fn response(
        &mut self,
        ty: u8,
        body: &[u8],
        bytes: u64,
        end_ns: u64,
        out: &mut Vec<PgExchange>,
    ) {
        self.resp_bytes += bytes;
        match ty {
            b'D' => self.data_rows += 1,
            b'C' => {
                let (tag, _) = cstr(body);
                self.complete(Outcome::Done(tag), end_ns, out);
            }
            b'E' => {
                let state = sqlstate(body);
                self.complete(Outcome::Error(state), end_ns, out);
            }
            b'I' => self.complete(Outcome::Empty, end_ns, out),
            b's' => self.complete(Outcome::Suspended, end_ns, out),
            b'Z' => self.ready(),
            _ => {}
        }
    }

    /// A completion message arrived: finish the request it answers.
    fn complete(&mut self, outcome: Outcome<'_>, end_ns: u64, out: &mut Vec<PgExchange>) {
        let resp_bytes = std::mem::take(&mut self.resp_bytes);
        let data_rows = std::mem::take(&mut self.data_rows);
        let is_error = matches!(outcome, Outcome::Error(_));
        let (start_ns, request_bytes, statement, name) = match self.pending.front_mut() {
            Some(Pending::Simple(q)) => {
                if q.failed {
                    return;
                }
                let statement = q
                    .statements
                    .get(q.next)
                    .map(|&(a, b)| Statement::new(q.sql.get(a as usize..b as usize).unwrap_or("")));
                q.next += 1;
                q.failed = is_error;
                let request_bytes = std::mem::take(&mut q.request_bytes);
                (q.start_ns, request_bytes, statement.map(Arc::new), None)
            }
            Some(Pending::Exec(_)) => {
                let Some(Pending::Exec(x)) = self.pending.pop_front() else {
                    unreachable!("front was an Exec");
                };
                (x.start_ns, x.request_bytes, x.statement, x.name)
            }
            Some(Pending::Untracked(n)) => {
                *n -= 1;
                if *n == 0 {
                    self.pending.pop_front();
                }
                self.stats.unpaired_requests += 1;
                return;
            }
            // An error for a Parse or Bind without Execute (a failed prepare): no exchange.
            Some(Pending::Sync) if is_error => return,
            // An error with nothing pending: a start-up or FATAL error.
            None if is_error => return,
            Some(Pending::Sync) | None => {
                if !self.joined {
                    self.stats.unexpected_responses += 1;
                }
                return;
            }
        };
        out.push(exchange(
            outcome,
            statement.as_deref(),
            name,
            data_rows,
            start_ns,
            end_ns,
            request_bytes,
            resp_bytes,
        ));
    }

    /// ReadyForQuery: the Query or Sync at the head is answered; Executes before it that got no
    /// completion were skipped by the server (after an error) or lost in a gap.
    fn ready(&mut self) {
        self.resp_bytes = 0;
        self.data_rows = 0;
        if std::mem::take(&mut self.logging_in) {
            return;
        }
        if !self
            .pending
            .iter()
            .any(|p| matches!(p, Pending::Simple(_) | Pending::Sync))
        {
            return;
        }
        while let Some(p) = self.pending.pop_front() {
            match p {
                Pending::Simple(_) | Pending::Sync => {
                    self.stats.unpaired_requests += unanswered(&p);
                    break;
                }
                other => self.stats.unpaired_requests += unanswered(&other),
            }
        }
    }
}

impl Half {
    /// The frame after a body of type `ty` ends (start-up packets may change it after).
    fn next_frame(&self, ty: u8) -> Frame {
        if ty == 0 && self.stream == Stream::Request {
            Frame::StartupHeader
        } else {
            Frame::Header
        }
    }
}

/// How many requests a pending item stands for that will now get no exchange.
fn unanswered(p: &Pending) -> u64 {
    match p {
        Pending::Simple(q) if q.failed => 0,
        Pending::Simple(q) => q.statements.len().saturating_sub(q.next) as u64,
        Pending::Exec(_) => 1,
        Pending::Untracked(n) => *n,
        Pending::Sync => 0,
    }
}

/// What ended an execution.
#[derive(Clone, Copy, Debug)]
enum Outcome<'a> {
    /// CommandComplete with its tag.
    Done(&'a [u8]),
    /// ErrorResponse with its SQLSTATE, if found.
    Error(Option<[u8; 5]>),
    Empty,
    Suspended,
    /// The connection closed mid-response.
    Cut,
}

#[allow(clippy::too_many_arguments)]
fn exchange(
    outcome: Outcome<'_>,
    statement: Option<&Statement>,
    statement_name: Option<Arc<str>>,
    data_rows: u64,
    start_ns: u64,
    end_ns: u64,
    request_bytes: u64,
    response_bytes: u64,
) -> PgExchange {
    let tag = match outcome {
        Outcome::Done(tag) => Some(tag),
        _ => None,
    };
    let rows = tag
        .and_then(tag_rows)
        .or((data_rows > 0).then_some(data_rows));
    let error_sqlstate = match outcome {
        Outcome::Error(state) => {
            Some(state.map_or_else(String::new, |s| String::from_utf8_lossy(&s).into_owned()))
        }
        _ => None,
    };
    let (operation, collection, query_summary, query_text) = match statement {
        Some(s) if !s.operation.is_empty() => (
            s.operation.clone(),
            s.collection.clone(),
            s.summary.clone(),
            s.text.clone(),
        ),
        _ => {
            let op = match (outcome, tag.and_then(tag_operation)) {
                (_, Some(op)) => op,
                (Outcome::Empty, None) => EMPTY_OPERATION.to_owned(),
                _ => UNKNOWN_OPERATION.to_owned(),
            };
            let text = statement.map_or_else(String::new, |s| s.text.clone());
            (op.clone(), None, op, text)
        }
    };
    PgExchange {
        operation,
        collection,
        query_summary,
        query_text,
        statement_name: statement_name.map(|n| n.to_string()),
        rows,
        error_sqlstate,
        start_ns,
        end_ns,
        request_bytes,
        response_bytes,
        complete: !matches!(outcome, Outcome::Cut),
    }
}

/// Row count of a CommandComplete tag that carries one.
fn tag_rows(tag: &[u8]) -> Option<u64> {
    const COUNTED: [&[u8]; 8] = [
        b"SELECT", b"INSERT", b"UPDATE", b"DELETE", b"MERGE", b"COPY", b"FETCH", b"MOVE",
    ];
    let first = tag.split(|&c| c == b' ').next()?;
    if !COUNTED.contains(&first) {
        return None;
    }
    let last = tag.rsplit(|&c| c == b' ').next()?;
    if last.is_empty() || last.len() > 20 || !last.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(last).ok()?.parse().ok()
}

/// First word of a CommandComplete tag, as an operation.
fn tag_operation(tag: &[u8]) -> Option<String> {
    let first = tag.split(|&c| c == b' ').next()?;
    if first.is_empty() || first.len() > 32 || !first.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    Some(String::from_utf8_lossy(first).to_ascii_uppercase())
}

/// The `C` (SQLSTATE) field of an ErrorResponse body.
fn sqlstate(mut body: &[u8]) -> Option<[u8; 5]> {
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            return None;
        }
        let (value, rest) = cstr(rest);
        if field == b'C' {
            return value
                .try_into()
                .ok()
                .filter(|v: &[u8; 5]| v.iter().all(u8::is_ascii_alphanumeric));
        }
        body = rest;
    }
    None
}

/// StartupMessage parameters (after the protocol version): user, database, application_name.
fn startup_info(mut params: &[u8], truncated: bool) -> StartupInfo {
    let mut info = StartupInfo::default();
    loop {
        let (key, rest) = cstr(params);
        if key.is_empty() {
            break;
        }
        let (value, rest) = cstr(rest);
        if truncated && rest.is_empty() {
            break; // the value may be cut: better none than a wrong one
        }
        let value: String = String::from_utf8_lossy(value)
            .chars()
            .take(MAX_PARAM_CHARS)
            .collect();
        match key {
            b"user" => info.user = Some(value),
            b"database" => info.database = Some(value),
            b"application_name" if !value.is_empty() => info.application_name = Some(value),
            _ => {}
        }
        params = rest;
    }
    if info.database.is_none() {
        info.database = info.user.clone();
    }
    info
}

/// The bytes up to the first NUL (all of them if there is none, as in a truncated body) and
/// the rest after the NUL.
fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(n) => (&b[..n], &b[n + 1..]),
        None => (b, &[]),
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Whether the body of a message of this type is parsed (else skipped by count).
fn keeps(stream: Stream, ty: u8) -> bool {
    match stream {
        Stream::Request => matches!(ty, 0 | b'Q' | b'P' | b'B' | b'E' | b'C'),
        Stream::Response => matches!(ty, b'C' | b'E'),
    }
}

fn is_message_type(stream: Stream, ty: u8) -> bool {
    min_len(stream, ty).is_some()
}

/// Smallest and largest length field of a message type in a direction; None if the type does
/// not exist there.
fn min_len(stream: Stream, ty: u8) -> Option<(u32, u32)> {
    let any = MAX_MESSAGE_BYTES;
    Some(match stream {
        Stream::Request => match ty {
            b'Q' => (5, any),
            b'P' => (8, any),
            b'B' => (12, any),
            b'E' => (9, any),
            b'D' | b'C' => (6, any),
            b'S' | b'H' | b'c' | b'X' => (4, 4),
            b'd' | b'p' => (4, any),
            b'f' => (5, any),
            b'F' => (14, any),
            _ => return None,
        },
        Stream::Response => match ty {
            b'R' => (8, any),
            b'K' => (8, 4 + 4 + 256),
            b'S' => (6, any),
            b'Z' => (5, 5),
            b'C' | b'E' | b'N' => (5, any),
            b'T' | b'D' | b't' => (6, any),
            b'I' | b'1' | b'2' | b'3' | b'n' | b's' | b'c' => (4, 4),
            b'G' | b'H' | b'W' => (7, any),
            b'd' => (4, any),
            b'A' => (10, any),
            b'V' => (8, any),
            b'v' => (12, any),
            _ => return None,
        },
    })
}

fn header_ok(stream: Stream, ty: u8, len: u32) -> bool {
    min_len(stream, ty).is_some_and(|(lo, hi)| (lo..=hi).contains(&len))
}

/// For a typed message seen first on a fresh connection: the first body bytes of a Query or
/// Parse look like text.
fn body_start_ok(first: &[u8; 8]) -> bool {
    let printable = |b: &[u8]| {
        b.iter()
            .all(|&c| c == 0 || c >= 0x20 || c.is_ascii_whitespace())
    };
    match first[0] {
        b'Q' | b'P' => printable(&first[5..]),
        _ => true,
    }
}

/// The start-up packet code if `b` begins with one (length, then a known code).
fn startup_packet(b: &[u8]) -> Option<u32> {
    let len = be32(b.get(..4)?);
    let code = be32(b.get(4..8)?);
    let ok = match code {
        SSL_REQUEST | GSSENC_REQUEST => len == 8,
        CANCEL_REQUEST => (16..=4 + 4 + 4 + 256).contains(&len),
        // Protocol 3.x; the minor version is negotiated.
        _ => {
            code >> 16 == PROTOCOL_MAJOR_3
                && code & 0xffff < 0x100
                && (8..=MAX_STARTUP_BYTES).contains(&len)
        }
    };
    ok.then_some(code)
}

/// Whether a chunk plausibly begins on a message boundary of `stream`: at least one whole
/// header, and every header in it (up to [`PLAUSIBLE_MESSAGES`]) valid.
fn plausible(stream: Stream, b: &[u8]) -> bool {
    let mut pos = 0;
    for _ in 0..PLAUSIBLE_MESSAGES {
        let Some(hdr) = b.get(pos..pos + 5) else {
            return pos > 0;
        };
        let len = be32(&hdr[1..]);
        if !header_ok(stream, hdr[0], len) {
            return false;
        }
        if stream == Stream::Request && matches!(hdr[0], b'Q' | b'P') {
            let text = &b[(pos + 5).min(b.len())..(pos + 1 + len as usize).min(b.len())];
            let text = &text[..text.len().min(32)];
            let printable = text
                .iter()
                .all(|&c| c == 0 || c >= 0x20 || c.is_ascii_whitespace());
            if !printable {
                return false;
            }
        }
        pos += 1 + len as usize;
        if pos >= b.len() {
            return true;
        }
    }
    true
}

/// Protocol detection from the first bytes seen on a connection: Some(Stream::Request) if they
/// are a start-up packet (StartupMessage for protocol 3.x, SSLRequest, GSSENCRequest,
/// CancelRequest) or, for a connection joined `mid_stream`, a plausible frontend message (a
/// known type with a sane length, a Query or Parse followed by text, and every further message
/// header in the bytes valid). Backend bytes are never claimed: their types overlap the
/// frontend's and a server never speaks first. Needs 8 bytes for a start-up packet, 5 for a
/// message.
pub fn detect(bytes: &[u8], mid_stream: bool) -> Option<Stream> {
    if startup_packet(bytes).is_some() {
        return Some(Stream::Request);
    }
    if !mid_stream {
        return None;
    }
    let &ty = bytes.first()?;
    // A Query or Parse must show some text; other types carry binary fields.
    let enough = match ty {
        b'Q' => bytes.len() >= 8,
        _ => bytes.len() >= 5,
    };
    (enough && plausible(Stream::Request, bytes)).then_some(Stream::Request)
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- message builders ----

    fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![ty];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn z(body: &[u8]) -> Vec<u8> {
        let mut v = body.to_vec();
        v.push(0);
        v
    }

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = (3u32 << 16).to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(&z(k.as_bytes()));
            body.extend_from_slice(&z(v.as_bytes()));
        }
        body.push(0);
        let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        m
    }

    fn ssl_request() -> Vec<u8> {
        let mut m = 8u32.to_be_bytes().to_vec();
        m.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        m
    }

    fn query(sql: &str) -> Vec<u8> {
        msg(b'Q', &z(sql.as_bytes()))
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = z(name.as_bytes());
        b.extend_from_slice(&z(sql.as_bytes()));
        b.extend_from_slice(&0u16.to_be_bytes());
        msg(b'P', &b)
    }

    fn bind(portal: &str, stmt: &str) -> Vec<u8> {
        let mut b = z(portal.as_bytes());
        b.extend_from_slice(&z(stmt.as_bytes()));
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        msg(b'B', &b)
    }

    fn describe_portal(portal: &str) -> Vec<u8> {
        let mut b = vec![b'P'];
        b.extend_from_slice(&z(portal.as_bytes()));
        msg(b'D', &b)
    }

    fn execute(portal: &str, max_rows: u32) -> Vec<u8> {
        let mut b = z(portal.as_bytes());
        b.extend_from_slice(&max_rows.to_be_bytes());
        msg(b'E', &b)
    }

    fn close_statement(name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        b.extend_from_slice(&z(name.as_bytes()));
        msg(b'C', &b)
    }

    fn sync() -> Vec<u8> {
        msg(b'S', &[])
    }

    fn flush() -> Vec<u8> {
        msg(b'H', &[])
    }

    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', &z(tag.as_bytes()))
    }

    fn error(state: &str) -> Vec<u8> {
        let mut b = b"SERROR\0VERROR\0C".to_vec();
        b.extend_from_slice(&z(state.as_bytes()));
        b.extend_from_slice(b"Msomething went wrong\0\0");
        msg(b'E', &b)
    }

    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    fn row_desc() -> Vec<u8> {
        msg(
            b'T',
            b"\0\x01a\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        )
    }

    fn data_row(v: &str) -> Vec<u8> {
        let mut b = vec![0, 1];
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
        msg(b'D', &b)
    }

    fn login() -> Vec<u8> {
        cat(&[
            msg(b'R', &[0, 0, 0, 0]),
            msg(b'S', b"server_version\x0015.18\0"),
            msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]),
            ready(),
        ])
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    /// Drives a decoder with synthetic timestamps: chunk number `t` has `first_ns = 10 t` and
    /// `last_ns = 10 t + 5`.
    struct Conn {
        dec: PgDecoder,
        out: Vec<PgExchange>,
        t: u64,
    }

    impl Conn {
        fn new() -> Self {
            Conn {
                dec: PgDecoder::new(),
                out: Vec::new(),
                t: 0,
            }
        }

        /// A connection past start-up.
        fn logged_in() -> Self {
            let mut c = Conn::new();
            c.req(&startup(&[("user", "alice"), ("database", "shop")]))
                .resp(&login());
            c
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

        fn take(&mut self) -> Vec<PgExchange> {
            std::mem::take(&mut self.out)
        }

        fn lines(&mut self) -> Vec<String> {
            lines(&self.take())
        }
    }

    /// Compact view of an exchange, without timestamps.
    fn line(x: &PgExchange) -> String {
        let mut s = format!("{} | {}", x.query_summary, x.query_text);
        if let Some(n) = &x.statement_name {
            s += &format!(" | name={n}");
        }
        if let Some(r) = x.rows {
            s += &format!(" | rows={r}");
        }
        if let Some(e) = &x.error_sqlstate {
            s += &format!(" | error={e}");
        }
        if !x.complete {
            s += " | incomplete";
        }
        s
    }

    fn lines(xs: &[PgExchange]) -> Vec<String> {
        xs.iter().map(line).collect()
    }

    #[test]
    fn startup_then_simple_query() {
        let mut c = Conn::new();
        c.req(&startup(&[
            ("user", "alice"),
            ("database", "shop"),
            ("application_name", "web"),
        ]));
        assert_eq!(
            c.dec.startup(),
            Some(&StartupInfo {
                database: Some("shop".into()),
                user: Some("alice".into()),
                application_name: Some("web".into()),
            })
        );
        c.resp(&login());
        c.req(&query("SELECT name FROM users WHERE id = 42"));
        c.resp(&cat(&[
            row_desc(),
            data_row("bob"),
            complete("SELECT 1"),
            ready(),
        ]));
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["SELECT users | SELECT name FROM users WHERE id = ? | rows=1"]
        );
        let x = &xs[0];
        assert_eq!(
            (x.operation.as_str(), x.collection.as_deref()),
            ("SELECT", Some("users"))
        );
        assert_eq!((x.start_ns, x.end_ns), (30, 45));
        assert_eq!(
            x.request_bytes,
            query("SELECT name FROM users WHERE id = 42").len() as u64
        );
        assert_eq!(
            x.response_bytes,
            (row_desc().len() + data_row("bob").len() + complete("SELECT 1").len()) as u64
        );
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn database_defaults_to_user() {
        let mut c = Conn::new();
        c.req(&startup(&[("user", "alice")]));
        let info = c.dec.startup().expect("startup seen");
        assert_eq!(info.database.as_deref(), Some("alice"));
        assert_eq!(info.application_name, None);
    }

    #[test]
    fn multi_statement_query_pairs_in_order() {
        let mut c = Conn::logged_in();
        c.req(&query(
            "SELECT 1; UPDATE t SET a=1 WHERE b='x';  ;INSERT INTO u VALUES (1)",
        ));
        c.resp(&cat(&[row_desc(), data_row("1"), complete("SELECT 1")]));
        c.resp(&cat(&[
            complete("UPDATE 3"),
            complete("INSERT 0 1"),
            ready(),
        ]));
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            [
                "SELECT | SELECT ? | rows=1",
                "UPDATE t | UPDATE t SET a=? WHERE b=? | rows=3",
                "INSERT u | INSERT INTO u VALUES (?) | rows=1",
            ]
        );
        // All start at the Query; each ends at its own CommandComplete's chunk.
        assert_eq!(
            xs.iter().map(|x| x.start_ns).collect::<Vec<_>>(),
            [30, 30, 30]
        );
        assert_eq!(
            xs.iter().map(|x| x.end_ns).collect::<Vec<_>>(),
            [45, 55, 55]
        );
        // The Query's bytes go to the first statement only.
        assert!(xs[0].request_bytes > 0 && xs[1].request_bytes == 0);
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn error_aborts_the_rest_of_a_simple_query() {
        let mut c = Conn::logged_in();
        c.req(&query("SELECT 1; SELECT * FROM missing; SELECT 3"));
        c.resp(&cat(&[
            row_desc(),
            data_row("1"),
            complete("SELECT 1"),
            error("42P01"),
            ready(),
        ]));
        assert_eq!(
            c.lines(),
            [
                "SELECT | SELECT ? | rows=1",
                "SELECT missing | SELECT * FROM missing | error=42P01",
            ]
        );
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn empty_query() {
        let mut c = Conn::logged_in();
        c.req(&query("")).resp(&cat(&[msg(b'I', &[]), ready()]));
        c.req(&query(" -- nothing\n"))
            .resp(&cat(&[msg(b'I', &[]), ready()]));
        assert_eq!(c.lines(), ["EMPTY | ", "EMPTY | "]);
    }

    #[test]
    fn extended_unnamed_statement() {
        let mut c = Conn::logged_in();
        c.req(&cat(&[
            parse("", "SELECT * FROM orders WHERE id = $1"),
            bind("", ""),
            describe_portal(""),
            execute("", 0),
            sync(),
        ]));
        c.resp(&cat(&[
            msg(b'1', &[]),
            msg(b'2', &[]),
            row_desc(),
            data_row("a"),
            data_row("b"),
            complete("SELECT 2"),
            ready(),
        ]));
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["SELECT orders | SELECT * FROM orders WHERE id = $1 | rows=2"]
        );
        assert_eq!((xs[0].start_ns, xs[0].end_ns), (30, 45));
        assert_eq!(xs[0].request_bytes as usize, {
            parse("", "SELECT * FROM orders WHERE id = $1").len()
                + bind("", "").len()
                + describe_portal("").len()
                + execute("", 0).len()
        });
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn named_statements_are_remembered_and_prepare_alone_does_not_start_the_execution() {
        let mut c = Conn::logged_in();
        // Prepare on its own (pgbench -M prepared), then execute twice by name.
        c.req(&cat(&[
            parse("s1", "UPDATE acc SET bal = bal + $1 WHERE id = $2"),
            sync(),
        ]));
        c.resp(&cat(&[msg(b'1', &[]), ready()]));
        for _ in 0..2 {
            c.req(&cat(&[bind("", "s1"), execute("", 0), sync()]));
            c.resp(&cat(&[msg(b'2', &[]), complete("UPDATE 1"), ready()]));
        }
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            [
                "UPDATE acc | UPDATE acc SET bal = bal + $1 WHERE id = $2 | name=s1 | rows=1",
                "UPDATE acc | UPDATE acc SET bal = bal + $1 WHERE id = $2 | name=s1 | rows=1",
            ]
        );
        assert_eq!((xs[0].start_ns, xs[0].end_ns), (50, 65));
        assert_eq!(
            xs[0].request_bytes as usize,
            bind("", "s1").len() + execute("", 0).len()
        );
        // Closing the statement forgets it: a later Bind by that name has no SQL.
        c.req(&cat(&[
            close_statement("s1"),
            bind("", "s1"),
            execute("", 0),
            sync(),
        ]));
        c.resp(&cat(&[
            msg(b'3', &[]),
            msg(b'2', &[]),
            complete("UPDATE 1"),
            ready(),
        ]));
        assert_eq!(c.lines(), ["UPDATE |  | name=s1 | rows=1"]);
    }

    #[test]
    fn unknown_statement_uses_the_tag() {
        let mut c = Conn::logged_in();
        c.req(&cat(&[bind("", "never_parsed"), execute("", 0), sync()]));
        c.resp(&cat(&[msg(b'2', &[]), complete("CREATE TABLE"), ready()]));
        c.req(&cat(&[bind("", "never_parsed"), execute("", 0), sync()]));
        c.resp(&cat(&[msg(b'2', &[]), error("40001"), ready()]));
        assert_eq!(
            c.lines(),
            [
                "CREATE |  | name=never_parsed",
                "UNKNOWN |  | name=never_parsed | error=40001"
            ]
        );
    }

    #[test]
    fn pipeline_pairs_in_order() {
        let mut c = Conn::logged_in();
        c.req(&cat(&[
            parse("", "INSERT INTO t (a) VALUES ($1)"),
            bind("", ""),
            execute("", 0),
            parse("", "SELECT a FROM t"),
            bind("", ""),
            execute("", 0),
            parse("", "DELETE FROM t"),
            bind("", ""),
            execute("", 0),
            sync(),
        ]));
        c.resp(&cat(&[
            msg(b'1', &[]),
            msg(b'2', &[]),
            complete("INSERT 0 1"),
        ]));
        c.resp(&cat(&[
            msg(b'1', &[]),
            msg(b'2', &[]),
            data_row("1"),
            data_row("2"),
            complete("SELECT 2"),
            msg(b'1', &[]),
            msg(b'2', &[]),
            complete("DELETE 2"),
            ready(),
        ]));
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            [
                "INSERT t | INSERT INTO t (a) VALUES ($1) | rows=1",
                "SELECT t | SELECT a FROM t | rows=2",
                "DELETE t | DELETE FROM t | rows=2",
            ]
        );
        assert_eq!(
            xs.iter().map(|x| x.end_ns).collect::<Vec<_>>(),
            [45, 55, 55]
        );
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn pipeline_error_skips_until_sync() {
        let mut c = Conn::logged_in();
        c.req(&cat(&[
            parse("", "SELECT 1"),
            bind("", ""),
            execute("", 0),
            parse("", "SELECT * FROM missing"),
            bind("", ""),
            execute("", 0),
            parse("", "SELECT 3"),
            bind("", ""),
            execute("", 0),
            sync(),
        ]));
        c.resp(&cat(&[
            msg(b'1', &[]),
            msg(b'2', &[]),
            data_row("1"),
            complete("SELECT 1"),
            error("42P01"),
            ready(),
        ]));
        // After the Sync, the connection works again.
        c.req(&cat(&[
            parse("", "SELECT 4"),
            bind("", ""),
            execute("", 0),
            sync(),
        ]));
        c.resp(&cat(&[
            msg(b'1', &[]),
            msg(b'2', &[]),
            complete("SELECT 1"),
            ready(),
        ]));
        assert_eq!(
            c.lines(),
            [
                "SELECT | SELECT ? | rows=1",
                "SELECT missing | SELECT * FROM missing | error=42P01",
                "SELECT | SELECT ? | rows=1",
            ]
        );
        let stats = c.dec.take_stats();
        assert_eq!(stats.unpaired_requests, 1, "the skipped third Execute");
        assert_eq!(stats.unexpected_responses, 0);
    }

    #[test]
    fn sync_sent_after_the_error_arrived_still_drops_the_skipped() {
        let mut c = Conn::logged_in();
        c.req(&cat(&[
            parse("", "SELECT x"),
            bind("", ""),
            execute("", 0),
            flush(),
        ]));
        c.resp(&error("42703"));
        c.req(&cat(&[
            parse("", "SELECT 2"),
            bind("", ""),
            execute("", 0),
            sync(),
        ]));
        c.resp(&ready());
        assert_eq!(c.lines(), ["SELECT | SELECT x | error=42703"]);
        assert_eq!(c.dec.take_stats().unpaired_requests, 1);
    }

    #[test]
    fn failed_prepare_produces_no_exchange() {
        let mut c = Conn::logged_in();
        c.req(&cat(&[parse("s", "SELEC 1"), sync()]));
        c.resp(&cat(&[error("42601"), ready()]));
        assert!(c.take().is_empty());
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn portal_suspended_and_named_portals() {
        let mut c = Conn::logged_in();
        c.req(&cat(&[
            parse("", "SELECT * FROM big"),
            bind("cur", ""),
            execute("cur", 2),
            flush(),
        ]));
        c.resp(&cat(&[
            msg(b'1', &[]),
            msg(b'2', &[]),
            data_row("1"),
            data_row("2"),
            msg(b's', &[]),
        ]));
        c.req(&cat(&[execute("cur", 2), sync()]));
        c.resp(&cat(&[data_row("3"), complete("SELECT 1"), ready()]));
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            [
                "SELECT big | SELECT * FROM big | rows=2",
                "SELECT big | SELECT * FROM big | rows=1"
            ]
        );
        assert_eq!(xs[1].start_ns, 50);
    }

    #[test]
    fn copy_from_stdin_is_one_exchange_with_its_data() {
        let mut c = Conn::logged_in();
        c.req(&query("COPY items (a, b) FROM STDIN WITH (FORMAT csv)"));
        c.resp(&msg(b'G', &[0, 0, 2, 0, 0, 0, 0]));
        let data = cat(&[
            msg(b'd', b"1,x\n2,y\n"),
            msg(b'd', b"3,z\n"),
            msg(b'c', &[]),
        ]);
        c.req(&data);
        c.resp(&cat(&[complete("COPY 3"), ready()]));
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["COPY items | COPY items (a, b) FROM STDIN WITH (FORMAT csv) | rows=3"]
        );
        assert_eq!(
            xs[0].request_bytes as usize,
            query("COPY items (a, b) FROM STDIN WITH (FORMAT csv)").len() + data.len()
        );
    }

    #[test]
    fn copy_to_stdout_and_copy_fail() {
        let mut c = Conn::logged_in();
        c.req(&query("COPY (SELECT * FROM items) TO STDOUT"));
        c.resp(&cat(&[
            msg(b'H', &[0, 0, 1, 0, 0]),
            msg(b'd', b"1\n"),
            msg(b'd', b"2\n"),
            msg(b'c', &[]),
            complete("COPY 2"),
            ready(),
        ]));
        c.req(&query("COPY items FROM STDIN"));
        c.resp(&msg(b'G', &[0, 0, 1, 0, 0]));
        c.req(&cat(&[msg(b'd', b"1\n"), msg(b'f', b"client gave up\0")]));
        c.resp(&cat(&[error("57014"), ready()]));
        assert_eq!(
            c.lines(),
            [
                "COPY items | COPY (SELECT * FROM items) TO STDOUT | rows=2",
                "COPY items | COPY items FROM STDIN | error=57014",
            ]
        );
    }

    #[test]
    fn direction_decides_what_a_letter_means() {
        // Frontend D/C/H are Describe/Close/Flush; backend D/C/H are DataRow/CommandComplete/
        // CopyOutResponse. A Describe must not count as a row, a Close not complete anything.
        let mut c = Conn::logged_in();
        c.req(&cat(&[
            parse("s", "SELECT a FROM t"),
            msg(b'D', b"Ss\0"),
            flush(),
            close_statement("other"),
            bind("", "s"),
            execute("", 0),
            sync(),
        ]));
        c.resp(&cat(&[
            msg(b'1', &[]),
            msg(b't', &[0, 0]),
            row_desc(),
            msg(b'3', &[]),
            msg(b'2', &[]),
            data_row("x"),
            complete("SELECT 1"),
            ready(),
        ]));
        assert_eq!(c.lines(), ["SELECT t | SELECT a FROM t | name=s | rows=1"]);
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn ssl_request_answered_n_continues_in_plaintext() {
        let mut c = Conn::new();
        c.req(&ssl_request()).resp(b"N");
        assert!(!c.dec.is_tls());
        c.req(&startup(&[("user", "u")])).resp(&login());
        c.req(&query("BEGIN"))
            .resp(&cat(&[complete("BEGIN"), ready()]));
        assert_eq!(c.lines(), ["BEGIN | BEGIN"]);
        assert_eq!(c.dec.startup().and_then(|s| s.user.as_deref()), Some("u"));
    }

    #[test]
    fn ssl_request_answered_s_is_tls() {
        let mut c = Conn::new();
        c.req(&ssl_request()).resp(b"S");
        assert!(c.dec.is_tls());
        c.req(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage")
            .resp(b"\x16\x03\x03 more tls");
        c.close();
        assert!(c.take().is_empty());
        let mut c = Conn::new();
        let mut gss = 8u32.to_be_bytes().to_vec();
        gss.extend_from_slice(&GSSENC_REQUEST.to_be_bytes());
        c.req(&gss).resp(b"G");
        assert!(c.dec.is_tls());
    }

    #[test]
    fn bad_encryption_answer_is_malformed() {
        let mut c = Conn::new();
        c.req(&ssl_request());
        assert_eq!(
            c.feed(Stream::Response, b"X", 0),
            Err(DecodeError::Malformed("bad_encryption_answer"))
        );
    }

    #[test]
    fn cancel_request_produces_nothing() {
        let mut c = Conn::new();
        let mut cancel = 16u32.to_be_bytes().to_vec();
        cancel.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
        cancel.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        c.req(&cancel).close();
        assert!(c.take().is_empty());
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn passwords_are_skipped_and_terminate_is_nothing() {
        let mut c = Conn::new();
        c.req(&startup(&[("user", "u")]));
        c.resp(&msg(b'R', &[0, 0, 0, 3]));
        c.req(&msg(b'p', b"hunter2\0"));
        c.resp(&login());
        assert!(!format!("{:?}", c.dec).contains("hunter2"));
        c.req(&msg(b'X', &[])).close();
        assert!(c.take().is_empty());
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn close_mid_response_is_incomplete_and_unanswered_are_unpaired() {
        let mut c = Conn::logged_in();
        c.req(&cat(&[query("SELECT * FROM big")]));
        c.resp(&cat(&[row_desc(), data_row("1")]));
        c.close();
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["SELECT big | SELECT * FROM big | rows=1 | incomplete"]
        );
        assert_eq!((xs[0].start_ns, xs[0].end_ns), (30, 50));
        let mut c = Conn::logged_in();
        c.req(&query("SELECT 1; SELECT 2")).close();
        assert!(c.take().is_empty());
        assert_eq!(c.dec.take_stats().unpaired_requests, 2);
    }

    #[test]
    fn unexpected_responses_are_counted() {
        let mut c = Conn::logged_in();
        c.resp(&cat(&[complete("SELECT 1"), ready()]));
        assert!(c.take().is_empty());
        assert_eq!(c.dec.take_stats().unexpected_responses, 1);
    }

    fn conversation() -> (Vec<u8>, Vec<u8>) {
        let req = cat(&[
            startup(&[("user", "u"), ("database", "d")]),
            query("SELECT 1; SELECT 'a' FROM t"),
            parse("p", "UPDATE t SET a = $1"),
            sync(),
            bind("", "p"),
            execute("", 0),
            sync(),
            query("COPY t FROM STDIN"),
            msg(b'd', b"1\n"),
            msg(b'c', &[]),
        ]);
        let resp = cat(&[
            login(),
            row_desc(),
            data_row("1"),
            complete("SELECT 1"),
            row_desc(),
            data_row("a"),
            data_row("a"),
            complete("SELECT 2"),
            ready(),
            msg(b'1', &[]),
            ready(),
            msg(b'2', &[]),
            complete("UPDATE 7"),
            ready(),
            msg(b'G', &[0, 0, 1, 0, 0]),
            complete("COPY 1"),
            ready(),
        ]);
        (req, resp)
    }

    /// Feeds the request pieces, then the response pieces, in chunks; returns lines and stats.
    fn run_pieces(req: &[&[u8]], resp: &[&[u8]]) -> (Vec<String>, DecoderStats) {
        let mut c = Conn::new();
        for p in req {
            c.req(p);
        }
        for p in resp {
            c.resp(p);
        }
        c.close();
        (c.lines(), c.dec.take_stats())
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let (req, resp) = conversation();
        let want = run_pieces(&[&req], &[&resp]);
        assert_eq!(
            want.0,
            [
                "SELECT | SELECT ? | rows=1",
                "SELECT t | SELECT ? FROM t | rows=2",
                "UPDATE t | UPDATE t SET a = $1 | name=p | rows=7",
                "COPY t | COPY t FROM STDIN | rows=1",
            ]
        );
        assert_eq!(want.1, DecoderStats::default());
        for k in 0..=req.len() {
            assert_eq!(
                run_pieces(&[&req[..k], &req[k..]], &[&resp]),
                want,
                "request split {k}"
            );
        }
        for k in 0..=resp.len() {
            assert_eq!(
                run_pieces(&[&req], &[&resp[..k], &resp[k..]]),
                want,
                "response split {k}"
            );
        }
        let bytes = |b: &[u8]| b.chunks(1).map(<[u8]>::to_vec).collect::<Vec<_>>();
        let (rb, sb) = (bytes(&req), bytes(&resp));
        let rb: Vec<&[u8]> = rb.iter().map(Vec::as_slice).collect();
        let sb: Vec<&[u8]> = sb.iter().map(Vec::as_slice).collect();
        assert_eq!(run_pieces(&rb, &sb), want, "one-byte chunks");
    }

    #[test]
    fn gap_inside_a_data_row_is_skipped_by_length() {
        let mut c = Conn::logged_in();
        c.req(&query("SELECT blob FROM files"));
        let big = data_row(&"x".repeat(5000));
        let all = cat(&[row_desc(), big.clone(), complete("SELECT 1"), ready()]);
        let cut = row_desc().len() + 100;
        // Captured up to 100 bytes into the row; the next 4000 bytes are a gap.
        c.resp_gap(&all[..cut], 4000);
        c.resp(&all[cut + 4000..]);
        assert_eq!(
            c.lines(),
            ["SELECT files | SELECT blob FROM files | rows=1"]
        );
        assert_eq!(c.dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn gap_inside_a_query_keeps_its_prefix() {
        let mut c = Conn::logged_in();
        let q = query(&format!("INSERT INTO logs VALUES ('{}')", "y".repeat(3000)));
        c.req_gap(&q[..64], q.len() as u64 - 64);
        c.resp(&cat(&[complete("INSERT 0 1"), ready()]));
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["INSERT logs | INSERT INTO logs VALUES (? | rows=1"]
        );
        assert_eq!(xs[0].request_bytes, q.len() as u64);
        let stats = c.dec.take_stats();
        assert_eq!((stats.truncated_headers, stats.resyncs), (1, 0));
    }

    #[test]
    fn gap_over_a_header_resyncs_at_the_next_plausible_chunk() {
        let mut c = Conn::logged_in();
        c.req(&query("SELECT a FROM t"));
        // The response is cut inside the DataRows and the gap runs past their end.
        let rows = cat(&[row_desc(), data_row("1"), data_row("2")]);
        c.resp_gap(&rows[..10], rows.len() as u64 - 10 + 3);
        // A chunk that starts mid-message is discarded...
        c.resp(b"garbage that is not a message");
        // ...and one that starts with messages resyncs.
        c.resp(&cat(&[complete("SELECT 2"), ready()]));
        c.req(&query("SELECT 2"))
            .resp(&cat(&[complete("SELECT 1"), ready()]));
        assert_eq!(
            c.lines(),
            [
                "SELECT t | SELECT a FROM t | rows=2",
                "SELECT | SELECT ? | rows=1"
            ]
        );
        let stats = c.dec.take_stats();
        assert_eq!((stats.resyncs, stats.truncated_headers), (1, 1));
    }

    #[test]
    fn ready_for_query_realigns_after_lost_completions() {
        let mut c = Conn::logged_in();
        c.req(&query("SELECT 1; SELECT 2; SELECT 3"));
        let resp = cat(&[
            complete("SELECT 1"),
            complete("SELECT 1"),
            complete("SELECT 1"),
        ]);
        // The first completion is captured, the other two fall in a gap, then ReadyForQuery.
        c.resp_gap(
            &resp[..complete("SELECT 1").len()],
            2 * complete("SELECT 1").len() as u64 + 1,
        );
        c.resp(&ready());
        c.req(&query("SELECT 4"))
            .resp(&cat(&[complete("SELECT 1"), ready()]));
        assert_eq!(
            c.lines(),
            ["SELECT | SELECT ? | rows=1", "SELECT | SELECT ? | rows=1"]
        );
        let stats = c.dec.take_stats();
        assert_eq!(stats.resyncs, 1);
        // The ReadyForQuery ends the three-statement query: its two unanswered statements
        // are unpaired.
        assert_eq!(stats.unpaired_requests, 2);
    }

    #[test]
    fn mid_stream_syncs_at_a_plausible_chunk_and_counts_nothing_before() {
        let mut dec = PgDecoder::new_mid_stream();
        let mut out = Vec::new();
        let chunk = |stream, bytes: &'static [u8]| Chunk {
            stream,
            first_ns: 1,
            last_ns: 2,
            bytes,
            len: bytes.len() as u64,
        };
        // The tail of a result set, then its completion: not paired, not counted.
        let tail: &'static [u8] = b"ow data\0\0\0";
        dec.feed(&chunk(Stream::Response, tail), &mut out).unwrap();
        let rest: &'static [u8] =
            Box::leak(cat(&[complete("SELECT 9"), ready()]).into_boxed_slice());
        dec.feed(&chunk(Stream::Response, rest), &mut out).unwrap();
        let q: &'static [u8] = Box::leak(query("SELECT * FROM t").into_boxed_slice());
        dec.feed(
            &chunk(Stream::Request, b"ial middle of a query\0"),
            &mut out,
        )
        .unwrap();
        dec.feed(&chunk(Stream::Request, q), &mut out).unwrap();
        let ans: &'static [u8] = Box::leak(
            cat(&[row_desc(), data_row("1"), complete("SELECT 1"), ready()]).into_boxed_slice(),
        );
        dec.feed(&chunk(Stream::Response, ans), &mut out).unwrap();
        assert_eq!(lines(&out), ["SELECT t | SELECT * FROM t | rows=1"]);
        assert_eq!(dec.take_stats(), DecoderStats::default());
    }

    #[test]
    fn new_accepts_a_connection_joined_mid_stream() {
        let mut c = Conn::new();
        c.req(&cat(&[
            parse("", "SELECT 1"),
            bind("", ""),
            execute("", 0),
            sync(),
        ]));
        c.resp(&cat(&[
            msg(b'1', &[]),
            msg(b'2', &[]),
            complete("SELECT 1"),
            ready(),
        ]));
        assert_eq!(c.lines(), ["SELECT | SELECT ? | rows=1"]);
        assert_eq!(c.dec.startup(), None);
    }

    #[test]
    fn mid_stream_gives_up_on_garbage() {
        let mut dec = PgDecoder::new_mid_stream();
        let mut out = Vec::new();
        let mut result = Ok(());
        for _ in 0..MID_STREAM_GIVE_UP_CHUNKS {
            let chunk = Chunk {
                stream: Stream::Request,
                first_ns: 0,
                last_ns: 0,
                bytes: b"\x01\x02 not postgres",
                len: 16,
            };
            result = dec.feed(&chunk, &mut out);
        }
        assert_eq!(result, Err(DecodeError::NotPostgres));
    }

    #[test]
    fn garbage_fails_fast() {
        let cases: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"\x00\x00\x00\x08\x00\x02\x00\x00", // protocol 2.0
            b"\xff\xff\xff\xff\x00\x03\x00\x00",
            b"Q\x00\x00\x00\x02xyz",
        ];
        for bytes in cases {
            let mut c = Conn::new();
            assert_eq!(
                c.feed(Stream::Request, bytes, 0),
                Err(DecodeError::NotPostgres),
                "{bytes:?}"
            );
            // Stays failed.
            assert_eq!(
                c.feed(Stream::Request, b"", 0),
                Err(DecodeError::NotPostgres)
            );
        }
    }

    #[test]
    fn framing_errors_after_sync_are_malformed() {
        let mut c = Conn::logged_in();
        assert_eq!(
            c.feed(Stream::Request, b"\x07\x00\x00\x00\x04", 0),
            Err(DecodeError::Malformed("bad_message_type"))
        );
        let mut c = Conn::logged_in();
        assert_eq!(
            c.feed(Stream::Response, b"Z\x00\x00\x00\x09IIIII", 0),
            Err(DecodeError::Malformed("bad_message_length"))
        );
        assert_eq!(
            DecodeError::Malformed("bad_message_length").reason(),
            "bad_message_length"
        );
        assert_eq!(DecodeError::NotPostgres.reason(), "not_postgres");
    }

    #[test]
    fn huge_bodies_are_skipped_past_the_buffer_cap() {
        let mut c = Conn::logged_in();
        let sql = format!("SELECT '{}' FROM t", "z".repeat(200_000));
        let q = query(&sql);
        for piece in q.chunks(7000) {
            c.req(piece);
        }
        assert!(c.dec.req.body.len() <= MAX_BUFFERED_BYTES);
        c.resp(&cat(&[complete("SELECT 0"), ready()]));
        let xs = c.take();
        assert_eq!(lines(&xs), ["SELECT | SELECT ? | rows=0"]);
        assert_eq!(xs[0].request_bytes, q.len() as u64);
    }

    #[test]
    fn prepared_statement_map_is_bounded() {
        let mut c = Conn::logged_in();
        for i in 0..(MAX_PREPARED + 10) {
            c.req(&cat(&[
                parse(&format!("s{i}"), &format!("SELECT {i} FROM t{i}")),
                sync(),
            ]));
            c.resp(&cat(&[msg(b'1', &[]), ready()]));
        }
        assert_eq!(c.dec.prepared.len(), MAX_PREPARED);
        assert!(c.dec.prepared_order.len() <= 2 * MAX_PREPARED);
        // The oldest went first; the newest is there.
        assert!(c.dec.statement(b"s0").statement.is_none());
        assert!(c
            .dec
            .statement(format!("s{}", MAX_PREPARED + 9).as_bytes())
            .statement
            .is_some());
        // Re-preparing and closing the same name keeps the order list bounded.
        for _ in 0..5000 {
            c.req(&cat(&[
                parse("again", "SELECT 1"),
                close_statement("again"),
            ]));
        }
        assert!(c.dec.prepared_order.len() <= 2 * MAX_PREPARED + 1);
    }

    #[test]
    fn pending_overflow_keeps_pairing_aligned() {
        let mut c = Conn::logged_in();
        let n = MAX_PENDING + 50;
        let mut req = Vec::new();
        for i in 0..n {
            req.extend(parse("", &format!("SELECT {i} FROM t")));
            req.extend(bind("", ""));
            req.extend(execute("", 0));
        }
        req.extend(sync());
        c.req(&req);
        let mut resp = Vec::new();
        for _ in 0..n {
            resp.extend(complete("SELECT 1"));
        }
        resp.extend(ready());
        c.resp(&resp);
        c.req(&query("SELECT 1 FROM after"))
            .resp(&cat(&[complete("SELECT 1"), ready()]));
        let xs = c.take();
        assert_eq!(xs.len(), MAX_PENDING + 1);
        assert_eq!(
            xs.last().map(line).as_deref(),
            Some("SELECT after | SELECT ? FROM after | rows=1")
        );
        assert_eq!(c.dec.take_stats().unpaired_requests, 50);
    }

    #[test]
    fn detect_recognises_startup_and_mid_stream_messages() {
        assert_eq!(
            detect(&startup(&[("user", "u")]), false),
            Some(Stream::Request)
        );
        assert_eq!(detect(&ssl_request(), false), Some(Stream::Request));
        assert_eq!(detect(&ssl_request()[..7], false), None);
        assert_eq!(detect(&query("SELECT 1"), false), None);
        assert_eq!(detect(&query("SELECT 1"), true), Some(Stream::Request));
        assert_eq!(
            detect(
                &cat(&[parse("", "SELECT 1"), bind("", ""), execute("", 0), sync()]),
                true
            ),
            Some(Stream::Request)
        );
        assert_eq!(
            detect(b"Q\x00\x00\x00\x0b\x01\x02\x03\x04\x05\x00", true),
            None
        );
        assert_eq!(detect(b"GET / HTTP/1.1\r\n", true), None);
        assert_eq!(detect(b"HTTP/1.1 200 OK\r\n", true), None);
        assert_eq!(detect(b"", true), None);
        // A valid first message followed by an invalid header is not claimed.
        assert_eq!(
            detect(&cat(&[sync(), b"\x07\x00\x00\x00\x04".to_vec()]), true),
            None
        );
    }

    #[test]
    fn random_bytes_never_panic_and_stay_bounded() {
        // xorshift: deterministic pseudo-random chunks, with and without a valid prefix.
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for round in 0..300 {
            let mut dec = if round % 3 == 0 {
                PgDecoder::new_mid_stream()
            } else {
                PgDecoder::new()
            };
            let mut out = Vec::new();
            if round % 2 == 0 {
                let login = startup(&[("user", "u")]);
                let chunk = Chunk {
                    stream: Stream::Request,
                    first_ns: 0,
                    last_ns: 0,
                    bytes: &login,
                    len: login.len() as u64,
                };
                let _ = dec.feed(&chunk, &mut out);
            }
            for t in 0..40u64 {
                let n = (next() % 64) as usize;
                let mut bytes: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                if next() % 2 == 0 && !bytes.is_empty() {
                    // Often start with a real message type.
                    bytes[0] = b"QPBESDCZTCIdn12"[(next() % 15) as usize];
                }
                let chunk = Chunk {
                    stream: if next() % 2 == 0 {
                        Stream::Request
                    } else {
                        Stream::Response
                    },
                    first_ns: t,
                    last_ns: t,
                    bytes: &bytes,
                    len: n as u64 + if next() % 8 == 0 { next() % 100_000 } else { 0 },
                };
                if dec.feed(&chunk, &mut out).is_err() {
                    break;
                }
            }
            dec.close(100, &mut out);
            assert!(out.iter().all(|x| x.end_ns >= x.start_ns));
        }
    }

    // ---- golden tests over recorded traffic (tests/fixtures/postgres, see record.py) ----

    use crate::protocol::fixture::Fixture;

    fn load_fixtures() -> Vec<Fixture> {
        crate::protocol::fixture::load("postgres")
    }

    /// Golden line: fields, then `@start..end` in chunk indices (chunk i has first_ns =
    /// last_ns = i; close happens at the chunk count).
    fn golden_line(x: &PgExchange) -> String {
        format!(
            "{} | req={} resp={} @{}..{}",
            line(x),
            x.request_bytes,
            x.response_bytes,
            x.start_ns,
            x.end_ns
        )
    }

    struct Decoded {
        xs: Vec<PgExchange>,
        stats: DecoderStats,
        startup: Option<StartupInfo>,
        tls: bool,
    }

    fn decode_fixture(chunks: &[(Stream, &[u8])]) -> Decoded {
        let mut dec = PgDecoder::new();
        let mut out = Vec::new();
        let mut tls = false;
        for (i, (stream, bytes)) in chunks.iter().enumerate() {
            let chunk = Chunk {
                stream: *stream,
                first_ns: i as u64,
                last_ns: i as u64,
                bytes,
                len: bytes.len() as u64,
            };
            dec.feed(&chunk, &mut out).expect("fixture decodes");
            tls |= dec.is_tls();
        }
        let startup = dec.startup().cloned();
        dec.close(chunks.len() as u64, &mut out);
        Decoded {
            xs: out,
            stats: dec.take_stats(),
            startup,
            tls,
        }
    }

    #[test]
    fn golden_fixtures() {
        let fixtures = load_fixtures();
        assert!(fixtures.len() >= 12, "fixtures missing: run record.py");
        let bless = std::env::var_os("PERISCOPE_BLESS").is_some();
        for f in &fixtures {
            let chunks: Vec<(Stream, &[u8])> =
                f.chunks.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            let d = decode_fixture(&chunks);
            let mut got: Vec<String> = d.xs.iter().map(golden_line).collect();
            got.push(format!("startup {:?} tls={}", d.startup, d.tls));
            got.push(format!("stats {:?}", d.stats));
            let got = got.join("\n") + "\n";
            let path = crate::protocol::fixture::dir("postgres").join(format!("{}.golden", f.name));
            if bless {
                std::fs::write(&path, &got).expect("golden writable");
            }
            let want = std::fs::read_to_string(&path).expect("golden file");
            assert_eq!(got, want, "fixture {}", f.name);
            assert!(d.xs.iter().all(|x| x.end_ns >= x.start_ns));
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

    fn without_times(d: &Decoded) -> (Vec<String>, DecoderStats) {
        let xs =
            d.xs.iter()
                .map(|x| {
                    format!(
                        "{} | req={} resp={}",
                        line(x),
                        x.request_bytes,
                        x.response_bytes
                    )
                })
                .collect();
        (xs, d.stats)
    }

    #[test]
    fn golden_fixtures_resplit_at_every_byte_boundary() {
        for f in &load_fixtures() {
            let chunks: Vec<(Stream, &[u8])> =
                f.chunks.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            let want = without_times(&decode_fixture(&chunks));
            let runs = runs(&f.chunks);
            let merged: Vec<(Stream, &[u8])> =
                runs.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            assert_eq!(
                without_times(&decode_fixture(&merged)),
                want,
                "{} merged",
                f.name
            );
            // Every boundary of the big fixtures costs seconds in debug builds: sample them.
            for r in 0..runs.len() {
                let len = runs[r].1.len();
                let step = (len / 400).max(1);
                for k in (1..len).step_by(step) {
                    let mut split = merged.clone();
                    let (a, b) = runs[r].1.split_at(k);
                    split[r] = (runs[r].0, a);
                    split.insert(r + 1, (runs[r].0, b));
                    assert_eq!(
                        without_times(&decode_fixture(&split)),
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
            assert_eq!(
                without_times(&decode_fixture(&bytes)),
                want,
                "{} bytes",
                f.name
            );
        }
    }

    /// The fixtures as a capture limit would deliver them: each chunk keeps only its first
    /// `limit` bytes, the rest becomes a gap. Whatever the limit: no error, sane timestamps,
    /// never more exchanges than the full capture. With a limit above every request message,
    /// the same statements come out.
    #[test]
    fn golden_fixtures_under_a_capture_limit() {
        for f in &load_fixtures() {
            let full: Vec<(Stream, &[u8])> =
                f.chunks.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            let want = decode_fixture(&full).xs;
            for limit in [0usize, 1, 5, 16, 64, 200, 4096] {
                let mut dec = PgDecoder::new();
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
                if limit == 4096 {
                    let key = |x: &PgExchange| (x.query_summary.clone(), x.error_sqlstate.clone());
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

    /// Rough cost: `cargo test --release -p agent --lib postgres::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput() {
        let prep = cat(&[
            parse(
                "s",
                "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            ),
            sync(),
        ]);
        let req = cat(&[bind("", "s"), describe_portal(""), execute("", 0), sync()]);
        let resp = cat(&[
            msg(b'2', &[]),
            msg(b'n', &[]),
            complete("UPDATE 1"),
            ready(),
        ]);
        let simple_req =
            query("UPDATE pgbench_accounts SET abalance = abalance + -3946 WHERE aid = 82361;");
        let simple_resp = cat(&[complete("UPDATE 1"), ready()]);
        for (name, setup, req, resp) in [
            ("prepared", Some(&prep), &req, &resp),
            (
                "simple (with normalisation)",
                None,
                &simple_req,
                &simple_resp,
            ),
        ] {
            let mut dec = PgDecoder::new_mid_stream();
            let mut out = Vec::with_capacity(1);
            let feed = |dec: &mut PgDecoder, out: &mut Vec<PgExchange>, stream, bytes: &[u8]| {
                let c = Chunk {
                    stream,
                    first_ns: 1,
                    last_ns: 2,
                    bytes,
                    len: bytes.len() as u64,
                };
                dec.feed(&c, out).unwrap();
            };
            if let Some(p) = setup {
                feed(&mut dec, &mut out, Stream::Request, p);
                feed(
                    &mut dec,
                    &mut out,
                    Stream::Response,
                    &cat(&[msg(b'1', &[]), ready()]),
                );
            }
            let n = 1_000_000u64;
            let start = std::time::Instant::now();
            for _ in 0..n {
                feed(&mut dec, &mut out, Stream::Request, req);
                feed(&mut dec, &mut out, Stream::Response, resp);
                assert_eq!(out.len(), 1);
                out.clear();
            }
            let per = start.elapsed().as_nanos() as f64 / n as f64;
            println!("{name}: {per:.0} ns per statement");
        }
    }
}
