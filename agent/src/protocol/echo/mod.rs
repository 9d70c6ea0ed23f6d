//! Echo: a line protocol that exists only to show what adding a protocol takes (test builds
//! only). A client writes `PING <text>\n` lines, a server answers each with `PONG <text>\n`,
//! in order; one exchange per answered PING.
//!
//! What it took, and what a real protocol takes the same way:
//! - **this folder**: the decoder (here), its detection (`detect.rs`), its tests (`tests.rs`,
//!   which run the generic golden harness over `agent/tests/fixtures/echo/`, recorded from real
//!   sockets by its `record.py`);
//! - **a registry entry** ([`ECHO`]); here it goes into [`TEST_REGISTRY`], a test-only copy of
//!   the real registry with this entry appended, which the connection tracker is given through
//!   `Protocols::all_of` (see `conn::tests::a_protocol_from_an_extended_registry_is_detected`):
//!   the same detection and decoding path as the real protocols;
//! - **the exchange mapping**: [`IntoDetail`]. A real protocol adds its own `Detail` variant,
//!   and the compiler then lists every sink `match` that needs an arm (one per metric family);
//!   this one borrows `Detail::Http` (`PING` as the method, the text as the path, 200) so that
//!   no test-only variant leaks into the sinks.
//!
//! # Model
//! Each stream is a sequence of `\n`-terminated lines, assembled across chunks in a buffer of
//! at most [`MAX_LINE_BYTES`]. A request line is queued (at most [`MAX_PENDING`]; beyond it
//! the oldest is dropped as unpaired); a response line takes the oldest queued request.
//!
//! # Gaps
//! A capture gap loses framing (`resyncs` and `truncated_headers` +1): the partial line is
//! dropped and the stream skips chunks until one that begins with its keyword. The requests
//! waiting are dropped as unpaired when the response stream loses framing (their answers may
//! be what was lost).
//!
//! # Errors
//! A line that does not begin with the stream's keyword is [`NOT_ECHO`] while
//! nothing was decoded on that stream, `Malformed("bad_line")` afterwards; a line over
//! [`MAX_LINE_BYTES`] is `Malformed("line_too_long")`. Errors are sticky.

use std::collections::VecDeque;

use crate::exchange::Detail;
use crate::protocol::http1::HttpExchange;

use super::registry::{session, IntoDetail, Protocol, Shared, REGISTRY};
use super::{Chunk, DecodeError, Decoder, DecoderStats, Sticky, Stream};

mod detect;
mod tests;

pub use detect::{could_start, detect};

/// Longest line accepted, newline included.
pub const MAX_LINE_BYTES: usize = 256;
/// Most PINGs waiting for their PONG.
pub const MAX_PENDING: usize = 16;

/// One PING and its PONG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoExchange {
    /// The PING's text (after `PING `).
    pub ping: String,
    /// The PONG's text.
    pub pong: String,
    /// `first_ns` of the chunk holding the PING's first byte.
    pub start_ns: u64,
    /// `last_ns` of the chunk holding the PONG's newline.
    pub end_ns: u64,
}

super::timed!(EchoExchange);

/// The stream is not echo; later faults are "bad_line" and "line_too_long".
pub const NOT_ECHO: DecodeError = DecodeError::NotProtocol("not_echo");

/// One direction: the line being assembled.
#[derive(Debug, Default)]
struct Half {
    line: Vec<u8>,
    /// `first_ns` of the chunk holding the line's first byte.
    first_ns: u64,
    /// Framing lost: skip chunks until one begins with the keyword.
    resync: bool,
    /// A line was decoded: later faults are Malformed.
    synced: bool,
}

/// Decoder for one connection.
#[derive(Debug, Default)]
pub struct EchoDecoder {
    req: Half,
    resp: Half,
    pending: VecDeque<(String, u64)>,
    failed: Sticky,
    stats: DecoderStats,
}

fn keyword(stream: Stream) -> &'static [u8] {
    match stream {
        Stream::Request => b"PING ",
        Stream::Response => b"PONG ",
    }
}

