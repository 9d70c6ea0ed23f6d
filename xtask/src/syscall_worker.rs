//! `cargo xtask bench-worker <workload> <iterations>` (hidden): the tight syscall loops that
//! `cargo xtask bench syscall` times, each in its own process so the bench can pin it to a
//! CPU with `taskset`.
//!
//! The worker prints one line of `key=value` pairs ([`WorkerReport`]) that the bench parses.
//! Everything is std: the loops call `read`/`write` on std handles, whose code lives in the
//! precompiled (optimised) std, so a debug build of xtask adds only a few ns of loop overhead,
//! the same in every mode.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use anyhow::{bail, ensure, Context};

/// A syscall loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// `write` + `read` of 1 byte on a pipe: an fd Periscope does not track.
    Pipe,
    /// `getppid`: a syscall Periscope ignores.
    Getppid,
    /// An HTTP/1.1 request and response over a loopback TCP connection: 4 syscalls on
    /// sockets Periscope tracks and decodes.
    TcpHttp,
    /// The same with the messages `bench http`'s wrk and nginx exchange (a 160-byte response
    /// head), so that the per-syscall cost of scanning real heads is measured.
    TcpNginx,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Pipe,
        Workload::Getppid,
        Workload::TcpHttp,
        Workload::TcpNginx,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Pipe => "pipe",
            Workload::Getppid => "getppid",
            Workload::TcpHttp => "tcp-http",
            Workload::TcpNginx => "tcp-nginx",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
/// What wrk sends nginx in `bench http`, and nginx's answer (`return 200 "ok"`), verbatim.
const WRK_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n";
const NGINX_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
    Date: Sat, 05 Dec 2026 21:21:50 GMT\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
    Connection: keep-alive\r\n\r\nok";

/// What one worker run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerReport {
    /// Wall-clock ns of the loop divided by `syscalls`.
    pub ns_per_syscall: f64,
    /// Syscalls the loop made (short reads included, so the average stays honest).
    pub syscalls: u64,
    /// HTTP exchanges completed (tcp-http only).
    pub requests: u64,
    /// The listening port the requests went to (tcp-http only), to pick the agent's series.
    pub server_port: Option<u16>,
}

impl fmt::Display for WorkerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ns_per_syscall={} syscalls={} requests={}",
            self.ns_per_syscall, self.syscalls, self.requests
        )?;
        if let Some(port) = self.server_port {
            write!(f, " server_port={port}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for WorkerReport {
    type Err = anyhow::Error;

    fn from_str(line: &str) -> anyhow::Result<WorkerReport> {
        let mut report = WorkerReport {
            ns_per_syscall: f64::NAN,
            syscalls: 0,
            requests: 0,
            server_port: None,
        };
        for pair in line.split_whitespace() {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("worker output {line:?}: {pair:?} is not key=value"))?;
            let bad = || format!("worker output {line:?}: bad {key} {value:?}");
            match key {
                "ns_per_syscall" => report.ns_per_syscall = value.parse().with_context(bad)?,
                "syscalls" => report.syscalls = value.parse().with_context(bad)?,
                "requests" => report.requests = value.parse().with_context(bad)?,
                "server_port" => report.server_port = Some(value.parse().with_context(bad)?),
                _ => bail!("worker output {line:?}: unknown key {key:?}"),
            }
        }
        ensure!(
            report.ns_per_syscall.is_finite() && report.syscalls > 0,
            "worker output {line:?} has no measurement"
        );
        Ok(report)
    }
}

/// Runs `workload` for `iterations` and prints its [`WorkerReport`] on stdout.
pub fn worker(workload: Workload, iterations: u64) -> anyhow::Result<()> {
    ensure!(iterations > 0, "iterations must be at least 1");
    let report = match workload {
        Workload::Pipe => pipe(iterations)?,
        Workload::Getppid => getppid(iterations),
        Workload::TcpHttp => tcp_http(iterations, REQUEST, RESPONSE)?,
        Workload::TcpNginx => tcp_http(iterations, WRK_REQUEST, NGINX_RESPONSE)?,
    };
    println!("{report}");
    Ok(())
}

