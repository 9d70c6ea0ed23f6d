//! Python servers: any script that listens on the port given as `argv[1]`, and a ready-made
//! HTTP/1.1 test server with endpoints for the shapes the decoders must handle.

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::bail;

use crate::http::wait_for_port_or_exit;
use crate::{free_port, read_tail, ChildProcess, TempDir};

/// The script behind [`PyServer::http_test_server`]: `http.server.ThreadingHTTPServer`
/// speaking HTTP/1.1 with keep-alive on `127.0.0.1:argv[1]` (or `argv[2]:argv[1]`).
///
/// - `GET /status/<code>`: that status, a small body (none for 204 and 304).
/// - `GET /sleep/<ms>`: sleeps, then 200.
/// - `GET /chunked/<n>[?delay_ms=<ms>]`: 200 with `n` chunks, each sent by its own
///   `write` + `flush` (so each is a separate `write(2)`), optionally pausing between them.
/// - `GET /big/<bytes>`: 200 with a body of that many bytes.
/// - `GET /` and anything else: 200 `ok\n` (404 for `/notfound…`).
/// - `POST`/`PUT`/`PATCH`/`DELETE` anything: 200, body = the request body's length
///   (Content-Length or chunked request bodies).
/// - `HEAD` for any `GET` path: the same headers, no body.
///
/// Every non-chunked response carries Content-Length. Request logging is off.
pub const HTTP_TEST_SERVER: &str = r#"
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "periscope-test/1"
    sys_version = ""

    def log_message(self, *args):
        pass

    def reply(self, code, body=b"", content_type="text/plain", head=False):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        if code != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def route(self, head):
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        query = parse_qs(url.query)
        try:
            if parts[0] == "status" and len(parts) == 2:
                code = int(parts[1])
                body = b"" if code in (204, 304) else ("status %d\n" % code).encode()
                return self.reply(code, body, head=head)
            if parts[0] == "sleep" and len(parts) == 2:
                time.sleep(int(parts[1]) / 1000.0)
                return self.reply(200, b"slept\n", head=head)
            if parts[0] == "big" and len(parts) == 2:
                return self.reply(200, b"x" * int(parts[1]), head=head)
            if parts[0] == "chunked" and len(parts) == 2:
                n = int(parts[1])
                delay = int(query.get("delay_ms", ["0"])[0]) / 1000.0
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if head:
                    return
                self.wfile.flush()
                for i in range(n):
                    if delay and i:
                        time.sleep(delay)
                    data = ("chunk %d\n" % i).encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                return
        except ValueError:
            return self.reply(400, b"bad number\n", head=head)
        if parts[0].startswith("notfound"):
            return self.reply(404, b"not found\n", head=head)
        return self.reply(200, b"ok\n", head=head)

    def do_GET(self):
        self.route(head=False)

    def do_HEAD(self):
        self.route(head=True)

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                total += len(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0") or "0")
        return len(self.rfile.read(length)) if length else 0

    def do_POST(self):
        n = self.read_body()
        self.reply(200, ("%d\n" % n).encode())

    do_PUT = do_POST
    do_PATCH = do_POST
    do_DELETE = do_POST


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
Server((host, int(sys.argv[1])), Handler).serve_forever()
"#;

/// A Python server (`python3 <script> <port> <args…>`) on `127.0.0.1:<free port>`; its
/// output goes to a log file. Dropping it stops it (and anything it forked).
#[derive(Debug)]
pub struct PyServer {
    process: ChildProcess,
    port: u16,
    dir: TempDir,
}

impl PyServer {
    /// Runs `script`, which must listen on `127.0.0.1:int(sys.argv[1])`, and waits until the
    /// port accepts. Panics if it exits or does not listen within 15 s.
    pub fn start(script: &str) -> PyServer {
        PyServer::launch(script, &[]).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The ready-made HTTP/1.1 test server, see [`HTTP_TEST_SERVER`].
    pub fn http_test_server() -> PyServer {
        PyServer::start(HTTP_TEST_SERVER)
    }

    /// Like [`PyServer::start`], with extra arguments after the port, returning errors.
    pub fn launch(script: &str, args: &[&str]) -> anyhow::Result<PyServer> {
        PyServer::launch_in(script, args, None)
    }

    /// Like [`PyServer::launch`], in a cgroup from its first instruction (as a container's
    /// process is): a shell moves itself into `cgroup` and execs python.
    pub fn launch_in_cgroup(
        script: &str,
        args: &[&str],
        cgroup: &crate::TestCgroup,
    ) -> anyhow::Result<PyServer> {
        PyServer::launch_in(script, args, Some(cgroup.path()))
    }

    fn launch_in(
        script: &str,
        args: &[&str],
        cgroup: Option<&std::path::Path>,
    ) -> anyhow::Result<PyServer> {
        let dir = TempDir::new("py")?;
        let script_path = dir.path().join("server.py");
        std::fs::write(&script_path, script)?;
        let log_path = dir.path().join("server.log");
        let log = File::create(&log_path)?;
        let port = free_port();
        let mut cmd = match cgroup {
            Some(dir) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(r#"echo $$ > "$0/cgroup.procs" && exec python3 "$@""#)
                    .arg(dir);
                c
            }
            None => Command::new("python3"),
        };
        cmd.arg("-u")
            .arg(&script_path)
            .arg(port.to_string())
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut process = ChildProcess::spawn("python3", &mut cmd)?;
        match wait_for_port_or_exit(&mut process, port, Duration::from_secs(15)) {
            Ok(()) => {}
            Err(Some(status)) => bail!(
                "the python server exited ({status}); its output:\n{}",
                read_tail(&log_path, 8192)
            ),
            Err(None) => bail!(
                "the python server did not listen on 127.0.0.1:{port} within 15 s; its output:\n{}",
                read_tail(&log_path, 8192)
            ),
        }
        Ok(PyServer { process, port, dir })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The server's output so far (the last 64 KiB).
    pub fn log(&self) -> String {
        read_tail(&self.dir.path().join("server.log"), 64 * 1024)
    }
}
