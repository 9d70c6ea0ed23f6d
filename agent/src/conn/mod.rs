//! Per-connection state: protocol detection, ordered bytes into the decoder, exchanges out.
//!
//! The tracker is plain synchronous code driven by the ring-buffer reader, one event at a
//! time. It never touches the kernel itself: what it wants done there (switch a connection off,
//! forget a socket) is returned as `KernelAction`s for the capture layer to apply.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use agent_ebpf::{EventHeader, EventKind, DIR_INGRESS, ORIGIN_PROC};

use crate::exchange::{Detail, Endpoint, Exchange, Role};
use crate::metadata::{ProcessCache, ProcessInfo};
use crate::protocol::{Chunk, DecoderStats, Run, Shared, Stopped, Stream};

pub mod decoder;
pub mod listeners;
pub mod pieces;

use decoder::Decoder;
use pieces::Piece;

/// Data chunks a connection found in `/proc` may take to show a message boundary before it is
/// given up on: it may have been opened mid-body.
const PROC_DETECT_CHUNKS: u32 = 16;

/// Why a connection stopped being decoded (a self-metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MuteReason {
    UnknownProtocol,
    ParseError,
    Upgraded,
    /// The conversation switched to TLS: nothing left to read in clear text.
    Tls,
    /// Decoders together held more than `--decoder-memory-budget`: the connection that
    /// pushed them over stops being decoded, and its decoder is freed.
    MemoryBudget,
    /// Not watched (`--include-*`, `--exclude-*`).
    Excluded,
}

impl From<Stopped> for MuteReason {
    fn from(stopped: Stopped) -> Self {
        match stopped {
            Stopped::Upgraded => MuteReason::Upgraded,
            Stopped::Tls => MuteReason::Tls,
        }
    }
}

impl MuteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MuteReason::UnknownProtocol => "unknown_protocol",
            MuteReason::ParseError => "parse_error",
            MuteReason::Upgraded => "upgraded",
            MuteReason::Tls => "tls",
            MuteReason::MemoryBudget => "memory_budget",
            MuteReason::Excluded => "excluded",
        }
    }
}

/// Why a connection left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    Closed,
    ProcessExit,
    Expired,
    /// Its close event was lost (a full ring buffer): a new socket took its descriptor, or the
    /// descriptor is gone.
    CloseLost,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::ProcessExit => "process_exit",
            EndReason::Expired => "expired",
            EndReason::CloseLost => "close_lost",
        }
    }
}

/// What the tracker asks of the kernel side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelAction {
    /// Stop copying this connection's bytes (the socket `fd` of `tgid`, if it is still this
    /// connection when the action is carried out).
    Mute { tgid: u32, fd: i32, conn_id: u64 },
    /// As `Mute`, decided on socket bytes before any TLS plaintext was seen: it must not stop
    /// plaintext the kernel has started sending meanwhile (the kernel's entry wins). With
    /// `tls` the socket bytes were encrypted: only they stop, plaintext from the TLS uprobes
    /// keeps coming, and the process may need its probes (`tgid`).
    MuteSocket {
        tgid: u32,
        fd: i32,
        conn_id: u64,
        tls: bool,
    },
    /// Forget the socket (its process is gone).
    Forget { tgid: u32, fd: i32, conn_id: u64 },
    /// Track no new connection of `tgid` while it is in cgroup `cgroup_id` (it is not
    /// watched).
    Exclude { tgid: u32, cgroup_id: u64 },
    /// Forget an exclusion (the process is gone).
    Unexclude { tgid: u32 },
}

