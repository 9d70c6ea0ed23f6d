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
//! request in [`MID_STREAM_GIVE_UP_CHUNKS`] request chunks is [`NOT_POSTGRES`].
//!
//! # Errors
//! Bytes that are not a start-up packet or a frontend message, or a backend stream whose first
//! message is not valid, are [`NOT_POSTGRES`]; an unknown message type or an
//! impossible length once a direction has decoded a message is [`DecodeError::Malformed`]. After
//! an error the decoder stays failed: `feed` repeats the error.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

pub use super::DecodeError;
use super::{sql, Chunk, Decoder, Run, Sticky, Stopped, Stream};

mod detect;
mod framing;
mod messages;

pub use detect::detect;
use framing::{
    be32, body_start_ok, header_ok, is_message_type, keeps, plausible, startup_packet, Frame, Half,
};
use messages::{startup_info, unanswered, Building, Outcome, Pending, Portal, Statement};

/// `truncated_headers` counts messages cut by a gap.
pub use super::DecoderStats;

/// Most bytes of one message body kept for parsing; the rest is skipped by length.
pub const MAX_BUFFERED_BYTES: usize = 64 * 1024;
/// Most requests waiting for a response; beyond it executions are only counted (so that later
/// responses still pair right), and past twice this the oldest are dropped as unpaired.
/// Pipelines (psycopg, pgx, JDBC batches) send a thousand and more before reading; an
/// execution costs ~64 bytes here (statements are shared), so this bounds a connection's
/// queue to ~256 KiB.
pub const MAX_PENDING: usize = 4096;
/// Most simple Queries waiting among them: each keeps its SQL text (up to
/// [`MAX_BUFFERED_BYTES`]), so they are bounded apart (64 × 64 KiB = 4 MiB per connection).
pub const MAX_PENDING_SIMPLE: usize = 64;
/// Most named prepared statements remembered per connection; beyond it the oldest is evicted.
pub const MAX_PREPARED: usize = 1024;
/// Most bytes the remembered statements of one connection keep (names, normalised SQL);
/// beyond it the oldest are evicted.
pub const MAX_PREPARED_BYTES: usize = 1 << 20;
/// Longest statement or portal name kept as sent (see `messages::name_key`).
pub const MAX_NAME_BYTES: usize = 64;
/// Longest normalised SQL text kept per statement (`db.query.text` on spans), in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
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

super::timed!(PgExchange);

