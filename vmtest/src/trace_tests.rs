//! The chain test: a request through three processes on this kernel is one trace, with each
//! server span the child of the client span that called it. Those cross-process links rest on
//! the connecting socket's own address, which each `--connect-hook` tier gets differently, so
//! the test runs once per tier (`chain.sock_ops`, `chain.tracepoint`).
//!
//! The guest holds no nginx, Python or PostgreSQL (its initramfs is this one binary), so the
//! three hops are this binary's own roles: `chain-client` → `chain-proxy` (a thread per
//! connection that calls the backend while serving, like a gunicorn sync worker) →
//! `chain-backend`. Spans are put together by the agent's own `Stitcher`, as the exporter does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use periscope::capture::preflight::KernelFacts;
use periscope::capture::{Capture, ConnectHook, HookMode, Settings};
use periscope::export::otlp::context::{IdGenerator, Sampler};
use periscope::export::otlp::convert::{Converter, WallClock};
use periscope::export::otlp::exporter::Stitcher;
use periscope::export::otlp::parents::Pending;
use periscope::export::otlp::proto::SpanKind;
use periscope::export::otlp::{SpanMetrics, SpanSink};
use periscope::export::prometheus::Metrics;
use periscope::pipeline::Reader;
use prometheus_client::registry::Registry;

use crate::capture_tests::Worker;
use crate::report::{self, Outcome};
use crate::worker::CHAIN_REQUESTS;

/// How long the spans may take to arrive after the client is done.
const SETTLE: Duration = Duration::from_secs(15);

pub fn run_all(facts: &KernelFacts) {
    for tier in [ConnectHook::SockOps, ConnectHook::Tracepoint] {
        report::test(&format!("chain.{}", tier.as_str()), || chain(tier, facts));
    }
}

/// Kernels before 6.10 refuse `bpf_get_current_pid_tgid` in `sock_ops`: there the `sock_ops`
/// tier is expected to be refused (and is a skip), everywhere else it must work.
fn sock_ops_expected(release: &str) -> bool {
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 10)
}

