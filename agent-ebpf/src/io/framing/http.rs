//! HTTP/1.x framing in the kernel: heads, chunk-size lines and trailers are scanned byte by
//! byte and captured whole; bodies are skipped by Content-Length or chunk size, so a `read`
//! holding a pipeline of responses gives userspace every head however large the bodies are.
//!
//! The scanner (`HttpScan`, one per direction) carries its state across syscalls, so a head
//! may be split at any byte. It learns only what framing needs, with the same rules as the
//! userspace decoder (`agent/src/protocol/http1`): the method (`HEAD` responses have no body,
//! `CONNECT` turns the connection into a tunnel), the status (`1xx` interim, `101`, `204`,
//! `304`), `Content-Length`, and whether the last transfer coding is `chunked`. What it cannot
//! follow ends framing for the direction, counted, and later syscalls are captured by prefix:
//! a response delimited by the connection's close, a tunnel, a head over `MAX_HEAD` bytes, a
//! bad chunk size. After a `101` the next bytes decide: HTTP/2 frames (an `h2c` upgrade) are
//! framed on, anything else (a WebSocket) is not.

use core::ptr::write_volatile;

use agent_ebpf::{
    HttpPipe, HttpScan, FRAME_H2_PREFACE, FRAME_H2_UPGRADE, FRAME_OFF, HTTP_PIPELINE,
};

use super::{Walk, LOST_BOUND, LOST_HEADER, WINDOW_MASK};

/// Head bytes at most (the userspace decoder's `MAX_HEAD_BYTES`), also per trailer and per
/// chunk-size line.
const MAX_HEAD: u32 = 16 * 1024;
/// Bytes scanned per step at most, or words skipped (a step also ends at each line feed
/// framing must act on).
const SCAN: u64 = 16;

/// `HttpScan::phase`.
const PHASE_HEAD: u8 = 0;
const PHASE_CHUNK: u8 = 1;
const PHASE_TRAILER: u8 = 2;

/// `HttpScan::field`: what the current line's next bytes are.
const FIELD_START: u8 = 0;
const FIELD_NAME: u8 = 1;
const FIELD_STATUS: u8 = 2;
const FIELD_LENGTH: u8 = 3;
const FIELD_CODING: u8 = 4;
const FIELD_CHUNK: u8 = 5;
const FIELD_REST: u8 = 6;

/// `HttpScan::flags`.
const SEEN_START: u16 = 1;
const METHOD_HEAD: u16 = 2;
const METHOD_CONNECT: u16 = 4;
const HAS_LENGTH: u16 = 8;
const HAS_CODING: u16 = 16;
const CHUNKED: u16 = 32;
const BAD_NUMBER: u16 = 64;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One FNV-1a step over a byte already lower-cased (`| 0x20`): the scanner's and `hash`'s.
#[inline(always)]
const fn fold(h: u64, lower: u8) -> u64 {
    (h ^ lower as u64).wrapping_mul(FNV_PRIME)
}

/// FNV-1a of the bytes with `| 0x20` (ASCII letters lower-cased), as the scanner hashes names.
const fn hash(s: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    let mut i = 0;
    while i < s.len() {
        h = fold(h, s[i] | 0x20);
        i += 1;
    }
    h
}

const CONTENT_LENGTH: u64 = hash(b"content-length");
const TRANSFER_ENCODING: u64 = hash(b"transfer-encoding");
const HEAD: u64 = hash(b"HEAD");
const CONNECT: u64 = hash(b"CONNECT");
/// The first eight bytes of the two names framing reads, lower-cased as `LOWER` does it.
const CONTENT_: u64 = u64::from_le_bytes(*b"content-");
const TRANSFER: u64 = u64::from_le_bytes(*b"transfer");
/// `| 0x20` on each byte of a word (what the scanner's `fold` does to each name byte).
const LOWER: u64 = 0x2020_2020_2020_2020;
const GET_: u64 = u32::from_le_bytes(*b"GET ") as u64;
const POST_: u64 = 0x20_5453_4f50;
const LENGTH: u64 = 0x6874_676e_656c;
const HTTP11: u64 = u64::from_le_bytes(*b"HTTP/1.1");
/// A byte repeated in each byte of a word.
const LF: u64 = 0x0a0a_0a0a_0a0a_0a0a;
const CR: u64 = 0x0d0d_0d0d_0d0d_0d0d;
const ZEROS: u64 = 0x3030_3030_3030_3030;

