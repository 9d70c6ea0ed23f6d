//! `cargo xtask bench pgbench`: what does the agent cost a busy PostgreSQL server?
//!
//! pgbench runs its built-in TPC-B-like script against a real PostgreSQL 15 (initialised once
//! with `pgbench -i -s 1`) in each of its three query modes, since they put different
//! messages on the wire: `simple` (one Query per statement), `extended` (Parse/Bind/Execute
//! every time) and `prepared` (Parse once, then Bind/Execute). For each mode, rounds
//! alternate without and with a freshly started agent (after one discarded warm-up round),
//! so that drift of the machine hits both sides alike. The agent's own CPU is read from
//! /proc; the eBPF programs' cost shows up as lower pgbench throughput, because the hooks run
//! in the context of the syscalls pgbench and the server backend make.

use std::fmt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{cpu_time, rss_bytes, Agent, AgentOptions, PgServer};

use crate::bench::{machine, other_agents_warning, spread, spread_cell, Cpu, LOST_METRIC};
use crate::util::{bench_agent, build_agent, display, probe};

/// Operations the agent decoded on the server side, one series per operation and table.
const STATEMENTS_METRIC: &str = "db_server_operation_duration_seconds_count";
/// The label that tells this server's series apart from other databases' on the machine.
const PORT_LABEL: &str = "server_port";
/// pgbench's built-in TPC-B-like transaction: BEGIN, 3 UPDATEs, SELECT, INSERT, END.
pub(crate) const STATEMENTS_PER_TRANSACTION: u64 = 7;
/// Queries pgbench makes before the run, whatever the mode and client count: it reads the
/// scale (`select count(*) from pgbench_branches`) and checks whether pgbench_accounts is
/// partitioned.
pub(crate) const SETUP_STATEMENTS: u64 = 2;

/// pgbench's `-M` query protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueryMode {
    Simple,
    Extended,
    Prepared,
}

impl QueryMode {
    const ALL: [QueryMode; 3] = [QueryMode::Simple, QueryMode::Extended, QueryMode::Prepared];

    fn name(self) -> &'static str {
        match self {
            QueryMode::Simple => "simple",
            QueryMode::Extended => "extended",
            QueryMode::Prepared => "prepared",
        }
    }
}

impl fmt::Display for QueryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of `cargo xtask bench pgbench`.
#[derive(Debug, clap::Args)]
pub struct PgbenchArgs {
    /// Measured rounds; each runs pgbench once without and once with the agent, per query
    /// mode.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Transactions per client (pgbench -t).
    #[arg(long, default_value_t = 2000)]
    transactions: u64,
    /// Concurrent clients (pgbench -c); PostgreSQL forks one backend per client.
    #[arg(long, default_value_t = 1)]
    clients: u32,
    /// CPU for pgbench (taskset), or `none`. The server (postmaster and its backends) is
    /// left to the scheduler.
    #[arg(long, default_value = "0")]
    pgbench_cpu: Cpu,
    /// CPU for the agent, or `none` (the scheduler places it).
    #[arg(long, default_value = "none")]
    agent_cpu: Cpu,
    /// Use the existing agent binary instead of running `cargo build --release -p agent`
    /// (also implied by PERISCOPE_BIN).
    #[arg(long)]
    no_build: bool,
    /// Extra arguments for the agent, after `--`.
    #[arg(last = true)]
    agent_args: Vec<String>,
}

impl PgbenchArgs {
    /// The full command line, every option spelled out, for the report.
    fn command(&self) -> String {
        let mut c = format!(
            "cargo xtask bench pgbench --rounds {} --transactions {} --clients {} \
             --pgbench-cpu {} --agent-cpu {}",
            self.rounds, self.transactions, self.clients, self.pgbench_cpu, self.agent_cpu
        );
        if !self.agent_args.is_empty() {
            c.push_str(" -- ");
            c.push_str(&self.agent_args.join(" "));
        }
        c
    }
}

/// What pgbench reported for one run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PgbenchResult {
    /// `tps = … (without initial connection time)`.
    pub(crate) tps: f64,
    /// `latency average = … ms`.
    pub(crate) latency_ms: f64,
    /// `number of transactions actually processed: N/…`, all clients together.
    pub(crate) transactions: u64,
}

impl PgbenchResult {
    /// Every statement the server executed for this run, set-up queries included.
    pub(crate) fn statements(&self) -> u64 {
        self.transactions * STATEMENTS_PER_TRANSACTION + SETUP_STATEMENTS
    }
}

