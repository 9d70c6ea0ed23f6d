//! Message framing in the kernel, so that exactness does not depend on read/write sizes.
//!
//! A prefix of each syscall's bytes is not enough: one `read` can carry many messages (a
//! result set, a pipeline), and a header past the prefix is invisible to userspace, which then
//! loses framing. For the length-prefixed protocols (PostgreSQL, Kafka) the kernel therefore
//! walks every message of every syscall: it reads each header, captures the header and the
//! head of its body (up to `Config::capture_bytes`), and skips the rest of the body by length.
//! PostgreSQL `DataRow`/`CopyData` messages wholly inside a syscall are not captured at all: a
//! run of them becomes one record (count and bytes). Kafka Fetch responses and Produce
//! requests are walked field by field instead (`kafka.rs`): their `records` fields become runs
//! counting the records of their batches. What reaches userspace per message is
//! therefore bounded, and what reaches it per syscall shrinks for large bodies instead of
//! growing. HTTP/1.x text heads are scanned instead (`http.rs`) and its bodies skipped by
//! Content-Length or chunk size. HTTP/2 is length-prefixed too (9-byte frame headers): every
//! frame header is captured, with the head of its payload (header blocks, SETTINGS, resets),
//! except DATA payloads, which are skipped; one `sendmsg` of a gRPC server carrying a large
//! message and its trailers then still shows the trailers. See `FrameRecord` for the event
//! layout.
//!
//! Framing is decided from a connection's first request bytes (or a first read of exactly 4
//! bytes, a Kafka broker's read of a request's size, and the read after it), in the kernel itself (userspace
//! learns a protocol 5–50 ms later, when the first large result may long be gone): a PostgreSQL
//! start-up packet, a Kafka request header, an HTTP/1.x request line or the HTTP/2 preface
//! (or, when the server speaks first, an HTTP/2 server's SETTINGS frame). Anything else
//! (unknown protocols, connections found already open) keeps prefix capture. State per connection and direction
//! (`FrameDir`) carries a message that spans syscalls: the body bytes still to skip, the head
//! bytes still to capture, and a header split across two syscalls.
//!
//! The walk is one `bpf_loop` (Linux 5.17+) step per message; the loader falls back to the
//! prefix-only programs where the helper is missing. A header that does not parse, more than
//! `MAX_FRAME_STEPS` messages or `MAX_FRAME_EVENTS` events in one syscall, or a syscall without
//! a user buffer (sendfile) that does not only send the rest of a body, give framing up for
//! that direction (counted); the rest of the syscall becomes a gap and later syscalls are
//! captured by prefix.

use core::ffi::c_void;

