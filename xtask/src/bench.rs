//! `cargo xtask bench http`: what does the agent cost a busy HTTP server?
//!
//! nginx answers a fixed `200 ok` over keep-alive connections while wrk drives it, in rounds
//! that alternate without and with the agent (after one discarded warm-up round), so that
//! drift of the machine (thermal, noisy neighbours) hits both sides alike. The agent's own
//! CPU is read from /proc; the eBPF programs' cost shows up as lower nginx throughput,
//! because tracepoints run in the context of the syscalls nginx and wrk make.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{
    cpu_time, rss_bytes, run_wrk, Agent, AgentOptions, Metrics, Nginx, NginxOptions, WrkOptions,
    WrkResult,
};

use crate::util::{bench_agent, build_agent};

pub(crate) const REQUESTS_METRIC: &str = "http_server_request_duration_seconds_count";
/// The client ends' count: wrk's requests, decoded from wrk's own syscalls.
pub(crate) const CLIENT_REQUESTS_METRIC: &str = "http_client_request_duration_seconds_count";
pub(crate) const LOST_METRIC: &str = "periscope_kernel_events_lost_total";
/// The label that tells nginx's series apart from other servers' on the machine.
const PORT_LABEL: &str = "server_port";

/// Requests the agent counted for the server on `port`: the series labelled with that
/// `server_port`, or all series if the agent does not export that label.
pub(crate) fn requests_counted(metrics: &Metrics, port: u16) -> f64 {
    counted_for_port(metrics, REQUESTS_METRIC, port)
}

/// The sum of `metric` over the series labelled with `server_port` = `port`, or over all
/// series if the agent does not export that label.
pub(crate) fn counted_for_port(metrics: &Metrics, metric: &str, port: u16) -> f64 {
    let labelled = metrics
        .samples(metric)
        .iter()
        .any(|s| s.labels.contains_key(PORT_LABEL));
    if labelled {
        metrics.sum(metric, &[(PORT_LABEL, &port.to_string())])
    } else {
        metrics.sum(metric, &[])
    }
}

/// Pids of agents already running (not started by us): their overhead would be measured too.
pub(crate) fn other_agents() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "periscope"))
        })
        .collect()
}

/// The end of a reproducing command line: ` --no-build` and ` -- <agent args>` when given.
pub(crate) fn command_tail(no_build: bool, agent_args: &[String]) -> String {
    let mut tail = String::new();
    if no_build {
        tail.push_str(" --no-build");
    }
    if !agent_args.is_empty() {
        tail.push_str(" -- ");
        tail.push_str(&agent_args.join(" "));
    }
    tail
}

/// For the report: a warning naming the Periscope processes that were already running (also
/// printed at once), whose `cost` (e.g. "their overhead is in every column") is in the
/// figures; empty when there are none.
pub(crate) fn other_agents_warning(cost: &str) -> String {
    let others = other_agents();
    if others.is_empty() {
        return String::new();
    }
    eprintln!("[bench] warning: other periscope processes are running: {others:?}");
    format!(" **Warning: other Periscope processes were running ({others:?}); {cost}.**")
}

/// `all` in the order for `round` (0 is the warm-up): rotated by one each round, so that
/// every item runs in every position as often.
pub(crate) fn rotated<T, const N: usize>(mut all: [T; N], round: usize) -> [T; N] {
    all.rotate_left(round % N);
    all
}

/// A CPU to pin a process to, or `none`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpu(pub(crate) Option<usize>);

impl FromStr for Cpu {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Cpu(None));
        }
        s.parse()
            .map(|n| Cpu(Some(n)))
            .map_err(|_| format!("expected a CPU number or `none`, got {s:?}"))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("none"),
        }
    }
}

