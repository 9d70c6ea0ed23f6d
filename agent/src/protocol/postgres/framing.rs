//! How each direction's bytes divide into messages: start-up packets and typed messages,
//! their headers checked, and where a chunk may begin when framing is lost.

use super::{
    DecodeError, Stream, CANCEL_REQUEST, GSSENC_REQUEST, MAX_MESSAGE_BYTES, MAX_STARTUP_BYTES,
    NOT_POSTGRES, PLAUSIBLE_MESSAGES, PROTOCOL_MAJOR_3, SSL_REQUEST,
};

/// Where a direction is in its byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Frame {
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
pub(super) struct Half {
    pub(super) stream: Stream,
    pub(super) frame: Frame,
    /// Header bytes collected so far (8 while undecided, 4 for start-up, 5 typed).
    pub(super) hdr: [u8; 8],
    pub(super) have: u8,
    /// Prefix of a kept body that spans chunks.
    pub(super) body: Vec<u8>,
    /// The kept body lost bytes to a gap.
    pub(super) truncated: bool,
    /// `first_ns` of the chunk holding the current message's first byte.
    pub(super) first_ns: u64,
    /// A message was decoded in this direction: later garbage is Malformed, not NOT_POSTGRES.
    pub(super) synced: bool,
}

impl Half {
    pub(super) fn new(stream: Stream, frame: Frame) -> Self {
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

    pub(super) fn error(&self, reason: &'static str) -> DecodeError {
        if self.synced {
            DecodeError::Malformed(reason)
        } else {
            NOT_POSTGRES
        }
    }

    /// The frame after a body of type `ty` ends (start-up packets may change it after).
    pub(super) fn next_frame(&self, ty: u8) -> Frame {
        if ty == 0 && self.stream == Stream::Request {
            Frame::StartupHeader
        } else {
            Frame::Header
        }
    }
}

/// The bytes up to the first NUL (all of them if there is none, as in a truncated body) and
/// the rest after the NUL.
pub(super) fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(n) => (&b[..n], &b[n + 1..]),
        None => (b, &[]),
    }
}

pub(super) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Whether the body of a message of this type is parsed (else skipped by count).
pub(super) fn keeps(stream: Stream, ty: u8) -> bool {
    match stream {
        Stream::Request => matches!(ty, 0 | b'Q' | b'P' | b'B' | b'E' | b'C'),
        Stream::Response => matches!(ty, b'C' | b'E'),
    }
}

pub(super) fn is_message_type(stream: Stream, ty: u8) -> bool {
    min_len(stream, ty).is_some()
}

/// Smallest and largest length field of a message type in a direction; None if the type does
/// not exist there.
pub(super) fn min_len(stream: Stream, ty: u8) -> Option<(u32, u32)> {
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

pub(super) fn header_ok(stream: Stream, ty: u8, len: u32) -> bool {
    min_len(stream, ty).is_some_and(|(lo, hi)| (lo..=hi).contains(&len))
}

/// For a typed message seen first on a fresh connection: the first body bytes of a Query or
/// Parse look like text.
pub(super) fn body_start_ok(first: &[u8; 8]) -> bool {
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
pub(super) fn startup_packet(b: &[u8]) -> Option<u32> {
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
pub(super) fn plausible(stream: Stream, b: &[u8]) -> bool {
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
