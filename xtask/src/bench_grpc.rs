//! `cargo xtask bench grpc`: what does the agent cost a gRPC ping-pong?
//!
//! The harness' `grpcio` echo server (one process) answers unary `Say` calls that a `grpcio`
//! client makes back to back from `--concurrency` threads on one channel (one HTTP/2
//! connection, streams interleaved), for `--seconds`. Rounds alternate without and with a
//! freshly started agent after one discarded warm-up round; the client measures every call's
//! latency itself, and the agent's CPU is read from /proc. Both ends are decoded (the client's
//! and the server's), as in a cluster where both pods are on the node.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{cpu_time, rss_bytes, Agent, AgentOptions, GrpcServer, Metrics};

use crate::bench::{machine, other_agents_warning, spread_cell, Cpu, LOST_METRIC};
use crate::util::{bench_agent, build_agent};

/// Calls the agent decoded on the server side.
const CALLS_METRIC: &str = "rpc_server_call_duration_seconds_count";

/// The client: `THREADS` threads calling `Say` in a loop for `SECONDS`, on one channel;
/// prints `calls=<n> p50_ms=<x> p99_ms=<y>`.
const CLIENT: &str = r#"
import os, threading, time, grpc
ident = lambda b: b
ch = grpc.insecure_channel("127.0.0.1:" + os.environ["PORT"])
say = ch.unary_unary("/periscope.test.Echo/Say", request_serializer=ident, response_deserializer=ident)
say(b"warm")
end = time.monotonic() + float(os.environ["SECONDS"])
lat = []
def loop():
    mine = []
    while time.monotonic() < end:
        t = time.monotonic()
        say(b"ping")
        mine.append(time.monotonic() - t)
    lat.extend(mine)
threads = [threading.Thread(target=loop) for _ in range(int(os.environ["THREADS"]))]
for t in threads: t.start()
for t in threads: t.join()
lat.sort()
at = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] * 1000
print(f"calls={len(lat)} p50_ms={at(0.5):.3f} p99_ms={at(0.99):.3f}")
ch.close()
"#;

/// Options of `cargo xtask bench grpc`.
#[derive(Debug, clap::Args)]
pub struct GrpcArgs {
    /// Length of each client run, in seconds.
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    /// Measured rounds, each without then with the agent.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Client threads calling at once (concurrent streams on the one connection).
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// CPU for the server, or `none`.
    #[arg(long, default_value = "1")]
    server_cpu: Cpu,
    /// CPU for the client, or `none`.
    #[arg(long, default_value = "0")]
    client_cpu: Cpu,
    /// CPU for the agent, or `none`.
    #[arg(long, default_value = "none")]
    agent_cpu: Cpu,
    /// Use the existing agent binary (also implied by PERISCOPE_BIN).
    #[arg(long)]
    no_build: bool,
    /// Extra arguments for the agent, after `--`.
    #[arg(last = true)]
    agent_args: Vec<String>,
}

/// One client run.
struct Round {
    calls: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The agent's CPU per call (µs), RSS (MB), events lost, calls counted: with the agent.
    agent: Option<(f64, f64, f64, f64)>,
}

/// Runs the benchmark and prints a Markdown report.
pub fn grpc(args: &GrpcArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.seconds == 0 || args.concurrency == 0 {
        bail!("--rounds, --seconds and --concurrency must be at least 1");
    }
    crate::setup::setup()?;
    let bin = bench_agent(args.no_build, build_agent)?;
    let server = GrpcServer::start_on(args.server_cpu.0);
    let agent_options = AgentOptions {
        bin: Some(bin),
        args: args.agent_args.clone(),
        cpu: args.agent_cpu.0,
        ..AgentOptions::default()
    };
    let measure = |label: &str, with: bool| -> anyhow::Result<Round> {
        let round = if with {
            with_agent(args, &server, &agent_options)?
        } else {
            client(args, &server)?
        };
        println!(
            "[bench] {label}: {:.0} calls/s, p50 {:.3} ms, p99 {:.3} ms{}",
            round.calls as f64 / round.seconds,
            round.p50_ms,
            round.p99_ms,
            round
                .agent
                .map_or(String::new(), |(cpu, _, _, counted)| format!(
                    ", agent {cpu:.2} µs/call, {counted} / {} counted",
                    round.calls
                ))
        );
        Ok(round)
    };
    measure("warm-up without (discarded)", false)?;
    measure("warm-up with    (discarded)", true)?;
    let mut rounds = Vec::new();
    for i in 1..=args.rounds {
        let without = measure(&format!("round {i} without"), false)?;
        let with = measure(&format!("round {i} with   "), true)?;
        rounds.push((without, with));
    }
    println!("\n{}", report(args, &rounds));
    Ok(())
}

