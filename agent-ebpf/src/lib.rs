//! The wire format shared by Periscope's kernel programs and its userspace agent.
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel writes it into maps and the ring
//! buffer, userspace reads it back byte for byte. Nothing else in the project re-declares these
//! layouts. With the `user` feature the types also implement `aya::Pod`.
#![no_std]

/// Hard upper bound on the payload prefix the kernel copies per syscall. The runtime limit
/// (`Config::capture_bytes`) may be lower, never higher.
pub const MAX_CAPTURE: usize = 4096;

/// How many iovecs of a `readv`/`writev`/`recvmsg`/`sendmsg` the kernel walks for the prefix.
pub const MAX_IOVECS: usize = 8;

/// Size of the socket address kept with an `Open` event (large enough for `sockaddr_in6`).
pub const SOCKADDR_LEN: usize = 28;

/// Where the opening task's `comm` sits in an `Open` event's payload, and its length: a process
/// that exits at once (a `curl`) is still named, even when `/proc` has forgotten it.
pub const OPEN_COMM_OFFSET: usize = 32;
pub const COMM_LEN: usize = 16;
/// Where a connecting socket's own address sits in an `Open` event from `connect` (a
/// `sockaddr_in`/`sockaddr_in6`, zeroed when unknown): the server end of the same connection on
/// this node sees it as its peer, which is how a trace crosses from one process to another.
pub const OPEN_LOCAL_OFFSET: usize = OPEN_COMM_OFFSET + COMM_LEN;
/// Payload length of an `Open` event: peer sockaddr, padding, comm, local sockaddr.
pub const OPEN_PAYLOAD_LEN: usize = OPEN_LOCAL_OFFSET + SOCKADDR_LEN;

/// A connecting socket's local address, as the `sock_ops` connect callback saw it (after the
/// kernel picked the source port), kept by thread until `connect(2)` returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalAddr {
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Local port, network order.
    pub port_be: u16,
    /// The peer's port, network order: `connect` checks it against its own argument.
    pub remote_port_be: u16,
    pub _pad: u16,
    /// Local address as the kernel stores it (network order); IPv4 in the first word.
    pub addr: [u32; 4],
}

/// The kernel never wakes the reader (that would cost a context switch per event); the reader
/// drains the ring buffer on a timer. It drains again when, at the rate events arrived since
/// the last drain, `DRAIN_BURST_BYTES` (or `1 / DRAIN_TARGET_FILL` of a smaller ring) will
/// have arrived, but at most every `DRAIN_MIN_INTERVAL_MS` and at least every
/// `DRAIN_MAX_INTERVAL_MS`; when nothing arrived it backs off to the maximum. So ordinary
/// traffic is drained every 50 ms (each wake-up costs a context switch and a timer), and under
/// load each drain is a short burst of decoding: ~64 KiB of events, ~0.1 ms, since requests of
/// the workload that wait behind a drain on the same CPU wait for all of it (with 1 MiB
/// bursts, 2 ms each, the p99 latency of `cargo xtask bench http` was 5.5× its value without
/// the agent). The default 8 MiB ring fills only above ~1 GB/s at the minimum interval.
pub const DRAIN_MIN_INTERVAL_MS: u64 = 1;
pub const DRAIN_MAX_INTERVAL_MS: u64 = 50;
pub const DRAIN_TARGET_FILL: u64 = 8;
pub const DRAIN_BURST_BYTES: u64 = 64 * 1024;

/// What a ring-buffer event reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Bytes moved on a tracked socket; `cap_len` bytes of payload follow the header.
    Data = 1,
    /// A socket became tracked (accept, connect). The payload is the peer's `sockaddr` and the
    /// task's `comm` (see `OPEN_PAYLOAD_LEN`).
    Open = 2,
    /// A tracked socket was closed by `close(2)`.
    Close = 3,
    /// A thread-group leader exited: all its sockets are gone.
    ProcessExit = 4,
    /// `close_range(fd, conn_id as last, flags)` without `CLOSE_RANGE_CLOEXEC` closed every
    /// descriptor from `fd` to the header's `conn_id` (the last one, inclusive).
    CloseRange = 5,
    /// The process executed a new program: its close-on-exec descriptors are gone.
    Exec = 6,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Data),
            2 => Some(Self::Open),
            3 => Some(Self::Close),
            4 => Some(Self::ProcessExit),
            5 => Some(Self::CloseRange),
            6 => Some(Self::Exec),
            _ => None,
        }
    }
}

/// Which way the bytes went, seen from the process that made the syscall.
pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;

/// How a socket came to be tracked; a hint for the role the process plays on it.
pub const ORIGIN_UNKNOWN: u8 = 0;
pub const ORIGIN_ACCEPT: u8 = 1;
pub const ORIGIN_CONNECT: u8 = 2;
/// Found in `/proc` at start-up by userspace.
pub const ORIGIN_PROC: u8 = 3;

/// In an `Open` event made at fork (`Syscall::Fork`), the parent's conn id sits in the first 8
/// payload bytes, where other `Open` events carry the peer address.
pub const FORK_PARENT_OFFSET: usize = 0;

/// How many of a process's most recently opened tracked sockets a forked child inherits in the
/// kernel (accept-then-fork servers such as PostgreSQL hand the newest one to the child).
pub const RECENT_FDS: usize = 4;

