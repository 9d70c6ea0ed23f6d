//! A real OTLP receiver ([`Receiver`]): the official OTLP protobuf bindings behind grpcio and
//! an HTTP server (`otlp_receiver.py`, whose docstring lists what it writes), writing what it
//! receives as JSON lines for the tests to read back.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::tls::Pki;
use crate::{free_port, wait_until, Agent, AgentOptions, Metrics, PyServer, TempDir};

/// The receiver's script.
pub const OTLP_RECEIVER: &str = include_str!("otlp_receiver.py");

/// How long [`Receiver::agrees_with`] waits for the agent's count to match.
const WAIT: Duration = Duration::from_secs(20);

/// The receiver, its two OTLP ports and the files it writes spans and metric data points to.
/// Restartable on the same ports. Dropping it stops it.
#[derive(Debug)]
pub struct Receiver {
    process: Option<PyServer>,
    http_port: u16,
    grpc_port: u16,
    out: PathBuf,
    /// TLS: the server certificate and key, and the client CA when gRPC is mutual TLS.
    tls: Vec<String>,
    _dir: TempDir,
}

impl Receiver {
    /// A plain-text receiver on two free ports.
    pub fn start() -> Receiver {
        Receiver::start_tls(Vec::new())
    }

    /// Both ports serve TLS with `pki`'s server certificate; gRPC also demands a client
    /// certificate signed by its CA when `mutual`.
    pub fn start_with_pki(pki: &Pki, mutual: bool) -> Receiver {
        let mut tls = vec![pki.path("server.pem"), pki.path("server.key")];
        if mutual {
            tls.push(pki.path("ca.pem"));
        }
        Receiver::start_tls(tls)
    }

    fn start_tls(tls: Vec<String>) -> Receiver {
        let dir = TempDir::new("otlp").unwrap();
        let mut r = Receiver {
            process: None,
            http_port: free_port(),
            grpc_port: free_port(),
            out: dir.path().join("spans.jsonl"),
            tls,
            _dir: dir,
        };
        r.restart();
        r
    }

    /// Starts it (again) on the same ports and files; panics if it does not come up.
    pub fn restart(&mut self) {
        let mut args = vec![
            self.http_port.to_string(),
            self.grpc_port.to_string(),
            self.out.display().to_string(),
        ];
        args.extend(self.tls.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.process =
            Some(PyServer::launch(OTLP_RECEIVER, &args).unwrap_or_else(|e| panic!("{e:#}")));
    }

    /// Stops it; what it wrote stays readable.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// The OTLP/HTTP port (127.0.0.1).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The OTLP/gRPC port (127.0.0.1).
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    /// The spans written so far; a last line still being written is left for the next call.
    pub fn spans(&self) -> Vec<Value> {
        json_lines(&self.out)
    }

    /// The metric data points written so far, one per line (the fields are listed in
    /// `otlp_receiver.py`), in the order received. Only whole requests: the points of a request
    /// still being written are left for the next call, so the last request seen is a whole
    /// export.
    pub fn metric_points(&self) -> Vec<Value> {
        let mut path = self.out.clone().into_os_string();
        path.push(".metrics.jsonl");
        let points = json_lines(std::path::Path::new(&path));
        let mut seen = std::collections::BTreeMap::<u64, u64>::new();
        for p in &points {
            *seen.entry(p["request"].as_u64().unwrap_or(0)).or_default() += 1;
        }
        points
            .into_iter()
            .filter(|p| {
                p["request_points"].as_u64()
                    == seen.get(&p["request"].as_u64().unwrap_or(0)).copied()
            })
            .collect()
    }

    /// Waits until the agent's count of exported spans is the number of spans received (the
    /// agent counts a batch when the answer to it arrives, a moment after the receiver wrote
    /// it), then returns the agent's metrics.
    pub fn agrees_with(&self, agent: &Agent) -> Metrics {
        let agree = || {
            agent.metrics().sum("periscope_spans_exported_total", &[]) == self.spans().len() as f64
        };
        let agreed = wait_until(WAIT, Duration::from_millis(100), agree);
        let m = agent.metrics();
        assert!(
            agreed,
            "exported {} spans, the receiver has {}\n{}",
            m.sum("periscope_spans_exported_total", &[]),
            self.spans().len(),
            m.text()
        );
        m
    }

    /// An agent exporting to this receiver over `protocol` (`grpc` or `http/protobuf`).
    pub fn agent(&self, protocol: &str) -> Agent {
        self.agent_at(protocol, "http://127.0.0.1", &[])
    }

    /// An agent exporting to `base` (scheme and host) on the protocol's port
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_EXPORTER_OTLP_PROTOCOL`), with more environment
    /// variables.
    pub fn agent_at(&self, protocol: &str, base: &str, env: &[(&str, String)]) -> Agent {
        let port = if protocol == "grpc" {
            self.grpc_port
        } else {
            self.http_port
        };
        let mut all = vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("{base}:{port}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()),
        ];
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        Agent::start_with(AgentOptions {
            env: all,
            ..AgentOptions::default()
        })
        .unwrap()
    }
}

/// The JSON lines of `path` so far; a last line still being written is left for the next call.
fn json_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("the receiver writes JSON lines"))
        .collect()
}
