//! The export task: batches spans and sends them to an OTLP collector, or prints them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::exchange::Exchange;
use crate::export::prometheus::histogram::{ExemplarTarget, SpanIds};
use crate::internal_events::otlp::{
    ExportFailure, SpanExportFailed, SpanExportRefused, SpanExportRetriesExhausted, SpansExported,
};
use crate::metadata::ProcessInfo;

use super::context::hex;
use super::convert::{resource, Converter, NodeResource};
use super::parents::{Arrival, Parents, Pending};
use super::proto::{encode_request, ResourceSpans, Span, Value};
use super::tls::{self, ClientTls, Connector, TlsOptions};
use super::{SpanMetrics, SpanQueue};

/// Attempts per batch at most (the first and the retries), within `Batching::export_timeout`.
const ATTEMPTS: u32 = 5;
/// Backoff before the first retry; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// One attempt's time limit (the OTLP exporters' default timeout).
const TIMEOUT: Duration = Duration::from_secs(10);
/// Batches on their way at once: while one waits for the collector's answer the next is
/// converted and sent. When all are in flight, conversion waits, the queue fills and the
/// newest exchanges are dropped and counted (`queue_full`).
const IN_FLIGHT: u32 = 4;
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const METRICS_GRPC_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Which OTLP signal a [`TraceSettings`] sends: its paths and the variable naming its own
/// endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// The OTLP/HTTP path appended to a base endpoint.
    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// The gRPC method.
    fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => GRPC_PATH,
            Signal::Metrics => METRICS_GRPC_PATH,
        }
    }

    /// The signal's own endpoint variable, for errors.
    fn endpoint_variable(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        }
    }
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP/gRPC over HTTP/2 (TLS for `https://` endpoints, cleartext for `http://`).
    #[value(name = "grpc")]
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Where and how spans (or, with [`TraceSettings::for_signal`], metrics) go; built once from
/// the configuration.
#[derive(Clone, Debug)]
pub struct TraceSettings {
    /// The full URL requests are sent to, when a collector is configured.
    pub url: Option<http::Uri>,
    pub protocol: Protocol,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Print each span as one JSON line on stdout.
    pub stdout: bool,
    /// The TLS client configuration, for an `https://` URL.
    pub tls: Option<ClientTls>,
    /// One export attempt's time limit (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
    /// Requests are gzip-compressed (`OTEL_EXPORTER_OTLP_COMPRESSION=gzip`).
    pub gzip: bool,
    /// What every span's resource carries besides its process's own attributes.
    pub resource: NodeResource,
    pub batching: Batching,
}

/// How spans are batched and how long a batch's export may take: the OpenTelemetry batch
/// span processor's settings (`OTEL_BSP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Spans per export request at most; a full batch is sent at once.
    pub max_spans: usize,
    /// A batch is sent at least this often while spans arrive.
    pub schedule_delay: Duration,
    /// One batch's export, every attempt and the waits between them, ends by then.
    pub export_timeout: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_spans: 512,
            schedule_delay: Duration::from_secs(1),
            export_timeout: Duration::from_secs(30),
        }
    }
}

impl TraceSettings {
    /// Resolves the collector URL: the traces endpoint as given (with the gRPC method path
    /// appended for gRPC), else the base endpoint plus `/v1/traces` (HTTP) or the gRPC method
    /// path. `https://` means TLS, with the trust and client certificate of `tls`, which are
    /// read here so that a bad file fails start-up. A gRPC endpoint without a scheme is
    /// `https://` unless `tls.insecure` (the OTLP exporter spec's `OTEL_EXPORTER_OTLP_INSECURE`).
    pub fn new(
        endpoint: Option<&str>,
        traces_endpoint: Option<&str>,
        protocol: Protocol,
        headers: Option<&str>,
        stdout: bool,
        tls: &TlsOptions,
    ) -> anyhow::Result<TraceSettings> {
        TraceSettings::for_signal(
            Signal::Traces,
            endpoint,
            traces_endpoint,
            protocol,
            headers,
            stdout,
            tls,
        )
    }

