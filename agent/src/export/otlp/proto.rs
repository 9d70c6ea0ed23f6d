//! The OTLP trace messages, encoded by hand in the protobuf wire format.
//!
//! Periscope sends one request type (`ExportTraceServiceRequest`) and reads nothing back but a
//! status, so the dozen fields it writes are encoded here directly instead of pulling in a
//! protobuf code generator. Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`,
//! `resource/v1/resource.proto` and `common/v1/common.proto`; the end-to-end tests decode the
//! output with the official Python bindings.

/// An attribute value.
/// An attribute value. Strings known at build time and addresses are kept as they are, so that
/// a span costs no allocation for them.
#[derive(Clone, Debug)]
pub enum Value {
    Str(String),
    Static(&'static str),
    Ip(std::net::IpAddr),
    Int(i64),
}

impl Value {
    /// The text of a string value (`None` for integers).
    pub fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Value::Str(s) => Some(s.as_str().into()),
            Value::Static(s) => Some((*s).into()),
            Value::Ip(ip) => Some(ip.to_string().into()),
            Value::Int(_) => None,
        }
    }
}

/// Values are equal when they say the same: a `Static` and a `Str` of the same text are.
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Int(_), _) | (_, Value::Int(_)) => false,
            _ => self.text() == other.text(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

impl SpanKind {
    /// The name used in the JSON lines of `--traces-stdout`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
            SpanKind::Producer => "PRODUCER",
            SpanKind::Consumer => "CONSUMER",
        }
    }
}

/// One finished span, ready to encode.
#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// W3C `tracestate`, passed on from the request that carried it.
    pub trace_state: String,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// `Some(message)` for `STATUS_CODE_ERROR`; `None` leaves the status unset.
    pub error: Option<String>,
}

/// Spans of one resource (one process).
pub struct ResourceSpans<'a> {
    pub resource: &'a [(&'static str, Value)],
    pub spans: &'a [&'a Span],
}

pub(super) const SCOPE_NAME: &str = "periscope";

/// Encodes an `ExportTraceServiceRequest`.
pub fn encode_request(groups: &[ResourceSpans<'_>]) -> Vec<u8> {
    let spans: usize = groups.iter().map(|g| g.spans.len()).sum();
    let mut out = Vec::with_capacity(512 * spans + 1024);
    for group in groups {
        message(&mut out, 1, |rs| {
            message(rs, 1, |resource| {
                for (key, value) in group.resource {
                    key_value(resource, 1, key, value);
                }
            });
            message(rs, 2, |scope_spans| {
                message(scope_spans, 1, |scope| {
                    string(scope, 1, SCOPE_NAME);
                    string(scope, 2, env!("CARGO_PKG_VERSION"));
                });
                for span in group.spans {
                    message(scope_spans, 2, |s| encode_span(s, span));
                }
            });
        });
    }
    out
}

fn encode_span(out: &mut Vec<u8>, span: &Span) {
    bytes(out, 1, &span.trace_id);
    bytes(out, 2, &span.span_id);
    if !span.trace_state.is_empty() {
        string(out, 3, &span.trace_state);
    }
    if let Some(parent) = &span.parent_span_id {
        bytes(out, 4, parent);
    }
    string(out, 5, &span.name);
    varint_field(out, 6, span.kind as u64);
    fixed64(out, 7, span.start_unix_ns);
    fixed64(out, 8, span.end_unix_ns);
    for (key, value) in &span.attributes {
        key_value(out, 9, key, value);
    }
    if let Some(message_text) = &span.error {
        message(out, 15, |status| {
            if !message_text.is_empty() {
                string(status, 2, message_text);
            }
            varint_field(status, 3, 2);
        });
    }
    // flags: the sampled bit of the W3C trace flags (spans are exported only when sampled).
    tag(out, 16, 5);
    out.extend_from_slice(&1u32.to_le_bytes());
}

pub(super) fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message(out, field, |kv| {
        string(kv, 1, key);
        message(kv, 2, |any| match value {
            Value::Str(s) => string(any, 1, s),
            Value::Static(s) => string(any, 1, s),
            Value::Ip(ip) => {
                use std::io::Write;
                // An IPv6 address is at most 45 characters.
                let mut buf = [0u8; 48];
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                let _ = write!(cursor, "{ip}");
                let len = cursor.position() as usize;
                bytes(any, 1, &buf[..len]);
            }
            Value::Int(i) => varint_field(any, 3, *i as u64),
        });
    });
}

pub(super) fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

pub(super) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 0);
    varint(out, v);
}

pub(super) fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub(super) fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    bytes(out, field, s.as_bytes());
}

/// A length-delimited sub-message, written by `fill` in place. Protobuf puts the length first,
/// so one byte is kept for it and the body is moved up when its length needs more (a span, a
/// batch): no scratch buffer per message, and attributes, which are short, are never moved.
pub(super) fn message(out: &mut Vec<u8>, field: u32, fill: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, 2);
    let at = out.len();
    out.push(0);
    fill(out);
    let len = (out.len() - at - 1) as u64;
    if len < 0x80 {
        out[at] = len as u8;
        return;
    }
    let mut prefix = Vec::with_capacity(10);
    varint(&mut prefix, len);
    out.splice(at..at + 1, prefix);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_protobuf_examples() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        varint_field(&mut out, 3, (-1i64) as u64);
        assert_eq!(out.len(), 11);
    }

    #[test]
    fn long_messages_get_a_multi_byte_length() {
        for len in [0usize, 1, 127, 128, 300, 20_000] {
            let mut out = vec![9];
            message(&mut out, 1, |m| m.extend(std::iter::repeat_n(7u8, len)));
            let mut want = vec![9, 0x0a];
            varint(&mut want, len as u64);
            want.extend(std::iter::repeat_n(7u8, len));
            assert_eq!(out, want, "{len}");
        }
    }

    #[test]
    fn a_span_encodes_its_ids_first() {
        let span = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            trace_state: String::new(),
            name: "GET /".into(),
            kind: SpanKind::Server,
            start_unix_ns: 1,
            end_unix_ns: 2,
            attributes: vec![("url.path", Value::Str("/".into()))],
            error: None,
        };
        let mut out = Vec::new();
        encode_span(&mut out, &span);
        assert_eq!(&out[..2], &[0x0a, 16]);
        assert_eq!(&out[2..18], &[1; 16]);
        assert_eq!(&out[18..20], &[0x12, 8]);
    }
}
