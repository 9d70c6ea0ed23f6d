//! A fake Kubernetes API server: `tests/fixtures/kube_apiserver.py`, a real HTTP server that
//! speaks the list/watch protocol, driven through its control port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::{free_port, PyServer};

/// The fake API server's script (see its docstring for the protocol and controls).
pub const KUBE_APISERVER: &str = include_str!("../fixtures/kube_apiserver.py");

/// A running fake API server; stopped when dropped.
#[derive(Debug)]
pub struct FakeKubeApi {
    control: PyServer,
    api_port: u16,
}

impl FakeKubeApi {
    /// Starts it with the API port open. Panics if it cannot start.
    pub fn start() -> FakeKubeApi {
        FakeKubeApi::launch(false).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts it with the API port closed (connections refused) until [`up`](Self::up).
    pub fn start_down() -> FakeKubeApi {
        FakeKubeApi::launch(true).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn launch(down: bool) -> anyhow::Result<FakeKubeApi> {
        let api_port = free_port();
        let port_arg = api_port.to_string();
        let mut args = vec![port_arg.as_str()];
        if down {
            args.push("--down");
        }
        let control = PyServer::launch(KUBE_APISERVER, &args)?;
        Ok(FakeKubeApi { control, api_port })
    }

    /// `http://127.0.0.1:<api port>`, the URL to give a client.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Creates or replaces an object (JSON text of a whole object with `kind` and
    /// `metadata.name`); returns the resourceVersion it got.
    pub fn apply(&self, object: &str) -> u64 {
        self.apply_inner(object, false)
    }

    /// Like [`apply`](Self::apply), but no watch hears of it: only a relist can see it.
    pub fn apply_silently(&self, object: &str) -> u64 {
        self.apply_inner(object, true)
    }

    fn apply_inner(&self, object: &str, silent: bool) -> u64 {
        let body = format!("{{\"object\": {object}, \"silent\": {silent}}}");
        let reply = self.control("/apply", &body);
        reply
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("apply answered {reply:?}, not a resourceVersion"))
    }

    /// Deletes an object (`kind` as in the object, e.g. `Pod`).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let body = format!(
            "{{\"kind\": \"{kind}\", \"namespace\": \"{namespace}\", \"name\": \"{name}\"}}"
        );
        self.control("/delete", &body);
    }

    /// Like [`delete`](Self::delete), but no watch hears of it.
    pub fn delete_silently(&self, kind: &str, namespace: &str, name: &str) {
        let body = format!(
            "{{\"kind\": \"{kind}\", \"namespace\": \"{namespace}\", \"name\": \"{name}\", \"silent\": true}}"
        );
        self.control("/delete", &body);
    }

    /// Sends `line` verbatim (plus a newline) on every open watch of `plural` (`pods`, …),
    /// e.g. a line that is not JSON, or an event whose object has the wrong shape.
    pub fn raw_event(&self, plural: &str, line: &str) {
        let body = format!(
            "{{\"plural\": \"{plural}\", \"line\": {}}}",
            json_string(line)
        );
        self.control("/raw", &body);
    }

    /// Compacts the history and ends every open watch with a `410 Gone` ERROR event.
    pub fn expire(&self) {
        self.control("/expire", "{}");
    }

    /// Answers watches from a compacted resourceVersion with HTTP 410 (`true`) instead of
    /// an ERROR event in a 200 response (`false`, the default).
    pub fn gone_as_http(&self, http: bool) {
        let mode = if http { "http" } else { "event" };
        self.control("/gone_mode", &format!("{{\"mode\": \"{mode}\"}}"));
    }

    /// `true`: every open watch and every new one goes silent for good (connection held,
    /// no bytes). `false`: new watches work again.
    pub fn stall(&self, on: bool) {
        self.control("/stall", &format!("{{\"on\": {on}}}"));
    }

    /// Bookmark interval on watches that allow them (0 disables them; default 0.5 s).
    pub fn bookmark_interval(&self, seconds: f64) {
        self.control("/bookmarks", &format!("{{\"interval\": {seconds}}}"));
    }

    /// Closes the API port and every open API connection.
    pub fn down(&self) {
        self.control("/down", "{}");
    }

    /// Opens the API port again (same port).
    pub fn up(&self) {
        self.control("/up", "{}");
    }

    /// Every API request so far, one line each: `GET <path>?<query> accept=<meta|full>`.
    pub fn requests(&self) -> Vec<String> {
        self.control_get("/requests")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Number of open, live (not stalled) watches of `plural`.
    pub fn watchers(&self, plural: &str) -> usize {
        self.control_get("/watchers")
            .lines()
            .find_map(|line| {
                let (p, n) = line.split_once(' ')?;
                (p == plural).then(|| n.parse().ok()).flatten()
            })
            .unwrap_or(0)
    }

    /// The server's output so far (its errors, if any).
    pub fn log(&self) -> String {
        self.control.log()
    }

    fn control(&self, path: &str, body: &str) -> String {
        self.request("POST", path, body)
            .unwrap_or_else(|e| panic!("fake API server control {path}: {e:#}\n{}", self.log()))
    }

    fn control_get(&self, path: &str) -> String {
        self.request("GET", path, "")
            .unwrap_or_else(|e| panic!("fake API server control {path}: {e:#}\n{}", self.log()))
    }

    /// One HTTP/1.0 request to the control port; the body of a 200, else an error.
    fn request(&self, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.control.port()));
        let timeout = Duration::from_secs(10);
        let mut stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut raw = String::new();
        stream
            .read_to_string(&mut raw)
            .context("reading the reply")?;
        let (head, reply) = raw
            .split_once("\r\n\r\n")
            .with_context(|| format!("no header end in {raw:?}"))?;
        let status = head.split(' ').nth(1).unwrap_or("");
        if status != "200" {
            bail!("HTTP {status}: {reply}");
        }
        Ok(reply.to_owned())
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(super::json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }
}