/// Everything the tracker reports to the sinks.
pub trait Sink {
    fn exchange(&mut self, exchange: &Exchange);
    /// A connection started being tracked: `accept`, `connect`, `proc` (found at start-up),
    /// `fork` (inherited by a child process) or `unknown` (its open event was lost).
    fn opened(&mut self, how: &'static str);
    fn ended(&mut self, reason: EndReason);
    fn muted(&mut self, reason: MuteReason);
    fn parse_error(&mut self, protocol: &'static str, reason: &'static str);
    fn decoder_stats(&mut self, protocol: &'static str, stats: DecoderStats);
    /// Something made a connection's numbers inexact beyond what its decoder counts itself
    /// (`events_lost`: framed events of it never arrived).
    fn inexact(&mut self, _protocol: &'static str, _reason: &'static str) {}
}

enum State {
    Detecting {
        chunks_seen: u32,
        /// The first bytes, held back while too few to recognise a protocol.
        held: Option<Box<Held>>,
    },
    Decoding {
        role: Role,
        decoder: Decoder,
    },
    Muted,
}

/// Bytes of one direction seen before the protocol was recognised (a server that reads a
/// 4-byte length prefix on its own, a client typing one byte at a time).
struct Held {
    ingress: bool,
    /// (timestamp, length) of each syscall's bytes, in order.
    pieces: Vec<(u64, usize)>,
    bytes: Vec<u8>,
}

/// Recognition needs at most this many bytes; fewer are held back, up to `HOLD_CHUNKS` reads.
const HOLD_BYTES: usize = 16;
const HOLD_CHUNKS: usize = 8;

enum Detection {
    /// Too few bytes yet: they are held.
    Undecided,
    /// Not a protocol Periscope decodes.
    Unknown,
    /// Recognised (the connection is now `Decoding`), with any bytes held before.
    Decided(Option<Box<Held>>),
}

/// Recognises the protocol of a connection still being detected; no-op for others.
fn detect(
    conn: &mut Conn,
    protocols: decoder::Protocols,
    ingress: bool,
    ts: u64,
    payload: &[u8],
    len: u64,
) -> Detection {
    let proc_role = conn.proc_role;
    let State::Detecting { chunks_seen, held } = &mut conn.state else {
        return Detection::Decided(None);
    };
    *chunks_seen += 1;
    let mid_stream = conn.mid_stream;
    // Held bytes only join bytes of the same direction; a reply means they were not a start.
    if held.as_ref().is_some_and(|h| h.ingress != ingress) {
        *held = None;
    }
    let joined: Vec<u8>;
    let candidate: &[u8] = match held {
        Some(h) => {
            joined = [h.bytes.as_slice(), payload].concat();
            &joined
        }
        None => payload,
    };
    let found = decoder::detect(candidate, ingress, mid_stream, protocols).or_else(|| {
        let role = proc_role.filter(|_| mid_stream)?;
        decoder::join_mid_stream(candidate, role, protocols)
    });
    match found {
        Some(found) => {
            if found.role == Role::Server && conn.origin == agent_ebpf::ORIGIN_CONNECT {
                // A connected socket serving requests (rare): the server port is ours.
                conn.server_port = None;
            }
            let held = held.take();
            conn.state = State::Decoding {
                role: found.role,
                decoder: found.decoder,
            };
            Detection::Decided(held)
        }
        None if candidate.len() < HOLD_BYTES
            && decoder::could_be_start(candidate, protocols)
            && len == payload.len() as u64
            && (*chunks_seen as usize) < HOLD_CHUNKS =>
        {
            let h = held.get_or_insert_with(|| {
                Box::new(Held {
                    ingress,
                    pieces: Vec::new(),
                    bytes: Vec::new(),
                })
            });
            h.pieces.push((ts, payload.len()));
            h.bytes.extend_from_slice(payload);
            Detection::Undecided
        }
        None if mid_stream && *chunks_seen < PROC_DETECT_CHUNKS => {
            *held = None;
            Detection::Undecided
        }
        None => Detection::Unknown,
    }
}

/// What feeding a decoder needs besides the connection.
struct FeedContext<'a> {
    scratch: &'a mut Vec<Detail>,
    shared: &'a mut Shared,
    sink: &'a mut dyn Sink,
    actions: &'a mut Vec<KernelAction>,
    conn_id: u64,
    clients: &'a Clients,
    memory: &'a mut DecoderMemory,
}

/// What all decoders hold together (the sum of each connection's last `heap_bytes`), and the
/// most they may (`--decoder-memory-budget`).
#[derive(Clone, Copy, Debug)]
pub struct DecoderMemory {
    pub held: usize,
    pub budget: usize,
}

/// Default `--decoder-memory-budget`: 64 MiB.
pub const DEFAULT_DECODER_MEMORY_BUDGET: usize = 64 << 20;

/// Feeds one piece of a syscall's bytes to a connection's decoder and reports what it
/// completed.
fn feed(conn: &mut Conn, ctx: &mut FeedContext<'_>, ingress: bool, ts: u64, piece: Piece<'_>) {
    let State::Decoding { role, decoder } = &mut conn.state else {
        return;
    };
    let role = *role;
    let stream = match (role, ingress) {
        (Role::Server, true) | (Role::Client, false) => Stream::Request,
        (Role::Server, false) | (Role::Client, true) => Stream::Response,
    };
    // Both directions are stamped when the syscall returned (see agent-ebpf's io.rs).
    ctx.scratch.clear();
    let result = match piece {
        Piece::Bytes { bytes, len } => {
            let chunk = Chunk {
                stream,
                first_ns: ts,
                last_ns: ts,
                bytes,
                len,
            };
            decoder.feed(&chunk, ctx.shared, ctx.scratch)
        }
        Piece::Run { kind, count, bytes } => {
            let run = Run {
                stream,
                first_ns: ts,
                last_ns: ts,
                kind,
                count,
                bytes,
            };
            decoder.skipped(&run, ctx.shared, ctx.scratch)
        }
        Piece::Lost => decoder.lost(stream, ts, ctx.shared, ctx.scratch),
    };
    let protocol = decoder.protocol();
    let now = decoder.heap_bytes();
    let stats = decoder.take_stats();
    if stats != DecoderStats::default() {
        ctx.sink.decoder_stats(protocol, stats);
    }
    let mute = match result {
        Err(reason) => {
            ctx.sink.parse_error(protocol, reason);
            Some(MuteReason::ParseError)
        }
        Ok(()) => decoder.stopped().map(MuteReason::from),
    };
    emit(conn, ctx.conn_id, ctx.clients, role, ctx.scratch, ctx.sink);
    // The budget: this decoder's share is updated after every feed; the connection that
    // takes the total over stops being decoded (its decoder, and what it held, is dropped).
    ctx.memory.held = ctx.memory.held - conn.held_bytes + now;
    conn.held_bytes = now;
    let mute = match mute {
        None if ctx.memory.held > ctx.memory.budget => Some(MuteReason::MemoryBudget),
        other => other,
    };
    if mute.is_some() {
        ctx.memory.held -= conn.held_bytes;
        conn.held_bytes = 0;
    }
    if let Some(reason) = mute {
        let action = conn.mute(ctx.conn_id, reason == MuteReason::Tls);
        ctx.actions.push(action);
        ctx.sink.muted(reason);
    }
}

struct Conn {
    tgid: u32,
    fd: i32,
    origin: u8,
    /// Found already open (in /proc, or inherited after bytes flowed): the first bytes seen
    /// may be anywhere in a conversation.
    mid_stream: bool,
    peer: Option<SocketAddr>,
    server_port: Option<u16>,
    /// The socket's own address, for client connections whose `Open` carried it.
    local: Option<SocketAddr>,
    process: Arc<ProcessInfo>,
    state: State,
    last_ns: u64,
    /// Thread of the latest read or write (0 before the first): the thread that completed the
    /// exchanges emitted from it.
    last_tid: u32,
    /// The `frame_seq` expected next on each syscall direction (ingress, egress), once a
    /// framed event was seen there.
    frame_seq: [Option<u32>; 2],
    /// This connection's share of `DecoderMemory::held`.
    held_bytes: usize,
    /// Its bytes come from the TLS uprobes (plaintext); socket bytes are ignored.
    tls: bool,
    /// Muted because its socket bytes are encrypted (plaintext may still come).
    cipher_muted: bool,
    /// Found open in `/proc` at start-up: the role its socket tells (a local port that
    /// listens is a server's).
    proc_role: Option<Role>,
    /// `/proc` checks that found its descriptor still a socket since its last bytes
    /// (`Tracker::expire_closed` backs off by it).
    close_checks: u16,
}

impl Conn {
    /// A connection still detecting its protocol, with no address known yet.
    fn new(
        tgid: u32,
        fd: i32,
        origin: u8,
        mid_stream: bool,
        process: Arc<ProcessInfo>,
        last_ns: u64,
    ) -> Conn {
        Conn {
            tgid,
            fd,
            origin,
            mid_stream,
            peer: None,
            server_port: None,
            local: None,
            process,
            state: State::Detecting {
                chunks_seen: 0,
                held: None,
            },
            last_ns,
            last_tid: 0,
            frame_seq: [None; 2],
            held_bytes: 0,
            tls: false,
            cipher_muted: false,
            proc_role: None,
            close_checks: 0,
        }
    }

