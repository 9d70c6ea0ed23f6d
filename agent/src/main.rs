//! `periscope`: wiring and shutdown. Standalone mode (no Kubernetes) is the default.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};

use periscope::capture::{self, Capture};
use periscope::config::Config;
use periscope::export::http;
#[cfg(feature = "kubernetes")]
use periscope::export::otlp::context::{IdGenerator, Sampler};
use periscope::export::otlp::convert::{Converter, WallClock};
use periscope::export::otlp::{
    self as otlp, exporter, Batching, Signal, SpanMetrics, SpanSink, TraceSettings,
};
use periscope::export::prometheus::Metrics;
#[cfg(feature = "kubernetes")]
use periscope::internal_events;
#[cfg(feature = "kubernetes")]
use periscope::metadata::kubernetes::{self, Attribution, KubeSettings};
use periscope::metadata::ClusterView;
use periscope::pipeline::Reader;
use periscope::syscalls::{Poller, PollerSettings, SyscallCollector};

/// A build without the `kubernetes` feature can only run standalone.
#[cfg(not(feature = "kubernetes"))]
fn start_kubernetes(
    config: &Config,
    _metrics: &Arc<Metrics>,
    _registry: &mut Registry,
) -> anyhow::Result<Option<Arc<dyn ClusterView>>> {
    if config.kubernetes_enabled() {
        anyhow::bail!(
            "this build has no Kubernetes support (cargo feature `kubernetes`): run with \
             --kubernetes off"
        );
    }
    Ok(None)
}

/// Starts the Kubernetes watch when attribution is on; its state changes become log lines and
/// self-metrics together.
#[cfg(feature = "kubernetes")]
fn start_kubernetes(
    config: &Config,
    metrics: &Arc<Metrics>,
    registry: &mut Registry,
) -> anyhow::Result<Option<Arc<dyn ClusterView>>> {
    if !config.kubernetes_enabled() {
        return Ok(None);
    }
    let node_name = match config.node_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => anyhow::bail!(
            "Kubernetes attribution is on but NODE_NAME (--node-name) is not set: set it from the \
             downward API (spec.nodeName), or turn attribution off with --kubernetes off"
        ),
    };
    metrics.register_kubernetes(registry);
    let attribution = Attribution::new();
    let settings = KubeSettings {
        api_url: config.kube_api_url.clone(),
        node_name: node_name.clone(),
    };
    log::info!(
        "Kubernetes attribution on for node {node_name} (API {})",
        config.kube_api_url.as_deref().unwrap_or("in-cluster")
    );
    let m = metrics.clone();
    tokio::spawn(kubernetes::run(
        settings,
        attribution.clone(),
        move |event| internal_events::kubernetes::emit(event, &m),
    ));
    Ok(Some(Arc::new(attribution)))
}

/// Removes the series that have seen nothing for `ttl`.
async fn expire_idle_series(metrics: Arc<Metrics>, ttl: std::time::Duration) {
    every_quarter_of(ttl, || metrics.expire_idle(ttl)).await
}

/// Removes the series of deleted pods once they have been gone for `grace`.
async fn expire_deleted_pods(
    metrics: Arc<Metrics>,
    cluster: Arc<dyn ClusterView>,
    grace: std::time::Duration,
) {
    every_quarter_of(grace, || {
        metrics.expire_pods(|ns, name| cluster.pod_exists(ns, name), grace)
    })
    .await
}

/// Runs `sweep` every quarter of `span` (kept between 250 ms and 15 s), so what is due is
/// removed at most a quarter late.
async fn every_quarter_of(span: std::time::Duration, mut sweep: impl FnMut()) {
    let period = (span / 4).clamp(
        std::time::Duration::from_millis(250),
        std::time::Duration::from_secs(15),
    );
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        sweep();
    }
}

/// Stack of the runtime's worker threads, where every decoder runs. No parser recurses on
/// input-controlled depth (the SQL summariser walks `COPY (COPY (..))` with a loop; its test
/// runs 350,000 levels on a 64 KiB stack), so the stack a decoder needs does not depend on its
/// input, and this states it rather than leaving it to tokio's default (the same 2 MiB).
const WORKER_STACK_BYTES: usize = 2 << 20;

