//! `cargo xtask bench framing-kafka`: what do large Kafka Fetch responses cost with the
//! agent's in-kernel walk of them, against its old prefix capture?
//!
//! Model: a Kafka peer pair in one Python process on 127.0.0.1 (no broker: the server answers
//! every Fetch v12 request with a response whose one partition holds S KiB of record batches,
//! 16 KiB and 100 records each, written with one `sendall`; the client reads each response
//! with `recv` calls of up to 1 MiB). F fetches per run, one after another on one connection.
//!
//! Pairing: every round runs, per size, no agent, an agent capturing a prefix per syscall
//! (`--framing=false`) and one walking the messages in the kernel (the default), as
//! `bench framing` does (its `Variant` and `run_rounds`); one warm-up round is discarded.
//!
//! Figures per fetch divide by F: agent CPU (from /proc), kernel BPF time and bytes copied
//! (deltas of the agent's self-metrics). Exactness compares the records the agent counted on
//! the client's and on the server's end with the F × S / 16 × 100 the server sent. Latency is
//! the client's, from the request's write to the response's last byte, in Python.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use harness::{cpu_time, rss_bytes, Agent, AgentOptions, Metrics};

use crate::bench::{
    clock_ticks_per_second, command_tail, machine, other_agents_warning, settle, spread_cell, Cpu,
    LOST_METRIC,
};
use crate::bench_framing::{run_rounds, Variant, BPF_TIME_METRIC, CAPTURED_METRIC};
use crate::bench_pgbench::placement_of;
use crate::util::{bench_agent, build_agent, display};

/// Fetches the agent decoded, on the client's end.
const FETCHES_METRIC: &str = "messaging_client_operation_duration_seconds_count";
/// Records counted on the client's and on the server's end.
const CLIENT_RECORDS_METRIC: &str = "messaging_client_consumed_messages_total";
const SERVER_RECORDS_METRIC: &str = "messaging_server_delivered_messages_total";
/// Records per 16 KiB batch.
const RECORDS_PER_BATCH: u64 = 100;

/// The peer pair: `python3 -c PEER <KiB per response> <fetches>`; prints
/// `<seconds> <p99 µs> <records sent>`.
const PEER: &str = r#"
import socket, struct, sys, threading, time
kib, fetches = int(sys.argv[1]), int(sys.argv[2])
def uv(n):
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7f) | 0x80]); n >>= 7
    return out + bytes([n])
def batch():
    rest = struct.pack(">ibihiqqqhii", 0, 2, 0, 0, 99, 1, 1, -1, -1, -1, 100)
    rest += b"\x5a" * (16384 - 12 - len(rest))
    return struct.pack(">qi", 0, len(rest)) + rest
