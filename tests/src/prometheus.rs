//! A real Prometheus server (Debian's `prometheus` package) scraping the agent, for tests that
//! run dashboard queries and alert expressions through PromQL as Grafana would.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::http::wait_for_port_or_exit;
use crate::{free_port, http_get, read_tail, ChildProcess, TempDir};

/// A running Prometheus on `127.0.0.1:<free port>` with its TSDB in a temp dir, scraping and
/// evaluating rules every second. Dropping it stops it and removes the dir.
#[derive(Debug)]
pub struct Prometheus {
    process: ChildProcess,
    addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with one scrape job `job` over `targets` (`/metrics`, every second)
    /// and, if given, a rules file (evaluated every second). Waits until `/-/ready` answers.
    pub fn start(job: &str, targets: &[SocketAddr], rules: Option<&Path>) -> anyhow::Result<Self> {
        let dir = TempDir::new("prometheus")?;
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        if let Some(rules) = rules {
            let copy = dir.path().join("rules.yaml");
            std::fs::copy(rules, &copy).with_context(|| format!("copying {}", rules.display()))?;
            let _ = writeln!(config, "rule_files:\n  - {}", copy.display());
        }
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let _ = write!(
            config,
            "scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, &config)?;
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_path = dir.path().join("prometheus.log");
        let log = File::create(&log_path)?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(["--storage.tsdb.retention.time=1h", "--log.level=warn"])
            // Exemplars are kept (and OpenMetrics asked for, as on every scrape).
            .arg("--enable-feature=exemplar-storage")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut process = ChildProcess::spawn("prometheus", &mut cmd)
            .context("starting prometheus (package prometheus; `cargo xtask setup`)")?;
        match wait_for_port_or_exit(&mut process, port, Duration::from_secs(30)) {
            Ok(()) => {}
            Err(status) => bail!(
                "prometheus did not listen on {addr} (exit: {status:?}):\n{}\nconfig:\n{config}",
                read_tail(&log_path, 8192)
            ),
        }
        let prometheus = Prometheus { process, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match prometheus.get("/-/ready") {
                Ok(_) => return Ok(prometheus),
                Err(e) if Instant::now() > deadline => {
                    bail!("prometheus never got ready: {e:#}\n{}", prometheus.log())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Where its HTTP API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The pid of the server.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `GET <path_and_query>`: the body of a 200 answer, else an error with status and body.
    pub fn get(&self, path_and_query: &str) -> anyhow::Result<String> {
        let response = http_get(self.addr, path_and_query, Duration::from_secs(10))?;
        if response.status != 200 {
            bail!(
                "GET {path_and_query} answered {}: {}",
                response.status,
                response.text()
            );
        }
        Ok(response.text())
    }

    /// An instant query through `/api/v1/query`: the raw JSON answer (status `success`), or
    /// the error Prometheus gave (bad PromQL is a 400 with the parser's message).
    pub fn query(&self, expr: &str) -> anyhow::Result<String> {
        self.get(&format!("/api/v1/query?query={}", url_encode(expr)))
            .with_context(|| format!("query {expr}"))
    }

    /// Exemplars of the series `expr` selects over the last `seconds`, through
    /// `/api/v1/query_exemplars`: the raw JSON answer.
    pub fn query_exemplars(&self, expr: &str, seconds: u64) -> anyhow::Result<String> {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 1;
        let start = end.saturating_sub(seconds);
        self.get(&format!(
            "/api/v1/query_exemplars?query={}&start={start}&end={end}",
            url_encode(expr)
        ))
        .with_context(|| format!("query_exemplars {expr}"))
    }

    /// The server's log so far, for assertion messages.
    pub fn log(&self) -> String {
        read_tail(&self.dir.path().join("prometheus.log"), 16 * 1024)
    }
}

/// Percent-encodes `s` for a URL query value (everything but unreserved characters).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_encode_escapes_promql() {
        assert_eq!(
            super::url_encode(r#"sum(x{a=~".*"}[1m]) / 2"#),
            "sum%28x%7Ba%3D~%22.%2A%22%7D%5B1m%5D%29%20%2F%202"
        );
    }
}
