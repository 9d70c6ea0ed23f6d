//! `cargo xtask abuse faults`: an agent killed with SIGKILL leaves no BPF program, map or
//! link behind; its successor decodes a keep-alive connection opened before either started
//! and attributes it to the right processes; under wrk, a stalled OTLP collector (accepts,
//! never reads) and a scraper reading /metrics one byte a second never hold capture up.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{http_get, run_wrk, ChildProcess, Metrics, TempDir, WrkOptions};

use super::{wait_for, BpfObjects, Env, Report};
use crate::bench::{ok_nginx, requests_counted};

const SERVER_METRIC: &str = "http_server_request_duration_seconds_count";
const CLIENT_METRIC: &str = "http_client_request_duration_seconds_count";
const SPANS_DROPPED_METRIC: &str = "periscope_spans_dropped_total";
/// A scrape slower than this while the slow scraper and wrk run counts as blocked.
const PROMPT: Duration = Duration::from_secs(1);

/// One keep-alive connection, opened at once; each line `N` on stdin sends N GETs to /held
/// on it and prints `done N`.
const HELD_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def get():
    s.sendall(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"ok\n"):
        data += s.recv(4096)
print("connected", flush=True)
for line in sys.stdin:
    for _ in range(int(line)):
        get()
    print("done", line.strip(), flush=True)
"#;

/// Accepts connections and never reads from them nor answers: a stalled collector.
const STALLED_COLLECTOR: &str = r#"
import socket, sys, time
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 0))
l.listen(64)
print(l.getsockname()[1], flush=True)
held = []
while True:
    c, _ = l.accept()
    held.append(c)
"#;

/// Asks for /metrics with a tiny receive buffer and reads one byte a second.
const SLOW_SCRAPER: &str = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
s.connect(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
print("reading", flush=True)
while s.recv(1):
    time.sleep(1)
"#;

/// Options of `cargo xtask abuse faults`.
#[derive(Debug, clap::Parser)]
#[command(name = "faults")]
pub struct FaultsArgs {
    /// Length of the wrk run with the stalled collector and the slow scraper, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// wrk connections (-c), keep-alive.
    #[arg(long, default_value_t = 20)]
    connections: u32,
    /// Seconds the killed agent's BPF objects may take to disappear.
    #[arg(long, default_value_t = 5)]
    gone_within: u64,
}

impl FaultsArgs {
    fn command(&self) -> String {
        format!(
            "cargo xtask abuse faults --seconds {} --connections {} --gone-within {}",
            self.seconds, self.connections, self.gone_within
        )
    }
}

/// A Python script run in the background with piped stdin/stdout.
struct Script {
    process: ChildProcess,
    stdout: BufReader<std::process::ChildStdout>,
    _dir: TempDir,
}

impl Script {
    fn start(name: &str, code: &str, args: &[String]) -> anyhow::Result<Script> {
        let (mut process, dir) = super::python(name, code, args, Stdio::piped())?;
        let stdout = BufReader::new(process.take_stdout().context("stdout")?);
        Ok(Script {
            process,
            stdout,
            _dir: dir,
        })
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("{} exited early", self.process.name());
        }
        Ok(line.trim().to_owned())
    }
}

/// Entries in the BPF filesystem: pinned objects would outlive the agent.
fn pinned() -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from("/sys/fs/bpf")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
            out.push(e.path().display().to_string());
        }
    }
    out.sort();
    out
}

/// The `service_name` labels of `metric`'s series for `/held` on `port`, and their sum.
fn held(m: &Metrics, metric: &str, port: &str) -> (Vec<String>, f64) {
    let labels = [("server_port", port), ("http_route", "/held")];
    let mut names: Vec<String> = m
        .matching(metric, &labels)
        .filter_map(|s| s.labels.get("service_name").cloned())
        .collect();
    names.sort();
    names.dedup();
    (names, m.sum(metric, &labels))
}

