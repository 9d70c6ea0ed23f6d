//! Socket tracking and payload capture, from syscall entry and exit hooks.
//!
//! Tracked sockets live in `CONNS`, keyed by (tgid, fd). Everything happens when a syscall
//! returns, because the saved argument registers (`struct pt_regs`) are still intact then (on
//! arm64 all but `x0`, which the entry code also keeps in `orig_x0`): one hook on syscall exit sees the arguments and the result together, so no state is
//! kept between entry and exit, and there is no entry hook at all. Both directions are
//! therefore timestamped when the syscall returns (the bytes were handed to, or taken from, the
//! kernel). Only `close` is caught at entry, by its own tracepoint, so the socket is forgotten
//! before another thread can be given the same fd number.
//!
//! Where the kernel allows BPF trampolines, the same handlers run as `fexit` programs on the
//! hooked syscalls' own functions (`__x64_sys_read`, `__arm64_sys_read`, ...), so other syscalls pay nothing.
//! Otherwise one exit hook runs for every syscall on the machine, and the common case (a syscall
//! Periscope does not care about, or an fd it does not track) is kept to a register read, a
//! compare and, for I/O syscalls, one hash lookup. That hook attaches as a BTF tracepoint
//! (`tp_btf`, registers are plain loads) when the kernel has BTF, else as a raw tracepoint
//! (registers read through `bpf_probe_read_kernel`). Measured on the development VM (see BENCHMARKS.md): a per-syscall
//! tracepoint (`syscalls:sys_enter_read`) costs ~700 ns per hit through the perf-event path, a
//! raw `sys_enter` hook ~100 ns on every syscall, the exit hook ~170 ns.

use core::ffi::c_void;

use agent_ebpf::{
    ConnInfo, ConnectConfig, Counter, EventHeader, EventKind, LocalAddr, SockKey, Syscall,
    DIR_EGRESS, DIR_INGRESS, HEADER_LEN, MAX_CAPTURE, MAX_IOVECS, MUTED_ALL, MUTED_CIPHER,
    OPEN_COMM_OFFSET, OPEN_LOCAL_OFFSET, OPEN_PAYLOAD_LEN, ORIGIN_ACCEPT, ORIGIN_CONNECT,
    RECENT_FDS, SOCKADDR_LEN,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_loop,
            bpf_probe_read_kernel as probe_read_kernel_raw,
            bpf_probe_read_user as probe_read_user_raw, bpf_ringbuf_output,
        },
    },
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{SockOpsContext, TracePointContext},
};

use crate::common::{
    arg, bump, config, current_comm, now, nr, store, tgid_of, zeroed_in, Regs, BPF_NOEXIST,
};

mod framing;
pub mod tls;

const CLONE_THREAD: u64 = 0x0001_0000;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u32 = 1;
const EINPROGRESS: i64 = 115;
const EEXIST: i64 = 17;
const BPF_RB_NO_WAKEUP: u64 = 1;

/// Tracked sockets. Userspace adds the ones that existed before start-up and removes the
/// ones of processes that exited.
#[map]
static CONNS: HashMap<SockKey, ConnInfo> = HashMap::with_max_entries(65536, 0);