/// The syscall an event came from (kept for self-metrics and debugging).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Read = 1,
    Write = 2,
    Readv = 3,
    Writev = 4,
    Recvfrom = 5,
    Sendto = 6,
    Recvmsg = 7,
    Sendmsg = 8,
    Sendfile = 9,
    Accept = 10,
    Connect = 11,
    Close = 12,
    Exit = 13,
    /// A socket inherited by a child process at fork (an `Open` event).
    Fork = 14,
    /// `dup2`/`dup3` closing their target descriptor (a `Close` event).
    Dup = 15,
    CloseRange = 16,
    Exec = 17,
    /// Plaintext returned by a TLS library's read (`SSL_read`, `SSL_read_ex`): a `Data` event
    /// from a uprobe, on the connection of the socket the library read from.
    SslRead = 18,
    /// Plaintext handed to a TLS library's write (`SSL_write`, `SSL_write_ex`).
    SslWrite = 19,
    /// Plaintext handed to a TLS library's write whose socket is not known yet: a library on
    /// memory BIOs (Python `asyncio`, Node.js) writes the ciphertext to the socket itself,
    /// after the call. The header's `conn_id` is the `SSL *` and `fd` is -1; a
    /// `TlsBind` event names the connection once the thread's next TLS socket write showed
    /// it (sent by the `SSL *`'s next library call).
    SslWriteUnbound = 20,
    /// A `Data` event without bytes: the `SSL *` in the 8 payload bytes writes to this
    /// header's connection (its earlier `SslWriteUnbound` plaintext belongs there).
    TlsBind = 21,
}

impl Syscall {
    /// Whether a `Data` event with this `syscall` byte carries TLS plaintext from a uprobe.
    pub const fn is_tls(syscall: u8) -> bool {
        syscall == Syscall::SslRead as u8 || syscall == Syscall::SslWrite as u8
    }
}

/// `MUTED` values. Userspace switches a connection off with `MUTED_ALL`, or only its
/// encrypted socket bytes with `MUTED_CIPHER` (inserted only if absent, so it never
/// overwrites the kernel's `MUTED_PLAIN`). The TLS uprobes set `MUTED_PLAIN` at a connection's
/// first plaintext: its socket bytes are muted, its plaintext flows. Syscall hooks treat any
/// value as muted; the TLS uprobes only `MUTED_ALL`.
pub const MUTED_ALL: u8 = 1;
pub const MUTED_CIPHER: u8 = 2;
pub const MUTED_PLAIN: u8 = 3;

/// A TLS library call in progress on one thread (`TLS_CALLS`, by `pid_tgid`): taken from the
/// uprobe at the function's entry, completed by the syscall hooks with the socket the library
/// used, read by the uretprobe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsCall {
    /// The `SSL *`.
    pub ssl: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the byte count is written (0 for the others).
    pub len_ptr: u64,
    /// The tracked socket the library read or wrote during the call (-1: none yet).
    pub fd: i32,
    /// `DIR_INGRESS` (read) or `DIR_EGRESS` (write).
    pub direction: u8,
    pub _pad: [u8; 3],
    /// When the last socket syscall of the call returned (0: none): the plaintext's time, as
    /// socket bytes are stamped, rather than the library call's return, which a busy node may
    /// delay by milliseconds.
    pub io_ns: u64,
}

/// Key of `TLS_FDS`: an `SSL *` of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsKey {
    pub ssl: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// Fixed header of every ring-buffer event; for `Data` and `Open` events `cap_len` payload
/// bytes follow it directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// `CLOCK_MONOTONIC` ns when the syscall returned (for `Close`: when it was entered).
    pub ts_ns: u64,
    /// Unique per tracked socket lifetime (never reused while the agent runs).
    pub conn_id: u64,
    /// cgroup v2 id of the task (set on `Open` events only, 0 otherwise).
    pub cgroup_id: u64,
    /// The syscall's real return value: bytes moved, which may exceed `cap_len`.
    pub ret_len: i64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    /// Payload bytes that follow this header.
    pub cap_len: u32,
    /// `EventKind` as u8.
    pub kind: u8,
    /// `DIR_INGRESS` / `DIR_EGRESS` for data events.
    pub direction: u8,
    /// `Syscall` as u8.
    pub syscall: u8,
    /// `ORIGIN_*` of the connection.
    pub origin: u8,
    /// For `Open` from accept: the listening socket's fd (to learn the local port).
    pub listen_fd: i32,
    /// Framed `Data` events (`frame_end > 0`): the part `[frame_start, frame_end)` of the
    /// syscall's `ret_len` bytes this event accounts for, as a list of [`FrameRecord`]s (see
    /// there) instead of a prefix. A syscall may need several events, in order; the last one
    /// ends at `ret_len`. Both 0 for a prefix event.
    pub frame_start: u32,
    pub frame_end: u32,
    /// Framed `Data` events: their number in the connection direction's sequence of framed
    /// events (wrapping). A gap means events were lost (ring buffer full): userspace then
    /// knows the decoder's framing is no longer to be trusted.
    pub frame_seq: u32,
    /// Framed `Data` events: body bytes of this direction skipped before this syscall, in
    /// syscalls that carried nothing but the middle of a body and sent no event (their bytes
    /// come before `frame_start`).
    pub frame_skipped: u32,
}

