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
use crate::protocol::http1::DecoderStats;
use crate::protocol::{Chunk, Stream};

pub mod decoder;
pub mod listeners;

use decoder::Decoder;

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
}

impl MuteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MuteReason::UnknownProtocol => "unknown_protocol",
            MuteReason::ParseError => "parse_error",
            MuteReason::Upgraded => "upgraded",
            MuteReason::Tls => "tls",
        }
    }
}

/// Why a connection left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    Closed,
    ProcessExit,
    Expired,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::ProcessExit => "process_exit",
            EndReason::Expired => "expired",
        }
    }
}

/// What the tracker asks of the kernel side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelAction {
    /// Stop copying this connection's bytes.
    Mute { conn_id: u64 },
    /// Forget the socket (its process is gone).
    Forget { tgid: u32, fd: i32, conn_id: u64 },
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
}

enum State {
    Detecting { chunks_seen: u32 },
    Decoding { role: Role, decoder: Decoder },
    Muted,
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
    process: Arc<ProcessInfo>,
    state: State,
    last_ns: u64,
}

/// All connections the agent decodes.
pub struct Tracker {
    /// By conn id (ids come from the kernel, so a fast non-keyed hash is fine).
    conns: FxHashMap<u64, Conn>,
    processes: ProcessCache,
    listeners: listeners::ListenerPorts,
    scratch: Vec<Detail>,
}

