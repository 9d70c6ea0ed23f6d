//! The Periscope agent under test, run as a child process in standalone mode.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{free_port, http_get, read_tail, ChildProcess, Metrics, TempDir};

/// The agent binary: `$PERISCOPE_BIN` if set, else `<workspace>/target/release/periscope`.
pub fn agent_binary() -> PathBuf {
    match std::env::var_os("PERISCOPE_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => crate::workspace_root().join("target/release/periscope"),
    }
}

/// How to start an [`Agent`]; `AgentOptions::default()` is what [`Agent::start`] uses.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The binary; `None` means [`agent_binary`].
    pub bin: Option<PathBuf>,
    /// Arguments after `--metrics-addr 127.0.0.1:<port>`.
    pub args: Vec<String>,
    /// Extra environment variables (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Pin the agent (all its threads) to this CPU with `taskset`.
    pub cpu: Option<usize>,
    /// How long to wait for `GET /readyz` to answer 200.
    pub ready_timeout: Duration,
    /// Wait for `/readyz` (true) or only for `/healthz` (false: an agent that is expected to
    /// stay unready for a while, e.g. with its Kubernetes API server down).
    pub require_ready: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            bin: None,
            args: Vec::new(),
            env: Vec::new(),
            cpu: None,
            ready_timeout: Duration::from_secs(60),
            require_ready: true,
        }
    }
}

/// A running agent serving `/metrics` and `/readyz` on `127.0.0.1:<free port>`; its stdout
/// and stderr go to a log file. Dropping it stops it like [`Agent::stop`].
#[derive(Debug)]
pub struct Agent {
    process: ChildProcess,
    addr: SocketAddr,
    log_path: PathBuf,
    _dir: TempDir,
}

impl Agent {
    /// Starts `$PERISCOPE_BIN --metrics-addr 127.0.0.1:<port> <extra_args>` and waits up to
    /// 60 s until `GET /readyz` answers 200. Fails, quoting the agent's log, if it exits or
    /// does not become ready in time.
    pub fn start(extra_args: &[&str]) -> anyhow::Result<Agent> {
        Agent::start_with(AgentOptions {
            args: extra_args.iter().map(|a| a.to_string()).collect(),
            ..AgentOptions::default()
        })
    }

    /// Like [`Agent::start`] with every knob exposed.
    pub fn start_with(options: AgentOptions) -> anyhow::Result<Agent> {
        let bin = options.bin.clone().unwrap_or_else(agent_binary);
        if !bin.exists() {
            bail!(
                "agent binary {} does not exist: build it with `cargo build --release -p agent` \
                 or point PERISCOPE_BIN at it",
                bin.display()
            );
        }
        let dir = TempDir::new("agent")?;
        let log_path = dir.path().join("agent.log");
        let log = File::create(&log_path)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = match options.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("--metrics-addr")
            .arg(addr.to_string())
            .args(&options.args)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let process = ChildProcess::spawn("agent", &mut cmd)?;
        let mut agent = Agent {
            process,
            addr,
            log_path,
            _dir: dir,
        };
        let probe = if options.require_ready {
            "/readyz"
        } else {
            "/healthz"
        };
        agent.wait_ready(probe, options.ready_timeout)?;
        // Every kernel the tests run on has `bpf_loop`: an agent that fell back to prefix
        // capture without being asked to hit a verifier limit (as the statistics once did).
        let framing_off = options.args.iter().any(|a| a == "--framing=false");
        if !framing_off && agent.log().contains("message framing unavailable") {
            bail!(
                "the agent fell back to prefix capture; its log:\n{}",
                agent.log()
            );
        }
        Ok(agent)
    }