pub const HEADER_LEN: usize = core::mem::size_of::<EventHeader>();

/// One record of a framed event's payload (little-endian, unaligned in the payload).
///
/// `count == 0`: the `len` bytes at `offset` of the syscall's bytes follow the record (message
/// headers and the heads of their bodies, contiguous ones merged into one record).
/// `count > 0` or `kind != 0`: a run of `count` whole messages of type `kind` (PostgreSQL
/// `DataRow`/`CopyData`) that start at `offset` and fill `len` bytes, or the part of a Kafka
/// Fetch response's `records` field inside the syscall (`RUN_KAFKA_RECORDS`, `count` its
/// records, possibly none); no bytes follow. Everything between records is
/// the rest of a message body whose header was delivered: the decoder skips it by length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameRecord {
    pub offset: u32,
    pub len: u32,
    pub count: u32,
    pub kind: u8,
    pub _pad: [u8; 3],
}

pub const FRAME_RECORD_LEN: usize = core::mem::size_of::<FrameRecord>();

/// Bytes of records a framed event carries before the next event of the same syscall starts.
pub const FRAME_EVENT_BUDGET: usize = MAX_CAPTURE;

/// Messages (and body continuations) walked per syscall at most; beyond it framing is given
/// up for the connection's direction (`Counter::FramingBound`).
pub const MAX_FRAME_STEPS: u32 = 1 << 16;

/// Events one syscall may produce at most (each at most [`FRAME_EVENT_BUDGET`] record bytes).
pub const MAX_FRAME_EVENTS: u32 = 256;

/// How a direction of a connection is framed in the kernel (`FrameDir::mode`).
/// Prefix capture, as for any protocol the kernel does not frame (HTTP, unknown).
pub const FRAME_OFF: u8 = 0;
/// No byte seen yet: the first request bytes decide.
pub const FRAME_DETECT: u8 = 1;
/// PostgreSQL request side before the start-up message: untyped packets (int32 length).
pub const FRAME_PG_STARTUP: u8 = 2;
/// PostgreSQL typed messages (type byte, int32 length counting itself).
pub const FRAME_PG: u8 = 3;
/// PostgreSQL response side: the one-byte answer to SSLRequest/GSSENCRequest.
pub const FRAME_PG_ANSWER: u8 = 4;
/// Kafka frames (int32 size, then that many bytes).
pub const FRAME_KAFKA: u8 = 5;
/// HTTP/1.x: heads, chunk-size lines and trailers scanned line by line (`HttpScan`), bodies
/// skipped by Content-Length or chunk size.
pub const FRAME_HTTP: u8 = 6;
/// HTTP/2 client side before its frames: the 24-byte connection preface.
pub const FRAME_H2_PREFACE: u8 = 7;
/// HTTP/2 frames (24-bit length, type, flags, stream id, then the payload): every frame's
/// header is captured, with the head of its payload except for DATA, whose payload is skipped.
pub const FRAME_H2: u8 = 8;
/// The server side after a `101 Switching Protocols`: HTTP/2 (an `h2c` upgrade) when its first
/// frame is the server's SETTINGS, else not framed any more (a WebSocket). The client side
/// waits for the preface (`FRAME_H2_PREFACE`) and, without it, is not framed either.
pub const FRAME_H2_UPGRADE: u8 = 9;

/// One direction's HTTP line scanner (`FrameDir::http`), carried across syscalls: a head, a
/// chunk-size line or a trailer may be split at any byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpScan {
    /// Hash of the current line's field name (or the start line's first token) so far; the
    /// digit count on a chunk-size line.
    pub name: u64,
    /// The current line's number: Content-Length, status code or chunk size.
    pub value: u64,
    /// The current line's last eight bytes, lower-cased (CR not included).
    pub last: u64,
    /// The message's Content-Length.
    pub length: u64,
    /// Bytes of the current line (CR not included).
    pub line: u32,
    /// Bytes of the current head, trailer or chunk-size line (bounded).
    pub bytes: u32,
    pub status: u32,
    /// What is being scanned: a head, a chunk-size line, a trailer.
    pub phase: u8,
    /// What the current line's bytes are: a field name, a value of interest, the rest.
    pub field: u8,
    /// What the current head said (start line seen, HEAD, CONNECT, lengths).
    pub flags: u16,
}

/// One direction's walk of a Kafka Fetch response or Produce request (see `agent-ebpf/src/io/framing/kafka.rs`),
/// carried across syscalls. It lives in the storage of `FrameDir::http`, which a Kafka
/// connection does not use (`kafka_scan`): the map entry of every connection stays the same
/// size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KafkaScan {
    /// Bytes of the response still to come (0: not walking one).
    pub left: u32,
    /// Bytes to pass over before the next field is read.
    pub skip: u32,
    /// The field being read so far (big-endian integer or uvarint), and its bytes so far.
    pub acc: u32,
    /// Bytes of the current `records` field still to come.
    pub records: u32,
    /// Elements left: topics, partitions of the current topic, aborted transactions of the
    /// current partition, tagged fields of the current section.
    pub topics: u32,
    pub partitions: u32,
    pub aborted: u32,
    pub tags: u32,
    /// The current record batch's `batchLength`.
    pub batch: u32,
    /// `KAFKA_*` phase of the walk, and the phase a tagged-field section returns to.
    pub phase: u8,
    pub after: u8,
    /// The message's version.
    pub version: u8,
    pub have: u8,
    /// What is walked: a Fetch response (`KAFKA_WALK_FETCH`) or a Produce request
    /// (`KAFKA_WALK_PRODUCE`).
    pub api: u8,
}

