//! `cargo xtask bench compare`: what does RED-metrics instrumentation cost a Python web app,
//! done the way teams do it today versus with Periscope?
//!
//! One Flask app, served by gunicorn (sync workers) and driven by `wrk --latency` against
//! `/users/<int:user_id>`, runs in five configurations, alternating within each round (after
//! one discarded warm-up round; each round starts one configuration further along) so that
//! drift of the machine hits them all alike:
//!
//! - `exporter`: `PrometheusMetrics(app)` from prometheus-flask-exporter (its /metrics is
//!   never scraped: the cost measured is the per-request instrumentation in the process);
//! - `otel`: OpenTelemetry tracing, `FlaskInstrumentor().instrument_app(app)` with a
//!   `TracerProvider` + `BatchSpanProcessor` + `ConsoleSpanExporter` writing to /dev/null
//!   (spans are serialised, as a real exporter would, but nothing touches the network);
//! - `periscope`: the app uninstrumented, a fresh Periscope agent running;
//! - `periscope+spans`: the same, with every request also exported as spans;
//! - `bare`: the app uninstrumented, no agent.
//!
//! The figures compared are CPU per request, two ways: all gunicorn processes (master and
//! workers) plus the agent's, and the whole machine's busy CPU (which also holds wrk and the
//! kernel programs' cost on the client's side), each divided by the requests wrk completed,
//! and each also as the cost added over `bare` in the same round.

use std::collections::BTreeMap;
use std::fmt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use harness::{
    cpu_time, descendants, free_port, http_get, run_wrk, Agent, AgentOptions, ChildProcess,
    Metrics, TempDir, WrkOptions, WrkResult,
};

use crate::bench::{
    clock_ticks_per_second, machine, machine_busy, other_agents_warning, requests_counted,
    settled_metrics, spread, spread_cell, Cpu, LOST_METRIC,
};
use crate::util::{bench_agent, build_agent, probe};

/// The route wrk requests (the app's `/users/<int:user_id>`).
const ROUTE_PATH: &str = "/users/42";

/// The app, for every configuration: `BENCH_INSTRUMENTATION` (read at import, i.e. in each
/// worker after gunicorn forks it, so the span processor's thread lives in the worker)
/// selects the instrumentation.
const APP: &str = r#"
import os

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/users/<int:user_id>")
def user(user_id):
    return jsonify(id=user_id, name="user-%d" % user_id, active=True)


MODE = os.environ["BENCH_INSTRUMENTATION"]
if MODE == "exporter":
    from prometheus_flask_exporter import PrometheusMetrics

    metrics = PrometheusMetrics(app)
elif MODE == "otel":
    from opentelemetry import trace
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "bench-compare"}))
    provider.add_span_processor(
        BatchSpanProcessor(ConsoleSpanExporter(out=open(os.devnull, "w")))
    )
    trace.set_tracer_provider(provider)
    FlaskInstrumentor().instrument_app(app)
elif MODE != "none":
    raise SystemExit("unknown BENCH_INSTRUMENTATION %r" % MODE)
"#;

/// The exporter's own CPU per request, measured inside one Python process, where the
/// machine's drift cannot tell two runs apart: the app's view served through the WSGI test
/// client by two apps, one with `PrometheusMetrics` and one without, alternating in batches of
/// `batch` requests (order swapped every round); prints the median over rounds of
/// (exporter − bare) µs per request.
const IN_PROCESS: &str = r#"
import statistics, sys, time
from flask import Flask, jsonify

def client(name, instrumented):
    app = Flask(name)

    @app.get("/users/<int:user_id>")
    def user(user_id):
        return jsonify(id=user_id, name="user-%d" % user_id, active=True)

    if instrumented:
        from prometheus_flask_exporter import PrometheusMetrics
        PrometheusMetrics(app)
    return app.test_client()

rounds, batch = int(sys.argv[1]), int(sys.argv[2])
clients = [client("bare", False), client("exporter", True)]
for c in clients:
    for _ in range(batch):
        assert c.get("/users/42").status_code == 200
added = []
for r in range(rounds):
    us = [0.0, 0.0]
    for i in ([0, 1] if r % 2 == 0 else [1, 0]):
        start = time.process_time_ns()
        for _ in range(batch):
            clients[i].get("/users/42")
        us[i] = (time.process_time_ns() - start) / batch / 1000
    added.append(us[1] - us[0])
print(statistics.median(added))
"#;

/// Rounds and batch size of [`IN_PROCESS`] per round of the benchmark (~2.5 s).
const IN_PROCESS_ROUNDS: &str = "100";
const IN_PROCESS_BATCH: &str = "50";

/// `python3`, pinned to `cpu` (through taskset) if one is given.
fn python_on(cpu: Cpu) -> Command {
    match cpu.0 {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "python3"]);
            c
        }
        None => Command::new("python3"),
    }
}

