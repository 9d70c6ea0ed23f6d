//! One `Exchange` → one span, named and attributed by the OpenTelemetry semantic conventions.

use std::net::IpAddr;

use crate::exchange::{normalize_method, Detail, Exchange, MessageFlow, Role, OTHER_METHOD};
use crate::metadata::ProcessInfo;
use crate::protocol::http::HttpExchange;

use super::context::{parse_traceparent, IdGenerator, Sampler, TraceParent};
use super::proto::{Span, SpanKind, Value};

/// `CLOCK_MONOTONIC` → Unix time, by one offset measured at start-up.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Unix ns minus monotonic ns.
    offset_ns: i128,
}

impl WallClock {
    /// Reads `CLOCK_REALTIME`, `CLOCK_MONOTONIC`, `CLOCK_REALTIME` back to back and pairs the
    /// monotonic reading with the mean of the two realtime ones, so the offset is off by at most
    /// half the time between the reads (well under a microsecond). Kernel timestamps are
    /// `bpf_ktime_get_ns`, the same `CLOCK_MONOTONIC`. A later NTP step of the wall clock is not
    /// followed: spans keep the offset of start-up.
    pub fn measure() -> WallClock {
        let before = clock_ns(libc::CLOCK_REALTIME);
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let after = clock_ns(libc::CLOCK_REALTIME);
        WallClock {
            offset_ns: (before + after) / 2 - mono,
        }
    }

    /// Unix ns of a monotonic timestamp.
    pub fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.offset_ns).clamp(0, i128::from(u64::MAX)) as u64
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it. Both clocks
    // always exist on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Turns exchanges into spans: ids, trace context, sampling, names and attributes.
pub struct Converter {
    pub clock: WallClock,
    pub sampler: Sampler,
    pub ids: IdGenerator,
}

impl Converter {
    /// The span for this exchange, with the `traceparent` its request carried. Sampling waits
    /// until the span's trace is settled (see `parents`).
    pub fn span(&mut self, exchange: &Exchange) -> (Span, Option<TraceParent>) {
        // A server joins the caller's trace; a client request that carries a `traceparent` was
        // made by instrumented code inside that span (or passed on by a proxy).
        let parent = match &exchange.detail {
            Detail::Http(h) => h.traceparent.as_deref().and_then(parse_traceparent),
            _ => None,
        };
        let mut span = describe(exchange, parent.as_ref());
        span.trace_id = match &parent {
            Some(p) => p.trace_id,
            None => self.ids.trace_id(),
        };
        span.span_id = self.ids.span_id();
        span.start_unix_ns = self.clock.unix_ns(exchange.start_ns);
        span.end_unix_ns = self.clock.unix_ns(exchange.end_ns.max(exchange.start_ns));
        (span, parent)
    }
}

