//! `Exchange`: one request/response pair, the single type every protocol decoder produces.
//! Metrics and spans are both derived from it, so they always agree.
//!
//! # Protocol-neutral view
//! The semantic-convention values both sinks need are computed here, once: the operation
//! ([`Exchange::operation`]: normalised HTTP method, SQL operation, Kafka `send`/`receive`/API),
//! the target ([`Exchange::target`]: route, collection, topic), `error.type`
//! ([`Exchange::error_type`]: HTTP status by role, SQLSTATE, Kafka error name), the request and
//! response sizes, whether the exchange is complete, what a Kafka exchange does with messages
//! ([`Exchange::message_flow`]) and the server's address. A sink that needs a value the view
//! does not give reads the protocol's detail, and the value then belongs to that sink alone.
//!
//! Both sinks name a Kafka exchange by this operation: a Produce is
//! `messaging_operation_name="send"` on metrics and `messaging.operation.name` `send` (type
//! `send`, span `send {topic}`) on spans; the spans keep the API name (`Produce`) in
//! `periscope.kafka.api_name`.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::protocol::http1::HttpExchange;
use crate::protocol::kafka::{errors as kafka_errors, KafkaExchange};
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
    /// The bytes were TLS plaintext (from the TLS uprobes): HTTPS, PostgreSQL or Kafka over
    /// SSL.
    pub tls: bool,
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

impl Exchange {
    /// The operation: the normalised HTTP method ([`normalize_method`]), the SQL operation
    /// (`db.operation.name`), or for Kafka `send` (Produce), `receive` (Fetch), else the API
    /// name (`messaging.operation.name` of the metrics).
    pub fn operation(&self) -> &str {
        match &self.detail {
            Detail::Http(h) => normalize_method(&h.method),
            Detail::Postgres(p) => &p.statement.operation,
            Detail::Kafka(k) => message_flow(k).map_or(k.api_name, MessageFlow::as_str),
        }
    }

    /// What the operation acts on: the HTTP route (`None` when there is none), the SQL
    /// statement's main table, or the first Kafka topic that has a name.
    pub fn target(&self) -> Option<&str> {
        match &self.detail {
            Detail::Http(h) => (!h.route.is_empty()).then_some(h.route.as_str()),
            Detail::Postgres(p) => p.statement.collection.as_deref(),
            Detail::Kafka(k) => k.topics.iter().find_map(|t| t.name.as_deref()),
        }
    }

    /// `error.type` of a failed exchange, `None` for a successful one: the HTTP status code
    /// when it is 5xx (server) or 4xx and 5xx (client), as the conventions ask; the SQLSTATE;
    /// the Kafka error name of the exchange's error code ([`kafka_errors::error_type`]).
    pub fn error_type(&self) -> Option<Cow<'_, str>> {
        match &self.detail {
            Detail::Http(h) => match &h.grpc {
                // gRPC answers with HTTP 200; the call's own status says whether it failed.
                Some(g) => g.failed(self.role == Role::Server).then(|| match g.status {
                    Some(_) => g.status_name(),
                    None => Cow::Borrowed("_OTHER"),
                }),
                None => {
                    let failed = match self.role {
                        Role::Server => h.status >= 500,
                        Role::Client => h.status >= 400 || h.status == 0,
                    };
                    failed.then(|| Cow::Owned(h.status.to_string()))
                }
            },
            Detail::Postgres(p) => p.statement.error_sqlstate.as_deref().map(Cow::Borrowed),
            Detail::Kafka(k) => kafka_errors::error_type(k.error_code),
        }
    }

    /// Bytes of the request: the HTTP body (chunked framing excluded), the PostgreSQL frontend
    /// messages, the Kafka frame.
    pub fn request_size(&self) -> u64 {
        match &self.detail {
            Detail::Http(h) => h.request_body_bytes,
            Detail::Postgres(p) => p.statement.request_bytes,
            Detail::Kafka(k) => k.request_bytes,
        }
    }

    /// Bytes of the response, counted as [`Exchange::request_size`] counts the request's.
    pub fn response_size(&self) -> u64 {
        match &self.detail {
            Detail::Http(h) => h.response_body_bytes,
            Detail::Postgres(p) => p.statement.response_bytes,
            Detail::Kafka(k) => k.response_bytes,
        }
    }

    /// The `protocol` label of self-metrics: the decoder's [`Decoder::PROTOCOL`].
    ///
    /// [`Decoder::PROTOCOL`]: crate::protocol::Decoder::PROTOCOL
    pub fn protocol_label(&self) -> &'static str {
        use crate::protocol::http::HttpVersion;
        use crate::protocol::Decoder;
        use crate::protocol::{http1::Http1Decoder, http2::Http2Decoder};
        use crate::protocol::{kafka::KafkaDecoder, postgres::PgDecoder};
        match &self.detail {
            Detail::Http(h) if h.version == HttpVersion::Http2 => Http2Decoder::PROTOCOL,
            Detail::Http(_) => Http1Decoder::PROTOCOL,
            Detail::Postgres(_) => PgDecoder::PROTOCOL,
            Detail::Kafka(_) => KafkaDecoder::PROTOCOL,
        }
    }

    /// The exchange's stream on a multiplexed connection (HTTP/2), 0 elsewhere.
    pub fn stream_id(&self) -> u32 {
        match &self.detail {
            Detail::Http(h) => h.stream_id.unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether the whole response was seen: false when the connection closed while it was
    /// coming, or a capture gap cut what the decoder reads of it (the exchange is inexact).
    pub fn complete(&self) -> bool {
        match &self.detail {
            Detail::Http(h) => h.complete,
            Detail::Postgres(p) => p.statement.complete,
            Detail::Kafka(k) => k.complete,
        }
    }

    /// For a Kafka exchange, whether it sends or receives messages (`None` for other APIs and
    /// other protocols).
    pub fn message_flow(&self) -> Option<MessageFlow> {
        match &self.detail {
            Detail::Kafka(k) => message_flow(k),
            _ => None,
        }
    }

    /// The server's IP address as the socket shows it: the peer of a client exchange; `None`
    /// for a server exchange (the server is this process) or when the peer is unknown.
    pub fn server_ip(&self) -> Option<IpAddr> {
        match self.role {
            Role::Client => self.endpoint.peer.map(|p| p.ip()),
            Role::Server => None,
        }
    }
}

/// What a Kafka exchange does with messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageFlow {
    /// Produce: the client sends records to the broker.
    Send,
    /// Fetch: the client receives records from the broker.
    Receive,
}

impl MessageFlow {
    /// `send` or `receive`: both the operation (`messaging.operation.name`) and its type
    /// (`messaging.operation.type`) in the messaging conventions.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageFlow::Send => "send",
            MessageFlow::Receive => "receive",
        }
    }
}

fn message_flow(k: &KafkaExchange) -> Option<MessageFlow> {
    match k.api_key {
        0 => Some(MessageFlow::Send),
        1 => Some(MessageFlow::Receive),
        _ => None,
    }
}

/// The value of `http.request.method` for a method: the nine methods of RFC 9110 and PATCH
/// as they are, anything else [`OTHER_METHOD`] (the conventions ask it; it bounds cardinality).
pub fn normalize_method(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => OTHER_METHOD,
    }
}

/// `http.request.method` of a method the conventions do not know.
pub const OTHER_METHOD: &str = "_OTHER";

#[cfg(test)]
pub mod testkit;
#[cfg(test)]
mod tests;
