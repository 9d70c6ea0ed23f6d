//! The walk of Kafka Fetch responses and Produce requests, so that their records are counted
//! at any size.
//!
//! A Fetch response or a Produce request of several MiB holds, per topic and partition, a
//! `records` field of record batches; the head of the message shows only the first. A Produce
//! request is walked from its header on. For Fetch, the request side remembers each Fetch
//! request's correlation id and version (`KafkaPipe`, eight in flight per connection), and the
//! response that answers one is walked. The walk goes field by field, by the version's schema
//! (fixed fields, strings, arrays, and in flexible versions, uvarints and tagged fields), as
//! the decoder reads it (`agent/src/protocol/kafka/body.rs`):
//! - everything outside `records` fields is captured (a few dozen bytes per partition);
//! - each `records` field becomes a run (`RUN_KAFKA_RECORDS`), one per syscall it spans, whose
//!   count is the `recordsCount` of the magic v2 batches (one per legacy message) that end
//!   inside the field: the batch headers are read, the records skipped by `batchLength`. A
//!   partial batch at the end of the field (brokers may send one; clients drop it) counts
//!   nothing.
//!
//! Fields may be split at any byte across syscalls or iovecs: a value being read carries over
//! in `KafkaScan::acc`. A response that ends before its schema does just ends the walk (the
//! decoder notices); one that goes on after it has the rest captured as a message head. A
//! record batch of an unknown magic, a length that is negative or past its field, gives
//! framing up for the direction (`LOST_HEADER`, counted).

use agent_ebpf::{KafkaScan, KAFKA_WALK_FETCH, KAFKA_WALK_PRODUCE, RUN_KAFKA_RECORDS};

use crate::common::store;

use super::{close_run, EventBuf, Walk, LOST_HEADER, WINDOW_MASK};

/// Fetch's API key, and the newest version whose response schema is known; the same for
/// Produce's requests (flexible from v9).
const FETCH: u16 = 1;
const MAX_VERSION: u16 = 17;
const PRODUCE: u16 = 0;
const MAX_PRODUCE_VERSION: u16 = 13;

/// Phases of the walk (`KafkaScan::phase`); 0 is "not walking". A Produce request starts at
/// `CLIENT_ID`, a Fetch response at `TOP` (or its header's tagged fields).
const CLIENT_ID: u8 = 1;
const TRANSACTION: u8 = 18;
const TOP: u8 = 2;
const TOPICS: u8 = 3;
const TOPIC: u8 = 4;
const PARTITIONS: u8 = 5;
const PARTITION: u8 = 6;
const ABORTED: u8 = 7;
const ABORTED_ONE: u8 = 8;
const ABORTED_NEXT: u8 = 9;
const PREFERRED: u8 = 10;
const RECORDS_LEN: u8 = 11;
const PARTITION_END: u8 = 12;
const PARTITION_NEXT: u8 = 13;
const TOPIC_END: u8 = 14;
const TOPIC_NEXT: u8 = 15;
const END: u8 = 16;
const DONE: u8 = 17;
/// A tagged-field section: count, then per field its tag and size (`KafkaScan::after` next).
const TAGS: u8 = 20;
const TAG: u8 = 21;
const TAG_SIZE: u8 = 22;
const TAG_NEXT: u8 = 23;
/// Inside a `records` field (every phase from here on): the next batch, its `batchLength`,
/// its `magic`, its `recordsCount`.
const BATCH: u8 = 30;
const BATCH_LEN: u8 = 31;
const MAGIC: u8 = 32;
const COUNT: u8 = 33;

/// A record batch up to `recordsCount`, after `baseOffset` and `batchLength` (12 bytes):
/// `magic` is at 4 of the rest, `recordsCount` at 45..49.
const BATCH_AFTER_LEN: u32 = 49;
const MAGIC_AT: u32 = 4;
const COUNT_AT: u32 = 45;

