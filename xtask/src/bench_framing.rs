//! `cargo xtask bench framing`: what do large PostgreSQL result sets cost with the agent's
//! in-kernel message framing, against its old prefix capture?
//!
//! Model: one PostgreSQL server holds a table `big` of 100 000 rows (created once). For each
//! result size R, pgbench runs `SELECT * FROM big WHERE id <= R` T times over one connection
//! in the extended protocol, so that each statement's response is R DataRow messages spread
//! over as many reads and writes as the server and client need.
//!
//! Pairing: every round runs, per size, three variants one after another: no agent, an agent
//! capturing a prefix per syscall (`--framing=false`), and an agent walking the messages in
//! the kernel (the default). Both agents run with `--bpf-stats`, so that the kernel programs'
//! own run time is measured too; one warm-up round is discarded, so that drift of the
//! machine hits every variant alike.
//!
//! Figures per statement divide by T: agent CPU (from /proc), kernel BPF time and bytes
//! copied to userspace (deltas of the agent's self-metrics from its first scrape, before
//! pgbench starts, to the last, once it has caught up). Exactness compares the rows the agent
//! counted on the server and on the client side with the T × R the server returned.
//!
//! Gaps: the BPF time covers every program the agent loaded, whichever process's syscall it
//! ran in (flow tracking included), the same in both agent variants. Agent CPU is read in
//! clock ticks, coarse at the default T (the report says how coarse).

use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{bail, Context};
use harness::{cpu_time, rss_bytes, Agent, AgentOptions, Metrics, PgServer, TempDir};

use crate::bench::{
    clock_ticks_per_second, command_tail, machine, other_agents_warning, settle, spread_cell, Cpu,
    LOST_METRIC,
};
use crate::bench_pgbench::{
    check_cpus, launch_postgres, parse_pgbench, pgbench_command, placement_of, PgbenchResult,
};
use crate::util::{bench_agent, build_agent, display};

/// Rows in table `big`: the largest result size there is.
const TABLE_ROWS: u64 = 100_000;
/// Creates table `big` (ids 1..=TABLE_ROWS, each with a 32-character name).
/// With a primary key, so that each statement reads only the rows it returns and the
/// latency columns show the transfer rather than a scan.
const CREATE_TABLE: &str = "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS name \
                            FROM generate_series(1, 100000) g; ALTER TABLE big ADD PRIMARY KEY (id)";
/// Operations the agent decoded on the server side, one series per operation and table.
const STATEMENTS_METRIC: &str = "db_server_operation_duration_seconds_count";
/// Rows returned, as the agent saw them on the server's and on the client's end.
const SERVER_ROWS_METRIC: &str = "db_server_response_returned_rows_sum";
const CLIENT_ROWS_METRIC: &str = "db_client_response_returned_rows_sum";
/// The kernel programs' own run time (only with `--bpf-stats`), one series per program.
pub(crate) const BPF_TIME_METRIC: &str = "periscope_bpf_program_run_time_seconds_total";
/// Payload bytes copied from the kernel to the agent.
pub(crate) const CAPTURED_METRIC: &str = "periscope_captured_bytes_total";
/// The label that tells this server's series apart from other databases' on the machine.
const PORT_LABEL: &str = "server_port";
/// File name prefix of pgbench's per-transaction logs (`-l --log-prefix`).
const LOG_PREFIX: &str = "pgbench_log";

/// What runs next to pgbench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// No agent.
    Without,
    /// An agent that captures a prefix per syscall (`--framing=false`).
    Prefix,
    /// An agent that walks the messages in the kernel.
    Framed,
}

impl Variant {
    /// In the order each round runs them.
    pub(crate) const ALL: [Variant; 3] = [Variant::Without, Variant::Prefix, Variant::Framed];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::Without => "without",
            Variant::Prefix => "prefix",
            Variant::Framed => "framed",
        }
    }

    /// The agent's arguments for this variant, before the user's; `None` without an agent.
    pub(crate) fn agent_args(self) -> Option<&'static [&'static str]> {
        match self {
            Variant::Without => None,
            Variant::Prefix => Some(&["--framing=false", "--bpf-stats"]),
            Variant::Framed => Some(&["--bpf-stats"]),
        }
    }
}