use agent_ebpf::{
    Counter, FrameDir, FrameRecord, FrameState, HttpPipe, DIR_EGRESS, DIR_INGRESS, FRAME_DETECT,
    FRAME_EVENT_BUDGET, FRAME_H2, FRAME_H2_PREFACE, FRAME_H2_UPGRADE, FRAME_HTTP, FRAME_KAFKA,
    FRAME_OFF, FRAME_PG, FRAME_PG_ANSWER, FRAME_PG_STARTUP, FRAME_RECORD_LEN, MAX_CAPTURE,
    MAX_FRAME_EVENTS, MAX_FRAME_STEPS, MAX_IOVECS, ORIGIN_CONNECT,
};
use aya_ebpf::{
    helpers::{
        bpf_probe_read_user,
        generated::{
            bpf_loop, bpf_probe_read_kernel as probe_read_kernel_raw,
            bpf_probe_read_user as probe_read_user_raw,
        },
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};

use super::{submit, EventBuf, Iovec, MUTED, SCRATCH};
use crate::common::BPF_NOEXIST;
use agent_ebpf::MUTED_CIPHER;

mod http;
mod kafka;
use crate::common::{bump, config, copy_words, store, zero_words};

/// Framing state by connection id; an entry exists from `Open` to `close` for connections
/// seen from their first byte. LRU: a connection whose close was missed ages out.
#[map]
static FRAMES: LruHashMap<u64, FrameState> = LruHashMap::with_max_entries(65536, 0);

/// Per-CPU state of the walk in progress (`bpf_loop` callbacks reach it here).
#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// `detect`'s answer for a TLS ClientHello (never stored: the connection is muted instead).
const FRAME_TLS: u8 = 0xfe;

/// PostgreSQL start-up codes (the int32 after the length of an untyped packet).
const PG_SSL_REQUEST: u32 = 80877103;
const PG_GSSENC_REQUEST: u32 = 80877104;
const PG_CANCEL_REQUEST: u32 = 80877102;
const PG_MAX_STARTUP: u32 = 10000;
/// Largest message length believed (PostgreSQL caps messages at 1 GiB; Kafka far lower).
const MAX_MESSAGE: u64 = 1 << 30;

/// `Walk::last_rec` when the next capture cannot extend the previous record.
const NO_RECORD: u64 = u64::MAX;
/// `Walk::other_mode` when the other direction's mode stays.
const NO_CHANGE: u8 = 0xff;
/// The longest head one message gets: it fits a fresh event with its record.
const MAX_HEAD: u64 = (FRAME_EVENT_BUDGET - FRAME_RECORD_LEN) as u64;
const MASK: u64 = MAX_CAPTURE as u64 - 1;

/// Bytes of the syscall read ahead at a time to find headers in (a power of two): runs of
/// small messages (result rows) cost one read per window instead of one per message.
/// Rows whose headers are in the window extend the open run without leaving the step, up
/// to `FAST_ROWS` per step.
const WINDOW: usize = 1024;
const WINDOW_MASK: u64 = WINDOW as u64 - 1;
const FAST_ROWS: u32 = 32;

/// HTTP/2 frame type DATA, and the kind the preface is parsed as (no frame type).
const H2_DATA: u8 = 0;
const H2_HEADERS: u8 = 1;
const H2_SETTINGS: u8 = 4;
const H2_PUSH_PROMISE: u8 = 5;
const H2_CONTINUATION: u8 = 9;
/// The longest HTTP/2 header-block frame captured whole (the decoder's `MAX_BLOCK_BYTES`).
const H2_MAX_BLOCK: u64 = 64 * 1024;
const H2_PREFACE_KIND: u8 = 0xff;

const LOST_HEADER: u8 = 1;
const LOST_BOUND: u8 = 2;

/// Where a syscall's bytes are in user memory.
#[derive(Clone, Copy)]
pub enum Source {
    /// One flat buffer.
    Flat(u64),
    /// `struct iovec *`, count.
    Iovec(u64, u64),
    /// No user buffer (sendfile).
    None,
}

#[repr(C)]
pub struct Walk {
    /// A window of `MAX_IOVECS` iovecs, from iovec number `first` (which starts at offset
    /// `table_start` of the syscall's bytes): each one's user address and its end as an offset
    /// into the syscall's bytes. The window slides forward as the walk passes its end, so a
    /// `sendmsg` of hundreds of pieces (gRPC) is walked whole.
    bases: [u64; MAX_IOVECS],
    ends: [u64; MAX_IOVECS],
    first: u64,
    table_start: u64,
    /// The syscall's `struct iovec *` and count (0 and 0 for a flat buffer).
    iov: u64,
    iov_count: u64,
    /// The syscall's byte count and the walk's position in them.
    ret: u64,
    pos: u64,
    /// Head bytes captured per message at most.
    cap: u64,
    /// Bytes of records in the event being assembled.
    fill: u64,
    /// Payload offset of the last data record of this event (`NO_RECORD`: none), and the
    /// offset in the syscall's bytes where its bytes end: a capture starting there extends it.
    last_rec: u64,
    last_end: u64,
    /// Where the event being assembled starts in the syscall's bytes.
    frame_start: u64,
    events: u64,
    /// The open run of whole uncaptured messages: start, bytes, count, type.
    run_offset: u64,
    run_len: u64,
    run_count: u64,
    run_kind: u8,
    /// This direction carries responses (server to client).
    response: u8,
    /// New mode for the other direction, or `NO_CHANGE`.
    other_mode: u8,
    /// Why framing was given up (`LOST_*`), 0 while it holds.
    lost: u8,
    /// Where the header being read began in this syscall (0 when it began in an earlier one);
    /// HTTP: where the text not yet captured begins, while `http_open`.
    hdr_pos: u64,
    http_open: u8,
    /// The connection's `FrameState::http`, written back at the end.
    pipe: HttpPipe,
    /// The capture in progress: from this offset, this many bytes still to copy.
    cap_pos: u64,
    cap_left: u64,
    /// Kafka Fetch walk: where the structure bytes not yet captured begin.
    kstart: u64,
    /// A value passed through memory, so that the verifier does not explore the code after it
    /// once per constant it may have (`Walk::opaque`).
    opaque_slot: u64,
    /// The read-ahead window: `win_len` bytes of the syscall from `win_start`.
    win_start: u64,
    win_len: u64,
    win: [u8; WINDOW],
    dir: FrameDir,
}

// `Walk::aligned_word` reads the window by aligned words.
const _: () = assert!(core::mem::offset_of!(Walk, win) % 8 == 0);

impl Walk {
    /// `value`, passed through the walk's memory: the verifier tracks constants in registers
    /// and would walk what follows once per constant the value may be (the Kafka walk's
    /// field widths and batch header offset, the words HTTP's scan skipped); through memory
    /// it is one unknown number, walked once.
    #[inline(always)]
    fn opaque(&mut self, value: u64) -> u64 {
        // SAFETY: a field of the walk's per-CPU slot.
        unsafe {
            core::ptr::write_volatile(&mut self.opaque_slot, value);
            core::ptr::read_volatile(&self.opaque_slot)
        }
    }

    /// The window's aligned word at byte `a` (a multiple of 8; wrapped into the window).
    #[inline(always)]
    fn aligned_word(&self, a: u64) -> u64 {
        let i = (a & (WINDOW_MASK & !7)) as usize;
        // SAFETY: i + 8 ≤ WINDOW, and `win` is 8-aligned (`Walk` is, and the assertion above
        // holds its offset).
        unsafe { core::ptr::read(self.win.as_ptr().add(i) as *const u64) }
    }
}

/// A new connection, seen from its first byte: its first request bytes will decide framing.
#[inline(always)]
pub fn start(conn_id: u64) {
    let mut state = core::mem::MaybeUninit::<FrameState>::uninit();
    // SAFETY: all zeros is a valid `FrameState`; written word by word (`common::zero_words`).
    let state = unsafe {
        zero_words(state.as_mut_ptr());
        state.assume_init_mut()
    };
    state.dirs[0].mode = FRAME_DETECT;
    state.dirs[1].mode = FRAME_DETECT;
    let _ = FRAMES.insert(&conn_id, state, 0);
}

#[inline(always)]
pub fn forget(conn_id: u64) {
    let _ = FRAMES.remove(&conn_id);
}

/// Frames one syscall's `ret` bytes into events (its header already filled in `buf`).
/// Returns false when the connection's direction is not framed: the caller captures a prefix.
#[inline(always)]
pub fn frame(
    buf: &mut EventBuf,
    conn_id: u64,
    origin: u8,
    direction: u8,
    ret: u64,
    source: Source,
) -> bool {
    let Some(state) = FRAMES.get_ptr_mut(&conn_id) else {
        return false;
    };
    // SAFETY: a live map value; concurrent syscalls on one socket are not framed consistently
    // anyway (their bytes interleave), so a lost update only costs framing.
    let state = unsafe { &mut *state };
    let request = (origin == ORIGIN_CONNECT) == (direction == DIR_EGRESS);
    let (this, other) = if direction == DIR_INGRESS {
        (0usize, 1usize)
    } else {
        (1, 0)
    };
    if state.dirs[this].mode == FRAME_DETECT {
        let (req, resp) = if request && state.dirs[this].have == 4 {
            detect_after_size(source, ret, &mut state.dirs[this])
        } else if request && ret == 4 {
            // A Kafka broker (the JVM's `NetworkReceive`) reads a request's size alone, then
            // the rest: the size is kept, and the next read decides (this one is captured by
            // prefix, which the decoder reads the same way).
            keep_size(source, &mut state.dirs[this]);
            return false;
        } else if request {
            detect(source, ret)
        } else {
            // The server spoke first: an HTTP/2 server's SETTINGS (gRPC servers do not wait
            // for the client's preface), else not a protocol framed here.
            detect_server_first(source, ret)
        };
        let (req, resp) = if req == FRAME_TLS {
            // Muted at once rather than a drain later (userspace mutes it too), so that a
            // library on memory BIOs is followed from its first request (`tls.rs`).
            let _ = MUTED.insert(&conn_id, &MUTED_CIPHER, BPF_NOEXIST);
            (FRAME_OFF, FRAME_OFF)
        } else {
            (req, resp)
        };
        let (mine, theirs) = if request { (req, resp) } else { (resp, req) };
        state.dirs[this].mode = mine;
        state.dirs[other].mode = theirs;
    }
    if state.dirs[this].mode == FRAME_OFF {
        return false;
    }
    // A syscall wholly inside a body that it does not finish sends no event: its bytes are
    // added to the next event's `frame_skipped`. Large bodies then cost events per message,
    // not per syscall (the syscall that ends the body sends one, with its time).
    let dir = &mut state.dirs[this];
    if dir.skip > ret && dir.head_left == 0 && dir.skipped as u64 + ret <= u32::MAX as u64 {
        dir.skip -= ret;
        dir.skipped += ret as u32;
        return true;
    }
    let Some(w) = WALK.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the per-CPU walk slot is ours for the duration of this program.
    let w = unsafe { &mut *w };
    // No user buffer (sendfile): fine while it only sends the rest of a body, whose bytes
    // are skipped anyway (nginx serving files: the head is written, the body sent from the
    // file).
    let dir = &state.dirs[this];
    let body_only = dir.skip >= ret && dir.head_left == 0;
    let source = match source {
        Source::None if body_only => Source::Flat(0),
        other => other,
    };
    if !locate_source(w, source, ret) {
        state.dirs[this].mode = FRAME_OFF;
        bump(Counter::FramingBound);
        return false;
    }
    // Field by field and word by word (`common::store`, `copy_words`): plain assignments here
    // became byte-at-a-time `memset`/`memmove` calls, ~400 ns per framed syscall.
    store(&mut w.ret, ret);
    store(&mut w.pos, 0);
    store(&mut w.cap, (config().capture_bytes as u64).min(MAX_HEAD));
    store(&mut w.fill, 0);
    store(&mut w.last_rec, NO_RECORD);
    store(&mut w.last_end, 0);
    store(&mut w.frame_start, 0);
    store(&mut w.events, 0);
    store(&mut w.run_count, 0);
    store(&mut w.run_len, 0);
    store(&mut w.run_offset, 0);
    store(&mut w.run_kind, 0);
    store(&mut w.response, !request as u8);
    store(&mut w.other_mode, NO_CHANGE);
    store(&mut w.lost, 0);
    store(&mut w.hdr_pos, 0);
    store(&mut w.http_open, 0);
    copy_words(&mut w.pipe, &state.http);
    store(&mut w.cap_pos, 0);
    store(&mut w.cap_left, 0);
    store(&mut w.win_start, 0);
    store(&mut w.win_len, 0);
    store(&mut w.kstart, 0);
    copy_words(&mut w.dir, &state.dirs[this]);
    // SAFETY: `step` has the callback signature; it reaches its state through per-CPU maps.
    unsafe {
        bpf_loop(
            MAX_FRAME_STEPS,
            step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    close_run(w, buf);
    if w.lost == 0 && (w.pos < w.ret || w.cap_left > 0) {
        w.lost = LOST_BOUND;
    }
    if w.lost != 0 {
        bump(if w.lost == LOST_HEADER {
            Counter::FramingLost
        } else {
            Counter::FramingBound
        });
        let seq = w.dir.seq;
        let skipped = w.dir.skipped;
        // SAFETY: all zeros is a valid `FrameDir`.
        unsafe { zero_words(&mut w.dir) };
        w.dir.mode = FRAME_OFF;
        w.dir.seq = seq;
        w.dir.skipped = skipped;
    }
    flush(w, buf, ret);
    copy_words(&mut state.dirs[this], &w.dir);
    copy_words(&mut state.http, &w.pipe);
    if w.other_mode != NO_CHANGE {
        state.dirs[other].mode = w.other_mode;
    }
    true
}

/// The framing a connection's first request bytes call for: (request side, response side).
#[inline(always)]
fn detect(source: Source, ret: u64) -> (u8, u8) {
    let Some((ptr, first_len)) = first_bytes(source, ret) else {
        return (FRAME_OFF, FRAME_OFF);
    };
    // Every start-up packet and Kafka request has at least 8 bytes (an SSLRequest exactly 8).
    if first_len < 8 {
        return (FRAME_OFF, FRAME_OFF);
    }
    // SAFETY: reading user memory through the helper.
    let Ok(b) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 8]) }) else {
        return (FRAME_OFF, FRAME_OFF);
    };
    if &b == b"PRI * HT" {
        return (FRAME_H2_PREFACE, FRAME_H2);
    }
    if super::tls::is_client_hello_start(&b) {
        // Encrypted from here on (its first bytes would pass for a Kafka header).
        return (FRAME_TLS, FRAME_TLS);
    }
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if http::is_request_start(len) {
        return (FRAME_HTTP, FRAME_HTTP);
    }
    length_prefixed(&b, first_len, ptr + 8)
}