    /// Stops decoding; `tls`: because its socket bytes are encrypted (plaintext may come).
    fn mute(&mut self, conn_id: u64, tls: bool) -> KernelAction {
        self.state = State::Muted;
        let (tgid, fd) = (self.tgid, self.fd);
        if self.tls {
            KernelAction::Mute { tgid, fd, conn_id }
        } else {
            self.cipher_muted = tls;
            KernelAction::MuteSocket {
                tgid,
                fd,
                conn_id,
                tls,
            }
        }
    }
}

/// Whether bytes start like a TLS record (handshake, alert, change cipher spec or
/// application data, version 3.x), or could (nginx peeks at one byte before its handshake).
fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(
        bytes,
        [0x14..=0x17] | [0x14..=0x17, 0x03] | [0x14..=0x17, 0x03, 0x00..=0x04, ..]
    )
}

/// All connections the agent decodes.
pub struct Tracker {
    /// By conn id (ids come from the kernel, so a fast non-keyed hash is fine).
    conns: FxHashMap<u64, Conn>,
    processes: ProcessCache,
    listeners: listeners::ListenerPorts,
    scratch: Vec<Detail>,
    /// What decoders learn on one connection and use on others (Kafka topic names by id).
    shared: Shared,
    protocols: decoder::Protocols,
    /// Client connections by their local address: a server connection whose peer is one of
    /// them is the other end of the same connection.
    clients: Clients,
    /// Client connections ended lately, still in `clients` for a while: the server end's last
    /// exchange may be reported after the client closed (a TLS server's write is stamped when
    /// `SSL_write` returns, after the client may have read the answer, closed and exited).
    closed_clients: std::collections::VecDeque<ClosedClient>,
    /// Conn id by (tgid, fd): a descriptor holds one socket at a time, so a new connection on
    /// it ends the old one, whose close event was lost.
    by_fd: FxHashMap<(u32, i32), u64>,
    /// Connections ended by `close_range` or `exec`, whose kernel entries go with the next
    /// actions: bytes still reported under their ids belong to whatever reused the descriptor
    /// and are dropped (a bounded FIFO).
    forgotten: Forgotten,
    memory: DecoderMemory,
    /// TLS plaintext written before its socket was known (memory BIOs), until bound.
    unbound: UnboundWrites,
    /// What is watched.
    selection: crate::selection::Selection,
    /// Processes excluded in the kernel, whose exclusion goes when they do.
    excluded: rustc_hash::FxHashSet<u32>,
}

/// `SslWriteUnbound` events waiting for the `TlsBind` that names their connection: at most
/// `UNBOUND_CAP` events and `UNBOUND_BYTES` payload bytes, each for `UNBOUND_KEPT_NS`.
#[derive(Default)]
struct UnboundWrites {
    order: std::collections::VecDeque<Unbound>,
    bytes: usize,
}

struct Unbound {
    /// (tgid, `SSL *`)
    key: (u32, u64),
    header: EventHeader,
    payload: Vec<u8>,
}

const UNBOUND_CAP: usize = 1024;
const UNBOUND_BYTES: usize = 1 << 20;
/// Long enough for a slow answer: the binding arrives with the `SSL *`'s next library call,
/// usually the read of the answer.
const UNBOUND_KEPT_NS: u64 = 30_000_000_000;

