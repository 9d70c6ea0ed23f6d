//! One HTTP/2 stream from its request HEADERS to its end, and the header fields the exchange
//! keeps (pseudo-headers, content type, trace context, gRPC status and timeout).

use super::{
    capped_string, route, GrpcCall, HttpExchange, HttpVersion, Stream, MAX_HOST_BYTES,
    MAX_METHOD_CHARS, MAX_PATH_BYTES, MAX_TRACEPARENT_BYTES, MAX_TRACESTATE_BYTES, UNKNOWN_METHOD,
};
use crate::protocol::text::is_tchar;

/// gRPC status codes the decoder itself assigns (from resets).
const GRPC_CANCELLED: u32 = 1;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;
const GRPC_PERMISSION_DENIED: u32 = 7;
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;

/// The fields of one decoded header block that an exchange uses; the rest are dropped as they
/// are decoded.
#[derive(Debug, Default)]
pub struct Fields {
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub status: Option<u16>,
    pub grpc: bool,
    pub grpc_status: Option<u32>,
    /// `grpc-timeout` in nanoseconds.
    pub grpc_timeout_ns: Option<u64>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// A field referred to an unknown dynamic-table entry (or the block was lost).
    pub unknown: bool,
}

impl Fields {
    /// One decoded field.
    pub fn take(&mut self, name: &[u8], value: &[u8]) {
        match name {
            // A method is a token (RFC 9110); anything else is not one, and is not
            // turned into a label value.
            b":method" => {
                self.method = (!value.is_empty() && value.iter().all(|&c| is_tchar(c)))
                    .then(|| capped_string(value, MAX_METHOD_CHARS))
            }
            b":path" => {
                let end = value
                    .iter()
                    .position(|&b| b == b'?' || b == b'#')
                    .unwrap_or(value.len());
                self.path = Some(capped_string(&value[..end], MAX_PATH_BYTES));
            }
            b":authority" => self.authority = Some(capped_string(value, MAX_HOST_BYTES)),
            // HTTP/2 has no Host header in requests made by HTTP/2 clients, but proxies that
            // translate from HTTP/1 may send one instead of `:authority`.
            b"host" if self.authority.is_none() => {
                self.authority = Some(capped_string(value, MAX_HOST_BYTES))
            }
            b":status" => self.status = parse_digits(value).and_then(|s| u16::try_from(s).ok()),
            b"content-type" => self.grpc = value.starts_with(b"application/grpc"),
            b"grpc-status" => {
                self.grpc_status = parse_digits(value).and_then(|s| u32::try_from(s).ok())
            }
            b"grpc-timeout" => self.grpc_timeout_ns = grpc_timeout_ns(value),
            b"traceparent" => self.traceparent = Some(capped_string(value, MAX_TRACEPARENT_BYTES)),
            b"tracestate" => self.tracestate = Some(capped_string(value, MAX_TRACESTATE_BYTES)),
            _ => {}
        }
    }
}