/// Whether any byte of `x` is the byte `repeated` repeats (exact: the carries of the
/// subtraction can only mark bytes above a true match).
#[inline(always)]
fn has_byte(x: u64, repeated: u64) -> bool {
    let y = x ^ repeated;
    y.wrapping_sub(0x0101_0101_0101_0101) & !y & 0x8080_8080_8080_8080 != 0
}

/// Eight window bytes from window offset `at` as a little-endian word (the program runs on
/// little-endian machines only), from two aligned loads: a word load at an offset the
/// verifier cannot prove aligned would be split into byte loads. Bytes past the window's
/// filled part are garbage; callers read only words within it.
#[inline(always)]
fn word_at(w: &Walk, at: u64) -> u64 {
    let a = at & !7;
    let shift = (at & 7) * 8;
    // Shifted in two steps, so that a shift of 0 takes nothing from the next word (a
    // shift by 64 is not one).
    w.aligned_word(a) >> shift | (w.aligned_word(a + 8) << (63 - shift)) << 1
}

// `word_at` builds words little-endian.
const _: () = assert!(cfg!(target_endian = "little"));

/// "chunked" as the last seven bytes of `HttpScan::last`.
const CHUNKED_TAIL: u64 = 0x0063_6875_6e6b_6564;

/// Whether a connection's first request bytes (big-endian, first four) start an HTTP/1.x
/// request the kernel frames. `CONNECT` is left out: it becomes a tunnel at once.
#[inline(always)]
pub fn is_request_start(first4: u32) -> bool {
    matches!(
        &first4.to_be_bytes(),
        b"GET " | b"POST" | b"PUT " | b"HEAD" | b"DELE" | b"OPTI" | b"PATC" | b"TRAC"
    )
}

/// A fresh scanner for the next message.
#[inline(always)]
fn start_message(s: &mut HttpScan) {
    // Field by field, and volatile: the compiler would otherwise merge the zeroing into a
    // call to `memset`, a BPF subprogram whose frame the call chain of callbacks cannot spare
    // (512 bytes of stack in all on Linux 6.1, each frame rounded up to 32).
    // SAFETY: plain stores to fields of a live map value.
    unsafe {
        write_volatile(&mut s.name, FNV_OFFSET);
        write_volatile(&mut s.value, 0);
        write_volatile(&mut s.last, 0);
        write_volatile(&mut s.length, 0);
        write_volatile(&mut s.line, 0);
        write_volatile(&mut s.bytes, 0);
        write_volatile(&mut s.status, 0);
        write_volatile(&mut s.phase, PHASE_HEAD);
        write_volatile(&mut s.field, FIELD_START);
        write_volatile(&mut s.flags, 0);
    }
}

/// One step in `FRAME_HTTP` mode: scans up to `SCAN` bytes, stopping after a line feed, and
/// acts on the line that ended. Scanned text is captured when its head, chunk-size line or
/// trailer ends, or when the syscall does. Returns 1 to stop the walk.
#[inline(always)]
pub fn step(w: &mut Walk) -> i64 {
    if w.http_open == 0 {
        w.http_open = 1;
        w.hdr_pos = w.pos;
    }
    let left = w.ret - w.pos;
    if !super::fill_window(w, left) {
        return 1;
    }
    let from = w.pos - w.win_start;
    let n = (w.win_start + w.win_len - w.pos).min(left);
    let words = fast(w, from, n);
    let words = w.opaque(words);
    let from = from + words;
    let n = n - words;
    let response = w.response != 0;
    let mut i = 0u64;
    let mut line_end = false;
    // The loop handles what most of the other head bytes are (field names, line ends) with
    // few branches; any other byte of a value framing reads (the start line's spaces, a
    // status or Content-Length `fast` left, chunk sizes) stops it and, first in a step, takes
    // `scan_byte` alone. The verifier walks the loop once per
    // iteration and the step once per caller state: branches here multiply.
    while i < SCAN {
        if i >= n {
            break;
        }
        let s = &mut w.dir.http;
        let c = w.win[((from + i) & WINDOW_MASK) as usize];
        if c == b'\n' {
            i += 1;
            if s.field == FIELD_REST
                && (s.phase == PHASE_TRAILER
                    || (s.phase == PHASE_HEAD && s.flags & SEEN_START != 0))
            {
                // A field line framing ignores ended: the next one starts (as `end_line`
                // would start it), from the next step, whose `fast` may pass it whole.
                next_field_line(s);
                break;
            }
            line_end = true;
            break;
        }
        if s.field == FIELD_NAME {
            if c != b'\r' {
                name_byte(s, c);
            }
        } else if s.field == FIELD_START && c != b' ' && c != b'\r' {
            // The method or the protocol version: hashed up to its space.
            s.line += 1;
            s.name = fold(s.name, c | 0x20);
        } else if s.field != FIELD_REST {
            if i == 0 {
                scan_byte(s, c, response);
                i = 1;
            }
            break;
        }
        i += 1;
    }
    w.pos += words + i;
    end_step(w, words + i, line_end)
}

