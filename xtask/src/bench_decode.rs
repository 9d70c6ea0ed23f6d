//! `cargo xtask bench decode`: what does decoding cost per exchange, per protocol?
//!
//! The recorded real traffic in `agent/tests/fixtures/<protocol>/*.json` is replayed through
//! the agent's decoders, as the protocol registry hands them to the connection tracker, by the
//! example `agent/examples/decode_bench.rs` (see there for the method), built in release
//! without the eBPF programs and run in a pinned process. This turns its per-run lines into a
//! Markdown report. No agent, kernel or root is involved.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context};

use crate::bench::{machine, spread_cell, Cpu};
use crate::util::{cmd, display, root, run};

/// Where the example is built: `AYA_BUILD_SKIP=1` changes the agent's build script output,
/// so sharing `target/` would make the next normal build redo the agent (eBPF included).
const TARGET_DIR: &str = "target/decode-bench";

/// Options of `cargo xtask bench decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// Replays of every fixture per timed run.
    #[arg(long, default_value_t = 5000)]
    iterations: u64,
    /// Timed runs per protocol (after one discarded warm-up run).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// CPU to pin the benchmark process to (taskset), or `none`.
    #[arg(long, default_value = "1")]
    cpu: Cpu,
}

impl DecodeArgs {
    /// The full command line, every option spelled out, for the report.
    fn command(&self) -> String {
        format!(
            "cargo xtask bench decode --iterations {} --runs {} --cpu {}",
            self.iterations, self.runs, self.cpu
        )
    }
}

/// One `protocol=… run=… …` line of the example's output.
#[derive(Debug, Clone, PartialEq)]
struct RunLine {
    protocol: String,
    fixtures: u64,
    replays: u64,
    exchanges: u64,
    bytes: u64,
    errors: u64,
    ns: u64,
}

impl RunLine {
    fn parse(line: &str) -> anyhow::Result<RunLine> {
        let fields: BTreeMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let num = |key: &str| -> anyhow::Result<u64> {
            fields
                .get(key)
                .with_context(|| format!("no {key}= in {line:?}"))?
                .parse()
                .with_context(|| format!("{key}= is not a number in {line:?}"))
        };
        Ok(RunLine {
            protocol: fields
                .get("protocol")
                .with_context(|| format!("no protocol= in {line:?}"))?
                .to_string(),
            fixtures: num("fixtures")?,
            replays: num("replays")?,
            exchanges: num("exchanges")?,
            bytes: num("bytes")?,
            errors: num("errors")?,
            ns: num("ns")?,
        })
    }

    fn ns_per_exchange(&self) -> f64 {
        self.ns as f64 / self.exchanges.max(1) as f64
    }

    fn ns_per_kib(&self) -> f64 {
        self.ns as f64 * 1024.0 / self.bytes.max(1) as f64
    }

    fn exchanges_per_second(&self) -> f64 {
        self.exchanges as f64 * 1e9 / self.ns.max(1) as f64
    }
}