impl EchoDecoder {
    fn feed_stream(
        &mut self,
        c: &Chunk<'_>,
        out: &mut Vec<EchoExchange>,
    ) -> Result<(), DecodeError> {
        let half = match c.stream {
            Stream::Request => &mut self.req,
            Stream::Response => &mut self.resp,
        };
        if half.resync {
            if !c.bytes.starts_with(keyword(c.stream)) {
                return Ok(());
            }
            half.resync = false;
        }
        let mut rest = c.bytes;
        while !rest.is_empty() {
            let half = match c.stream {
                Stream::Request => &mut self.req,
                Stream::Response => &mut self.resp,
            };
            if half.line.is_empty() {
                half.first_ns = c.first_ns;
            }
            let (part, done) = match rest.iter().position(|&b| b == b'\n') {
                Some(n) => (&rest[..=n], true),
                None => (rest, false),
            };
            rest = &rest[part.len()..];
            if half.line.len() + part.len() > MAX_LINE_BYTES {
                return Err(DecodeError::Malformed("line_too_long"));
            }
            half.line.extend_from_slice(part);
            // Fail fast on what cannot begin a line.
            let word = keyword(c.stream);
            let n = half.line.len().min(word.len());
            if half.line[..n] != word[..n] {
                return Err(if half.synced {
                    DecodeError::Malformed("bad_line")
                } else {
                    NOT_ECHO
                });
            }
            if done {
                half.synced = true;
                let text = String::from_utf8_lossy(&half.line[word.len()..half.line.len() - 1]);
                let text = text.trim_end_matches('\r').to_owned();
                half.line.clear();
                let first_ns = half.first_ns;
                self.line(c.stream, text, first_ns, c.last_ns, out);
            }
        }
        if c.gap() > 0 {
            self.lose_framing(c.stream);
        }
        Ok(())
    }

    fn line(
        &mut self,
        stream: Stream,
        text: String,
        first_ns: u64,
        last_ns: u64,
        out: &mut Vec<EchoExchange>,
    ) {
        match stream {
            Stream::Request => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    self.stats.unpaired_requests += 1;
                }
                self.pending.push_back((text, first_ns));
            }
            Stream::Response => match self.pending.pop_front() {
                Some((ping, start_ns)) => out.push(EchoExchange {
                    ping,
                    pong: text,
                    start_ns,
                    end_ns: last_ns,
                }),
                None => self.stats.unexpected_responses += 1,
            },
        }
    }

    fn lose_framing(&mut self, stream: Stream) {
        self.stats.resyncs += 1;
        self.stats.truncated_headers += 1;
        let half = match stream {
            Stream::Request => &mut self.req,
            Stream::Response => &mut self.resp,
        };
        half.line.clear();
        half.resync = true;
        if stream == Stream::Response {
            self.stats.unpaired_requests += self.pending.len() as u64;
            self.pending.clear();
        }
    }
}

impl Decoder for EchoDecoder {
    const PROTOCOL: &'static str = "echo";
    type Exchange = EchoExchange;

    fn start(_mid_stream: bool) -> Self {
        Self::default()
    }

    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<EchoExchange>) -> Result<(), DecodeError> {
        self.failed.check()?;
        let result = self.feed_stream(chunk, out);
        debug_assert!(self.req.line.len() <= MAX_LINE_BYTES);
        debug_assert!(self.resp.line.len() <= MAX_LINE_BYTES);
        debug_assert!(self.pending.len() <= MAX_PENDING);
        self.failed.keep(result)
    }

    /// PINGs still waiting are counted unpaired; partial lines are dropped.
    fn close(&mut self, _ts_ns: u64, _out: &mut Vec<EchoExchange>) {
        self.stats.unpaired_requests += self.pending.len() as u64;
        self.stats = std::mem::take(self).stats;
    }

    fn take_stats(&mut self) -> DecoderStats {
        std::mem::take(&mut self.stats)
    }

    fn heap_bytes(&self) -> usize {
        self.req.line.capacity()
            + self.resp.line.capacity()
            + self
                .pending
                .iter()
                .map(|(s, _)| 32 + s.capacity())
                .sum::<usize>()
    }
}

/// The mapping a real protocol writes in `registry.rs` next to its own `Detail` variant.
impl IntoDetail for EchoDecoder {
    fn detail(&self, x: EchoExchange, _: &mut Shared) -> Detail {
        Detail::Http(HttpExchange {
            method: "PING".to_owned(),
            route: x.ping.clone(),
            path: x.ping,
            status: 200,
            start_ns: x.start_ns,
            end_ns: x.end_ns,
            request_body_bytes: 0,
            response_body_bytes: 0,
            host: None,
            traceparent: None,
            tracestate: None,
            complete: true,
            version: Default::default(),
            grpc: None,
            stream_id: None,
        })
    }
}

/// Echo's registry entry.
pub const ECHO: Protocol = Protocol {
    name: EchoDecoder::PROTOCOL,
    flags: &["echo"],
    fixtures: "echo",
    detect: |bytes, _| detect(bytes),
    could_start,
    joins_mid_stream: |_| false,
    start: session::<EchoDecoder>,
};

/// The real registry with echo appended (last in detection order).
pub static TEST_REGISTRY: [Protocol; 4] = [REGISTRY[0], REGISTRY[1], REGISTRY[2], ECHO];