pub const KAFKA_WALK_FETCH: u8 = 1;
pub const KAFKA_WALK_PRODUCE: u8 = 0;

/// Kafka Fetch requests whose responses are still to come on a connection, as the walk
/// needs them: correlation id and version + 1 (0: a free slot). It lives in the storage of
/// `FrameState::http` (`kafka_pipe`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KafkaPipe {
    pub correlation: [u32; KAFKA_FETCHES],
    pub version: [u8; KAFKA_FETCHES],
}

/// Fetch requests in flight per connection that the walk can follow (consumers keep one per
/// broker connection; an older one is forgotten and its response captured by prefix).
pub const KAFKA_FETCHES: usize = 8;

/// The run kind of a Kafka `records` field (or the part of one inside a syscall): `count` is
/// the records of the batches whose headers lie in it.
pub const RUN_KAFKA_RECORDS: u8 = b'R';

const _: () = assert!(core::mem::size_of::<KafkaScan>() <= core::mem::size_of::<HttpScan>());
const _: () = assert!(core::mem::size_of::<KafkaPipe>() <= core::mem::size_of::<HttpPipe>());

impl FrameDir {
    /// The Kafka walk's state (a Kafka connection has no HTTP scan).
    #[inline(always)]
    pub fn kafka_scan(&mut self) -> &mut KafkaScan {
        // SAFETY: `KafkaScan` is plain data no larger than `HttpScan` and less aligned;
        // every bit pattern is valid for both.
        unsafe { &mut *(&mut self.http as *mut HttpScan as *mut KafkaScan) }
    }
}

impl HttpPipe {
    /// The Kafka Fetch requests in flight (a Kafka connection has no HTTP pipeline).
    #[inline(always)]
    pub fn kafka_pipe(&mut self) -> &mut KafkaPipe {
        // SAFETY: as for `FrameDir::kafka_scan`.
        unsafe { &mut *(self as *mut HttpPipe as *mut KafkaPipe) }
    }
}

/// One direction's framing state, carried from syscall to syscall.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameDir {
    /// Bytes of the current message still to come (0: a header is next).
    pub skip: u64,
    /// Of those, how many are still to be captured (the head of the body).
    pub head_left: u32,
    /// `FRAME_*`.
    pub mode: u8,
    /// Header bytes already seen (a header split across syscalls), in `hdr`.
    pub have: u8,
    pub _pad: [u8; 2],
    pub hdr: [u8; 16],
    /// The next framed event's `EventHeader::frame_seq`.
    pub seq: u32,
    /// Body bytes skipped in syscalls that sent no event, for the next event's
    /// `EventHeader::frame_skipped`.
    pub skipped: u32,
    pub http: HttpScan,
}

/// Framing state of a connection, by syscall direction: `[ingress, egress]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameState {
    pub dirs: [FrameDir; 2],
    pub http: HttpPipe,
}

/// HTTP requests whose responses are still to come, as far as framing cares: the response to a
/// `HEAD` has no body whatever its Content-Length says. Requests and final responses are
/// numbered from the connection's start; `heads` has a bit per request number, modulo
/// `HTTP_PIPELINE`, set for a `HEAD` (a `HEAD` more than that many requests ahead of the
/// responses gives framing up).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpPipe {
    pub requests: u32,
    pub responses: u32,
    pub heads: [u64; HTTP_PIPELINE / 64],
}

/// Requests in flight whose methods framing tracks (a multiple of 64, a power of two).
pub const HTTP_PIPELINE: usize = 256;

/// Key of the socket table: a file descriptor in a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub tgid: u32,
    pub fd: i32,
}

/// Value of the socket table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnInfo {
    pub conn_id: u64,
    pub origin: u8,
    pub _pad: [u8; 7],
}

/// Agent configuration the kernel programs read (a global, set at load time).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// The agent's own process: never traced, so scraping Periscope does not observe itself.
    pub self_tgid: u32,
    /// Payload prefix to copy per syscall, at most `MAX_CAPTURE`.
    pub capture_bytes: u32,
    /// Offsets of `pid` and `clone_flags` in the `task:task_newtask` record, read from its
    /// tracefs format at load time.
    pub newtask_pid_offset: u32,
    pub newtask_flags_offset: u32,
    /// Whether and where per-syscall statistics are kept: one of `SYSCALL_STATS_*`.
    pub syscall_stats: u32,
    /// Offset of `__syscall_nr` in `syscalls:sys_enter_*` records, read from their tracefs
    /// format at load time (for the per-syscall statistics entry hook).
    pub syscall_nr_offset: u32,
    /// TLS uprobes are attached (`--tls`): the syscall hooks tell the I/O made inside a TLS
    /// library call to the uprobes instead of capturing it. 0 or 1.
    pub tls: u32,
}