/// The request header was read (length, api key, version, correlation id in `hdr`): a
/// Produce request is walked, a Fetch remembered for its response. `len` is the request's
/// length field.
#[inline(always)]
pub fn request(w: &mut Walk, len: u64) {
    let h = w.dir.hdr;
    let api_key = u16::from_be_bytes([h[4], h[5]]);
    let version = u16::from_be_bytes([h[6], h[7]]);
    if api_key == PRODUCE && version <= MAX_PRODUCE_VERSION && len > 8 {
        let k = w.dir.kafka_scan();
        store(&mut k.left, (len - 8) as u32);
        store(&mut k.version, version as u8);
        store(&mut k.api, KAFKA_WALK_PRODUCE);
        store(&mut k.skip, 0);
        store(&mut k.acc, 0);
        store(&mut k.have, 0);
        store(&mut k.phase, CLIENT_ID);
        return;
    }
    if api_key != FETCH || version > MAX_VERSION {
        return;
    }
    let correlation = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    let pipe = w.pipe.kafka_pipe();
    // A free slot, else the oldest is overwritten (slots are taken in turn).
    let mut at = usize::MAX;
    let mut i = 0;
    while i < pipe.version.len() {
        if pipe.version[i] == 0 && at == usize::MAX {
            at = i;
        }
        i += 1;
    }
    if at == usize::MAX {
        at = (correlation as usize) & (pipe.version.len() - 1);
    }
    if at < pipe.version.len() {
        store(&mut pipe.correlation[at], correlation);
        store(&mut pipe.version[at], version as u8 + 1);
    }
}

/// The response header was read (length and correlation id in `hdr`): the answer to a Fetch
/// is walked. `len` is the response's length field.
#[inline(always)]
pub fn response(w: &mut Walk, len: u64) {
    let h = w.dir.hdr;
    let correlation = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let pipe = w.pipe.kafka_pipe();
    let mut version = 0u8;
    let mut i = 0;
    while i < pipe.version.len() {
        if pipe.version[i] != 0 && pipe.correlation[i] == correlation {
            version = pipe.version[i];
            pipe.version[i] = 0;
        }
        i += 1;
    }
    if version == 0 || len <= 4 {
        return;
    }
    // Field by field (`store`): neighbouring stores became a call to `memset`.
    let k = w.dir.kafka_scan();
    store(&mut k.left, (len - 4) as u32);
    store(&mut k.version, version - 1);
    store(&mut k.api, KAFKA_WALK_FETCH);
    store(&mut k.skip, 0);
    store(&mut k.acc, 0);
    store(&mut k.have, 0);
    store(&mut k.phase, if version > 12 { TAGS } else { TOP });
    store(&mut k.after, TOP);
}

/// Whether a Fetch response is being walked.
#[inline(always)]
pub fn walking(w: &mut Walk) -> bool {
    w.dir.kafka_scan().phase != 0
}

/// `field`'s answer for phases that read nothing.
const NO_FIELD: u8 = 0xff;
/// `field`'s width of an unsigned varint.
const VARINT: u8 = 0;

/// Whether the message's version is a flexible one (compact lengths, tagged fields).
#[inline(always)]
fn flexible(k: &KafkaScan) -> bool {
    k.version >= if k.api == KAFKA_WALK_PRODUCE { 9 } else { 12 }
}

/// What the phase reads: its width (`VARINT`, 1, 2 or 4 bytes, `NO_FIELD`), and whether it
/// is a length or count (null reads as 0, compact in flexible versions when `compact`).
#[inline(always)]
fn field(phase: u8, version: u8, flex: bool) -> (u8, bool, bool) {
    match phase {
        TAGS | TAG | TAG_SIZE => (VARINT, false, false),
        TOPICS | PARTITIONS | ABORTED | RECORDS_LEN => (4, true, flex),
        TOPIC if version < 13 => (2, true, flex),
        // The request header's client id is never compact.
        CLIENT_ID => (2, true, false),
        TRANSACTION if version >= 3 => (2, true, flex),
        BATCH_LEN | COUNT => (4, false, false),
        MAGIC => (1, false, false),
        _ => (NO_FIELD, false, false),
    }
}