/// Options of `cargo xtask bench http` (and the nginx/wrk part of `bench traces`).
#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    /// Length of each wrk run, in seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Measured rounds; each runs wrk once per mode (`bench http`: without, then with the
    /// agent).
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// wrk connections (-c), all keep-alive.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// wrk threads (-t).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// CPU for nginx (master and its single worker), or `none`.
    #[arg(long, default_value = "1")]
    nginx_cpu: Cpu,
    /// CPU for wrk, or `none`.
    #[arg(long, default_value = "0")]
    wrk_cpu: Cpu,
    /// CPU for the agent, or `none` (the scheduler places it).
    #[arg(long, default_value = "none")]
    agent_cpu: Cpu,
    /// Use the existing agent binary instead of running `cargo build --release -p agent`
    /// (also implied by PERISCOPE_BIN).
    #[arg(long)]
    no_build: bool,
    /// nginx serves HTTPS (a certificate made by openssl for the run) and wrk speaks it: the
    /// agent decodes both ends from the TLS uprobes (`bench http` only).
    #[arg(long)]
    pub(crate) https: bool,
    /// nginx speaks HTTP/2 (`listen … http2`: h2c prior knowledge, or ALPN `h2` with
    /// `--https`) and h2load replaces wrk, with `--streams` concurrent streams per connection
    /// (`bench http` only).
    #[arg(long)]
    pub(crate) h2: bool,
    /// Concurrent streams per connection with `--h2` (h2load -m).
    #[arg(long, default_value_t = 10)]
    streams: u32,
    /// A paced load instead of a saturating one: each wrk connection waits this many
    /// milliseconds after a response before its next request (a Lua `delay()`), so both
    /// modes serve about the same rate and the latency columns compare the same load (the
    /// tail-latency penalty a service below saturation sees). Not with `--h2`.
    #[arg(long)]
    pub(crate) delay_ms: Option<u32>,
    /// Extra arguments for the agent, after `--`.
    #[arg(last = true)]
    agent_args: Vec<String>,
}

impl HttpArgs {
    /// The full command line of `cargo xtask bench <bench>`, every option spelled out (with
    /// `extra`, the options of that bench alone), for the report.
    pub(crate) fn command(&self, bench: &str, extra: &str) -> String {
        let mut c = format!(
            "cargo xtask bench {bench} --seconds {} --rounds {} --connections {} --threads {} \
             --nginx-cpu {} --wrk-cpu {} --agent-cpu {}{}{extra}",
            self.seconds,
            self.rounds,
            self.connections,
            self.threads,
            self.nginx_cpu,
            self.wrk_cpu,
            self.agent_cpu,
            if self.https { " --https" } else { "" }
        );
        if self.h2 {
            c.push_str(&format!(" --h2 --streams {}", self.streams));
        }
        if let Some(ms) = self.delay_ms {
            c.push_str(&format!(" --delay-ms {ms}"));
        }
        if !self.agent_args.is_empty() {
            c.push_str(" -- ");
            c.push_str(&self.agent_args.join(" "));
        }
        c
    }
}

/// What a fresh agent did during one wrk run.
pub(crate) struct AgentRun {
    /// The agent's CPU from just before wrk started until it had caught up.
    pub(crate) cpu: Duration,
    pub(crate) rss_bytes: u64,
    pub(crate) lost: f64,
    /// Requests counted for the server's port during the run.
    pub(crate) counted: f64,
    /// Its metrics scraped just before wrk started, just after wrk ended, and once it had
    /// caught up with the run.
    pub(crate) before: Metrics,
    pub(crate) wrk_end: Metrics,
    pub(crate) settled: Metrics,
    /// CPU of the watched processes (see [`run_with_agent`]) over wrk's run alone, and over
    /// the agent's whole window.
    pub(crate) watched_cpu_wrk: Duration,
    pub(crate) watched_cpu: Duration,
}

impl AgentRun {
    /// How much `metric` (summed over the series matching `labels`) grew during the run.
    pub(crate) fn delta(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.settled.sum(metric, labels) - self.before.sum(metric, labels)
    }
}

pub(crate) struct Run {
    pub(crate) wrk: WrkResult,
    pub(crate) agent: Option<AgentRun>,
}

impl Run {
    pub(crate) fn cpu_us_per_request(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(a.cpu.as_secs_f64() * 1e6 / self.wrk.requests.max(1) as f64)
    }
}

/// nginx answering `return 200` on keep-alive connections, and how to drive it and start
/// the agent for `bench http` and `bench traces`.
pub(crate) struct NginxBench {
    pub(crate) nginx: Nginx,
    pub(crate) wrk_options: WrkOptions,
    pub(crate) agent_options: AgentOptions,
    /// Where everything runs, and a warning if other agents were running, for the report.
    pub(crate) placement: String,
    /// The certificate nginx serves with `--https`.
    _certs: Option<harness::TempDir>,
}