/// A PostgreSQL start-up packet or a Kafka request header in a connection's first 8 bytes
/// (`first_len` of them readable in a row, the 9th at `next`).
#[inline(always)]
fn length_prefixed(b: &[u8; 8], first_len: u64, next: u64) -> (u8, u8) {
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let code = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let pg_code = match code {
        PG_SSL_REQUEST | PG_GSSENC_REQUEST | PG_CANCEL_REQUEST => len == 8 || len == 16,
        // Protocol 3.x, then a parameter name (a Kafka Metadata v0 header has the same first
        // 8 bytes, followed by a correlation id).
        _ if code >> 16 == 3 && first_len > 8 => {
            // SAFETY: reading user memory through the helper.
            let next = unsafe { bpf_probe_read_user(next as *const u8) }.unwrap_or(0);
            next.is_ascii_lowercase()
        }
        _ => false,
    };
    if (8..=PG_MAX_STARTUP).contains(&len) && pg_code {
        return (FRAME_PG_STARTUP, FRAME_PG);
    }
    if code >> 16 == 3 && first_len == 8 {
        // Protocol 3.x without the next byte: PostgreSQL or Kafka Metadata v0, undecided.
        return (FRAME_OFF, FRAME_OFF);
    }
    let api_key = u16::from_be_bytes([b[4], b[5]]);
    let api_version = u16::from_be_bytes([b[6], b[7]]);
    if (8..=MAX_MESSAGE as u32).contains(&len) && api_key < 100 && api_version < 40 {
        return (FRAME_KAFKA, FRAME_KAFKA);
    }
    (FRAME_OFF, FRAME_OFF)
}