    /// As [`TraceSettings::new`], for `signal`: its own endpoint (`signal_endpoint`) is used
    /// as given, the base endpoint gets the signal's path.
    pub fn for_signal(
        signal: Signal,
        endpoint: Option<&str>,
        traces_endpoint: Option<&str>,
        protocol: Protocol,
        headers: Option<&str>,
        stdout: bool,
        tls: &TlsOptions,
    ) -> anyhow::Result<TraceSettings> {
        // Only the OTLP/gRPC exporter has a scheme-less form (`host:4317`).
        let with_scheme = |e: &str| match protocol {
            Protocol::Grpc if !e.contains("://") => {
                format!("{}://{e}", if tls.insecure { "http" } else { "https" })
            }
            _ => e.to_owned(),
        };
        let url = match (traces_endpoint, endpoint) {
            (Some(t), _) if !t.trim().is_empty() => {
                let t = with_scheme(t.trim());
                let t = t.as_str();
                Some(match protocol {
                    Protocol::HttpProtobuf => t.to_owned(),
                    Protocol::Grpc => {
                        format!("{}{}", t.trim_end_matches('/'), signal.grpc_path())
                    }
                })
                .map(|u| (u, signal.endpoint_variable()))
            }
            (_, Some(e)) if !e.trim().is_empty() => {
                let e = with_scheme(e.trim());
                let base = e.trim_end_matches('/');
                Some(match protocol {
                    Protocol::HttpProtobuf => format!("{base}{}", signal.http_path()),
                    Protocol::Grpc => format!("{base}{}", signal.grpc_path()),
                })
                .map(|u| (u, "OTEL_EXPORTER_OTLP_ENDPOINT"))
            }
            _ => None,
        };
        let url = match url {
            None => None,
            Some((u, setting)) => {
                let uri: http::Uri = u
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{setting}: {u:?} is not a URL: {e}"))?;
                if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                    anyhow::bail!(
                        "{setting}: {u:?} must be an http:// or https:// URL with a host"
                    );
                }
                Some(uri)
            }
        };
        let tls = match &url {
            Some(u) if u.scheme_str() == Some("https") => Some(tls::client_config(tls)?),
            _ => None,
        };
        let mut parsed = Vec::new();
        for pair in headers
            .unwrap_or("")
            .split(',')
            .filter(|p| !p.trim().is_empty())
        {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("OTEL_EXPORTER_OTLP_HEADERS: {pair:?} is not key=value")
            })?;
            let name = http::HeaderName::try_from(k.trim()).map_err(|e| {
                anyhow::anyhow!("OTEL_EXPORTER_OTLP_HEADERS: bad header name {k:?}: {e}")
            })?;
            let value = http::HeaderValue::try_from(percent_decode(v.trim())).map_err(|e| {
                anyhow::anyhow!("OTEL_EXPORTER_OTLP_HEADERS: bad value for {k:?}: {e}")
            })?;
            parsed.push((name, value));
        }
        Ok(TraceSettings {
            url,
            protocol,
            headers: parsed,
            stdout,
            tls,
            timeout: TIMEOUT,
            gzip: false,
            batching: Batching::default(),
            resource: NodeResource {
                host_name: host_name(),
                extra: Vec::new(),
            },
        })
    }

    /// One attempt's time limit in milliseconds (`OTEL_EXPORTER_OTLP_TIMEOUT`, default
    /// 10,000); 0 is refused.
    pub fn with_timeout_ms(mut self, ms: Option<u64>) -> anyhow::Result<TraceSettings> {
        match ms {
            Some(0) => anyhow::bail!(
                "OTEL_EXPORTER_OTLP_TIMEOUT (--otlp-timeout) must be a number of milliseconds \
                 above 0"
            ),
            Some(ms) => self.timeout = Duration::from_millis(ms),
            None => {}
        }
        Ok(self)
    }

    /// `OTEL_EXPORTER_OTLP_COMPRESSION`: `gzip` or `none` (the default).
    pub fn with_compression(mut self, compression: Option<&str>) -> anyhow::Result<TraceSettings> {
        self.gzip = match compression.map(str::trim) {
            None | Some("") | Some("none") => false,
            Some("gzip") => true,
            Some(other) => anyhow::bail!(
                "OTEL_EXPORTER_OTLP_COMPRESSION (--otlp-compression) must be gzip or none, not \
                 {other:?}"
            ),
        };
        Ok(self)
    }

    /// Adds `OTEL_RESOURCE_ATTRIBUTES` to every resource (see `NodeResource`).
    pub fn with_resource_attributes(
        mut self,
        attributes: Option<&str>,
    ) -> anyhow::Result<TraceSettings> {
        self.resource =
            NodeResource::new(std::mem::take(&mut self.resource.host_name), attributes)?;
        Ok(self)
    }

    /// Sets the batch span processor's settings.
    pub fn with_batching(mut self, batching: Batching) -> TraceSettings {
        self.batching = batching;
        self
    }

    /// Whether spans go anywhere; when not, no sink is installed and exchanges cost nothing.
    pub fn enabled(&self) -> bool {
        self.url.is_some() || self.stdout
    }
}