/// `Config::syscall_stats`: no syscall statistics (no entry hook is attached either).
pub const SYSCALL_STATS_OFF: u32 = 0;
/// Statistics are kept by programs of their own on `sys_enter` and `sys_exit` (with the fexit
/// I/O hooks, which have no every-syscall exit program to share).
pub const SYSCALL_STATS_SEPARATE: u32 = 1;
/// The `sys_exit` program of the I/O hooks also keeps the statistics (one program run and one
/// register read per syscall exit instead of two).
pub const SYSCALL_STATS_IN_IO_EXIT: u32 = 2;

/// Index of each per-CPU counter of things that could not be delivered.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// The ring buffer had no room for an event.
    RingbufFull = 0,
    /// The socket table was full; the connection is not tracked.
    ConnTableFull = 1,
    /// The in-flight syscall table was full; one syscall's bytes are missed.
    InflightTableFull = 2,
    /// Copying the payload from user memory failed (the event carries no payload).
    ReadUserFailed = 3,
    /// Events written to the ring buffer (for cross-checking with userspace).
    EventsSent = 4,
    /// Syscalls not counted because the (cgroup, syscall) statistics table was full: the
    /// series cap (`--syscalls-max-series`) at work.
    SyscallTableFull = 5,
    /// Syscalls not timed because the per-thread table of syscall start times was full.
    SyscallStartsFull = 6,
    /// A framed direction met a header that is not its protocol's: framing was given up and
    /// the direction falls back to prefix capture.
    FramingLost = 7,
    /// A framed syscall needed more than `MAX_FRAME_STEPS` steps or `MAX_FRAME_EVENTS`
    /// events, or had no user buffer (sendfile): framing was given up for the direction.
    FramingBound = 8,
    /// TLS plaintext whose socket was not known (the library call did no I/O on a tracked
    /// socket, and the `SSL *` was never seen doing any): the plaintext is dropped.
    TlsUnattributed = 9,
}

pub const COUNTER_NAMES: [&str; 10] = [
    "ringbuf_full",
    "conn_table_full",
    "inflight_table_full",
    "read_user_failed",
    "events_sent",
    "syscall_table_full",
    "syscall_starts_full",
    "framing_lost",
    "framing_bound",
    "tls_unattributed",
];
pub const COUNTERS_LEN: u32 = COUNTER_NAMES.len() as u32;

/// Log2 buckets of the per-flow RTT histogram: bucket `i` counts connections whose smoothed
/// RTT at close was in `[2^i, 2^(i+1))` µs (bucket 0 also takes 0 µs, the last one everything
/// above). 24 buckets reach 8 s.
pub const FLOW_RTT_BUCKETS: usize = 24;

/// The process's role on a flow's connections.
pub const ROLE_CLIENT: u8 = 1;
pub const ROLE_SERVER: u8 = 2;
/// Bit of `FlowKey::role` marking a UDP flow (`--udp-flows`); the other bits are `ROLE_*`.
pub const ROLE_UDP: u8 = 0x80;

/// A flow: the connections of one process (or cgroup) with one peer address, on one server
/// port, in one role. Aggregated in the kernel; userspace turns keys into labels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// cgroup v2 id of the process that created the socket (0 if unknown).
    pub cgroup_id: u64,
    /// Thread group that created the socket (for an accepted socket: the listener's creator);
    /// 0 when the socket existed before the agent started.
    pub tgid: u32,
    /// The remote port for client flows, the local port for server flows (host order).
    pub server_port: u16,
    /// `ROLE_CLIENT` or `ROLE_SERVER`, with `ROLE_UDP` set for a UDP flow.
    pub role: u8,
    /// 4 or 6: how to read `peer`.
    pub ip_version: u8,
    /// The peer's address: IPv4 in the first 4 bytes, or IPv6 (network order).
    pub peer: [u8; 16],
}

/// Cumulative counters of one flow, updated by the kernel with atomic adds. Userspace reads
/// them and exports the increase since its last read.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowStats {
    /// Connections that reached ESTABLISHED.
    pub opened: u64,
    /// Established connections that closed (any way, including reset).
    pub closed: u64,
    /// Connects answered with a reset (SYN_SENT → CLOSE after an RST).
    pub refused: u64,
    /// Connects that gave up without an answer (SYN_SENT → CLOSE without an RST).
    pub timed_out: u64,
    /// Established connections closed by a reset from the peer.
    pub reset: u64,
    /// Retransmitted segments (`tcp_sock.total_retrans`).
    pub retransmits: u64,
    /// Payload bytes the peer acknowledged (SYN and FIN excluded).
    pub bytes_sent: u64,
    /// Payload bytes received in order (SYN and FIN excluded).
    pub bytes_received: u64,
    /// Open connections now: +1 at establishment, -1 at close (two's complement).
    pub established: u64,
    /// Sum of the smoothed RTTs observed in `rtt`, in µs.
    pub rtt_sum_us: u64,
    /// Smoothed RTT of each connection when it closed (see `FLOW_RTT_BUCKETS`).
    pub rtt: [u64; FLOW_RTT_BUCKETS],
    /// `comm` of the creating task: names a process that has already exited.
    pub comm: [u8; COMM_LEN],
}