/// One step of the walk: the rest of a field to pass over, then at most one field read, then
/// what the phase does with it. (One place reads: each inlined copy of the read multiplied
/// what the verifier walks.) Returns 1 to stop the loop.
#[inline(always)]
pub fn step(w: &mut Walk, buf: &mut EventBuf) -> i64 {
    let k = w.dir.kafka_scan();
    if k.left == 0 {
        end(w, buf);
        return 0;
    }
    if k.skip > 0 {
        let n = (k.skip as u64).min(w.ret - w.pos).min(k.left as u64);
        advance(w, n);
        let k = w.dir.kafka_scan();
        k.skip -= n as u32;
        if k.skip > 0 || k.left == 0 || w.pos >= w.ret {
            return settle(w, buf);
        }
    }
    let phase = w.dir.kafka_scan().phase;
    if (phase == BATCH || phase == BATCH_LEN) && batch_fast(w) {
        return settle(w, buf);
    }
    // Only the width stays live across the read (which may call a helper): what the phase
    // does with the value is worked out again after it, to spare the callback's stack
    // (Linux 6.1: 512 bytes for the program and its callback frames together).
    let k = w.dir.kafka_scan();
    let (width, _, compact) = field(k.phase, k.version, flexible(k));
    let mut raw = 0u32;
    if width != NO_FIELD {
        let width = w.opaque(if compact { VARINT } else { width } as u64) as u8;
        match read(w, width) {
            Some(v) => raw = v,
            None => return pause(w),
        }
    }
    let k = w.dir.kafka_scan();
    let produce = k.api == KAFKA_WALK_PRODUCE;
    let flex = flexible(k);
    let (width, length, compact) = field(k.phase, k.version, flex);
    let mut value = raw;
    if length && compact {
        value = raw.saturating_sub(1);
    } else if length {
        // -1 is null (read as 0); other negative lengths are not Kafka's.
        let null = if width == 2 { 0xffff } else { u32::MAX };
        if raw == null {
            value = 0;
        } else if raw > null >> 1 {
            return lose(w);
        }
    }
    let k = w.dir.kafka_scan();
    match k.phase {
        CLIENT_ID => {
            k.skip = value;
            k.phase = if flex { TAGS } else { TRANSACTION };
            k.after = TRANSACTION;
        }
        TRANSACTION => {
            // transactional_id (v3+), acks, timeout_ms
            k.skip = value.saturating_add(6);
            k.phase = TOPICS;
        }
        TAGS => {
            k.tags = value;
            k.phase = if value == 0 { k.after } else { TAG };
        }
        TAG => k.phase = TAG_SIZE,
        TAG_SIZE => {
            k.skip = value;
            k.phase = TAG_NEXT;
        }
        TAG_NEXT => {
            k.tags -= 1;
            k.phase = if k.tags == 0 { k.after } else { TAG };
        }
        TOP => {
            let v = k.version;
            k.skip = if v >= 7 {
                10
            } else if v >= 1 {
                4
            } else {
                0
            };
            k.phase = TOPICS;
        }
        TOPICS => {
            k.topics = value;
            k.phase = if value == 0 { END } else { TOPIC };
        }
        TOPIC => {
            // The topic id (v13+), or the name's bytes.
            k.skip = if k.version >= 13 { 16 } else { value };
            k.phase = PARTITIONS;
        }
        PARTITIONS => {
            k.partitions = value;
            k.phase = if value == 0 { TOPIC_END } else { PARTITION };
        }
        PARTITION if produce => {
            k.skip = 4; // partition_index
            k.phase = RECORDS_LEN;
        }
        PARTITION => {
            // partition_index, error_code, high_watermark[, last_stable_offset]
            // [, log_start_offset]
            let v = k.version;
            k.skip = 14 + if v >= 4 { 8 } else { 0 } + if v >= 5 { 8 } else { 0 };
            k.phase = if v >= 4 { ABORTED } else { PREFERRED };
        }
        ABORTED => {
            if flex {
                k.aborted = value;
                k.phase = if value == 0 { PREFERRED } else { ABORTED_ONE };
            } else if value > (1 << 24) {
                return lose(w);
            } else {
                // producer_id, first_offset
                k.skip = value * 16;
                k.phase = PREFERRED;
            }
        }
        ABORTED_ONE => {
            k.skip = 16;
            k.phase = TAGS;
            k.after = ABORTED_NEXT;
        }
        ABORTED_NEXT => {
            k.aborted -= 1;
            k.phase = if k.aborted == 0 {
                PREFERRED
            } else {
                ABORTED_ONE
            };
        }
        PREFERRED => {
            k.skip = if k.version >= 11 { 4 } else { 0 };
            k.phase = RECORDS_LEN;
        }
        RECORDS_LEN => {
            k.records = value;
            k.phase = if value == 0 { PARTITION_END } else { BATCH };
            // What came before the field is captured; the field is a run.
            capture(w);
        }
        PARTITION_END => {
            k.phase = if flex { TAGS } else { PARTITION_NEXT };
            k.after = PARTITION_NEXT;
        }
        PARTITION_NEXT => {
            k.partitions -= 1;
            k.phase = if k.partitions == 0 {
                TOPIC_END
            } else {
                PARTITION
            };
        }
        TOPIC_END => {
            k.phase = if flex { TAGS } else { TOPIC_NEXT };
            k.after = TOPIC_NEXT;
        }
        TOPIC_NEXT => {
            k.topics -= 1;
            k.phase = if k.topics == 0 { END } else { TOPIC };
        }
        END => {
            k.phase = if flex { TAGS } else { DONE };
            k.after = DONE;
        }
        BATCH => {
            if k.records == 0 {
                // The field ended.
                k.phase = PARTITION_END;
                close_run(w, buf);
                w.kstart = w.pos;
            } else if k.records < 12 + MAGIC_AT + 1 {
                // Too short for a batch or a legacy message: a partial one, not counted.
                k.skip = k.records;
            } else {
                k.skip = 8; // baseOffset
                k.phase = BATCH_LEN;
            }
        }
        BATCH_LEN => {
            if value > k.records {
                // A partial batch ends the field: passed over, not counted.
                k.skip = k.records;
                k.phase = BATCH;
            } else if value < MAGIC_AT + 1 {
                return lose(w);
            } else {
                k.batch = value;
                k.skip = MAGIC_AT;
                k.phase = MAGIC;
            }
        }
        MAGIC => {
            if value == 2 && k.batch >= BATCH_AFTER_LEN {
                k.skip = COUNT_AT - MAGIC_AT - 1;
                k.phase = COUNT;
            } else if value <= 1 {
                // A legacy message: one record.
                k.skip = k.batch - MAGIC_AT - 1;
                k.phase = BATCH;
                w.run_count += 1;
            } else {
                return lose(w);
            }
        }
        COUNT => {
            if value > i32::MAX as u32 {
                return lose(w);
            }
            k.skip = k.batch - BATCH_AFTER_LEN;
            k.phase = BATCH;
            w.run_count += value as u64;
        }
        _ => {
            // DONE: whatever follows the schema is captured as a message head would be.
            capture(w);
            let k = w.dir.kafka_scan();
            let rest = k.left as u64;
            store(&mut k.phase, 0);
            store(&mut k.left, 0);
            w.dir.skip = rest;
            w.dir.head_left = rest.min(w.cap) as u32;
            return 0;
        }
    }
    settle(w, buf)
}

