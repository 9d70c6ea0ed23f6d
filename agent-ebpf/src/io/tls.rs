//! TLS plaintext, from uprobes on the TLS library's read and write functions.
//!
//! `SSL_read`/`SSL_write` (and their `_ex` forms) see the plaintext but not the socket. The
//! socket is learnt from the I/O the library does on the calling thread during the call: the
//! entry uprobe records the call in `TLS_CALLS` (by thread), the syscall hooks (`on_io`), which
//! find a tracked socket doing I/O inside a call, write its descriptor into the record instead
//! of capturing the encrypted bytes, and the return uprobe sends the plaintext as a `Data`
//! event of that socket's connection, stamped when the call's last socket syscall returned (as
//! socket bytes are), framed like socket bytes (`framing.rs`) when the
//! connection's plaintext is a framed protocol. A read served from the library's buffer does
//! no I/O: the `SSL *` → descriptor pairs seen before (`TLS_FDS`) name its socket then.
//!
//! At a connection's first plaintext the kernel sets `MUTED_PLAIN` (encrypted socket bytes
//! outside library calls, such as handshakes and alerts, are not sent again) and restarts its
//! framing state, so that the plaintext's own first request decides framing.

use agent_ebpf::{
    ConnInfo, Counter, EventKind, SockKey, Syscall, TlsCall, TlsKey, DIR_EGRESS, DIR_INGRESS,
    MAX_CAPTURE, MUTED_ALL, MUTED_PLAIN,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::map,
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};

use super::{copy_flat, data_event, fill_header, framing, submit, CONNS, MUTED, SCRATCH};
use crate::common::{bump, config, now, tgid_of, zeroed_in};

/// TLS library calls in progress, by thread (`pid_tgid`). LRU: a thread that died inside a
/// call leaves its entry to age out.
#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// The socket descriptor each `SSL *` last did I/O on, for reads served from the library's
/// buffer. LRU: sessions are not followed to their end.
#[map]
static TLS_FDS: LruHashMap<TlsKey, i32> = LruHashMap::with_max_entries(65536, 0);

/// The TLS socket each thread last read outside a library call (`pid_tgid` → fd). A library
/// on memory BIOs (Python `asyncio`, Node.js) reads the socket itself and then decrypts with
/// an `SSL_read` that does no I/O: that read's socket is the thread's last. LRU.
#[map]
static TLS_LAST_READ: LruHashMap<u64, i32> = LruHashMap::with_max_entries(16384, 0);