impl Default for FlowStats {
    fn default() -> Self {
        FlowStats {
            opened: 0,
            closed: 0,
            refused: 0,
            timed_out: 0,
            reset: 0,
            retransmits: 0,
            bytes_sent: 0,
            bytes_received: 0,
            established: 0,
            rtt_sum_us: 0,
            rtt: [0; FLOW_RTT_BUCKETS],
            comm: [0; COMM_LEN],
        }
    }
}

/// What the kernel keeps per TCP socket, in socket local storage (freed with the socket).
/// `cgroup/sock_create` fills the owner; userspace fills it for listeners that existed before
/// start-up (through a duplicate of their fd), so that the sockets they accept are attributed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowSockState {
    pub cgroup_id: u64,
    pub tgid: u32,
    /// `ROLE_*`, set when the connection starts.
    pub role: u8,
    /// Kernel bookkeeping bits (see `agent-ebpf/src/flows.rs`); 0 from userspace.
    pub flags: u8,
    pub _pad: [u8; 2],
    pub comm: [u8; COMM_LEN],
    /// `bytes_acked` / `bytes_received` when the connection was established (the SYN).
    pub base_acked: u64,
    pub base_received: u64,
    /// What was already added to the flow.
    pub sent: u64,
    pub received: u64,
    pub retrans: u64,
}

/// `FlowSockState::flags` bit of the agent's own sockets: never counted.
pub const FLOW_SOCK_IGNORED: u8 = 8;

/// Configuration of the flow programs (a global, set at load time).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowConfig {
    /// The agent's own process: its sockets are not counted.
    pub self_tgid: u32,
    /// Offset of `sock_cookie` (8 bytes) in the `tcp:tcp_receive_reset` record, from tracefs.
    pub reset_cookie_offset: u32,
    /// Non-zero with `--udp-flows`: `cgroup/sock_create` records the owner of UDP sockets too.
    pub udp: u32,
}

/// Where the connect tracepoint tier finds a connecting socket's addresses (a global, set at
/// load time; see `io::connect_state`). Used on kernels whose `sock_ops` programs cannot name
/// the connecting thread (before 6.10).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectConfig {
    /// Offsets of `skaddr` (8 bytes), `newstate` (4) and `protocol` (2) in the
    /// `sock:inet_sock_set_state` record, from its tracefs format.
    pub state_skaddr_offset: u32,
    pub state_newstate_offset: u32,
    pub state_protocol_offset: u32,
    /// Offsets in `struct sock` (its leading `struct sock_common`), from the kernel's BTF:
    /// `skc_family` (u16), `skc_dport` (network order), `skc_num` (local port, host order),
    /// `skc_rcv_saddr` (IPv4) and `skc_v6_rcv_saddr` (16 bytes). All zero when unknown.
    pub sk_family_offset: u32,
    pub sk_dport_offset: u32,
    pub sk_num_offset: u32,
    pub sk_rcv_saddr_offset: u32,
    pub sk_v6_rcv_saddr_offset: u32,
}

/// Index of each per-CPU flow counter.
pub const FLOW_COUNTER_NAMES: [&str; 2] = ["flow_table_full", "flow_storage_failed"];
pub const FLOW_COUNTERS_LEN: u32 = FLOW_COUNTER_NAMES.len() as u32;
/// Syscall numbers below this are covered by [`SyscallFilter`] (x86_64 uses 0–469).
pub const SYSCALL_NR_LIMIT: usize = 512;

/// Which syscalls get statistics: bit `nr % 64` of `bits[nr / 64]` (a global, set at load
/// time). A syscall outside it costs the entry and exit hooks one load and one compare.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallFilter {
    pub bits: [u64; SYSCALL_NR_LIMIT / 64],
}

impl SyscallFilter {
    /// Whether syscall `nr` is selected.
    #[inline(always)]
    pub fn contains(&self, nr: u64) -> bool {
        if nr >= SYSCALL_NR_LIMIT as u64 {
            return false;
        }
        match self.bits.get((nr >> 6) as usize) {
            Some(word) => word & (1u64 << (nr & 63)) != 0,
            None => false,
        }
    }

    /// Selects syscall `nr`; numbers at or above `SYSCALL_NR_LIMIT` are ignored.
    pub fn insert(&mut self, nr: u32) {
        if let Some(word) = self.bits.get_mut((nr >> 6) as usize) {
            *word |= 1u64 << (nr & 63);
        }
    }

    /// Whether no syscall is selected.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }
}

/// Key of the syscall statistics table: one cgroup (v2 id, which is its directory's inode
/// number) and one syscall number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyscallKey {
    pub cgroup_id: u64,
    pub nr: u32,
    pub _pad: u32,
}

/// Latency histogram bounds: bucket 0 holds durations ≤ 2^LATENCY_MIN_SHIFT ns (256 ns), bucket
/// `i` for 1 ≤ i < LATENCY_BUCKETS - 1 holds (2^(MIN+i-1), 2^(MIN+i)] ns, and the last bucket
/// everything above 2^LATENCY_MAX_SHIFT ns (~69 s). Upper bounds are inclusive, as Prometheus'
/// `le` is.
pub const LATENCY_MIN_SHIFT: u32 = 8;
pub const LATENCY_MAX_SHIFT: u32 = 36;
pub const LATENCY_BUCKETS: usize = (LATENCY_MAX_SHIFT - LATENCY_MIN_SHIFT) as usize + 2;

