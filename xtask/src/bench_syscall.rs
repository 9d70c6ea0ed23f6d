//! `cargo xtask bench syscall`: what do Periscope's kernel hooks add to each syscall?
//!
//! Three tight syscall loops ([`Workload`]) run in a worker process pinned to one CPU, first
//! with no agent, then under a fresh agent in each [`Mode`]: the I/O hooks alone on
//! `tp_btf` and on raw tracepoints (`--syscalls none`), the same with per-syscall statistics
//! (the default selection; entry hook on each selected syscall's own tracepoint), statistics
//! with the entry hook on `raw_syscalls:sys_enter` (which every syscall runs), and statistics
//! with an exit program of their own. The order is
//! rotated from round to round (after one discarded warm-up round) so that drift of the machine
//! hits every mode alike. The hooks run in the context of the worker's syscalls, so their cost
//! is the difference in ns per syscall; the agent itself sits on another CPU.

use std::fmt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use harness::{Agent, AgentOptions};

use crate::bench::{
    machine, other_agents_warning, requests_counted, rotated, settled_metrics, spread, spread_cell,
    Cpu, LOST_METRIC,
};
use crate::syscall_worker::{WorkerReport, Workload};
use crate::util::{bench_agent, build_agent, display};

/// The agent's info metric naming the hook mechanism it ended up on.
const HOOKS_METRIC: &str = "periscope_hooks_info";
/// Calls counted by the syscall statistics.
const SYSCALL_COUNT_METRIC: &str = "syscall_duration_seconds_count";

/// How the worker runs: without the agent, or under an agent started with some arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    None,
    /// I/O hooks on `tp_btf`, no syscall statistics.
    Btf,
    /// `Btf` without kernel framing (`--framing=false`): a prefix per syscall, as on kernels
    /// before 5.17; the difference to `Btf` is what walking the messages costs.
    BtfPrefix,
    /// I/O hooks on raw tracepoints, no syscall statistics.
    Raw,
    /// `tp_btf` I/O hooks with syscall statistics (the default selection) in the same exit
    /// program, the entry hook on each selected syscall's `syscalls:sys_enter_<name>`.
    BtfStats,
    /// The same with the entry hook on `raw_syscalls:sys_enter`, which every syscall runs.
    BtfStatsRawEntry,
    /// `BtfStats` on raw tracepoints.
    RawStats,
    /// `tp_btf` with syscall statistics in an exit program of their own.
    BtfStatsSeparate,
}