/// Name, kind, attributes and status of an exchange's span (ids and times are filled in by
/// the caller). The semantic-convention values (operation, target, `error.type`, sizes) come
/// from the exchange's protocol-neutral view, as the metrics' labels do.
pub fn describe(exchange: &Exchange, parent: Option<&TraceParent>) -> Span {
    let mut attributes: Vec<(&'static str, Value)> = Vec::with_capacity(12);
    let server = exchange.role == Role::Server;
    let peer = exchange.endpoint.peer;
    let mut trace_state = String::new();
    let target = exchange.target();
    let error_type = exchange.error_type();
    let (name, kind, error) = match &exchange.detail {
        Detail::Http(
            h @ HttpExchange {
                grpc: Some(grpc), ..
            },
        ) => {
            // RPC conventions: the span is named by `rpc.method`.
            let method = grpc.rpc_method();
            attributes.push(("rpc.system.name", Value::Static("grpc")));
            attributes.push(("rpc.method", Value::Str(method.clone())));
            if grpc.status.is_some() {
                attributes.push((
                    "rpc.status_code",
                    Value::Str(grpc.status_name().into_owned()),
                ));
            }
            if let Some(host) = h.host.as_deref().map(host_without_port) {
                attributes.push(("server.address", Value::Str(host.to_owned())));
            } else if let Some(ip) = exchange.server_ip() {
                attributes.push(("server.address", Value::Ip(ip)));
            }
            attributes.push(("network.protocol.name", Value::Static("http")));
            attributes.push(("network.protocol.version", Value::Static("2")));
            if let Some(e) = &error_type {
                attributes.push(("error.type", Value::Str(e.to_string())));
            }
            let name = if method == "_OTHER" {
                "grpc".to_owned()
            } else {
                method
            };
            (name, http_kind(server), error_type.map(|_| String::new()))
        }
        Detail::Http(h) => {
            let method = normalize_method(&h.method);
            attributes.push(("http.request.method", Value::Static(method)));
            if method == OTHER_METHOD && !h.method.is_empty() {
                attributes.push(("http.request.method_original", Value::Str(h.method.clone())));
            }
            if let Some(route) = target {
                attributes.push(("http.route", Value::Str(route.to_owned())));
            }
            if !h.path.is_empty() {
                attributes.push(("url.path", Value::Str(h.path.clone())));
            }
            let scheme = if exchange.endpoint.tls {
                "https"
            } else {
                "http"
            };
            attributes.push(("url.scheme", Value::Static(scheme)));
            // HTTP conventions: a client span carries `url.full` (required), a server span
            // `url.path` and `url.scheme` only.
            if !server {
                let socket = exchange
                    .server_ip()
                    .map(|ip| (ip, exchange.endpoint.server_port));
                if let Some(url) = url_full(scheme, h.host.as_deref(), socket, &h.path) {
                    attributes.push(("url.full", Value::Str(url)));
                }
            }
            attributes.push((
                "network.protocol.version",
                Value::Static(h.version.as_str()),
            ));
            if h.status != 0 {
                attributes.push(("http.response.status_code", Value::Int(i64::from(h.status))));
            }
            if let Some(host) = h.host.as_deref().map(host_without_port) {
                attributes.push(("server.address", Value::Str(host.to_owned())));
            } else if let Some(ip) = exchange.server_ip() {
                attributes.push(("server.address", Value::Ip(ip)));
            }
            let sizes = [
                ("http.request.body.size", exchange.request_size()),
                ("http.response.body.size", exchange.response_size()),
            ];
            for (key, size) in sizes {
                if size > 0 {
                    attributes.push((key, Value::Int(size as i64)));
                }
            }
            if parent.is_some() {
                trace_state = h.tracestate.clone().unwrap_or_default();
            }
            if let Some(e) = &error_type {
                attributes.push(("error.type", Value::Str(e.to_string())));
            }
            let base = if method == OTHER_METHOD {
                "HTTP"
            } else {
                method
            };
            let name = match target {
                Some(route) => format!("{base} {route}"),
                None => base.to_owned(),
            };
            (name, http_kind(server), error_type.map(|_| String::new()))
        }
        Detail::Postgres(p) => {
            let st = &p.statement;
            attributes.push(("db.system.name", Value::Static("postgresql")));
            if let Some(ns) = &p.db_namespace {
                attributes.push(("db.namespace", Value::Str(ns.clone())));
            }
            let operation = exchange.operation();
            attributes.push(("db.operation.name", Value::Str(operation.to_owned())));
            if let Some(c) = target {
                attributes.push(("db.collection.name", Value::Str(c.to_owned())));
            }
            if !st.query_summary.is_empty() {
                attributes.push(("db.query.summary", Value::Str(st.query_summary.clone())));
            }
            if !st.query_text.is_empty() {
                attributes.push(("db.query.text", Value::Str(st.query_text.clone())));
            }
            if let Some(rows) = st.rows {
                attributes.push(("db.response.returned_rows", Value::Int(rows as i64)));
            }
            if let Some(code) = &error_type {
                attributes.push(("db.response.status_code", Value::Str(code.to_string())));
                attributes.push(("error.type", Value::Str(code.to_string())));
            }
            let name = match target {
                Some(c) => format!("{operation} {c}"),
                None => operation.to_owned(),
            };
            let error = error_type.map(|c| format!("SQLSTATE {c}"));
            (name, http_kind(server), error)
        }
        Detail::Kafka(k) => {
            // Messaging conventions 1.27+: `messaging.operation.name` is the system's name of
            // the operation and the span is `{messaging.operation.name} {destination}`. A
            // Produce is `send` and a Fetch `receive` (type `send`/`receive`; `publish` is
            // deprecated), the operation the metrics count; another API is its own operation,
            // without a type. The conventions have no attribute for the Kafka API itself, so
            // it is kept in `periscope.kafka.api_name`.
            attributes.push(("messaging.system", Value::Static("kafka")));
            let operation = exchange.operation();
            let flow = exchange.message_flow();
            // The broker's span (SERVER) has no operation type: the types describe a client's
            // part in the flow of messages, and the conventions define no broker-side spans.
            // A receive stays CONSUMER, as before, although the 1.27+ span-kind table gives
            // `receive` CLIENT (CONSUMER being for `process`).
            let (operation_type, kind) = match (flow, server) {
                (_, true) => (None, SpanKind::Server),
                (Some(f @ MessageFlow::Send), false) => (Some(f), SpanKind::Producer),
                (Some(f @ MessageFlow::Receive), false) => (Some(f), SpanKind::Consumer),
                (None, false) => (None, SpanKind::Client),
            };
            attributes.push(("messaging.operation.name", Value::Str(operation.to_owned())));
            if let Some(f) = operation_type {
                attributes.push(("messaging.operation.type", Value::Static(f.as_str())));
            }
            attributes.push(("periscope.kafka.api_name", Value::Static(k.api_name)));
            if let Some(t) = target {
                attributes.push(("messaging.destination.name", Value::Str(t.to_owned())));
            }
            if let Some(id) = &k.client_id {
                attributes.push(("messaging.client.id", Value::Str(id.clone())));
            }
            let records: u64 = k.topics.iter().map(|t| t.record_count).sum();
            if records > 0 {
                attributes.push(("messaging.kafka.message.count", Value::Int(records as i64)));
                attributes.push(("messaging.batch.message_count", Value::Int(records as i64)));
            }
            let error = error_type.map(|e| e.into_owned());
            if let Some(e) = &error {
                attributes.push(("error.type", Value::Str(e.clone())));
            }
            let name = match target {
                Some(t) => format!("{operation} {t}"),
                None => operation.to_owned(),
            };
            (name, kind, error)
        }
    };
    if let Some(port) = exchange.endpoint.server_port {
        attributes.push(("server.port", Value::Int(i64::from(port))));
    }
    if let Some(p) = peer {
        attributes.push(("network.peer.address", Value::Ip(p.ip())));
        attributes.push(("network.peer.port", Value::Int(i64::from(p.port()))));
        if server {
            attributes.push(("client.address", Value::Ip(p.ip())));
        }
    }
    Span {
        trace_id: [0; 16],
        span_id: [0; 8],
        parent_span_id: parent.map(|p| p.parent_id),
        trace_state,
        name,
        kind,
        start_unix_ns: 0,
        end_unix_ns: 0,
        attributes,
        error,
    }
}

fn http_kind(server: bool) -> SpanKind {
    if server {
        SpanKind::Server
    } else {
        SpanKind::Client
    }
}

/// `url.full` of a client request: `scheme://authority/path`, or `None` when the path is
/// unknown or not a path (`OPTIONS *`, a CONNECT's authority). The authority is the request's
/// own (absolute-form target, `:authority` or Host), else the server's address on the socket
/// (IPv6 in brackets, the port left out when it is the scheme's default). Userinfo is never
/// included, even when a Host header carries it, and there is no query string: the decoder
/// drops it (and the secrets it may hold), so the path has none.
fn url_full(
    scheme: &str,
    host: Option<&str>,
    socket: Option<(IpAddr, Option<u16>)>,
    path: &str,
) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let usable = |a: &&str| {
        !a.is_empty()
            && !a
                .bytes()
                .any(|b| matches!(b, b'/' | b'?' | b'#' | b'\\') || b <= b' ' || b == 0x7f)
    };
    if let Some(authority) = host.map(without_userinfo).filter(usable) {
        return Some(format!("{scheme}://{authority}{path}"));
    }
    let (ip, port) = socket?;
    let default_port = if scheme == "https" { 443 } else { 80 };
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    Some(match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}{path}"),
        _ => format!("{scheme}://{host}{path}"),
    })
}