impl NginxBench {
    /// Checks the options, sets up the machine, builds the agent (unless told not to),
    /// starts nginx and prints where everything runs. `extra` are more pinned processes:
    /// (option, what, CPU).
    pub(crate) fn start(args: &HttpArgs, extra: &[(&str, &str, Cpu)]) -> anyhow::Result<Self> {
        if args.rounds == 0 || args.seconds == 0 {
            bail!("--rounds and --seconds must be at least 1");
        }
        if args.h2 && args.delay_ms.is_some() {
            bail!("--delay-ms paces wrk; h2load (--h2) is not paced");
        }
        crate::setup::setup()?;
        let bin = bench_agent(args.no_build, build_agent)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pinned = [
            ("--nginx-cpu", args.nginx_cpu),
            ("--wrk-cpu", args.wrk_cpu),
            ("--agent-cpu", args.agent_cpu),
        ];
        for (what, cpu) in pinned
            .into_iter()
            .chain(extra.iter().map(|&(option, _, cpu)| (option, cpu)))
        {
            if cpu.0.is_some_and(|c| c >= cpus) {
                bail!("{what} {cpu}: this machine has only CPUs 0..{cpus}");
            }
        }

        let (nginx, url, certs) = if args.https {
            let certs = harness::TempDir::new("bench-certs")?;
            let (cert, key) = harness::tls::self_signed(certs.path())?;
            let nginx = Nginx::launch(&NginxOptions {
                cpu: args.nginx_cpu.0,
                http_body: format!(
                    "server {{\n    listen 127.0.0.1:@PORT@ ssl{h2};\n    ssl_certificate {};\n    \
                     ssl_certificate_key {};\n    keepalive_requests 10000000;\n    \
                     keepalive_timeout 75s;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}",
                    cert.display(),
                    key.display(),
                    h2 = if args.h2 { " http2" } else { "" },
                ),
                ..NginxOptions::server("")
            })?;
            let url = format!("https://127.0.0.1:{}/", nginx.port());
            (nginx, url, Some(certs))
        } else if args.h2 {
            let nginx = Nginx::launch(&NginxOptions {
                cpu: args.nginx_cpu.0,
                http_body: "server {\n    listen 127.0.0.1:@PORT@ http2;\n    \
                            keepalive_requests 10000000;\n    keepalive_timeout 75s;\n    \
                            location / { return 200 \"ok\\n\"; }\n  }"
                    .to_owned(),
                ..NginxOptions::server("")
            })?;
            let url = nginx.url("/");
            (nginx, url, None)
        } else {
            let nginx = ok_nginx(args.nginx_cpu.0, "")?;
            let url = nginx.url("/");
            (nginx, url, None)
        };
        let warning = other_agents_warning("their overhead is in every column");
        let on = |cpu: Cpu| match cpu.0 {
            Some(n) => format!("pinned to CPU {n}"),
            None => "unpinned".to_owned(),
        };
        let extra: String = extra
            .iter()
            .map(|&(_, what, cpu)| format!(", {what} {}", on(cpu)))
            .collect();
        let client = match (args.h2, args.delay_ms) {
            (true, _) => format!("h2load -m{}", args.streams),
            (false, Some(ms)) => {
                format!("wrk (paced: {ms} ms between a response and the next request)")
            }
            (false, None) => "wrk".to_owned(),
        };
        let placement = format!(
            "nginx (master + 1 worker) {}, {client} -t{} -c{} {}, agent {}{extra} (taskset); \
             {cpus} CPUs online",
            on(args.nginx_cpu),
            args.threads,
            args.connections,
            on(args.wrk_cpu),
            on(args.agent_cpu)
        );
        println!("[bench] {placement}");
        println!("[bench] target {url}, agent {}", bin.display());
        Ok(NginxBench {
            wrk_options: WrkOptions {
                url,
                threads: args.threads,
                connections: args.connections,
                duration: Duration::from_secs(args.seconds),
                cpu: args.wrk_cpu.0,
                h2_streams: args.h2.then_some(args.streams),
                delay_ms: args.delay_ms,
            },
            agent_options: AgentOptions {
                bin: Some(bin),
                args: args.agent_args.clone(),
                cpu: args.agent_cpu.0,
                ..AgentOptions::default()
            },
            placement: format!("{placement}.{warning}"),
            nginx,
            _certs: certs,
        })
    }