impl Mode {
    const ALL: [Mode; 8] = [
        Mode::None,
        Mode::Btf,
        Mode::BtfPrefix,
        Mode::Raw,
        Mode::BtfStats,
        Mode::BtfStatsRawEntry,
        Mode::RawStats,
        Mode::BtfStatsSeparate,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Btf => "btf",
            Mode::BtfPrefix => "btf-prefix",
            Mode::Raw => "raw",
            Mode::BtfStats => "btf+stats",
            Mode::BtfStatsRawEntry => "btf+stats-rawenter",
            Mode::RawStats => "raw+stats",
            Mode::BtfStatsSeparate => "btf+stats-sep",
        }
    }

    /// The agent's arguments, `None` for no agent.
    fn args(self) -> Option<&'static [&'static str]> {
        match self {
            Mode::None => None,
            Mode::Btf => Some(&["--syscall-hooks", "btf", "--syscalls", "none"]),
            Mode::BtfPrefix => Some(&[
                "--syscall-hooks",
                "btf",
                "--syscalls",
                "none",
                "--framing=false",
            ]),
            Mode::Raw => Some(&["--syscall-hooks", "raw", "--syscalls", "none"]),
            Mode::BtfStats => Some(&["--syscall-hooks", "btf", "--syscalls", "default"]),
            Mode::BtfStatsRawEntry => Some(&[
                "--syscall-hooks",
                "btf",
                "--syscalls",
                "default",
                "--syscalls-entry",
                "raw-syscalls",
            ]),
            Mode::RawStats => Some(&["--syscall-hooks", "raw", "--syscalls", "default"]),
            Mode::BtfStatsSeparate => Some(&[
                "--syscall-hooks",
                "btf",
                "--syscalls",
                "default",
                "--syscalls-separate-exit",
            ]),
        }
    }

    /// Whether the agent keeps syscall statistics in this mode.
    fn stats(self) -> bool {
        matches!(
            self,
            Mode::BtfStats | Mode::BtfStatsRawEntry | Mode::RawStats | Mode::BtfStatsSeparate
        )
    }

    /// The order of the modes in `round` (0 is the warm-up): rotated by one each round.
    fn order(round: usize) -> [Mode; 8] {
        rotated(Mode::ALL, round)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of `cargo xtask bench syscall`.
#[derive(Debug, clap::Args)]
pub struct SyscallArgs {
    /// Measured rounds; each runs every workload without the agent and under the agent in
    /// each mode (I/O hooks on btf and raw, with and without syscall statistics).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Loop iterations of the pipe and getppid workloads; tcp-http and tcp-nginx run a quarter as many
    /// (it makes 4 syscalls per iteration), so each workload runs for a similar time.
    #[arg(long, default_value_t = 1_000_000)]
    iterations: u64,
    /// CPU for the worker process (taskset), or `none`.
    #[arg(long, default_value = "1")]
    cpu: Cpu,
    /// CPU for the agent, or `none`: off the worker's CPU, so that only the hooks (which
    /// run inside the worker's syscalls) are measured, not the agent competing for its CPU.
    #[arg(long, default_value = "0")]
    agent_cpu: Cpu,
    /// Use the existing agent binary instead of running `cargo build --release -p agent`
    /// (also implied by PERISCOPE_BIN).
    #[arg(long)]
    no_build: bool,
}

impl SyscallArgs {
    /// The full command line, every option spelled out, for the report.
    fn command(&self) -> String {
        format!(
            "cargo xtask bench syscall --rounds {} --iterations {} --cpu {} --agent-cpu {}",
            self.rounds, self.iterations, self.cpu, self.agent_cpu
        )
    }

    fn iterations_of(&self, workload: Workload) -> u64 {
        match workload {
            Workload::TcpHttp | Workload::TcpNginx => (self.iterations / 4).max(1),
            Workload::Pipe | Workload::Getppid => self.iterations,
        }
    }
}

/// What the agent saw of a tcp-http run: did the tracked path really run?
struct Check {
    made: u64,
    counted: f64,
    lost: f64,
}

/// What the syscall statistics saw of a mode's runs: did the statistics path really run?
struct StatsCheck {
    round: usize,
    mode: Mode,
    /// `write` and `sendto` calls the pipe and tcp-http workloads made.
    made: u64,
    /// `write` and `sendto` calls the agent counted, over all cgroups (other processes' too).
    counted: f64,
}

struct Measurement {
    round: usize,
    mode: Mode,
    workload: Workload,
    report: WorkerReport,
    check: Option<Check>,
}

/// Runs the benchmark and prints a Markdown report.
pub fn syscall(args: &SyscallArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.iterations < 4 {
        bail!("--rounds must be at least 1 and --iterations at least 4");
    }
    if !harness::is_root() {
        bail!(
            "the agent loads eBPF programs: run as root (try `sudo -E cargo xtask bench syscall`)"
        );
    }
    let bin = bench_agent(args.no_build, || {
        crate::setup::setup()?;
        build_agent()
    })?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (what, cpu) in [("--cpu", args.cpu), ("--agent-cpu", args.agent_cpu)] {
        if cpu.0.is_some_and(|c| c >= cpus) {
            bail!("{what} {cpu}: this machine has only CPUs 0..{cpus}");
        }
    }
    let warning = other_agents_warning("their hooks are in every column, `none` included");
    let on = |cpu: Cpu| match cpu.0 {
        Some(n) => format!("pinned to CPU {n}"),
        None => "unpinned".to_owned(),
    };
    let placement = format!(
        "worker {}, agent {} (taskset); {cpus} CPUs online",
        on(args.cpu),
        on(args.agent_cpu)
    );
    println!("[bench] {placement}");
    println!("[bench] agent {}", bin.display());

    let mut measured = Vec::new();
    let mut stats_checks = Vec::new();
    for round in 0..=args.rounds {
        let label = if round == 0 {
            "warm-up (discarded)".to_owned()
        } else {
            format!("round {round}")
        };
        for mode in Mode::order(round) {
            let options = mode.args().map(|agent_args| AgentOptions {
                bin: Some(bin.clone()),
                args: agent_args.iter().map(|a| a.to_string()).collect(),
                cpu: args.agent_cpu.0,
                ..AgentOptions::default()
            });
            let (results, hooks, stats) = run_mode(args, options, mode.stats())?;
            let mut line = round_line(&results, &hooks);
            if let Some((made, counted)) = stats {
                line.push_str(&format!(
                    "; statistics counted {counted} write+sendto, worker made {made}"
                ));
                if round > 0 {
                    stats_checks.push(StatsCheck {
                        round,
                        mode,
                        made,
                        counted,
                    });
                }
            }
            println!("[bench] {label} {mode:<18}: {line}");
            if round > 0 {
                measured.extend(
                    results
                        .into_iter()
                        .map(|(workload, report, check)| Measurement {
                            round,
                            mode,
                            workload,
                            report,
                            check,
                        }),
                );
            }
        }
    }

    println!(
        "\n{}",
        report(
            args,
            &format!("{placement}.{warning}"),
            &measured,
            &stats_checks
        )
    );
    Ok(())
}

type WorkloadResult = (Workload, WorkerReport, Option<Check>);

/// Runs every workload once, under a fresh agent started with `agent` (none if `None`).
/// Also returns the hook mechanism the agent reported, if it exports it, and with `stats` the
/// `write` calls the workloads made and the agent's syscall statistics counted.
#[allow(clippy::type_complexity)]
fn run_mode(
    args: &SyscallArgs,
    agent: Option<AgentOptions>,
    stats: bool,
) -> anyhow::Result<(Vec<WorkloadResult>, Option<String>, Option<(u64, f64)>)> {
    let mut agent = agent.map(Agent::start_with).transpose()?;
    let mut results = Vec::new();
    let mut hooks = None;
    for workload in Workload::ALL {
        let report = run_worker(args, workload)?;
        let check = match (&agent, report.server_port) {
            (Some(agent), Some(port)) => {
                // The agent is fresh and the port was just picked by the kernel, so every
                // request counted for it came from this run.
                let metrics = settled_metrics(agent, port, 0.0, report.requests)?;
                hooks = metrics
                    .samples(HOOKS_METRIC)
                    .into_iter()
                    .find_map(|s| s.labels.get("syscall_hooks").cloned());
                Some(Check {
                    made: report.requests,
                    counted: requests_counted(&metrics, port),
                    lost: metrics.sum(LOST_METRIC, &[]),
                })
            }
            _ => None,
        };
        results.push((workload, report, check));
    }
    let stats = match (&agent, stats) {
        (Some(agent), true) => {
            // Each pipe iteration writes once (`write`); each HTTP exchange sends twice (std's
            // TcpStream writes with `send`, which is the `sendto` syscall).
            let made: u64 = results
                .iter()
                .map(|(workload, report, _)| match workload {
                    Workload::Pipe => report.syscalls / 2,
                    Workload::TcpHttp | Workload::TcpNginx => 2 * report.requests,
                    Workload::Getppid => 0,
                })
                .sum();
            let mut counted = 0.0;
            // The agent reads its kernel table every 2 s; other processes' writes count too,
            // so this can only tell that at least the worker's writes were seen.
            harness::wait_until(Duration::from_secs(6), Duration::from_millis(250), || {
                counted = agent.try_metrics().map_or(0.0, |m| {
                    m.sum(SYSCALL_COUNT_METRIC, &[("syscall", "write")])
                        + m.sum(SYSCALL_COUNT_METRIC, &[("syscall", "sendto")])
                });
                counted >= made as f64
            });
            Some((made, counted))
        }
        _ => None,
    };
    if let Some(agent) = agent.as_mut() {
        let status = agent.stop()?;
        if !status.success() {
            eprintln!(
                "[bench] warning: the agent exited with {status} after SIGINT; its log:\n{}",
                agent.log()
            );
        }
    }
    Ok((results, hooks, stats))
}

/// Runs `cargo xtask bench-worker <workload> <iterations>` (this very binary), pinned.
fn run_worker(args: &SyscallArgs, workload: Workload) -> anyhow::Result<WorkerReport> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut cmd = match args.cpu.0 {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.arg("bench-worker")
        .arg(workload.name())
        .arg(args.iterations_of(workload).to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let output = cmd
        .output()
        .with_context(|| format!("starting {}", display(&cmd)))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "`{}` failed ({}): {stdout}",
        display(&cmd),
        output.status
    );
    stdout
        .lines()
        .last()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("reading the output of `{}`", display(&cmd)))
}

