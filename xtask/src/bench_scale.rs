//! `cargo xtask bench scale`: the agent on a node with many connections and processes.
//!
//! A Python workload (`bench_scale.py`) holds `--connections` keep-alive connections from
//! `--processes` client processes (each in a cgroup of its own) to one server, so the agent
//! tracks twice as many sockets. The agent starts first; then:
//! 1. set-up: the connections open and each sends one request;
//! 2. idle for `--seconds`: what the agent costs while nothing happens (its CPU, its RSS);
//! 3. active for `--seconds`: every connection sends one request per second; agent CPU per
//!    request, and requests counted against requests answered (both ends).
//!
//! Reported: the agent's RSS after each phase and its peak (`VmHWM`), CPU, the kernel
//! programs' run time per request (`--bpf-stats`), connections tracked, and counts.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{cpu_time, peak_rss_bytes, rss_bytes, Agent, AgentOptions};

use crate::bench::Cpu;
use crate::util::{bench_agent, build_agent};

const WORKLOAD: &str = include_str!("bench_scale.py");
/// Where the clients' cgroups go (cgroup v2).
const CGROUP_ROOT: &str = "/sys/fs/cgroup/periscope-bench-scale";

/// Options of `cargo xtask bench scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Open connections (client ends; the server's ends double the sockets tracked).
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// Client processes, each in a cgroup of its own.
    #[arg(long, default_value_t = 1_000)]
    processes: u64,
    /// Length of the idle and of the active phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// CPU for the agent, or `none`.
    #[arg(long, default_value = "none")]
    agent_cpu: Cpu,
    /// Use the existing agent binary (also implied by PERISCOPE_BIN).
    #[arg(long)]
    no_build: bool,
    /// Another flag for the agent (repeatable), e.g. `--agent-arg=--flows=false`.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

/// The agent's state at a point of the run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss: u64,
    cpu: Duration,
    bpf_ns: f64,
    tracked: f64,
}

fn sample(agent: &Agent) -> anyhow::Result<Sample> {
    let m = agent.metrics();
    Ok(Sample {
        rss: rss_bytes(agent.pid())?,
        cpu: cpu_time(agent.pid())?,
        bpf_ns: m.sum("periscope_bpf_program_run_time_seconds_total", &[]) * 1e9,
        tracked: m.sum("periscope_connections_tracked", &[]),
    })
}

pub fn scale(args: &ScaleArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.processes == 0 || args.processes > args.connections {
        bail!("--connections and --processes must be at least 1, and processes ≤ connections");
    }
    if !harness::is_root() {
        bail!("the agent loads eBPF programs: run as root");
    }
    let bin = bench_agent(args.no_build, || {
        crate::setup::setup()?;
        build_agent()
    })?;
    let cgroups = std::fs::create_dir_all(CGROUP_ROOT).is_ok();
    let agent = Agent::start_with(AgentOptions {
        bin: Some(bin),
        args: ["--bpf-stats".to_owned()]
            .into_iter()
            .chain(args.agent_args.iter().cloned())
            .collect(),
        cpu: args.agent_cpu.0,
        ..AgentOptions::default()
    })?;
    let start = sample(&agent)?;
    let dir = harness::TempDir::new("scale")?;
    let script = dir.path().join("bench_scale.py");
    std::fs::write(&script, WORKLOAD)?;
    let mut workload = Command::new("python3")
        .arg(&script)
        .args([
            args.connections.to_string(),
            args.processes.to_string(),
            args.seconds.to_string(),
            if cgroups { CGROUP_ROOT } else { "-" }.to_owned(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the workload (python3)")?;
    let mut to = workload.stdin.take().context("workload stdin")?;
    let mut from = BufReader::new(workload.stdout.take().context("workload stdout")?);
    let mut answer = |what: &str| -> anyhow::Result<u64> {
        let mut line = String::new();
        from.read_line(&mut line)?;
        line.trim()
            .strip_prefix(what)
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("the workload said {line:?}, not {what}"))
    };
    let t = Instant::now();
    let setup_requests = answer("ready")?;
    let setup_time = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let after_setup = sample(&agent)?;
    std::thread::sleep(Duration::from_secs(args.seconds));
    let after_idle = sample(&agent)?;
    writeln!(to, "active")?;
    let active_requests = answer("done")?;
    std::thread::sleep(Duration::from_secs(2));
    let after_active = sample(&agent)?;
    let peak = peak_rss_bytes(agent.pid())?;
    let m = agent.metrics();
    let server = m.sum(
        "http_server_request_duration_seconds_count",
        &[("http_route", "/scale")],
    );
    let client = m.sum(
        "http_client_request_duration_seconds_count",
        &[("http_route", "/scale")],
    );
    let lost = m.sum("periscope_kernel_events_lost_total", &[]);
    writeln!(to, "quit")?;
    let _ = workload.wait();
    drop(agent);
    if cgroups {
        if let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(CGROUP_ROOT);
    }

    let mb = |b: u64| b as f64 / 1e6;
    let sent = (setup_requests + active_requests) as f64;
    let idle_cpu = after_idle.cpu.saturating_sub(after_setup.cpu);
    let active_cpu = after_active.cpu.saturating_sub(after_idle.cpu);
    let active_bpf = after_active.bpf_ns - after_idle.bpf_ns;
    println!(
        "\n`cargo xtask bench scale --connections {} --processes {} --seconds {}{}` \
         ({} sockets tracked at the end of set-up; set-up took {:.1} s)\n",
        args.connections,
        args.processes,
        args.seconds,
        args.agent_args
            .iter()
            .map(|a| format!(" --agent-arg={a}"))
            .collect::<String>(),
        after_setup.tracked,
        setup_time.as_secs_f64(),
    );
    println!("| phase | agent RSS (MB) | agent CPU | kernel programs |");
    println!("|---|---:|---:|---:|");
    println!("| started, no workload | {:.1} | – | – |", mb(start.rss));
    println!(
        "| after set-up ({} connections, {} processes, 1 request each) | {:.1} | {:.2} s | {:.1} ms |",
        args.connections,
        args.processes,
        mb(after_setup.rss),
        after_setup.cpu.saturating_sub(start.cpu).as_secs_f64(),
        (after_setup.bpf_ns - start.bpf_ns) / 1e6,
    );
    println!(
        "| idle {} s | {:.1} | {:.1} ms/s | {:.2} ms |",
        args.seconds,
        mb(after_idle.rss),
        idle_cpu.as_secs_f64() * 1e3 / args.seconds as f64,
        (after_idle.bpf_ns - after_setup.bpf_ns) / 1e6,
    );
    println!(
        "| active {} s ({} requests, {:.0}/s) | {:.1} | {:.2} µs/request | {:.2} µs/request |",
        args.seconds,
        active_requests,
        active_requests as f64 / args.seconds as f64,
        mb(after_active.rss),
        active_cpu.as_secs_f64() * 1e6 / active_requests.max(1) as f64,
        active_bpf / 1e3 / active_requests.max(1) as f64,
    );
    println!(
        "\nPeak RSS (VmHWM) {:.1} MB. Requests answered {sent}; counted by the server end {server}, \
         the client end {client}; kernel events lost {lost}.",
        mb(peak)
    );
    Ok(())
}