    fn wait_ready(&mut self, probe: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait() {
                bail!(
                    "the agent exited ({status}) before becoming ready; its log:\n{}",
                    self.log()
                );
            }
            let last_error = match http_get(self.addr, probe, Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("{probe} answered {}: {}", r.status, r.text()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the agent was not ready after {timeout:?} (last: {last_error}); its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Where the agent serves `/metrics` and `/readyz`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent's stdout and stderr so far (the last 64 KiB), for assertion messages.
    pub fn log(&self) -> String {
        read_tail(&self.log_path, 64 * 1024)
    }

    /// The agent's whole output (stdout and log), however long: `--traces-stdout` prints every
    /// span of the machine, so a test's spans can scroll out of [`Agent::log`]'s tail.
    pub fn full_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// Scrapes and parses `/metrics`; panics (with the agent's log) if that fails.
    pub fn metrics(&self) -> Metrics {
        self.try_metrics()
            .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", self.log()))
    }

    /// Scrapes and parses `/metrics`.
    pub fn try_metrics(&self) -> anyhow::Result<Metrics> {
        let response = http_get(self.addr, "/metrics", Duration::from_secs(10))?;
        if response.status != 200 {
            bail!("/metrics answered {}: {}", response.status, response.text());
        }
        Metrics::parse(&response.text()).context("parsing the agent's /metrics")
    }

    /// Whether the agent is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.try_wait().is_none()
    }

    /// Kills the agent with SIGKILL (no clean-up of its own runs) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        self.process.stop(libc::SIGKILL, Duration::from_secs(10))
    }

    /// Stops the agent: SIGINT (its graceful shutdown), then SIGKILL after 10 s. Returns its
    /// exit status; calling it again returns the same status.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        self.process.stop(libc::SIGINT, Duration::from_secs(10))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("harness: stopping the agent: {e:#}");
        }
    }
}

/// Polls the agent's `/metrics` until `Metrics::sum(name, labels)` equals `expected` exactly.
/// The error shows the last value, the samples named `name` and the end of the agent's log.
pub fn wait_for_metric(
    agent: &Agent,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut last: Option<Metrics> = None;
    let mut last_error = None;
    let done = crate::wait_until(timeout, Duration::from_millis(100), || {
        match agent.try_metrics() {
            Ok(m) => {
                let hit = m.sum(name, labels) == expected;
                last = Some(m);
                hit
            }
            Err(e) => {
                last_error = Some(format!("{e:#}"));
                false
            }
        }
    });
    if done {
        return Ok(());
    }
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(",");
    let details = match &last {
        Some(m) => {
            let samples: Vec<String> = m
                .samples(name)
                .iter()
                .map(|s| format!("  {name}{s}"))
                .collect();
            format!(
                "last value {} (expected {expected}); samples named {name}:\n{}",
                m.sum(name, labels),
                if samples.is_empty() {
                    "  <none>".to_owned()
                } else {
                    samples.join("\n")
                }
            )
        }
        None => format!("no successful scrape; last error: {last_error:?}"),
    };
    bail!(
        "{name}{{{selector}}} did not reach {expected} within {timeout:?}: {details}\nagent log (tail):\n{}",
        read_tail(&agent.log_path, 4096)
    )
}

/// A client whose connections were open before the agent started (see
/// [`start_agent_mid_client`]); killed on drop.
pub struct EarlyClient(std::process::Child);

impl Drop for EarlyClient {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `client`, a program that opens its connections, prints `connected`, waits until the
/// file named by `$PERISCOPE_GO` exists, makes the calls the test counts and prints `done`;
/// starts the agent (with `agent_args`) between the two, and returns once it printed `done`.
/// The agent then finds the connections already open (in /proc) and adopts them mid-stream.
pub fn start_agent_mid_client(
    client: &mut Command,
    agent_args: &[&str],
) -> anyhow::Result<(Agent, EarlyClient)> {
    use std::io::BufRead;
    let dir = TempDir::new("early-client")?;
    let go = dir.path().join("go");
    let mut child = EarlyClient(
        client
            .env("PERISCOPE_GO", &go)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the early client")?,
    );
    let mut out = std::io::BufReader::new(child.0.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "connected", "the client said {line:?}");
    let agent = Agent::start(agent_args)?;
    std::fs::write(&go, b"")?;
    line.clear();
    out.read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "done", "the client said {line:?}");
    Ok((agent, child))
}
