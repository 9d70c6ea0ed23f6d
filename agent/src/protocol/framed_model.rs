//! A userspace model of the kernel's message walk (`agent-ebpf/src/io/framing.rs`), for the
//! golden tests: it turns each syscall's bytes into what a framed event delivers (captured
//! header and body-head bytes with the gaps after them, and runs of uncaptured messages), so
//! that every decoder that the kernel frames is checked against the same shapes at every
//! split point. It follows the kernel's rules: detection from the first request bytes, one
//! head of at most `cap` bytes per message (header included), PostgreSQL `DataRow` (backend)
//! and `CopyData` messages wholly inside a syscall counted as runs, state carried across
//! syscalls. (The kernel's split of one syscall into several events of bounded size is not
//! modelled: the pieces come out the same.)

use super::Stream;

/// What the kernel hands userspace for one syscall, piece by piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Captured bytes, then `len - bytes.len()` uncaptured ones.
    Bytes {
        bytes: Vec<u8>,
        len: u64,
    },
    Run {
        kind: u8,
        count: u64,
        bytes: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Detect,
    Off,
    PgStartup,
    Pg,
    PgAnswer,
    Kafka,
    Http,
    H2Preface,
    H2,
    /// The server side after a 101 (`FRAME_H2_UPGRADE`).
    H2Upgrade,
}

#[derive(Clone, Debug)]
struct Dir {
    mode: Mode,
    skip: u64,
    head_left: u64,
    hdr: [u8; 16],
    have: usize,
    http: Scan,
    /// A Kafka Fetch response being walked.
    fetch: Option<FetchBody>,
}

/// HTTP: what is being scanned (kernel `HttpScan`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Head,
    Chunk,
    Trailer,
}

/// One direction's HTTP scan: the current line (CR bytes dropped, as the kernel ignores
/// them), the text bytes of the current head, trailer or chunk-size line, and what the head
/// said so far.
#[derive(Clone, Debug, Default)]
struct Scan {
    phase: Phase,
    line: Vec<u8>,
    bytes: usize,
    seen_start: bool,
    head: bool,
    connect: bool,
    length: Option<u64>,
    chunked: Option<bool>,
    bad: bool,
    status: u16,
}

/// The kernel's bounds (`agent-ebpf/src/io/framing/http.rs`).
const MAX_HTTP_TEXT: usize = 16 * 1024;
const HTTP_PIPELINE: u32 = 256;

/// Both directions of one connection, as the kernel keeps them.
pub struct Walker {
    /// `[request, response]`.
    dirs: [Dir; 2],
    cap: u64,
    /// HTTP: requests and final responses so far, and the numbers of pending `HEAD`s.
    requests: u32,
    responses: u32,
    heads: std::collections::BTreeSet<u32>,
    /// Kafka: Fetch requests in flight, (correlation id, version), in the kernel's slots.
    fetches: [Option<(u32, u8)>; 8],
    /// The first bytes chose a framing mode.
    framed_from_start: bool,
}

const SSL: u32 = 80877103;
const GSS: u32 = 80877104;
const CANCEL: u32 = 80877102;

impl Walker {
    pub fn new(cap: u64) -> Self {
        let dir = Dir {
            mode: Mode::Detect,
            skip: 0,
            head_left: 0,
            hdr: [0; 16],
            have: 0,
            http: Scan::default(),
            fetch: None,
        };
        Walker {
            dirs: [dir.clone(), dir],
            cap,
            requests: 0,
            responses: 0,
            heads: Default::default(),
            fetches: [None; 8],
            framed_from_start: false,
        }
    }

    /// Whether the kernel framed this connection from its first bytes (an upgrade may end
    /// the framing later).
    pub fn framed(&self) -> bool {
        self.framed_from_start
    }