fn round_line(results: &[WorkloadResult], hooks: &Option<String>) -> String {
    let mut parts: Vec<String> = results
        .iter()
        .map(|(workload, report, _)| format!("{workload} {:.1}", report.ns_per_syscall))
        .collect();
    parts[0].push_str(" ns/syscall");
    let mut line = parts.join(", ");
    for (_, _, check) in results {
        if let Some(c) = check {
            line.push_str(&format!(
                "; agent counted {} / {} requests, lost {} events",
                c.counted, c.made, c.lost
            ));
        }
    }
    if let Some(hooks) = hooks {
        line.push_str(&format!(" (hooks: {hooks})"));
    }
    line
}

fn describe(workload: Workload) -> &'static str {
    match workload {
        Workload::Pipe => {
            "`pipe`: 1-byte `write` + `read` on a pipe (an fd Periscope does not track)"
        }
        Workload::Getppid => {
            "`getppid`: a syscall Periscope ignores and the default selection leaves out (the exit \
             hook still fires and returns at once; a `raw_syscalls` entry hook too)"
        }
        Workload::TcpHttp => {
            "`tcp-http`: HTTP request + response over loopback TCP, 4 syscalls on tracked \
             sockets, payload copied to the ring buffer"
        }
        Workload::TcpNginx => {
            "`tcp-nginx`: the same with the request wrk sends and the response nginx answers in \
             `bench http` (a 160-byte head), verbatim"
        }
    }
}