fn chain(tier: ConnectHook, facts: &KernelFacts) -> Outcome {
    let settings = Settings {
        capture_bytes: 4096,
        ringbuf_bytes: 8 << 20,
        hooks: HookMode::Auto,
        framing: true,
        bpf_stats: false,
        syscalls: None,
        udp_flows: false,
        connect_hook: tier,
        tls: false,
    };
    let (mut capture, maps) = match Capture::start(&settings, facts.tracefs) {
        Ok(started) => started,
        Err(e) => return Outcome::Fail(format!("capture: {e:#}")),
    };
    if let Err(e) = capture.start_connect_local() {
        let e = format!("{e:#}");
        return if tier == ConnectHook::SockOps
            && !sock_ops_expected(&facts.release)
            && e.contains("unknown func bpf_get_current_pid_tgid")
        {
            Outcome::Skip("refused before Linux 6.10, as expected: the verifier knows no bpf_get_current_pid_tgid in sock_ops".into())
        } else {
            Outcome::Fail(e)
        };
    }
    if capture.connect_hook != tier {
        return Outcome::Fail(format!(
            "asked for {}, got {}",
            tier.as_str(),
            capture.connect_hook.as_str()
        ));
    }
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let (sink, mut exchanges) = SpanSink::new(65536, SpanMetrics::register(&mut registry));
    let mut reader = Reader::new(maps, metrics);
    reader.set_span_sink(sink);
    let (stop, reader) = match crate::capture_tests::spawn_reader(reader) {
        Ok(started) => started,
        Err(e) => return Outcome::Fail(format!("reader: {e:#}")),
    };
    let outcome = (|| -> anyhow::Result<String> {
        let run = run_chain()?;
        let mut stitcher = Stitcher::new(Converter {
            clock: WallClock::measure(),
            sampler: Sampler::AlwaysOn,
            ids: IdGenerator::new(),
        });
        let expected = 4 * CHAIN_REQUESTS as usize;
        let (mut offered, mut spans) = (0usize, Vec::new());
        let started = Instant::now();
        while offered < expected && started.elapsed() < SETTLE {
            while let Some(batch) = exchanges.try_recv() {
                for (exchange, exemplar) in batch {
                    if run.pids.contains(&exchange.endpoint.process.pid) {
                        offered += 1;
                    }
                    stitcher.offer(&exchange, exemplar, &mut spans);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        stitcher.release(Instant::now(), true, &mut spans);
        let pids = run.pids;
        run.finish()?;
        check_tree(&spans, &pids)
    })();
    let _ = stop.send(());
    let _ = reader.join();
    drop(capture);
    match outcome {
        Ok(detail) => Outcome::Pass(detail),
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

/// The three processes, after the client sent its requests.
struct ChainRun {
    /// Client, proxy, backend.
    workers: Vec<Worker>,
    pids: [u32; 3],
}

impl ChainRun {
    fn finish(self) -> anyhow::Result<()> {
        for worker in self.workers {
            worker.finish()?;
        }
        Ok(())
    }
}

fn run_chain() -> anyhow::Result<ChainRun> {
    let mut backend = Worker::start(&["--role", "chain-backend"])?;
    let backend_port = backend.port()?;
    let mut proxy = Worker::start(&["--role", "chain-proxy", &backend_port.to_string()])?;
    let proxy_port = proxy.port()?;
    let mut client = Worker::start(&["--role", "chain-client", &proxy_port.to_string()])?;
    let done = client.line()?;
    if done != "DONE" {
        bail!("chain-client: expected `DONE`, got {done:?} (see its stderr above)");
    }
    let pids = [client.pid(), proxy.pid(), backend.pid()];
    Ok(ChainRun {
        workers: vec![client, proxy, backend],
        pids,
    })
}

/// Every request must be one trace of four spans: client → proxy server → proxy client →
/// backend server. The proxy's first call may lack its parent (a process is known to serve
/// only after its first server span, see the README), so that one link is allowed to miss
/// once; the two cross-process links, which this test is about, never.
fn check_tree(spans: &[Pending], pids: &[u32; 3]) -> anyhow::Result<String> {
    let n = CHAIN_REQUESTS as usize;
    let hops = [
        (pids[0], SpanKind::Client, "client"),
        (pids[1], SpanKind::Server, "proxy server"),
        (pids[1], SpanKind::Client, "proxy client"),
        (pids[2], SpanKind::Server, "backend server"),
    ];
    let by_id: HashMap<[u8; 8], (usize, &Pending)> = spans
        .iter()
        .filter_map(|p| {
            let hop = hops
                .iter()
                .position(|(pid, kind, _)| p.0.pid == *pid && p.1.kind == *kind)?;
            Some((p.1.span_id, (hop, p)))
        })
        .collect();
    let mut counts = [0usize; 4];
    for (hop, _) in by_id.values() {
        counts[*hop] += 1;
    }
    if counts != [n; 4] {
        bail!("spans per hop (client, proxy server, proxy client, backend server): {counts:?}, expected {n} each");
    }
    // links[h]: spans of hop h whose parent is a span of hop h - 1 in the same trace.
    let mut links = [0usize; 4];
    for (hop, (_, span)) in by_id.values() {
        let parent = span.parent_span_id.and_then(|p| by_id.get(&p));
        if let Some((parent_hop, parent)) = parent {
            if *parent_hop + 1 == *hop && parent.1.trace_id == span.trace_id {
                links[*hop] += 1;
            }
        }
    }
    let detail = format!(
        "{n} requests: links client→proxy {}/{n}, proxy server→call {}/{n}, proxy→backend {}/{n}",
        links[1], links[2], links[3]
    );
    if links[1] != n || links[3] != n || links[2] + 1 < n {
        bail!("{detail}");
    }
    Ok(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_ops_is_expected_from_6_10() {
        assert!(!sock_ops_expected("6.1.0-28-cloud-amd64"));
        assert!(!sock_ops_expected("6.9.12"));
        assert!(sock_ops_expected("6.10.0"));
        assert!(sock_ops_expected("6.12.41+deb13-cloud-amd64"));
        assert!(sock_ops_expected("6.18.0"));
        assert!(!sock_ops_expected("5.15.0-91-generic"));
    }
}