    /// One syscall's bytes on `stream`. None: not framed, the kernel captures a prefix.
    pub fn syscall(&mut self, stream: Stream, b: &[u8]) -> Result<Option<Vec<Piece>>, String> {
        let (this, other) = match stream {
            Stream::Request => (0, 1),
            Stream::Response => (1, 0),
        };
        if self.dirs[this].mode == Mode::Detect {
            let (req, resp) = match stream {
                // A Kafka broker reads a request's size alone: the next read decides, from
                // the size and its first bytes, and the header carries on from the size.
                Stream::Request if self.dirs[0].have == 4 => {
                    let mut first = self.dirs[0].hdr[..4].to_vec();
                    first.extend_from_slice(b);
                    match detect(&first) {
                        found @ ((Mode::Kafka, _) | (Mode::PgStartup, _)) if b.len() >= 4 => found,
                        _ => {
                            self.dirs[0].have = 0;
                            (Mode::Off, Mode::Off)
                        }
                    }
                }
                Stream::Request if b.len() == 4 => {
                    self.dirs[0].hdr[..4].copy_from_slice(b);
                    self.dirs[0].have = 4;
                    return Ok(None);
                }
                Stream::Request => detect(b),
                // An HTTP/2 server's SETTINGS may come first.
                Stream::Response if is_server_settings(b) => (Mode::H2Preface, Mode::H2),
                Stream::Response => (Mode::Off, Mode::Off),
            };
            self.dirs[0].mode = req;
            self.dirs[1].mode = resp;
            self.framed_from_start = req != Mode::Off;
        }
        if self.dirs[this].mode == Mode::Off {
            return Ok(None);
        }
        let mut out = Pieces::default();
        let mut d = self.dirs[this].clone();
        let mut other_mode = None;
        let response = stream == Stream::Response;
        let mut pos = 0usize;
        while pos < b.len() {
            if d.mode == Mode::Off {
                break;
            }
            let left = b.len() - pos;
            if let Some(f) = &mut d.fetch {
                let n = f.left().min(left);
                f.walk(&b[pos..pos + n], self.cap, &mut out)?;
                pos += n;
                if f.left() == 0 {
                    d.fetch = None;
                }
                continue;
            }
            if d.skip > 0 {
                let n = d.skip.min(left as u64) as usize;
                let head = d.head_left.min(n as u64) as usize;
                out.capture(&b[pos..pos + head]);
                out.gap((n - head) as u64);
                d.head_left -= head as u64;
                d.skip -= n as u64;
                pos += n;
                continue;
            }
            if d.mode == Mode::Http {
                let start = pos;
                let Some(k) = b[pos..].iter().position(|&c| c == b'\n') else {
                    d.http.line.extend(b[pos..].iter().filter(|&&c| c != b'\r'));
                    d.http.bytes += b.len() - pos;
                    pos = b.len();
                    out.capture(&b[start..pos]);
                    if d.http.bytes > MAX_HTTP_TEXT {
                        return Err(lost(out, 0, b"text bound"));
                    }
                    break;
                };
                d.http
                    .line
                    .extend(b[pos..pos + k].iter().filter(|&&c| c != b'\r'));
                d.http.bytes += k + 1;
                pos += k + 1;
                out.capture(&b[start..pos]);
                if d.http.bytes > MAX_HTTP_TEXT {
                    return Err(lost(out, b.len() - pos, b"text bound"));
                }
                match self.http_line(&mut d, response) {
                    Ok(Some(mode)) => other_mode = Some(mode),
                    Ok(None) => {}
                    Err(why) => return Err(lost(out, b.len() - pos, why.as_bytes())),
                }
                continue;
            }
            let size = match d.mode {
                Mode::Pg => 5,
                Mode::PgStartup => 8,
                Mode::PgAnswer => 1,
                Mode::H2Preface => 8,
                Mode::H2 | Mode::H2Upgrade => 9,
                // Length and correlation id; a request's api key and version between them.
                Mode::Kafka if response => 8,
                Mode::Kafka => 12,
                _ => 4,
            };
            let hdr_pos = pos;
            let k = (size - d.have).min(left);
            d.hdr[d.have..d.have + k].copy_from_slice(&b[pos..pos + k]);
            let whole = d.have == 0;
            d.have += k;
            pos += k;
            if d.have < size {
                out.capture(&b[hdr_pos..pos]);
                break;
            }
            d.have = 0;
            let h = d.hdr;
            let be32 = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as u64;
            let (total, runnable, kind) = match d.mode {
                Mode::Pg => {
                    let len = be32(1);
                    if !(4..=1 << 30).contains(&len) {
                        return Err(lost(out, b.len() - hdr_pos, &d.hdr));
                    }
                    let runnable = (h[0] == b'D' && response) || h[0] == b'd';
                    (len + 1, runnable, h[0])
                }
                Mode::PgStartup => {
                    let (len, code) = (be32(0), be32(4) as u32);
                    if !(8..=10000).contains(&len) {
                        return Err(lost(out, b.len() - hdr_pos, &d.hdr));
                    }
                    match code {
                        SSL | GSS => other_mode = Some(Mode::PgAnswer),
                        CANCEL => {}
                        _ if code >> 16 == 3 => d.mode = Mode::Pg,
                        _ => return Err(lost(out, b.len() - hdr_pos, &d.hdr)),
                    }
                    (len, false, 0)
                }
                Mode::PgAnswer => match h[0] {
                    b'N' => {
                        d.mode = Mode::Pg;
                        (1, false, 0)
                    }
                    b'S' | b'G' => {
                        d.mode = Mode::Off;
                        other_mode = Some(Mode::Off);
                        (1, false, 0)
                    }
                    _ => return Err(lost(out, b.len() - hdr_pos, &d.hdr)),
                },
                Mode::Kafka => {
                    let len = be32(0);
                    if !(size as u64 - 4..=1 << 30).contains(&len) {
                        return Err(lost(out, b.len() - hdr_pos, &d.hdr));
                    }
                    let correlation = if response { be32(4) } else { be32(8) } as u32;
                    let slot = |f: &Option<(u32, u8)>| f.is_some_and(|(c, _)| c == correlation);
                    if !response {
                        let (key, version) = (be32(4) >> 16, be32(4) & 0xffff);
                        if key == 0 && version <= 13 && len > 8 {
                            // A Produce request: walked from its header on.
                            out.capture(&b[hdr_pos..pos]);
                            let walk = FetchBody::new(version as u8, len - 8, correlation, true);
                            d.fetch = Some(walk);
                            continue;
                        }
                        if key == 1 && version <= 17 {
                            let at = self.fetches.iter().position(Option::is_none);
                            let at = at.unwrap_or(correlation as usize & 7);
                            self.fetches[at] = Some((correlation, version as u8));
                        }
                    } else if let Some(at) = self.fetches.iter().position(slot) {
                        let version = self.fetches[at].take().unwrap().1;
                        if len > 4 {
                            out.capture(&b[hdr_pos..pos]);
                            let walk = FetchBody::new(version, len - 4, correlation, false);
                            d.fetch = Some(walk);
                            continue;
                        }
                    }
                    (len + 4, false, 0)
                }
                Mode::H2Preface => {
                    if h[..8] != *b"PRI * HT" {
                        // Not HTTP/2 (a WebSocket after its 101): not framed from here.
                        d.mode = Mode::Off;
                        (8, false, 0)
                    } else {
                        d.mode = Mode::H2;
                        (24, false, 0xff)
                    }
                }
                Mode::H2 => (u64::from(be32(0) as u32 >> 8) + 9, false, h[3]),
                Mode::H2Upgrade => {
                    if h[3] == 4 && h[4] == 0 && h[5..9] == [0, 0, 0, 0] {
                        d.mode = Mode::H2;
                        (u64::from(be32(0) as u32 >> 8) + 9, false, h[3])
                    } else {
                        d.mode = Mode::Off;
                        (9, false, h[3])
                    }
                }
                Mode::Detect | Mode::Off | Mode::Http => unreachable!(),
            };
            let body = total - size as u64;
            if whole && runnable && body <= (b.len() - pos) as u64 {
                out.run(kind, total);
                pos += body as usize;
                continue;
            }
            // HTTP/2 DATA payloads are skipped whole, header blocks captured whole (64 KiB).
            let h2 = d.mode == Mode::H2;
            let head = if runnable || (h2 && kind == 0) {
                0
            } else if h2 && matches!(kind, 1 | 5 | 9) {
                total.min(64 * 1024).saturating_sub(size as u64)
            } else {
                total.min(self.cap).saturating_sub(size as u64)
            };
            let here = head.min((b.len() - pos) as u64) as usize;
            out.capture(&b[hdr_pos..pos + here]);
            pos += here;
            d.head_left = head - here as u64;
            d.skip = body - here as u64;
        }
        if pos < b.len() {
            // Turned to TLS: the rest is a gap.
            out.gap((b.len() - pos) as u64);
        }
        self.dirs[this] = d;
        if let Some(mode) = other_mode {
            self.dirs[other].mode = mode;
        }
        Ok(Some(out.0))
    }
}

