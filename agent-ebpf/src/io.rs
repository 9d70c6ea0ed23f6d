//! Socket tracking and payload capture from syscall tracepoints.
//!
//! Tracked sockets live in `CONNS`, keyed by (tgid, fd). An I/O syscall on a tracked, unmuted
//! socket stashes its arguments at entry (`INFLIGHT`, keyed by thread); the exit program copies
//! a bounded prefix of the bytes actually moved and sends one event through `EVENTS`. Sockets
//! that are not tracked cost one hash lookup at entry and one at exit.
//!
//! All of it hangs off two raw tracepoints, `raw_syscalls:sys_enter` and `sys_exit`, that
//! dispatch on the syscall number. Measured on the development VM, one per-syscall tracepoint
//! (`syscalls:sys_enter_read`) costs ~700 ns per hit through the perf-event path, while a raw
//! tracepoint costs ~140 ns per syscall even though it fires for every syscall; see
//! BENCHMARKS.md. Arguments are read from the saved user registers (`struct pt_regs`), whose
//! layout is part of the x86_64 syscall ABI.

use core::ffi::c_void;

use agent_ebpf::{
    Config, ConnInfo, Counter, EventHeader, EventKind, SockKey, Syscall, COUNTERS_LEN,
    DIR_EGRESS, DIR_INGRESS, HEADER_LEN, MAX_CAPTURE, MAX_IOVECS, OPEN_COMM_OFFSET, OPEN_PAYLOAD_LEN, ORIGIN_ACCEPT,
    ORIGIN_CONNECT, SOCKADDR_LEN,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_ktime_get_ns,
            bpf_probe_read_user as probe_read_user_raw, bpf_ringbuf_output, bpf_ringbuf_query,
        },
    },
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};

/// Set by the loader (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    self_tgid: 0,
    capture_bytes: MAX_CAPTURE as u32,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u32 = 1;
const EINPROGRESS: i64 = 115;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Pending bytes at which the reader is woken (userspace drains every few ms otherwise).
const WAKEUP_BYTES: u64 = agent_ebpf::WAKEUP_BYTES;

/// Tracked sockets. Userspace adds the ones that existed before start-up and removes the
/// ones of processes that exited.
#[map]
static CONNS: HashMap<SockKey, ConnInfo> = HashMap::with_max_entries(65536, 0);

/// Connections userspace switched off (unknown or disabled protocol), by conn id.
#[map]
static MUTED: HashMap<u64, u8> = HashMap::with_max_entries(65536, 0);

/// Socket type of AF_INET/AF_INET6 sockets created since start-up, so that `connect` on a
/// UDP socket is not tracked.
#[map]
static SOCK_TYPES: HashMap<SockKey, u32> = HashMap::with_max_entries(65536, 0);