/// Reads the summary pgbench prints on stdout.
pub(crate) fn parse_pgbench(stdout: &str) -> anyhow::Result<PgbenchResult> {
    let mut tps = None;
    let mut latency_ms = None;
    let mut transactions = None;
    for line in stdout.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("tps = ") {
            // Older pgbench printed two tps lines; take the one without connection time.
            if rest.contains("without initial connection time")
                || rest.contains("excluding connections establishing")
            {
                tps = rest.split_whitespace().next().and_then(|v| v.parse().ok());
            }
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            latency_ms = rest.strip_suffix(" ms").and_then(|v| v.trim().parse().ok());
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            transactions = rest
                .trim()
                .split('/')
                .next()
                .and_then(|v| v.trim().parse().ok());
        }
    }
    match (tps, latency_ms, transactions) {
        (Some(tps), Some(latency_ms), Some(transactions)) => Ok(PgbenchResult {
            tps,
            latency_ms,
            transactions,
        }),
        _ => bail!(
            "pgbench's output lacks the tps, latency average or transactions processed line:\n\
             {stdout}"
        ),
    }
}

/// What the agent did during one 'with' run.
struct AgentRun {
    cpu: Duration,
    rss_bytes: u64,
    lost: f64,
    /// Server-side statements counted for the server's port; `None` when the agent exports
    /// no such series at all (no PostgreSQL decoding in this build).
    counted: Option<f64>,
}

struct Run {
    pgbench: PgbenchResult,
    agent: Option<AgentRun>,
}

impl Run {
    fn cpu_us_per_statement(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(a.cpu.as_secs_f64() * 1e6 / self.pgbench.statements().max(1) as f64)
    }

    /// Statements counted by the agent as a share of those pgbench made.
    fn counted_share(&self) -> Option<f64> {
        let counted = self.agent.as_ref()?.counted?;
        Some(counted / self.pgbench.statements().max(1) as f64)
    }
}

/// Statements the agent counted on the server side of `port`, or `None` if it exports no
/// server-side database series at all.
pub(crate) fn statements_counted(metrics: &harness::Metrics, port: u16) -> Option<f64> {
    let samples = metrics.samples(STATEMENTS_METRIC);
    if samples.is_empty() {
        return None;
    }
    let port = port.to_string();
    Some(
        samples
            .iter()
            .filter(|s| s.labels.get(PORT_LABEL) == Some(&port))
            .map(|s| s.value)
            .sum(),
    )
}

/// Checks that the CPUs asked for exist; returns how many are online.
pub(crate) fn check_cpus(pgbench_cpu: Cpu, agent_cpu: Cpu) -> anyhow::Result<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (what, cpu) in [("--pgbench-cpu", pgbench_cpu), ("--agent-cpu", agent_cpu)] {
        if cpu.0.is_some_and(|c| c >= cpus) {
            bail!("{what} {cpu}: this machine has only CPUs 0..{cpus}");
        }
    }
    Ok(cpus)
}

/// Starts PostgreSQL; returns it with its version number (`15.18`).
pub(crate) fn launch_postgres() -> anyhow::Result<(PgServer, String)> {
    let pg = PgServer::launch().context("starting PostgreSQL")?;
    // `15.18 (Debian 15.18-0+deb12u1)`: the number is enough.
    let version = pg
        .psql(&["-At", "-c", "SHOW server_version"])
        .ok()
        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    println!("[bench] PostgreSQL {version} on port {}", pg.port());
    Ok((pg, version))
}

/// "pinned to CPU n" or "unpinned", for the report's placement line.
pub(crate) fn placement_of(cpu: Cpu) -> String {
    match cpu.0 {
        Some(n) => format!("pinned to CPU {n}"),
        None => "unpinned".to_owned(),
    }
}

/// `pgbench` against `pg` over TCP (database `postgres`, no SSL), pinned with taskset to
/// `cpu`; the caller adds the run's options. Not `PgServer::pgbench`: that one cannot pin.
pub(crate) fn pgbench_command(pg: &PgServer, cpu: Cpu) -> Command {
    let mut cmd = match cpu.0 {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "pgbench"]);
            c
        }
        None => Command::new("pgbench"),
    };
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port().to_string(),
        "-U",
        "postgres",
    ])
    .env("PGSSLMODE", "disable")
    .env("PGDATABASE", "postgres")
    .stdin(Stdio::null());
    cmd
}