impl Walker {
    /// Acts on the HTTP line that just ended (in `d.http.line`), as the kernel does. Returns
    /// a new mode for the other direction, or why framing is lost.
    fn http_line(&mut self, d: &mut Dir, response: bool) -> Result<Option<Mode>, &'static str> {
        let s = &mut d.http;
        let line = std::mem::take(&mut s.line);
        let blank = line.is_empty();
        match s.phase {
            Phase::Chunk => {
                let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
                if digits == 0 || digits > 16 {
                    return Err("bad chunk size");
                }
                let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).unwrap(), 16)
                    .map_err(|_| "bad chunk size")?;
                s.bytes = 0;
                if size == 0 {
                    s.phase = Phase::Trailer;
                } else {
                    d.skip = size.saturating_add(2);
                }
                Ok(None)
            }
            Phase::Trailer => {
                if blank {
                    *s = Scan::default();
                }
                Ok(None)
            }
            Phase::Head if !s.seen_start => {
                if blank {
                    return Ok(None);
                }
                s.seen_start = true;
                let first = line.split(|&c| c == b' ').next().unwrap_or_default();
                if response {
                    let rest = line.get(first.len() + 1..).unwrap_or_default();
                    let mut status = 0u64;
                    for c in rest.iter().take_while(|c| c.is_ascii_digit()) {
                        if status >= 1000 {
                            break;
                        }
                        status = status * 10 + u64::from(c - b'0');
                    }
                    s.status = status.min(999) as u16;
                } else if line.len() > first.len() {
                    s.head = first.eq_ignore_ascii_case(b"head");
                    s.connect = first.eq_ignore_ascii_case(b"connect");
                }
                Ok(None)
            }
            Phase::Head if !blank => {
                let Some(colon) = line.iter().position(|&c| c == b':') else {
                    return Ok(None);
                };
                let lower: Vec<u8> = line[..colon].iter().map(|c| c | 0x20).collect();
                let value = &line[colon + 1..];
                if lower == b"content-length" {
                    let mut n = 0u64;
                    for &c in value {
                        match c {
                            b'0'..=b'9' if n < 1 << 56 => n = n * 10 + u64::from(c - b'0'),
                            b',' => n = 0,
                            b' ' | b'\t' => {}
                            _ => s.bad = true,
                        }
                    }
                    s.length = Some(n);
                } else if lower == b"transfer-encoding" {
                    let tail: Vec<u8> = line.iter().rev().take(7).rev().map(|c| c | 0x20).collect();
                    s.chunked = Some(tail == b"chunked");
                }
                Ok(None)
            }
            Phase::Head => self.http_head_end(d, response),
        }
    }

    /// The head in `d.http` ended: what follows it, as the kernel decides.
    fn http_head_end(&mut self, d: &mut Dir, response: bool) -> Result<Option<Mode>, &'static str> {
        let s = std::mem::take(&mut d.http);
        if s.bad {
            return Err("bad content-length");
        }
        if !response {
            if s.connect {
                d.mode = Mode::Off;
                return Ok(Some(Mode::Off));
            }
            let number = self.requests;
            self.requests += 1;
            if s.head {
                if number - self.responses >= HTTP_PIPELINE {
                    return Err("pipeline bound");
                }
                self.heads.insert(number);
            }
            match (s.chunked, s.length) {
                (Some(true), _) => d.http.phase = Phase::Chunk,
                (Some(false), _) => return Err("request coding not chunked"),
                (None, Some(n)) => d.skip = n,
                (None, None) => {}
            }
            return Ok(None);
        }
        if (100..200).contains(&s.status) && s.status != 101 {
            return Ok(None);
        }
        let number = self.responses;
        self.responses += 1;
        let head = self.heads.remove(&number);
        if s.status == 101 {
            d.mode = Mode::H2Upgrade;
            return Ok(Some(Mode::H2Preface));
        }
        if head || s.status == 204 || s.status == 304 {
            return Ok(None);
        }
        match (s.chunked, s.length) {
            (Some(true), _) => d.http.phase = Phase::Chunk,
            (None, Some(n)) => d.skip = n,
            // Until the connection closes: not framed from here on.
            _ => d.mode = Mode::Off,
        }
        Ok(None)
    }
}

