//! `periscope`: wiring and shutdown. Standalone mode (no Kubernetes) is the default.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};

use periscope::capture::{self, Capture, Reader};
use periscope::config::Config;
use periscope::export::http;
use periscope::export::prometheus::Metrics;
use periscope::syscalls::{Poller, PollerSettings, SyscallCollector};

fn main() {
    let config = Config::parse();
    env_logger::Builder::new()
        .parse_filters(&config.log_level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
    // The endpoint is bound first: a taken port fails before any kernel work.
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

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    metrics.set_max_series(config.max_series);
    let syscall_export = SyscallCollector::new();
    if !config.syscalls.is_empty() {
        registry.register_collector(Box::new(syscall_export.clone()));
    }
    let state = Arc::new(http::State {
        registry,
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
    });
    let server = tokio::spawn(http::serve(listener, state.clone()));

    let settings = capture::Settings {
        capture_bytes: config.capture_bytes,
        ringbuf_bytes: config.ringbuf_bytes,
        hooks: config.syscall_hooks,
        bpf_stats: config.bpf_stats,
        syscalls: (!config.syscalls.is_empty()).then(|| capture::SyscallSettings {
            filter: config.syscalls.filter(),
            max_series: config.syscalls_max_series,
            separate_exit: config.syscalls_separate_exit,
        }),
    };
    let (mut capture, maps) = Capture::start(&settings, facts.tracefs)?;
    let poller = capture.take_syscall_table()?.map(|table| {
        Poller::new(
            table,
            syscall_export.shared(),
            PollerSettings {
                grace: Duration::from_secs(config.syscalls_grace_seconds),
            },
        )
    });
    metrics
        .hooks_info
        .get_or_create(&periscope::export::prometheus::HooksLabels {
            syscall_hooks: capture.hooks.as_str().to_owned(),
            kernel: facts.release.clone(),
        })
        .set(1);
    let mut reader = Reader::new(maps, metrics);
    if config.bpf_stats {
        reader.watch_programs(capture.loaded_program_ids());
    }
    let adopted = reader.adopt_existing_sockets();
    log::info!(
        "{} kernel programs loaded; adopted {adopted} connections open before start-up; serving http://{}/metrics",
        capture.program_count(),
        config.metrics_addr
    );
    let mut reader = tokio::spawn(reader.run());
    let poller = poller.map(|p| tokio::spawn(p.run()));
    state.ready.store(true, Ordering::Relaxed);

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let outcome = tokio::select! {
        _ = sigterm.recv() => Ok(()),
        _ = sigint.recv() => Ok(()),
        result = &mut reader => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.context("the event reader stopped")),
            Err(e) => Err(anyhow::anyhow!("the event reader panicked: {e}")),
        },
    };
    state.ready.store(false, Ordering::Relaxed);
    reader.abort();
    let _ = reader.await;
    if let Some(poller) = poller {
        poller.abort();
        let _ = poller.await;
    }
    server.abort();
    // Dropping the programs closes their links: nothing stays attached in the kernel.
    drop(capture);
    log::info!("stopped; every kernel program detached");
    outcome
}