impl UnboundWrites {
    /// Holds one event; what falls out (too old at `header.ts_ns`, or beyond the bounds) is
    /// counted as lost.
    fn hold(&mut self, header: &EventHeader, payload: &[u8], sink: &mut dyn Sink) {
        let now = header.ts_ns;
        while let Some(front) = self.order.front() {
            let old = front.header.ts_ns.saturating_add(UNBOUND_KEPT_NS) < now;
            let full =
                self.order.len() >= UNBOUND_CAP || self.bytes + payload.len() > UNBOUND_BYTES;
            if !old && !full {
                break;
            }
            self.bytes -= front.payload.len();
            self.order.pop_front();
            sink.inexact("unknown", "tls_unbound_dropped");
        }
        self.bytes += payload.len();
        self.order.push_back(Unbound {
            key: (header.tgid, header.conn_id),
            header: *header,
            payload: payload.to_vec(),
        });
    }

    /// Takes the events of `SSL *` `ssl` of `tgid`, oldest first.
    fn take(&mut self, tgid: u32, ssl: u64) -> Vec<Unbound> {
        let mut taken = Vec::new();
        let mut kept = std::collections::VecDeque::with_capacity(self.order.len());
        for u in self.order.drain(..) {
            if u.key == (tgid, ssl) {
                self.bytes -= u.payload.len();
                taken.push(u);
            } else {
                kept.push_back(u);
            }
        }
        self.order = kept;
        taken
    }
}

/// The last `FORGOTTEN_CAP` conn ids ended by `close_range` or `exec`.
#[derive(Default)]
struct Forgotten {
    order: std::collections::VecDeque<u64>,
    ids: rustc_hash::FxHashSet<u64>,
}

const FORGOTTEN_CAP: usize = 4096;

/// A client connection ended at `ts_ns`, kept in `Tracker::clients` until `CLOSED_CLIENT_KEPT_NS`
/// later (or until `CLOSED_CLIENTS_CAP` newer ones ended).
struct ClosedClient {
    ts_ns: u64,
    local: SocketAddr,
    conn_id: u64,
}

const CLOSED_CLIENT_KEPT_NS: u64 = 1_000_000_000;
const CLOSED_CLIENTS_CAP: usize = 4096;

impl Forgotten {
    fn insert(&mut self, id: u64) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > FORGOTTEN_CAP {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }
}

/// Whether descriptor `fd` of `tgid` still holds a socket that an `exec` kept (not
/// close-on-exec). A socket the new program opened since would be close-on-exec in practice
/// (`SOCK_CLOEXEC` is every modern runtime's default), so it is not taken for the old one.
fn survives_exec(proc_root: &std::path::Path, tgid: u32, fd: i32) -> bool {
    const O_CLOEXEC: u32 = 0o2000000;
    let is_socket = std::fs::read_link(proc_root.join(format!("{tgid}/fd/{fd}")))
        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
    let flags = std::fs::read_to_string(proc_root.join(format!("{tgid}/fdinfo/{fd}")))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        });
    is_socket && flags.is_some_and(|f| f & O_CLOEXEC == 0)
}

impl Tracker {
    pub fn new(proc_root: &std::path::Path) -> Self {
        Tracker {
            conns: FxHashMap::default(),
            processes: ProcessCache::new(proc_root),
            listeners: listeners::ListenerPorts::new(proc_root),
            scratch: Vec::new(),
            shared: Shared::default(),
            protocols: decoder::Protocols::default(),
            clients: FxHashMap::default(),
            closed_clients: Default::default(),
            by_fd: FxHashMap::default(),
            forgotten: Forgotten::default(),
            unbound: UnboundWrites::default(),
            selection: crate::selection::Selection::default(),
            excluded: Default::default(),
            memory: DecoderMemory {
                held: 0,
                budget: DEFAULT_DECODER_MEMORY_BUDGET,
            },
        }
    }

    /// At most `bytes` held by all decoders together (`--decoder-memory-budget`).
    pub fn set_decoder_memory_budget(&mut self, bytes: usize) {
        self.memory.budget = bytes;
    }

    /// What all decoders hold now (an estimate, see `Decoder::heap_bytes`).
    pub fn decoder_memory(&self) -> usize {
        self.memory.held
    }

    /// Decodes only these protocols from now on.
    pub fn set_protocols(&mut self, protocols: decoder::Protocols) {
        self.protocols = protocols;
    }

    /// Watches only what `selection` admits from now on.
    pub fn set_selection(&mut self, selection: crate::selection::Selection) {
        self.selection = selection;
    }

    /// Judges a new connection by its process and server port: one not watched is muted,
    /// and a process not watched is excluded in the kernel (in `cgroup_id`, when known) so
    /// that its later connections are never copied.
    fn select(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        cgroup_id: u64,
        sink: &mut dyn Sink,
        actions: &mut Vec<KernelAction>,
    ) {
        use crate::selection::Verdict;
        match self.selection.judge(&conn.process, conn.server_port) {
            Verdict::Watch | Verdict::Undecided => return,
            // Every time: a tracked connection of an excluded process means the kernel's entry
            // is gone (an `exec` removed it) or names another cgroup.
            Verdict::ExcludeProcess if cgroup_id != 0 => {
                self.excluded.insert(conn.tgid);
                actions.push(KernelAction::Exclude {
                    tgid: conn.tgid,
                    cgroup_id,
                });
            }
            Verdict::ExcludeProcess | Verdict::ExcludeConnection => {}
        }
        actions.push(conn.mute(conn_id, false));
        sink.muted(MuteReason::Excluded);
    }