/// Decimal digits, at most 9 of them.
fn parse_digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout_ns(v: &[u8]) -> Option<u64> {
    let (&unit, digits) = v.split_last()?;
    if digits.len() > 8 {
        return None;
    }
    let n = parse_digits(digits)?;
    let scale: u64 = match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Which side of a stream bytes belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

impl Side {
    pub fn of(stream: Stream) -> Side {
        match stream {
            Stream::Request => Side::Request,
            Stream::Response => Side::Response,
        }
    }
}

/// A stream whose request was seen.
#[derive(Debug)]
pub struct StreamState {
    id: u32,
    request: Fields,
    start_ns: u64,
    request_body: u64,
    /// The final response head was decoded (interim 1xx heads do not count).
    response_head: bool,
    status: u16,
    response_grpc: bool,
    grpc_status: Option<u32>,
    response_body: u64,
}

impl StreamState {
    pub fn open(id: u32, start_ns: u64, request: Fields) -> StreamState {
        StreamState {
            id,
            request,
            start_ns,
            request_body: 0,
            response_head: false,
            status: 0,
            response_grpc: false,
            grpc_status: None,
            response_body: 0,
        }
    }

    pub fn heap_bytes(&self) -> usize {
        let r = &self.request;
        [
            &r.method,
            &r.path,
            &r.authority,
            &r.traceparent,
            &r.tracestate,
        ]
        .iter()
        .map(|s| s.as_ref().map_or(0, String::capacity))
        .sum()
    }

    pub fn add_body(&mut self, side: Side, n: u64) {
        match side {
            Side::Request => self.request_body += n,
            Side::Response => self.response_body += n,
        }
    }

    /// A response header block: the head, or the trailers once a head was seen. True when the
    /// head's status was not decodable (an unknown table entry).
    pub fn response_headers(&mut self, fields: Fields) -> bool {
        if !self.response_head {
            match fields.status {
                Some(status) if (100..200).contains(&status) => return false,
                Some(status) => self.status = status,
                None if fields.grpc_status.is_none() && !fields.unknown => {
                    // Trailers without a head cannot come first: treat as the head anyway.
                }
                None => {}
            }
            self.response_head = true;
            self.response_grpc = fields.grpc;
            if fields.grpc_status.is_some() {
                // Trailers-Only.
                self.grpc_status = fields.grpc_status;
            }
            return fields.status.is_none() && fields.unknown;
        }
        if fields.grpc_status.is_some() {
            self.grpc_status = fields.grpc_status;
        }
        false
    }

    /// The stream was reset at `ts_ns` with `code` (None: the code was not captured).
    pub fn reset(self, code: Option<u32>, ts_ns: u64) -> Option<HttpExchange> {
        if self.response_head || !self.is_grpc() {
            return self.into_exchange(ts_ns, false);
        }
        let status = match code {
            // CANCEL: the client gave up. Past its own deadline it reports DEADLINE_EXCEEDED.
            Some(0x8) => match self.request.grpc_timeout_ns {
                Some(t) if ts_ns.saturating_sub(self.start_ns) >= t => GRPC_DEADLINE_EXCEEDED,
                _ => GRPC_CANCELLED,
            },
            Some(0x7) => GRPC_UNAVAILABLE,
            Some(0xb) => GRPC_RESOURCE_EXHAUSTED,
            Some(0xc) => GRPC_PERMISSION_DENIED,
            _ => GRPC_INTERNAL,
        };
        let mut s = self;
        s.grpc_status = Some(status);
        s.response_head = true;
        s.into_exchange(ts_ns, true)
    }

    fn is_grpc(&self) -> bool {
        self.request.grpc
    }

    /// The exchange, ended at `end_ns`; None when no response head was seen (unpaired).
    pub fn into_exchange(self, end_ns: u64, complete: bool) -> Option<HttpExchange> {
        if !self.response_head {
            return None;
        }
        let r = self.request;
        let path = r.path.unwrap_or_default();
        let grpc = (r.grpc || self.response_grpc).then(|| {
            let (service, method) = grpc_names(&path);
            GrpcCall {
                service,
                method,
                status: self.grpc_status,
            }
        });
        let route = match (&grpc, path.is_empty()) {
            (_, true) => String::new(),
            (Some(_), false) => path.clone(),
            (None, false) => route::template(&path),
        };
        Some(HttpExchange {
            method: r.method.unwrap_or_else(|| UNKNOWN_METHOD.to_owned()),
            path,
            route,
            status: self.status,
            start_ns: self.start_ns,
            end_ns,
            request_body_bytes: self.request_body,
            response_body_bytes: self.response_body,
            host: r.authority,
            traceparent: r.traceparent,
            tracestate: r.tracestate,
            complete,
            version: HttpVersion::Http2,
            grpc,
            stream_id: Some(self.id),
        })
    }
}

/// `/package.Service/Method` → (`package.Service`, `Method`); empty names when the path is not
/// of that shape.
fn grpc_names(path: &str) -> (String, String) {
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((service, method)) if !service.is_empty() && !method.is_empty() => {
            (service.to_owned(), method.to_owned())
        }
        _ => (String::new(), String::new()),
    }
}