/// `user:password@example.com` → `example.com`: credentials are never exported.
fn without_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `::1`; `user@example.com` → `example.com`.
fn host_without_port(host: &str) -> &str {
    let host = without_userinfo(host);
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// What every resource of this node carries: the host name, and `OTEL_RESOURCE_ATTRIBUTES`.
#[derive(Clone, Debug, Default)]
pub struct NodeResource {
    pub host_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, parsed once (keys leaked once, at start-up): added to every
    /// process's resource unless the process has the key itself (a workload's own
    /// `service.name` wins over a node-wide one).
    pub extra: Vec<(&'static str, String)>,
}

impl NodeResource {
    /// Parses `OTEL_RESOURCE_ATTRIBUTES` (`key=value,key2=value2`, values `%XX`-escaped as the
    /// OpenTelemetry spec says); the error names the setting and the bad pair.
    pub fn new(host_name: String, attributes: Option<&str>) -> anyhow::Result<NodeResource> {
        let mut extra: Vec<(&'static str, String)> = Vec::new();
        for pair in attributes
            .unwrap_or("")
            .split(',')
            .filter(|p| !p.trim().is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!("OTEL_RESOURCE_ATTRIBUTES: {pair:?} is not key=value")
                })?;
            let key = k.trim();
            let value = super::exporter::percent_decode(v.trim());
            match extra.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => extra.push((Box::leak(key.to_owned().into_boxed_str()), value)),
            }
        }
        Ok(NodeResource { host_name, extra })
    }
}