/// `%XX` escapes, as the OTLP exporter spec allows in header values.
pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why an attempt failed, and whether another may succeed.
pub(super) struct Failure {
    pub(super) message: String,
    pub(super) retryable: bool,
    /// The TLS error, when the TLS handshake is what failed.
    pub(super) tls: Option<String>,
    /// How long the collector asked to wait (`Retry-After` in seconds, on 429 and 503).
    pub(super) retry_after: Option<Duration>,
}

/// The longest `Retry-After` obeyed: a batch slot is not held longer.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The wait before the next attempt: the collector's `Retry-After` when it gave one, else
/// `backoff` with jitter (between half and all of it), so that agents that failed together
/// do not retry together.
pub(super) fn retry_delay(
    backoff: Duration,
    retry_after: Option<Duration>,
    random: u64,
) -> Duration {
    match retry_after {
        Some(wait) => wait.min(MAX_RETRY_AFTER),
        None => {
            let half = backoff / 2;
            half + Duration::from_nanos(random % (half.as_nanos() as u64).max(1))
        }
    }
}

/// The gzip form of an encoded request (what `OTEL_EXPORTER_OTLP_COMPRESSION=gzip` sends).
pub(super) fn gzip(body: &[u8]) -> Bytes {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// A cheap random number for jitter (ids need no better, neither does this).
pub(super) fn jitter_random() -> u64 {
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    u64::from_ne_bytes(seed)
}

/// What sends batches: the HTTP client and what it needs, the batches in flight, and the TLS
/// failure logged last (a collector with a bad certificate would otherwise log every attempt).
struct Export {
    client: Client<Connector, Full<Bytes>>,
    settings: Arc<TraceSettings>,
    metrics: Arc<SpanMetrics>,
    node: NodeResource,
    in_flight: Arc<tokio::sync::Semaphore>,
    tls_warned: Arc<std::sync::Mutex<Option<String>>>,
}

/// Drains `rx` until every sender is gone: converts, batches and exports.
pub async fn run(
    mut rx: SpanQueue,
    converter: Converter,
    settings: TraceSettings,
    metrics: Arc<SpanMetrics>,
) {
    let export_node = settings.resource.clone();
    let batching = settings.batching;
    let client = client(&settings);
    let mut export = Export {
        client,
        settings: Arc::new(settings),
        metrics,
        node: export_node.clone(),
        in_flight: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT as usize)),
        tls_warned: Arc::default(),
    };
    let mut pending: Vec<(Arc<ProcessInfo>, Span)> = Vec::new();
    let mut stitcher = Stitcher::new(converter);
    let mut tick = tokio::time::interval(batching.schedule_delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some(batch) => {
                    for (exchange, exemplar) in batch {
                        if is_own_export(&exchange, export.settings.url.as_ref()) {
                            continue;
                        }
                        stitcher.offer(&exchange, exemplar, &mut pending);
                        if pending.len() >= batching.max_spans {
                            export.flush(&mut pending).await;
                        }
                    }
                }
                None => {
                    stitcher.release(Instant::now(), true, &mut pending);
                    export.flush(&mut pending).await;
                    // Every batch in flight has finished once all permits are back.
                    let _ = export.in_flight.acquire_many(IN_FLIGHT).await;
                    return;
                }
            },
            _ = tick.tick() => {
                stitcher.release(Instant::now(), false, &mut pending);
                export.flush(&mut pending).await;
            }
        }
    }
}

/// The client every export goes through.
pub(super) type OtlpClient = Client<Connector, Full<Bytes>>;