/// The `SSL *` whose write on this thread (`pid_tgid`) did no I/O: the thread's next TLS
/// socket write outside a library call carries its ciphertext. LRU.
#[map]
static TLS_PENDING_WRITE: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Entry of a read or write: `ssl` in the first argument, the buffer in the second; the
/// `_ex` forms return the byte count through the fourth.
#[inline(always)]
pub fn enter(ctx: &ProbeContext, direction: u8, ex: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if tgid_of(pid_tgid) == config().self_tgid {
        return;
    }
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let len_ptr = if ex {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    // Zeroed word by word: `_pad: [0; 3]` became a `memset` call.
    let mut slot = core::mem::MaybeUninit::uninit();
    let call: &mut TlsCall = zeroed_in(&mut slot);
    call.ssl = ssl;
    call.buf = buf;
    call.len_ptr = len_ptr;
    call.fd = -1;
    call.direction = direction;
    let _ = TLS_CALLS.insert(&pid_tgid, call, 0);
}

/// A syscall on tracked socket `fd` moved bytes: if the thread is inside a TLS library call,
/// the socket is the call's, and its (encrypted) bytes are not captured: returns true.
#[inline(always)]
pub fn in_call(pid_tgid: u64, fd: i32) -> bool {
    match TLS_CALLS.get_ptr_mut(&pid_tgid) {
        Some(call) => {
            // SAFETY: a live map value of this thread only.
            unsafe {
                (*call).fd = fd;
                (*call).io_ns = now();
            }
            true
        }
        None => false,
    }
}

/// Return of a read or write: sends the plaintext it moved.
#[inline(always)]
pub fn leave(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let Some(call) = (unsafe { TLS_CALLS.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = TLS_CALLS.remove(&pid_tgid);
    // `int` in every variant: > 0 bytes moved, or (the `_ex` forms) 1 for success.
    let ret = ctx.ret::<u64>() as i32;
    let len = if call.len_ptr != 0 {
        if ret != 1 {
            return;
        }
        // SAFETY: reading user memory through the helper.
        unsafe { bpf_probe_read_user(call.len_ptr as *const u64) }.unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    if len == 0 || len > i32::MAX as u64 {
        return;
    }
    let tgid = tgid_of(pid_tgid);
    let key = TlsKey {
        ssl: call.ssl,
        tgid,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    let stored = unsafe { TLS_FDS.get(&key) }.copied();
    // A pair learnt from a socket write after an unbound write, not yet told to userspace.
    let announce = stored.is_some_and(|fd| fd & UNANNOUNCED != 0);
    let known = stored.map(|fd| fd & !UNANNOUNCED);
    let fd = match (call.fd, known) {
        // An LRU update takes a lock: only when the pair is new or changed.
        (fd, Some(known)) if (fd < 0 || fd == known) && !announce => known,
        (fd, _) if fd >= 0 => {
            let _ = TLS_FDS.insert(&key, &fd, 0);
            fd
        }
        (_, Some(known)) => {
            let _ = TLS_FDS.insert(&key, &known, 0);
            known
        }
        // A read that did no I/O, of an `SSL *` never seen doing any: a memory BIO fed from
        // the socket the thread read last.
        // SAFETY: copied out at once.
        _ if call.direction == DIR_INGRESS => match unsafe { TLS_LAST_READ.get(&pid_tgid) } {
            Some(&fd) => {
                let _ = TLS_FDS.insert(&key, &fd, 0);
                fd
            }
            None => {
                bump(Counter::TlsUnattributed);
                return;
            }
        },
        // A write that did no I/O: sent unbound, bound by the thread's next socket write.
        _ => return unbound_write(pid_tgid, &call, len),
    };
    // SAFETY: copied out at once.
    let Some(conn) = (unsafe { CONNS.get(&SockKey { tgid, fd }) }).copied() else {
        return;
    };
    if !plaintext_flows(conn.conn_id) {
        return;
    }
    if announce {
        announce_bind(pid_tgid, &conn, fd, call.ssl);
    }
    let syscall = if call.direction == DIR_INGRESS {
        Syscall::SslRead
    } else {
        Syscall::SslWrite
    };
    let Some(buf) = data_event(pid_tgid, &conn, fd, len as i64, call.direction, syscall) else {
        return;
    };
    if call.io_ns != 0 {
        buf.header.ts_ns = call.io_ns;
    }
    let source = framing::Source::Flat(call.buf);
    if framing::frame(buf, conn.conn_id, conn.origin, call.direction, len, source) {
        return;
    }
    let limit = (config().capture_bytes as u64)
        .min(MAX_CAPTURE as u64)
        .min(len);
    let captured = copy_flat(buf, call.buf, limit);
    if captured < limit {
        bump(Counter::ReadUserFailed);
    }
    submit(buf, captured);
}

/// Marks the connection as carrying plaintext (`MUTED_PLAIN`) at its first, restarting its
/// framing from the plaintext's first request. False when the connection is muted entirely.
#[inline(always)]
fn plaintext_flows(conn_id: u64) -> bool {
    // SAFETY: copied out at once.
    match unsafe { MUTED.get(&conn_id) }.copied() {
        Some(MUTED_ALL) => false,
        Some(MUTED_PLAIN) => true,
        _ => {
            let _ = MUTED.insert(&conn_id, &MUTED_PLAIN, 0);
            framing::start(conn_id);
            true
        }
    }
}

/// A write's plaintext whose socket is not known: sent as `SslWriteUnbound` (prefix only)
/// under the `SSL *`, and remembered for the thread's next TLS socket write.
#[inline(always)]
fn unbound_write(pid_tgid: u64, call: &TlsCall, len: u64) {
    let _ = TLS_PENDING_WRITE.insert(&pid_tgid, &call.ssl, 0);
    let ssl = ConnInfo {
        conn_id: call.ssl,
        origin: 0,
        _pad: [0; 7],
    };
    let Some(buf) = data_event(
        pid_tgid,
        &ssl,
        -1,
        len as i64,
        DIR_EGRESS,
        Syscall::SslWriteUnbound,
    ) else {
        return;
    };
    let limit = (config().capture_bytes as u64)
        .min(MAX_CAPTURE as u64)
        .min(len);
    let captured = copy_flat(buf, call.buf, limit);
    if captured < limit {
        bump(Counter::ReadUserFailed);
    }
    submit(buf, captured);
}

/// `TLS_FDS` flag: the pair was learnt from the socket write that followed an unbound
/// write, and userspace has not been told (the next library call of the `SSL *` tells it).
const UNANNOUNCED: i32 = 1 << 30;

/// A TLS socket's I/O outside a library call (a library on memory BIOs): a read is
/// remembered for the thread's next `SSL_read`; a write after an unbound `SSL_write` on the
/// thread pairs that `SSL *` with this socket. Only map updates here: this runs in the
/// syscall exit programs, whose size the oldest verifiers limit; the pair is announced to
/// userspace (`TlsBind`) by the `SSL *`'s next library call.
#[inline(always)]
pub fn outside_call(pid_tgid: u64, fd: i32, direction: u8) {
    if direction == DIR_INGRESS {
        let _ = TLS_LAST_READ.insert(&pid_tgid, &fd, 0);
        return;
    }
    // SAFETY: copied out at once.
    let Some(ssl) = (unsafe { TLS_PENDING_WRITE.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = TLS_PENDING_WRITE.remove(&pid_tgid);
    let key = TlsKey {
        ssl,
        tgid: tgid_of(pid_tgid),
        _pad: 0,
    };
    let _ = TLS_FDS.insert(&key, &(fd | UNANNOUNCED), 0);
}

/// Tells userspace that `ssl` writes to `conn` (on `fd`): a `TlsBind` event, before the
/// plaintext of the call that found out.
#[inline(always)]
fn announce_bind(pid_tgid: u64, conn: &ConnInfo, fd: i32, ssl: u64) {
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let buf = unsafe { &mut *buf };
    fill_header(
        &mut buf.header,
        pid_tgid,
        EventKind::Data,
        conn.conn_id,
        fd,
        now(),
    );
    buf.header.direction = DIR_EGRESS;
    buf.header.syscall = Syscall::TlsBind as u8;
    buf.header.origin = conn.origin;
    buf.payload[..8].copy_from_slice(&ssl.to_ne_bytes());
    submit(buf, 8);
}

/// Whether captured bytes start with a TLS record holding a ClientHello (see
/// `is_client_hello_start`), with a handshake no longer than its record.
#[inline(always)]
pub fn is_client_hello(payload: &[u8]) -> bool {
    if payload.len() < 9 {
        return false;
    }
    let record = u16::from_be_bytes([payload[3], payload[4]]) as u32;
    let hello = u32::from_be_bytes([0, payload[6], payload[7], payload[8]]);
    is_client_hello_start(&[
        payload[0], payload[1], payload[2], payload[3], payload[4], payload[5], payload[6],
        payload[7],
    ]) && hello + 4 <= record
}

/// Whether 8 bytes start a TLS record holding a ClientHello: content type 22 (handshake),
/// version 3.x, a record no longer than TLS allows, handshake type 1, and a handshake length
/// (its top two bytes here) that fits the record.
#[inline(always)]
pub fn is_client_hello_start(b: &[u8; 8]) -> bool {
    let record = u16::from_be_bytes([b[3], b[4]]) as u32;
    let hello_top = u16::from_be_bytes([b[6], b[7]]) as u32;
    b[0] == 22
        && b[1] == 3
        && b[2] <= 4
        && b[5] == 1
        && (4..=16384 + 2048).contains(&record)
        && hello_top << 8 <= record
}
