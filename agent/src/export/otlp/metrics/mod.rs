//! OTLP metrics push: what `/metrics` shows, sent to an OTLP collector every
//! `OTEL_METRIC_EXPORT_INTERVAL`, as an alternative to (or besides) the Prometheus pull.
//!
//! One path for both: the registry is encoded as for a scrape, read back
//! ([`openmetrics`]), given its OpenTelemetry names and resources ([`convert`]) and encoded as
//! an `ExportMetricsServiceRequest` ([`proto`]), so the two can never disagree on a value.
//! Temporality is cumulative (the registry's own), each series with the start it was first
//! seen with. A push goes over gRPC or HTTP/protobuf with the span exporter's transport (TLS,
//! headers, gzip), retried with the same backoff within `OTEL_METRIC_EXPORT_TIMEOUT`; a push
//! that cannot be made is counted in `periscope_metric_exports_total{result="failed"}` and
//! logged, and the next one carries the same cumulative values.

pub mod convert;
pub mod openmetrics;
pub mod proto;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::exporter::{self, TraceSettings};
use super::proto::Value as Attr;
use crate::export::http::State;
use crate::export::prometheus::register;

/// The push's self-metrics.
#[derive(Default)]
pub struct PushMetrics {
    /// Pushes by `result`: `ok` (the collector accepted it) or `failed` (every attempt failed,
    /// or the collector refused it).
    pub exports: Family<ResultLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

impl PushMetrics {
    pub fn register(registry: &mut Registry) -> Arc<PushMetrics> {
        let m = Arc::new(PushMetrics::default());
        let own = registry.sub_registry_with_prefix("periscope");
        register!(own,
            "metric_exports": m.exports,
                "OTLP metric pushes, by result (ok, failed)";
        );
        m
    }
}

/// How the push runs.
#[derive(Clone, Debug)]
pub struct PushSettings {
    pub transport: TraceSettings,
    /// `OTEL_METRIC_EXPORT_INTERVAL`.
    pub interval: Duration,
    /// `OTEL_METRIC_EXPORT_TIMEOUT`: one push, retries included.
    pub timeout: Duration,
    /// The resource of the agent's own series (those without workload labels).
    pub agent: convert::Resource,
}

/// Attempts per push at most.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`: only `cumulative` is offered (the
/// registry's counts are cumulative; a delta would need a second copy of every series).
pub fn check_temporality(preference: Option<&str>) -> anyhow::Result<()> {
    match preference.map(|p| p.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("cumulative") => Ok(()),
        Some(other) => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE (--otlp-metrics-temporality) is \
             {other:?}: only cumulative is supported"
        ),
    }
}

/// The agent's own resource: `service.name` (`OTEL_SERVICE_NAME`, else `periscope`), the host,
/// and `OTEL_RESOURCE_ATTRIBUTES`.
pub fn agent_resource(service_name: Option<&str>, transport: &TraceSettings) -> convert::Resource {
    let mut r: convert::Resource = vec![
        (
            "service.name",
            Attr::Str(service_name.unwrap_or("periscope").to_owned()),
        ),
        ("service.version", Attr::Static(env!("CARGO_PKG_VERSION"))),
        ("telemetry.sdk.name", Attr::Static("periscope")),
        ("telemetry.sdk.language", Attr::Static("rust")),
        (
            "telemetry.sdk.version",
            Attr::Static(env!("CARGO_PKG_VERSION")),
        ),
    ];
    if !transport.resource.host_name.is_empty() {
        r.push(("host.name", Attr::Str(transport.resource.host_name.clone())));
    }
    for (key, value) in &transport.resource.extra {
        if !r.iter().any(|(k, _)| k == key) {
            r.push((key, Attr::Str(value.clone())));
        }
    }
    r
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Pushes every `interval` until the process ends.
pub async fn run(state: Arc<State>, settings: PushSettings, metrics: Arc<PushMetrics>) {
    let Some(url) = settings.transport.url.clone() else {
        return;
    };
    let client = exporter::client(&settings.transport);
    let agent_start_ns = unix_ns(SystemTime::now());
    let mut starts = convert::StartTimes::default();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: the first push waits one interval, as an SDK's reader does.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(body) = collect(&state, &settings, &mut starts, agent_start_ns).await else {
            continue;
        };
        let body = if settings.transport.gzip {
            exporter::gzip(&body)
        } else {
            body
        };
        let sent = push(&client, &settings, &url, body).await;
        let result = if sent.is_ok() { "ok" } else { "failed" };
        metrics.exports.get_or_create(&ResultLabel { result }).inc();
        if let Err(e) = sent {
            log::warn!("OTLP metrics push to {url} failed: {e}");
        }
    }
}

/// Encodes the registry as a scrape would, and converts it into one request.
async fn collect(
    state: &Arc<State>,
    settings: &PushSettings,
    starts: &mut convert::StartTimes,
    agent_start_ns: u64,
) -> Option<Bytes> {
    let _turn = state.scrapes.clone().acquire_owned().await.ok()?;
    state.metrics.refresh_process_stats();
    let encoding = state.clone();
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &encoding.registry).map(|()| text)
    })
    .await
    .ok()?
    .ok()?;
    let families = openmetrics::parse(&text);
    let now_ns = unix_ns(SystemTime::now());
    let node = &settings.transport.resource.extra;
    let batch = convert::convert(
        &families,
        &settings.agent,
        node,
        starts,
        agent_start_ns,
        now_ns,
    );
    Some(Bytes::from(proto::encode_request(&batch, now_ns)))
}

/// One push, retried with backoff within the push's time limit.
async fn push(
    client: &exporter::OtlpClient,
    settings: &PushSettings,
    url: &http::Uri,
    body: Bytes,
) -> Result<(), String> {
    let deadline = Instant::now() + settings.timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let limit = settings
            .transport
            .timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let sent = exporter::send(client, &settings.transport, url, body.clone());
        let retry_after = match tokio::time::timeout(limit, sent).await {
            Ok(Ok(rejected)) => {
                if rejected > 0 {
                    log::warn!("the OTLP collector rejected {rejected} metric data points");
                }
                return Ok(());
            }
            Ok(Err(failure)) if !failure.retryable => return Err(failure.message),
            Ok(Err(failure)) => {
                last = failure.message;
                failure.retry_after
            }
            Err(_) => {
                last = format!("no answer within {limit:?}");
                None
            }
        };
        log::debug!("OTLP metrics push attempt {attempt}/{ATTEMPTS} to {url}: {last}");
        if attempt == ATTEMPTS {
            break;
        }
        let delay = exporter::retry_delay(backoff, retry_after, exporter::jitter_random());
        if Instant::now() + delay >= deadline {
            break;
        }
        tokio::time::sleep(delay).await;
        backoff *= 2;
    }
    Err(last)
}