/// The HTTP client for `settings`' collector: HTTP/2 only for gRPC, TLS for `https://`.
pub(super) fn client(settings: &TraceSettings) -> OtlpClient {
    let connector = tls::connector(settings.tls.as_ref(), settings.protocol);
    match settings.protocol {
        Protocol::Grpc => Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector),
        Protocol::HttpProtobuf => Client::builder(TokioExecutor::new()).build(connector),
    }
}

/// Exchanges in, spans with their parents out: conversion and the parent links of `parents`,
/// without the exporting (the VM tests use it as it is). A span that is sent (sampled, its
/// trace settled) becomes the exemplar of the duration series its exchange was counted in.
pub struct Stitcher {
    converter: Converter,
    parents: Parents,
    /// Exemplar targets of spans not sent yet, by span id, with when they came.
    exemplars: HashMap<[u8; 8], (ExemplarTarget, Instant)>,
}

/// Exemplar targets kept at most (spans held for a parent are bounded by `parents` too).
const MAX_EXEMPLAR_TARGETS: usize = 16384;
/// How long an exemplar target waits for its span to be sent: longer than a span is held for
/// its parent. A span that was not sampled leaves its target to this.
const EXEMPLAR_TARGET_TTL: Duration = Duration::from_secs(10);

impl Stitcher {
    pub fn new(converter: Converter) -> Stitcher {
        Stitcher {
            converter,
            parents: Parents::default(),
            exemplars: HashMap::new(),
        }
    }

    /// Adds the exchange's span; spans whose trace is settled are appended to `out`.
    pub fn offer(
        &mut self,
        exchange: &Exchange,
        exemplar: Option<ExemplarTarget>,
        out: &mut Vec<Pending>,
    ) {
        let sent = out.len();
        let (span, remote_parent) = self.converter.span(exchange);
        if let Some(target) = exemplar {
            if self.exemplars.len() < MAX_EXEMPLAR_TARGETS {
                self.exemplars
                    .insert(span.span_id, (target, Instant::now()));
            }
        }
        let arrival = Arrival {
            process: exchange.endpoint.process.clone(),
            tid: exchange.endpoint.tid,
            conn_id: exchange.endpoint.conn_id,
            peer_conn: exchange.endpoint.peer_conn,
            stream: exchange.stream_id(),
            remote_parent,
            span,
        };
        self.parents.offer(arrival, &self.converter.sampler, out);
        self.set_exemplars(&out[sent..]);
    }

    /// Appends the spans that waited long enough for a parent (all of them with `all`).
    pub fn release(&mut self, now: Instant, all: bool, out: &mut Vec<Pending>) {
        let sent = out.len();
        self.parents.release(now, all, &self.converter.sampler, out);
        self.set_exemplars(&out[sent..]);
        self.exemplars
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < EXEMPLAR_TARGET_TTL);
    }

    /// The spans just sent become their series' exemplars.
    fn set_exemplars(&mut self, sent: &[Pending]) {
        if self.exemplars.is_empty() {
            return;
        }
        for (_, span) in sent {
            if let Some((target, _)) = self.exemplars.remove(&span.span_id) {
                let ids = SpanIds {
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                };
                let end = UNIX_EPOCH + Duration::from_nanos(span.end_unix_ns);
                target.set(ids, end);
            }
        }
    }
}

impl Export {
    /// Prints and/or sends the pending spans. Sending happens in a task of its own, once one of
    /// the `IN_FLIGHT` slots is free.
    async fn flush(&mut self, pending: &mut Vec<(Arc<ProcessInfo>, Span)>) {
        if self.settings.stdout && !pending.is_empty() {
            print_json(pending, &self.node).await;
        }
        if self.settings.url.is_none() {
            pending.clear();
            return;
        }
        // Batches of `max_spans` at most: a release of waiting spans may bring more at once.
        while !pending.is_empty() {
            let n = pending.len().min(self.settings.batching.max_spans);
            let batch: Vec<_> = pending.drain(..n).collect();
            self.send(batch).await;
        }
    }

    /// Encodes one batch and sends it in a task of its own.
    async fn send(&mut self, batch: Vec<(Arc<ProcessInfo>, Span)>) {
        let count = batch.len() as u64;
        let body = encode(&batch, &self.node);
        let body = if self.settings.gzip {
            gzip(&body)
        } else {
            body
        };
        drop(batch);
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        let attempt = Attempt {
            client: self.client.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            tls_warned: self.tls_warned.clone(),
        };
        tokio::spawn(async move {
            attempt.send_with_retries(body, count).await;
            drop(permit);
        });
    }
}

