//! A Kafka broker for tests: librdkafka's built-in mock cluster (from the `confluent-kafka`
//! wheel), which speaks the real protocol over real TCP on 127.0.0.1. No broker package exists
//! on this platform; clients such as `kcat` and kafka-python connect to it like to any broker.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{ChildProcess, TempDir};

/// Keeps a mock cluster alive and prints its bootstrap address, then waits to be killed.
const MOCK_CLUSTER: &str = r#"
import sys, time, confluent_kafka
p = confluent_kafka.Producer({"test.mock.num.brokers": 1, "bootstrap.servers": "unused:1", "log_level": 0})
b = list(p.list_topics(timeout=10).brokers.values())[0]
print(f"BOOTSTRAP {b.host}:{b.port}", flush=True)
while True:
    p.poll(1.0)
"#;

/// A running single-broker mock cluster. Topics are created on first use.
#[derive(Debug)]
pub struct MockKafka {
    process: ChildProcess,
    bootstrap: String,
    _dir: TempDir,
}

impl MockKafka {
    pub fn start() -> MockKafka {
        MockKafka::launch().unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn launch() -> anyhow::Result<MockKafka> {
        let dir = TempDir::new("kafka")?;
        let script = dir.path().join("mock.py");
        std::fs::write(&script, MOCK_CLUSTER)?;
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut process = ChildProcess::spawn("kafka-mock", &mut cmd)?;
        let stdout = process.take_stdout().context("the mock cluster's stdout")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = BufReader::new(stdout).lines();
        let bootstrap = loop {
            if Instant::now() > deadline {
                bail!("the Kafka mock cluster did not start within 30 s");
            }
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("BOOTSTRAP ") {
                        break addr.to_owned();
                    }
                }
                _ => bail!("the Kafka mock cluster exited before printing its address"),
            }
        };
        Ok(MockKafka {
            process,
            bootstrap,
            _dir: dir,
        })
    }

    /// `127.0.0.1:<port>` of the broker.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn port(&self) -> u16 {
        self.bootstrap
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// The mock cluster runs inside this Python process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// Runs a Python snippet with `BOOTSTRAP` set to the broker address; returns its stdout.
pub fn python_kafka_client(kafka: &MockKafka, code: &str) -> anyhow::Result<String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .env("BOOTSTRAP", kafka.bootstrap())
        .stdin(Stdio::null())
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "python kafka client failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `kcat -b <broker> <args>` with `input` on stdin; returns stdout.
pub fn kcat(kafka: &MockKafka, args: &[&str], input: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new("kcat")
        .args(["-b", kafka.bootstrap()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kcat")?;
    child
        .stdin
        .take()
        .context("kcat stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kcat {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