/// Framing lost at a header (the kernel gives framing up for the direction): recorded
/// fixtures never do this, so it is an error naming what was delivered and the header.
fn lost(out: Pieces, rest: usize, hdr: &[u8]) -> String {
    format!(
        "framing lost at header {hdr:02x?} with {rest} bytes left, after {:?}",
        out.0
    )
}

/// An HTTP/2 server's first SETTINGS frame (`00 00 LL 04 00 00 00 00`, LL a multiple of 6).
fn is_server_settings(b: &[u8]) -> bool {
    b.len() >= 9
        && b[0] == 0
        && b[1] == 0
        && b[2].is_multiple_of(6)
        && b[3] == 4
        && b[4..8] == [0; 4]
}

fn detect(b: &[u8]) -> (Mode, Mode) {
    if b.len() >= 8 && b.starts_with(b"PRI * HT") {
        return (Mode::H2Preface, Mode::H2);
    }
    const METHODS: [&[u8; 4]; 8] = [
        b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"TRAC",
    ];
    if b.len() >= 8 && METHODS.iter().any(|m| b.starts_with(*m)) {
        return (Mode::Http, Mode::Http);
    }
    if b.len() < 8 {
        return (Mode::Off, Mode::Off);
    }
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let code = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let pg = match code {
        SSL | GSS | CANCEL => len == 8 || len == 16,
        _ if code >> 16 == 3 => b.get(8).is_some_and(u8::is_ascii_lowercase),
        _ => false,
    };
    if (8..=10000).contains(&len) && pg {
        return (Mode::PgStartup, Mode::Pg);
    }
    if code >> 16 == 3 && b.len() == 8 {
        // Protocol 3.x without the next byte: PostgreSQL or Kafka Metadata v0, undecided.
        return (Mode::Off, Mode::Off);
    }
    let api_key = u16::from_be_bytes([b[4], b[5]]);
    let api_version = u16::from_be_bytes([b[6], b[7]]);
    if (8..=1 << 30).contains(&len) && api_key < 100 && api_version < 40 {
        return (Mode::Kafka, Mode::Kafka);
    }
    (Mode::Off, Mode::Off)
}