/// The histogram bucket of a duration of `ns` nanoseconds: the smallest `i` with
/// `ns ≤ 2^(LATENCY_MIN_SHIFT + i)`, capped at the overflow bucket. Loop-free so that the
/// verifier sees a fixed instruction count.
#[inline(always)]
pub fn latency_bucket(ns: u64) -> usize {
    if ns <= 1u64 << LATENCY_MIN_SHIFT {
        return 0;
    }
    // ceil(log2(ns)) = floor(log2(ns - 1)) + 1 for ns ≥ 2; floor(log2) by binary search.
    let mut v = ns - 1;
    let mut log = 0u32;
    if v >= 1 << 32 {
        v >>= 32;
        log += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        log += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        log += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        log += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        log += 2;
    }
    if v >= 1 << 1 {
        log += 1;
    }
    let bucket = (log + 1 - LATENCY_MIN_SHIFT) as usize;
    if bucket >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        bucket
    }
}

/// Errno classes counted per syscall; `ERRNO_CLASS_NAMES[i]` is class `i`'s `error_type` label.
pub const ERRNO_CLASSES: usize = 8;
pub const ERRNO_CLASS_NAMES: [&str; ERRNO_CLASSES] = [
    "EAGAIN",
    "EINTR",
    "ENOENT",
    "EBADF",
    "ETIMEDOUT",
    "permission",
    "connection",
    "other",
];

/// The class of a syscall error (`errno`, positive):
/// - `EAGAIN`: would block (EAGAIN = EWOULDBLOCK, and EINPROGRESS of a non-blocking connect);
/// - `EINTR`: interrupted by a signal, including the kernel-internal restart codes
///   (ERESTARTSYS and friends) that the exit hook sees before a syscall is restarted;
/// - `ENOENT`, `EBADF`, `ETIMEDOUT` (futex and socket timeouts) on their own;
/// - `permission`: EPERM, EACCES;
/// - `connection`: ECONNREFUSED, ECONNRESET, ECONNABORTED, EPIPE, ENOTCONN, EHOSTUNREACH,
///   ENETUNREACH;
/// - `other`: everything else.
#[inline(always)]
pub fn errno_class(errno: u64) -> usize {
    match errno {
        11 | 115 => 0,
        4 | 512..=514 | 516 => 1,
        2 => 2,
        9 => 3,
        110 => 4,
        1 | 13 => 5,
        111 | 104 | 103 | 32 | 107 | 113 | 101 => 6,
        _ => 7,
    }
}

/// Whether a raw syscall return value is an error (the kernel returns `-errno`, 1..=4095).
#[inline(always)]
pub fn syscall_errno(ret: i64) -> Option<u64> {
    if (-4095..0).contains(&ret) {
        Some(ret.unsigned_abs())
    } else {
        None
    }
}

/// Per-CPU value of the syscall statistics table. Counters are u32 and wrap: userspace reads
/// the table every few seconds and adds the (wrapping) difference of the per-CPU sum to 64-bit
/// totals, so a wrap is harmless; it halves the table's memory, which is per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallStats {
    /// Total duration in ns.
    pub sum_ns: u64,
    /// Failed calls by errno class (`errno_class`).
    pub errors: [u32; ERRNO_CLASSES],
    /// Calls by latency bucket (`latency_bucket`); their sum is the call count.
    pub buckets: [u32; LATENCY_BUCKETS],
}

// No padding: the kernel copies the value from its stack, and the verifier refuses to read
// uninitialised stack bytes.
const _: () =
    assert!(core::mem::size_of::<SyscallStats>() == 8 + 4 * (ERRNO_CLASSES + LATENCY_BUCKETS));

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)], Copy, made only of integers, and every bit pattern is valid.
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::ConnInfo {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::FlowConfig {}
    unsafe impl aya::Pod for super::ConnectConfig {}
    unsafe impl aya::Pod for super::FlowSockState {}
    unsafe impl aya::Pod for super::SyscallFilter {}
    unsafe impl aya::Pod for super::TlsKey {}
    unsafe impl aya::Pod for super::TlsCall {}
    unsafe impl aya::Pod for super::SyscallKey {}
    unsafe impl aya::Pod for super::SyscallStats {}
}