    /// Names processes' pods through `cluster` from now on.
    pub fn set_cluster(&mut self, cluster: Arc<dyn crate::metadata::ClusterView>) {
        self.processes.set_cluster(cluster);
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A connection that existed before start-up, found in `/proc` and registered in the kernel
    /// table by the capture layer.
    pub fn adopt(
        &mut self,
        conn_id: u64,
        found: &listeners::FoundSocket,
        sink: &mut dyn Sink,
        actions: &mut Vec<KernelAction>,
    ) {
        let process = self.processes.get(found.tgid, None);
        let server_port = if found.is_server {
            found.local.port()
        } else {
            found.remote.port()
        };
        self.claim_fd(found.tgid, found.fd, conn_id, 0, sink);
        let local = (!found.is_server).then_some(found.local);
        if let Some(local) = local {
            self.clients.insert(local, (conn_id, Some(server_port)));
        }
        let mut conn = Conn {
            peer: Some(found.remote),
            server_port: Some(server_port),
            local,
            proc_role: Some(if found.is_server {
                Role::Server
            } else {
                Role::Client
            }),
            ..Conn::new(found.tgid, found.fd, ORIGIN_PROC, true, process, 0)
        };
        sink.opened("proc");
        // The kernel's cgroup id is not known here: the process's next connection excludes it.
        self.select(conn_id, &mut conn, 0, sink, actions);
        self.conns.insert(conn_id, conn);
    }

    /// Handles one ring-buffer event. `payload` is the captured prefix (`cap_len` bytes).
    pub fn on_event(
        &mut self,
        header: &EventHeader,
        payload: &[u8],
        sink: &mut dyn Sink,
        actions: &mut Vec<KernelAction>,
    ) {
        match EventKind::from_u8(header.kind) {
            Some(EventKind::Open) => self.open(header, payload, sink, actions),
            Some(EventKind::Data) => self.data(header, payload, sink, actions),
            Some(EventKind::Close) => {
                if let Some(conn) = self.conns.remove(&header.conn_id) {
                    self.finish(header.conn_id, conn, header.ts_ns, EndReason::Closed, sink);
                }
            }
            Some(EventKind::ProcessExit) => {
                let (tgid, ts) = (header.tgid, Some(header.ts_ns));
                self.end_process(tgid, ts, EndReason::ProcessExit, sink, actions)
            }
            Some(EventKind::CloseRange) => {
                let (first, last) = (header.fd as u32, header.conn_id as u32);
                let closed = |fd: i32| (first..=last).contains(&(fd as u32));
                self.end_fds(header.tgid, header.ts_ns, closed, sink, actions);
            }
            Some(EventKind::Exec) => {
                let (tgid, root) = (header.tgid, self.processes_root());
                let closed = |fd: i32| !survives_exec(&root, tgid, fd);
                self.end_fds(tgid, header.ts_ns, closed, sink, actions);
                // A new program: named again from its new executable (and judged again: the
                // kernel dropped its exclusion).
                self.processes.forget(tgid);
                self.excluded.remove(&tgid);
            }
            None => {}
        }
    }

    fn open(
        &mut self,
        header: &EventHeader,
        payload: &[u8],
        sink: &mut dyn Sink,
        actions: &mut Vec<KernelAction>,
    ) {
        if header.syscall == agent_ebpf::Syscall::Fork as u8 {
            return self.inherit(header, payload, sink, actions);
        }
        let peer = parse_sockaddr(payload);
        let process = self
            .processes
            .get_in(header.tgid, open_comm(payload), header.cgroup_id);
        let server_port = match header.origin {
            agent_ebpf::ORIGIN_ACCEPT => self.listeners.port(header.tgid, header.listen_fd),
            _ => peer.map(|p| p.port()),
        };
        let local = match header.origin {
            agent_ebpf::ORIGIN_CONNECT => payload
                .get(agent_ebpf::OPEN_LOCAL_OFFSET..)
                .and_then(parse_sockaddr)
                .filter(|a| a.port() != 0),
            _ => None,
        };
        self.claim_fd(header.tgid, header.fd, header.conn_id, header.ts_ns, sink);
        if let Some(local) = local {
            self.clients.insert(local, (header.conn_id, server_port));
        }
        let mut conn = Conn {
            peer,
            server_port,
            local,
            ..Conn::new(
                header.tgid,
                header.fd,
                header.origin,
                false,
                process,
                header.ts_ns,
            )
        };
        sink.opened(origin_name(header.origin));
        self.select(header.conn_id, &mut conn, header.cgroup_id, sink, actions);
        self.conns.insert(header.conn_id, conn);
    }

    /// A child process inherited a tracked socket at fork: it continues its parent's
    /// connection (same peer and port, and muted if the parent's was).
    fn inherit(
        &mut self,
        header: &EventHeader,
        payload: &[u8],
        sink: &mut dyn Sink,
        actions: &mut Vec<KernelAction>,
    ) {
        let parent_id = payload
            .get(agent_ebpf::FORK_PARENT_OFFSET..agent_ebpf::FORK_PARENT_OFFSET + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes);
        let parent = parent_id.and_then(|id| self.conns.get(&id));
        let (peer, server_port, muted, cipher_muted, seen_data) = match parent {
            Some(p) => (
                p.peer,
                p.server_port,
                matches!(p.state, State::Muted),
                p.cipher_muted,
                !matches!(p.state, State::Detecting { chunks_seen: 0, .. }),
            ),
            None => (None, None, false, false, true),
        };
        self.claim_fd(header.tgid, header.fd, header.conn_id, header.ts_ns, sink);
        // A child that served and exited before we got here is still named after its parent.
        let process = self
            .processes
            .get_in(header.tgid, open_comm(payload), header.cgroup_id);
        // Bytes may already have flowed: detect like a connection found in /proc.
        let mid_stream = seen_data;
        let mut conn = Conn {
            peer,
            server_port,
            ..Conn::new(
                header.tgid,
                header.fd,
                header.origin,
                mid_stream,
                process,
                header.ts_ns,
            )
        };
        let mute = muted.then(|| conn.mute(header.conn_id, cipher_muted));
        sink.opened("fork");
        actions.extend(mute);
        if !muted {
            self.select(header.conn_id, &mut conn, header.cgroup_id, sink, actions);
        }
        self.conns.insert(header.conn_id, conn);
    }

    fn data(
        &mut self,
        header: &EventHeader,
        payload: &[u8],
        sink: &mut dyn Sink,
        actions: &mut Vec<KernelAction>,
    ) {
        if header.syscall == agent_ebpf::Syscall::SslWriteUnbound as u8 {
            return self.unbound.hold(header, payload, sink);
        }
        if header.syscall == agent_ebpf::Syscall::TlsBind as u8 {
            return self.tls_bind(header, payload, sink, actions);
        }
        if !self.conns.contains_key(&header.conn_id) {
            if self.forgotten.contains(header.conn_id) {
                return; // another file on a descriptor `close_range` or `exec` closed
            }
            self.claim_fd(header.tgid, header.fd, header.conn_id, header.ts_ns, sink);
        }
        let conn = match self.conns.get_mut(&header.conn_id) {
            Some(conn) => conn,
            None => {
                // The open event was lost (ring buffer full): decode what we can.
                let process = self.processes.get(header.tgid, None);
                sink.opened("unknown");
                let (tgid, fd, origin) = (header.tgid, header.fd, header.origin);
                let conn = Conn::new(tgid, fd, origin, true, process, header.ts_ns);
                self.conns.entry(header.conn_id).or_insert(conn)
            }
        };
        let plaintext = agent_ebpf::Syscall::is_tls(header.syscall);
        if plaintext != conn.tls {
            if !plaintext {
                return; // encrypted bytes of a connection whose plaintext is seen
            }
            // The first plaintext: the conversation starts again inside TLS (the kernel
            // restarted its framing too). A first plaintext that is an answer (a client
            // reading, a server writing) means the probes came late, after the conversation
            // began (a library probed once the process was seen speaking TLS): decode it as a
            // connection joined mid-stream.
            let answer =
                (conn.origin == agent_ebpf::ORIGIN_ACCEPT) != (header.direction == DIR_INGRESS);
            conn.mid_stream |= answer;
            self.memory.held -= conn.held_bytes;
            conn.held_bytes = 0;
            conn.tls = true;
            conn.cipher_muted = false;
            conn.frame_seq = [None; 2];
            conn.state = State::Detecting {
                chunks_seen: 0,
                held: None,
            };
        }
        conn.last_ns = header.ts_ns;
        conn.last_tid = header.tid;
        conn.close_checks = 0;
        if let Some(fresh) = self.processes.refreshed(&conn.process) {
            conn.process = fresh;
        }
        let ingress = header.direction == DIR_INGRESS;
        // Parsed once: detection reads the first piece, the decoder gets them all.
        let pieces = pieces::pieces(header, payload);
        let (prefix, len) = pieces::prefix(header, &pieces);
        let held = match detect(conn, self.protocols, ingress, header.ts_ns, prefix, len) {
            Detection::Undecided => return,
            Detection::Unknown => {
                let tls = !conn.tls && looks_like_tls(prefix);
                actions.push(conn.mute(header.conn_id, tls));
                sink.muted(if tls {
                    MuteReason::Tls
                } else {
                    MuteReason::UnknownProtocol
                });
                return;
            }
            Detection::Decided(held) => held,
        };
        let mut ctx = FeedContext {
            scratch: &mut self.scratch,
            shared: &mut self.shared,
            sink,
            actions,
            conn_id: header.conn_id,
            clients: &self.clients,
            memory: &mut self.memory,
        };
        // Bytes held back while the protocol was being recognised go first, in order.
        if let Some(held) = held {
            let mut at = 0;
            for (ts, n) in &held.pieces {
                let bytes = &held.bytes[at..at + n];
                at += n;
                let piece = Piece::Bytes {
                    bytes,
                    len: *n as u64,
                };
                feed(conn, &mut ctx, held.ingress, *ts, piece);
            }
        }
        if pieces::is_framed(header) {
            let direction = usize::from(!ingress);
            let lost = conn.frame_seq[direction].is_some_and(|next| next != header.frame_seq);
            conn.frame_seq[direction] = Some(header.frame_seq.wrapping_add(1));
            if lost {
                if let State::Decoding { decoder, .. } = &conn.state {
                    ctx.sink.inexact(decoder.protocol(), "events_lost");
                }
                feed(conn, &mut ctx, ingress, header.ts_ns, Piece::Lost);
            }
        }
        for &piece in pieces.iter() {
            if !matches!(conn.state, State::Decoding { .. }) {
                break;
            }
            feed(conn, &mut ctx, ingress, header.ts_ns, piece);
        }
    }

    /// The `SSL *` in `payload` writes to `header`'s connection: its held plaintext is
    /// decoded there, in order, as if the library had written to the socket itself.
    fn tls_bind(
        &mut self,
        header: &EventHeader,
        payload: &[u8],
        sink: &mut dyn Sink,
        actions: &mut Vec<KernelAction>,
    ) {
        let Some(ssl) = payload.get(..8).and_then(|b| b.try_into().ok()) else {
            return;
        };
        for held in self.unbound.take(header.tgid, u64::from_ne_bytes(ssl)) {
            let mut h = held.header;
            h.conn_id = header.conn_id;
            h.fd = header.fd;
            h.origin = header.origin;
            h.syscall = agent_ebpf::Syscall::SslWrite as u8;
            self.data(&h, &held.payload, sink, actions);
        }
    }

    fn finish(
        &mut self,
        conn_id: u64,
        mut conn: Conn,
        ts_ns: u64,
        reason: EndReason,
        sink: &mut dyn Sink,
    ) {
        if self.by_fd.get(&(conn.tgid, conn.fd)) == Some(&conn_id) {
            self.by_fd.remove(&(conn.tgid, conn.fd));
        }
        self.memory.held -= conn.held_bytes;
        conn.held_bytes = 0;
        self.forget_closed_clients(ts_ns);
        if let Some(local) = conn.local {
            self.closed_clients.push_back(ClosedClient {
                ts_ns,
                local,
                conn_id,
            });
        }
        if let State::Decoding { role, decoder } = &mut conn.state {
            let role = *role;
            self.scratch.clear();
            decoder.close(ts_ns, &mut self.shared, &mut self.scratch);
            let stats = decoder.take_stats();
            if stats != DecoderStats::default() {
                sink.decoder_stats(decoder.protocol(), stats);
            }
            emit(&conn, conn_id, &self.clients, role, &mut self.scratch, sink);
        }
        sink.ended(reason);
    }

    /// Drops from `clients` the ended client connections kept long enough (as of `now_ns`).
    fn forget_closed_clients(&mut self, now_ns: u64) {
        while let Some(front) = self.closed_clients.front() {
            let expired = front.ts_ns.saturating_add(CLOSED_CLIENT_KEPT_NS) < now_ns;
            if !expired && self.closed_clients.len() < CLOSED_CLIENTS_CAP {
                break;
            }
            if self.clients.get(&front.local).map(|(id, _)| *id) == Some(front.conn_id) {
                self.clients.remove(&front.local);
            }
            self.closed_clients.pop_front();
        }
    }

    /// Ends every connection of `tgid` for `reason`, at `ts_ns` or (None) at each one's last
    /// activity; asks the kernel to forget them, and forgets the process.
    fn end_process(
        &mut self,
        tgid: u32,
        ts_ns: Option<u64>,
        reason: EndReason,
        sink: &mut dyn Sink,
        actions: &mut Vec<KernelAction>,
    ) {
        let at = |conn: &Conn| ts_ns.unwrap_or(conn.last_ns);
        self.end_where(tgid, |_| true, at, reason, sink, actions);
        self.processes.forget(tgid);
        self.listeners.forget(tgid);
        if self.excluded.remove(&tgid) {
            actions.push(KernelAction::Unexclude { tgid });
        }
    }

    /// Ends the connections of `tgid` whose descriptor `closed` says is gone (`close_range`,
    /// `exec`), asks the kernel to forget them, and drops bytes still reported under their ids.
    fn end_fds(
        &mut self,
        tgid: u32,
        ts_ns: u64,
        closed: impl Fn(i32) -> bool,
        sink: &mut dyn Sink,
        actions: &mut Vec<KernelAction>,
    ) {
        let at = |conn: &Conn| ts_ns.max(conn.last_ns);
        for id in self.end_where(tgid, closed, at, EndReason::Closed, sink, actions) {
            self.forgotten.insert(id);
        }
    }

    /// Ends the connections of `tgid` on descriptors `fd_matches` accepts, each at `at(conn)`,
    /// and asks the kernel to forget them; returns their ids.
    fn end_where(
        &mut self,
        tgid: u32,
        fd_matches: impl Fn(i32) -> bool,
        at: impl Fn(&Conn) -> u64,
        reason: EndReason,
        sink: &mut dyn Sink,
        actions: &mut Vec<KernelAction>,
    ) -> Vec<u64> {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.tgid == tgid && fd_matches(c.fd))
            .map(|(id, _)| *id)
            .collect();
        for &id in &ids {
            if let Some(conn) = self.conns.remove(&id) {
                actions.push(KernelAction::Forget {
                    tgid,
                    fd: conn.fd,
                    conn_id: id,
                });
                let ts = at(&conn);
                self.finish(id, conn, ts, reason, sink);
            }
        }
        ids
    }