/// Pieces under construction: contiguous captures merge, as the kernel's records do.
#[derive(Default)]
struct Pieces(Vec<Piece>);

impl Pieces {
    fn capture(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some(Piece::Bytes { bytes: b, len }) if *len == b.len() as u64 => {
                b.extend_from_slice(bytes);
                *len += bytes.len() as u64;
            }
            _ => self.0.push(Piece::Bytes {
                bytes: bytes.to_vec(),
                len: bytes.len() as u64,
            }),
        }
    }

    fn gap(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        match self.0.last_mut() {
            Some(Piece::Bytes { len, .. }) => *len += n,
            _ => self.0.push(Piece::Bytes {
                bytes: Vec::new(),
                len: n,
            }),
        }
    }

    fn run(&mut self, kind: u8, bytes: u64) {
        match self.0.last_mut() {
            Some(Piece::Run {
                kind: k,
                count,
                bytes: b,
            }) if *k == kind => {
                *count += 1;
                *b += bytes;
            }
            _ => self.0.push(Piece::Run {
                kind,
                count: 1,
                bytes,
            }),
        }
    }
}

/// A Kafka Fetch response or Produce request the kernel walks
/// (`agent-ebpf/src/io/framing/kafka.rs`): its fields are captured, each `records` field delivered as runs (one per syscall it spans) counting
/// the records of the batches whose headers end in that syscall. Modelled differently from
/// the kernel's field-by-field walk: every syscall re-parses the body so far by the schema
/// ([`fetch_layout`]) and classifies its own bytes from that.
#[derive(Clone, Debug)]
struct FetchBody {
    version: u8,
    /// A Produce request (else a Fetch response).
    produce: bool,
    /// The body after the size prefix, as far as seen (correlation id first).
    seen: Vec<u8>,
    /// Its length.
    len: usize,
}