/// What one batch's export needs.
struct Attempt {
    client: Client<Connector, Full<Bytes>>,
    settings: Arc<TraceSettings>,
    metrics: Arc<SpanMetrics>,
    tls_warned: Arc<std::sync::Mutex<Option<String>>>,
}

impl Attempt {
    /// Sends one encoded batch of `count` spans, retrying with backoff, and counts the outcome.
    async fn send_with_retries(&self, body: Bytes, count: u64) {
        let Some(url) = &self.settings.url else {
            return;
        };
        let metrics = &self.metrics;
        let deadline = Instant::now() + self.settings.batching.export_timeout;
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0;
        // Whether the last failure was a TLS error already reported (then quiet, see
        // `ExportFailure::Tls`).
        let mut quiet = false;
        for attempt in 1..=ATTEMPTS {
            attempts = attempt;
            let mut retry_after = None;
            // Each attempt within what is left of the batch's export timeout.
            let limit = self
                .settings
                .timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let sent = send(&self.client, &self.settings, url, body.clone());
            let failed = |cause| SpanExportFailed {
                url,
                count,
                attempt,
                attempts: ATTEMPTS,
                cause,
            };
            match tokio::time::timeout(limit, sent).await {
                Ok(Ok(rejected)) => {
                    SpansExported {
                        url,
                        count,
                        rejected,
                        tls_recovered: self.tls_warned().take().is_some(),
                    }
                    .emit(metrics);
                    return;
                }
                Ok(Err(failure)) => {
                    retry_after = failure.retry_after;
                    if let Some(tls) = failure.tls {
                        // Once per distinct error: the certificate won't change between batches.
                        let mut warned = self.tls_warned();
                        let first = warned.as_ref() != Some(&tls);
                        failed(ExportFailure::Tls {
                            error: &tls,
                            message: &failure.message,
                            first,
                        })
                        .emit(metrics);
                        quiet = !first;
                        if first {
                            *warned = Some(tls);
                        }
                    } else if !failure.retryable {
                        SpanExportRefused {
                            count,
                            message: &failure.message,
                        }
                        .emit(metrics);
                        return;
                    } else {
                        quiet = false;
                        failed(ExportFailure::Retryable {
                            message: &failure.message,
                        })
                        .emit(metrics);
                    }
                }
                Err(_) => {
                    quiet = false;
                    failed(ExportFailure::TimedOut { limit }).emit(metrics);
                }
            }
            if attempt == ATTEMPTS {
                break;
            }
            let delay = retry_delay(backoff, retry_after, jitter_random());
            if Instant::now() + delay >= deadline {
                // The next attempt would start after the export timeout.
                break;
            }
            tokio::time::sleep(delay).await;
            backoff *= 2;
        }
        SpanExportRetriesExhausted {
            count,
            attempts,
            quiet,
        }
        .emit(metrics);
    }