/// One client run against `server`.
fn client(args: &GrpcArgs, server: &GrpcServer) -> anyhow::Result<Round> {
    let mut cmd = match args.client_cpu.0 {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "python3"]);
            c
        }
        None => Command::new("python3"),
    };
    cmd.args(["-c", CLIENT])
        .env("PORT", server.port().to_string())
        .env("SECONDS", args.seconds.to_string())
        .env("THREADS", args.concurrency.to_string());
    let started = Instant::now();
    let out = cmd.output().context("running the gRPC client")?;
    let seconds = started
        .elapsed()
        .as_secs_f64()
        .min(args.seconds as f64 + 0.5);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the gRPC client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let value = |key: &str| -> anyhow::Result<f64> {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .with_context(|| format!("no {key} in the client's output {stdout:?}"))
    };
    Ok(Round {
        calls: value("calls")? as u64,
        seconds: seconds.max(args.seconds as f64),
        p50_ms: value("p50_ms")?,
        p99_ms: value("p99_ms")?,
        agent: None,
    })
}

/// One client run under a fresh agent, which then catches up with every call.
fn with_agent(
    args: &GrpcArgs,
    server: &GrpcServer,
    options: &AgentOptions,
) -> anyhow::Result<Round> {
    let mut agent = Agent::start_with(options.clone())?;
    let pid = agent.pid();
    let port = server.port().to_string();
    let counted = |m: &Metrics| m.sum(CALLS_METRIC, &[("server_port", port.as_str())]);
    let before = counted(&agent.try_metrics()?);
    let cpu_before = cpu_time(pid)?;
    let mut round = client(args, server)?;
    // The client's warm-up call is counted too.
    let expected = round.calls as f64 + 1.0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = agent.try_metrics()?;
        if counted(&m) - before >= expected || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before).as_secs_f64() * 1e6;
    let rss = rss_bytes(pid)? as f64 / 1e6;
    agent.stop()?;
    round.agent = Some((
        cpu / expected,
        rss,
        metrics.sum(LOST_METRIC, &[]),
        counted(&metrics) - before,
    ));
    Ok(round)
}

fn report(args: &GrpcArgs, rounds: &[(Round, Round)]) -> String {
    let mut out =
        String::from("### gRPC ping-pong: grpcio unary calls, without and with Periscope\n\n");
    out.push_str(&format!(
        "Command: `cargo xtask bench grpc --seconds {} --rounds {} --concurrency {} \
         --server-cpu {} --client-cpu {} --agent-cpu {}`\n\n",
        args.seconds,
        args.rounds,
        args.concurrency,
        args.server_cpu,
        args.client_cpu,
        args.agent_cpu
    ));
    out.push_str(&format!(
        "Machine: {}. One channel, {} client threads calling `Say` back to back; latencies as \
         the client measured them.{}\n\n",
        machine(),
        args.concurrency,
        other_agents_warning("their overhead is in both columns")
    ));
    out.push_str(
        "| round | agent | calls/s | p50 (ms) | p99 (ms) | agent CPU (µs/call, both ends) | agent RSS (MB) | kernel events lost | calls counted (server side) / made |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (i, (without, with)) in rounds.iter().enumerate() {
        for (name, r) in [("without", without), ("with", with)] {
            let agent =
                r.agent
                    .map_or("– | – | – | –".to_owned(), |(cpu, rss, lost, n)| {
                        format!("{cpu:.2} | {rss:.1} | {lost} | {n} / {}", r.calls + 1)
                    });
            out.push_str(&format!(
                "| {} | {name} | {:.0} | {:.3} | {:.3} | {agent} |\n",
                i + 1,
                r.calls as f64 / r.seconds,
                r.p50_ms,
                r.p99_ms
            ));
        }
    }
    let col = |f: &dyn Fn(&Round) -> f64, with: bool| -> Vec<f64> {
        rounds
            .iter()
            .map(|(a, b)| f(if with { b } else { a }))
            .collect()
    };
    let rate = |r: &Round| r.calls as f64 / r.seconds;
    let p99 = |r: &Round| r.p99_ms;
    out.push_str("\nmin / **median** / max over rounds:\n\n| metric | without agent | with agent |\n|---|---:|---:|\n");
    out.push_str(&format!(
        "| calls/s | {} | {} |\n| p99 latency (ms) | {} | {} |\n",
        spread_cell(&col(&rate, false), 0),
        spread_cell(&col(&rate, true), 0),
        spread_cell(&col(&p99, false), 3),
        spread_cell(&col(&p99, true), 3)
    ));
    out
}