    /// Makes `conn_id` the connection on (tgid, fd); one that held the descriptor before lost
    /// its close event, and ends now.
    fn claim_fd(&mut self, tgid: u32, fd: i32, conn_id: u64, ts_ns: u64, sink: &mut dyn Sink) {
        let Some(old) = self.by_fd.insert((tgid, fd), conn_id) else {
            return;
        };
        if old == conn_id {
            return;
        }
        if let Some(conn) = self.conns.remove(&old) {
            let ts = ts_ns.max(conn.last_ns);
            self.finish(old, conn, ts, EndReason::CloseLost, sink);
            self.by_fd.insert((tgid, fd), conn_id);
        }
    }

    /// Ends connections idle for `idle_ns` whose descriptor no longer holds a socket in
    /// `/proc` (their close event was lost and no new socket took the descriptor). `now_ns` is
    /// `CLOCK_MONOTONIC`, the kernel's event clock.
    pub fn expire_closed(&mut self, now_ns: u64, idle_ns: u64, sink: &mut dyn Sink) {
        let root = self.processes_root();
        let mut gone = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            let idle = now_ns.saturating_sub(c.last_ns);
            if idle < close_check_due(idle_ns, c.close_checks) {
                continue;
            }
            let link = root.join(format!("{}/fd/{}", c.tgid, c.fd));
            if std::fs::read_link(link).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")) {
                c.close_checks = c.close_checks.saturating_add(1);
                continue;
            }
            // An exited process is `expire_dead`'s business.
            if root.join(c.tgid.to_string()).exists() {
                gone.push(*id);
            }
        }
        for id in gone {
            if let Some(conn) = self.conns.remove(&id) {
                let last = conn.last_ns;
                self.finish(id, conn, last, EndReason::CloseLost, sink);
            }
        }
    }

    /// Drops connections of processes that no longer exist (their exit event was lost).
    pub fn expire_dead(&mut self, sink: &mut dyn Sink, actions: &mut Vec<KernelAction>) {
        let root = self.processes_root();
        // One look per process, not per connection (10,000 connections of 1,000 processes).
        let mut dead: Vec<u32> = self.conns.values().map(|c| c.tgid).collect();
        dead.sort_unstable();
        dead.dedup();
        dead.retain(|tgid| !root.join(tgid.to_string()).exists());
        for tgid in dead {
            self.end_process(tgid, None, EndReason::Expired, sink, actions);
        }
        self.processes.retain_alive();
    }

    fn processes_root(&self) -> std::path::PathBuf {
        self.listeners.proc_root().to_path_buf()
    }
}