/// The names of the kernel programs, maps and load-time globals: the one table both sides use.
///
/// The kernel crate names each program by its `fn` identifier and each map or global by its
/// `static` identifier (that is what the aya macros write into the object), so these strings
/// must match identifiers in `main.rs`, `io.rs`, `syscalls.rs`, `flows.rs` and `common.rs`.
/// Userspace looks every program and map up through these constants only, and a unit test in
/// the agent (`capture::names_tests`) parses the embedded object and checks that the table and
/// the object name the same programs and maps, in both directions.
pub mod names {
    /// Declares a module of name constants and `ALL`, the list of them.
    macro_rules! table {
        ($(#[$doc:meta])* $module:ident { $($name:ident = $value:literal,)+ }) => {
            $(#[$doc])*
            pub mod $module {
                $(pub const $name: &str = $value;)+
                /// Every name of this table.
                pub const ALL: &[&str] = &[$($name),+];
            }
        };
    }

    table! {
        /// Program names (`fn` identifiers in `agent-ebpf/src/main.rs`).
        program {
            SYS_EXIT_BTF = "sys_exit_btf",
            SYS_EXIT_RAW = "sys_exit_raw",
            FRAME_EXIT_BTF = "frame_exit_btf",
            FRAME_EXIT_RAW = "frame_exit_raw",
            FEXIT_READ = "fexit_read",
            FEXIT_RECVFROM = "fexit_recvfrom",
            FEXIT_READV = "fexit_readv",
            FEXIT_RECVMSG = "fexit_recvmsg",
            FEXIT_WRITE = "fexit_write",
            FEXIT_SENDTO = "fexit_sendto",
            FEXIT_WRITEV = "fexit_writev",
            FEXIT_SENDMSG = "fexit_sendmsg",
            FEXIT_SENDFILE = "fexit_sendfile",
            FEXIT_ACCEPT = "fexit_accept",
            FEXIT_ACCEPT4 = "fexit_accept4",
            FEXIT_CONNECT = "fexit_connect",
            FEXIT_SOCKET = "fexit_socket",
            SYS_ENTER_STATS_BTF = "sys_enter_stats_btf",
            SYS_ENTER_STATS_RAW = "sys_enter_stats_raw",
            SYS_ENTER_STATS_TP = "sys_enter_stats_tp",
            SYS_EXIT_STATS_BTF = "sys_exit_stats_btf",
            SYS_EXIT_STATS_RAW = "sys_exit_stats_raw",
            SYS_ENTER_CLOSE = "sys_enter_close",
            TASK_NEWTASK = "task_newtask",
            SYS_ENTER_DUP2 = "sys_enter_dup2",
            SYS_ENTER_DUP3 = "sys_enter_dup3",
            SYS_ENTER_CLOSE_RANGE = "sys_enter_close_range",
            PROCESS_EXEC = "process_exec",
            PROCESS_EXIT = "process_exit",
            CONNECT_LOCAL = "connect_local",
            CONNECT_STATE = "connect_state",
            FLOW_SOCK_CREATE = "flow_sock_create",
            FLOW_SOCK_OPS = "flow_sock_ops",
            FLOW_SOCK_OPS_CONNECT = "flow_sock_ops_connect",
            FLOW_UDP_INGRESS = "flow_udp_ingress",
            FLOW_UDP_EGRESS = "flow_udp_egress",
            FLOW_RECEIVE_RESET = "flow_receive_reset",
            SSL_READ_ENTER = "ssl_read_enter",
            SSL_READ_EX_ENTER = "ssl_read_ex_enter",
            SSL_WRITE_ENTER = "ssl_write_enter",
            SSL_WRITE_EX_ENTER = "ssl_write_ex_enter",
            SSL_RETURN = "ssl_return",
        }
    }

    table! {
        /// Map names (`static` identifiers of `#[map]`/`#[btf_map]` items).
        map {
            CONNS = "CONNS",
            MUTED = "MUTED",
            EXCLUDED = "EXCLUDED",
            SOCK_TYPES = "SOCK_TYPES",
            EVENTS = "EVENTS",
            COUNTERS = "COUNTERS",
            RECENT = "RECENT",
            CONNECTING = "CONNECTING",
            CONNECT_SOCK = "CONNECT_SOCK",
            CONN_SEQ = "CONN_SEQ",
            SCRATCH = "SCRATCH",
            FRAMES = "FRAMES",
            WALK = "WALK",
            IOVEC_COPY = "IOVEC_COPY",
            SYSCALL_STARTS = "SYSCALL_STARTS",
            SYSCALL_STATS = "SYSCALL_STATS",
            FLOWS = "FLOWS",
            RESETS = "RESETS",
            FLOW_COUNTERS = "FLOW_COUNTERS",
            SOCKS = "SOCKS",
            TLS_CALLS = "TLS_CALLS",
            TLS_FDS = "TLS_FDS",
            TLS_LAST_READ = "TLS_LAST_READ",
            TLS_PENDING_WRITE = "TLS_PENDING_WRITE",
        }
    }

    table! {
        /// Load-time globals the loader rewrites (`EbpfLoader::override_global`).
        global {
            CONFIG = "CONFIG",
            FLOW_CONFIG = "FLOW_CONFIG",
            CONNECT_CONFIG = "CONNECT_CONFIG",
            SYSCALL_FILTER = "SYSCALL_FILTER",
        }
    }

    /// Every program, for checks over the whole table.
    pub const PROGRAMS: &[&str] = program::ALL;
    /// Every map, for checks over the whole table.
    pub const MAPS: &[&str] = map::ALL;
    /// Every load-time global.
    pub const GLOBALS: &[&str] = global::ALL;

    /// The name the kernel keeps for a program (`BPF_OBJ_NAME_LEN` is 16 with the NUL): what
    /// `bpftool prog` and `loaded_programs()` show.
    pub const fn kernel_name(name: &str) -> &[u8] {
        let bytes = name.as_bytes();
        if bytes.len() <= 15 {
            bytes
        } else {
            bytes.split_at(15).0
        }
    }
}