/// Builds and runs the decode benchmark and prints a Markdown report.
pub fn decode(args: &DecodeArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.iterations == 0 {
        bail!("--runs and --iterations must be at least 1");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.cpu.0.is_some_and(|c| c >= cpus) {
        bail!("--cpu {}: this machine has only CPUs 0..{cpus}", args.cpu);
    }
    // `cargo build` then the binary, rather than `cargo run`, so that only the benchmark is
    // pinned, not cargo.
    run(cmd("cargo").env("AYA_BUILD_SKIP", "1").args([
        "build",
        "--release",
        "-p",
        "agent",
        "--example",
        "decode_bench",
        "--target-dir",
        TARGET_DIR,
    ]))?;
    let example = root()
        .join(TARGET_DIR)
        .join("release/examples/decode_bench");
    let mut bench = match args.cpu.0 {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(&example);
            c
        }
        None => Command::new(&example),
    };
    bench
        .args(["--iterations", &args.iterations.to_string()])
        .args(["--runs", &args.runs.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    println!("$ {}", display(&bench));
    let output = bench
        .output()
        .with_context(|| format!("starting {}", display(&bench)))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "`{}` failed ({}): {stdout}",
        display(&bench),
        output.status
    );
    let mut by_protocol: Vec<(String, Vec<RunLine>)> = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with("protocol=")) {
        let r = RunLine::parse(line)?;
        println!(
            "[bench] {:<8} {:.0} ns/exchange, {:.0} ns/KiB, {:.0} exchanges/s",
            r.protocol,
            r.ns_per_exchange(),
            r.ns_per_kib(),
            r.exchanges_per_second()
        );
        match by_protocol.iter_mut().find(|(p, _)| *p == r.protocol) {
            Some((_, runs)) => runs.push(r),
            None => by_protocol.push((r.protocol.clone(), vec![r])),
        }
    }
    ensure!(
        !by_protocol.is_empty(),
        "`{}` printed no results: {stdout}",
        display(&bench)
    );
    println!("\n{}", report(args, &by_protocol));
    Ok(())
}

fn report(args: &DecodeArgs, by_protocol: &[(String, Vec<RunLine>)]) -> String {
    let pinned = match args.cpu.0 {
        Some(n) => format!("pinned to CPU {n}"),
        None => "unpinned".to_owned(),
    };
    let mut out = String::new();
    out.push_str("### Decoder cost: recorded traffic replayed through each decoder\n\n");
    out.push_str(&format!("Command: `{}`\n\n", args.command()));
    out.push_str(&format!(
        "Machine: {}. One process, {pinned}, runs `agent/examples/decode_bench.rs` (release; \
         built with `AYA_BUILD_SKIP=1` in `{TARGET_DIR}`). For each protocol every fixture in \
         `agent/tests/fixtures/<protocol>/` is replayed {} times per run, each replay through \
         a fresh decoder from the protocol registry (`protocol::REGISTRY`) as a new connection \
         gets, one chunk per recorded syscall, then `close`; exchanges are built, turned into \
         the agent's `Detail`s as the connection tracker gets them, and dropped, so their \
         allocations count. {} timed runs after one discarded warm-up run.\n\n",
        machine(),
        args.iterations,
        args.runs
    ));
    out.push_str(
        "min / **median** / max over runs:\n\n\
         | protocol | fixtures | exchanges / replay of all | bytes / replay of all | ns per exchange | ns per KiB | exchanges/s | decoder errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (protocol, runs) in by_protocol {
        let first = &runs[0];
        let per_pass = |v: u64| v / (first.replays / first.fixtures.max(1)).max(1);
        let col = |f: fn(&RunLine) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
        out.push_str(&format!(
            "| {protocol} | {} | {} | {} | {} | {} | {} | {} |\n",
            first.fixtures,
            per_pass(first.exchanges),
            per_pass(first.bytes),
            spread_cell(&col(RunLine::ns_per_exchange), 0),
            spread_cell(&col(RunLine::ns_per_kib), 0),
            spread_cell(&col(RunLine::exchanges_per_second), 0),
            runs.iter().map(|r| r.errors).sum::<u64>(),
        ));
    }
    out.push_str(
        "\nThe fixtures differ in size per exchange (e.g. pgbench's TPC-B statements vs. a few \
         small HTTP GETs), so ns per exchange compares decoders only together with ns per \
         KiB.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_run_line() {
        let r = RunLine::parse(
            "protocol=http1 run=1 fixtures=10 replays=2000 exchanges=3000 bytes=2439000 errors=0 ns=1500000",
        )
        .unwrap();
        assert_eq!(r.protocol, "http1");
        assert_eq!(r.ns_per_exchange(), 500.0);
        assert_eq!(r.exchanges_per_second(), 2_000_000.0);
        assert!(RunLine::parse("protocol=http1 run=1").is_err());
    }
}