/// After a step: at the end of the response the walk ends; at the end of the syscall the
/// structure read so far is captured. Returns 0 (the loop goes on).
#[inline(always)]
fn settle(w: &mut Walk, buf: &mut EventBuf) -> i64 {
    if w.dir.kafka_scan().left == 0 {
        end(w, buf);
        return 0;
    }
    pause(w)
}

/// The response ended (its length reached): what is left of the structure is captured, and
/// the next header is read.
#[inline(always)]
fn end(w: &mut Walk, buf: &mut EventBuf) {
    close_run(w, buf);
    capture(w);
    w.dir.kafka_scan().phase = 0;
}

/// The syscall (or the message) ended inside a field, or a field continues past the
/// readable window: the structure read so far is captured. Returns 0 (the walk goes on).
#[inline(always)]
fn pause(w: &mut Walk) -> i64 {
    if w.pos >= w.ret && w.dir.kafka_scan().phase < BATCH {
        capture(w);
    }
    0
}

/// Framing is given up for the direction (a batch that is not one).
#[inline(always)]
fn lose(w: &mut Walk) -> i64 {
    w.lost = LOST_HEADER;
    1
}

/// Captures the structure bytes walked since `kstart`.
#[inline(always)]
fn capture(w: &mut Walk) {
    if w.pos > w.kstart {
        w.cap_pos = w.kstart;
        w.cap_left = w.pos - w.kstart;
    }
    w.kstart = w.pos;
}