fn report(
    args: &SyscallArgs,
    placement: &str,
    measured: &[Measurement],
    stats_checks: &[StatsCheck],
) -> String {
    let ns = |mode: Mode, workload: Workload| -> Vec<f64> {
        measured
            .iter()
            .filter(|m| m.mode == mode && m.workload == workload)
            .map(|m| m.report.ns_per_syscall)
            .collect()
    };
    let median = |mode: Mode, workload: Workload| spread(&ns(mode, workload)).1;
    let delta = |mode: Mode, base: Mode, workload: Workload| {
        let (m, b) = (median(mode, workload), median(base, workload));
        format!("{:+.1} ns ({:+.0}%)", m - b, 100.0 * (m - b) / b)
    };
    let mut out = String::new();
    out.push_str("### Syscall overhead: what Periscope's kernel hooks add per syscall\n\n");
    out.push_str(&format!("Command: `{}`\n\n", args.command()));
    out.push_str(&format!(
        "Machine: {}. Placement: {placement} Each round runs every workload in a fresh worker \
         process without the agent (`none`) and under a fresh agent in each mode (ready before \
         the workloads, stopped with SIGINT after); the order of the modes rotates every round, \
         and one warm-up round is discarded. Iterations: {} (tcp-http: {}).\n\n",
        machine(),
        args.iterations,
        args.iterations_of(Workload::TcpHttp)
    ));
    out.push_str("Modes:\n");
    for mode in Mode::ALL {
        let how = match mode.args() {
            None => "no agent".to_owned(),
            Some(a) => format!("`periscope {}`", a.join(" ")),
        };
        out.push_str(&format!("- `{mode}`: {how}\n"));
    }
    out.push_str("\nns per syscall, min / **median** / max over rounds:\n\n| workload |");
    for mode in Mode::ALL {
        out.push_str(&format!(" {mode} |"));
    }
    out.push_str("\n|---|");
    for _ in Mode::ALL {
        out.push_str("---:|");
    }
    out.push('\n');
    for workload in Workload::ALL {
        out.push_str(&format!("| {workload} |"));
        for mode in Mode::ALL {
            out.push_str(&format!(" {} |", spread_cell(&ns(mode, workload), 1)));
        }
        out.push('\n');
    }
    out.push_str(
        "\nAdded per syscall (difference of medians). I/O hooks alone against no agent; syscall \
         statistics against the same hooks without them:\n\n\
         | workload | btf − none | btf − btf-prefix (framing) | raw − none | btf+stats − btf | \
         btf+stats-rawenter − btf | raw+stats − raw | btf+stats-sep − btf |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for workload in Workload::ALL {
        out.push_str(&format!(
            "| {workload} | {} | {} | {} | {} | {} | {} | {} |\n",
            delta(Mode::Btf, Mode::None, workload),
            delta(Mode::Btf, Mode::BtfPrefix, workload),
            delta(Mode::Raw, Mode::None, workload),
            delta(Mode::BtfStats, Mode::Btf, workload),
            delta(Mode::BtfStatsRawEntry, Mode::Btf, workload),
            delta(Mode::RawStats, Mode::Raw, workload),
            delta(Mode::BtfStatsSeparate, Mode::Btf, workload),
        ));
    }
    out.push('\n');
    for workload in Workload::ALL {
        out.push_str(&format!("- {}\n", describe(workload)));
    }
    out.push_str(
        "\nSanity check, tcp-http with the agent (`http_server_request_duration_seconds_count` \
         for the worker's port, `periscope_kernel_events_lost_total`):\n\n\
         | round | mode | requests counted / made | kernel events lost |\n|---|---|---:|---:|\n",
    );
    let mut checks: Vec<(usize, Mode, &Check)> = measured
        .iter()
        .filter_map(|m| Some((m.round, m.mode, m.check.as_ref()?)))
        .collect();
    checks.sort_by_key(|(round, mode, _)| (*round, *mode));
    let mut suspect = false;
    for (round, mode, c) in checks {
        suspect |= c.counted != c.made as f64 || c.lost != 0.0;
        out.push_str(&format!(
            "| {round} | {mode} | {} / {} | {} |\n",
            c.counted, c.made, c.lost
        ));
    }
    if suspect {
        out.push_str(
            "\n**Warning: the agent did not count every request, or lost events: the tcp-http \
             figures with the agent did not take the full captured path every time.**\n",
        );
    }
    let short = stats_checks
        .iter()
        .filter(|c| c.counted < c.made as f64)
        .count();
    out.push_str(&format!(
        "\nSyscall statistics: in {} of {} runs with statistics, the agent's \
         `syscall_duration_seconds_count` of `write` and `sendto` (all cgroups, so other \
         processes' too) reached at least the worker's ({} per run).\n",
        stats_checks.len() - short,
        stats_checks.len(),
        stats_checks.first().map_or(0, |c| c.made),
    ));
    if short > 0 {
        out.push_str(
            "\n**Warning: some runs with statistics counted fewer writes than the worker made.**\n",
        );
        for c in stats_checks.iter().filter(|c| c.counted < c.made as f64) {
            out.push_str(&format!(
                "- round {} {}: {} of {}\n",
                c.round, c.mode, c.counted, c.made
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_rotate_and_every_round_has_each_once() {
        assert_eq!(Mode::order(0), Mode::ALL);
        assert_eq!(Mode::order(1)[0], Mode::Btf);
        assert_eq!(Mode::order(1)[7], Mode::None);
        assert_eq!(Mode::order(8), Mode::order(0));
        for round in 0..8 {
            let mut seen = Mode::order(round).to_vec();
            seen.sort();
            assert_eq!(seen, Mode::ALL);
        }
    }
}