fn per_syscall(started: Instant, syscalls: u64) -> f64 {
    started.elapsed().as_nanos() as f64 / syscalls as f64
}

fn pipe(iterations: u64) -> anyhow::Result<WorkerReport> {
    let (mut reader, mut writer) = std::io::pipe().context("creating a pipe")?;
    let mut byte = [0u8; 1];
    let started = Instant::now();
    for _ in 0..iterations {
        ensure!(writer.write(&byte).context("write to the pipe")? == 1);
        ensure!(reader.read(&mut byte).context("read from the pipe")? == 1);
    }
    Ok(WorkerReport {
        ns_per_syscall: per_syscall(started, 2 * iterations),
        syscalls: 2 * iterations,
        requests: 0,
        server_port: None,
    })
}

fn getppid(iterations: u64) -> WorkerReport {
    let mut sum = 0u64;
    let started = Instant::now();
    for _ in 0..iterations {
        // glibc's getppid() is the bare syscall (no caching), so this is
        // `syscall(SYS_getppid)` without `unsafe`; summing keeps the call from being elided.
        sum = sum.wrapping_add(u64::from(std::os::unix::process::parent_id()));
    }
    let ns = per_syscall(started, iterations);
    std::hint::black_box(sum);
    WorkerReport {
        ns_per_syscall: ns,
        syscalls: iterations,
        requests: 0,
        server_port: None,
    }
}

/// One thread, blocking sockets: each write lands in the peer's receive buffer on loopback
/// before the call returns, so the other end's read never waits.
fn tcp_http(iterations: u64, request: &[u8], response: &[u8]) -> anyhow::Result<WorkerReport> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).context("connecting")?;
    let (mut server, _) = listener.accept().context("accepting")?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let mut buf = [0u8; 256];
    let mut syscalls = 0u64;
    let started = Instant::now();
    for _ in 0..iterations {
        syscalls += write_whole(&mut client, request)?;
        syscalls += read_whole(&mut server, &mut buf[..request.len()])?;
        syscalls += write_whole(&mut server, response)?;
        syscalls += read_whole(&mut client, &mut buf[..response.len()])?;
    }
    Ok(WorkerReport {
        ns_per_syscall: per_syscall(started, syscalls),
        syscalls,
        requests: iterations,
        server_port: Some(port),
    })
}

/// `write_all` that counts its syscalls (one, unless the socket buffer is full).
fn write_whole(stream: &mut TcpStream, mut bytes: &[u8]) -> anyhow::Result<u64> {
    let mut calls = 0;
    while !bytes.is_empty() {
        let n = stream.write(bytes).context("socket write")?;
        ensure!(n > 0, "socket write returned 0");
        bytes = &bytes[n..];
        calls += 1;
    }
    Ok(calls)
}

/// `read_exact` that counts its syscalls (one, unless the peer's write arrived split).
fn read_whole(stream: &mut TcpStream, mut buf: &mut [u8]) -> anyhow::Result<u64> {
    let mut calls = 0;
    while !buf.is_empty() {
        let n = stream.read(buf).context("socket read")?;
        ensure!(n > 0, "the peer closed the connection");
        buf = &mut buf[n..];
        calls += 1;
    }
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips() {
        let report = WorkerReport {
            ns_per_syscall: 123.5,
            syscalls: 8,
            requests: 2,
            server_port: Some(8080),
        };
        assert_eq!(report.to_string().parse::<WorkerReport>().unwrap(), report);
        assert!("ns_per_syscall=1".parse::<WorkerReport>().is_err());
        assert!("ns_per_syscall=x syscalls=1"
            .parse::<WorkerReport>()
            .is_err());
    }

    #[test]
    fn workloads_run() {
        for (report, syscalls) in [(pipe(10).unwrap(), 20), (getppid(10), 10)] {
            assert_eq!(report.syscalls, syscalls);
            assert!(report.ns_per_syscall > 0.0);
        }
        for (request, response) in [(REQUEST, RESPONSE), (WRK_REQUEST, NGINX_RESPONSE)] {
            let tcp = tcp_http(10, request, response).unwrap();
            assert_eq!((tcp.syscalls, tcp.requests), (40, 10));
            assert!(tcp.server_port.is_some());
        }
    }
}