/// Moves the walk `n` bytes on; inside a `records` field they join the field's run.
#[inline(always)]
fn advance(w: &mut Walk, n: u64) {
    let k = w.dir.kafka_scan();
    k.left -= n as u32;
    if k.phase >= BATCH {
        k.records -= n as u32;
        if w.run_len == 0 {
            w.run_offset = w.pos;
            w.run_kind = RUN_KAFKA_RECORDS;
        }
        w.run_len += n;
        w.kstart = w.pos + n;
    }
    w.pos += n;
}

/// Reads the next bytes of a field into `KafkaScan::acc`: `width` big-endian bytes, or an
/// unsigned varint (`width` 0, at most 32 bits). The value once it is whole.
#[inline(always)]
fn read(w: &mut Walk, width: u8) -> Option<u32> {
    let avail = (w.ret - w.pos).min(w.dir.kafka_scan().left as u64);
    if avail == 0 || !super::fill_window(w, avail) {
        return None;
    }
    let from = w.pos - w.win_start;
    let n = (w.win_start + w.win_len - w.pos).min(avail).min(5);
    let k = w.dir.kafka_scan();
    let mut i = 0u64;
    let mut done = false;
    let mut bad = false;
    while i < 5 {
        if i >= n || done {
            break;
        }
        let c = w.win[((from + i) & WINDOW_MASK) as usize];
        if width > 0 {
            k.acc = (k.acc << 8) | c as u32;
            k.have += 1;
            done = k.have >= width;
        } else {
            let shift = 7 * (k.have as u32 & 7);
            if k.have >= 4 && c > 0x0f {
                bad = true;
                break;
            }
            k.acc |= ((c & 0x7f) as u32) << (shift & 31);
            k.have += 1;
            done = c & 0x80 == 0;
        }
        i += 1;
    }
    if bad {
        w.lost = LOST_HEADER;
        return None;
    }
    advance(w, i);
    if !done {
        return None;
    }
    let k = w.dir.kafka_scan();
    let value = k.acc;
    store(&mut k.acc, 0);
    store(&mut k.have, 0);
    Some(value)
}

/// A whole batch header in the syscall (at `pos`: from `baseOffset` in phase `BATCH`, from
/// `batchLength` in `BATCH_LEN`): read in this one step, from a read of at most `HEADER_READ`
/// bytes (batches are often kilobytes long: a full window per batch would copy mostly
/// records). False when it is not there (split, or the iovec ends first): the field-by-field
/// path reads it.
#[inline(always)]
fn batch_fast(w: &mut Walk) -> bool {
    const HEADER_READ: u64 = 128;
    let k = w.dir.kafka_scan();
    // From `batchLength`: it and the 49 bytes after it, up to `recordsCount`.
    let base = if k.phase == BATCH { 8u64 } else { 0 };
    let base = w.opaque(base) & 8;
    let need = base + 4 + BATCH_AFTER_LEN as u64;
    let k = w.dir.kafka_scan();
    if k.have != 0 || (k.records as u64) < need || (k.left as u64) < need {
        return false;
    }
    let avail = (w.ret - w.pos).min(k.left as u64);
    if avail < need || !super::fill_window(w, avail) {
        return false;
    }
    if w.win_start + w.win_len < w.pos + need
        && (!super::refill_window(w, avail.min(HEADER_READ)) || w.win_len < need)
    {
        return false;
    }
    let from = w.pos - w.win_start + base;
    let at = |i: u64| w.win[((from + i) & WINDOW_MASK) as usize];
    let len = u32::from_be_bytes([at(0), at(1), at(2), at(3)]);
    let magic = at(MAGIC_AT as u64 + 4);
    let count = u32::from_be_bytes([
        at(COUNT_AT as u64 + 4),
        at(COUNT_AT as u64 + 5),
        at(COUNT_AT as u64 + 6),
        at(COUNT_AT as u64 + 7),
    ]);
    let k = w.dir.kafka_scan();
    let room = k.records - (base as u32 + 4);
    if magic != 2 || len < BATCH_AFTER_LEN || len > room || count > i32::MAX as u32 {
        return false;
    }
    // The batch is whole in the field: counted, and passed over from its length field on.
    k.skip = len;
    k.phase = BATCH;
    w.run_count += count as u64;
    advance(w, base + 4);
    true
}