/// Options of `cargo xtask bench framing`.
#[derive(Debug, clap::Args)]
pub struct FramingArgs {
    /// Result sizes in rows, comma-separated; each from 1 to 100000 (the table's size).
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    rows: Vec<u64>,
    /// Statements per run (pgbench -t, one client).
    #[arg(long, default_value_t = 400)]
    transactions: u64,
    /// Measured rounds; each runs pgbench once per result size and variant (without agent,
    /// prefix capture, in-kernel framing).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CPU for pgbench (taskset), or `none`. The server (postmaster and its backend) is left
    /// to the scheduler.
    #[arg(long, default_value = "0")]
    pgbench_cpu: Cpu,
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

impl FramingArgs {
    /// The full command line, every option spelled out, for the report.
    fn command(&self) -> String {
        let rows: Vec<String> = self.rows.iter().map(u64::to_string).collect();
        let mut c = format!(
            "cargo xtask bench framing --rows {} --transactions {} --rounds {} \
             --pgbench-cpu {} --agent-cpu {}",
            rows.join(","),
            self.transactions,
            self.rounds,
            self.pgbench_cpu,
            self.agent_cpu
        );
        c.push_str(&command_tail(self.no_build, &self.agent_args));
        c
    }
}

/// What the agent did during one run: deltas from its scrape before pgbench started to the
/// one after it had caught up.
struct AgentRun {
    cpu: Duration,
    rss_bytes: u64,
    lost: f64,
    bpf_seconds: f64,
    captured_bytes: f64,
    server_rows: f64,
    client_rows: f64,
}

struct Run {
    pgbench: PgbenchResult,
    p99_ms: f64,
    /// T: statements made.
    statements: u64,
    /// T × R: rows the server returned.
    rows_made: u64,
    agent: Option<AgentRun>,
}

impl Run {
    /// `total` per statement, in millionths (µs for seconds).
    fn per_statement_micro(&self, total: f64) -> f64 {
        total * 1e6 / self.statements.max(1) as f64
    }

    fn cpu_us_per_statement(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(self.per_statement_micro(a.cpu.as_secs_f64()))
    }

    fn bpf_us_per_statement(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(self.per_statement_micro(a.bpf_seconds))
    }

    fn bytes_per_statement(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(a.captured_bytes / self.statements.max(1) as f64)
    }

    fn server_share(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(100.0 * a.server_rows / self.rows_made.max(1) as f64)
    }