    /// One wrk run without the agent.
    pub(crate) fn run_without(&self) -> anyhow::Result<Run> {
        Ok(Run {
            wrk: run_wrk(&self.wrk_options)?,
            agent: None,
        })
    }

    /// One wrk run under a fresh agent started with `agent_options`, waiting afterwards for
    /// the agent to count every request nginx answered.
    pub(crate) fn run_with(&self, agent_options: &AgentOptions) -> anyhow::Result<Run> {
        let port = self.nginx.port();
        run_with_agent(
            &self.wrk_options,
            agent_options,
            port,
            &[],
            &CatchUp {
                progress: &|m| requests_counted(m, port),
                complete: &|before, now, wrk| {
                    requests_counted(now, port) - requests_counted(before, port)
                        >= wrk.requests as f64
                },
            },
        )
    }
}

/// nginx answering every path with `200 ok` over keep-alive connections, pinned to `cpu`;
/// `locations` are more `location` blocks (e.g. a large response for `/big`).
pub(crate) fn ok_nginx(cpu: Option<usize>, locations: &str) -> anyhow::Result<Nginx> {
    // keepalive_requests: nginx closes a keep-alive connection after 1000 requests by
    // default; raise it so that a whole run is pure keep-alive, as stated.
    Nginx::launch(&NginxOptions {
        cpu,
        ..NginxOptions::server(&format!(
            "keepalive_requests 10000000;\n    keepalive_timeout 75s;\n    \
             location / {{ return 200 \"ok\\n\"; }}\n    {locations}"
        ))
    })
}

/// Runs the benchmark and prints a Markdown report.
pub fn http(args: &HttpArgs) -> anyhow::Result<()> {
    let bench = NginxBench::start(args, &[])?;
    let measure = |label: &str, with_agent: bool| -> anyhow::Result<Run> {
        let run = if with_agent {
            bench.run_with(&bench.agent_options)?
        } else {
            bench.run_without()?
        };
        println!("[bench] {label}: {}", round_line(&run));
        Ok(run)
    };

    measure("warm-up without (discarded)", false)?;
    measure("warm-up with    (discarded)", true)?;
    let mut rounds: Vec<(Run, Run)> = Vec::new();
    for i in 1..=args.rounds {
        let without = measure(&format!("round {i} without"), false)?;
        let with = measure(&format!("round {i} with   "), true)?;
        rounds.push((without, with));
    }
    let placement = bench.placement.clone();
    drop(bench);

    println!("\n{}", report(args, &placement, &rounds));
    Ok(())
}

/// When an agent has caught up with a wrk run.
pub(crate) struct CatchUp<'a> {
    /// A figure that still grows while the agent works through the run (drains its ring
    /// buffer, pairs the last exchanges, exports).
    pub(crate) progress: &'a dyn Fn(&Metrics) -> f64,
    /// Whether the run is fully accounted for: (scrape before wrk, scrape now, wrk's report).
    pub(crate) complete: &'a dyn Fn(&Metrics, &Metrics, &WrkResult) -> bool,
}

/// Starts a fresh agent, runs wrk, and waits until the agent has caught up (see
/// [`settle`]); reads the agent's CPU over that whole window, and that of the `watch`ed
/// processes too (e.g. a collector it exports to).
pub(crate) fn run_with_agent(
    wrk_options: &WrkOptions,
    agent_options: &AgentOptions,
    port: u16,
    watch: &[u32],
    catch_up: &CatchUp<'_>,
) -> anyhow::Result<Run> {
    let watched = || -> anyhow::Result<Duration> { watch.iter().map(|&p| cpu_time(p)).sum() };
    let mut agent = Agent::start_with(agent_options.clone())?;
    let pid = agent.pid();
    let before = agent.try_metrics()?;
    let cpu_before = cpu_time(pid)?;
    let watched_before = watched()?;
    let wrk = run_wrk(wrk_options)?;
    let watched_wrk_end = watched()?;
    let (wrk_end, settled) = settle(&agent, catch_up.progress, &|now| {
        (catch_up.complete)(&before, now, &wrk)
    })?;
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    let watched_end = watched()?;
    let rss = rss_bytes(pid)?;
    let status = agent.stop()?;
    if !status.success() {
        eprintln!(
            "[bench] warning: the agent exited with {status} after SIGINT; its log:\n{}",
            agent.log()
        );
    }
    Ok(Run {
        wrk,
        agent: Some(AgentRun {
            cpu,
            rss_bytes: rss,
            lost: settled.sum(LOST_METRIC, &[]),
            counted: requests_counted(&settled, port) - requests_counted(&before, port),
            before,
            wrk_end,
            settled,
            watched_cpu_wrk: watched_wrk_end.saturating_sub(watched_before),
            watched_cpu: watched_end.saturating_sub(watched_before),
        }),
    })
}