/// A `records` field: start, length, and its whole batches as (the offset just past the
/// header bytes that count them, their records).
type RecordsField = (usize, usize, Vec<(usize, u64)>);

/// Where a Fetch response's `records` fields are, and where its schema ends.
#[derive(Debug, Default)]
struct Layout {
    fields: Vec<RecordsField>,
    end: Option<usize>,
}

impl FetchBody {
    fn new(version: u8, rest: u64, correlation: u32, produce: bool) -> Self {
        FetchBody {
            version,
            produce,
            seen: correlation.to_be_bytes().to_vec(),
            len: rest as usize + 4,
        }
    }

    fn left(&self) -> usize {
        self.len - self.seen.len()
    }

    /// The next `b.len()` bytes of the body, as the kernel delivers them.
    fn walk(&mut self, b: &[u8], cap: u64, out: &mut Pieces) -> Result<(), String> {
        let from = self.seen.len();
        self.seen.extend_from_slice(b);
        let to = self.seen.len();
        let layout = fetch_layout(&self.seen, self.version, self.produce)
            .map_err(|e| format!("framing lost in a walked message: {e} (after {:?})", out.0))?;
        let mut i = from;
        while i < to {
            let field = layout.fields.iter().find(|f| f.0 <= i && i < f.0 + f.1);
            if let Some((start, len, batches)) = field {
                let until = (start + len).min(to);
                let count = batches
                    .iter()
                    .filter(|(point, _)| *point > from && *point <= to)
                    .map(|(_, n)| n)
                    .sum();
                out.0.push(Piece::Run {
                    kind: b'R',
                    count,
                    bytes: (until - i) as u64,
                });
                i = until;
                continue;
            }
            if let Some(end) = layout.end.filter(|&e| i >= e) {
                // After the schema: a head of `cap` bytes, the rest skipped.
                let head_end = (end + cap as usize).min(to);
                if i < head_end {
                    out.capture(&self.seen[i..head_end]);
                    i = head_end;
                }
                out.gap((to - i) as u64);
                break;
            }
            let next = layout
                .fields
                .iter()
                .map(|f| f.0)
                .filter(|&s| s > i)
                .chain(layout.end.filter(|&e| e > i))
                .min()
                .unwrap_or(to)
                .min(to);
            out.capture(&self.seen[i..next]);
            i = next;
        }
        Ok(())
    }
}

/// The layout of a Fetch response (or Produce request) body of `version`, correlation id
/// first, as far as `p` (a prefix of it) shows it, by the message schema; Err where the
/// kernel gives framing up.
fn fetch_layout(p: &[u8], version: u8, produce: bool) -> Result<Layout, &'static str> {
    let mut layout = Layout::default();
    match fetch_fields(p, u16::from(version), produce, &mut layout) {
        Err(Short::Bad(why)) => Err(why),
        _ => Ok(layout),
    }
}

enum Short {
    /// The prefix ends here.
    End,
    Bad(&'static str),
}

struct Cursor<'a> {
    p: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, Short> {
        let b = *self.p.get(self.at).ok_or(Short::End)?;
        self.at += 1;
        Ok(b)
    }

    fn int(&mut self, width: usize) -> Result<u64, Short> {
        let mut v = 0;
        for _ in 0..width {
            v = v << 8 | u64::from(self.byte()?);
        }
        Ok(v)
    }

