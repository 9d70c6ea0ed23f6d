//! What HTTP/1.x and HTTP/2 have in common once decoded: one request/response pair
//! ([`HttpExchange`]), whichever framing carried it, and for gRPC the call it was
//! ([`GrpcCall`]). The sinks know HTTP through this type only.

/// Method of a request whose request line (HTTP/1) or header block (HTTP/2) was not seen.
pub const UNKNOWN_METHOD: &str = "UNKNOWN";

/// The HTTP version an exchange used (`network.protocol.version`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http10,
    #[default]
    Http11,
    Http2,
}

impl HttpVersion {
    /// The `network.protocol.version` value: "1.0", "1.1", "2".
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "1.0",
            HttpVersion::Http11 => "1.1",
            HttpVersion::Http2 => "2",
        }
    }
}

/// The gRPC call an HTTP/2 exchange carried (`content-type: application/grpc*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCall {
    /// `rpc.service`: the fully qualified service of `:path` `/package.Service/Method`.
    pub service: String,
    /// `rpc.method`.
    pub method: String,
    /// `rpc.grpc.status_code`: from the `grpc-status` trailer (or a Trailers-Only response),
    /// else mapped from the `RST_STREAM` that ended the call (CANCELLED, or DEADLINE_EXCEEDED
    /// when the request's `grpc-timeout` had run out); `None` when neither was seen.
    pub status: Option<u32>,
}

/// One HTTP request/response pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    /// As sent, e.g. "GET"; non-standard tokens allowed, cut to 16 characters.
    /// [`UNKNOWN_METHOD`] when the request's head was lost in a capture gap.
    pub method: String,
    /// Request-target path without query string or fragment, cut to 256 bytes. `*` for
    /// `OPTIONS *`, the `host:port` authority for `CONNECT`, empty when unknown.
    pub path: String,
    /// Low-cardinality template from [`super::route::template`]; empty for `CONNECT` and when
    /// the path is unknown. For gRPC the path itself (`/package.Service/Method`).
    pub route: String,
    /// 0 when no status was seen (an HTTP/2 stream reset before its response head).
    pub status: u16,
    /// `first_ns` of the chunk holding the first request byte.
    pub start_ns: u64,
    /// `last_ns` of the chunk holding the last response byte (see each decoder's docs for
    /// responses cut by close or held across a resync).
    pub end_ns: u64,
    /// Body payload bytes (HTTP/1 chunked framing and HTTP/2 padding excluded), including bytes
    /// skipped in gaps.
    pub request_body_bytes: u64,
    /// Body payload bytes, counted as `request_body_bytes`.
    pub response_body_bytes: u64,
    /// The authority of an absolute-form target or HTTP/2 `:authority`, else the Host header.
    pub host: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// false when the connection closed (or the HTTP/2 stream was reset) before the response
    /// was complete
    pub complete: bool,
    pub version: HttpVersion,
    pub grpc: Option<GrpcCall>,
    /// The HTTP/2 stream: both ends of a connection number it alike, which is how a server
    /// span finds its client span on a multiplexed connection.
    pub stream_id: Option<u32>,
}

super::timed!(HttpExchange);

/// The gRPC status code names (`rpc.status_code`, and `error.type` of a failed call), by code;
/// a code past the table keeps its number.
const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl GrpcCall {
    /// `rpc.method`: the fully qualified `package.Service/Method`, `_OTHER` when the path was
    /// not of that shape or not seen.
    pub fn rpc_method(&self) -> String {
        if self.service.is_empty() || self.method.is_empty() {
            "_OTHER".to_owned()
        } else {
            format!("{}/{}", self.service, self.method)
        }
    }

    /// `rpc.status_code`: the status name, empty when no status was seen.
    pub fn status_name(&self) -> std::borrow::Cow<'static, str> {
        match self.status {
            Some(code) => match GRPC_STATUS_NAMES.get(code as usize) {
                Some(name) => (*name).into(),
                None => code.to_string().into(),
            },
            None => "".into(),
        }
    }

    /// Whether the call failed, by the gRPC conventions: for a client every status but OK
    /// (and a call without one); for a server only the statuses that mean the server failed
    /// (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), not the
    /// ones that answer a bad request.
    pub fn failed(&self, server: bool) -> bool {
        match (self.status, server) {
            (None, _) => true,
            (Some(code), true) => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
            (Some(code), false) => code != 0,
        }
    }
}