/// The stream is not PostgreSQL. Once a direction decoded a message, faults are
/// [`DecodeError::Malformed`]: "bad_message_type", "bad_message_length",
/// "bad_startup_packet", "bad_encryption_answer".
pub const NOT_POSTGRES: DecodeError = DecodeError::NotProtocol("not_postgres");

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
    /// What `prepared` keeps, in bytes (bounded by [`MAX_PREPARED_BYTES`]).
    prepared_bytes: usize,
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
    failed: Sticky,
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
            prepared_bytes: 0,
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
            failed: Sticky::default(),
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

    /// Database, user and application name once the StartupMessage was seen.
    pub fn startup(&self) -> Option<&StartupInfo> {
        self.startup.as_ref()
    }

    /// True once an SSLRequest was answered `S` (or a GSSENCRequest `G`): the rest is encrypted,
    /// the caller stops decoding and counts the connection as TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl Decoder for PgDecoder {
    const PROTOCOL: &'static str = "postgresql";
    type Exchange = PgExchange;

    fn start(mid_stream: bool) -> Self {
        if mid_stream {
            Self::new_mid_stream()
        } else {
            Self::new()
        }
    }

    /// Feed one syscall's bytes. Err means the stream is not PostgreSQL or broken beyond repair:
    /// the caller stops decoding the connection. Completed exchanges are pushed to `out`.
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<PgExchange>) -> Result<(), DecodeError> {
        self.failed.check()?;
        if self.tls {
            return Ok(());
        }
        let result = self.feed_chunk(chunk, out);
        debug_assert!(self.req.body.len() <= MAX_BUFFERED_BYTES);
        debug_assert!(self.resp.body.len() <= MAX_BUFFERED_BYTES);
        debug_assert!(self.pending.len() <= 2 * MAX_PENDING + 1);
        debug_assert!(self.prepared.len() <= MAX_PREPARED);
        debug_assert!(self.prepared_bytes <= MAX_PREPARED_BYTES);
        self.failed.keep(result)
    }

    /// A run of whole DataRow (backend) or CopyData (either side) messages that the kernel
    /// counted without capturing: they count as rows and bytes exactly as if each had been
    /// decoded. A run where the direction does not expect a header (framing already lost)
    /// is a gap.
    fn skipped(&mut self, run: &Run, out: &mut Vec<PgExchange>) -> Result<(), DecodeError> {
        self.failed.check()?;
        if self.tls {
            return Ok(());
        }
        let half = self.half(run.stream);
        if half.frame != Frame::Header || half.have != 0 || !matches!(run.kind, b'D' | b'd') {
            return self.feed(&run.as_gap(), out);
        }
        half.synced = true;
        match run.stream {
            Stream::Request => self.request(run.kind, &[], run.bytes, run.first_ns),
            Stream::Response => {
                self.resp_last_ns = run.last_ns;
                self.resp_bytes += run.bytes;
                if run.kind == b'D' {
                    self.data_rows += run.count;
                }
            }
        }
        Ok(())
    }

    /// Bytes lost in unknown amount: that direction resynchronises, and pairing restarts.
    /// Everything in flight is counted unpaired, so that the responses after the loss cannot
    /// pair with the wrong requests (a response that arrives for one of them is counted as
    /// unexpected); requests sent from here on pair exactly.
    fn lost(
        &mut self,
        stream: Stream,
        _ts_ns: u64,
        _out: &mut Vec<PgExchange>,
    ) -> Result<(), DecodeError> {
        self.failed.check()?;
        if self.tls {
            return Ok(());
        }
        self.lose_framing(stream);
        let unpaired: u64 = self.pending.iter().map(unanswered).sum();
        self.stats.unpaired_requests += unpaired;
        self.pending.clear();
        self.building = None;
        self.resp_bytes = 0;
        self.data_rows = 0;
        Ok(())
    }

    /// The connection closed at `ts_ns`. An execution whose response had begun is emitted with
    /// `complete = false` and `end_ns = max(ts_ns, last_ns of the last response chunk)`; queued
    /// requests with no response at all are counted unpaired. The decoder is then reset (stats
    /// are kept) and may be reused.
    fn close(&mut self, ts_ns: u64, out: &mut Vec<PgExchange>) {
        if !self.failed.is_failed() && !self.tls && self.resp_bytes > 0 {
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
        // What the connection was (its stats, and the database its start-up named) outlives
        // the reset: the statements the close just completed still read the database.
        let old = std::mem::take(self);
        (self.stats, self.startup) = (old.stats, old.startup);
    }

    fn take_stats(&mut self) -> DecoderStats {
        std::mem::take(&mut self.stats)
    }

    fn heap_bytes(&self) -> usize {
        let pending = super::sampled_bytes(
            self.pending.iter(),
            std::mem::size_of::<messages::Pending>(),
            |p| match p {
                messages::Pending::Simple(s) => s.sql.len() + s.statements.capacity() * 8,
                _ => 0,
            },
        );
        self.req.body.capacity()
            + self.resp.body.capacity()
            + pending
            + self.prepared_bytes
            + self.prepared_order.len() * std::mem::size_of::<(String, u64)>()
            + self.portals.len() * std::mem::size_of::<(String, messages::Portal)>()
    }

    fn stopped(&self) -> Option<Stopped> {
        self.is_tls().then_some(Stopped::Tls)
    }
}

impl PgDecoder {
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
                        return Err(NOT_POSTGRES);
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
        Err(NOT_POSTGRES)
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
}

#[cfg(test)]
mod tests;
