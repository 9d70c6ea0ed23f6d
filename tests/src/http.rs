//! Tiny HTTP helpers: a std-only HTTP/1.0 GET, raw TCP exchanges and a curl wrapper.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A response read by [`http_get`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code from the status line.
    pub status: u16,
    /// Header lines as (name, value), in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if the server used chunked encoding.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET <path>` over a fresh HTTP/1.0 connection to `addr`, reading until the server closes.
/// `timeout` bounds the connect and each read. Deliberately minimal (no redirects, no TLS):
/// it is what the harness uses to poll the agent's `/readyz` and scrape `/metrics`.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: periscope-harness\r\n\r\n"
    )?;
    // Read until the server closes or, when it announced a Content-Length, until the body
    // is complete (so a server that keeps the connection open does not cost a timeout).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the response to GET http://{addr}{path}"))
            }
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if response_complete(&raw) {
            break;
        }
    }
    parse_response(&raw).with_context(|| format!("GET http://{addr}{path}"))
}

/// Whether `raw` holds a whole response with a Content-Length body.
fn response_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let length = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    length.is_some_and(|len| raw.len() >= split + 4 + len)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!(
            "response has no end of headers: {:?}",
            String::from_utf8_lossy(raw)
        );
    };
    let head = std::str::from_utf8(&raw[..split]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut response = HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    };
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        response.body = dechunk(&response.body)?;
    }
    Ok(response)
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size line")?;
        let size_field = std::str::from_utf8(&data[..eol])?;
        let size_hex = size_field.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_field:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Connects to `127.0.0.1:port`, writes `bytes` as-is (e.g. several pipelined requests) and
/// returns everything read until the server closes or `read_until_close_or_timeout` has
/// elapsed since the write, whichever comes first. Panics if it cannot connect or write.
pub fn tcp_raw(port: u16, bytes: &[u8], read_until_close_or_timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("tcp_raw: connecting to 127.0.0.1:{port}: {e}"));
    stream
        .write_all(bytes)
        .unwrap_or_else(|e| panic!("tcp_raw: writing to 127.0.0.1:{port}: {e}"));
    let deadline = Instant::now() + read_until_close_or_timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // A zero read timeout means "block forever" to std, so never pass zero.
        let left = (deadline - now).max(Duration::from_millis(1));
        if stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // WouldBlock/TimedOut (the deadline) or a reset: return what we have.
            Err(_) => break,
        }
    }
    out
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    crate::wait_until(timeout, Duration::from_millis(25), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// Waits until `127.0.0.1:port` accepts or `process` exits (returning its status, so a
/// server that failed to start is reported at once, not after the whole timeout).
pub(crate) fn wait_for_port_or_exit(
    process: &mut crate::ChildProcess,
    port: u16,
    timeout: Duration,
) -> Result<(), Option<std::process::ExitStatus>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut exited = None;
    let ready = crate::wait_until(timeout, Duration::from_millis(25), || {
        exited = process.try_wait();
        exited.is_some() || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
    match (ready, exited) {
        (_, Some(status)) => Err(Some(status)),
        (true, None) => Ok(()),
        (false, None) => Err(None),
    }
}

/// Runs `curl -sS <args>` and returns its stdout (lossy UTF-8). Fails with curl's stderr if
/// it exits non-zero; add `-f` to also fail on HTTP errors, or `-w '%{http_code}'` to see them.
pub fn curl(args: &[&str]) -> anyhow::Result<String> {
    let program = if Path::new("/usr/bin/curl").exists() {
        "/usr/bin/curl"
    } else {
        "curl"
    };
    let output = Command::new(program)
        .arg("-sS")
        .args(args)
        .output()
        .with_context(|| {
            format!("running curl {args:?} (is curl installed? `cargo xtask setup`)")
        })?;
    if !output.status.success() {
        bail!(
            "curl {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_response() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "abcde");
    }
}