/// Arguments of syscalls in flight, by thread.
#[map]
static INFLIGHT: HashMap<u64, Inflight> = HashMap::with_max_entries(16384, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Things that could not be delivered, per CPU, indexed by `Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

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

/// How an I/O syscall passes its buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Buffer {
    /// `buf, len`
    Flat = 0,
    /// `const struct iovec *, iovcnt`
    Iovec = 1,
    /// `struct msghdr *`
    Msghdr = 2,
    /// No user buffer (sendfile): only the length is reported.
    None = 3,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    enter_ns: u64,
    conn_id: u64,
    /// Buffer or iovec array or sockaddr, depending on the syscall.
    ptr: u64,
    /// iovcnt, or pointer to the sockaddr length for accept.
    count: u64,
    fd: i32,
    syscall: u8,
    direction: u8,
    buffer: u8,
    origin: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

#[inline(always)]
fn config() -> Config {
    // SAFETY: CONFIG is a plain global the loader may rewrite before load; read_volatile keeps
    // the compiler from constant-folding the default.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

#[inline(always)]
fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// x86_64 syscall numbers of the syscalls Periscope hooks.
pub mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const CLOSE: u64 = 3;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const SOCKET: u64 = 41;
    pub const CONNECT: u64 = 42;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const ACCEPT4: u64 = 288;
}

/// Offsets in x86_64 `struct pt_regs` of the syscall arguments (di, si, dx, r10, r8, r9) and
/// of `orig_ax`, which holds the syscall number.
const ARG_OFFSETS: [usize; 6] = [112, 104, 96, 56, 72, 64];
const ORIG_AX_OFFSET: usize = 120;

/// The arguments of the syscall being entered, read lazily from the saved registers.
pub struct SysArgs {
    regs: *const u8,
}

impl SysArgs {
    pub fn new(regs: u64) -> Self {
        SysArgs {
            regs: regs as *const u8,
        }
    }

    #[inline(always)]
    fn get(&self, index: usize) -> u64 {
        let Some(offset) = ARG_OFFSETS.get(index) else {
            return 0;
        };
        // SAFETY: `regs` is the kernel's pt_regs for this syscall; the helper checks the read.
        unsafe { bpf_probe_read_kernel(self.regs.add(*offset) as *const u64) }.unwrap_or(0)
    }

    /// The syscall number (valid at exit too).
    #[inline(always)]
    pub fn syscall_nr(&self) -> u64 {
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel(self.regs.add(ORIG_AX_OFFSET) as *const u64) }
            .unwrap_or(u64::MAX)
    }
}

/// `raw_syscalls:sys_enter(regs, id)`.
pub fn sys_enter(ctx: &RawTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    let args = SysArgs::new(ctx.arg(0));
    match id {
        nr::READ => enter_io(&args, Syscall::Read, DIR_INGRESS, Buffer::Flat),
        nr::RECVFROM => enter_io(&args, Syscall::Recvfrom, DIR_INGRESS, Buffer::Flat),
        nr::READV => enter_io(&args, Syscall::Readv, DIR_INGRESS, Buffer::Iovec),
        nr::RECVMSG => enter_io(&args, Syscall::Recvmsg, DIR_INGRESS, Buffer::Msghdr),
        nr::WRITE => enter_io(&args, Syscall::Write, DIR_EGRESS, Buffer::Flat),
        nr::SENDTO => enter_io(&args, Syscall::Sendto, DIR_EGRESS, Buffer::Flat),
        nr::WRITEV => enter_io(&args, Syscall::Writev, DIR_EGRESS, Buffer::Iovec),
        nr::SENDMSG => enter_io(&args, Syscall::Sendmsg, DIR_EGRESS, Buffer::Msghdr),
        nr::SENDFILE => enter_io(&args, Syscall::Sendfile, DIR_EGRESS, Buffer::None),
        nr::ACCEPT | nr::ACCEPT4 => enter_accept(&args),
        nr::CONNECT => enter_connect(&args),
        nr::SOCKET => enter_socket(&args),
        nr::CLOSE => enter_close(&args),
        _ => {}
    }
    0
}

/// `raw_syscalls:sys_exit(regs, ret)`.
pub fn sys_exit(ctx: &RawTracePointContext) -> i32 {
    let ret: i64 = ctx.arg(1);
    let args = SysArgs::new(ctx.arg(0));
    match args.syscall_nr() {
        nr::READ | nr::RECVFROM | nr::READV | nr::RECVMSG | nr::WRITE | nr::SENDTO
        | nr::WRITEV | nr::SENDMSG | nr::SENDFILE => exit_io(ret),
        nr::ACCEPT | nr::ACCEPT4 => exit_accept(ret),
        nr::CONNECT => exit_connect(ret),
        nr::SOCKET => exit_socket(ret),
        _ => {}
    }
    0
}

#[inline(always)]
fn tgid_of(pid_tgid: u64) -> u32 {
    (pid_tgid >> 32) as u32
}

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
    ((seq << 8) | (cpu & 0xff)) & !(1u64 << 63)
}

fn enter_io(args: &SysArgs, syscall: Syscall, direction: u8, buffer: Buffer) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = args.get(0) as i32;
    let key = SockKey {
        tgid: tgid_of(pid_tgid),
        fd,
    };
    // SAFETY: the value is copied out at once; a concurrent delete cannot invalidate the copy.
    let Some(conn) = (unsafe { CONNS.get(&key) }).copied() else {
        return;
    };
    // SAFETY: only the presence matters.
    if unsafe { MUTED.get(&conn.conn_id) }.is_some() {
        return;
    }
    let (ptr, count) = match buffer {
        Buffer::Flat | Buffer::Iovec => (args.get(1), args.get(2)),
        Buffer::None => (0, 0),
        Buffer::Msghdr => {
            // struct msghdr (user ABI): msg_iov at offset 16, msg_iovlen at offset 24.
            let msg = args.get(1);
            // SAFETY: reading user memory through the helper; failure is handled.
            let iov = unsafe { bpf_probe_read_user((msg + 16) as *const u64) }.unwrap_or(0);
            let iovlen = unsafe { bpf_probe_read_user((msg + 24) as *const u64) }.unwrap_or(0);
            (iov, iovlen)
        }
    };
    let buffer = if buffer == Buffer::Msghdr {
        Buffer::Iovec
    } else {
        buffer
    };
    let inflight = Inflight {
        // SAFETY: no preconditions.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        conn_id: conn.conn_id,
        ptr,
        count,
        fd,
        syscall: syscall as u8,
        direction,
        buffer: buffer as u8,
        origin: conn.origin,
    };
    if INFLIGHT.insert(&pid_tgid, &inflight, 0).is_err() {
        bump(Counter::InflightTableFull);
    }
}

fn exit_io(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before removal.
    let Some(inflight) = (unsafe { INFLIGHT.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = INFLIGHT.remove(&pid_tgid);
    if ret <= 0 {
        // Errors (EAGAIN above all) and EOF move no bytes.
        return;
    }
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let buf = unsafe { &mut *buf };
    let limit = (config().capture_bytes as u64).min(MAX_CAPTURE as u64).min(ret as u64);
    let captured = if inflight.buffer == Buffer::Flat as u8 {
        copy_flat(buf, inflight.ptr, limit)
    } else if inflight.buffer == Buffer::Iovec as u8 {
        copy_iovec(buf, inflight.ptr, inflight.count, limit)
    } else {
        0
    };
    if captured < limit {
        bump(Counter::ReadUserFailed);
    }
    fill_header(
        &mut buf.header,
        pid_tgid,
        EventKind::Data,
        inflight.conn_id,
        inflight.fd,
        inflight.enter_ns,
    );
    buf.header.ret_len = ret;
    buf.header.direction = inflight.direction;
    buf.header.syscall = inflight.syscall;
    buf.header.origin = inflight.origin;
    submit(buf, captured);
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
        if iov.len == 0 {
            continue;
        }
        let want = iov.len.min(limit - off);
        // off < limit ≤ MAX_CAPTURE and 1 ≤ n ≤ MAX_CAPTURE, so off + n < 2 * MAX_CAPTURE:
        // the masks restate that for the verifier.
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
        if rc != 0 {
            break;
        }
        off += n;
    }
    off
}

#[inline(always)]
fn fill_header(
    header: &mut EventHeader,
    pid_tgid: u64,
    kind: EventKind,
    conn_id: u64,
    fd: i32,
    enter_ns: u64,
) {
    header.kind = kind as u8;
    header.tgid = tgid_of(pid_tgid);
    header.tid = pid_tgid as u32;
    header.fd = fd;
    header.conn_id = conn_id;
    header.enter_ns = enter_ns;
    // SAFETY: no preconditions.
    header.exit_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: no preconditions.
    header.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    header.ret_len = 0;
    header.direction = 0;
    header.syscall = 0;
    header.origin = 0;
    header.listen_fd = -1;
    header.cap_len = 0;
}

/// Sends the header plus `captured` payload bytes.
#[inline(always)]
fn submit(buf: &mut EventBuf, captured: u64) {
    let captured = captured.min(MAX_CAPTURE as u64);
    buf.header.cap_len = captured as u32;
    // The mask restates captured ≤ MAX_CAPTURE for the verifier; the size stays inside EventBuf.
    let size = HEADER_LEN as u64 + (captured & (2 * MAX_CAPTURE as u64 - 1));
    let ring = &EVENTS as *const RingBuf as *mut c_void;
    // Waking the reader for every event would cost a context switch each: wake it only once
    // enough is pending; userspace also drains on a short timer (see `WAKEUP_BYTES`).
    // SAFETY: `ring` is the ring buffer map.
    let pending = unsafe { bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) };
    let flags = if pending >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // SAFETY: `buf` is a valid map value of at least `size` bytes.
    let rc = unsafe { bpf_ringbuf_output(ring, buf as *mut EventBuf as *mut c_void, size, flags) };
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

fn enter_accept(args: &SysArgs) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if tgid_of(pid_tgid) == config().self_tgid {
        return;
    }
    let inflight = Inflight {
        // SAFETY: no preconditions.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        conn_id: 0,
        ptr: args.get(1),
        count: 0,
        fd: args.get(0) as i32,
        syscall: Syscall::Accept as u8,
        direction: 0,
        buffer: Buffer::None as u8,
        origin: ORIGIN_ACCEPT,
    };
    if INFLIGHT.insert(&pid_tgid, &inflight, 0).is_err() {
        bump(Counter::InflightTableFull);
    }
}

fn exit_accept(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before removal.
    let Some(inflight) = (unsafe { INFLIGHT.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = INFLIGHT.remove(&pid_tgid);
    let fd = ret;
    if fd < 0 {
        return;
    }
    let family = sockaddr_family(inflight.ptr);
    if family != 0 && family != AF_INET && family != AF_INET6 {
        // AF_UNIX and friends: not TCP.
        return;
    }
    let tgid = tgid_of(pid_tgid);
    if family == 0 {
        // No address asked for: the listening socket tells, when we saw it created.
        // SAFETY: copied out.
        let listen = SockKey {
            tgid,
            fd: inflight.fd,
        };
        if let Some(ty) = unsafe { SOCK_TYPES.get(&listen) } {
            if *ty & 0xf != SOCK_STREAM {
                return;
            }
        }
    }
    open_conn(pid_tgid, fd as i32, inflight, ORIGIN_ACCEPT);
}

fn enter_connect(args: &SysArgs) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = tgid_of(pid_tgid);
    if tgid == config().self_tgid {
        return;
    }
    let addr = args.get(1);
    let family = sockaddr_family(addr);
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let fd = args.get(0) as i32;
    // SAFETY: copied out.
    if let Some(ty) = unsafe { SOCK_TYPES.get(&SockKey { tgid, fd }) } {
        if *ty & 0xf != SOCK_STREAM {
            return;
        }
    }
    let inflight = Inflight {
        // SAFETY: no preconditions.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        conn_id: 0,
        ptr: addr,
        count: 0,
        fd,
        syscall: Syscall::Connect as u8,
        direction: 0,
        buffer: Buffer::None as u8,
        origin: ORIGIN_CONNECT,
    };
    if INFLIGHT.insert(&pid_tgid, &inflight, 0).is_err() {
        bump(Counter::InflightTableFull);
    }
}

fn exit_connect(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before removal.
    let Some(inflight) = (unsafe { INFLIGHT.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = INFLIGHT.remove(&pid_tgid);
    if ret != 0 && ret != -EINPROGRESS {
        return;
    }
    let fd = inflight.fd;
    open_conn(pid_tgid, fd, inflight, ORIGIN_CONNECT);
}

/// Starts tracking `fd` and reports it with the peer address found at `inflight.ptr`.
#[inline(always)]
fn open_conn(pid_tgid: u64, fd: i32, inflight: Inflight, origin: u8) {
    let key = SockKey {
        tgid: tgid_of(pid_tgid),
        fd,
    };
    let conn_id = next_conn_id();
    let info = ConnInfo {
        conn_id,
        origin,
        _pad: [0; 7],
    };
    // BPF_NOEXIST: a repeated connect on a socket already tracked keeps its identity.
    const BPF_NOEXIST: u64 = 1;
    if let Err(e) = CONNS.insert(&key, &info, BPF_NOEXIST) {
        // -EEXIST is the repeated connect; anything else is a full table.
        if e != -17 {
            bump(Counter::ConnTableFull);
        }
        return;
    }
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let buf = unsafe { &mut *buf };
    fill_header(
        &mut buf.header,
        pid_tgid,
        EventKind::Open,
        conn_id,
        fd,
        inflight.enter_ns,
    );
    buf.header.origin = origin;
    buf.header.syscall = inflight.syscall;
    if origin == ORIGIN_ACCEPT {
        buf.header.listen_fd = inflight.fd;
    }
    // Payload: sockaddr (zeroed when unreadable), padding, comm.
    buf.payload[..OPEN_PAYLOAD_LEN].fill(0);
    if inflight.ptr != 0 {
        // SAFETY: SOCKADDR_LEN < payload length; the helper validates the user address.
        unsafe {
            probe_read_user_raw(
                buf.payload.as_mut_ptr() as *mut c_void,
                SOCKADDR_LEN as u32,
                inflight.ptr as *const c_void,
            )
        };
    }
    if let Ok(comm) = bpf_get_current_comm() {
        buf.payload[OPEN_COMM_OFFSET..OPEN_PAYLOAD_LEN].copy_from_slice(&comm);
    }
    let captured = OPEN_PAYLOAD_LEN as u64;
    submit(buf, captured);
}

fn enter_socket(args: &SysArgs) {
    let family = args.get(0) as u16;
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let inflight = Inflight {
        enter_ns: 0,
        conn_id: 0,
        ptr: 0,
        count: args.get(1),
        fd: -1,
        syscall: 0,
        direction: 0,
        buffer: Buffer::None as u8,
        origin: 0,
    };
    let _ = INFLIGHT.insert(&pid_tgid, &inflight, 0);
}

fn exit_socket(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before removal.
    let Some(inflight) = (unsafe { INFLIGHT.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = INFLIGHT.remove(&pid_tgid);
    let fd = ret;
    if fd < 0 {
        return;
    }
    let key = SockKey {
        tgid: tgid_of(pid_tgid),
        fd: fd as i32,
    };
    let _ = SOCK_TYPES.insert(&key, &(inflight.count as u32), 0);
}

fn enter_close(args: &SysArgs) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = args.get(0) as i32;
    let key = SockKey {
        tgid: tgid_of(pid_tgid),
        fd,
    };
    let _ = SOCK_TYPES.remove(&key);
    // SAFETY: copied out before removal.
    let Some(conn) = (unsafe { CONNS.get(&key) }).copied() else {
        return;
    };
    let _ = CONNS.remove(&key);
    let _ = MUTED.remove(&conn.conn_id);
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let buf = unsafe { &mut *buf };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    fill_header(&mut buf.header, pid_tgid, EventKind::Close, conn.conn_id, fd, now);
    buf.header.syscall = Syscall::Close as u8;
    buf.header.origin = conn.origin;
    submit(buf, 0);
}

/// `sched:sched_process_exit`: when a thread-group leader exits, its sockets are gone without
/// any `close(2)`; userspace drops them from `CONNS`.
pub fn process_exit(_ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if tgid_of(pid_tgid) != pid_tgid as u32 {
        return 0;
    }
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let buf = unsafe { &mut *buf };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    fill_header(&mut buf.header, pid_tgid, EventKind::ProcessExit, 0, -1, now);
    buf.header.syscall = Syscall::Exit as u8;
    submit(buf, 0);
    0
}
