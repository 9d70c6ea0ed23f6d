//! gRPC on `grpcio`: a throw-away echo server (`grpc/echo_server.py`, every call shape and
//! the common errors) and its client (`grpc/echo_client.py`), for the HTTP/2 and trace tests.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_until, ChildProcess};

const SERVER: &str = include_str!("grpc/echo_server.py");
const CLIENT: &str = include_str!("grpc/echo_client.py");

/// The echo server on `127.0.0.1:<free port>`, stopped on drop.
pub struct GrpcServer {
    _process: ChildProcess,
    port: u16,
}

impl GrpcServer {
    /// Starts the server and waits (20 s at most) until it accepts; panics if it does not.
    pub fn start() -> GrpcServer {
        GrpcServer::start_on(None)
    }

    /// The same, pinned to `cpu` with `taskset` (benchmarks).
    pub fn start_on(cpu: Option<usize>) -> GrpcServer {
        let port = free_port();
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), "python3"]);
                c
            }
            None => Command::new("python3"),
        };
        cmd.args(["-c", SERVER, &port.to_string()])
            .stdout(Stdio::null());
        let process =
            ChildProcess::spawn("grpc echo server", &mut cmd).unwrap_or_else(|e| panic!("{e:#}"));
        let up = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "the gRPC server listens on {port}");
        GrpcServer {
            _process: process,
            port,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs the client against it with `env` (`BIG`: sizes asked of `Big`); panics if a call
    /// did not answer as expected.
    pub fn run_client(&self, env: &[(&str, &str)]) {
        self.run_python(CLIENT, env);
    }

    /// Runs a Python snippet with `PORT` set to the server's port; panics if it fails.
    pub fn run_python(&self, code: &str, env: &[(&str, &str)]) {
        let out = Command::new("python3")
            .args(["-c", code])
            .env("PORT", self.port.to_string())
            .envs(env.iter().copied())
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "the gRPC client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