/// Connections userspace switched off (unknown or disabled protocol), by conn id. LRU: an
/// entry whose connection closed before userspace's mute landed ages out instead of filling
/// the table (live muted connections are looked up on every syscall, so they stay).
#[map]
static MUTED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Processes whose connections are not tracked (`--exclude-*`, `--include-*`), by tgid, with
/// the cgroup id the process had when userspace excluded it: a new connection of such a
/// process is never copied. The cgroup must match, so that a reused pid elsewhere is not
/// taken for the excluded process; `exec` removes the entry (the new program is judged
/// again), and userspace removes those of processes that exited.
#[map]
static EXCLUDED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Socket type of AF_INET/AF_INET6 sockets other than streams created since start-up, so that
/// `connect` on a UDP socket is not tracked. Streams, by far the most sockets, are left out:
/// no locked insert when one is created, and no locked delete when it closes (a lookup finds
/// nothing); an absent entry reads as "a stream, or not known".
#[map]
static SOCK_TYPES: HashMap<SockKey, u32> = HashMap::with_max_entries(65536, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// The most recently opened tracked fds of each process, for inheritance at fork.
#[map]
static RECENT: LruHashMap<u32, RecentFds> = LruHashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct RecentFds {
    fds: [i32; RECENT_FDS],
    next: u32,
}

/// Local addresses of sockets being connected, by connecting thread (`pid_tgid`): written by
/// `connect_local` inside `connect(2)`, taken by `on_connect` as the same syscall returns.
#[map]
static CONNECTING: LruHashMap<u64, LocalAddr> = LruHashMap::with_max_entries(4096, 0);

/// The socket each thread is connecting (`struct sock` address), by `pid_tgid`: written by
/// `connect_state` when `connect(2)` moves the socket to SYN-SENT, taken by `on_connect` as the
/// same syscall returns. The tier for kernels whose `sock_ops` cannot fill `CONNECTING`.
#[map]
static CONNECT_SOCK: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Set by the loader (`EbpfLoader::override_global`); all zero leaves `CONNECT_SOCK` unread.
#[unsafe(no_mangle)]
static CONNECT_CONFIG: ConnectConfig = ConnectConfig {
    state_skaddr_offset: 8,
    state_newstate_offset: 20,
    state_protocol_offset: 30,
    sk_family_offset: 0,
    sk_dport_offset: 0,
    sk_num_offset: 0,
    sk_rcv_saddr_offset: 0,
    sk_v6_rcv_saddr_offset: 0,
};

#[inline(always)]
fn connect_config() -> ConnectConfig {
    // SAFETY: a plain global the loader may rewrite before load; read_volatile keeps the
    // compiler from constant-folding the default.
    unsafe { core::ptr::read_volatile(&CONNECT_CONFIG) }
}

/// Per-CPU sequence for connection ids.
#[map]
static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space where an event is assembled before it is copied to the ring buffer
/// with its real length (the ring buffer only gets what was captured, not 4 KiB each time).
#[map]
static SCRATCH: PerCpuArray<EventBuf> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct EventBuf {
    header: EventHeader,
    /// Twice the capture limit so that the verifier can prove every bounded copy fits.
    payload: [u8; 2 * MAX_CAPTURE],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// How an I/O syscall passes its buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    /// `buf, len`
    Flat,
    /// `const struct iovec *, iovcnt`
    Iovec,
    /// `struct msghdr *`
    Msghdr,
    /// No user buffer (sendfile): only the length is reported.
    None,
}

/// A syscall `nr` returned `ret`; its arguments are still in `regs`. `main.rs` calls this from
/// the exit hooks, after the syscall statistics (see there). `FRAMED` programs walk the
/// messages of framed connections (`framing.rs`); the others capture a prefix only, for
/// kernels without `bpf_loop`.
#[inline(always)]
pub fn on_exit<R: Regs, const FRAMED: bool>(regs: &R, nr: u64, ret: i64) {
    use Buffer::{Flat, Iovec, Msghdr};
    use Syscall::*;
    // One call of `on_io` for every I/O syscall, not one inlined copy per syscall: each copy
    // had its own `bpf_loop` call site, whose callback the verifier walked again.
    let (syscall, direction, buffer) = match nr {
        nr::READ => (Read, DIR_INGRESS, Flat),
        nr::RECVFROM => (Recvfrom, DIR_INGRESS, Flat),
        nr::READV => (Readv, DIR_INGRESS, Iovec),
        nr::RECVMSG => (Recvmsg, DIR_INGRESS, Msghdr),
        nr::WRITE => (Write, DIR_EGRESS, Flat),
        nr::SENDTO => (Sendto, DIR_EGRESS, Flat),
        nr::WRITEV => (Writev, DIR_EGRESS, Iovec),
        nr::SENDMSG => (Sendmsg, DIR_EGRESS, Msghdr),
        nr::SENDFILE => (Sendfile, DIR_EGRESS, Buffer::None),
        nr::ACCEPT | nr::ACCEPT4 => return on_accept(regs, ret),
        nr::CONNECT => return on_connect(regs, ret),
        nr::SOCKET => return on_socket(regs, ret),
        _ => return,
    };
    on_io::<R, FRAMED>(regs, ret, syscall, direction, buffer);
}

/// A read or write returned: if the fd is a tracked, unmuted socket, send its bytes: framed
/// (`framing.rs`) when the connection's protocol is, else a prefix.
#[inline(always)]
pub fn on_io<R: Regs, const FRAMED: bool>(
    regs: &R,
    ret: i64,
    syscall: Syscall,
    direction: u8,
    buffer: Buffer,
) {
    if ret <= 0 {
        // Errors (EAGAIN above all) and EOF move no bytes.
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = arg(regs, 0) as i32;
    let key = SockKey {
        tgid: tgid_of(pid_tgid),
        fd,
    };
    // SAFETY: the value is copied out at once; a concurrent delete cannot invalidate the copy.
    let Some(conn) = (unsafe { CONNS.get(&key) }).copied() else {
        return;
    };
    // Encrypted bytes moved inside a TLS library call: the uprobes send the plaintext.
    if config().tls != 0 && tls::in_call(pid_tgid, fd) {
        return;
    }
    // SAFETY: copied out at once.
    if let Some(muted) = unsafe { MUTED.get(&conn.conn_id) }.copied() {
        // A TLS socket's I/O outside library calls: a library on memory BIOs.
        if muted != MUTED_ALL && config().tls != 0 {
            tls::outside_call(pid_tgid, fd, direction);
        }
        return;
    }
    let Some(buf) = data_event(pid_tgid, &conn, fd, ret, direction, syscall) else {
        return;
    };
    if FRAMED {
        let source = match buffer {
            Buffer::Flat => framing::Source::Flat(arg(regs, 1)),
            Buffer::Iovec => framing::Source::Iovec(arg(regs, 1), arg(regs, 2)),
            Buffer::Msghdr => {
                let (iov, iovlen) = msghdr_iov(arg(regs, 1));
                framing::Source::Iovec(iov, iovlen)
            }
            Buffer::None => framing::Source::None,
        };
        let (id, origin) = (conn.conn_id, conn.origin);
        if framing::frame(buf, id, origin, direction, ret as u64, source) {
            return;
        }
    }
    let limit = (config().capture_bytes as u64)
        .min(MAX_CAPTURE as u64)
        .min(ret as u64);
    let captured = match buffer {
        Buffer::Flat => copy_flat(buf, arg(regs, 1), limit),
        Buffer::Iovec if FRAMED => copy_iovec_looped(arg(regs, 1), arg(regs, 2), limit),
        Buffer::Iovec => copy_iovec(buf, arg(regs, 1), arg(regs, 2), limit),
        Buffer::Msghdr => {
            let (iov, iovlen) = msghdr_iov(arg(regs, 1));
            if FRAMED {
                copy_iovec_looped(iov, iovlen, limit)
            } else {
                copy_iovec(buf, iov, iovlen, limit)
            }
        }
        Buffer::None => limit,
    };
    let captured = if buffer == Buffer::None { 0 } else { captured };
    if buffer != Buffer::None && captured < limit {
        bump(Counter::ReadUserFailed);
    }
    if config().tls != 0 && captured >= 9 && tls::is_client_hello(&buf.payload) {
        // Encrypted from here on: muted at once, not a drain later (userspace mutes it too),
        // so that a library on memory BIOs is followed from its first request.
        let _ = MUTED.insert(&conn.conn_id, &MUTED_CIPHER, BPF_NOEXIST);
    }
    submit(buf, captured);
}

/// The per-CPU scratch event with its header filled for a `Data` event of `conn` on `fd`,
/// stamped now: `ret` bytes moved in `direction` by `syscall`.
#[inline(always)]
fn data_event(
    pid_tgid: u64,
    conn: &ConnInfo,
    fd: i32,
    ret: i64,
    direction: u8,
    syscall: Syscall,
) -> Option<&'static mut EventBuf> {
    let buf = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let buf = unsafe { &mut *buf };
    let ts = now();
    fill_header(
        &mut buf.header,
        pid_tgid,
        EventKind::Data,
        conn.conn_id,
        fd,
        ts,
    );
    buf.header.ret_len = ret;
    buf.header.direction = direction;
    buf.header.syscall = syscall as u8;
    buf.header.origin = conn.origin;
    Some(buf)
}

/// The iovec array and count of a user `struct msghdr` (msg_iov at offset 16, msg_iovlen at
/// offset 24); zeros when unreadable.
#[inline(always)]
fn msghdr_iov(msg: u64) -> (u64, u64) {
    // SAFETY: reading user memory through the helper; failure means no payload.
    let iov = unsafe { bpf_probe_read_user((msg + 16) as *const u64) }.unwrap_or(0);
    let iovlen = unsafe { bpf_probe_read_user((msg + 24) as *const u64) }.unwrap_or(0);
    (iov, iovlen)
}

/// Copies `limit` (≤ MAX_CAPTURE) bytes from a flat user buffer; returns what was copied.
#[inline(always)]
fn copy_flat(buf: &mut EventBuf, src: u64, limit: u64) -> u64 {
    if limit == 0 {
        return 0;
    }
    // Written so the verifier sees 1 ≤ n ≤ MAX_CAPTURE.
    let n = ((limit - 1) & (MAX_CAPTURE as u64 - 1)) + 1;
    // SAFETY: n ≤ MAX_CAPTURE ≤ payload length; the helper validates the user address.
    let rc = unsafe {
        probe_read_user_raw(
            buf.payload.as_mut_ptr() as *mut c_void,
            n as u32,
            src as *const c_void,
        )
    };
    if rc == 0 {
        n
    } else {
        0
    }
}

/// Copies up to `limit` bytes gathered from the first `MAX_IOVECS` iovecs; returns the number of
/// contiguous bytes copied from the start of the stream.
#[inline(always)]
fn copy_iovec(buf: &mut EventBuf, iov_ptr: u64, iovcnt: u64, limit: u64) -> u64 {
    let mut off: u64 = 0;
    let mut i: u64 = 0;
    while i < MAX_IOVECS as u64 {
        if i >= iovcnt || off >= limit {
            break;
        }
        // SAFETY: reading user memory through the helper; failure stops the copy.
        let Ok(iov) = (unsafe { bpf_probe_read_user((iov_ptr + i * 16) as *const Iovec) }) else {
            break;
        };
        i += 1;
        match copy_one_iovec(buf, &iov, off, limit) {
            Some(n) => off += n,
            None => break,
        }
    }
    off
}

/// Most iovecs [`copy_iovec_looped`] reads: `IOV_MAX`.
const MAX_LOOPED_IOVECS: u32 = 1024;

/// What [`iovec_step`] works on. In a per-CPU map, not on the stack: Linux 6.1 counts the
/// caller's stack and the callback's together (512 bytes in all), and the exit programs'
/// frames leave no room.
#[repr(C)]
pub struct IovecCopy {
    iov: u64,
    count: u64,
    limit: u64,
    /// Bytes copied so far (the result).
    off: u64,
}

#[map]
static IOVEC_COPY: PerCpuArray<IovecCopy> = PerCpuArray::with_max_entries(1, 0);

/// [`copy_iovec`] over up to `IOV_MAX` iovecs, one `bpf_loop` step each, for the programs
/// that have `bpf_loop` (Linux 5.17+): gRPC, and other writers that gather many small pieces
/// (a 9-byte frame header, then its payload) into one `sendmsg`, pass far more than
/// `MAX_IOVECS`, and the bytes past the eighth would be a gap. Copies into the per-CPU
/// scratch event.
#[inline(always)]
fn copy_iovec_looped(iov: u64, count: u64, limit: u64) -> u64 {
    let Some(copy) = IOVEC_COPY.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU slot is ours for the duration of this program.
    let copy = unsafe { &mut *copy };
    copy.iov = iov;
    copy.count = count;
    copy.limit = limit;
    copy.off = 0;
    let steps = count.min(u64::from(MAX_LOOPED_IOVECS)) as u32;
    // SAFETY: `iovec_step` has the callback signature; it reaches its state through the
    // per-CPU maps.
    unsafe { bpf_loop(steps, iovec_step as *mut c_void, core::ptr::null_mut(), 0) };
    copy.off
}

/// One iovec of [`copy_iovec_looped`]: 0 to go on, 1 to stop.
extern "C" fn iovec_step(index: u64, _ctx: *mut c_void) -> i64 {
    let (Some(copy), Some(buf)) = (IOVEC_COPY.get_ptr_mut(0), SCRATCH.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: per-CPU slots, ours for the duration of this program.
    let (copy, buf) = unsafe { (&mut *copy, &mut *buf) };
    if index >= copy.count || copy.off >= copy.limit || copy.limit > MAX_CAPTURE as u64 {
        return 1;
    }
    // SAFETY: reading user memory through the helper; failure stops the copy.
    let Ok(iov) = (unsafe { bpf_probe_read_user((copy.iov + index * 16) as *const Iovec) }) else {
        return 1;
    };
    match copy_one_iovec(buf, &iov, copy.off, copy.limit) {
        Some(n) => {
            copy.off += n;
            0
        }
        None => 1,
    }
}

/// Appends the bytes of one iovec (up to `limit` in all) to the event's `off` bytes: how many
/// (0 for an empty iovec), or None when user memory could not be read. `off < limit ≤
/// MAX_CAPTURE`.
#[inline(always)]
fn copy_one_iovec(buf: &mut EventBuf, iov: &Iovec, off: u64, limit: u64) -> Option<u64> {
    if iov.len == 0 {
        return Some(0);
    }
    let want = iov.len.min(limit - off);
    // off < limit ≤ MAX_CAPTURE and 1 ≤ n ≤ MAX_CAPTURE, so off + n < 2 * MAX_CAPTURE: the
    // masks restate that for the verifier.
    let at = off & (MAX_CAPTURE as u64 - 1);
    let n = ((want - 1) & (MAX_CAPTURE as u64 - 1)) + 1;
    // SAFETY: at + n ≤ 2 * MAX_CAPTURE - 1 < payload length.
    let rc = unsafe {
        probe_read_user_raw(
            buf.payload.as_mut_ptr().add(at as usize) as *mut c_void,
            n as u32,
            iov.base as *const c_void,
        )
    };
    (rc == 0).then_some(n)
}

#[inline(always)]
fn fill_header(
    header: &mut EventHeader,
    pid_tgid: u64,
    kind: EventKind,
    conn_id: u64,
    fd: i32,
    ts: u64,
) {
    // Field by field (`common::store`): plain stores here were merged into byte-at-a-time
    // `memset` calls.
    store(&mut header.kind, kind as u8);
    store(&mut header.tgid, tgid_of(pid_tgid));
    store(&mut header.tid, pid_tgid as u32);
    store(&mut header.fd, fd);
    store(&mut header.conn_id, conn_id);
    store(&mut header.ts_ns, ts);
    store(&mut header.cgroup_id, 0);
    store(&mut header.ret_len, 0);
    store(&mut header.direction, 0);
    store(&mut header.syscall, 0);
    store(&mut header.origin, 0);
    store(&mut header.listen_fd, -1);
    store(&mut header.cap_len, 0);
    store(&mut header.frame_start, 0);
    store(&mut header.frame_end, 0);
    store(&mut header.frame_seq, 0);
    store(&mut header.frame_skipped, 0);
}

/// Zeroes an `Open` event's payload a word at a time (`fill(0)` was a byte-at-a-time
/// `memset` call).
#[inline(always)]
fn zero_open_payload(buf: &mut EventBuf) {
    const { assert!(HEADER_LEN % 8 == 0 && 2 * MAX_CAPTURE >= OPEN_PAYLOAD_LEN.div_ceil(8) * 8) };
    let words = buf.payload.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < OPEN_PAYLOAD_LEN.div_ceil(8) {
        // SAFETY: inside the payload, which starts 8-aligned (the header is whole words).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
}

/// Sends the header plus `captured` payload bytes.
#[inline(always)]
fn submit(buf: &mut EventBuf, captured: u64) {
    let captured = captured.min(MAX_CAPTURE as u64);
    buf.header.cap_len = captured as u32;
    // The mask restates captured ≤ MAX_CAPTURE for the verifier; the size stays inside EventBuf.
    let size = HEADER_LEN as u64 + (captured & (2 * MAX_CAPTURE as u64 - 1));
    let ring = &EVENTS as *const RingBuf as *mut c_void;
    // Never wake the reader: a wake-up per event costs a context switch each, and even asking
    // how full the ring is costs a helper call per event. Userspace drains on a timer.
    // SAFETY: `buf` is a valid map value of at least `size` bytes.
    let rc = unsafe {
        bpf_ringbuf_output(
            ring,
            buf as *mut EventBuf as *mut c_void,
            size,
            BPF_RB_NO_WAKEUP,
        )
    };
    if rc == 0 {
        bump(Counter::EventsSent);
    } else {
        bump(Counter::RingbufFull);
    }
}

/// Reads the address family of a user `sockaddr`, 0 when unknown.
#[inline(always)]
fn sockaddr_family(addr: u64) -> u16 {
    if addr == 0 {
        return 0;
    }
    // SAFETY: reading user memory through the helper.
    unsafe { bpf_probe_read_user(addr as *const u16) }.unwrap_or(0)
}

/// Whether an AF_INET socket we saw created is something other than a stream (UDP).
#[inline(always)]
fn known_not_stream(key: &SockKey) -> bool {
    // SAFETY: copied out at once.
    match unsafe { SOCK_TYPES.get(key) } {
        Some(ty) => *ty & 0xf != SOCK_STREAM,
        None => false,
    }
}

/// `accept(fd, addr, addrlen)` / `accept4` returned a new socket.
#[inline(always)]
pub fn on_accept<R: Regs>(regs: &R, ret: i64) {
    if ret < 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = tgid_of(pid_tgid);
    if tgid == config().self_tgid {
        return;
    }
    let listen_fd = arg(regs, 0) as i32;
    let addr = arg(regs, 1);
    let family = sockaddr_family(addr);
    if family != 0 && family != AF_INET && family != AF_INET6 {
        // AF_UNIX and friends: not TCP.
        return;
    }
    if family == 0
        && known_not_stream(&SockKey {
            tgid,
            fd: listen_fd,
        })
    {
        return;
    }
    open_conn(
        pid_tgid,
        ret as i32,
        addr,
        ORIGIN_ACCEPT,
        Syscall::Accept,
        listen_fd,
    );
}

/// `connect(fd, addr, addrlen)` returned: 0, or EINPROGRESS for a non-blocking socket.
#[inline(always)]
pub fn on_connect<R: Regs>(regs: &R, ret: i64) {
    if ret != 0 && ret != -EINPROGRESS {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = tgid_of(pid_tgid);
    if tgid == config().self_tgid {
        return;
    }
    let fd = arg(regs, 0) as i32;
    let addr = arg(regs, 1);
    let family = sockaddr_family(addr);
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    if known_not_stream(&SockKey { tgid, fd }) {
        return;
    }
    open_conn(pid_tgid, fd, addr, ORIGIN_CONNECT, Syscall::Connect, -1);
}

/// A connection id unique on the node: a per-CPU sequence number and the CPU. The CPU takes
/// 16 bits (x86_64 kernels allow up to 8,192 CPUs), the sequence the 47 below the top bit.
/// (An atomic node-wide counter would need the fetching atomics of BPF CPU v3.)
#[inline(always)]
fn next_conn_id() -> u64 {
    // SAFETY: bpf_get_smp_processor_id has no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    let seq = match CONN_SEQ.get_ptr_mut(0) {
        Some(slot) => {
            // SAFETY: per-CPU slot.
            unsafe {
                *slot += 1;
                *slot
            }
        }
        None => 0,
    };
    // Kernel ids never set the top bit: userspace uses it for sockets found in /proc.
    ((seq << 16) | (cpu & 0xffff)) & !(1u64 << 63)
}

/// Starts tracking `fd` and reports it with the peer address found at user address `addr`.
#[inline(always)]
fn open_conn(pid_tgid: u64, fd: i32, addr: u64, origin: u8, syscall: Syscall, listen_fd: i32) {
    let key = SockKey {
        tgid: tgid_of(pid_tgid),
        fd,
    };
    // SAFETY: the value is copied out.
    if let Some(cgroup) = unsafe { EXCLUDED.get(&key.tgid) }.copied() {
        // SAFETY: bpf_get_current_cgroup_id has no preconditions.
        if cgroup == unsafe { bpf_get_current_cgroup_id() } {
            return;
        }
    }
    let conn_id = next_conn_id();
    // Zeroed in place: `_pad: [0; 7]` became a `memset` call.
    let mut slot = core::mem::MaybeUninit::uninit();
    let info: &mut ConnInfo = zeroed_in(&mut slot);
    info.conn_id = conn_id;
    info.origin = origin;
    // BPF_NOEXIST: a repeated connect on a socket already tracked keeps its identity.
    if let Err(e) = CONNS.insert(&key, info, BPF_NOEXIST) {
        if e as i64 != -EEXIST {
            bump(Counter::ConnTableFull);
        }
        return;
    }
    remember_recent(key.tgid, fd);
    framing::start(conn_id);
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let buf = unsafe { &mut *buf };
    let ts = now();
    fill_header(&mut buf.header, pid_tgid, EventKind::Open, conn_id, fd, ts);
    // SAFETY: no preconditions.
    buf.header.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    buf.header.origin = origin;
    buf.header.syscall = syscall as u8;
    buf.header.listen_fd = listen_fd;
    // Payload: sockaddr (zeroed when unreadable), padding, comm.
    zero_open_payload(buf);
    if addr != 0 {
        // SAFETY: SOCKADDR_LEN < payload length; the helper validates the user address.
        unsafe {
            probe_read_user_raw(
                buf.payload.as_mut_ptr() as *mut c_void,
                SOCKADDR_LEN as u32,
                addr as *const c_void,
            )
        };
    }
    if let Some(comm) = buf.payload.get_mut(OPEN_COMM_OFFSET..OPEN_LOCAL_OFFSET) {
        if let Ok(comm) = <&mut [u8; 16]>::try_from(comm) {
            current_comm(comm);
        }
    }
    if origin == ORIGIN_CONNECT {
        fill_local(pid_tgid, &mut buf.payload);
    }
    submit(buf, OPEN_PAYLOAD_LEN as u64);
}

/// Writes the connecting socket's own address after the peer's `sockaddr` already in
/// `payload`, from `connect_local` (the `sock_ops` tier) or else from the socket `connect_state`
/// recorded (the tracepoint tier); only when it was for this peer port (a stale entry of an
/// earlier connect of the thread that was not tracked is dropped).
#[inline(always)]
fn fill_local(pid_tgid: u64, payload: &mut [u8]) {
    // SAFETY: copied out at once.
    let Some(local) = (unsafe { CONNECTING.get(&pid_tgid) }).copied() else {
        fill_local_from_sock(pid_tgid, payload);
        return;
    };
    let _ = CONNECTING.remove(&pid_tgid);
    if payload[2..4] != local.remote_port_be.to_ne_bytes() {
        return;
    }
    let out = &mut payload[OPEN_LOCAL_OFFSET..OPEN_PAYLOAD_LEN];
    out[0..2].copy_from_slice(&local.family.to_ne_bytes());
    out[2..4].copy_from_slice(&local.port_be.to_ne_bytes());
    if local.family == AF_INET {
        out[4..8].copy_from_slice(&local.addr[0].to_ne_bytes());
    } else {
        out[8..12].copy_from_slice(&local.addr[0].to_ne_bytes());
        out[12..16].copy_from_slice(&local.addr[1].to_ne_bytes());
        out[16..20].copy_from_slice(&local.addr[2].to_ne_bytes());
        out[20..24].copy_from_slice(&local.addr[3].to_ne_bytes());
    }
}

/// The tracepoint tier of `fill_local`: the source port was picked inside this `connect(2)`,
/// so the socket holds it now. Reads `struct sock_common` at offsets from the kernel's BTF.
#[inline(always)]
fn fill_local_from_sock(pid_tgid: u64, payload: &mut [u8]) {
    // SAFETY: copied out at once.
    let Some(sk) = (unsafe { CONNECT_SOCK.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = CONNECT_SOCK.remove(&pid_tgid);
    let cfg = connect_config();
    if cfg.sk_num_offset == 0 {
        return;
    }
    // SAFETY: the helper checks the kernel address; the socket is held by the fd whose
    // `connect` is returning, and a stale address only yields a port that fails the check.
    let field = |offset: u32| unsafe { bpf_probe_read_kernel((sk + offset as u64) as *const u16) };
    let (Ok(family), Ok(dport_be), Ok(port)) = (
        field(cfg.sk_family_offset),
        field(cfg.sk_dport_offset),
        field(cfg.sk_num_offset),
    ) else {
        return;
    };
    if payload[2..4] != dport_be.to_ne_bytes() || (family != AF_INET && family != AF_INET6) {
        return;
    }
    let out = &mut payload[OPEN_LOCAL_OFFSET..OPEN_PAYLOAD_LEN];
    out[0..2].copy_from_slice(&family.to_ne_bytes());
    out[2..4].copy_from_slice(&port.to_be().to_ne_bytes());
    let (dst, len, offset) = if family == AF_INET {
        (out[4..8].as_mut_ptr(), 4, cfg.sk_rcv_saddr_offset)
    } else {
        (out[8..24].as_mut_ptr(), 16, cfg.sk_v6_rcv_saddr_offset)
    };
    // SAFETY: `dst` has `len` bytes; the helper checks the kernel address and zeroes `dst`
    // when it fails (a zero address, which userspace treats as unknown).
    unsafe {
        probe_read_kernel_raw(
            dst as *mut c_void,
            len,
            (sk + offset as u64) as *const c_void,
        )
    };
}

/// `sock:inet_sock_set_state`: a TCP socket enters SYN-SENT inside `connect(2)` (or a
/// Fast Open `sendmsg`), in the calling thread, so the thread's socket is kept for
/// `fill_local_from_sock`. Attached only when `connect_local` cannot be (before Linux 6.10).
pub fn connect_state(ctx: &TracePointContext) -> u32 {
    const TCP_SYN_SENT: i32 = 2;
    const IPPROTO_TCP: u16 = 6;
    let cfg = connect_config();
    // SAFETY: offsets come from this tracepoint's format file, checked by the loader.
    let (newstate, protocol) = unsafe {
        (
            ctx.read_at::<i32>(cfg.state_newstate_offset as usize),
            ctx.read_at::<u16>(cfg.state_protocol_offset as usize),
        )
    };
    if newstate != Ok(TCP_SYN_SENT) || protocol != Ok(IPPROTO_TCP) {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if tgid_of(pid_tgid) == config().self_tgid {
        return 0;
    }
    // SAFETY: as above.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(cfg.state_skaddr_offset as usize) } {
        let _ = CONNECT_SOCK.insert(&pid_tgid, &sk, 0);
    }
    0
}

/// `sock_ops` program: at `BPF_SOCK_OPS_TCP_CONNECT_CB` the kernel has picked the source port
/// and runs in the thread calling `connect(2)`, so the local address is kept for `on_connect`.
/// Needs `bpf_get_current_pid_tgid` in `sock_ops` programs (Linux 6.10+); on older kernels the
/// program is refused and connections just carry no local address.
pub fn connect_local(ctx: &SockOpsContext) {
    const OP_TCP_CONNECT_CB: u32 = 3;
    if ctx.op() != OP_TCP_CONNECT_CB {
        return;
    }
    // SAFETY: the context is a valid `bpf_sock_ops`.
    let ops = unsafe { &*ctx.ops };
    let family = ops.family as u16;
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    // Each field is loaded on its own: the verifier refuses loads through a moved context
    // pointer, which a copy of the whole array would compile to.
    // SAFETY: plain loads of context fields.
    let addr = unsafe {
        if family == AF_INET {
            [core::ptr::read_volatile(&ops.local_ip4), 0, 0, 0]
        } else {
            [
                core::ptr::read_volatile(&ops.local_ip6[0]),
                core::ptr::read_volatile(&ops.local_ip6[1]),
                core::ptr::read_volatile(&ops.local_ip6[2]),
                core::ptr::read_volatile(&ops.local_ip6[3]),
            ]
        }
    };
    let local = LocalAddr {
        family,
        port_be: (ops.local_port as u16).to_be(),
        // The network-order port sits in the upper 16 bits (see `flows.rs`).
        remote_port_be: (ops.remote_port >> 16) as u16,
        _pad: 0,
        addr,
    };
    let _ = CONNECTING.insert(&bpf_get_current_pid_tgid(), &local, 0);
}

#[inline(always)]
fn remember_recent(tgid: u32, fd: i32) {
    // SAFETY: the value is updated in place; a lost race only drops a hint.
    match RECENT.get_ptr_mut(&tgid) {
        Some(recent) => unsafe {
            let slot = ((*recent).next as usize) % RECENT_FDS;
            if let Some(f) = (*recent).fds.get_mut(slot) {
                *f = fd;
            }
            (*recent).next = (*recent).next.wrapping_add(1);
        },
        None => {
            // Element by element: an array literal became a `memset` call.
            let mut recent = core::mem::MaybeUninit::<RecentFds>::uninit();
            let r = recent.as_mut_ptr();
            // SAFETY: every field of the plain-data struct is written before the insert reads
            // it.
            unsafe {
                core::ptr::write_volatile(&raw mut (*r).next, 1);
                let mut i = 0;
                while i < RECENT_FDS {
                    core::ptr::write_volatile(&raw mut (*r).fds[i], if i == 0 { fd } else { -1 });
                    i += 1;
                }
                let _ = RECENT.insert(&tgid, recent.assume_init_ref(), 0);
            }
        }
    }
}

/// `task:task_newtask`, in the parent: a new process (not a thread) inherits the parent's most
/// recently opened tracked sockets, each as a new connection whose `Open` event names its
/// parent connection. Accept-then-fork servers (PostgreSQL) serve from the child.
pub fn task_newtask(ctx: &TracePointContext) -> u32 {
    let cfg = config();
    // SAFETY: offsets come from this tracepoint's format file, checked by the loader.
    let flags = unsafe { ctx.read_at::<u64>(cfg.newtask_flags_offset as usize) }.unwrap_or(0);
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    let Ok(child) = (unsafe { ctx.read_at::<i32>(cfg.newtask_pid_offset as usize) }) else {
        return 0;
    };
    let parent_pid_tgid = bpf_get_current_pid_tgid();
    let parent = tgid_of(parent_pid_tgid);
    // SAFETY: copied out at once.
    let Some(recent) = (unsafe { RECENT.get(&parent) }).copied() else {
        return 0;
    };
    let child_pid_tgid = ((child as u32 as u64) << 32) | child as u32 as u64;
    for fd in recent.fds {
        if fd < 0 {
            continue;
        }
        // SAFETY: copied out at once.
        let Some(conn) = (unsafe { CONNS.get(&SockKey { tgid: parent, fd }) }).copied() else {
            continue;
        };
        inherit(child_pid_tgid, fd, conn);
    }
    0
}

#[inline(always)]
fn inherit(child_pid_tgid: u64, fd: i32, parent: ConnInfo) {
    let key = SockKey {
        tgid: tgid_of(child_pid_tgid),
        fd,
    };
    let conn_id = next_conn_id();
    // Zeroed in place: `_pad: [0; 7]` became a `memset` call.
    let mut slot = core::mem::MaybeUninit::uninit();
    let info: &mut ConnInfo = zeroed_in(&mut slot);
    info.conn_id = conn_id;
    info.origin = parent.origin;
    if CONNS.insert(&key, info, BPF_NOEXIST).is_err() {
        return;
    }
    remember_recent(key.tgid, fd);
    framing::start(conn_id);
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let buf = unsafe { &mut *buf };
    let ts = now();
    fill_header(
        &mut buf.header,
        child_pid_tgid,
        EventKind::Open,
        conn_id,
        fd,
        ts,
    );
    buf.header.origin = parent.origin;
    buf.header.syscall = Syscall::Fork as u8;
    zero_open_payload(buf);
    buf.payload[..8].copy_from_slice(&parent.conn_id.to_ne_bytes());
    if let Some(comm) = buf.payload.get_mut(OPEN_COMM_OFFSET..OPEN_LOCAL_OFFSET) {
        if let Ok(comm) = <&mut [u8; 16]>::try_from(comm) {
            current_comm(comm);
        }
    }
    submit(buf, OPEN_PAYLOAD_LEN as u64);
}

/// `socket(family, type, protocol)` returned: remember the type of inet sockets.
#[inline(always)]
pub fn on_socket<R: Regs>(regs: &R, ret: i64) {
    if ret < 0 {
        return;
    }
    let family = arg(regs, 0) as u16;
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let key = SockKey {
        tgid: tgid_of(bpf_get_current_pid_tgid()),
        fd: ret as i32,
    };
    let ty = arg(regs, 1) as u32;
    if ty & 0xf != SOCK_STREAM {
        let _ = SOCK_TYPES.insert(&key, &ty, 0);
    } else {
        // A stale entry of an earlier socket on this descriptor (closed without `close(2)`,
        // by `close_range` or `exec`) must not make this stream look like a datagram socket.
        forget_if_present(&SOCK_TYPES, &key);
    }
}

/// Removes `key` if it is there. A hash map delete takes the bucket's lock even when the key
/// is absent; a lookup takes none, and on the close path the key usually is absent.
#[inline(always)]
fn forget_if_present<K, V>(map: &HashMap<K, V>, key: &K) {
    // SAFETY: only presence is checked.
    if unsafe { map.get(key) }.is_some() {
        let _ = map.remove(key);
    }
}

/// `syscalls:sys_enter_close`: forget the socket before its number can be reused. The record
/// holds the fd at offset 16 (stable tracepoint format).
pub fn sys_enter_close(ctx: &TracePointContext) -> u32 {
    // SAFETY: offset 16 of a syscall enter record is its first argument.
    let fd = unsafe { ctx.read_at::<u64>(16) }.unwrap_or(u64::MAX) as i32;
    on_close(fd);
    0
}

/// `dup2(old, new)` and `dup3(old, new, flags)`: `new` is closed first when it is open and not
/// `old`, as by `close`, and then holds a copy of `old` (whose I/O through `new` is not
/// captured). A call that fails leaves `new` open but untracked: a lost connection, never
/// another file's bytes.
pub fn sys_enter_dup(ctx: &TracePointContext) -> u32 {
    // SAFETY: offsets 16 and 24 of a syscall enter record are its first two arguments.
    let (old, new) = unsafe { (ctx.read_at::<u64>(16), ctx.read_at::<u64>(24)) };
    if let (Ok(old), Ok(new)) = (old, new) {
        if old as i32 != new as i32 {
            on_close_by(new as i32, Syscall::Dup);
        }
    }
    0
}

/// `close_range(first, last, flags)`: without `CLOSE_RANGE_CLOEXEC` it closes the range. The
/// kernel cannot walk `CONNS` by process, so userspace ends the tracked connections in the
/// range and has their entries removed; the event comes before any I/O on a reused descriptor,
/// so none of it is taken for the old connection. Only processes that have tracked sockets
/// (`RECENT`) send it.
pub fn sys_enter_close_range(ctx: &TracePointContext) -> u32 {
    const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;
    // SAFETY: offsets 16, 24 and 32 of a syscall enter record are its first three arguments.
    let (first, last, flags) = unsafe {
        (
            ctx.read_at::<u64>(16),
            ctx.read_at::<u64>(24),
            ctx.read_at::<u64>(32),
        )
    };
    let (Ok(first), Ok(last), Ok(flags)) = (first, last, flags) else {
        return 0;
    };
    if flags & CLOSE_RANGE_CLOEXEC != 0 {
        return 0; // closed at exec: `process_exec`
    }
    notify_process(
        EventKind::CloseRange,
        Syscall::CloseRange,
        first as i32,
        last as u32 as u64,
    );
    0
}

/// `sched:sched_process_exec`: the new program starts without the close-on-exec descriptors;
/// userspace ends the connections whose descriptor did not survive (same ordering as above).
pub fn process_exec(_ctx: &TracePointContext) -> u32 {
    let _ = EXCLUDED.remove(&tgid_of(bpf_get_current_pid_tgid()));
    notify_process(EventKind::Exec, Syscall::Exec, -1, 0);
    0
}

/// Sends a process-wide event (`fd`, `value` in `conn_id`) if the process has tracked sockets.
#[inline(always)]
fn notify_process(kind: EventKind, syscall: Syscall, fd: i32, value: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = tgid_of(pid_tgid);
    // SAFETY: only presence is checked.
    if tgid == config().self_tgid || unsafe { RECENT.get(&tgid) }.is_none() {
        return;
    }
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let buf = unsafe { &mut *buf };
    let ts = now();
    fill_header(&mut buf.header, pid_tgid, kind, value, fd, ts);
    buf.header.syscall = syscall as u8;
    submit(buf, 0);
}

#[inline(always)]
fn on_close(fd: i32) {
    on_close_by(fd, Syscall::Close);
}

#[inline(always)]
fn on_close_by(fd: i32, syscall: Syscall) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = SockKey {
        tgid: tgid_of(pid_tgid),
        fd,
    };
    forget_if_present(&SOCK_TYPES, &key);
    // SAFETY: copied out before removal.
    let Some(conn) = (unsafe { CONNS.get(&key) }).copied() else {
        return;
    };
    let _ = CONNS.remove(&key);
    // Most connections were never muted: look before taking the LRU map's lock to delete.
    // SAFETY: only presence is checked.
    if unsafe { MUTED.get(&conn.conn_id) }.is_some() {
        let _ = MUTED.remove(&conn.conn_id);
    }
    framing::forget(conn.conn_id);
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let buf = unsafe { &mut *buf };
    let ts = now();
    fill_header(
        &mut buf.header,
        pid_tgid,
        EventKind::Close,
        conn.conn_id,
        fd,
        ts,
    );
    buf.header.syscall = syscall as u8;
    buf.header.origin = conn.origin;
    submit(buf, 0);
}

/// `sched:sched_process_exit` of thread `pid_tgid` (every thread's exit): when a thread-group
/// leader exits, its sockets are gone without any `close(2)`; userspace drops them from `CONNS`.
pub fn process_exit(pid_tgid: u64) -> u32 {
    if tgid_of(pid_tgid) != pid_tgid as u32 {
        return 0;
    }
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let buf = unsafe { &mut *buf };
    let ts = now();
    fill_header(&mut buf.header, pid_tgid, EventKind::ProcessExit, 0, -1, ts);
    buf.header.syscall = Syscall::Exit as u8;
    submit(buf, 0);
    0
}
