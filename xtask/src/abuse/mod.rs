//! `cargo xtask abuse <scenario>`: endurance and abuse checks with a bounded duration.
//!
//! Each scenario starts real servers (nginx, PostgreSQL, the Kafka mock cluster) and a fresh
//! agent, abuses it, and prints a Markdown report whose checks table says what was expected
//! and what was seen. A failed check makes the command exit non-zero, after the report.
//!
//! - `soak`: mixed HTTP + PostgreSQL + Kafka load at fixed rates for minutes: RSS and CPU
//!   slopes, connections tracked back to baseline, every request counted exactly.
//! - `overload`: a tiny ring buffer under wrk with large responses: losses counted and equal
//!   to the kernel's counter, throughput kept, exact counting once load drops.
//! - `cardinality`: random paths, tables and topics, hundreds of short processes, under a
//!   low `--max-series`: series capped, drops counted, memory bounded.
//! - `hostile`: adversarial payloads (thousands of unfinished request heads, a deeply nested
//!   `COPY`) under default settings: decoder memory within budget, RSS bounded, ordinary
//!   requests still exact.
//! - `churn`: cluster mode with pods and routes created and deleted for minutes: their series
//!   go after grace/ttl, series bytes, kernel maps and RSS come back, a steady pod is exact.
//! - `faults`: SIGKILL leaves no BPF object behind, a restarted agent decodes connections
//!   opened before it, a stalled OTLP collector and a slow scraper never block capture.

mod cardinality;
mod churn;
mod faults;
mod hostile;
mod overload;
mod soak;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{Agent, AgentOptions, ChildProcess, Metrics, TempDir};

use crate::bench::{machine, other_agents_warning};
use crate::util::{bench_agent, build_agent};

/// The fixed-rate HTTP client (keep-alive, new connection every N requests, random paths).
const HTTP_LOAD: &str = include_str!("http_load.py");
/// The fixed-rate Kafka producer (kafka-python, optionally a new topic per message).
const KAFKA_LOAD: &str = include_str!("kafka_load.py");

pub(crate) const TRACKED_METRIC: &str = "periscope_connections_tracked";
pub(crate) const DROPPED_SERIES_METRIC: &str = "periscope_series_dropped_total";