/// What ends every step: the head's byte budget, the line that ended, the text to deliver
/// when the syscall ends inside it. Returns 1 to stop the walk.
#[inline(always)]
fn end_step(w: &mut Walk, scanned: u64, line_end: bool) -> i64 {
    let s = &mut w.dir.http;
    s.bytes = s.bytes.saturating_add(scanned as u32);
    if s.bytes > MAX_HEAD {
        w.lost = LOST_HEADER;
        return 1;
    }
    if line_end && !end_line(w) {
        return 1;
    }
    if w.http_open != 0 && w.pos >= w.ret {
        // The text continues in the next syscall: deliver what is here.
        capture_text(w);
    }
    0
}

/// What the scan takes faster than a byte a step, from the window's offset `from` (`n`
/// bytes there), with the same outcome as `scan_byte` and `name_byte`:
/// - a response's start line up to its reason (`HTTP/1.1 200 `), a request's method when it
///   is `GET` or `POST`;
/// - a Content-Length line's name, a space, up to six digits and its carriage return;
/// - eight bytes at a time, what the scan would pass over without acting on it: the bytes of
///   a value framing ignores up to its line's end, and a field line whose name (seen at its
///   start, whole in eight bytes without a line end) does not begin as one of the two names
///   framing reads, as `name_byte` would decide at its colon (and a line without a colon ends
///   as one with it would).
///
/// Returns the bytes taken (0: the byte scan goes on). Branches are few and the result
/// passes through memory (`Walk::opaque`), so the verifier walks the byte scan after it once.
#[inline(always)]
fn fast(w: &mut Walk, from: u64, n: u64) -> u64 {
    if n < 8 {
        return 0;
    }
    let x = word_at(w, from);
    let next = word_at(w, from + 8);
    let response = w.response != 0;
    let s = &mut w.dir.http;
    let field = s.field;
    if field == FIELD_START {
        if s.line != 0 {
            return 0;
        }
        if !response {
            let method = if x & 0xffff_ffff == GET_ {
                4
            } else if x & 0xff_ffff_ffff == POST_ {
                5
            } else {
                return 0;
            };
            // The method, hashed by the scan, only matters when it is HEAD or CONNECT.
            s.line = method as u32;
            s.field = FIELD_REST;
            return method;
        }
        // " ddd " as digit values: a space (0x20 ^ 0x30 = 0x10), three digits, a space.
        let y = next ^ ZEROS;
        if n < 16
            || x != HTTP11
            || y & 0xff != 0x10
            || (y >> 32) & 0xff != 0x10
            || non_digits(y >> 8) & 0x0080_8080 != 0
        {
            return 0;
        }
        s.value = ((y >> 8) & 0xff) * 100 + ((y >> 16) & 0xff) * 10 + ((y >> 24) & 0xff);
        s.line = 13;
        s.field = FIELD_REST;
        return 13;
    }
    if field == FIELD_LENGTH {
        if s.value != 0 {
            return 0;
        }
        return length_value(s, x);
    }
    let words = n / 8;
    if field == FIELD_NAME && s.line == 0 {
        let lower = x | LOWER;
        if has_byte(x, LF) || has_byte(x, CR) || lower == TRANSFER {
            return 0;
        }
        if lower == CONTENT_ {
            // Content-Length (its colon not folded), or another name.
            // Its next seven bytes must be in this syscall: past `n`, the window holds
            // stale bytes.
            let rest = next & 0x00ff_ffff_ffff_ffff;
            if n < 15 || has_byte(rest | 0xff << 56, LF) || has_byte(rest | 0xff << 56, CR) {
                return 0;
            }
            if (rest | LOWER) & 0x0000_ffff_ffff_ffff == LENGTH && rest >> 48 == b':' as u64 {
                // The value too, when its word is in the window (else no digit in it).
                let value = if n >= 23 {
                    word_at(w, from + 15)
                } else {
                    0x8080_8080_8080_8080
                };
                let s = &mut w.dir.http;
                s.field = FIELD_LENGTH;
                s.line = 15;
                s.value = 0;
                return 15 + length_value(s, value);
            }
        }
        s.field = FIELD_REST;
        // Not a blank line.
        s.line = 1;
    } else if field != FIELD_REST {
        return 0;
    }
    // Counted in words, so that the verifier sees one state per round.
    let mut j = 0u64;
    while j < SCAN {
        if j >= words || has_byte(word_at(w, from + 8 * j), LF) {
            break;
        }
        j += 1;
    }
    8 * j
}