/// The event reader on a thread of its own, with a single-threaded runtime for its timers.
///
/// On the multi-threaded runtime the reader moved between the workers, and glibc serves each
/// thread from its own arena: every arena grew to the decoders' working set (`bench scale`:
/// the active phase's peak). On one thread, decoding allocates from one arena, and the
/// workers keep the exporters and the HTTP server.
struct DecodeThread {
    /// The reader's outcome; closed without one if it panicked.
    done: tokio::sync::oneshot::Receiver<anyhow::Result<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DecodeThread {
    fn start(reader: Reader, stack: usize) -> anyhow::Result<Self> {
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .context("building the event reader's runtime")?;
        let thread = std::thread::Builder::new()
            .name("decode".into())
            .stack_size(stack)
            .spawn(move || {
                let outcome = runtime.block_on(async move {
                    tokio::select! {
                        result = reader.run() => Some(result),
                        _ = stop_rx => None,
                    }
                });
                // Stopped: the reader, its sinks and the exporter queue's sender are dropped
                // here, on the thread that allocated them.
                if let Some(result) = outcome {
                    let _ = done_tx.send(result);
                }
            })
            .context("starting the event reader's thread")?;
        Ok(Self {
            done,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the reader (if it still runs) and waits for its thread to end.
    async fn stop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn main() {
    let loaded = match periscope::config_file::load() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("periscope: {e:#}");
            std::process::exit(2);
        }
    };
    if loaded.print_requested() {
        print!("{}", loaded.print());
        return;
    }
    let config = loaded.config;
    periscope::logging::builder(&config.log_level, config.log_format).init();
    if let Err(e) = periscope::privileges::disable_core_dumps() {
        log::warn!("could not disable core dumps (prctl PR_SET_DUMPABLE): {e}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(WORKER_STACK_BYTES)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run(config)) {
        log::error!("{e:#}");
        eprintln!("periscope: {e:#}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    // The endpoint is bound first: a taken port or a bad certificate fails before any kernel
    // work.
    let metrics_tls = match (&config.metrics_tls_cert, &config.metrics_tls_key) {
        (Some(cert), Some(key)) => Some(http::tls(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("--metrics-tls-cert and --metrics-tls-key go together"),
    };
    let bearer_token = config
        .metrics_bearer_token_file
        .as_deref()
        .map(http::bearer_token)
        .transpose()?;
    let listener = http::bind(config.metrics_addr).await?;
    let facts = capture::preflight::check()?;
    log::info!(
        "kernel {}, BTF {}, tracefs at {}",
        facts.release,
        if facts.btf {
            "present"
        } else {
            "absent (not needed)"
        },
        facts.tracefs
    );

    let transport = config.otlp_traces_transport();
    let traces = TraceSettings::new(
        config.otlp_endpoint.as_deref(),
        config.otlp_traces_endpoint.as_deref(),
        transport.protocol,
        transport.headers,
        config.traces_stdout,
        &config.otlp_tls(),
    )?
    .with_timeout_ms(transport.timeout_ms)?
    .with_compression(transport.compression)?
    .with_resource_attributes(config.resource_attributes.as_deref())?
    .with_batching(Batching {
        max_spans: config.traces_batch_size as usize,
        schedule_delay: Duration::from_millis(config.traces_schedule_delay),
        export_timeout: Duration::from_millis(config.traces_export_timeout),
    });
    let sampler =
        Sampler::from_settings(&config.traces_sampler, config.traces_sampler_arg.as_deref())?;
    let push = metrics_push_settings(&config)?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    periscope::export::prometheus::target::register(
        &mut registry,
        &periscope::export::prometheus::target::Target {
            service_name: config.service_name.as_deref(),
            host_name: &traces.resource.host_name,
            attributes: &traces.resource.extra,
        },
    );
    let span_metrics = traces
        .enabled()
        .then(|| SpanMetrics::register(&mut registry));
    let push_metrics = push
        .as_ref()
        .map(|_| otlp::metrics::PushMetrics::register(&mut registry));
    let flow_metrics = config
        .flows
        .then(|| periscope::flows::FlowMetrics::register(&mut registry));
    metrics.set_max_series(config.max_series);
    metrics.set_series_memory_budget(config.series_memory_budget);
    let cluster = start_kubernetes(&config, &metrics, &mut registry)?;
    let syscall_export = SyscallCollector::new();
    if !config.syscalls.is_empty() {
        registry.register_collector(Box::new(syscall_export.clone()));
    }
    let state = Arc::new(http::State {
        registry,
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
        cluster: cluster.clone(),
        bearer_token,
        scrapes: Arc::new(tokio::sync::Semaphore::new(http::CONCURRENT_SCRAPES)),
    });
    if let (Some(push), Some(push_metrics)) = (push, push_metrics) {
        log::info!(
            "metrics: OTLP {:?} push to {} every {:?}",
            push.transport.protocol,
            push.transport
                .url
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            push.interval
        );
        tokio::spawn(otlp::metrics::run(state.clone(), push, push_metrics));
    }
    log::info!(
        "metrics endpoint: {}{}",
        if metrics_tls.is_some() {
            "HTTPS"
        } else {
            "HTTP"
        },
        if state.bearer_token.is_some() {
            ", /metrics needs the bearer token"
        } else {
            ""
        }
    );
    let server = tokio::spawn(http::serve(listener, state.clone(), metrics_tls));

    let settings = capture::Settings {
        capture_bytes: config.capture_bytes,
        ringbuf_bytes: config.ringbuf_bytes,
        hooks: config.syscall_hooks,
        framing: config.framing,
        bpf_stats: config.bpf_stats,
        syscalls: (!config.syscalls.is_empty()).then(|| capture::SyscallSettings {
            filter: config.syscalls.filter(),
            max_series: config.syscalls_max_series,
            separate_exit: config.syscalls_separate_exit,
            entry: config.syscalls_entry,
        }),
        udp_flows: config.flows && config.udp_flows,
        connect_hook: config.connect_hook,
        tls: config.tls,
    };
    let (mut capture, maps) = Capture::start(&settings, facts.tracefs)?;
    let poller = capture.take_syscall_table()?.map(|table| {
        let mut poller = Poller::new(
            table,
            syscall_export.shared(),
            PollerSettings {
                grace: Duration::from_secs(config.syscalls_grace_seconds),
            },
        );
        if let Some(cluster) = &cluster {
            poller.set_cluster(cluster.clone());
        }
        poller
    });
    // Flows are an addition to the syscall capture, not a condition for it: a kernel or host
    // that refuses them (no cgroup v2, no sock_ops) gets a warning and everything else.
    let flows = match flow_metrics.map(|m| (m, capture.start_flows())) {
        Some((flow_metrics, Ok(maps))) => {
            let mut poller = periscope::flows::FlowPoller::new(
                maps,
                flow_metrics,
                metrics.clone(),
                config.flows_max_series,
            );
            if let Some(cluster) = &cluster {
                poller.set_cluster(cluster.clone());
            }
            poller.set_idle_ttl(config.series_ttl);
            Some(tokio::spawn(poller.run(std::time::Duration::from_secs(1))))
        }
        Some((_, Err(e))) => {
            log::warn!("TCP flows are off: {e:#}");
            capture.start_connect_local()?;
            None
        }
        None => {
            capture.start_connect_local()?;
            None
        }
    };
    metrics
        .self_metrics
        .hooks_info
        .get_or_create(&periscope::export::prometheus::HooksLabels {
            syscall_hooks: capture.hooks.as_str().to_owned(),
            kernel: facts.release.clone(),
            connect_hook: capture.connect_hook.as_str().to_owned(),
        })
        .set(1);
    let mut reader = Reader::new(maps, metrics.clone());
    reader.set_protocols(config.protocols);
    reader.set_selection(config.selection());
    reader.set_decoder_memory_budget(config.decoder_memory_budget);
    if !config.series_ttl.is_zero() {
        tokio::spawn(expire_idle_series(metrics.clone(), config.series_ttl));
    }
    if let Some(cluster) = &cluster {
        reader.set_cluster(cluster.clone());
        tokio::spawn(expire_deleted_pods(
            metrics.clone(),
            cluster.clone(),
            config.series_grace,
        ));
    }
    let exporter = match span_metrics {
        Some(span_metrics) => {
            let (sink, rx) = SpanSink::new(config.traces_queue(), span_metrics.clone());
            reader.set_span_sink(sink);
            let converter = Converter {
                clock: WallClock::measure(),
                sampler,
                ids: IdGenerator::new(),
            };
            log::info!(
                "spans: {}{}",
                traces
                    .url
                    .as_ref()
                    .map(|u| format!("OTLP {:?} to {u}", traces.protocol))
                    .unwrap_or_else(|| "no collector".to_owned()),
                if traces.stdout {
                    ", JSON lines on stdout"
                } else {
                    ""
                }
            );
            Some(tokio::spawn(exporter::run(
                rx,
                converter,
                traces,
                span_metrics,
            )))
        }
        None => None,
    };
    if config.bpf_stats {
        reader.watch_programs(capture.loaded_program_ids());
    }
    let adopted = reader.adopt_existing_sockets();
    log::info!(
        "{} kernel programs loaded; adopted {adopted} connections open before start-up; serving http://{}/metrics",
        capture.program_count(),
        config.metrics_addr
    );
    // TLS probes go on files as processes map them: the discovery thread owns the programs
    // from here on (`capture::tls`), and hears from the reader which processes speak TLS.
    // Attaching a uprobe needs CAP_SYS_ADMIN, which no other thread keeps: that thread only
    // reads /proc and ELF symbol tables, never tenants' traffic.
    let capture = Arc::new(std::sync::Mutex::new(capture));
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    let keep = periscope::privileges::kept_after_start(config.bpf_stats, last_cap);
    let mut exempt_threads = Vec::new();
    let tls_discovery = if capture.lock().is_ok_and(|c| c.tls) {
        let (pids, heard) = std::sync::mpsc::sync_channel(256);
        reader.set_tls_pids(pids);
        let mut discovery = capture::tls::Discovery::new(
            capture::tls::SharedCapture(capture.clone()),
            Path::new("/proc"),
            Some(metrics.clone()),
        );
        // Before ready: what runs now, and the node's libraries for what starts later.
        discovery.probe_host();
        discovery.scan_all();
        log::info!(
            "tls: {} files probed; every libssl mapped later is probed within {} s",
            discovery.probed(),
            capture::tls::SCAN_INTERVAL.as_secs()
        );
        let restrict = config.drop_capabilities;
        let (started, tid) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("tls-discovery".into())
            .spawn(move || {
                let restricted = if restrict {
                    periscope::privileges::restrict_this_thread(
                        keep | periscope::privileges::SYS_ADMIN,
                    )
                } else {
                    Ok(())
                };
                let _ = started.send((periscope::privileges::this_thread_id(), restricted.is_ok()));
                if let Err(e) = restricted {
                    log::warn!("tls: the discovery thread cannot drop its capabilities ({e:#}); TLS libraries mapped from now on are not probed");
                    return;
                }
                capture::tls::run(discovery, heard)
            })
            .context("starting the TLS discovery thread")?;
        if let Ok((tid, true)) = tid.recv() {
            exempt_threads.push(tid);
        }
        Some(thread)
    } else {
        None
    };
    if config.drop_capabilities {
        let (kept, dropped) = periscope::privileges::drop_capabilities(keep, &exempt_threads)
            .context(
                "dropping capabilities after start-up (--drop-capabilities=false keeps them)",
            )?;
        log::info!(
            "capabilities: kept {}; dropped {} others in every thread{}",
            periscope::privileges::names(kept),
            dropped.count_ones(),
            if exempt_threads.is_empty() {
                ""
            } else {
                " (the TLS discovery thread also keeps sys_admin, for attaching uprobes)"
            }
        );
    }
    let mut reader = DecodeThread::start(reader, WORKER_STACK_BYTES)?;
    let poller = poller.map(|p| tokio::spawn(p.run()));
    state.ready.store(true, Ordering::Relaxed);

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let outcome = tokio::select! {
        _ = sigterm.recv() => Ok(()),
        _ = sigint.recv() => Ok(()),
        result = &mut reader.done => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.context("the event reader stopped")),
            Err(_) => Err(anyhow::anyhow!("the event reader panicked")),
        },
    };
    state.ready.store(false, Ordering::Relaxed);
    reader.stop().await;
    if let Some(flows) = flows {
        flows.abort();
        let _ = flows.await;
    }
    if let Some(mut exporter) = exporter {
        // The reader is gone, and with it the queue's sender: the exporter sends what it
        // holds and ends. A collector that does not answer gets two seconds.
        if tokio::time::timeout(Duration::from_secs(2), &mut exporter)
            .await
            .is_err()
        {
            exporter.abort();
        }
    }
    if let Some(poller) = poller {
        poller.abort();
        let _ = poller.await;
    }
    server.abort();
    // The reader held the discovery thread's only sender: the thread ends at its next wake.
    if let Some(thread) = tls_discovery {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    // Dropping the programs closes their links: nothing stays attached in the kernel.
    drop(capture);
    log::info!("stopped; every kernel program detached");
    outcome
}

/// The OTLP metrics push, when `OTEL_METRICS_EXPORTER` has `otlp` or a metrics endpoint is
/// set; its settings' errors name their variable.
fn metrics_push_settings(config: &Config) -> anyhow::Result<Option<otlp::metrics::PushSettings>> {
    otlp::metrics::check_temporality(config.otlp_metrics_temporality.as_deref())?;
    if !config.metrics_push()? {
        return Ok(None);
    }
    let t = config.otlp_metrics_transport();
    let transport = TraceSettings::for_signal(
        Signal::Metrics,
        config.otlp_endpoint.as_deref(),
        config.otlp_metrics_endpoint.as_deref(),
        t.protocol,
        t.headers,
        false,
        &config.otlp_metrics_tls(),
    )?
    .with_timeout_ms(t.timeout_ms)?
    .with_compression(t.compression)?
    .with_resource_attributes(config.resource_attributes.as_deref())?;
    if transport.url.is_none() {
        anyhow::bail!(
            "OTEL_METRICS_EXPORTER=otlp (--metrics-exporter) needs a collector: set \
             OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
        );
    }
    Ok(Some(otlp::metrics::PushSettings {
        agent: otlp::metrics::agent_resource(config.service_name.as_deref(), &transport),
        transport,
        interval: Duration::from_millis(config.metrics_export_interval),
        timeout: Duration::from_millis(config.metrics_export_timeout),
    }))
}