    fn tls_warned(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A poisoned lock only means a panic while logging: the value is still usable.
        self.tls_warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The agent's own traffic (its export requests, scrapes of its endpoint) and the collector's
/// side of an OTLP/HTTP export: each export would otherwise make spans of its own, exported in
/// the next batch, and so on forever.
fn is_own_export(exchange: &Exchange, url: Option<&http::Uri>) -> bool {
    if exchange.endpoint.process.pid == std::process::id() {
        return true;
    }
    match (&exchange.detail, url) {
        (crate::exchange::Detail::Http(h), Some(url)) => {
            exchange.role == crate::exchange::Role::Server
                && h.path == url.path()
                && exchange.endpoint.server_port == url.port_u16()
        }
        _ => false,
    }
}

/// A resource's attributes.
type Attributes = Vec<(&'static str, Value)>;

/// Groups spans by process (one resource each) and encodes the request.
fn encode(batch: &[(Arc<ProcessInfo>, Span)], node: &NodeResource) -> Bytes {
    let mut order: Vec<u64> = Vec::new();
    let mut groups: HashMap<u64, (Attributes, Vec<&Span>)> = HashMap::new();
    for (process, span) in batch {
        let group = groups.entry(process.seq).or_insert_with(|| {
            order.push(process.seq);
            (resource(process, node), Vec::new())
        });
        group.1.push(span);
    }
    let resource_spans: Vec<ResourceSpans<'_>> = order
        .iter()
        .filter_map(|seq| groups.get(seq))
        .map(|(resource, spans)| ResourceSpans { resource, spans })
        .collect();
    Bytes::from(encode_request(&resource_spans))
}

/// One attempt. `Ok(rejected spans)` when the collector answered with success.
pub(super) async fn send(
    client: &Client<Connector, Full<Bytes>>,
    settings: &TraceSettings,
    url: &http::Uri,
    body: Bytes,
) -> Result<u64, Failure> {
    let fail = |message: String, retryable: bool| Failure {
        message,
        retryable,
        tls: None,
        retry_after: None,
    };
    let (content_type, body) = match settings.protocol {
        Protocol::HttpProtobuf => ("application/x-protobuf", body),
        Protocol::Grpc => {
            // gRPC length-prefixed message: compressed flag, big-endian length.
            let mut framed = Vec::with_capacity(body.len() + 5);
            framed.push(u8::from(settings.gzip));
            framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
            framed.extend_from_slice(&body);
            ("application/grpc", Bytes::from(framed))
        }
    };
    let mut request = http::Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, content_type)
        .header(
            http::header::USER_AGENT,
            concat!("periscope/", env!("CARGO_PKG_VERSION")),
        );
    if settings.protocol == Protocol::Grpc {
        request = request.header(http::header::TE, "trailers");
    }
    if settings.gzip {
        request = match settings.protocol {
            Protocol::HttpProtobuf => request.header(http::header::CONTENT_ENCODING, "gzip"),
            Protocol::Grpc => request.header("grpc-encoding", "gzip"),
        };
    }
    for (name, value) in &settings.headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| fail(format!("building the request: {e}"), false))?;
    let response = client.request(request).await.map_err(|e| Failure {
        message: causes(&e),
        retryable: true,
        tls: tls::tls_cause(&e),
        retry_after: None,
    })?;
    let status = response.status();
    let headers = response.headers().clone();
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(format!("reading the response: {e}"), true))?;
    match settings.protocol {
        Protocol::HttpProtobuf => {
            if status.is_success() {
                Ok(rejected_spans(&collected.to_bytes()))
            } else {
                let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
                // Seconds only: the HTTP-date form is rare from collectors.
                let retry_after = headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Err(Failure {
                    retry_after: retry_after.filter(|_| retryable),
                    ..fail(format!("HTTP {status}"), retryable)
                })
            }
        }
        Protocol::Grpc => {
            let grpc_status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| headers.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            match (status.is_success(), grpc_status) {
                (true, Some(0)) => {
                    let bytes = collected.to_bytes();
                    Ok(rejected_spans(bytes.get(5..).unwrap_or_default()))
                }
                (_, Some(code)) => {
                    // `google.rpc.RetryInfo` in the status details: how long to wait.
                    let retry_info = collected
                        .trailers()
                        .and_then(|t| t.get("grpc-status-details-bin"))
                        .or_else(|| headers.get("grpc-status-details-bin"))
                        .and_then(|v| base64_decode(v.as_bytes()))
                        .and_then(|details| retry_info_delay(&details));
                    // The codes the OTLP spec lists as retryable; RESOURCE_EXHAUSTED only
                    // when the server said when to retry.
                    let retryable = match code {
                        8 => retry_info.is_some(),
                        _ => matches!(code, 1 | 4 | 10 | 11 | 14 | 15),
                    };
                    Err(Failure {
                        retry_after: retry_info.filter(|_| retryable),
                        ..fail(format!("gRPC status {code}"), retryable)
                    })
                }
                (_, None) => Err(fail(format!("HTTP {status} without a gRPC status"), true)),
            }
        }
    }
}

/// An error and its causes, `: `-separated (the client's own message is only "client error
/// (Connect)").
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let cause = e.to_string();
        if !text.ends_with(&cause) {
            text = format!("{text}: {cause}");
        }
        next = e.source();
    }
    text
}

/// `ExportTraceServiceResponse.partial_success.rejected_spans` (and the metrics response's
/// `rejected_data_points`, at the same place), 0 when absent or unreadable.
fn rejected_spans(response: &[u8]) -> u64 {
    // partial_success is field 1 (message); rejected_spans its field 1 (int64).
    field(response, 1)
        .and_then(|partial| field(partial, 1))
        .and_then(|rest| varint(rest, &mut 0))
        .unwrap_or(0)
}