/// A Content-Length value from its start (`x`: its first eight bytes, `value` still 0): a
/// space before it (ignored by the scan), up to six digits, a carriage return after them
/// (ignored too). Returns the bytes taken.
#[inline(always)]
fn length_value(s: &mut HttpScan, x: u64) -> u64 {
    let lead = (x & 0xff == b' ' as u64) as u64;
    let y = (x >> (8 * lead)) ^ ZEROS | 0x8080 << 48;
    // The digits before the first other byte: the bits below its top bit, a byte each.
    let others = non_digits(y);
    let below = (others & others.wrapping_neg()).wrapping_sub(1);
    let k = popcount(below) / 8;
    // The k digits at the top of a word, zeros (leading ones) below: its eight-digit number
    // is theirs.
    let shift = 64 - 8 * k;
    let top = (y << (shift / 2)) << (shift - shift / 2);
    s.value = eight_digits(top);
    s.line += k as u32;
    let end = lead + k;
    let cr = (k > 0 && (x >> (8 * end)) & 0xff == b'\r' as u64) as u64;
    end + cr
}

/// The bytes of `y` (bytes XOR '0', so a digit is its value) that are not digits, as their
/// top bits.
#[inline(always)]
fn non_digits(y: u64) -> u64 {
    // A byte under 0x80 plus 0x76 reaches 0x80 exactly when it is 10 or more; no carries.
    (((y & 0x7f7f_7f7f_7f7f_7f7f) + 0x7676_7676_7676_7676) | y) & 0x8080_8080_8080_8080
}

#[inline(always)]
fn popcount(x: u64) -> u64 {
    let x = x - ((x >> 1) & 0x5555_5555_5555_5555);
    let x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    let x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    x.wrapping_mul(0x0101_0101_0101_0101) >> 56
}

/// The number eight digit values spell, the first (most significant) in the lowest byte.
#[inline(always)]
fn eight_digits(v: u64) -> u64 {
    let v = (v & 0x0f0f_0f0f_0f0f_0f0f).wrapping_mul(2561) >> 8;
    let v = (v & 0x00ff_00ff_00ff_00ff).wrapping_mul(6_553_601) >> 16;
    (v & 0x0000_ffff_0000_ffff).wrapping_mul(42_949_672_960_001) >> 32
}

/// A byte of a field name: hashed; the colon decides what the value is to framing.
#[inline(always)]
fn name_byte(s: &mut HttpScan, c: u8) {
    s.line += 1;
    if c == b':' {
        s.field = if s.name == CONTENT_LENGTH && s.line == 15 {
            s.value = 0;
            FIELD_LENGTH
        } else if s.name == TRANSFER_ENCODING && s.line == 18 {
            s.last = 0;
            FIELD_CODING
        } else {
            FIELD_REST
        };
    } else {
        s.name = fold(s.name, c | 0x20);
    }
}

