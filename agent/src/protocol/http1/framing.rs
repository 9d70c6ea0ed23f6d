//! How each direction's bytes divide into messages: heads located (in place or buffered),
//! bodies delimited by length, chunked framing or close, and what a capture gap does to them.

use super::parse::{find_head_end, hex_value, start_prefix};
use super::{DecodeError, Stream, MAX_CHUNK_EXT_BYTES, MAX_HEAD_BYTES, MAX_TRAILER_BYTES};

/// Progress through a chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunked {
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
    /// Skips `gap` uncaptured bytes when where they end is known: inside chunk data, or in the
    /// CRLF that closes it (two bytes whose value the protocol fixes, so nothing is guessed).
    /// Returns the payload bytes skipped; `None` when the gap reaches a size line.
    fn skip_known(&mut self, gap: u64) -> Option<u64> {
        let (payload, after_data) = match *self {
            Chunked::Data(left) if gap <= left => {
                *self = if gap == left {
                    Chunked::DataCr
                } else {
                    Chunked::Data(left - gap)
                };
                return Some(gap);
            }
            Chunked::Data(left) => (left, gap - left),
            Chunked::DataCr => (0, gap),
            Chunked::DataLf => (0, gap + 1),
            _ => return None,
        };
        // `after_data` bytes of the CRLF that closes the chunk data.
        *self = match after_data {
            1 => Chunked::DataLf,
            2 => Chunked::START,
            _ => return None,
        };
        Some(payload)
    }

    pub(super) const START: Chunked = Chunked::Size {
        value: 0,
        digits: 0,
    };

    pub(super) fn after_size(value: u64) -> Chunked {
        if value == 0 {
            Chunked::Trailer { line: 0, total: 0 }
        } else {
            Chunked::Data(value)
        }
    }

    /// Advances over `data`: (bytes consumed, payload bytes among them, body finished). When the
    /// body finishes, consumption stops right after it.
    pub(super) fn step(&mut self, data: &[u8]) -> Result<(usize, u64, bool), DecodeError> {
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
pub(super) enum Body {
    /// Bytes left (never 0: an empty body is no body).
    Length(u64),
    Chunked(Chunked),
    /// Response without Content-Length or chunked: ends when the connection closes.
    UntilClose,
}

/// What a capture gap did to a body.
pub(super) enum GapOutcome {
    /// The gap ended inside the body; framing is intact.
    Inside,
    /// The body ended inside the gap; `leftover` gap bytes follow it.
    Completed { leftover: u64 },
    /// The gap hid framing (chunk sizes): the body's end is unknown.
    Lost,
}

impl Body {
    /// Advances over captured bytes: (bytes consumed, payload bytes, body finished).
    pub(super) fn step(&mut self, data: &[u8]) -> Result<(usize, u64, bool), DecodeError> {
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
    pub(super) fn skip_gap(&mut self, gap: u64) -> (u64, GapOutcome) {
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
            Body::Chunked(state) => match state.skip_known(gap) {
                Some(payload) => (payload, GapOutcome::Inside),
                None => (gap, GapOutcome::Lost),
            },
            Body::UntilClose => (gap, GapOutcome::Inside),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
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
pub(super) enum HeadAt {
    /// The whole head is `data[..end]` of the current chunk.
    InPlace(usize),
    /// The head is complete in the stream's buffer; `consumed` bytes of this chunk were used.
    Buffered(usize),
    /// Not complete yet: all of the chunk went into the buffer.
    Partial,
}

/// One direction's framing state.
#[derive(Debug)]
pub(super) struct Half {
    pub(super) stream: Stream,
    pub(super) state: State,
    /// A head that spans chunks, up to [`MAX_HEAD_BYTES`].
    pub(super) head: Vec<u8>,
    /// Where to resume looking for the end of a buffered head.
    pub(super) scan_from: usize,
    /// The start of the buffered head's first line was checked to look like HTTP.
    pub(super) start_ok: bool,
    /// `first_ns` of the chunk holding the current message's first byte.
    pub(super) first_ns: u64,
    /// A start line was decoded on this stream: later garbage is Malformed, not NOT_HTTP.
    pub(super) synced: bool,
}

impl Half {
    pub(super) fn new(stream: Stream) -> Self {
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

    pub(super) fn begin(&mut self, first_ns: u64) {
        self.state = State::Head;
        self.head.clear();
        self.scan_from = 0;
        self.start_ok = false;
        self.first_ns = first_ns;
    }

    pub(super) fn start_line_error(&self) -> DecodeError {
        match (self.synced, self.stream) {
            (false, _) => super::NOT_HTTP,
            (true, Stream::Request) => DecodeError::Malformed("bad_request_line"),
            (true, Stream::Response) => DecodeError::Malformed("bad_status_line"),
        }
    }

    /// Checks that the first bytes of a head can begin a start line, so that garbage fails
    /// fast instead of filling the head buffer.
    pub(super) fn check_start(&mut self, first: &[u8]) -> Result<(), DecodeError> {
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
    pub(super) fn locate_head(&mut self, data: &[u8]) -> Result<HeadAt, DecodeError> {
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