/// Options of `cargo xtask abuse`.
#[derive(Debug, clap::Args)]
pub struct AbuseArgs {
    #[command(subcommand)]
    scenario: Scenario,
    /// Use the existing agent binary instead of running `cargo build --release -p agent`
    /// (also implied by PERISCOPE_BIN).
    #[arg(long, global = true)]
    no_build: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Scenario {
    /// Mixed HTTP + PostgreSQL + Kafka load at fixed rates: RSS/CPU slopes, connections
    /// tracked back to baseline, exact counts.
    Soak(soak::SoakArgs),
    /// More events than the ring buffer carries: losses counted, throughput kept, recovery.
    Overload(overload::OverloadArgs),
    /// Random paths, tables, topics, short-lived processes under a low series cap.
    Cardinality(cardinality::CardinalityArgs),
    /// SIGKILL and restart, connections opened before start, stalled collector, slow scraper.
    Faults(faults::FaultsArgs),
    /// Unfinished request heads by the thousand and a nested COPY under default settings.
    Hostile(hostile::HostileArgs),
    /// Cluster mode with pods and routes created and deleted for minutes.
    Churn(churn::ChurnArgs),
    /// Every scenario in turn (defaults, with the soak's length from --minutes).
    All {
        /// Length of the soak's load, in minutes.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
}

/// Runs the scenario(s), prints their reports, and fails if any check failed.
pub fn abuse(args: &AbuseArgs) -> anyhow::Result<()> {
    if !harness::is_root() {
        bail!("the agent loads eBPF programs: run as root");
    }
    crate::setup::setup()?;
    let bin = bench_agent(args.no_build, build_agent)?;
    let env = Env::new(bin);
    let reports = match &args.scenario {
        Scenario::Soak(a) => vec![soak::soak(&env, a)?],
        Scenario::Overload(a) => vec![overload::overload(&env, a)?],
        Scenario::Cardinality(a) => vec![cardinality::cardinality(&env, a)?],
        Scenario::Faults(a) => vec![faults::faults(&env, a)?],
        Scenario::Hostile(a) => vec![hostile::hostile(&env, a)?],
        Scenario::Churn(a) => vec![churn::churn(&env, a)?],
        Scenario::All { minutes } => {
            let minutes = minutes.to_string();
            let parse = |name| [name, "--minutes", minutes.as_str()];
            vec![
                soak::soak(&env, &clap::Parser::try_parse_from(parse("soak"))?)?,
                overload::overload(&env, &clap::Parser::try_parse_from(["overload"])?)?,
                cardinality::cardinality(&env, &clap::Parser::try_parse_from(["cardinality"])?)?,
                faults::faults(&env, &clap::Parser::try_parse_from(["faults"])?)?,
                hostile::hostile(&env, &clap::Parser::try_parse_from(["hostile"])?)?,
                churn::churn(&env, &clap::Parser::try_parse_from(parse("churn"))?)?,
            ]
        }
    };
    let mut failed = 0;
    for report in &reports {
        println!("\n{}", report.markdown());
        failed += report.failed();
    }
    if failed > 0 {
        bail!("{failed} check(s) failed; see the report(s) above");
    }
    Ok(())
}

/// What every scenario needs: the agent binary, and how to start it.
pub(crate) struct Env {
    bin: PathBuf,
}

impl Env {
    fn new(bin: PathBuf) -> Env {
        println!("[abuse] agent {}", bin.display());
        Env { bin }
    }

    /// A fresh agent with `args`, ready.
    pub(crate) fn agent(&self, args: &[String]) -> anyhow::Result<Agent> {
        Agent::start_with(AgentOptions {
            bin: Some(self.bin.clone()),
            args: args.to_vec(),
            ..AgentOptions::default()
        })
    }
}

/// A scenario's Markdown report and its checks.
pub(crate) struct Report {
    title: String,
    body: String,
    checks: Vec<Check>,
}

struct Check {
    what: String,
    observed: String,
    pass: bool,
}

impl Report {
    /// A report headed `title`, starting with the command, machine, load average and any
    /// other agents running (their cost lands in this run's figures).
    pub(crate) fn new(title: &str, command: &str) -> Report {
        let mut r = Report {
            title: title.to_owned(),
            body: String::new(),
            checks: Vec::new(),
        };
        r.para(&format!(
            "Command: `{command}`. Machine: {}; load average at start: {}.{}",
            machine(),
            load_average(),
            other_agents_warning("their CPU and syscall hooks weigh on this run too")
        ));
        r
    }

    /// Appends a paragraph (or a table: any Markdown block).
    pub(crate) fn para(&mut self, text: &str) {
        self.body.push_str(text.trim_end());
        self.body.push_str("\n\n");
    }

    /// Records a check: what was expected, what was seen, and whether it held.
    pub(crate) fn check(&mut self, what: &str, observed: String, pass: bool) {
        println!(
            "[abuse] {} {what}: {observed}",
            if pass { "PASS" } else { "FAIL" }
        );
        self.checks.push(Check {
            what: what.to_owned(),
            observed,
            pass,
        });
    }

    pub(crate) fn failed(&self) -> usize {
        self.checks.iter().filter(|c| !c.pass).count()
    }

    pub(crate) fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n{}", self.title, self.body);
        out.push_str("| check | observed | result |\n|---|---|---|\n");
        for c in &self.checks {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                c.what,
                c.observed,
                if c.pass { "pass" } else { "**FAIL**" }
            ));
        }
        out.push_str(&format!("\nLoad average at the end: {}.\n", load_average()));
        out
    }
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// The least-squares slope of `y` over `x`; 0 with fewer than two distinct `x`.
pub(crate) fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// Scrapes until `done` holds or `timeout` passes; returns the last scrape and whether
/// `done` held.
pub(crate) fn wait_for(
    agent: &Agent,
    timeout: Duration,
    done: impl Fn(&Metrics) -> bool,
) -> anyhow::Result<(Metrics, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        let m = agent
            .try_metrics()
            .with_context(|| format!("scraping the agent; its log:\n{}", agent.log()))?;
        if done(&m) {
            return Ok((m, true));
        }
        if Instant::now() >= deadline {
            return Ok((m, false));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs Python `code` (written to `<temp dir>/<name>.py`) with `args`, stdout piped; the
/// temporary directory lives as long as the returned handle is kept.
pub(crate) fn python(
    name: &str,
    code: &str,
    args: &[String],
    stdin: Stdio,
) -> anyhow::Result<(ChildProcess, TempDir)> {
    let dir = TempDir::new(name)?;
    let path = dir.path().join(format!("{name}.py"));
    std::fs::write(&path, code)?;
    let mut cmd = Command::new("python3");
    cmd.arg(&path)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped());
    Ok((ChildProcess::spawn(name, &mut cmd)?, dir))
}

/// A load generator running as a Python script in the background; [`Load::finish`] waits
/// for it and returns the number it printed after `key`.
pub(crate) struct Load {
    process: ChildProcess,
    key: &'static str,
    _dir: TempDir,
}

impl Load {
    fn spawn(name: &str, script: &str, args: &[String], key: &'static str) -> anyhow::Result<Load> {
        let (process, dir) = python(name, script, args, Stdio::null())?;
        Ok(Load {
            process,
            key,
            _dir: dir,
        })
    }

    /// `rate` GETs a second to 127.0.0.1:`port` for `seconds`, a new connection after every
    /// `per_connection` requests, each to a new random path if `random`.
    pub(crate) fn http(
        port: u16,
        rate: f64,
        seconds: f64,
        per_connection: u32,
        random: bool,
    ) -> anyhow::Result<Load> {
        let mut args = vec![
            port.to_string(),
            rate.to_string(),
            seconds.to_string(),
            per_connection.to_string(),
        ];
        if random {
            args.push("random".into());
        }
        Load::spawn("http-load", HTTP_LOAD, &args, "responses")
    }

    /// `rate` acknowledged Produce requests a second to `topic` (or a new random topic each,
    /// if `random`) for `seconds`.
    pub(crate) fn kafka(
        bootstrap: &str,
        topic: &str,
        rate: f64,
        seconds: f64,
        random: bool,
    ) -> anyhow::Result<Load> {
        let mut args = vec![
            bootstrap.to_owned(),
            topic.to_owned(),
            rate.to_string(),
            seconds.to_string(),
        ];
        if random {
            args.push("random".into());
        }
        Load::spawn("kafka-load", KAFKA_LOAD, &args, "sent")
    }

    /// Waits for the generator to end; the count it printed.
    pub(crate) fn finish(mut self) -> anyhow::Result<u64> {
        let mut out = String::new();
        self.process
            .take_stdout()
            .context("the load generator's stdout")?
            .read_to_string(&mut out)?;
        let status = loop {
            if let Some(status) = self.process.try_wait() {
                break status;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            bail!("{} failed ({status}): {out}", self.process.name());
        }
        printed_count(&out, self.key)
            .with_context(|| format!("no `{} N` in the output of the generator: {out}", self.key))
    }
}

/// The number after `key` in `out` (`responses 12 errors 0` → 12 for `responses`).
fn printed_count(out: &str, key: &str) -> Option<u64> {
    let mut words = out.split_whitespace();
    words.find(|w| *w == key)?;
    words.next()?.parse().ok()
}

/// The largest number of series any of the capped metric families has: the label sets of
/// each `_count` (histograms) or `_total` sample name of the HTTP, database and messaging
/// metrics.
pub(crate) fn most_series(metrics: &Metrics) -> (String, usize) {
    metrics
        .names()
        .into_iter()
        .filter(|n| {
            (n.starts_with("http_") || n.starts_with("db_") || n.starts_with("messaging_"))
                && (n.ends_with("_count") || n.ends_with("_total"))
        })
        .map(|n| (n.to_owned(), metrics.samples(n).len()))
        .max_by_key(|(_, len)| *len)
        .unwrap_or_default()
}

/// The BPF objects a process holds open, by kind, read from its fds' `/proc/<pid>/fdinfo`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct BpfObjects {
    pub(crate) progs: BTreeSet<u32>,
    pub(crate) maps: BTreeSet<u32>,
    pub(crate) links: BTreeSet<u32>,
}

impl BpfObjects {
    /// What process `pid` holds.
    pub(crate) fn of(pid: u32) -> anyhow::Result<BpfObjects> {
        let dir = format!("/proc/{pid}/fdinfo");
        let mut objects = BpfObjects::default();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            if let Ok(info) = std::fs::read_to_string(entry?.path()) {
                objects.add_fdinfo(&info);
            }
        }
        Ok(objects)
    }

    /// One fd's fdinfo: a BPF link names `link_id` (and the `prog_id` it holds), a program
    /// `prog_id`, a map `map_id`.
    fn add_fdinfo(&mut self, info: &str) {
        let field = |name: &str| {
            info.lines().find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(':')?
                    .trim()
                    .parse::<u32>()
                    .ok()
            })
        };
        if let Some(id) = field("link_id") {
            self.links.insert(id);
        } else if let Some(id) = field("prog_id") {
            self.progs.insert(id);
        } else if let Some(id) = field("map_id") {
            self.maps.insert(id);
        }
    }

    /// Those of them still loaded in the kernel, by anyone.
    pub(crate) fn still_loaded(&self) -> anyhow::Result<BpfObjects> {
        let alive = |kind: &str, ours: &BTreeSet<u32>| -> anyhow::Result<BTreeSet<u32>> {
            let out = crate::util::probe("bpftool", &[kind, "show", "-j"])
                .with_context(|| format!("`bpftool {kind} show -j` failed"))?;
            Ok(json_ids(&out).intersection(ours).copied().collect())
        };
        Ok(BpfObjects {
            progs: alive("prog", &self.progs)?,
            maps: alive("map", &self.maps)?,
            links: alive("link", &self.links)?,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.progs.is_empty() && self.maps.is_empty() && self.links.is_empty()
    }

    pub(crate) fn summary(&self) -> String {
        format!(
            "{} programs, {} maps, {} links",
            self.progs.len(),
            self.maps.len(),
            self.links.len()
        )
    }
}

/// Every `"id":N` in bpftool's JSON (objects' own ids; `prog_id`, `map_ids` do not match).
fn json_ids(json: &str) -> BTreeSet<u32> {
    json.split("\"id\":")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// The kernel's own per-CPU counter `index` (summed over CPUs) in the map named `map_name`
/// held by process `pid`: what the agent's exported counters are folded from.
pub(crate) fn kernel_counter(pid: u32, map_name: &str, index: u32) -> anyhow::Result<u64> {
    let objects = BpfObjects::of(pid)?;
    for id in &objects.maps {
        let id = id.to_string();
        let Some(show) = crate::util::probe("bpftool", &["map", "show", "id", &id, "-j"]) else {
            continue;
        };
        if !show.contains(&format!("\"name\":\"{map_name}\"")) {
            continue;
        }
        let key = index.to_le_bytes().map(|b| b.to_string());
        let mut args = vec!["map", "lookup", "id", id.as_str(), "key"];
        args.extend(key.iter().map(String::as_str));
        args.push("-j");
        let out = crate::util::probe("bpftool", &args)
            .with_context(|| format!("`bpftool {}` failed", args.join(" ")))?;
        return percpu_sum(&out).with_context(|| format!("reading bpftool's answer: {out}"));
    }
    bail!("process {pid} holds no BPF map named {map_name}")
}

/// Sums the little-endian `u64` values of a per-CPU map entry as bpftool prints it without
/// BTF: `"values":[{"cpu":0,"value":["0x01","0x00",…]},…]`.
fn percpu_sum(json: &str) -> Option<u64> {
    let (_, values) = json.split_once("\"values\"")?;
    let mut total = 0u64;
    for part in values.split("\"value\":[").skip(1) {
        let bytes = part.split(']').next()?;
        let mut le = [0u8; 8];
        for (i, b) in bytes.split(',').enumerate().take(8) {
            let b = b.trim().trim_matches('"');
            le[i] = u8::from_str_radix(b.strip_prefix("0x")?, 16).ok()?;
        }
        total += u64::from_le_bytes(le);
    }
    Some(total)
}

/// Agent RSS and CPU at a moment of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    /// Seconds since the run started.
    pub(crate) at: f64,
    pub(crate) rss_bytes: u64,
    /// CPU used since the run started.
    pub(crate) cpu: Duration,
}

impl Usage {
    pub(crate) fn read(
        pid: u32,
        started: Instant,
        cpu_at_start: Duration,
    ) -> anyhow::Result<Usage> {
        Ok(Usage {
            at: started.elapsed().as_secs_f64(),
            rss_bytes: harness::rss_bytes(pid)?,
            cpu: harness::cpu_time(pid)?.saturating_sub(cpu_at_start),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_parses_every_scenario_with_its_defaults() {
        use clap::Parser;
        assert!(soak::SoakArgs::try_parse_from(["soak", "--minutes", "3"]).is_ok());
        assert!(overload::OverloadArgs::try_parse_from(["overload"]).is_ok());
        assert!(cardinality::CardinalityArgs::try_parse_from(["cardinality"]).is_ok());
        assert!(faults::FaultsArgs::try_parse_from(["faults"]).is_ok());
    }

    #[test]
    fn slope_of_a_line_and_of_too_little() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 1.0)).collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 5.0), (1.0, 6.0)]), 0.0);
    }

    #[test]
    fn fdinfo_names_the_object_kind() {
        let mut o = BpfObjects::default();
        o.add_fdinfo("pos:\t0\nflags:\t02000002\nlink_type:\ttracing\nlink_id:\t7\nprog_tag:\tab\nprog_id:\t12\n");
        o.add_fdinfo(
            "pos:\t0\nprog_type:\t5\nprog_jited:\t1\nprog_tag:\tab\nmemlock:\t4096\nprog_id:\t12\n",
        );
        o.add_fdinfo("pos:\t0\nmap_type:\t27\nkey_size:\t0\nmap_id:\t30\n");
        o.add_fdinfo("pos:\t0\nflags:\t0100000\nmnt_id:\t20\n");
        assert_eq!(o.links, BTreeSet::from([7]));
        assert_eq!(o.progs, BTreeSet::from([12]));
        assert_eq!(o.maps, BTreeSet::from([30]));
    }

    #[test]
    fn bpftool_json_is_read() {
        let ids = json_ids(
            r#"[{"id":13433,"type":"tracepoint","map_ids":[19293,19290]},{"id":7,"prog_id":9}]"#,
        );
        assert_eq!(ids, BTreeSet::from([7, 13433]));
        let entry = r#"{"key":["0x00","0x00","0x00","0x00"],"values":[{"cpu":0,"value":["0x01","0x01","0x00","0x00","0x00","0x00","0x00","0x00"]},{"cpu":1,"value":["0x02","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]}]}"#;
        assert_eq!(percpu_sum(entry), Some(257 + 2));
        assert_eq!(
            printed_count("responses 12 errors 0\n", "responses"),
            Some(12)
        );
        assert_eq!(printed_count("sent 5\n", "responses"), None);
    }

    #[test]
    fn series_are_counted_for_capped_families() {
        let m = Metrics::parse(
            "http_server_request_duration_seconds_count{http_route=\"/a\"} 1\n\
             http_server_request_duration_seconds_count{http_route=\"/b\"} 1\n\
             db_client_operation_duration_seconds_count{db_collection_name=\"t\"} 1\n\
             periscope_events_read_total{kind=\"a\"} 1\n\
             periscope_events_read_total{kind=\"b\"} 1\n\
             periscope_events_read_total{kind=\"c\"} 1\n",
        )
        .unwrap();
        assert_eq!(
            most_series(&m),
            ("http_server_request_duration_seconds_count".to_owned(), 2)
        );
    }
}