impl Tracker {
    pub fn new(proc_root: &std::path::Path) -> Self {
        Tracker {
            conns: FxHashMap::default(),
            processes: ProcessCache::new(proc_root),
            listeners: listeners::ListenerPorts::new(proc_root),
            scratch: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A connection that existed before start-up, found in `/proc` and registered in the kernel
    /// table by the capture layer.
    pub fn adopt(&mut self, conn_id: u64, found: &listeners::FoundSocket, sink: &mut dyn Sink) {
        let process = self.processes.get(found.tgid, None);
        let server_port = if found.is_server {
            found.local.port()
        } else {
            found.remote.port()
        };
        self.conns.insert(
            conn_id,
            Conn {
                tgid: found.tgid,
                fd: found.fd,
                origin: ORIGIN_PROC,
                mid_stream: true,
                peer: Some(found.remote),
                server_port: Some(server_port),
                process,
                state: State::Detecting { chunks_seen: 0 },
                last_ns: 0,
            },
        );
        sink.opened("proc");
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
                    self.finish(conn, header.ts_ns, EndReason::Closed, sink);
                }
            }
            Some(EventKind::ProcessExit) => {
                self.process_exit(header.tgid, header.ts_ns, sink, actions)
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
        let comm = payload
            .get(agent_ebpf::OPEN_COMM_OFFSET..agent_ebpf::OPEN_PAYLOAD_LEN)
            .map(|c| c.split(|&b| b == 0).next().unwrap_or_default())
            .and_then(|c| std::str::from_utf8(c).ok())
            .filter(|c| !c.is_empty());
        let process = self.processes.get(header.tgid, comm);
        let server_port = match header.origin {
            agent_ebpf::ORIGIN_ACCEPT => self.listeners.port(header.tgid, header.listen_fd),
            _ => peer.map(|p| p.port()),
        };
        self.conns.insert(
            header.conn_id,
            Conn {
                tgid: header.tgid,
                fd: header.fd,
                origin: header.origin,
                mid_stream: false,
                peer,
                server_port,
                process,
                state: State::Detecting { chunks_seen: 0 },
                last_ns: header.ts_ns,
            },
        );
        sink.opened(origin_name(header.origin));
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
        let (peer, server_port, muted, seen_data) = match parent {
            Some(p) => (
                p.peer,
                p.server_port,
                matches!(p.state, State::Muted),
                !matches!(p.state, State::Detecting { chunks_seen: 0 }),
            ),
            None => (None, None, false, true),
        };
        let process = self.processes.get(header.tgid, None);
        self.conns.insert(
            header.conn_id,
            Conn {
                tgid: header.tgid,
                fd: header.fd,
                origin: header.origin,
                peer,
                server_port,
                process,
                // Bytes may already have flowed: detect like a connection found in /proc.
                mid_stream: seen_data,
                state: if muted {
                    State::Muted
                } else {
                    State::Detecting { chunks_seen: 0 }
                },
                last_ns: header.ts_ns,
            },
        );
        sink.opened("fork");
        if muted {
            actions.push(KernelAction::Mute {
                conn_id: header.conn_id,
            });
        }
    }

    fn data(
        &mut self,
        header: &EventHeader,
        payload: &[u8],
        sink: &mut dyn Sink,
        actions: &mut Vec<KernelAction>,
    ) {
        let conn = match self.conns.get_mut(&header.conn_id) {
            Some(conn) => conn,
            None => {
                // The open event was lost (ring buffer full): decode what we can.
                let process = self.processes.get(header.tgid, None);
                sink.opened("unknown");
                self.conns.entry(header.conn_id).or_insert(Conn {
                    tgid: header.tgid,
                    fd: header.fd,
                    origin: header.origin,
                    mid_stream: true,
                    peer: None,
                    server_port: None,
                    process,
                    state: State::Detecting { chunks_seen: 0 },
                    last_ns: header.ts_ns,
                })
            }
        };
        conn.last_ns = header.ts_ns;
        let ingress = header.direction == DIR_INGRESS;
        if let State::Detecting { chunks_seen } = &mut conn.state {
            *chunks_seen += 1;
            let mid_stream = conn.mid_stream;
            match decoder::detect(payload, ingress, mid_stream) {
                Some(found) => {
                    if found.role == Role::Server && conn.origin == agent_ebpf::ORIGIN_CONNECT {
                        // A connected socket serving requests (rare): the server port is ours.
                        conn.server_port = None;
                    }
                    conn.state = State::Decoding {
                        role: found.role,
                        decoder: found.decoder,
                    }
                }
                None if mid_stream && *chunks_seen < PROC_DETECT_CHUNKS => return,
                None => {
                    conn.state = State::Muted;
                    actions.push(KernelAction::Mute {
                        conn_id: header.conn_id,
                    });
                    sink.muted(MuteReason::UnknownProtocol);
                    return;
                }
            }
        }
        let State::Decoding { role, decoder } = &mut conn.state else {
            return;
        };
        let role = *role;
        let stream = match (role, ingress) {
            (Role::Server, true) | (Role::Client, false) => Stream::Request,
            (Role::Server, false) | (Role::Client, true) => Stream::Response,
        };
        // Both directions are stamped when the syscall returned (see agent-ebpf's io.rs).
        let chunk = Chunk {
            stream,
            first_ns: header.ts_ns,
            last_ns: header.ts_ns,
            bytes: payload,
            len: header.ret_len.max(0) as u64,
        };
        self.scratch.clear();
        let result = decoder.feed(&chunk, &mut self.scratch);
        let protocol = decoder.protocol();
        let stats = decoder.take_stats();
        if stats != DecoderStats::default() {
            sink.decoder_stats(protocol, stats);
        }
        let mute = match result {
            Err(reason) => {
                sink.parse_error(protocol, reason);
                Some(MuteReason::ParseError)
            }
            Ok(()) => decoder.stopped(),
        };
        emit(conn, role, &mut self.scratch, sink);
        if let Some(reason) = mute {
            conn.state = State::Muted;
            actions.push(KernelAction::Mute {
                conn_id: header.conn_id,
            });
            sink.muted(reason);
        }
    }

    fn finish(&mut self, mut conn: Conn, ts_ns: u64, reason: EndReason, sink: &mut dyn Sink) {
        if let State::Decoding { role, decoder } = &mut conn.state {
            let role = *role;
            self.scratch.clear();
            decoder.close(ts_ns, &mut self.scratch);
            let stats = decoder.take_stats();
            if stats != DecoderStats::default() {
                sink.decoder_stats(decoder.protocol(), stats);
            }
            emit(&conn, role, &mut self.scratch, sink);
        }
        sink.ended(reason);
    }

    fn process_exit(
        &mut self,
        tgid: u32,
        ts_ns: u64,
        sink: &mut dyn Sink,
        actions: &mut Vec<KernelAction>,
    ) {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.tgid == tgid)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(conn) = self.conns.remove(&id) {
                actions.push(KernelAction::Forget {
                    tgid,
                    fd: conn.fd,
                    conn_id: id,
                });
                self.finish(conn, ts_ns, EndReason::ProcessExit, sink);
            }
        }
        self.processes.forget(tgid);
        self.listeners.forget(tgid);
    }

    /// Drops connections of processes that no longer exist (their exit event was lost).
    pub fn expire_dead(&mut self, sink: &mut dyn Sink, actions: &mut Vec<KernelAction>) {
        let root = self.processes_root();
        let mut dead: Vec<u32> = self
            .conns
            .values()
            .map(|c| c.tgid)
            .filter(|tgid| !root.join(tgid.to_string()).exists())
            .collect();
        dead.sort_unstable();
        dead.dedup();
        for tgid in dead {
            let ids: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| c.tgid == tgid)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(conn) = self.conns.remove(&id) {
                    let last = conn.last_ns;
                    actions.push(KernelAction::Forget {
                        tgid,
                        fd: conn.fd,
                        conn_id: id,
                    });
                    self.finish(conn, last, EndReason::Expired, sink);
                }
            }
            self.processes.forget(tgid);
            self.listeners.forget(tgid);
        }
        self.processes.retain_alive();
    }

    fn processes_root(&self) -> std::path::PathBuf {
        self.listeners.proc_root().to_path_buf()
    }
}

fn emit(conn: &Conn, role: Role, details: &mut Vec<Detail>, sink: &mut dyn Sink) {
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
            },
            detail,
        };
        sink.exchange(&exchange);
    }
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