/// Runs the benchmark and prints a Markdown report.
pub fn pgbench(args: &PgbenchArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.transactions == 0 || args.clients == 0 {
        bail!("--rounds, --transactions and --clients must be at least 1");
    }
    if !harness::is_root() {
        bail!(
            "the agent loads eBPF programs and PostgreSQL runs as its own user: run as root \
             (try `sudo -E cargo xtask bench pgbench`)"
        );
    }
    crate::setup::setup()?;
    let bin = bench_agent(args.no_build, build_agent)?;
    let cpus = check_cpus(args.pgbench_cpu, args.agent_cpu)?;
    let (pg, version) = launch_postgres()?;
    pg.pgbench(&["-i", "-s", "1", "-q"])
        .context("initialising the pgbench tables")?;

    let warning = other_agents_warning("their overhead is in both columns");
    let on = placement_of;
    let placement = format!(
        "pgbench -c{} -j1 {}, PostgreSQL {version} (postmaster + {} backend{}) unpinned, agent {} \
         (taskset); {cpus} CPUs online",
        args.clients,
        on(args.pgbench_cpu),
        args.clients,
        if args.clients == 1 { "" } else { "s" },
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
    let measure = |label: &str, mode: QueryMode, with_agent: bool| -> anyhow::Result<Run> {
        let run = if with_agent {
            run_with_agent(args, &pg, mode, &agent_options)?
        } else {
            Run {
                pgbench: run_pgbench(args, &pg, mode)?,
                agent: None,
            }
        };
        println!("[bench] {label} {mode:<8}: {}", round_line(&run));
        Ok(run)
    };

    // rounds[mode][round] = (without, with)
    let mut rounds: Vec<Vec<(Run, Run)>> = QueryMode::ALL.iter().map(|_| Vec::new()).collect();
    for round in 0..=args.rounds {
        for (m, mode) in QueryMode::ALL.into_iter().enumerate() {
            if round == 0 {
                measure("warm-up without (discarded)", mode, false)?;
                measure("warm-up with    (discarded)", mode, true)?;
            } else {
                let without = measure(&format!("round {round} without"), mode, false)?;
                let with = measure(&format!("round {round} with   "), mode, true)?;
                rounds[m].push((without, with));
            }
        }
    }
    let port = pg.port();
    drop(pg);

    println!(
        "\n{}",
        report(args, &format!("{placement}.{warning}"), port, &rounds)
    );
    Ok(())
}

/// `pgbench -n -M <mode> -c <clients> -t <transactions>`, pinned with taskset.
fn run_pgbench(
    args: &PgbenchArgs,
    pg: &PgServer,
    mode: QueryMode,
) -> anyhow::Result<PgbenchResult> {
    let mut cmd = pgbench_command(pg, args.pgbench_cpu);
    cmd.args(["-n", "-M", mode.name(), "-j", "1"])
        .args(["-c", &args.clients.to_string()])
        .args(["-t", &args.transactions.to_string()]);
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", display(&cmd)))?;
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
    parse_pgbench(&stdout).with_context(|| format!("reading the output of `{}`", display(&cmd)))
}

fn run_with_agent(
    args: &PgbenchArgs,
    pg: &PgServer,
    mode: QueryMode,
    agent_options: &AgentOptions,
) -> anyhow::Result<Run> {
    let mut agent = Agent::start_with(agent_options.clone())?;
    let pid = agent.pid();
    let counted_before = statements_counted(&agent.try_metrics()?, pg.port()).unwrap_or(0.0);
    let cpu_before = cpu_time(pid)?;
    let pgbench = run_pgbench(args, pg, mode)?;
    let metrics = settled_metrics(&agent, pg.port(), counted_before, pgbench.statements())?;
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    let rss = rss_bytes(pid)?;
    let status = agent.stop()?;
    if !status.success() {
        eprintln!(
            "[bench] warning: the agent exited with {status} after SIGINT; its log:\n{}",
            agent.log()
        );
    }
    Ok(Run {
        pgbench,
        agent: Some(AgentRun {
            cpu,
            rss_bytes: rss,
            lost: metrics.sum(LOST_METRIC, &[]),
            counted: statements_counted(&metrics, pg.port()).map(|c| c - counted_before),
        }),
    })
}

/// Lets the agent drain its ring buffer and pair the last exchanges before its counters are
/// read: scrapes until the statement count for `port` is stable and covers the `expected`
/// statements made since it was `counted_before` (or gives up waiting for that after a few
/// seconds). Without any server-side database series, two equal scrapes suffice.
fn settled_metrics(
    agent: &Agent,
    port: u16,
    counted_before: f64,
    expected: u64,
) -> anyhow::Result<harness::Metrics> {
    let started = Instant::now();
    let mut previous: Option<Option<f64>> = None;
    loop {
        let metrics = agent
            .try_metrics()
            .with_context(|| format!("scraping the agent; its log:\n{}", agent.log()))?;
        let counted = statements_counted(&metrics, port);
        let stable = previous == Some(counted);
        previous = Some(counted);
        let covered = counted.is_none_or(|c| c - counted_before >= expected as f64);
        if stable && (covered || started.elapsed() > Duration::from_secs(3)) {
            return Ok(metrics);
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Ok(metrics);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn counted_cell(run: &Run) -> String {
    match run.agent.as_ref().and_then(|a| a.counted) {
        Some(c) => format!("{c} / {}", run.pgbench.statements()),
        None => format!("n/a / {}", run.pgbench.statements()),
    }
}

fn round_line(run: &Run) -> String {
    let p = &run.pgbench;
    let mut line = format!(
        "{:.0} tps, {} transactions, latency average {:.3} ms",
        p.tps, p.transactions, p.latency_ms
    );
    if let (Some(a), Some(us)) = (&run.agent, run.cpu_us_per_statement()) {
        line.push_str(&format!(
            "; agent {:.2} s CPU = {us:.2} µs/statement, RSS {:.1} MB, lost events {}, \
             counted {} statements",
            a.cpu.as_secs_f64(),
            a.rss_bytes as f64 / 1e6,
            a.lost,
            counted_cell(run)
        ));
    }
    line
}

fn report(args: &PgbenchArgs, placement: &str, port: u16, rounds: &[Vec<(Run, Run)>]) -> String {
    let dash = "–";
    let mut out = String::new();
    out.push_str("### PostgreSQL: pgbench TPC-B, without and with Periscope\n\n");
    out.push_str(&format!("Command: `{}`\n\n", args.command()));
    out.push_str(&format!(
        "Machine: {}. Placement: {placement} The tables are created once (`pgbench -i -s 1 \
         -q`); each run is `pgbench -n -M <mode> -c {} -j 1 -t {}` over TCP on 127.0.0.1 (no \
         SSL, trust auth). Each round runs every query mode once without, then with the \
         agent (started fresh, ready before pgbench starts, stopped with SIGINT after); one \
         warm-up round is discarded. Statements made = {STATEMENTS_PER_TRANSACTION} × \
         transactions (BEGIN, 3 UPDATEs, SELECT, INSERT, END) + the {SETUP_STATEMENTS} \
         queries pgbench makes first to read the scale; statements counted = the agent's \
         `{STATEMENTS_METRIC}` for the server's port, summed.\n\n",
        machine(),
        args.clients,
        args.transactions
    ));
    out.push_str(
        "| round | mode | agent | TPS | latency avg (ms) | agent CPU (µs/statement) | agent RSS (MB) | kernel events lost | statements counted / made |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for i in 0..args.rounds {
        for (mode, mode_rounds) in QueryMode::ALL.iter().zip(rounds) {
            let (without, with) = &mode_rounds[i];
            for (label, run) in [("without", without), ("with", with)] {
                let p = &run.pgbench;
                let (cpu, rss, lost, counted) = match (&run.agent, run.cpu_us_per_statement()) {
                    (Some(a), Some(us)) => (
                        format!("{us:.2}"),
                        format!("{:.1}", a.rss_bytes as f64 / 1e6),
                        format!("{}", a.lost),
                        counted_cell(run),
                    ),
                    _ => (dash.into(), dash.into(), dash.into(), dash.into()),
                };
                out.push_str(&format!(
                    "| {} | {mode} | {label} | {:.0} | {:.3} | {cpu} | {rss} | {lost} | {counted} |\n",
                    i + 1,
                    p.tps,
                    p.latency_ms
                ));
            }
        }
    }

    /// One number per run, `None` where it does not apply (agent figures without the agent).
    type Column = fn(&Run) -> Option<f64>;
    let pick = |mode_rounds: &[(Run, Run)], with: bool, f: Column| -> Vec<f64> {
        mode_rounds
            .iter()
            .filter_map(|(without, with_agent)| f(if with { with_agent } else { without }))
            .collect()
    };
    let tps: Column = |r| Some(r.pgbench.tps);
    let rows: [(&str, Column, usize); 6] = [
        ("TPS", tps, 0),
        ("latency average (ms)", |r| Some(r.pgbench.latency_ms), 3),
        ("agent CPU (µs/statement)", Run::cpu_us_per_statement, 2),
        (
            "agent RSS (MB)",
            |r| r.agent.as_ref().map(|a| a.rss_bytes as f64 / 1e6),
            1,
        ),
        (
            "kernel events lost",
            |r| r.agent.as_ref().map(|a| a.lost),
            0,
        ),
        (
            "statements counted / made (%)",
            |r| r.counted_share().map(|s| 100.0 * s),
            1,
        ),
    ];
    out.push_str(
        "\nmin / **median** / max over rounds:\n\n\
         | mode | metric | without agent | with agent |\n|---|---|---:|---:|\n",
    );
    let mut absent = false;
    for (mode, mode_rounds) in QueryMode::ALL.iter().zip(rounds) {
        for (name, f, decimals) in rows {
            let with = pick(mode_rounds, true, f);
            let with_cell = if with.is_empty() && name.starts_with("statements") {
                absent = true;
                "n/a".to_owned()
            } else {
                spread_cell(&with, decimals)
            };
            out.push_str(&format!(
                "| {mode} | {name} | {} | {with_cell} |\n",
                spread_cell(&pick(mode_rounds, false, f), decimals),
            ));
        }
    }
    out.push_str("\nTPS with/without (ratio of medians; per-round ratios min / median / max):\n\n");
    for (mode, mode_rounds) in QueryMode::ALL.iter().zip(rounds) {
        let ratios: Vec<f64> = mode_rounds
            .iter()
            .map(|(without, with)| with.pgbench.tps / without.pgbench.tps)
            .collect();
        let (_, median_without, _) = spread(&pick(mode_rounds, false, tps));
        let (_, median_with, _) = spread(&pick(mode_rounds, true, tps));
        out.push_str(&format!(
            "- `{mode}`: **{:.3}** ({})\n",
            median_with / median_without,
            spread_cell(&ratios, 3)
        ));
    }
    // /proc counts CPU in clock ticks: say how coarse that is at this run length.
    let hz: u64 = probe("getconf", &["CLK_TCK"])
        .and_then(|v| v.trim().parse().ok())
        .filter(|&h| h > 0)
        .unwrap_or(100);
    let statements =
        args.transactions * u64::from(args.clients) * STATEMENTS_PER_TRANSACTION + SETUP_STATEMENTS;
    out.push_str(&format!(
        "\nAgent CPU is read from /proc in clock ticks of {} ms: one tick is {:.2} µs/statement \
         at this run length ({statements} statements per run).\n",
        1000 / hz,
        1e6 / hz as f64 / statements as f64
    ));
    if absent {
        out.push_str(&format!(
            "\nStatements counted are n/a: the agent exported no `{STATEMENTS_METRIC}` series at \
             all, so this agent build does not decode PostgreSQL yet (the server's port was \
             {port}). Its CPU figure is then the cost of capturing and detecting, not of \
             decoding.\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_15_output() {
        let stdout = "pgbench (15.18 (Debian 15.18-0+deb12u1))\n\
            transaction type: <builtin: TPC-B (sort of)>\n\
            scaling factor: 1\n\
            query mode: prepared\n\
            number of clients: 1\n\
            number of threads: 1\n\
            number of transactions per client: 300\n\
            number of transactions actually processed: 300/300\n\
            number of failed transactions: 0 (0.000%)\n\
            latency average = 1.234 ms\n\
            initial connection time = 3.456 ms\n\
            tps = 810.372148 (without initial connection time)\n";
        assert_eq!(
            parse_pgbench(stdout).unwrap(),
            PgbenchResult {
                tps: 810.372148,
                latency_ms: 1.234,
                transactions: 300
            }
        );
        assert!(parse_pgbench("pgbench: error: connection refused\n").is_err());
    }

    #[test]
    fn statements_are_counted_for_the_port_and_absent_is_none() {
        let with = harness::Metrics::parse(
            "db_server_operation_duration_seconds_count{db_operation_name=\"UPDATE\",server_port=\"5432\"} 3\n\
             db_server_operation_duration_seconds_count{db_operation_name=\"SELECT\",server_port=\"5432\"} 1\n\
             db_server_operation_duration_seconds_count{db_operation_name=\"SELECT\",server_port=\"5433\"} 9\n",
        )
        .unwrap();
        assert_eq!(statements_counted(&with, 5432), Some(4.0));
        assert_eq!(statements_counted(&with, 1), Some(0.0));
        let without = harness::Metrics::parse("periscope_kernel_events_lost_total 0\n").unwrap();
        assert_eq!(statements_counted(&without, 5432), None);
    }
}