/// The `retry_delay` of a `google.rpc.RetryInfo` among the details of a `google.rpc.Status`
/// (the `grpc-status-details-bin` trailer), at most [`MAX_RETRY_AFTER`].
fn retry_info_delay(status: &[u8]) -> Option<Duration> {
    const RETRY_INFO: &[u8] = b"type.googleapis.com/google.rpc.RetryInfo";
    // Status.details is field 3 (repeated Any: type_url 1, value 2); RetryInfo.retry_delay is
    // field 1 (Duration: seconds 1, nanos 2).
    let info = fields(status, 3).find(|any| field(any, 1) == Some(RETRY_INFO))?;
    let delay = field(field(info, 2)?, 1)?;
    let seconds = field(delay, 1).and_then(|v| varint(v, &mut 0)).unwrap_or(0);
    let nanos = field(delay, 2).and_then(|v| varint(v, &mut 0)).unwrap_or(0);
    let delay = Duration::from_secs(seconds.min(MAX_RETRY_AFTER.as_secs()))
        + Duration::from_nanos(nanos % 1_000_000_000);
    Some(delay.min(MAX_RETRY_AFTER))
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The first occurrence of protobuf field `want` in message `b`: a varint field's bytes from
/// its value on, a length-delimited field's contents.
fn field(b: &[u8], want: u64) -> Option<&[u8]> {
    fields(b, want).next()
}

/// Every occurrence of field `want` (see [`field`]); stops at the first malformed byte.
fn fields(b: &[u8], want: u64) -> impl Iterator<Item = &[u8]> {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            let key = varint(b, &mut i)?;
            match key & 7 {
                0 if key >> 3 == want => {
                    let at = i;
                    varint(b, &mut i)?;
                    return b.get(at..);
                }
                0 => {
                    varint(b, &mut i)?;
                }
                1 => i = i.checked_add(8)?,
                5 => i = i.checked_add(4)?,
                2 => {
                    let len = usize::try_from(varint(b, &mut i)?).ok()?;
                    let start = i;
                    let end = i.checked_add(len)?;
                    i = end;
                    if key >> 3 == want {
                        return b.get(start..end);
                    }
                }
                _ => return None,
            }
        }
        None
    })
}

/// Base64 (standard alphabet, padding optional), as gRPC sends `-bin` metadata; `None` for
/// anything else.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let text = text
        .strip_suffix(b"==")
        .or(text.strip_suffix(b"="))
        .unwrap_or(text);
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in text {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// On tokio's blocking pool: a stdout pipe nobody reads stalls this task, never
/// a runtime worker.
/// Prints a batch as JSON lines, in one write (each process's resource is built once).
async fn print_json(batch: &[(Arc<ProcessInfo>, Span)], node: &NodeResource) {
    let attrs = |list: &[(&'static str, Value)]| {
        serde_json::Value::Object(
            list.iter()
                .map(|(k, v)| {
                    let v = match (v, v.text()) {
                        (Value::Int(i), _) => serde_json::Value::from(*i),
                        (_, text) => serde_json::Value::from(text.unwrap_or_default()),
                    };
                    ((*k).to_owned(), v)
                })
                .collect(),
        )
    };
    let mut resources: HashMap<u64, serde_json::Value> = HashMap::new();
    let mut text = String::new();
    for (process, span) in batch {
        let resource = resources
            .entry(process.seq)
            .or_insert_with(|| attrs(&resource(process, node)));
        let line = serde_json::json!({
            "trace_id": hex(&span.trace_id),
            "span_id": hex(&span.span_id),
            "parent_span_id": span.parent_span_id.map(|p| hex(&p)),
            "trace_state": span.trace_state,
            "name": span.name,
            "kind": span.kind.as_str(),
            "start_time_unix_nano": span.start_unix_ns,
            "end_time_unix_nano": span.end_unix_ns,
            "attributes": attrs(&span.attributes),
            "status": if span.error.is_some() { "ERROR" } else { "UNSET" },
            "resource": resource,
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    // stdout closed (a pipe whose reader left): spans still go to the collector, if any.
    let _ = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        std::io::stdout().lock().write_all(text.as_bytes())
    })
    .await;
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
