//! `Exchange`: one request/response pair, the single type every protocol decoder produces.
//! Metrics and spans are both derived from it, so they always agree.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::protocol::http1::HttpExchange;
use crate::protocol::kafka::KafkaExchange;
use crate::protocol::postgres::PgExchange;

/// Which end of the connection the observed process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The process received the request and wrote the response.
    Server,
    /// The process wrote the request and read the response.
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// Who made the exchange: the process on this node, and the other end of the socket.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub process: Arc<crate::metadata::ProcessInfo>,
    /// The remote end of the socket, when known.
    pub peer: Option<SocketAddr>,
    /// The server's port: the local port for `Role::Server`, the peer's for `Role::Client`.
    pub server_port: Option<u16>,
    /// The thread whose read or write completed the exchange (for a server, the one that wrote
    /// the response; for a client, the one that read it), when known.
    pub tid: Option<u32>,
    /// The connection's id (unique while the agent runs).
    pub conn_id: u64,
    /// For a server exchange: the connection of the client end on this node, when Periscope
    /// sees it (its `conn_id`); the client exchange whose time holds this one is its caller.
    pub peer_conn: Option<u64>,
}

/// Protocol-specific attributes of an exchange.
#[derive(Clone, Debug)]
pub enum Detail {
    Http(HttpExchange),
    Kafka(KafkaExchange),
    Postgres(PostgresDetail),
}

/// One executed SQL statement, with the database its connection was opened on (when the
/// startup message was seen).
#[derive(Clone, Debug)]
pub struct PostgresDetail {
    pub statement: PgExchange,
    pub db_namespace: Option<String>,
}

impl Detail {
    /// (start, end) in `CLOCK_MONOTONIC` ns, as the decoder measured them.
    pub fn span(&self) -> (u64, u64) {
        match self {
            Detail::Http(h) => (h.start_ns, h.end_ns),
            Detail::Kafka(k) => (k.start_ns, k.end_ns),
            Detail::Postgres(p) => (p.statement.start_ns, p.statement.end_ns),
        }
    }
}

/// One request/response pair with kernel timings.
///
/// Timing semantics: a server exchange runs from the return of the read that brought the
/// request's first byte to the return of the write that sent the response's last byte; a
/// client exchange from the return of the write that sent the request's first byte to the
/// return of the read that brought the response's last byte. Every timestamp is taken when a
/// syscall returns (the bytes were handed to, or taken from, the kernel), so a client exchange
/// leaves out the duration of its first write syscall — microseconds, measured in
/// BENCHMARKS.md. Timestamps are `CLOCK_MONOTONIC` nanoseconds.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub role: Role,
    pub start_ns: u64,
    pub end_ns: u64,
    pub endpoint: Endpoint,
    pub detail: Detail,
}

impl Exchange {
    pub fn duration_seconds(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }
}
