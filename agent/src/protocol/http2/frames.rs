//! One direction's HTTP/2 frames out of captured chunks: 9-byte frame headers, the payloads
//! the decoder reads (header blocks, SETTINGS, RST_STREAM, GOAWAY) kept whole, DATA payloads
//! only counted. A frame or header split across chunks is carried over; a capture gap inside a
//! counted payload is skipped by length. A gap that reaches past the frame in progress hides
//! the next frame header: framing is lost, and the reader waits for a chunk that starts with a
//! chain of plausible frame headers ([`plausible_chain`]).

use super::MAX_BLOCK_BYTES;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// Payload bytes kept of a frame type whose payload is read but that is not a header block
/// (SETTINGS, RST_STREAM, GOAWAY: their fields are in the first bytes).
const MAX_CONTROL_BYTES: usize = 64;
/// The largest frame header length believed when looking for frames after lost framing
/// (`SETTINGS_MAX_FRAME_SIZE` is 16 KiB unless a peer raises it; nobody sends header blocks
/// near 16 MiB).
const MAX_PLAUSIBLE_FRAME: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Header {
    pub fn parse(b: &[u8; 9]) -> Header {
        Header {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Whether the payload is read (kept whole) rather than only counted.
    fn kept(&self) -> bool {
        matches!(
            self.kind,
            HEADERS | CONTINUATION | PUSH_PROMISE | SETTINGS | RST_STREAM | GOAWAY
        )
    }

    fn keep_limit(&self) -> usize {
        match self.kind {
            HEADERS | CONTINUATION | PUSH_PROMISE => MAX_BLOCK_BYTES,
            _ => MAX_CONTROL_BYTES,
        }
    }
}

/// What became of a frame's payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// Kept whole (for SETTINGS, RST_STREAM and GOAWAY: their first `MAX_CONTROL_BYTES`).
    Whole(&'a [u8]),
    /// A counted payload (DATA, PING, WINDOW_UPDATE, PRIORITY, unknown types): its first byte
    /// when captured (a padded DATA frame's pad length).
    Counted(Option<u8>),
    /// A kept type, but a capture gap cut it or it exceeded `MAX_BLOCK_BYTES`.
    Cut,
}

/// A finished frame with the times of the chunks that carried its first and last byte.
#[derive(Debug)]
pub struct Frame<'a> {
    pub header: Header,
    pub payload: Payload<'a>,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// The frame in progress.
#[derive(Debug)]
struct Current {
    header: Header,
    /// Payload bytes not yet seen.
    left: u32,
    first_ns: u64,
    first_byte: Option<u8>,
    cut: bool,
}

/// What one chunk left the reader in.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A gap hid a frame header: framing was lost (counted once, here).
    Lost,
}

#[derive(Debug)]
pub struct Reader {
    head: [u8; 9],
    head_fill: usize,
    head_first_ns: u64,
    cur: Option<Current>,
    /// The payload of a kept frame split across chunks (at most `MAX_BLOCK_BYTES`).
    keep: Vec<u8>,
    /// Framing is lost until a chunk starts with plausible frames.
    pub lost: bool,
}

impl Reader {
    pub fn new(lost: bool) -> Reader {
        Reader {
            head: [0; 9],
            head_fill: 0,
            head_first_ns: 0,
            cur: None,
            keep: Vec::new(),
            lost,
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.keep.capacity()
    }

    /// Frees the carry-over buffer of a connection between frames.
    pub fn shrink(&mut self) {
        if self.cur.is_none() && self.keep.capacity() > 4096 {
            self.keep = Vec::new();
        }
    }

    /// Walks `bytes` (then a gap of `gap` bytes), calling `on_frame` for every frame that ends
    /// in them. The caller checks [`Reader::lost`] before (to resynchronise).
    pub fn read(
        &mut self,
        mut bytes: &[u8],
        gap: u64,
        first_ns: u64,
        last_ns: u64,
        on_frame: &mut dyn FnMut(Frame<'_>),
    ) -> Outcome {
        while !bytes.is_empty() {
            let Some(cur) = self.cur.as_mut() else {
                if self.head_fill == 0 {
                    self.head_first_ns = first_ns;
                }
                let n = (9 - self.head_fill).min(bytes.len());
                self.head[self.head_fill..self.head_fill + n].copy_from_slice(&bytes[..n]);
                self.head_fill += n;
                bytes = &bytes[n..];
                if self.head_fill == 9 {
                    self.head_fill = 0;
                    let header = Header::parse(&self.head);
                    self.cur = Some(Current {
                        header,
                        left: header.len,
                        first_ns: self.head_first_ns,
                        first_byte: None,
                        cut: false,
                    });
                    if header.len == 0 {
                        self.finish(last_ns, &[], on_frame);
                    }
                }
                continue;
            };
            let n = (cur.left as usize).min(bytes.len());
            let (now, rest) = bytes.split_at(n);
            bytes = rest;
            if cur.header.len == cur.left && n > 0 {
                cur.first_byte = Some(now[0]);
            }
            cur.left -= n as u32;
            let whole_here = cur.left == 0 && self.keep.is_empty() && n == cur.header.len as usize;
            if cur.header.kept() && !cur.cut && !whole_here {
                let limit = cur.header.keep_limit();
                let take = now.len().min(limit.saturating_sub(self.keep.len()));
                if take < now.len() && cur.header.keep_limit() == MAX_BLOCK_BYTES {
                    cur.cut = true;
                    self.keep = Vec::new();
                } else {
                    self.keep.extend_from_slice(&now[..take]);
                }
            }
            if cur.left == 0 {
                let here = if whole_here { now } else { &[][..] };
                self.finish(last_ns, here, on_frame);
            }
        }
        if gap == 0 {
            return Outcome::Ok;
        }
        match self.cur.as_mut() {
            Some(cur) if u64::from(cur.left) >= gap && self.head_fill == 0 => {
                cur.left -= gap as u32;
                if cur.header.kept() {
                    cur.cut = true;
                    self.keep = Vec::new();
                }
                if cur.left == 0 {
                    self.finish(last_ns, &[], on_frame);
                }
                Outcome::Ok
            }
            _ => {
                if let Some(mut cur) = self.cur.take() {
                    // Its end is somewhere in the gap: reported cut, ending with the gap.
                    cur.cut |= cur.header.kept();
                    self.cur = Some(cur);
                    self.finish(last_ns, &[], on_frame);
                }
                self.reset();
                self.lost = true;
                Outcome::Lost
            }
        }
    }

    /// Forgets the frame in progress (framing lost, or the connection reset).
    pub fn reset(&mut self) {
        self.cur = None;
        self.head_fill = 0;
        self.keep = Vec::new();
    }

    fn finish(&mut self, last_ns: u64, here: &[u8], on_frame: &mut dyn FnMut(Frame<'_>)) {
        let Some(cur) = self.cur.take() else {
            return;
        };
        let keep = std::mem::take(&mut self.keep);
        let too_large =
            cur.header.keep_limit() == MAX_BLOCK_BYTES && cur.header.len as usize > MAX_BLOCK_BYTES;
        let payload = if !cur.header.kept() {
            Payload::Counted(cur.first_byte)
        } else if cur.cut || too_large {
            Payload::Cut
        } else if !here.is_empty() {
            Payload::Whole(&here[..here.len().min(cur.header.keep_limit())])
        } else {
            Payload::Whole(&keep)
        };
        on_frame(Frame {
            header: cur.header,
            payload,
            first_ns: cur.first_ns,
            last_ns,
        });
        // Keep the allocation for the next split frame, within reason.
        if keep.capacity() <= 4096 {
            self.keep = keep;
            self.keep.clear();
        }
    }
}

/// Whether `bytes`, the captured start of a chunk, look like a run of HTTP/2 frames: every
/// frame header in them is of a known type, with a believable length, flags and stream id
/// for that type, and they chain up to the end of the capture (`len` bytes moved in all).
/// A false positive resumes framing on garbage, so this asks for at least one whole header.
pub fn plausible_chain(bytes: &[u8], len: u64) -> bool {
    match chain(bytes, len, &mut |_, _| {}) {
        Some((end, frames)) => frames > 0 && (end >= bytes.len() || bytes.len() - end < 9),
        None => false,
    }
}

/// Whether `bytes` are exactly a chain of plausible frames, nothing left over.
pub fn is_exact_chain(bytes: &[u8]) -> bool {
    chain(bytes, bytes.len() as u64, &mut |_, _| {})
        .is_some_and(|(end, frames)| frames > 0 && end == bytes.len())
}

/// Whether `bytes` are exactly a chain of plausible frames with a HEADERS frame among them.
pub fn is_exact_chain_with_headers(bytes: &[u8]) -> bool {
    let mut headers = false;
    let end = chain(bytes, bytes.len() as u64, &mut |h, _| {
        headers |= h.kind == HEADERS;
    });
    headers && end.is_some_and(|(end, _)| end == bytes.len())
}

/// For a connection found already open: when `bytes` are exactly a chain of plausible frames
/// (nothing left over) holding a whole HEADERS frame, the side that sent them, told by the
/// header block's first field: a request's pseudo-headers (`:authority`, `:method`, `:path`,
/// `:scheme`, static entries 1–7) or a response's `:status` (8–14), indexed or as a literal's
/// name, as every encoder writes them first. None when that cannot be told.
pub fn exact_chain_side(bytes: &[u8]) -> Option<super::Stream> {
    let mut side = None;
    let end = chain(bytes, bytes.len() as u64, &mut |h, payload| {
        if h.kind == HEADERS && side.is_none() {
            let skip = usize::from(h.has(PADDED)) + if h.has(PRIORITY_FLAG) { 5 } else { 0 };
            side = payload
                .get(skip)
                .and_then(|&first| side_of_first_field(first));
        }
    });
    match end {
        Some((end, _)) if end == bytes.len() => side,
        _ => None,
    }
}

/// Walks the frame headers in `bytes` (`len` bytes moved in all), calling `on_frame` with
/// each header and the part of its payload that `bytes` hold: where the chain ends and how
/// many frames it has, or None at a header that is not plausible or a frame past `len`.
fn chain(
    bytes: &[u8],
    len: u64,
    on_frame: &mut dyn FnMut(&Header, &[u8]),
) -> Option<(usize, usize)> {
    let mut at = 0usize;
    let mut frames = 0;
    while at + 9 <= bytes.len() {
        let mut head = [0u8; 9];
        head.copy_from_slice(&bytes[at..at + 9]);
        let h = Header::parse(&head);
        if !plausible(&h) || head[5] & 0x80 != 0 {
            return None;
        }
        let end = at + 9 + h.len as usize;
        if end as u64 > len {
            return None;
        }
        on_frame(&h, &bytes[(at + 9).min(bytes.len())..end.min(bytes.len())]);
        frames += 1;
        at = end;
    }
    Some((at, frames))
}

fn plausible(h: &Header) -> bool {
    if h.len > MAX_PLAUSIBLE_FRAME {
        return false;
    }
    let on_connection = h.stream == 0;
    match h.kind {
        DATA | HEADERS | CONTINUATION | PUSH_PROMISE | RST_STREAM | PRIORITY => !on_connection,
        SETTINGS => on_connection && h.len.is_multiple_of(6) && h.flags & !ACK == 0,
        PING => on_connection && h.len == 8,
        GOAWAY => on_connection && h.len >= 8,
        WINDOW_UPDATE => h.len == 4,
        _ => false,
    }
}

/// The static-table index a header block's first byte refers to (indexed field, or a
/// literal's indexed name), as a side.
fn side_of_first_field(b: u8) -> Option<super::Stream> {
    let index = match b {
        0x80..=0xff => b & 0x7f,
        0x40..=0x7f => b & 0x3f,
        0x00..=0x1f => b & 0x0f,
        // A dynamic table size update first: not told here.
        _ => return None,
    };
    match index {
        1..=7 => Some(super::Stream::Request),
        8..=14 => Some(super::Stream::Response),
        _ => None,
    }
}