    fn client_share(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(100.0 * a.client_rows / self.rows_made.max(1) as f64)
    }
}

/// Runs the benchmark and prints a Markdown report.
pub fn framing(args: &FramingArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.transactions == 0 {
        bail!("--rounds and --transactions must be at least 1");
    }
    if args.rows.is_empty() {
        bail!("--rows needs at least one result size, e.g. `--rows 10,1000,10000`");
    }
    if let Some(r) = args.rows.iter().find(|&&r| r == 0 || r > TABLE_ROWS) {
        bail!(
            "--rows {r}: each result size must be from 1 to {TABLE_ROWS} (the rows in table \
             `big`)"
        );
    }
    if !harness::is_root() {
        bail!(
            "the agent loads eBPF programs and PostgreSQL runs as its own user: run as root \
             (try `sudo -E cargo xtask bench framing`)"
        );
    }
    crate::setup::setup()?;
    let bin = bench_agent(args.no_build, build_agent)?;
    let cpus = check_cpus(args.pgbench_cpu, args.agent_cpu)?;
    let (pg, version) = launch_postgres()?;
    pg.psql(&["-c", CREATE_TABLE])
        .context("creating table `big`")?;

    // Scripts and pgbench's logs; removed on drop.
    let dir = TempDir::new("bench-framing")?;
    let scripts: Vec<PathBuf> = args
        .rows
        .iter()
        .map(|&r| {
            let path = dir.path().join(format!("select_{r}.sql"));
            std::fs::write(&path, format!("SELECT * FROM big WHERE id <= {r};\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        })
        .collect::<anyhow::Result<_>>()?;

    let warning = other_agents_warning("their overhead is in every column");
    let on = placement_of;
    let placement = format!(
        "pgbench -c1 -j1 {}, PostgreSQL {version} (postmaster + 1 backend) unpinned, agent {} \
         (taskset); {cpus} CPUs online",
        on(args.pgbench_cpu),
        on(args.agent_cpu)
    );
    println!("[bench] {placement}");
    println!("[bench] agent {}", bin.display());

    let agent_options = AgentOptions {
        bin: Some(bin),
        args: args.agent_args.clone(),
        cpu: args.agent_cpu.0,
        ..AgentOptions::default()
    };
    let measure = |label: &str, rows: u64, script: &Path, variant: Variant| {
        let run = run_variant(args, &pg, script, dir.path(), rows, variant, &agent_options)?;
        println!(
            "[bench] {label} {rows:>6} rows {:<7}: {}",
            variant.name(),
            round_line(&run)
        );
        anyhow::Ok(run)
    };

    let rounds = run_rounds(args.rounds, &args.rows, &scripts, measure)?;
    let port = pg.port();
    drop(pg);

    println!(
        "\n{}",
        report(args, &format!("{placement}.{warning}"), port, &rounds)
    );
    Ok(())
}

/// Runs one discarded warm-up round and `rounds` measured ones; each round runs, per size
/// (with its script), every variant in `Variant::ALL` order. Returns
/// `[size][measured round][variant]`.
pub(crate) fn run_rounds<R>(
    rounds: usize,
    sizes: &[u64],
    scripts: &[PathBuf],
    measure: impl Fn(&str, u64, &Path, Variant) -> anyhow::Result<R>,
) -> anyhow::Result<Vec<Vec<Vec<R>>>> {
    let mut out: Vec<Vec<Vec<R>>> = sizes.iter().map(|_| Vec::new()).collect();
    for round in 0..=rounds {
        let label = if round == 0 {
            "warm-up (discarded)".to_owned()
        } else {
            format!("round {round}")
        };
        for (s, (&size, script)) in sizes.iter().zip(scripts).enumerate() {
            let runs = Variant::ALL
                .into_iter()
                .map(|v| measure(&label, size, script, v))
                .collect::<anyhow::Result<Vec<R>>>()?;
            if round > 0 {
                out[s].push(runs);
            }
        }
    }
    Ok(out)
}

/// One pgbench run of `script`, with the agent `variant` asks for.
fn run_variant(
    args: &FramingArgs,
    pg: &PgServer,
    script: &Path,
    dir: &Path,
    rows: u64,
    variant: Variant,
    agent_options: &AgentOptions,
) -> anyhow::Result<Run> {
    let run = |agent: Option<AgentRun>, (pgbench, p99_ms): (PgbenchResult, f64)| Run {
        pgbench,
        p99_ms,
        statements: args.transactions,
        rows_made: args.transactions * rows,
        agent,
    };
    let Some(variant_args) = variant.agent_args() else {
        return Ok(run(None, run_pgbench(args, pg, script, dir)?));
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
    let cpu_before = cpu_time(pid)?;
    let pgbench = run_pgbench(args, pg, script, dir)?;
    let port = pg.port().to_string();
    let statements = |m: &Metrics| m.sum(STATEMENTS_METRIC, &[(PORT_LABEL, &port)]);
    let statements_before = statements(&before);
    let (_, after) = settle(&agent, &statements, &|m| {
        statements(m) - statements_before >= args.transactions as f64
    })?;
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    let rss = rss_bytes(pid)?;
    let status = agent.stop()?;
    if !status.success() {
        eprintln!(
            "[bench] warning: the agent exited with {status} after SIGINT; its log:\n{}",
            agent.log()
        );
    }
    let delta = |metric: &str, labels: &[(&str, &str)]| {
        after.sum(metric, labels) - before.sum(metric, labels)
    };
    let big = [
        (PORT_LABEL, port.as_str()),
        ("db_operation_name", "SELECT"),
        ("db_collection_name", "big"),
    ];
    Ok(run(
        Some(AgentRun {
            cpu,
            rss_bytes: rss,
            lost: after.sum(LOST_METRIC, &[]),
            bpf_seconds: delta(BPF_TIME_METRIC, &[]),
            captured_bytes: delta(CAPTURED_METRIC, &[]),
            server_rows: delta(SERVER_ROWS_METRIC, &big),
            client_rows: delta(CLIENT_ROWS_METRIC, &big),
        }),
        pgbench,
    ))
}

/// `pgbench -n -M extended -c 1 -j 1 -t <T> -f <script> -l`, pinned with taskset; returns its
/// summary and the p99 latency (ms) from its per-transaction log, which it then removes.
fn run_pgbench(
    args: &FramingArgs,
    pg: &PgServer,
    script: &Path,
    dir: &Path,
) -> anyhow::Result<(PgbenchResult, f64)> {
    let mut cmd = pgbench_command(pg, args.pgbench_cpu);
    cmd.args(["-n", "-M", "extended", "-c", "1", "-j", "1"])
        .args(["-t", &args.transactions.to_string()])
        .arg("-f")
        .arg(script)
        .arg("-l")
        .arg("--log-prefix")
        .arg(dir.join(LOG_PREFIX));
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", display(&cmd)))?;
    let logs = take_logs(dir)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{stdout}\nserver log:\n{}",
            display(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            pg.log()
        );
    }
    let result = parse_pgbench(&stdout)
        .with_context(|| format!("reading the output of `{}`", display(&cmd)))?;
    let mut latencies = Vec::new();
    for (path, text) in &logs {
        latencies
            .extend(log_latencies_us(text).with_context(|| format!("reading {}", path.display()))?);
    }
    if latencies.len() as u64 != result.transactions {
        eprintln!(
            "[bench] warning: pgbench logged {} transactions but reported {}",
            latencies.len(),
            result.transactions
        );
    }
    let Some(p99) = p99(&mut latencies) else {
        bail!(
            "`{}` wrote no per-transaction log in {}",
            display(&cmd),
            dir.display()
        );
    };
    Ok((result, p99 as f64 / 1e3))
}

/// Reads and removes pgbench's per-transaction logs in `dir`: `<prefix>.<pid>`, or
/// `<prefix>.<pid>.<thread>` with more than one thread.
fn take_logs(dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut logs = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{LOG_PREFIX}.")));
        if !is_log {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        logs.push((path, text));
    }
    Ok(logs)
}

/// The latencies (µs) in one pgbench per-transaction log: the third field of each line
/// `client_id transaction_no time_us script_no time_epoch time_us_part`. Transactions that
/// failed or were skipped (`failed` / `skipped` instead of a time) are left out.
fn log_latencies_us(log: &str) -> anyhow::Result<Vec<u64>> {
    let mut latencies = Vec::new();
    for (i, line) in log.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some(time) = line.split_whitespace().nth(2) else {
            bail!("line {}: {line:?} has fewer than 3 fields", i + 1);
        };
        if time == "failed" || time == "skipped" {
            continue;
        }
        latencies.push(time.parse().with_context(|| {
            format!(
                "line {}: latency {time:?} is not a number of microseconds",
                i + 1
            )
        })?);
    }
    Ok(latencies)
}

/// The 99th percentile (nearest rank: the smallest value at least 99 % of all are at or
/// below); `None` for no values. Sorts `values`.
fn p99(values: &mut [u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (values.len() * 99).div_ceil(100);
    Some(values[rank - 1])
}

fn rows_cell(counted: f64, made: u64) -> String {
    format!("{counted} / {made}")
}

fn round_line(run: &Run) -> String {
    let p = &run.pgbench;
    let mut line = format!(
        "{:.0} tps, {} transactions, latency average {:.3} ms, p99 {:.3} ms",
        p.tps, p.transactions, p.latency_ms, run.p99_ms
    );
    if let Some(a) = &run.agent {
        line.push_str(&format!(
            "; agent {:.2} s CPU, BPF {:.3} s, {:.0} bytes copied, RSS {:.1} MB, lost events {}, \
             rows counted server {} client {}",
            a.cpu.as_secs_f64(),
            a.bpf_seconds,
            a.captured_bytes,
            a.rss_bytes as f64 / 1e6,
            a.lost,
            rows_cell(a.server_rows, run.rows_made),
            rows_cell(a.client_rows, run.rows_made)
        ));
    }
    line
}

fn report(args: &FramingArgs, placement: &str, port: u16, rounds: &[Vec<Vec<Run>>]) -> String {
    let dash = "–";
    let mut out = String::new();
    out.push_str("### PostgreSQL large results: prefix capture vs in-kernel framing\n\n");
    out.push_str(&format!("Command: `{}`\n\n", args.command()));
    out.push_str(&format!(
        "Machine: {}. Placement: {placement} Table `big` is created once (`{CREATE_TABLE}`); \
         each run is `pgbench -n -M extended -c 1 -j 1 -t {} -f <script> -l` over TCP on \
         127.0.0.1 port {port} (no SSL, trust auth), the script being `SELECT * FROM big WHERE \
         id <= R;`. Each round runs, per result size R, pgbench without an agent, with an \
         agent capturing a prefix per syscall (`--framing=false --bpf-stats`) and with one \
         framing messages in the kernel (`--bpf-stats`), in that order; agents are started \
         fresh, ready before pgbench starts, stopped with SIGINT after; one warm-up round is \
         discarded. p99 latency is from pgbench's per-transaction log. Per statement = over \
         the {} statements of a run: agent CPU from /proc; kernel BPF time = \
         `{BPF_TIME_METRIC}` summed over every program; bytes copied = `{CAPTURED_METRIC}`; \
         each a delta from before pgbench started to after the agent caught up (its \
         `{STATEMENTS_METRIC}` for the port stable over 250 ms). Rows counted = \
         `{SERVER_ROWS_METRIC}` / `{CLIENT_ROWS_METRIC}` for the port, SELECT on `big`; rows \
         made = {} × R.\n\n",
        machine(),
        args.transactions,
        args.transactions,
        args.transactions
    ));
    out.push_str(
        "| round | rows | variant | TPS | latency avg (ms) | p99 (ms) | agent CPU (µs/statement) | kernel BPF time (µs/statement) | bytes copied / statement | agent RSS (MB) | kernel events lost | server rows counted / made | client rows counted / made |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for i in 0..args.rounds {
        for (&rows, size_rounds) in args.rows.iter().zip(rounds) {
            for (variant, run) in Variant::ALL.iter().zip(&size_rounds[i]) {
                let p = &run.pgbench;
                let agent_cells = match &run.agent {
                    Some(a) => [
                        format!("{:.2}", run.per_statement_micro(a.cpu.as_secs_f64())),
                        format!("{:.2}", run.per_statement_micro(a.bpf_seconds)),
                        format!("{:.0}", a.captured_bytes / run.statements.max(1) as f64),
                        format!("{:.1}", a.rss_bytes as f64 / 1e6),
                        format!("{}", a.lost),
                        rows_cell(a.server_rows, run.rows_made),
                        rows_cell(a.client_rows, run.rows_made),
                    ],
                    None => std::array::from_fn(|_| dash.to_owned()),
                };
                out.push_str(&format!(
                    "| {} | {rows} | {} | {:.0} | {:.3} | {:.3} | {} |\n",
                    i + 1,
                    variant.name(),
                    p.tps,
                    p.latency_ms,
                    run.p99_ms,
                    agent_cells.join(" | ")
                ));
            }
        }
    }

    /// One number per run, `None` where it does not apply (agent figures without the agent).
    type Column = fn(&Run) -> Option<f64>;
    let columns: [(&str, Column, usize); 8] = [
        ("TPS", |r| Some(r.pgbench.tps), 0),
        ("latency avg (ms)", |r| Some(r.pgbench.latency_ms), 3),
        ("p99 latency (ms)", |r| Some(r.p99_ms), 3),
        ("agent CPU (µs/statement)", Run::cpu_us_per_statement, 2),
        (
            "kernel BPF time (µs/statement)",
            Run::bpf_us_per_statement,
            2,
        ),
        ("bytes copied / statement", Run::bytes_per_statement, 0),
        ("server rows counted / made (%)", Run::server_share, 1),
        ("client rows counted / made (%)", Run::client_share, 1),
    ];
    out.push_str(
        "\nmin / **median** / max over rounds:\n\n\
         | rows | metric | without agent | prefix capture | in-kernel framing |\n\
         |---:|---|---:|---:|---:|\n",
    );
    for (&rows, size_rounds) in args.rows.iter().zip(rounds) {
        for (name, f, decimals) in columns {
            let cells: Vec<String> = (0..Variant::ALL.len())
                .map(|v| {
                    let values: Vec<f64> =
                        size_rounds.iter().filter_map(|runs| f(&runs[v])).collect();
                    spread_cell(&values, decimals)
                })
                .collect();
            out.push_str(&format!("| {rows} | {name} | {} |\n", cells.join(" | ")));
        }
    }
    // /proc counts CPU in clock ticks: say how coarse that is at this run length.
    let hz = clock_ticks_per_second();
    out.push_str(&format!(
        "\nAgent CPU is read from /proc in clock ticks of {} ms: one tick is {:.2} µs/statement \
         at this run length ({} statements per run). Kernel BPF time covers every program the \
         agent loaded (flow tracking too), whichever process's syscall it ran in.\n",
        1000 / hz,
        1e6 / hz as f64 / args.transactions as f64,
        args.transactions
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn p99_of_pgbench_logs() {
        // pgbench 15 `-l`: client_id transaction_no time_us script_no time_epoch time_us_part.
        let log = "0 0 1520 0 1733230000 123456\n\
                   0 1 980 0 1733230000 125000\n\
                   0 2 failed 0 1733230000 126000\n\
                   \n\
                   0 3 20000 0 1733230001 1000\n";
        let mut latencies = log_latencies_us(log).unwrap();
        assert_eq!(latencies, [1520, 980, 20000]);
        assert_eq!(p99(&mut latencies), Some(20000));
        assert!(log_latencies_us("0 0\n").is_err());
        assert!(log_latencies_us("0 0 1.5 0 1 2\n").is_err());

        // Nearest rank: of 1..=200 µs, 99 % are at or below 198.
        let mut many: Vec<u64> = (1..=200).rev().collect();
        assert_eq!(p99(&mut many), Some(198));
        assert_eq!(p99(&mut [7]), Some(7));
        assert_eq!(p99(&mut []), None);
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: FramingArgs,
    }

    #[test]
    fn options_default_and_command_spells_them_out() {
        let cli = Cli::try_parse_from(["framing"]).unwrap();
        assert_eq!(cli.args.rows, [10, 1000, 10000]);
        assert_eq!(
            cli.args.command(),
            "cargo xtask bench framing --rows 10,1000,10000 --transactions 400 --rounds 3 \
             --pgbench-cpu 0 --agent-cpu none"
        );
        let cli =
            Cli::try_parse_from(["framing", "--rows", "5,50", "--no-build", "--", "-v"]).unwrap();
        assert_eq!(cli.args.rows, [5, 50]);
        assert!(cli.args.command().ends_with("--no-build -- -v"));
        assert!(Cli::try_parse_from(["framing", "--rows", "x"]).is_err());
    }
}