/// The exporter's own CPU per request in µs, measured by [`IN_PROCESS`] on the app's CPU.
fn exporter_in_process(args: &CompareArgs) -> anyhow::Result<f64> {
    let output = python_on(args.app_cpu)
        .args(["-c", IN_PROCESS, IN_PROCESS_ROUNDS, IN_PROCESS_BATCH])
        .stdin(Stdio::null())
        .output()
        .context("running python3 for the in-process measurement")?;
    if !output.status.success() {
        bail!(
            "the in-process measurement failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("the in-process measurement printed {text:?}"))
}

/// How long the OpenTelemetry configuration idles after wrk before its CPU is read: the
/// BatchSpanProcessor's schedule delay (5 s by default) plus a margin, so the last partial
/// batch of spans is exported and its cost counted.
const OTEL_FLUSH: Duration = Duration::from_millis(5500);

/// One way of serving the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Exporter,
    Otel,
    Periscope,
    /// Periscope with spans on: every request also becomes spans, printed as JSON lines
    /// (`--traces-stdout`), as the `otel` configuration serialises its spans to JSON.
    PeriscopeSpans,
    Bare,
}

impl Config {
    const ALL: [Config; 5] = [
        Config::Exporter,
        Config::Otel,
        Config::Periscope,
        Config::PeriscopeSpans,
        Config::Bare,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::Exporter => "exporter",
            Config::Otel => "otel",
            Config::Periscope => "periscope",
            Config::PeriscopeSpans => "periscope+spans",
            Config::Bare => "bare",
        }
    }

    /// The app's `BENCH_INSTRUMENTATION`.
    fn instrumentation(self) -> &'static str {
        match self {
            Config::Exporter => "exporter",
            Config::Otel => "otel",
            Config::Periscope | Config::PeriscopeSpans | Config::Bare => "none",
        }
    }

    /// Whether a Periscope agent runs, and its arguments beyond the bench's own.
    fn agent_args(self) -> Option<&'static [&'static str]> {
        match self {
            Config::Periscope => Some(&["--bpf-stats"]),
            Config::PeriscopeSpans => Some(&["--bpf-stats", "--traces-stdout"]),
            Config::Exporter | Config::Otel | Config::Bare => None,
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of `cargo xtask bench compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Length of each wrk run, in seconds.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Measured rounds; each runs wrk once per configuration.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// wrk connections (-c); gunicorn's sync workers close each after one request.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// gunicorn workers.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// gunicorn's worker class: `sync` answers one request per connection (every request is
    /// a new TCP connection), `gthread` (one thread) keeps connections alive, so wrk's
    /// connections carry request after request.
    #[arg(long, value_enum, default_value_t = WorkerClass::Sync)]
    worker_class: WorkerClass,
    /// CPU for gunicorn (master and workers), or `none`.
    #[arg(long, default_value = "1")]
    app_cpu: Cpu,
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
    /// Extra arguments for the agent, after `--`.
    #[arg(last = true)]
    agent_args: Vec<String>,
}

/// How gunicorn serves connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerClass {
    Sync,
    Gthread,
}

impl WorkerClass {
    fn name(self) -> &'static str {
        match self {
            WorkerClass::Sync => "sync",
            WorkerClass::Gthread => "gthread",
        }
    }

    /// gunicorn's arguments for this class.
    fn gunicorn_args(self) -> &'static [&'static str] {
        match self {
            WorkerClass::Sync => &["--worker-class", "sync"],
            WorkerClass::Gthread => &[
                "--worker-class",
                "gthread",
                "--threads",
                "1",
                "--keep-alive",
                "30",
            ],
        }
    }

    /// What it means for wrk's connections, for the report.
    fn connections(self) -> &'static str {
        match self {
            WorkerClass::Sync => {
                "gunicorn's sync workers close every connection after one response, so each \
                 request is a new TCP connection"
            }
            WorkerClass::Gthread => {
                "gunicorn's gthread worker (one thread, `--keep-alive 30`) keeps connections \
                 open, so wrk's connections carry request after request"
            }
        }
    }
}

impl CompareArgs {
    /// The full command line, every option spelled out, for the report.
    fn command(&self) -> String {
        let mut c = format!(
            "cargo xtask bench compare --seconds {} --rounds {} --connections {} --workers {} \
             --worker-class {} --app-cpu {} --wrk-cpu {} --agent-cpu {}",
            self.seconds,
            self.rounds,
            self.connections,
            self.workers,
            self.worker_class.name(),
            self.app_cpu,
            self.wrk_cpu,
            self.agent_cpu
        );
        if !self.agent_args.is_empty() {
            c.push_str(" -- ");
            c.push_str(&self.agent_args.join(" "));
        }
        c
    }
}

/// gunicorn serving [`APP`] on `127.0.0.1:<free port>`; stopped (with its workers) on drop.
struct Gunicorn {
    process: ChildProcess,
    port: u16,
    dir: TempDir,
}

impl Gunicorn {
    /// Starts gunicorn and waits until a worker answers the route (not merely until the
    /// master listens: the worker imports the app after forking, and that start-up must not
    /// be measured).
    fn start(args: &CompareArgs, config: Config) -> anyhow::Result<Gunicorn> {
        let dir = TempDir::new("compare")?;
        std::fs::write(dir.path().join("app.py"), APP)?;
        let log_path = dir.path().join("gunicorn.log");
        let log = std::fs::File::create(&log_path)?;
        let port = free_port();
        let mut cmd = python_on(args.app_cpu);
        cmd.args(["-m", "gunicorn"])
            .args(args.worker_class.gunicorn_args())
            .arg("--workers")
            .arg(args.workers.to_string())
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--graceful-timeout", "2", "--log-level", "warning"])
            .arg("--chdir")
            .arg(dir.path())
            .arg("app:app")
            .env("BENCH_INSTRUMENTATION", config.instrumentation())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut process = ChildProcess::spawn("gunicorn", &mut cmd)?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut last = String::new();
        let ready =
            harness::wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
                if process.try_wait().is_some() {
                    return true;
                }
                match http_get(addr, ROUTE_PATH, Duration::from_secs(2)) {
                    Ok(r) if r.status == 200 => true,
                    Ok(r) => {
                        last = format!("{ROUTE_PATH} answered {}: {}", r.status, r.text());
                        false
                    }
                    Err(e) => {
                        last = format!("{e:#}");
                        false
                    }
                }
            });
        if let Some(status) = process.try_wait() {
            bail!(
                "gunicorn ({config}) exited ({status}); its log:\n{}",
                harness_tail(&log_path)
            );
        }
        if !ready {
            bail!(
                "gunicorn ({config}) did not answer {ROUTE_PATH} within 30 s (last: {last}); \
                 its log:\n{}",
                harness_tail(&log_path)
            );
        }
        Ok(Gunicorn { process, port, dir })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}{ROUTE_PATH}", self.port)
    }

    /// The gunicorn processes: the master and its workers.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.process.pid()];
        pids.extend(descendants(self.process.pid()));
        pids
    }

    /// CPU time of the master and every worker so far.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let mut total = Duration::ZERO;
        for pid in self.pids() {
            total += cpu_time(pid).with_context(|| {
                format!(
                    "reading gunicorn's CPU time (did a worker die?); its log:\n{}",
                    harness_tail(&self.dir.path().join("gunicorn.log"))
                )
            })?;
        }
        Ok(total)
    }
}

/// The end of a log file, for error messages.
fn harness_tail(path: &std::path::Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(8192);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Run time of all of Periscope's kernel programs (`--bpf-stats`), in seconds.
const KERNEL_TIME_METRIC: &str = "periscope_bpf_program_run_time_seconds_total";
/// How many times each kernel program ran (`--bpf-stats`).
const KERNEL_RUNS_METRIC: &str = "periscope_bpf_program_runs_total";

/// Runs and run time (s) of each kernel program, by program name.
type Programs = BTreeMap<String, (f64, f64)>;

fn programs(metrics: &Metrics) -> Programs {
    let mut out = Programs::new();
    for (metric, time) in [(KERNEL_RUNS_METRIC, false), (KERNEL_TIME_METRIC, true)] {
        for sample in metrics.samples(metric) {
            let Some(name) = sample.labels.get("program") else {
                continue;
            };
            let entry = out.entry(name.clone()).or_default();
            if time {
                entry.1 += sample.value;
            } else {
                entry.0 += sample.value;
            }
        }
    }
    out
}

/// What each program did between `before` and `after`.
fn programs_delta(before: &Programs, after: &Programs) -> Programs {
    after
        .iter()
        .map(|(name, &(runs, time))| {
            let (r0, t0) = before.get(name).copied().unwrap_or_default();
            (name.clone(), (runs - r0, time - t0))
        })
        .collect()
}

/// What the agent did during one `periscope` run.
struct AgentRun {
    cpu: Duration,
    /// Time its kernel programs ran, on every CPU and in every process (`--bpf-stats`).
    kernel: Duration,
    /// The same per program, with their runs.
    programs: Programs,
    lost: f64,
    counted: f64,
}

/// One wrk run against one configuration.
struct Run {
    wrk: WrkResult,
    /// CPU of all gunicorn processes during the run.
    app_cpu: Duration,
    /// Busy CPU of the whole machine during the run (wrk, both ends' kernel work, the agent's
    /// kernel programs wherever they ran), plus what the app or agent still did after it.
    machine_cpu: Duration,
    agent: Option<AgentRun>,
}

impl Run {
    fn per_request_us(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.wrk.requests.max(1) as f64
    }

    fn app_us(&self) -> f64 {
        self.per_request_us(self.app_cpu)
    }

    fn agent_us(&self) -> Option<f64> {
        self.agent.as_ref().map(|a| self.per_request_us(a.cpu))
    }

    /// Periscope's kernel programs per request, in µs.
    fn kernel_us(&self) -> Option<f64> {
        self.agent.as_ref().map(|a| self.per_request_us(a.kernel))
    }

    /// Periscope's own cost as measured directly: the agent plus its kernel programs.
    fn direct_us(&self) -> Option<f64> {
        Some(self.agent_us()? + self.kernel_us()?)
    }

    /// gunicorn + agent CPU per request, in µs.
    fn total_us(&self) -> f64 {
        self.app_us() + self.agent_us().unwrap_or(0.0)
    }

    /// The whole machine's busy CPU per request, in µs.
    fn machine_us(&self) -> f64 {
        self.per_request_us(self.machine_cpu)
    }

    /// Requests the agent counted minus requests wrk completed.
    fn counted_excess(&self) -> Option<f64> {
        self.agent
            .as_ref()
            .map(|a| a.counted - self.wrk.requests as f64)
    }
}

/// Runs the benchmark and prints a Markdown report.
pub fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.seconds == 0 || args.workers == 0 {
        bail!("--rounds, --seconds and --workers must be at least 1");
    }
    crate::setup::setup()?;
    let bin = bench_agent(args.no_build, build_agent)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (what, cpu) in [
        ("--app-cpu", args.app_cpu),
        ("--wrk-cpu", args.wrk_cpu),
        ("--agent-cpu", args.agent_cpu),
    ] {
        if cpu.0.is_some_and(|c| c >= cpus) {
            bail!("{what} {cpu}: this machine has only CPUs 0..{cpus}");
        }
    }
    let warning = other_agents_warning("their overhead is in every configuration");
    let on = |cpu: Cpu| match cpu.0 {
        Some(n) => format!("pinned to CPU {n}"),
        None => "unpinned".to_owned(),
    };
    let versions = probe(
        "python3",
        &[
            "-c",
            "import sys, importlib.metadata as m; print('Python %d.%d.%d' % sys.version_info[:3] \
             + ''.join(', %s %s' % (p, m.version(p)) for p in ['flask', 'gunicorn', \
             'prometheus-flask-exporter', 'opentelemetry-sdk', \
             'opentelemetry-instrumentation-flask']))",
        ],
    )
    .map(|v| v.trim().to_owned())
    .unwrap_or_else(|| "unknown versions".into());
    let placement = format!(
        "gunicorn (master + {} {} worker{}) {}, wrk -t1 -c{} {}, agent {} (taskset); {cpus} \
         CPUs online",
        args.workers,
        args.worker_class.name(),
        if args.workers == 1 { "" } else { "s" },
        on(args.app_cpu),
        args.connections,
        on(args.wrk_cpu),
        on(args.agent_cpu)
    );
    println!("[bench] {placement}");
    println!("[bench] {versions}; agent {}", bin.display());

    let agent_options = AgentOptions {
        bin: Some(bin),
        args: args.agent_args.clone(),
        cpu: args.agent_cpu.0,
        ..AgentOptions::default()
    };
    let measure = |label: &str, config: Config| -> anyhow::Result<Run> {
        let run = run_config(args, config, &agent_options)?;
        println!("[bench] {label} {config:<9}: {}", round_line(&run));
        Ok(run)
    };

    // rounds[config][round]
    let mut rounds: Vec<Vec<Run>> = Config::ALL.iter().map(|_| Vec::new()).collect();
    let mut in_process = Vec::new();
    for round in 0..=args.rounds {
        if round > 0 {
            let us = exporter_in_process(args)?;
            println!("[bench] round {round} exporter in process: +{us:.1} µs/request");
            in_process.push(us);
        }
        for c in round_order(round) {
            let config = Config::ALL[c];
            if round == 0 {
                measure("warm-up (discarded)", config)?;
            } else {
                rounds[c].push(measure(&format!("round {round}"), config)?);
            }
        }
    }

    println!(
        "\n{}",
        report(
            args,
            &format!("{placement}.{warning}"),
            &versions,
            &rounds,
            &in_process
        )
    );
    Ok(())
}

/// The order of the configurations (indexes into `Config::ALL`) in a round: each round starts
/// one further along, so that no configuration always follows the same one or always runs
/// first after the warm-up.
fn round_order(round: usize) -> impl Iterator<Item = usize> {
    let n = Config::ALL.len();
    (0..n).map(move |i| (round + i) % n)
}

/// Starts a fresh gunicorn (and agent), runs wrk once, and reads the CPU they used.
fn run_config(
    args: &CompareArgs,
    config: Config,
    agent_options: &AgentOptions,
) -> anyhow::Result<Run> {
    let app = Gunicorn::start(args, config)?;
    let wrk_options = WrkOptions {
        url: app.url(),
        threads: 1,
        connections: args.connections,
        duration: Duration::from_secs(args.seconds),
        cpu: args.wrk_cpu.0,
        h2_streams: None,
        delay_ms: None,
    };
    let workers = app.pids().len() - 1;
    if workers != args.workers as usize {
        bail!(
            "gunicorn ({config}) runs {workers} workers, expected {}",
            args.workers
        );
    }
    let Some(extra_args) = config.agent_args() else {
        let machine_before = machine_busy()?;
        let before = app.cpu()?;
        let wrk = run_wrk(&wrk_options)?;
        let machine_during = machine_busy()?.saturating_sub(machine_before);
        let at_end = app.cpu()?;
        if config == Config::Otel {
            std::thread::sleep(OTEL_FLUSH);
        }
        let after = app.cpu()?;
        return Ok(Run {
            wrk,
            app_cpu: after.saturating_sub(before),
            machine_cpu: machine_during + after.saturating_sub(at_end),
            agent: None,
        });
    };

    let mut options = agent_options.clone();
    options
        .args
        .extend(extra_args.iter().map(|a| a.to_string()));
    let mut agent = Agent::start_with(options)?;
    let pid = agent.pid();
    let before = agent.try_metrics()?;
    let counted_before = requests_counted(&before, app.port);
    let kernel_before = before.sum(KERNEL_TIME_METRIC, &[]);
    let programs_before = programs(&before);
    let machine_before = machine_busy()?;
    let app_before = app.cpu()?;
    let agent_before = cpu_time(pid)?;
    let wrk = run_wrk(&wrk_options)?;
    let machine_during = machine_busy()?.saturating_sub(machine_before);
    let app_cpu = app.cpu()?.saturating_sub(app_before);
    let agent_at_end = cpu_time(pid)?;
    let metrics = settled_metrics(&agent, app.port, counted_before, wrk.requests)?;
    // The span exporter writes a batch at least every second, and the kernel programs' run
    // time is folded in every second: count the last of both.
    std::thread::sleep(Duration::from_millis(1500));
    let last = agent.try_metrics()?;
    let kernel = last.sum(KERNEL_TIME_METRIC, &[]) - kernel_before;
    let programs = programs_delta(&programs_before, &programs(&last));
    let agent_after = cpu_time(pid)?;
    let agent_cpu = agent_after.saturating_sub(agent_before);
    let status = agent.stop()?;
    if !status.success() {
        eprintln!(
            "[bench] warning: the agent exited with {status} after SIGINT; its log:\n{}",
            agent.log()
        );
    }
    Ok(Run {
        wrk,
        app_cpu,
        // The agent's catch-up after wrk (draining, exporting) counts; the harness's own
        // polling of /metrics meanwhile does not.
        machine_cpu: machine_during + agent_after.saturating_sub(agent_at_end),
        agent: Some(AgentRun {
            cpu: agent_cpu,
            kernel: Duration::from_secs_f64(kernel.max(0.0)),
            programs,
            lost: metrics.sum(LOST_METRIC, &[]),
            counted: requests_counted(&metrics, app.port) - counted_before,
        }),
    })
}

/// Where `periscope`'s kernel time per request went, program by program (medians over
/// rounds), largest first.
fn program_table(runs: &[Run]) -> String {
    let mut names: Vec<&String> = runs
        .iter()
        .filter_map(|r| r.agent.as_ref())
        .flat_map(|a| a.programs.keys())
        .collect();
    names.sort();
    names.dedup();
    let per_request = |run: &Run, value: f64| value / run.wrk.requests.max(1) as f64;
    let mut rows: Vec<(f64, String)> = names
        .into_iter()
        .filter_map(|name| {
            let of = |f: &dyn Fn(&Run, (f64, f64)) -> f64| -> Vec<f64> {
                runs.iter()
                    .filter_map(|r| {
                        let p = r.agent.as_ref()?.programs.get(name)?;
                        Some(f(r, *p))
                    })
                    .collect()
            };
            let us = of(&|r, (_, time)| per_request(r, time) * 1e6);
            let runs_per = of(&|r, (n, _)| per_request(r, n));
            let ns_per_run = of(&|_, (n, time)| if n > 0.0 { time * 1e9 / n } else { 0.0 });
            let median_us = spread(&us).1;
            (median_us >= 0.005).then(|| {
                (
                    median_us,
                    format!(
                        "| `{name}` | {} | {} | {} |\n",
                        spread_cell(&runs_per, 1),
                        spread_cell(&us, 2),
                        spread_cell(&ns_per_run, 0)
                    ),
                )
            })
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut out = String::from(
        "\nPeriscope's kernel programs per request (`periscope` runs, min / **median** / max \
         over rounds; machine-wide, so both ends of every connection, from `--bpf-stats`):\n\n\
         | program | runs per request | µs per request | ns per run |\n|---|---:|---:|---:|\n",
    );
    for (_, row) in rows {
        out.push_str(&row);
    }
    out
}

fn round_line(run: &Run) -> String {
    let w = &run.wrk;
    let mut line = format!(
        "{:.0} req/s, {} requests, p50 {:.3} ms, p99 {:.3} ms, gunicorn {:.2} s CPU = {:.1} \
         µs/request",
        w.rps,
        w.requests,
        w.p50_ms,
        w.p99_ms,
        run.app_cpu.as_secs_f64(),
        run.app_us()
    );
    if w.socket_errors > 0 || w.non_2xx > 0 {
        line.push_str(&format!(
            ", {} socket errors, {} non-2xx",
            w.socket_errors, w.non_2xx
        ));
    }
    if let (Some(a), Some(us)) = (&run.agent, run.agent_us()) {
        line.push_str(&format!(
            "; agent {:.2} s CPU = {us:.2} µs/request, kernel programs {:.2} µs/request, lost \
             events {}, counted {} requests",
            a.cpu.as_secs_f64(),
            run.kernel_us().unwrap_or(0.0),
            a.lost,
            a.counted
        ));
    }
    line.push_str(&format!(
        "; total {:.1} µs/request; machine {:.1} µs/request",
        run.total_us(),
        run.machine_us()
    ));
    line
}

/// Median of `f` over the runs.
fn median(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    spread(&runs.iter().map(f).collect::<Vec<_>>()).1
}

/// `**a/b of medians**×` and the per-round ratios (min / median / max, and in how many rounds
/// `a` was the larger), for the ratio lines.
fn ratio_line(num: &[Run], den: &[Run], f: fn(&Run) -> f64) -> String {
    let per_round: Vec<f64> = num.iter().zip(den).map(|(n, d)| f(n) / f(d)).collect();
    format!(
        "**{:.2}×** (ratio of medians; per round {}, above 1 in {} of {})",
        median(num, f) / median(den, f),
        spread_cell(&per_round, 2),
        per_round.iter().filter(|&&r| r > 1.0).count(),
        per_round.len()
    )
}

fn report(
    args: &CompareArgs,
    placement: &str,
    versions: &str,
    rounds: &[Vec<Run>],
    in_process: &[f64],
) -> String {
    let dash = "–";
    let mut out = String::new();
    out.push_str(
        "### Flask under gunicorn: prometheus-flask-exporter, OpenTelemetry and Periscope\n\n",
    );
    out.push_str(&format!("Command: `{}`\n\n", args.command()));
    out.push_str(&format!(
        "Machine: {}. Software: {versions}. Placement: {placement} The app answers `GET \
         /users/<int:user_id>` with a small JSON body; wrk requests `{ROUTE_PATH}`; {}. Each round runs wrk for {} s against each configuration in turn \
         (exporter, otel, periscope, periscope+spans, bare; each round starts one further \
         along that list), each on a freshly started \
         gunicorn (and, for periscope, a fresh agent), measured once a worker answers; one \
         warm-up round is discarded. `exporter` = `PrometheusMetrics(app)` (/metrics never scraped); `otel` = \
         `FlaskInstrumentor().instrument_app(app)` with a `TracerProvider`, \
         `BatchSpanProcessor` (defaults) and `ConsoleSpanExporter` writing to /dev/null, so \
         every span is serialised to JSON but nothing goes on the network (its CPU is read \
         {:.1} s after wrk ends, so the last batch is exported and counted); `periscope` = \
         the uninstrumented app with the agent (default arguments plus `--bpf-stats`, which \
         adds two clock reads per kernel program run); `periscope+spans` = the \
         same with `--traces-stdout`, so every request also becomes two spans (gunicorn's \
         server span and wrk's client span) serialised as JSON lines into the agent's log \
         file, and its CPU is read once every request is counted; `bare` = the \
         uninstrumented app alone. CPU per request = CPU time of all gunicorn processes \
         (master + workers, /proc utime + stime) + the agent's for periscope, divided by the \
         requests wrk completed. Machine CPU per request = busy time of all CPUs (/proc/stat: \
         user, nice, system, irq, softirq) while wrk ran, plus the app's (otel) or the \
         agent's CPU after it, divided by the same requests: it also holds wrk and the kernel \
         work on both ends, including Periscope's kernel programs in wrk's context, which the \
         per-process figure leaves out.\n\n",
        machine(),
        args.worker_class.connections(),
        args.seconds,
        OTEL_FLUSH.as_secs_f64()
    ));
    out.push_str(
        "| round | config | requests/s | p50 (ms) | p99 (ms) | gunicorn CPU (µs/request) | agent CPU (µs/request) | total CPU (µs/request) | machine CPU (µs/request) | requests counted / wrk |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for i in 0..args.rounds {
        for (config, runs) in Config::ALL.iter().zip(rounds) {
            let run = &runs[i];
            let w = &run.wrk;
            let (agent, counted) = match (&run.agent, run.agent_us()) {
                (Some(a), Some(us)) => (
                    format!("{us:.2}"),
                    format!("{} / {}", a.counted, w.requests),
                ),
                _ => (dash.into(), dash.into()),
            };
            out.push_str(&format!(
                "| {} | {config} | {:.0} | {:.3} | {:.3} | {:.1} | {agent} | {:.1} | {:.1} | \
                 {counted} |\n",
                i + 1,
                w.rps,
                w.p50_ms,
                w.p99_ms,
                run.app_us(),
                run.total_us(),
                run.machine_us()
            ));
        }
    }

    type Column = fn(&Run) -> Option<f64>;
    let rows: [(&str, Column, usize); 9] = [
        ("requests/s", |r| Some(r.wrk.rps), 0),
        ("p50 latency (ms)", |r| Some(r.wrk.p50_ms), 3),
        ("p99 latency (ms)", |r| Some(r.wrk.p99_ms), 3),
        ("gunicorn CPU (µs/request)", |r| Some(r.app_us()), 1),
        ("agent CPU (µs/request)", Run::agent_us, 2),
        ("kernel programs (µs/request)", Run::kernel_us, 2),
        ("agent + kernel programs (µs/request)", Run::direct_us, 2),
        ("total CPU (µs/request)", |r| Some(r.total_us()), 1),
        ("machine CPU (µs/request)", |r| Some(r.machine_us()), 1),
    ];
    out.push_str("\nmin / **median** / max over rounds:\n\n| metric |");
    for config in Config::ALL {
        out.push_str(&format!(" {config} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(Config::ALL.len()));
    out.push('\n');
    for (name, f, decimals) in rows {
        out.push_str(&format!("| {name} |"));
        for runs in rounds {
            let values: Vec<f64> = runs.iter().filter_map(f).collect();
            out.push_str(&format!(" {} |", spread_cell(&values, decimals)));
        }
        out.push('\n');
    }

    let [exporter, otel, periscope, spans, bare] = [0, 1, 2, 3, 4].map(|i| rounds[i].as_slice());
    type Measure = fn(&Run) -> f64;
    let rps: Measure = |r| r.wrk.rps;
    let measures: [(&str, Measure); 2] = [
        ("Total CPU (gunicorn + agent)", Run::total_us),
        ("Machine CPU", Run::machine_us),
    ];
    for (what, f) in measures {
        out.push_str(&format!("\n{what} per request relative to Periscope:\n\n"));
        out.push_str(&format!(
            "- exporter / periscope: {}\n",
            ratio_line(exporter, periscope, f)
        ));
        out.push_str(&format!(
            "- otel / periscope: {}\n",
            ratio_line(otel, periscope, f)
        ));
        out.push_str(&format!(
            "- otel / periscope+spans (both make spans): {}\n",
            ratio_line(otel, spans, f)
        ));
        let base = median(bare, f);
        let added = |runs: &[Run]| median(runs, f) - base;
        out.push_str(&format!(
            "\n{what} per request added over bare (median − median of bare, {base:.1} µs): \
             exporter {:+.1} µs, otel {:+.1} µs, periscope {:+.1} µs, periscope+spans {:+.1} \
             µs; exporter / periscope {}, otel / periscope+spans {}.\n",
            added(exporter),
            added(otel),
            added(periscope),
            added(spans),
            added_ratio(added(exporter), added(periscope)),
            added_ratio(added(otel), added(spans)),
        ));
    }
    // Each side's own cost, measured where run-to-run drift cannot reach it.
    let direct: Vec<f64> = periscope.iter().filter_map(Run::direct_us).collect();
    let per_round: Vec<f64> = in_process.iter().zip(&direct).map(|(e, p)| e / p).collect();
    out.push_str(&format!(
        "\nEach one's own cost per request, measured directly rather than as a difference of \
         runs: prometheus-flask-exporter {} µs (in one Python process on the app's CPU, the \
         same view through Flask's test client with and without `PrometheusMetrics`, {} \
         alternating batches of {} requests, median of the differences, once per round); \
         Periscope {} µs (agent CPU + its kernel programs' run time on every CPU, from \
         `--bpf-stats`; this leaves out what the kernel spends entering the programs). \
         Exporter / Periscope: {} (ratio of medians; per round {}, above 1 in {} of {}).\n",
        spread_cell(in_process, 1),
        IN_PROCESS_ROUNDS,
        IN_PROCESS_BATCH,
        spread_cell(&direct, 1),
        if direct.is_empty() || in_process.is_empty() {
            dash.to_owned()
        } else {
            format!("**{:.2}×**", spread(in_process).1 / spread(&direct).1)
        },
        spread_cell(&per_round, 2),
        per_round.iter().filter(|&&r| r > 1.0).count(),
        per_round.len()
    ));
    out.push_str(&program_table(periscope));
    out.push_str("\nThroughput relative to bare:\n\n");
    for (name, runs) in [
        ("exporter", exporter),
        ("otel", otel),
        ("periscope", periscope),
        ("periscope+spans", spans),
    ] {
        out.push_str(&format!("- {name}: {}\n", ratio_line(runs, bare, rps)));
    }

    let excess: Vec<f64> = periscope
        .iter()
        .chain(spans)
        .filter_map(Run::counted_excess)
        .collect();
    let lost: Vec<f64> = periscope
        .iter()
        .chain(spans)
        .filter_map(|r| r.agent.as_ref().map(|a| a.lost))
        .collect();
    let within = excess
        .iter()
        .all(|&e| (0.0..=f64::from(args.connections)).contains(&e));
    out.push_str(&format!(
        "\nCounts: Periscope's `{}` for the app's port minus wrk's completed requests, per \
         round (periscope, then periscope+spans): {} (in-flight requests when wrk stops, \
         expected 0…{}): **{}**. Kernel events \
         lost: {}.\n",
        crate::bench::REQUESTS_METRIC,
        excess
            .iter()
            .map(|e| format!("{e:+}"))
            .collect::<Vec<_>>()
            .join(", "),
        args.connections,
        if within { "ok" } else { "MISMATCH" },
        spread_cell(&lost, 0)
    ));
    // /proc counts CPU in clock ticks: say how coarse that is at this run length.
    let hz = clock_ticks_per_second();
    let fewest = rounds
        .iter()
        .flatten()
        .map(|r| r.wrk.requests)
        .min()
        .unwrap_or(1)
        .max(1);
    out.push_str(&format!(
        "\nCPU is read from /proc in clock ticks of {} ms: one tick is at most {:.2} µs/request \
         at this run length ({fewest} requests in the shortest run).\n",
        1000 / hz,
        1e6 / hz as f64 / fewest as f64
    ));
    out
}

/// The ratio of two added costs, or why there is none: a difference of medians at or below
/// zero means the runs' spread hides that cost.
fn added_ratio(num: f64, den: f64) -> String {
    if num > 0.0 && den > 0.0 {
        format!("**{:.1}×**", num / den)
    } else {
        "not resolved (an added cost within the spread of bare's runs)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_runs_and_time_are_taken_per_program_as_differences() {
        let exposition = |runs: u32, secs: f64| {
            Metrics::parse(&format!(
                "periscope_bpf_program_runs_total{{program=\"a\"}} {runs}\n\
                 periscope_bpf_program_runs_total{{program=\"b\"}} 7\n\
                 periscope_bpf_program_run_time_seconds_total{{program=\"a\"}} {secs}\n\
                 periscope_bpf_program_run_time_seconds_total{{program=\"b\"}} 0.5\n"
            ))
            .unwrap()
        };
        let delta = programs_delta(
            &programs(&exposition(10, 1.0)),
            &programs(&exposition(25, 1.25)),
        );
        assert_eq!(delta.len(), 2);
        assert_eq!(delta["a"], (15.0, 0.25));
        assert_eq!(delta["b"], (0.0, 0.0));
    }

    #[test]
    fn configs_are_distinct_and_only_two_are_instrumented_in_process() {
        let names: Vec<&str> = Config::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            ["exporter", "otel", "periscope", "periscope+spans", "bare"]
        );
        let uninstrumented = Config::ALL
            .iter()
            .filter(|c| c.instrumentation() == "none")
            .count();
        assert_eq!(uninstrumented, 3);
        let with_agent = Config::ALL.iter().filter(|c| c.agent_args().is_some());
        assert_eq!(with_agent.count(), 2);
    }

    #[test]
    fn every_round_runs_each_configuration_once_starting_further_along() {
        for round in 0..7 {
            let mut order: Vec<usize> = round_order(round).collect();
            assert_eq!(order[0], round % Config::ALL.len());
            order.sort();
            assert_eq!(order, [0, 1, 2, 3, 4]);
        }
    }
}