/// Lets the agent drain its ring buffer and pair the last exchanges before its counters are
/// read: scrapes until the request count for `port` is stable and covers the `expected`
/// requests made since it was `counted_before` (or gives up waiting for that after a few
/// seconds, returning what it has).
pub(crate) fn settled_metrics(
    agent: &Agent,
    port: u16,
    counted_before: f64,
    expected: u64,
) -> anyhow::Result<Metrics> {
    let (_, settled) = settle(agent, &|m| requests_counted(m, port), &|m| {
        requests_counted(m, port) - counted_before >= expected as f64
    })?;
    Ok(settled)
}

/// Scrapes the agent every 250 ms until `progress` is the same in two scrapes in a row and
/// `complete` holds; after 3 s a stable `progress` is enough, and after 10 s it returns
/// whatever it has. Returns the first scrape (taken at once) and the last.
pub(crate) fn settle(
    agent: &Agent,
    progress: &dyn Fn(&Metrics) -> f64,
    complete: &dyn Fn(&Metrics) -> bool,
) -> anyhow::Result<(Metrics, Metrics)> {
    let started = Instant::now();
    let mut first = None;
    let mut previous = f64::NAN;
    loop {
        let metrics = agent
            .try_metrics()
            .with_context(|| format!("scraping the agent; its log:\n{}", agent.log()))?;
        let now = progress(&metrics);
        let stable = now == previous;
        previous = now;
        let done = (stable && (complete(&metrics) || started.elapsed() > Duration::from_secs(3)))
            || started.elapsed() > Duration::from_secs(10);
        match first {
            None if done => return Ok((metrics.clone(), metrics)),
            None => first = Some(metrics),
            Some(first) if done => return Ok((first, metrics)),
            Some(_) => {}
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub(crate) fn round_line(run: &Run) -> String {
    let w = &run.wrk;
    let mut line = format!(
        "{:.0} req/s, {} requests, p50 {:.3} ms, p99 {:.3} ms",
        w.rps, w.requests, w.p50_ms, w.p99_ms
    );
    if w.socket_errors > 0 || w.non_2xx > 0 {
        line.push_str(&format!(
            ", {} socket errors, {} non-2xx",
            w.socket_errors, w.non_2xx
        ));
    }
    if let (Some(a), Some(us)) = (&run.agent, run.cpu_us_per_request()) {
        line.push_str(&format!(
            "; agent {:.2} s CPU = {us:.2} µs/request, RSS {:.1} MB, lost events {}, counted {} requests",
            a.cpu.as_secs_f64(),
            a.rss_bytes as f64 / 1e6,
            a.lost,
            a.counted
        ));
    }
    line
}

/// (min, median, max); the median of an even count is the mean of the middle two.
pub(crate) fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median, v[n - 1])
}

pub(crate) fn spread_cell(values: &[f64], decimals: usize) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let (min, median, max) = spread(values);
    format!("{min:.decimals$} / **{median:.decimals$}** / {max:.decimals$}")
}

/// Busy CPU time of the whole machine so far (every CPU's user, nice, system, irq and softirq
/// time from `/proc/stat`; idle, iowait and steal left out).
pub(crate) fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks = parse_busy_ticks(&stat).context("/proc/stat has no aggregate `cpu` line")?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second() as f64,
    ))
}

/// `USER_HZ`, the unit of /proc's CPU times.
pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ... (guest time is inside user).
    let [user, nice, system, _idle, _iowait, irq, softirq, ..] = fields[..] else {
        return None;
    };
    Some(user + nice + system + irq + softirq)
}

pub(crate) fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{model}, Linux {kernel}")
}