    fn uvarint(&mut self) -> Result<u64, Short> {
        let mut v = 0;
        for i in 0..5 {
            let b = self.byte()?;
            if i == 4 && b > 0x0f {
                return Err(Short::Bad("varint"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        unreachable!()
    }

    /// Skips `n` bytes; the prefix may end inside them.
    fn skip(&mut self, n: u64) -> Result<(), Short> {
        self.at = self.at.saturating_add(n as usize);
        if self.at > self.p.len() {
            return Err(Short::End);
        }
        Ok(())
    }

    /// A length or count, null as 0: compact, or `width` bytes with -1 for null.
    fn length(&mut self, flex: bool, width: usize) -> Result<u64, Short> {
        if flex {
            return Ok(self.uvarint()?.saturating_sub(1));
        }
        let v = self.int(width)?;
        let null = if width == 2 { 0xffff } else { 0xffff_ffff };
        match v {
            _ if v == null => Ok(0),
            _ if v > null >> 1 => Err(Short::Bad("negative length")),
            _ => Ok(v),
        }
    }

    fn tags(&mut self) -> Result<(), Short> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.skip(size)?;
        }
        Ok(())
    }
}

fn fetch_fields(p: &[u8], v: u16, produce: bool, layout: &mut Layout) -> Result<(), Short> {
    let flex = v >= if produce { 9 } else { 12 };
    let mut c = Cursor { p, at: 0 };
    c.int(4)?; // correlation id
    if produce {
        let client_id = c.length(false, 2)?;
        c.skip(client_id)?;
        if flex {
            c.tags()?;
        }
        if v >= 3 {
            let transactional_id = c.length(flex, 2)?;
            c.skip(transactional_id)?;
        }
        c.skip(6)?; // acks, timeout_ms
    } else {
        if flex {
            c.tags()?;
        }
        let top = if v >= 7 {
            10
        } else if v >= 1 {
            4
        } else {
            0
        };
        c.skip(top)?;
    }
    for _ in 0..c.length(flex, 4)? {
        if v >= 13 {
            c.skip(16)?;
        } else {
            let n = c.length(flex, 2)?;
            c.skip(n)?;
        }
        for _ in 0..c.length(flex, 4)? {
            if produce {
                c.skip(4)?; // partition_index
            } else {
                c.skip(14 + if v >= 4 { 8 } else { 0 } + if v >= 5 { 8 } else { 0 })?;
            }
            if v >= 4 && !produce {
                let n = c.length(flex, 4)?;
                if flex {
                    for _ in 0..n {
                        c.skip(16)?;
                        c.tags()?;
                    }
                } else if n > 1 << 24 {
                    return Err(Short::Bad("aborted transactions"));
                } else {
                    c.skip(16 * n)?;
                }
            }
            if v >= 11 && !produce {
                c.skip(4)?;
            }
            let len = c.length(flex, 4)? as usize;
            let start = c.at;
            layout.fields.push((start, len, Vec::new()));
            let batches = &mut layout.fields.last_mut().unwrap().2;
            let end = start + len;
            let mut at = start;
            let be = |i: usize, w: usize| -> Result<u64, Short> {
                let bytes = p.get(i..i + w).ok_or(Short::End)?;
                Ok(bytes.iter().fold(0, |v, &b| v << 8 | u64::from(b)))
            };
            // Whole batches only; a partial one at the end counts nothing.
            while at + 17 <= end {
                let blen = be(at + 8, 4)? as usize;
                if blen > end - at - 12 {
                    break;
                }
                if blen < 5 {
                    return Err(Short::Bad("batch length"));
                }
                match be(at + 16, 1)? {
                    2 if blen >= 49 => {
                        let n = be(at + 57, 4)?;
                        if n > i32::MAX as u64 {
                            return Err(Short::Bad("records count"));
                        }
                        batches.push((at + 61, n));
                    }
                    0 | 1 => batches.push((at + 17, 1)),
                    _ => return Err(Short::Bad("magic")),
                }
                at += 12 + blen;
            }
            c.skip(len as u64)?;
            if flex {
                c.tags()?;
            }
        }
        if flex {
            c.tags()?;
        }
    }
    if flex {
        c.tags()?;
    }
    layout.end = Some(c.at);
    Ok(())
}