/// The resource of a process's spans, with the node's attributes.
pub fn resource(process: &ProcessInfo, node: &NodeResource) -> Vec<(&'static str, Value)> {
    let mut r = process_resource(process, &node.host_name);
    for (key, value) in &node.extra {
        if !r.iter().any(|(k, _)| k == key) {
            r.push((key, Value::Str(value.clone())));
        }
    }
    r
}

/// The attributes of the process itself.
fn process_resource(process: &ProcessInfo, host_name: &str) -> Vec<(&'static str, Value)> {
    let s = |v: &str| Value::Str(v.to_owned());
    let mut r = vec![("service.name", s(&process.service_name))];
    if let Some(k8s) = &process.k8s {
        let nonempty = [
            ("service.namespace", &k8s.namespace),
            ("k8s.namespace.name", &k8s.namespace),
            ("k8s.pod.name", &k8s.pod_name),
            ("k8s.pod.uid", &k8s.pod_uid),
            ("k8s.container.name", &k8s.container_name),
            ("k8s.node.name", &k8s.node_name),
        ];
        for (key, value) in nonempty {
            if !value.is_empty() {
                r.push((key, s(value)));
            }
        }
        let owner_key = match k8s.owner_kind.as_str() {
            "Deployment" => Some("k8s.deployment.name"),
            "StatefulSet" => Some("k8s.statefulset.name"),
            "DaemonSet" => Some("k8s.daemonset.name"),
            "CronJob" => Some("k8s.cronjob.name"),
            "Job" => Some("k8s.job.name"),
            _ => None,
        };
        if let (Some(key), false) = (owner_key, k8s.owner_name.is_empty()) {
            r.push((key, s(&k8s.owner_name)));
        }
    }
    if let Some(id) = &process.container_id {
        r.push(("container.id", s(id)));
    }
    if !host_name.is_empty() {
        r.push(("host.name", s(host_name)));
    }
    r.push(("process.pid", Value::Int(i64::from(process.pid))));
    r.push(("process.executable.name", s(process.executable_name())));
    // `telemetry.sdk.*` and `telemetry.distro.*` name what produced the telemetry: Periscope,
    // as OBI (`opentelemetry-ebpf-instrumentation`) and Beyla name themselves.
    // `telemetry.sdk.language` is different: backends read it as the language of the service
    // (its icon, its runtime views), so it is the *instrumented process's* language, as OBI
    // sets it, and never `rust` (the agent's own, which said every workload was Rust). It is
    // set only when the executable's name tells (`python3.11`, `java`, `node`, …), else left
    // out rather than guessed, although the conventions list it as required for an SDK.
    r.push(("telemetry.sdk.name", s("periscope")));
    if let Some(language) = process.language() {
        r.push(("telemetry.sdk.language", Value::Static(language)));
    }
    r.push(("telemetry.sdk.version", s(env!("CARGO_PKG_VERSION"))));
    r.push(("telemetry.distro.name", s("periscope")));
    r.push(("telemetry.distro.version", s(env!("CARGO_PKG_VERSION"))));
    r
}

#[cfg(test)]
mod tests;