fn report(args: &HttpArgs, placement: &str, rounds: &[(Run, Run)]) -> String {
    let dash = "–";
    let mut out = String::new();
    out.push_str(match (args.https, args.h2) {
        (true, false) => {
            "### HTTPS: nginx `return 200` over TLS under wrk, without and with Periscope\n\n"
        }
        (false, false) => "### HTTP: nginx `return 200` under wrk, without and with Periscope\n\n",
        (true, true) => {
            "### HTTP/2 over TLS: nginx `return 200` under h2load, without and with Periscope\n\n"
        }
        (false, true) => {
            "### HTTP/2 (h2c): nginx `return 200` under h2load, without and with Periscope\n\n"
        }
    });
    out.push_str(&format!("Command: `{}`\n\n", args.command("http", "")));
    out.push_str(&format!(
        "Machine: {}. Placement: {placement} Each round runs {} for {} s without, then with \
         the agent (started fresh, ready before the load starts, stopped with SIGINT after); \
         one warm-up round is discarded.\n\n",
        machine(),
        if args.h2 { "h2load" } else { "wrk" },
        args.seconds
    ));
    out.push_str(
        "| round | agent | requests/s | p50 (ms) | p99 (ms) | agent CPU (µs/request) | agent RSS (MB) | kernel events lost | requests counted / wrk |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (i, (without, with)) in rounds.iter().enumerate() {
        for (label, run) in [("without", without), ("with", with)] {
            let w = &run.wrk;
            let (cpu, rss, lost, counted) = match (&run.agent, run.cpu_us_per_request()) {
                (Some(a), Some(us)) => (
                    format!("{us:.2}"),
                    format!("{:.1}", a.rss_bytes as f64 / 1e6),
                    format!("{}", a.lost),
                    format!("{} / {}", a.counted, w.requests),
                ),
                _ => (dash.into(), dash.into(), dash.into(), dash.into()),
            };
            out.push_str(&format!(
                "| {} | {label} | {:.0} | {:.3} | {:.3} | {cpu} | {rss} | {lost} | {counted} |\n",
                i + 1,
                w.rps,
                w.p50_ms,
                w.p99_ms
            ));
        }
    }

    /// One number per run, `None` where it does not apply (agent figures without the agent).
    type Column = fn(&Run) -> Option<f64>;
    let pick = |with: bool, f: Column| -> Vec<f64> {
        rounds
            .iter()
            .filter_map(|(without, with_agent)| f(if with { with_agent } else { without }))
            .collect()
    };
    let rps: Column = |r| Some(r.wrk.rps);
    let rows: [(&str, Column, usize); 6] = [
        ("requests/s", rps, 0),
        ("p50 latency (ms)", |r| Some(r.wrk.p50_ms), 3),
        ("p99 latency (ms)", |r| Some(r.wrk.p99_ms), 3),
        ("agent CPU (µs/request)", Run::cpu_us_per_request, 2),
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
    ];
    out.push_str(
        "\nmin / **median** / max over rounds:\n\n\
         | metric | without agent | with agent |\n|---|---:|---:|\n",
    );
    for (name, f, decimals) in rows {
        out.push_str(&format!(
            "| {name} | {} | {} |\n",
            spread_cell(&pick(false, f), decimals),
            spread_cell(&pick(true, f), decimals)
        ));
    }
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|(without, with)| with.wrk.rps / without.wrk.rps)
        .collect();
    let (_, median_without, _) = spread(&pick(false, rps));
    let (_, median_with, _) = spread(&pick(true, rps));
    out.push_str(&format!(
        "\nThroughput with/without: **{:.3}** (ratio of medians); per round {}.\n",
        median_with / median_without,
        spread_cell(&ratios, 3)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_ticks_leave_out_idle_iowait_and_steal() {
        let stat = "cpu  100 2 30 5000 40 6 7 80 0 0\ncpu0 50 1 15 2500 20 3 3 40 0 0\n";
        assert_eq!(parse_busy_ticks(stat), Some(100 + 2 + 30 + 6 + 7));
        assert_eq!(parse_busy_ticks("cpu0 1 2 3 4 5 6 7\n"), None);
        assert_eq!(parse_busy_ticks("cpu  1 2 x 4 5 6 7\n"), None);
    }

    #[test]
    fn spread_takes_the_middle() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
        assert_eq!(spread_cell(&[], 1), "–");
    }

    #[test]
    fn cpu_parses_numbers_and_none() {
        assert_eq!("1".parse::<Cpu>(), Ok(Cpu(Some(1))));
        assert_eq!("none".parse::<Cpu>(), Ok(Cpu(None)));
        assert!("x".parse::<Cpu>().is_err());
    }
}