/// A byte of any other field (the start line, a value framing reads): one per step.
#[inline(always)]
fn scan_byte(s: &mut HttpScan, c: u8, response: bool) {
    if c == b'\r' {
        return;
    }
    if s.field == FIELD_NAME {
        name_byte(s, c);
        return;
    }
    let lc = c | 0x20;
    s.last = s.last << 8 | lc as u64;
    s.line += 1;
    match s.field {
        FIELD_START => {
            if c == b' ' {
                if response {
                    s.value = 0;
                    s.field = FIELD_STATUS;
                } else {
                    if s.name == HEAD && s.line == 5 {
                        s.flags |= METHOD_HEAD;
                    } else if s.name == CONNECT && s.line == 8 {
                        s.flags |= METHOD_CONNECT;
                    }
                    s.field = FIELD_REST;
                }
            } else {
                s.name = fold(s.name, lc);
            }
        }
        FIELD_STATUS => {
            if c.is_ascii_digit() && s.value < 1000 {
                s.value = s.value * 10 + (c - b'0') as u64;
            } else {
                s.field = FIELD_REST;
            }
        }
        FIELD_LENGTH => {
            if c.is_ascii_digit() {
                if s.value < 1 << 56 {
                    s.value = s.value * 10 + (c - b'0') as u64;
                } else {
                    s.flags |= BAD_NUMBER;
                }
            } else if c == b',' {
                s.value = 0;
            } else if c != b' ' && c != b'\t' {
                s.flags |= BAD_NUMBER;
            }
        }
        FIELD_CHUNK => {
            let digit = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => 16,
            };
            if digit < 16 && s.name < 16 {
                s.value = s.value << 4 | digit as u64;
                s.name += 1;
            } else if digit < 16 {
                s.flags |= BAD_NUMBER;
            } else {
                // Extensions follow.
                s.field = FIELD_REST;
            }
        }
        _ => {}
    }
}

/// Starts scanning a field line (of a head or a trailer).
#[inline(always)]
fn next_field_line(s: &mut HttpScan) {
    // Volatile for the reason `start_message` gives.
    // SAFETY: plain stores to fields of a live map value.
    unsafe {
        write_volatile(&mut s.line, 0);
        write_volatile(&mut s.last, 0);
        write_volatile(&mut s.value, 0);
        write_volatile(&mut s.name, FNV_OFFSET);
        write_volatile(&mut s.field, FIELD_NAME);
    }
}

/// Acts on the line that just ended. Returns false when the walk must stop.
#[inline(always)]
fn end_line(w: &mut Walk) -> bool {
    let response = w.response != 0;
    let s = &mut w.dir.http;
    let blank = s.line == 0;
    let field = s.field;
    let last = s.last;
    let value = s.value;
    let digits = s.name;
    // Volatile for the reason `start_message` gives.
    // SAFETY: plain stores to fields of a live map value.
    unsafe {
        write_volatile(&mut s.line, 0);
        write_volatile(&mut s.last, 0);
        write_volatile(&mut s.value, 0);
        write_volatile(&mut s.name, FNV_OFFSET);
    }
    match s.phase {
        PHASE_CHUNK => {
            // A chunk-size line: its hex digits (counted in `name`), then extensions.
            if s.flags & BAD_NUMBER != 0 || digits == 0 {
                w.lost = LOST_HEADER;
                return false;
            }
            capture_text(w);
            let s = &mut w.dir.http;
            s.bytes = 0;
            if value == 0 {
                s.phase = PHASE_TRAILER;
                // Scanned as names, so that an empty line is told from a trailer field.
                s.field = FIELD_NAME;
            } else {
                s.field = FIELD_CHUNK;
                s.name = 0;
                // The data and the CRLF after it.
                w.dir.skip = value + 2;
            }
            true
        }
        PHASE_TRAILER => {
            if blank {
                capture_text(w);
                start_message(&mut w.dir.http);
            } else {
                s.field = FIELD_NAME;
            }
            true
        }
        _ => {
            if s.flags & SEEN_START == 0 {
                if blank {
                    // Blank lines between messages.
                    s.field = FIELD_START;
                    return true;
                }
                s.flags |= SEEN_START;
                if response {
                    s.status = value.min(999) as u32;
                }
            } else if field == FIELD_LENGTH {
                s.flags |= HAS_LENGTH;
                s.length = value;
            } else if field == FIELD_CODING {
                s.flags |= HAS_CODING;
                let tail = last & 0x00ff_ffff_ffff_ffff;
                if tail == CHUNKED_TAIL {
                    s.flags |= CHUNKED;
                } else {
                    s.flags &= !CHUNKED;
                }
            }
            s.field = FIELD_NAME;
            if blank {
                capture_text(w);
                end_head(w)
            } else {
                true
            }
        }
    }
}