pub(crate) fn faults(env: &Env, args: &FaultsArgs) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "Faults: SIGKILL, restart, stalled collector, slow scraper",
        &args.command(),
    );
    let nginx = ok_nginx(None, "")?;
    let port = nginx.port().to_string();

    // 1. SIGKILL leaves nothing behind.
    let mut client = Script::start("held-client", HELD_CLIENT, std::slice::from_ref(&port))?;
    let mut stdin = client.process.take_stdin().context("stdin")?;
    let connected = client.line()?;
    if connected != "connected" {
        bail!("the keep-alive client said {connected:?}");
    }
    let pinned_before = pinned();
    let mut first = env.agent(&[])?;
    let owned = BpfObjects::of(first.pid())?;
    writeln!(stdin, "3")?;
    client.line()?;
    let (_, counted_first) = {
        let (m, _) = wait_for(&first, Duration::from_secs(10), |m| {
            held(m, SERVER_METRIC, &port).1 >= 3.0
        })?;
        held(&m, SERVER_METRIC, &port)
    };
    first.kill()?;
    let killed = Instant::now();
    let mut left = owned.still_loaded()?;
    while !left.is_empty() && killed.elapsed() < Duration::from_secs(args.gone_within) {
        std::thread::sleep(Duration::from_millis(100));
        left = owned.still_loaded()?;
    }
    let gone_in = killed.elapsed().as_secs_f64();
    let new_pins: Vec<String> = pinned()
        .into_iter()
        .filter(|p| !pinned_before.contains(p))
        .collect();

    // 2. A new agent, requests on the connection opened before both agents.
    let second = env.agent(&[])?;
    let adopted = 7;
    writeln!(stdin, "{adopted}")?;
    client.line()?;
    let (m, _) = wait_for(&second, Duration::from_secs(10), |m| {
        held(m, SERVER_METRIC, &port).1 >= f64::from(adopted)
            && held(m, CLIENT_METRIC, &port).1 >= f64::from(adopted)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let m = second.try_metrics().unwrap_or(m);
    let (server_names, server_counted) = held(&m, SERVER_METRIC, &port);
    let (client_names, client_counted) = held(&m, CLIENT_METRIC, &port);
    drop(second);
    drop(stdin);

    // 3 + 4. A stalled collector and a slow scraper, under wrk.
    let mut collector = Script::start("stalled-collector", STALLED_COLLECTOR, &[])?;
    let collector_port = collector.line()?;
    let agent = env.agent(&[
        "--otlp-endpoint".into(),
        format!("http://127.0.0.1:{collector_port}"),
    ])?;
    let mut scraper = Script::start(
        "slow-scraper",
        SLOW_SCRAPER,
        &[agent.addr().port().to_string()],
    )?;
    scraper.line()?;
    let before = agent.try_metrics()?;
    let dropped_before = before.sum(SPANS_DROPPED_METRIC, &[]);
    let wrk_options = WrkOptions {
        url: nginx.url("/"),
        threads: 1,
        connections: args.connections,
        duration: Duration::from_secs(args.seconds),
        cpu: None,
        h2_streams: None,
        delay_ms: None,
    };
    let (wrk, scrapes) = std::thread::scope(|s| {
        let wrk = s.spawn(|| run_wrk(&wrk_options));
        let mut scrapes: Vec<Duration> = Vec::new();
        while !wrk.is_finished() {
            let t = Instant::now();
            let ok = http_get(agent.addr(), "/metrics", Duration::from_secs(10))
                .is_ok_and(|r| r.status == 200);
            scrapes.push(if ok { t.elapsed() } else { Duration::MAX });
            std::thread::sleep(Duration::from_millis(500));
        }
        (wrk.join(), scrapes)
    });
    let wrk = match wrk {
        Ok(result) => result?,
        Err(_) => bail!("the wrk thread panicked"),
    };
    let nginx_port = nginx.port();
    let (settled, _) = wait_for(&agent, Duration::from_secs(15), |m| {
        requests_counted(m, nginx_port) - requests_counted(&before, nginx_port)
            >= wrk.requests as f64
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let settled = agent.try_metrics().unwrap_or(settled);
    let counted = requests_counted(&settled, nginx_port) - requests_counted(&before, nginx_port);
    let dropped = settled.sum(SPANS_DROPPED_METRIC, &[]) - dropped_before;
    let scraper_alive = scraper.process.try_wait().is_none();
    let collector_alive = collector.process.try_wait().is_none();
    let slowest = scrapes.iter().max().copied().unwrap_or_default();
    let agent_running = {
        let mut agent = agent;
        agent.is_running()
    };

    report.para(&format!(
        "(1) A Python client opens one keep-alive connection to nginx; an agent starts, counts \
         3 requests on it, and is killed with SIGKILL; the programs, maps and links it held \
         (read from its `/proc/<pid>/fdinfo`: {}) are looked up with `bpftool prog/map/link \
         show` until gone, and /sys/fs/bpf is compared with before. (2) A second agent starts \
         and the client sends {adopted} more requests on the same connection. (3, 4) A third \
         agent exports spans to a collector that accepts TCP connections and never reads, while \
         a client reads its /metrics one byte a second (receive buffer 1 KiB) and wrk -t1 -c{} \
         runs {} s; another client scrapes /metrics every 0.5 s meanwhile.",
        owned.summary(),
        args.connections,
        args.seconds
    ));
    report.para(&format!(
        "| figure | value |\n|---|---:|\n\
         | first agent: requests counted before SIGKILL | {counted_first} / 3 |\n\
         | its BPF objects still loaded after {gone_in:.1} s | {} |\n\
         | new entries in /sys/fs/bpf | {} |\n\
         | second agent: adopted connection, server / client side counted (`service_name`) | {server_counted} ({}) / {client_counted} ({}) |\n\
         | wrk requests / counted (stalled collector, slow scraper) | {} / {counted} |\n\
         | `{SPANS_DROPPED_METRIC}` during the run | {dropped} |\n\
         | scrapes during the run / slowest (ms) | {} / {:.0} |",
        left.summary(),
        new_pins.len(),
        server_names.join(","),
        client_names.join(","),
        wrk.requests,
        scrapes.len(),
        slowest.as_secs_f64() * 1e3
    ));

    report.check(
        "the killed agent held programs, maps and links",
        owned.summary(),
        !owned.progs.is_empty() && !owned.maps.is_empty() && !owned.links.is_empty(),
    );
    report.check(
        &format!(
            "all of them gone within {} s of SIGKILL, nothing pinned",
            args.gone_within
        ),
        format!("left: {}; new pins: {new_pins:?}", left.summary()),
        left.is_empty() && new_pins.is_empty(),
    );
    report.check(
        "requests on a connection opened before start-up counted exactly, both ends",
        format!("server {server_counted}, client {client_counted} / {adopted}"),
        server_counted == f64::from(adopted) && client_counted == f64::from(adopted),
    );
    report.check(
        "… and attributed to nginx (server) and the Python client (client: its executable, \
         python3 or the python3.x it links to)",
        format!("{server_names:?} / {client_names:?}"),
        server_names == ["nginx"]
            && client_names.len() == 1
            && client_names[0].starts_with("python3"),
    );
    report.check(
        "wrk's requests counted exactly despite the stalled collector and slow scraper (at most \
         one in flight per connection when wrk stops)",
        format!("{counted} / {}", wrk.requests),
        counted >= wrk.requests as f64
            && counted <= (wrk.requests + u64::from(args.connections)) as f64,
    );
    report.check(
        "spans dropped and counted while the collector stalls",
        format!("+{dropped}"),
        dropped > 0.0,
    );
    report.check(
        &format!(
            "/metrics answered within {} ms throughout",
            PROMPT.as_millis()
        ),
        format!(
            "slowest {:.0} ms of {}",
            slowest.as_secs_f64() * 1e3,
            scrapes.len()
        ),
        !scrapes.is_empty() && slowest <= PROMPT,
    );
    report.check(
        "agent, slow scraper and stalled collector all still running at the end",
        format!("agent {agent_running}, scraper {scraper_alive}, collector {collector_alive}"),
        agent_running && scraper_alive && collector_alive,
    );
    Ok(report)
}
