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
    Counter, SockKey, Syscall, TlsCall, TlsKey, DIR_INGRESS, MAX_CAPTURE, MUTED_ALL, MUTED_PLAIN,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::map,
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};

use super::{copy_flat, data_event, framing, submit, CONNS, MUTED};
use crate::common::{bump, config, now, tgid_of};

/// TLS library calls in progress, by thread (`pid_tgid`). LRU: a thread that died inside a
/// call leaves its entry to age out.
#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// The socket descriptor each `SSL *` last did I/O on, for reads served from the library's
/// buffer. LRU: sessions are not followed to their end.
#[map]
static TLS_FDS: LruHashMap<TlsKey, i32> = LruHashMap::with_max_entries(65536, 0);

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
    let call = TlsCall {
        ssl,
        buf,
        len_ptr,
        fd: -1,
        direction,
        _pad: [0; 3],
        io_ns: 0,
    };
    let _ = TLS_CALLS.insert(&pid_tgid, &call, 0);
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
    let known = unsafe { TLS_FDS.get(&key) }.copied();
    let fd = match (call.fd, known) {
        // An LRU update takes a lock: only when the pair is new or changed.
        (fd, Some(known)) if fd < 0 || fd == known => known,
        (fd, _) if fd >= 0 => {
            let _ = TLS_FDS.insert(&key, &fd, 0);
            fd
        }
        _ => {
            bump(Counter::TlsUnattributed);
            return;
        }
    };
    // SAFETY: copied out at once.
    let Some(conn) = (unsafe { CONNS.get(&SockKey { tgid, fd }) }).copied() else {
        return;
    };
    // SAFETY: copied out at once.
    match unsafe { MUTED.get(&conn.conn_id) }.copied() {
        Some(MUTED_ALL) => return,
        Some(MUTED_PLAIN) => {}
        _ => {
            // The first plaintext: framing starts again from the plaintext's first request.
            let _ = MUTED.insert(&conn.conn_id, &MUTED_PLAIN, 0);
            framing::start(conn.conn_id);
        }
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