/// The head just ended: what follows it. Returns false when the walk must stop.
#[inline(always)]
fn end_head(w: &mut Walk) -> bool {
    let flags = w.dir.http.flags;
    let status = w.dir.http.status;
    let length = w.dir.http.length;
    start_message(&mut w.dir.http);
    if flags & BAD_NUMBER != 0 {
        w.lost = LOST_HEADER;
        return false;
    }
    let chunked = flags & CHUNKED != 0;
    if w.response == 0 {
        if flags & METHOD_CONNECT != 0 {
            return stop_both(w);
        }
        // Remember whether its response will have a body.
        let number = w.pipe.requests;
        w.pipe.requests = number.wrapping_add(1);
        if flags & METHOD_HEAD != 0 {
            if number.wrapping_sub(w.pipe.responses) >= HTTP_PIPELINE as u32 {
                w.lost = LOST_BOUND;
                return false;
            }
            let bit = number as usize & (HTTP_PIPELINE - 1);
            w.pipe.heads[(bit >> 6) & (HTTP_PIPELINE / 64 - 1)] |= 1 << (bit & 63);
        }
        if flags & HAS_CODING != 0 {
            if !chunked {
                w.lost = LOST_HEADER;
                return false;
            }
            w.dir.http.phase = PHASE_CHUNK;
            w.dir.http.field = FIELD_CHUNK;
            w.dir.http.name = 0;
        } else if flags & HAS_LENGTH != 0 {
            w.dir.skip = length;
        }
        return true;
    }
    if (100..200).contains(&status) && status != 101 {
        // Interim: the final response follows.
        return true;
    }
    let number = w.pipe.responses;
    w.pipe.responses = number.wrapping_add(1);
    let head_request = answers_head(&mut w.pipe, number);
    if status == 101 {
        // Perhaps HTTP/2 from here (`Upgrade: h2c`): the next bytes tell (`FRAME_H2_UPGRADE`).
        w.dir.mode = FRAME_H2_UPGRADE;
        w.other_mode = FRAME_H2_PREFACE;
        return true;
    }
    if head_request || status == 204 || status == 304 {
        return true;
    }
    if flags & HAS_CODING != 0 {
        if !chunked {
            return until_close(w);
        }
        w.dir.http.phase = PHASE_CHUNK;
        w.dir.http.field = FIELD_CHUNK;
        w.dir.http.name = 0;
    } else if flags & HAS_LENGTH != 0 {
        w.dir.skip = length;
    } else {
        return until_close(w);
    }
    true
}

/// Whether final response `number` answers a `HEAD` request (its bit is cleared).
#[inline(always)]
fn answers_head(pipe: &mut HttpPipe, number: u32) -> bool {
    let bit = number as usize & (HTTP_PIPELINE - 1);
    let word = &mut pipe.heads[(bit >> 6) & (HTTP_PIPELINE / 64 - 1)];
    let mask = 1u64 << (bit & 63);
    let head = *word & mask != 0;
    *word &= !mask;
    head
}

/// A body delimited by the connection's close: everything after the head is body, so this
/// direction stops being framed (the decoder counts the gap as body).
#[inline(always)]
fn until_close(w: &mut Walk) -> bool {
    w.dir.mode = FRAME_OFF;
    true
}

/// A tunnel or another protocol from here on: neither direction is framed any more.
#[inline(always)]
fn stop_both(w: &mut Walk) -> bool {
    w.dir.mode = FRAME_OFF;
    w.other_mode = FRAME_OFF;
    true
}

/// Captures the text scanned since `hdr_pos` (from the next step on).
#[inline(always)]
fn capture_text(w: &mut Walk) {
    if w.http_open != 0 && w.pos > w.hdr_pos {
        w.cap_pos = w.hdr_pos;
        w.cap_left = w.pos - w.hdr_pos;
    }
    w.http_open = 0;
}
