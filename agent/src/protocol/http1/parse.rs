//! Parsing a head: start lines, header fields and the byte-level helpers under them.

use super::{DecodeError, Stream, MAX_METHOD_TOKEN};
use crate::protocol::text::is_tchar;

/// Whether the first bytes of a head can begin a start line: Some(true) decided yes,
/// Some(false) undecided so far (too few bytes), None no.
pub(super) fn start_prefix(stream: Stream, first: &[u8]) -> Option<bool> {
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
pub(super) fn find_head_end(b: &[u8], from: usize) -> Result<usize, usize> {
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
pub(super) fn skip_blank_lines(b: &[u8]) -> usize {
    b.iter().take_while(|&&c| c == b'\r' || c == b'\n').count()
}

/// The first line (without its line ending) and the rest, if the line is complete.
pub(super) fn split_line(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nl = find_byte(b, b'\n')?;
    Some((strip_cr(&b[..nl]), &b[nl + 1..]))
}

/// Position of the first `needle` in `hay`, eight bytes at a time: heads are scanned for line
/// feeds on every request, and a byte loop was the decoder's top cost.
pub(super) fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
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

pub(super) fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

pub(super) fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// `method SP request-target SP HTTP/1.x` → (method, target).
pub(super) fn parse_request_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
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
pub(super) fn parse_status_line(line: &[u8]) -> Option<u16> {
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

pub(super) fn is_version(v: &[u8]) -> bool {
    v.len() == 8 && v.starts_with(b"HTTP/1.") && v[7].is_ascii_digit()
}

/// (path without query or fragment, authority if the target carries one).
pub(super) fn split_target(target: &[u8], connect: bool) -> (&[u8], Option<&[u8]>) {
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
        // `user:password@host`: credentials never leave the decoder.
        let authority = &after[..auth_end];
        let authority = match authority.iter().rposition(|&c| c == b'@') {
            Some(at) => &authority[at + 1..],
            None => authority,
        };
        let path: &[u8] = if path.is_empty() { b"/" } else { path };
        return (path, (!authority.is_empty()).then_some(authority));
    }
    (&target[..cut(target)], None)
}

/// The header fields the decoder needs.
#[derive(Default)]
pub(super) struct Fields<'a> {
    pub(super) host: Option<&'a [u8]>,
    pub(super) traceparent: Option<&'a [u8]>,
    pub(super) tracestate: Option<&'a [u8]>,
    pub(super) content_length: Option<u64>,
    /// Some(whether the final transfer coding is chunked) when Transfer-Encoding was present.
    pub(super) chunked: Option<bool>,
    /// `Upgrade` lists `h2c`.
    pub(super) upgrade_h2c: bool,
}

/// Parses header field lines up to the empty line (or, for a truncated head, the last complete
/// line). `framing` false skips Content-Length/Transfer-Encoding (a truncated head's framing is
/// not used).
pub(super) fn parse_fields(mut block: &[u8], framing: bool) -> Result<Fields<'_>, DecodeError> {
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
            7 if name.eq_ignore_ascii_case(b"upgrade") => {
                f.upgrade_h2c = value
                    .split(|&c| c == b',')
                    .any(|t| trim(t).eq_ignore_ascii_case(b"h2c"))
            }
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

pub(super) fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

pub(super) fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