/// Where a syscall's first bytes are in user memory, and how many follow there.
#[inline(always)]
fn first_bytes(source: Source, ret: u64) -> Option<(u64, u64)> {
    match source {
        Source::Flat(ptr) => Some((ptr, ret)),
        Source::Iovec(iov, cnt) if cnt > 0 => {
            // SAFETY: reading user memory through the helper.
            match unsafe { bpf_probe_read_user(iov as *const Iovec) } {
                Ok(first) => Some((first.base, first.len.min(ret))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Keeps a first request read of 4 bytes (a Kafka request's size) in `dir.hdr`.
#[inline(always)]
fn keep_size(source: Source, dir: &mut FrameDir) {
    let Some((ptr, 4..)) = first_bytes(source, 4) else {
        return;
    };
    // SAFETY: reading user memory through the helper.
    if let Ok(b) = unsafe { bpf_probe_read_user(ptr as *const [u8; 4]) } {
        dir.hdr[0] = b[0];
        dir.hdr[1] = b[1];
        dir.hdr[2] = b[2];
        dir.hdr[3] = b[3];
        dir.have = 4;
    }
}

/// The framing the read after a kept size calls for, from the size and this read's first
/// bytes, as [`detect`] decides for length-prefixed protocols (a Kafka request, or a
/// PostgreSQL start-up packet whose reader took its length first); the header then carries
/// on from the size (`dir.have` stays 4).
#[inline(always)]
fn detect_after_size(source: Source, ret: u64, dir: &mut FrameDir) -> (u8, u8) {
    let h = dir.hdr;
    let found = match first_bytes(source, ret) {
        // SAFETY: reading user memory through the helper.
        Some((ptr, first_len @ 4..)) => match unsafe { bpf_probe_read_user(ptr as *const [u8; 4]) }
        {
            Ok(b) => {
                let head = [h[0], h[1], h[2], h[3], b[0], b[1], b[2], b[3]];
                length_prefixed(&head, first_len + 4, ptr + 4)
            }
            _ => (FRAME_OFF, FRAME_OFF),
        },
        _ => (FRAME_OFF, FRAME_OFF),
    };
    if found.0 == FRAME_OFF {
        dir.have = 0;
    }
    found
}

/// The framing a server's first bytes call for: HTTP/2 when they are a SETTINGS frame on
/// stream 0 without flags, of whole settings (`00 00 LL 04 00 00 00 00`).
#[inline(always)]
fn detect_server_first(source: Source, ret: u64) -> (u8, u8) {
    let ptr = match source {
        Source::Flat(ptr) => ptr,
        Source::Iovec(iov, cnt) if cnt > 0 => {
            // SAFETY: reading user memory through the helper.
            match unsafe { bpf_probe_read_user(iov as *const Iovec) } {
                Ok(first) if first.len >= 8 => first.base,
                _ => return (FRAME_OFF, FRAME_OFF),
            }
        }
        _ => return (FRAME_OFF, FRAME_OFF),
    };
    if ret < 9 {
        return (FRAME_OFF, FRAME_OFF);
    }
    // SAFETY: reading user memory through the helper.
    let Ok(b) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 8]) }) else {
        return (FRAME_OFF, FRAME_OFF);
    };
    let settings = b[0] == 0 && b[2] % 6 == 0 && b[3] == 4 && b[4..8] == [0, 0, 0, 0];
    if b[1] == 0 && settings {
        (FRAME_H2_PREFACE, FRAME_H2)
    } else {
        (FRAME_OFF, FRAME_OFF)
    }
}

/// Fills the walk's iovec table; false when there is no user buffer.
#[inline(always)]
fn locate_source(w: &mut Walk, source: Source, ret: u64) -> bool {
    match source {
        Source::Flat(ptr) => {
            w.bases[0] = ptr;
            w.ends[0] = ret;
            let mut i = 1;
            while i < MAX_IOVECS {
                w.ends[i] = ret;
                w.bases[i] = 0;
                i += 1;
            }
            store(&mut w.first, 0);
            store(&mut w.table_start, 0);
            store(&mut w.iov, 0);
            store(&mut w.iov_count, 0);
            true
        }
        Source::Iovec(iov, cnt) => {
            w.iov = iov;
            w.iov_count = cnt;
            fill_table(w, 0, 0);
            true
        }
        Source::None => false,
    }
}

/// Reads `MAX_IOVECS` iovecs from number `first`, the first starting at byte `start`.
#[inline(always)]
fn fill_table(w: &mut Walk, first: u64, start: u64) {
    store(&mut w.first, first);
    store(&mut w.table_start, start);
    let mut end = start;
    let mut i = 0;
    while i < MAX_IOVECS {
        w.bases[i] = 0;
        let n = first + i as u64;
        if n < w.iov_count {
            // SAFETY: reading user memory through the helper.
            if let Ok(v) = unsafe { bpf_probe_read_user((w.iov + n * 16) as *const Iovec) } {
                w.bases[i] = v.base;
                end += v.len;
            }
        }
        w.ends[i] = end;
        i += 1;
    }
}

/// The user address of byte `pos` of the syscall and how many contiguous bytes follow it
/// there; None outside the iovec window (see [`slide`]).
#[inline(always)]
fn locate(w: &Walk, pos: u64) -> Option<(u64, u64)> {
    in_table(w, pos)
}

/// Slides the iovec window one iovec forward when the walk's next byte is past it. One slide
/// (one user read) is one step of the walk: the verifier sees a single read here, and
/// `MAX_FRAME_STEPS` bounds the slides with the rest. True when it slid (or framing was lost:
/// no more iovecs, or an unreadable one).
#[inline(always)]
fn slide(w: &mut Walk) -> bool {
    let at = if w.cap_left > 0 { w.cap_pos } else { w.pos };
    if at >= w.ret || at < w.ends[MAX_IOVECS - 1] {
        return false;
    }
    let next = w.first + MAX_IOVECS as u64;
    if next >= w.iov_count {
        w.lost = LOST_BOUND;
        return true;
    }
    // SAFETY: reading user memory through the helper.
    let Ok(v) = (unsafe { bpf_probe_read_user((w.iov + next * 16) as *const Iovec) }) else {
        w.lost = LOST_BOUND;
        return true;
    };
    w.table_start = w.ends[0];
    let mut i = 0;
    while i < MAX_IOVECS - 1 {
        w.bases[i] = w.bases[i + 1];
        w.ends[i] = w.ends[i + 1];
        i += 1;
    }
    w.bases[MAX_IOVECS - 1] = v.base;
    w.ends[MAX_IOVECS - 1] = w.ends[MAX_IOVECS - 2] + v.len;
    w.first += 1;
    true
}

#[inline(always)]
fn in_table(w: &Walk, pos: u64) -> Option<(u64, u64)> {
    if pos < w.table_start {
        return None;
    }
    let mut start = w.table_start;
    let mut i = 0;
    while i < MAX_IOVECS {
        let end = w.ends[i];
        if pos < end {
            return Some((w.bases[i] + (pos - start), end - pos));
        }
        start = end;
        i += 1;
    }
    None
}

/// One step of the walk: one piece of a capture (one copy from user memory), or one piece of
/// a header, or a body skipped by length. Doing one copy per step keeps what the verifier must
/// explore per step small. Returns 1 to stop the loop.
extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU slots, ours for the duration of the program.
    let (w, buf) = unsafe { (&mut *w, &mut *buf) };
    if w.lost != 0 {
        return 1;
    }
    // HTTP/1 text is scanned without sliding the iovec window (its writers pass few iovecs,
    // and the scan's states through a slide took the raw-tracepoint program past the
    // verifier's million instructions on 6.18).
    if w.dir.mode != FRAME_HTTP && slide(w) {
        return 0;
    }
    if w.cap_left > 0 {
        capture_piece(w, buf);
        return 0;
    }
    if w.pos >= w.ret {
        return 1;
    }
    if w.dir.mode == FRAME_OFF {
        // The conversation turned to TLS: the rest is not captured, and not framing lost.
        w.pos = w.ret;
        return 1;
    }
    if w.dir.mode == FRAME_KAFKA && kafka::walking(w) {
        return kafka::step(w, buf);
    }
    let left = w.ret - w.pos;
    if w.dir.skip > 0 {
        // The rest of a body that began in an earlier syscall: the rest of its head is
        // captured, the remainder skipped.
        let n = w.dir.skip.min(left);
        let head = (w.dir.head_left as u64).min(n);
        if head > 0 {
            close_run(w, buf);
            w.cap_pos = w.pos;
            w.cap_left = head;
            w.dir.head_left -= head as u32;
        }
        w.dir.skip -= n;
        w.pos += n;
        return 0;
    }
    if w.dir.mode == FRAME_HTTP {
        return http::step(w);
    }
    if w.dir.mode == FRAME_PG && w.dir.have == 0 && extend_run(w) {
        return 0;
    }
    let size = header_size(w.dir.mode, w.response != 0);
    let have = (w.dir.have as u64) & 15;
    if have >= size {
        w.lost = LOST_HEADER;
        return 1;
    }
    if have == 0 || w.hdr_pos > w.pos {
        w.hdr_pos = w.pos;
    }
    // One piece of the header (a header may straddle iovecs or syscalls), from the
    // read-ahead window, refilled here when the header is not in it.
    // At most 8 bytes a step (an HTTP/2 header, 9 bytes, takes two).
    let mut n = (size - have).min(left).min(8);
    if w.pos < w.win_start || w.pos + n > w.win_start + w.win_len {
        if !refill_window(w, left) {
            return 1;
        }
        n = n.min(w.win_len);
    }
    let from = w.pos - w.win_start;
    let mut i = 0u64;
    while i < 8 {
        if i < n {
            w.dir.hdr[((have + i) & 15) as usize] = w.win[((from + i) & WINDOW_MASK) as usize];
        }
        i += 1;
    }
    w.pos += n;
    w.dir.have = (have + n) as u8;
    if have + n < size {
        if w.pos >= w.ret {
            // The header continues in the next syscall: deliver what is here, keep it.
            close_run(w, buf);
            w.cap_pos = w.hdr_pos;
            w.cap_left = w.pos - w.hdr_pos;
        }
        return 0;
    }
    // A whole header: `seen` of its bytes are in this syscall, from `hdr_pos`.
    let seen = w.pos - w.hdr_pos;
    let whole = seen == size;
    w.dir.have = 0;
    let (total, runnable, kind) = parse(w);
    if total < size {
        w.lost = LOST_HEADER;
        return 1;
    }
    if w.dir.mode == FRAME_KAFKA && kafka::walking(w) {
        // A Fetch response: its header is captured, its fields walked from the next step.
        close_run(w, buf);
        w.cap_pos = w.hdr_pos;
        w.cap_left = seen;
        w.kstart = w.pos;
        return 0;
    }
    let body = total - size;
    if whole && runnable && body <= w.ret - w.pos {
        w.pos -= size;
        add_run(w, buf, total, kind);
        w.pos += total;
        return 0;
    }
    close_run(w, buf);
    // An HTTP/2 DATA frame's payload is only counted (its header says how long it is); a
    // header block is captured whole up to `H2_MAX_BLOCK` whatever the capture limit, since
    // HPACK cannot skip one (it may fill several events).
    let h2 = w.dir.mode == FRAME_H2;
    let head = if runnable || (h2 && kind == H2_DATA) {
        0
    } else if h2 && (kind == H2_HEADERS || kind == H2_PUSH_PROMISE || kind == H2_CONTINUATION) {
        total.min(H2_MAX_BLOCK).saturating_sub(size)
    } else {
        total.min(w.cap).saturating_sub(size)
    };
    // The header and the head of the body that are in this syscall are captured (from the
    // next step on); the rest of the head is captured from the next syscall's first bytes.
    let here = head.min(w.ret - w.pos);
    w.cap_pos = w.hdr_pos;
    w.cap_left = seen + here;
    w.pos += here;
    w.dir.head_left = (head - here) as u32;
    w.dir.skip = body - here;
    0
}

/// Makes the read-ahead window hold byte `w.pos` on (up to `WINDOW` bytes, `left` at most),
/// reading it again only when it does not. False (framing lost) when it cannot be read.
#[inline(always)]
fn fill_window(w: &mut Walk, left: u64) -> bool {
    if w.pos >= w.win_start && w.pos < w.win_start + w.win_len {
        return true;
    }
    refill_window(w, left)
}

/// Reads the read-ahead window from `w.pos`.
#[inline(always)]
fn refill_window(w: &mut Walk, left: u64) -> bool {
    let Some((addr, avail)) = locate(w, w.pos) else {
        w.lost = LOST_BOUND;
        return false;
    };
    let fill = (WINDOW as u64).min(avail).min(left);
    if fill == 0 {
        w.lost = LOST_BOUND;
        return false;
    }
    let m = ((fill - 1) & WINDOW_MASK) + 1;
    // SAFETY: m ≤ WINDOW, the window's size.
    let rc = unsafe {
        probe_read_user_raw(
            w.win.as_mut_ptr() as *mut c_void,
            m as u32,
            addr as *const c_void,
        )
    };
    if rc != 0 {
        w.lost = LOST_BOUND;
        return false;
    }
    w.win_start = w.pos;
    w.win_len = m;
    true
}

/// The fast path for result rows: while the next PostgreSQL message is whole in the syscall,
/// its header in the read-ahead window, and of the open run's type right after it, it joins
/// the run with no helper call. Returns whether any did (else the general step runs).
#[inline(always)]
fn extend_run(w: &mut Walk) -> bool {
    let mut joined = 0u32;
    while joined < FAST_ROWS {
        if w.run_count == 0 || w.run_offset + w.run_len != w.pos || w.pos < w.win_start {
            break;
        }
        let from = w.pos - w.win_start;
        if from + 5 > w.win_len {
            break;
        }
        let at = |i: u64| w.win[((from + i) & WINDOW_MASK) as usize];
        let ty = at(0);
        let len = u32::from_be_bytes([at(1), at(2), at(3), at(4)]) as u64;
        let total = len + 1;
        if ty != w.run_kind || !(4..=MAX_MESSAGE).contains(&len) || total > w.ret - w.pos {
            break;
        }
        w.run_count += 1;
        w.run_len += total;
        w.pos += total;
        joined += 1;
    }
    joined > 0
}

/// Copies the next piece of the pending capture (`cap_pos`, `cap_left`) into the event:
/// extends the previous record when it follows it, else opens a record; sends the event and
/// starts the next one when this one is full.
#[inline(always)]
fn capture_piece(w: &mut Walk, buf: &mut EventBuf) {
    let pos = w.cap_pos;
    let extend = w.last_rec != NO_RECORD && w.last_end == pos;
    let overhead = if extend { 0 } else { FRAME_RECORD_LEN as u64 };
    if w.fill + overhead >= FRAME_EVENT_BUDGET as u64 {
        flush(w, buf, pos);
        return;
    }
    let room = FRAME_EVENT_BUDGET as u64 - w.fill - overhead;
    let Some((addr, avail)) = locate(w, pos) else {
        w.lost = LOST_BOUND;
        return;
    };
    let want = w.cap_left.min(room).min(avail);
    if want == 0 {
        w.lost = LOST_BOUND;
        return;
    }
    if !extend {
        w.last_rec = w.fill;
        put_record(
            w,
            buf,
            FrameRecord {
                offset: pos as u32,
                len: 0,
                count: 0,
                kind: 0,
                _pad: [0; 3],
            },
        );
    }
    // fill < FRAME_EVENT_BUDGET = MAX_CAPTURE and want ≤ MAX_CAPTURE: the masks restate that
    // for the verifier.
    let at = w.fill & MASK;
    let m = ((want - 1) & MASK) + 1;
    let dst = buf.payload.as_mut_ptr().wrapping_add(at as usize) as *mut c_void;
    // Bytes already in the read-ahead window (HTTP heads, most headers) are copied from it:
    // a read of kernel memory skips the checks a read of user memory makes of its
    // destination (hardened usercopy), ~3% of a framed exchange's CPU in a profile.
    let rc = if pos >= w.win_start && pos + m <= w.win_start + w.win_len {
        let from = (pos - w.win_start) & WINDOW_MASK;
        // SAFETY: at + m < 2 * MAX_CAPTURE, the payload's length; the source lies in the
        // window's filled part.
        unsafe {
            probe_read_kernel_raw(
                dst,
                m as u32,
                w.win.as_ptr().wrapping_add(from as usize) as *const c_void,
            )
        }
    } else {
        // SAFETY: at + m < 2 * MAX_CAPTURE, the payload's length.
        unsafe { probe_read_user_raw(dst, m as u32, addr as *const c_void) }
    };
    if rc != 0 {
        w.lost = LOST_BOUND;
        return;
    }
    // The record's `len` field (offset 4) grows by what was copied.
    let len_at = ((w.last_rec & MASK) + 4) as usize;
    // SAFETY: len_at + 4 ≤ MAX_CAPTURE + 7, inside the payload.
    unsafe {
        let field = buf.payload.as_mut_ptr().add(len_at) as *mut u32;
        core::ptr::write_unaligned(field, core::ptr::read_unaligned(field) + m as u32);
    }
    w.fill += m;
    w.last_end = pos + m;
    w.cap_pos = pos + m;
    w.cap_left -= m;
}

#[inline(always)]
fn header_size(mode: u8, response: bool) -> u64 {
    match mode {
        // Length and correlation id; a request's api key and version between them.
        FRAME_KAFKA if response => 8,
        FRAME_KAFKA => 12,
        FRAME_PG => 5,
        FRAME_PG_STARTUP => 8,
        FRAME_PG_ANSWER => 1,
        FRAME_H2_PREFACE => 8,
        FRAME_H2 | FRAME_H2_UPGRADE => 9,
        _ => 4,
    }
}

/// The message whose header is in `dir.hdr`: (total length with the header, whether it is a
/// run candidate, its type). A total below the header size means the header is not this
/// protocol's. Start-up packets and the SSL answer may change modes.
#[inline(always)]
fn parse(w: &mut Walk) -> (u64, bool, u8) {
    let h = w.dir.hdr;
    match w.dir.mode {
        FRAME_PG => {
            let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as u64;
            if !(4..=MAX_MESSAGE).contains(&len) {
                return (0, false, 0);
            }
            let ty = h[0];
            let runnable = (ty == b'D' && w.response != 0) || ty == b'd';
            (len + 1, runnable, ty)
        }
        FRAME_PG_STARTUP => {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            let code = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            if !(8..=PG_MAX_STARTUP).contains(&len) {
                return (0, false, 0);
            }
            match code {
                PG_SSL_REQUEST | PG_GSSENC_REQUEST => w.other_mode = FRAME_PG_ANSWER,
                PG_CANCEL_REQUEST => {}
                _ if code >> 16 == 3 => w.dir.mode = FRAME_PG,
                _ => return (0, false, 0),
            }
            (len as u64, false, 0)
        }
        FRAME_PG_ANSWER => match h[0] {
            b'N' => {
                w.dir.mode = FRAME_PG;
                (1, false, 0)
            }
            b'S' | b'G' => {
                // Encrypted from here on: both directions stop being framed.
                w.dir.mode = FRAME_OFF;
                w.other_mode = FRAME_OFF;
                (1, false, 0)
            }
            _ => (0, false, 0),
        },
        FRAME_KAFKA => {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
            if len == 0 || len > MAX_MESSAGE {
                return (0, false, 0);
            }
            if w.response == 0 {
                kafka::request(w, len);
            } else {
                kafka::response(w, len);
            }
            (len + 4, false, 0)
        }
        FRAME_H2_PREFACE => {
            if h[..8] != *b"PRI * HT" {
                // Not HTTP/2 after all (a WebSocket after its 101): its header is captured,
                // and the rest is not framed.
                w.dir.mode = FRAME_OFF;
                return (8, false, 0);
            }
            w.dir.mode = FRAME_H2;
            (24, false, H2_PREFACE_KIND)
        }
        FRAME_H2_UPGRADE => {
            // Flags and stream id zero, without a temporary array (Linux 6.1 counts every
            // stack byte of the caller and this callback together against 512).
            let zero = h[4] | h[5] | h[6] | h[7] | h[8];
            w.dir.mode = if h[3] == H2_SETTINGS && zero == 0 {
                FRAME_H2
            } else {
                FRAME_OFF
            };
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as u64;
            (
                if w.dir.mode == FRAME_H2 { len + 9 } else { 9 },
                false,
                h[3],
            )
        }
        FRAME_H2 => {
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as u64;
            (len + 9, false, h[3])
        }
        _ => (0, false, 0),
    }
}

/// Counts a whole uncaptured message at `w.pos` into the open run, or starts one.
#[inline(always)]
fn add_run(w: &mut Walk, buf: &mut EventBuf, total: u64, kind: u8) {
    if w.run_count > 0 && (w.run_kind != kind || w.run_offset + w.run_len != w.pos) {
        close_run(w, buf);
    }
    if w.run_count == 0 {
        w.run_offset = w.pos;
        w.run_len = 0;
        w.run_kind = kind;
    }
    w.run_count += 1;
    w.run_len += total;
}

/// Writes the open run as a record.
#[inline(always)]
fn close_run(w: &mut Walk, buf: &mut EventBuf) {
    // A Kafka `records` run may count no record (the part of a batch in this syscall).
    if w.run_count == 0 && w.run_len == 0 {
        return;
    }
    if w.fill + FRAME_RECORD_LEN as u64 > FRAME_EVENT_BUDGET as u64 {
        let at = w.run_offset;
        flush(w, buf, at);
    }
    let record = FrameRecord {
        offset: w.run_offset as u32,
        len: w.run_len as u32,
        // Saturated: a Kafka `records` run sums what its batches claim (up to 2^31 - 1
        // each, whatever a peer sends).
        count: w.run_count.min(u32::MAX as u64) as u32,
        kind: w.run_kind,
        _pad: [0; 3],
    };
    put_record(w, buf, record);
    w.last_rec = NO_RECORD;
    store(&mut w.run_count, 0);
    store(&mut w.run_len, 0);
}

#[inline(always)]
fn put_record(w: &mut Walk, buf: &mut EventBuf, record: FrameRecord) {
    let at = w.fill & MASK;
    // Four 32-bit stores (the type byte and its padding as one): storing the struct would
    // zero the padding with a call to `memset`, a BPF subprogram whose frame the call chain
    // of callbacks cannot spare (512 bytes of stack in all on Linux 6.1, each frame rounded up
    // to 32).
    let words = [record.offset, record.len, record.count, record.kind as u32];
    let mut i = 0;
    while i < 4 {
        // SAFETY: at < MAX_CAPTURE and the record is 16 bytes, inside the 2 * MAX_CAPTURE
        // payload.
        unsafe {
            core::ptr::write_unaligned(
                buf.payload.as_mut_ptr().add(at as usize + 4 * i) as *mut u32,
                words[i],
            )
        };
        i += 1;
    }
    w.fill += FRAME_RECORD_LEN as u64;
}

/// Sends the event assembled so far as the part of the syscall up to `end`, and starts the
/// next one there.
#[inline(always)]
fn flush(w: &mut Walk, buf: &mut EventBuf, end: u64) {
    buf.header.frame_skipped = w.dir.skipped;
    w.dir.skipped = 0;
    buf.header.frame_start = w.frame_start as u32;
    buf.header.frame_end = end as u32;
    buf.header.frame_seq = w.dir.seq;
    w.dir.seq = w.dir.seq.wrapping_add(1);
    submit(buf, w.fill);
    w.events += 1;
    if w.events >= MAX_FRAME_EVENTS as u64 {
        w.lost = LOST_BOUND;
    }
    w.fill = 0;
    w.last_rec = NO_RECORD;
    w.frame_start = end;
}