records = batch() * (kib // 16)
def frame(b):
    return struct.pack(">i", len(b)) + b
def request(corr):
    b = struct.pack(">hhih", 1, 12, corr, 5) + b"bench" + uv(0)
    b += struct.pack(">iiiibii", -1, 500, 1, 50 << 20, 0, 0, -1)
    b += uv(2) + uv(6) + b"bench" + uv(2)
    b += struct.pack(">iiqiqi", 0, -1, 0, -1, -1, 64 << 20) + uv(0) + uv(0)
    return frame(b + uv(1) + uv(1) + uv(0))
def response(corr):
    b = struct.pack(">i", corr) + uv(0) + struct.pack(">ihi", 0, 0, 7)
    b += uv(2) + uv(6) + b"bench" + uv(2)
    b += struct.pack(">ihqqq", 0, 0, 1, 1, 0) + uv(1) + struct.pack(">i", -1)
    b += uv(len(records) + 1) + records + uv(0)
    return frame(b + uv(0) + uv(0))
def recv_exact(s, n):
    out = bytearray()
    while len(out) < n:
        got = s.recv(min(1 << 20, n - len(out)))
        if not got: raise EOFError
        out += got
    return bytes(out)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
def serve():
    c, _ = srv.accept()
    try:
        while True:
            n = struct.unpack(">i", recv_exact(c, 4))[0]
            corr = struct.unpack(">i", recv_exact(c, n)[4:8])[0]
            c.sendall(response(corr))
    except EOFError:
        c.close()
threading.Thread(target=serve, daemon=True).start()
s = socket.create_connection(srv.getsockname())
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
latencies = []
started = time.perf_counter()
for corr in range(fetches):
    t = time.perf_counter()
    s.sendall(request(corr))
    n = struct.unpack(">i", recv_exact(s, 4))[0]
    recv_exact(s, n)
    latencies.append(time.perf_counter() - t)
elapsed = time.perf_counter() - started
s.close()
latencies.sort()
p99 = latencies[max(0, -(-len(latencies) * 99 // 100) - 1)]
print(elapsed, p99 * 1e6, fetches * (kib // 16) * 100)
"#;

/// Options of `cargo xtask bench framing-kafka`.
#[derive(Debug, clap::Args)]
pub struct FramingKafkaArgs {
    /// Records per Fetch response, in KiB (a multiple of 16: batches of 16 KiB),
    /// comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,1024,8192")]
    kib: Vec<u64>,
    /// Fetches per run, one after another on one connection.
    #[arg(long, default_value_t = 200)]
    fetches: u64,
    /// Measured rounds; each runs the peers once per size and variant.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CPU for the peers (taskset), or `none`.
    #[arg(long, default_value = "0")]
    peer_cpu: Cpu,
    /// CPU for the agent, or `none` (the scheduler places it).
    #[arg(long, default_value = "none")]
    agent_cpu: Cpu,
    /// Use the existing agent binary instead of running `cargo build --release -p agent`
    /// (also implied by PERISCOPE_BIN).
    #[arg(long)]
    no_build: bool,
    /// Extra arguments for both agents, after `--`.
    #[arg(last = true)]
    agent_args: Vec<String>,
}

impl FramingKafkaArgs {
    /// The command line that reproduces this run, for the report.
    fn command(&self) -> String {
        let kib: Vec<String> = self.kib.iter().map(u64::to_string).collect();
        let mut c = format!(
            "cargo xtask bench framing-kafka --kib {} --fetches {} --rounds {} --peer-cpu {} \
             --agent-cpu {}",
            kib.join(","),
            self.fetches,
            self.rounds,
            self.peer_cpu,
            self.agent_cpu
        );
        c.push_str(&command_tail(self.no_build, &self.agent_args));
        c
    }
}

/// What the agent did during one run (deltas over the run).
struct AgentRun {
    cpu: Duration,
    rss_bytes: u64,
    lost: f64,
    bpf_seconds: f64,
    captured_bytes: f64,
    client_records: f64,
    server_records: f64,
}

struct Run {
    seconds: f64,
    p99_us: f64,
    fetches: u64,
    records_made: u64,
    agent: Option<AgentRun>,
}

impl Run {
    fn per_fetch(&self, total: f64) -> f64 {
        total / self.fetches.max(1) as f64
    }

    fn rate(&self) -> Option<f64> {
        Some(self.fetches as f64 / self.seconds.max(1e-9))
    }

    fn p99_ms(&self) -> Option<f64> {
        Some(self.p99_us / 1e3)
    }

    fn cpu_us(&self) -> Option<f64> {
        Some(self.per_fetch(self.agent.as_ref()?.cpu.as_secs_f64() * 1e6))
    }

    fn bpf_us(&self) -> Option<f64> {
        Some(self.per_fetch(self.agent.as_ref()?.bpf_seconds * 1e6))
    }

    fn bytes(&self) -> Option<f64> {
        Some(self.per_fetch(self.agent.as_ref()?.captured_bytes))
    }

    fn client_share(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(100.0 * a.client_records / self.records_made.max(1) as f64)
    }

    fn server_share(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(100.0 * a.server_records / self.records_made.max(1) as f64)
    }
}

/// Runs the benchmark and prints a Markdown report.
pub fn framing_kafka(args: &FramingKafkaArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.fetches == 0 {
        bail!("--rounds and --fetches must be at least 1");
    }
    if args.kib.is_empty() || args.kib.iter().any(|k| *k == 0 || k % 16 != 0) {
        bail!("--kib needs sizes that are multiples of 16, e.g. `--kib 16,1024,8192`");
    }
    if !harness::is_root() {
        bail!("the agent loads eBPF programs: run as root");
    }
    crate::setup::setup()?;
    let bin = bench_agent(args.no_build, build_agent)?;
    let warning = other_agents_warning("their overhead is in every column");
    let placement = format!(
        "peers {} (taskset), agent {}",
        placement_of(args.peer_cpu),
        placement_of(args.agent_cpu)
    );
    println!("[bench] {placement}; agent {}", bin.display());
    let agent_options = AgentOptions {
        bin: Some(bin),
        args: args.agent_args.clone(),
        cpu: args.agent_cpu.0,
        ..AgentOptions::default()
    };
    // `run_rounds` hands each size a path; the peers need none.
    let labels: Vec<PathBuf> = args
        .kib
        .iter()
        .map(|k| PathBuf::from(k.to_string()))
        .collect();
    let measure = |label: &str, kib: u64, _: &std::path::Path, variant: Variant| {
        let run = run_variant(args, kib, variant, &agent_options)?;
        println!(
            "[bench] {label} {kib:>5} KiB {:<7}: {}",
            variant.name(),
            round_line(&run)
        );
        anyhow::Ok(run)
    };
    let rounds = run_rounds(args.rounds, &args.kib, &labels, measure)?;
    println!(
        "\n{}",
        report(args, &format!("{placement}.{warning}"), &rounds)
    );
    Ok(())
}

/// One run of the peers, with the agent `variant` asks for.
fn run_variant(
    args: &FramingKafkaArgs,
    kib: u64,
    variant: Variant,
    agent_options: &AgentOptions,
) -> anyhow::Result<Run> {
    let Some(variant_args) = variant.agent_args() else {
        return run_peers(args, kib, None);
    };
    let mut options = agent_options.clone();
    options.args = variant_args
        .iter()
        .map(|&a| a.to_owned())
        .chain(agent_options.args.iter().cloned())
        .collect();
    let mut agent = Agent::start_with(options)?;
    let pid = agent.pid();
    let before = agent
        .try_metrics()
        .with_context(|| format!("scraping the agent; its log:\n{}", agent.log()))?;
    let fetches = |m: &Metrics| m.sum(FETCHES_METRIC, &[("messaging_operation_name", "receive")]);
    let fetches_before = fetches(&before);
    let cpu_before = cpu_time(pid)?;
    let mut run = run_peers(args, kib, None)?;
    let (_, after) = settle(&agent, &fetches, &|m| {
        fetches(m) - fetches_before >= args.fetches as f64
    })?;
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    let rss = rss_bytes(pid)?;
    let status = agent.stop()?;
    if !status.success() {
        eprintln!(
            "[bench] warning: the agent exited with {status}; its log:\n{}",
            agent.log()
        );
    }
    let delta = |metric: &str| after.sum(metric, &[]) - before.sum(metric, &[]);
    run.agent = Some(AgentRun {
        cpu,
        rss_bytes: rss,
        lost: after.sum(LOST_METRIC, &[]),
        bpf_seconds: delta(BPF_TIME_METRIC),
        captured_bytes: delta(CAPTURED_METRIC),
        client_records: delta(CLIENT_RECORDS_METRIC),
        server_records: delta(SERVER_RECORDS_METRIC),
    });
    Ok(run)
}

/// Runs the peer pair once.
fn run_peers(args: &FramingKafkaArgs, kib: u64, agent: Option<AgentRun>) -> anyhow::Result<Run> {
    let mut cmd = match args.peer_cpu.0 {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "python3"]);
            c
        }
        None => Command::new("python3"),
    };
    cmd.args(["-c", PEER, &kib.to_string(), &args.fetches.to_string()]);
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", display(&cmd)))?;
    if !out.status.success() {
        bail!(
            "the Kafka peers failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading the peers' output {text:?}"))?;
    let [seconds, p99_us, records] = fields[..] else {
        bail!("the peers printed {text:?}, not `<seconds> <p99 µs> <records>`");
    };
    Ok(Run {
        seconds,
        p99_us,
        fetches: args.fetches,
        records_made: records as u64,
        agent,
    })
}

fn round_line(run: &Run) -> String {
    let mut line = format!(
        "{:.0} fetches/s, p99 {:.3} ms",
        run.rate().unwrap_or(0.0),
        run.p99_us / 1e3
    );
    if let Some(a) = &run.agent {
        line.push_str(&format!(
            "; agent {:.2} s CPU, BPF {:.3} s, {:.0} bytes copied, RSS {:.1} MB, lost events {}, \
             records counted client {} server {} of {}",
            a.cpu.as_secs_f64(),
            a.bpf_seconds,
            a.captured_bytes,
            a.rss_bytes as f64 / 1e6,
            a.lost,
            a.client_records,
            a.server_records,
            run.records_made
        ));
    }
    line
}

fn report(args: &FramingKafkaArgs, placement: &str, rounds: &[Vec<Vec<Run>>]) -> String {
    let mut out = String::new();
    out.push_str("### Kafka large Fetch responses: prefix capture vs in-kernel framing\n\n");
    out.push_str(&format!("Command: `{}`\n\n", args.command()));
    out.push_str(&format!(
        "Machine: {}. Placement: {placement} Each run: {} Fetch v12 exchanges on one loopback \
         connection between two Python peers, each response holding S KiB of record batches \
         (16 KiB and {RECORDS_PER_BATCH} records each), written with one `sendall`, read with \
         `recv` of up to 1 MiB; without an agent, with `--framing=false --bpf-stats` and with \
         `--bpf-stats`, per size, in that order; one warm-up round discarded. Per fetch: agent \
         CPU from /proc, kernel BPF time (`{BPF_TIME_METRIC}`), bytes copied \
         (`{CAPTURED_METRIC}`); records counted = `{CLIENT_RECORDS_METRIC}` / \
         `{SERVER_RECORDS_METRIC}` against the records sent.\n\n",
        machine(),
        args.fetches
    ));
    type Column = fn(&Run) -> Option<f64>;
    let columns: [(&str, Column, usize); 8] = [
        ("fetches/s", Run::rate, 0),
        ("p99 latency (ms)", Run::p99_ms, 3),
        ("agent CPU (µs/fetch)", Run::cpu_us, 1),
        ("kernel BPF time (µs/fetch)", Run::bpf_us, 2),
        ("bytes copied / fetch", Run::bytes, 0),
        ("client records counted / sent (%)", Run::client_share, 1),
        ("server records counted / sent (%)", Run::server_share, 1),
        (
            "agent RSS (MB)",
            |r| Some(r.agent.as_ref()?.rss_bytes as f64 / 1e6),
            1,
        ),
    ];
    out.push_str(
        "min / **median** / max over rounds:\n\n\
         | KiB / response | metric | without agent | prefix capture | in-kernel framing |\n\
         |---:|---|---:|---:|---:|\n",
    );
    for (&kib, size_rounds) in args.kib.iter().zip(rounds) {
        for (name, f, decimals) in columns {
            let cells: Vec<String> = (0..Variant::ALL.len())
                .map(|v| {
                    let values: Vec<f64> =
                        size_rounds.iter().filter_map(|runs| f(&runs[v])).collect();
                    spread_cell(&values, decimals)
                })
                .collect();
            out.push_str(&format!("| {kib} | {name} | {} |\n", cells.join(" | ")));
        }
    }
    let lost: f64 = rounds
        .iter()
        .flatten()
        .flatten()
        .filter_map(|r| r.agent.as_ref().map(|a| a.lost))
        .sum();
    let hz = clock_ticks_per_second();
    out.push_str(&format!(
        "\nKernel events lost over all runs: {lost}. Agent CPU is read in clock ticks of {} ms: \
         one tick is {:.1} µs/fetch at {} fetches per run.\n",
        1000 / hz,
        1e6 / hz as f64 / args.fetches as f64,
        args.fetches
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: FramingKafkaArgs,
    }

    #[test]
    fn options_default_and_command_spells_them_out() {
        let cli = Cli::try_parse_from(["framing-kafka"]).unwrap();
        assert_eq!(cli.args.kib, [16, 1024, 8192]);
        assert_eq!(
            cli.args.command(),
            "cargo xtask bench framing-kafka --kib 16,1024,8192 --fetches 200 --rounds 3 \
             --peer-cpu 0 --agent-cpu none"
        );
        let cli = Cli::try_parse_from(["framing-kafka", "--kib", "32", "--no-build", "--", "-v"])
            .unwrap();
        assert!(cli.args.command().ends_with("--no-build -- -v"));
    }
}