/// How long a connection must have been idle for its `checks + 1`-th `/proc` check: `idle_ns`,
/// then twice as long after each check that found it open, up to 32 times, then every
/// 16 × `idle_ns` more (5 s, 10, 20, 40, 80, 160, 240, 320 s… with the reader's 5 s). A close
/// event is lost only when the ring buffer overflowed; checking every idle connection every
/// 5 s cost 40 ms of CPU a second at 20,000 idle sockets (`bench scale`).
fn close_check_due(idle_ns: u64, checks: u16) -> u64 {
    let factor = if checks < 5 {
        1u64 << checks
    } else {
        16 * (u64::from(checks) - 3)
    };
    idle_ns.saturating_mul(factor)
}

/// Client connections by their local address, with the server port they connect to.
type Clients = FxHashMap<SocketAddr, (u64, Option<u16>)>;

/// For a server connection, the client connection on this node that is its other end.
fn peer_conn(conn: &Conn, clients: &Clients) -> Option<u64> {
    if conn.local.is_some() {
        return None;
    }
    let (id, server_port) = clients.get(&conn.peer?)?;
    (server_port.is_some() && *server_port == conn.server_port).then_some(*id)
}

/// Reports the exchanges a connection completed. A server exchange names the client end of its
/// connection on this node, looked up only when there is an exchange to report.
fn emit(
    conn: &Conn,
    conn_id: u64,
    clients: &Clients,
    role: Role,
    details: &mut Vec<Detail>,
    sink: &mut dyn Sink,
) {
    if details.is_empty() {
        return;
    }
    let peer_conn = match role {
        Role::Server => peer_conn(conn, clients),
        Role::Client => None,
    };
    for detail in details.drain(..) {
        let (start_ns, end_ns) = detail.span();
        let exchange = Exchange {
            role,
            start_ns,
            end_ns,
            endpoint: Endpoint {
                process: conn.process.clone(),
                peer: conn.peer,
                server_port: conn.server_port,
                tid: (conn.last_tid != 0).then_some(conn.last_tid),
                conn_id,
                peer_conn,
                tls: conn.tls,
            },
            detail,
        };
        sink.exchange(&exchange);
    }
}

/// The task name the kernel put in an `Open` event, if any.
fn open_comm(payload: &[u8]) -> Option<&str> {
    payload
        .get(agent_ebpf::OPEN_COMM_OFFSET..agent_ebpf::OPEN_PAYLOAD_LEN)
        .map(|c| c.split(|&b| b == 0).next().unwrap_or_default())
        .and_then(|c| std::str::from_utf8(c).ok())
        .filter(|c| !c.is_empty())
}

fn origin_name(origin: u8) -> &'static str {
    match origin {
        agent_ebpf::ORIGIN_ACCEPT => "accept",
        agent_ebpf::ORIGIN_CONNECT => "connect",
        ORIGIN_PROC => "proc",
        _ => "unknown",
    }
}

/// Parses a `sockaddr_in`/`sockaddr_in6` as the kernel copied it from user memory.
pub fn parse_sockaddr(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?);
    match family {
        2 => {
            let ip: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        10 => {
            let ip: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            let ip = Ipv6Addr::from(ip);
            // IPv4-mapped peers of dual-stack listeners read better as IPv4.
            let ip = ip
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(ip));
            Some(SocketAddr::new(ip, port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
