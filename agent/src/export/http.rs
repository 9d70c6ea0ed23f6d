//! The agent's own HTTP endpoint: `/metrics`, `/healthz` (alive), `/readyz` (capturing).
//!
//! A deliberately small HTTP/1.x server: one request per connection, bounded request size and
//! time, so that a slow or hostile scraper can never hold the agent up.
//!
//! Optionally protected as kube-rbac-proxy users expect: HTTPS with a certificate and key
//! read at start-up (`--metrics-tls-cert`, `--metrics-tls-key`), and a bearer token that
//! `/metrics` demands (`--metrics-bearer-token-file`, compared in constant time). `/healthz`
//! and `/readyz` stay open for the kubelet's probes: they say nothing about other pods.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::prometheus::Metrics;

const MAX_REQUEST: usize = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint serves.
pub struct State {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Set once every kernel program is attached and the reader runs.
    pub ready: AtomicBool,
    /// With Kubernetes attribution on, ready also needs every watch listed once: until then
    /// series would carry no pod labels. (A later loss of the API server keeps the agent
    /// ready: it serves what it knows and says so in `periscope_kubernetes_connected`.)
    pub cluster: Option<Arc<dyn crate::metadata::ClusterView>>,
    /// The token `/metrics` requests must carry (`Authorization: Bearer …`), if any.
    pub bearer_token: Option<Vec<u8>>,
    /// Turns of the scrapes: [`CONCURRENT_SCRAPES`] encode at once.
    pub scrapes: Arc<tokio::sync::Semaphore>,
}

/// The HTTPS side of the endpoint, built once at start-up.
#[cfg(feature = "tls")]
pub type Tls = tokio_rustls::TlsAcceptor;
#[cfg(not(feature = "tls"))]
pub type Tls = std::convert::Infallible;

/// Reads the certificate chain and key (`--metrics-tls-cert`, `--metrics-tls-key`); an error
/// names the flag and the file.
#[cfg(feature = "tls")]
pub fn tls(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Tls> {
    use crate::export::otlp::tls::{pem_certificates, read};
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    let chain = pem_certificates("--metrics-tls-cert", cert)?;
    let key_pem = read("--metrics-tls-key", key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow::anyhow!(
            "--metrics-tls-key: {}: no PEM private key: {e}",
            key.display()
        )
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS: the ring provider")?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .with_context(|| {
        format!(
            "--metrics-tls-cert and --metrics-tls-key: {} and {} are not a certificate and its key",
            cert.display(),
            key.display()
        )
    })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(not(feature = "tls"))]
pub fn tls(_cert: &std::path::Path, _key: &std::path::Path) -> anyhow::Result<Tls> {
    anyhow::bail!("--metrics-tls-cert needs a build with the `tls` cargo feature")
}

/// The bearer token in `path` (surrounding whitespace trimmed); an empty one is an error.
pub fn bearer_token(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read(path).with_context(|| {
        format!(
            "--metrics-bearer-token-file: cannot read {}",
            path.display()
        )
    })?;
    let token = text.trim_ascii().to_vec();
    if token.is_empty() {
        anyhow::bail!("--metrics-bearer-token-file: {} is empty", path.display());
    }
    Ok(token)
}

/// Whether the request head carries `Authorization: Bearer <token>` (constant-time compare).
fn authorized(request_head: &[u8], token: &[u8]) -> bool {
    let head = String::from_utf8_lossy(request_head);
    head.split("\r\n").any(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        let value = value.trim().as_bytes();
        if !name.trim().eq_ignore_ascii_case("authorization") || value.len() < 7 {
            return false;
        }
        let (scheme, given) = value.split_at(7);
        scheme.eq_ignore_ascii_case(b"bearer ")
            && given.len() == token.len()
            && given
                .iter()
                .zip(token)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

impl State {
    /// Why the agent is not ready, or None when it is.
    fn not_ready(&self) -> Option<&'static [u8]> {
        if !self.ready.load(Ordering::Relaxed) {
            return Some(b"starting: kernel programs not attached yet\n");
        }
        match &self.cluster {
            Some(cluster) if !cluster.is_synced() => {
                Some(b"waiting for the Kubernetes API: pods not listed yet\n")
            }
            _ => None,
        }
    }
}

/// Binds the endpoint; done before any kernel work so that a taken port fails fast.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "--metrics-addr {addr}: the port is already in use (is another Periscope running?)"
            )
        } else {
            anyhow::anyhow!("--metrics-addr {addr}: cannot listen: {e}")
        }
    })
}

/// Serves until the task is dropped; over HTTPS when `tls` is given.
pub async fn serve(listener: TcpListener, state: Arc<State>, tls: Option<Tls>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                log::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let served = async {
                match tls {
                    #[cfg(feature = "tls")]
                    Some(acceptor) => handle(acceptor.accept(stream).await?, state).await,
                    #[cfg(not(feature = "tls"))]
                    Some(never) => match never {},
                    None => handle(stream, state).await,
                }
            };
            match tokio::time::timeout(IO_TIMEOUT, served).await {
                Err(e) => log::debug!("metrics endpoint: client timed out: {e}"),
                Ok(Err(e)) => log::debug!("metrics endpoint: {e}"),
                Ok(Ok(())) => {}
            }
        });
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    state: Arc<State>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"too large\n",
            )
            .await;
        }
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        )
        .await;
    }
    match path {
        "/metrics"
            if state
                .bearer_token
                .as_ref()
                .is_some_and(|t| !authorized(&buf, t)) =>
        {
            log::debug!("metrics endpoint: a /metrics request without the bearer token");
            respond_with(
                &mut stream,
                "401 Unauthorized",
                "text/plain",
                "WWW-Authenticate: Bearer\r\n",
                b"bearer token required\n",
            )
            .await
        }
        "/metrics" => {
            let openmetrics = accepts_openmetrics(&String::from_utf8_lossy(&buf));
            // An HTTP/1.0 client cannot take chunks: its body ends where the connection does.
            let chunked = !line.ends_with("HTTP/1.0");
            stream_metrics(&mut stream, state, openmetrics, chunked).await
        }
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", b"ok\n").await,
        "/readyz" => match state.not_ready() {
            None => respond(&mut stream, "200 OK", "text/plain", b"ready\n").await,
            Some(why) => respond(&mut stream, "503 Service Unavailable", "text/plain", why).await,
        },
        _ => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                b"try /metrics\n",
            )
            .await
        }
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the request's `Accept` header asks for OpenMetrics (Prometheus does; curl and
/// promtool get the classic text format).
fn accepts_openmetrics(request_head: &str) -> bool {
    request_head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    })
}

/// The exposition is sent in chunks of about this many bytes.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks encoded and not yet sent, per scrape: the most a scrape holds (8 MiB).
const CHUNKS_QUEUED: usize = 128;
/// Scrapes encoded at once; more wait their turn (within `IO_TIMEOUT`).
pub const CONCURRENT_SCRAPES: usize = 2;
/// How long, over a whole scrape, the encoder may wait for a client that reads slower than it
/// encodes: the families it is reading cannot take new series meanwhile.
const SLOW_CLIENT_WAIT: Duration = Duration::from_secs(2);

/// Serves `/metrics` without ever holding the whole exposition: a blocking task encodes the
/// registry into chunks of [`CHUNK_BYTES`] that are sent (HTTP/1.1 chunked; for HTTP/1.0 the
/// body ends with the connection) while the next ones are encoded. A client that falls [`CHUNKS_QUEUED`] chunks behind for longer than
/// [`SLOW_CLIENT_WAIT`], or does not take the whole body within `IO_TIMEOUT`, loses its
/// scrape: the body ends without its last chunk (an error for the client), counted in
/// `periscope_scrapes_aborted_total`.
async fn stream_metrics<S: AsyncWrite + Unpin>(
    stream: &mut S,
    state: Arc<State>,
    openmetrics: bool,
    chunked: bool,
) -> std::io::Result<()> {
    let Ok(_turn) = state.scrapes.clone().acquire_owned().await else {
        return Ok(());
    };
    state.metrics.refresh_process_stats();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(CHUNKS_QUEUED);
    let encoding = state.clone();
    let encoder = tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter::new(tx, openmetrics);
        let encoded = prometheus_client::encoding::text::encode(&mut writer, &encoding.registry);
        let sent = encoded.and_then(|()| writer.finish());
        if sent.is_err() {
            encoding.metrics.self_metrics.scrape_aborted();
        }
        sent
    });
    let content_type = if openmetrics {
        OPENMETRICS
    } else {
        PROMETHEUS_TEXT
    };
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{framing}Connection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    while let Some(chunk) = rx.recv().await {
        if chunked {
            let size = format!("{:x}\r\n", chunk.len());
            stream.write_all(size.as_bytes()).await?;
        }
        stream.write_all(chunk.as_bytes()).await?;
        if chunked {
            stream.write_all(b"\r\n").await?;
        }
    }
    if !matches!(encoder.await, Ok(Ok(()))) {
        return Err(std::io::Error::other(
            "the scraper read slower than the exposition was encoded: scrape aborted",
        ));
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").await?;
    }
    stream.shutdown().await
}

/// The encoder's side of a streamed scrape: collects the text into chunks (rewritten to the
/// classic format unless OpenMetrics was asked for) and queues them for the sender.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<String>,
    chunk: String,
    /// `None` for OpenMetrics; the rewriter and the incomplete line it waits on for classic.
    classic: Option<(ClassicText, String)>,
    /// Time waited for the client so far.
    waited: Duration,
}

impl ChunkWriter {
    fn new(tx: tokio::sync::mpsc::Sender<String>, openmetrics: bool) -> Self {
        ChunkWriter {
            tx,
            chunk: String::with_capacity(CHUNK_BYTES + 4096),
            classic: (!openmetrics).then(|| (ClassicText::default(), String::new())),
            waited: Duration::ZERO,
        }
    }

    /// Queues the chunk, waiting for room at most what is left of [`SLOW_CLIENT_WAIT`].
    fn send(&mut self) -> std::fmt::Result {
        let mut chunk =
            std::mem::replace(&mut self.chunk, String::with_capacity(CHUNK_BYTES + 4096));
        loop {
            match self.tx.try_send(chunk) {
                Ok(()) => return Ok(()),
                Err(tokio::sync::mpsc::error::TrySendError::Full(back)) => {
                    if self.waited >= SLOW_CLIENT_WAIT {
                        return Err(std::fmt::Error);
                    }
                    chunk = back;
                    let pause = Duration::from_millis(5);
                    std::thread::sleep(pause);
                    self.waited += pause;
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                    return Err(std::fmt::Error)
                }
            }
        }
    }

    /// Sends what is left.
    fn finish(mut self) -> std::fmt::Result {
        if let Some((classic, line)) = &mut self.classic {
            if !line.is_empty() {
                classic.line(line, &mut self.chunk);
            }
            classic.finish(&mut self.chunk);
        }
        if self.chunk.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

impl std::fmt::Write for ChunkWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        match &mut self.classic {
            None => self.chunk.push_str(s),
            Some((classic, line)) => {
                let mut rest = s;
                while let Some(end) = rest.find('\n') {
                    line.push_str(&rest[..end]);
                    classic.line(line, &mut self.chunk);
                    line.clear();
                    rest = &rest[end + 1..];
                }
                line.push_str(rest);
            }
        }
        if self.chunk.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(())
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4, a line at a time: counter
/// families are named with their `_total` suffix in `# HELP`/`# TYPE`, and `# UNIT` and
/// `# EOF` lines are dropped. (A family's `# HELP` comes before its `# TYPE`: it is held back
/// until the type says whether it is a counter.)
#[derive(Default)]
struct ClassicText {
    help: Option<String>,
}

impl ClassicText {
    fn line(&mut self, line: &str, out: &mut String) {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            return;
        }
        if line.starts_with("# HELP ") {
            self.finish(out);
            self.help = Some(line.to_owned());
            return;
        }
        let counter = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"));
        match (counter, self.help.take()) {
            (Some(name), help) => {
                if let Some(help) = help {
                    let text = help.strip_prefix("# HELP ").unwrap_or_default();
                    let text = text.strip_prefix(name).unwrap_or(text);
                    out.push_str(&format!("# HELP {name}_total{text}\n"));
                }
                out.push_str(&format!("# TYPE {name}_total counter\n"));
            }
            (None, help) => {
                if let Some(help) = help {
                    out.push_str(&help);
                    out.push('\n');
                }
                out.push_str(without_exemplar(line));
                out.push('\n');
            }
        }
    }

    /// Emits a `# HELP` line still held back.
    fn finish(&mut self, out: &mut String) {
        if let Some(help) = self.help.take() {
            out.push_str(&help);
            out.push('\n');
        }
    }
}

/// A sample line without its exemplar (` # {...} value [timestamp]`), which the classic format
/// does not have. Label values may hold ` # `: only a `#` outside quotes starts one.
fn without_exemplar(line: &str) -> &str {
    if line.starts_with('#') {
        return line;
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line.bytes().enumerate() {
        match c {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'#' if !quoted => return line[..i].trim_end_matches(' '),
            _ => {}
        }
    }
    line
}

/// Rewrites a whole OpenMetrics text as Prometheus text format 0.0.4 (see [`ClassicText`]).
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let mut classic = ClassicText::default();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        classic.line(line, &mut out);
    }
    classic.finish(&mut out);
    out
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    respond_with(stream, status, content_type, "", body).await
}

/// `respond` with extra header lines (each ending in CRLF).
async fn respond_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use tokio::io::AsyncReadExt;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Wide {
        name: String,
    }

    /// An endpoint whose registry holds the agent's metrics and `series` counters with
    /// 100-byte labels (about 150 bytes of text each).
    async fn endpoint(series: usize) -> (SocketAddr, Arc<State>) {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let wide = Family::<Wide, Counter>::default();
        registry.register("wide", "Many series", wide.clone());
        for i in 0..series {
            let name = format!("{i:0100}");
            wide.get_or_create(&Wide { name }).inc();
        }
        let state = Arc::new(State {
            registry,
            metrics,
            ready: AtomicBool::new(true),
            cluster: None,
            bearer_token: None,
            scrapes: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_SCRAPES)),
        });
        let listener = bind("127.0.0.1:0".parse().expect("literal"))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(serve(listener, state.clone(), None));
        (addr, state)
    }

    /// The body of a chunked response, or why it is not a whole one.
    fn dechunk(response: &[u8]) -> Result<String, String> {
        let text = String::from_utf8_lossy(response);
        let (head, mut rest) = text.split_once("\r\n\r\n").ok_or("no head")?;
        if !head.contains("Transfer-Encoding: chunked") {
            return Err(format!("not chunked: {head}"));
        }
        let mut body = String::new();
        loop {
            let (size, after) = rest.split_once("\r\n").ok_or("no chunk size")?;
            let size = usize::from_str_radix(size, 16).map_err(|e| e.to_string())?;
            if size == 0 {
                return Ok(body);
            }
            let chunk = after.get(..size).ok_or("chunk cut short")?;
            body.push_str(chunk);
            rest = after[size..]
                .strip_prefix("\r\n")
                .ok_or("no CRLF after a chunk")?;
        }
    }

    async fn scrape(addr: SocketAddr, accept: &str) -> Vec<u8> {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n");
        stream.write_all(request.as_bytes()).await.expect("sends");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("reads");
        response
    }

    /// The streamed exposition, in many chunks, is exactly the registry's text, in both formats.
    #[tokio::test]
    async fn metrics_are_streamed_in_chunks_equal_to_the_whole_text() {
        let (addr, state) = endpoint(20_000).await;
        let om = "Accept: application/openmetrics-text;version=1.0.0\r\n";
        let streamed = dechunk(&scrape(addr, om).await).expect("a whole body");
        let mut whole = String::new();
        prometheus_client::encoding::text::encode(&mut whole, &state.registry).expect("encodes");
        assert!(whole.len() > 20 * CHUNK_BYTES, "{} bytes", whole.len());
        // The process gauges move between the two renderings; every other line must match.
        let stable = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with("periscope_process_") && !l.starts_with("process_"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(stable(&streamed), stable(&whole));
        let classic = dechunk(&scrape(addr, "").await).expect("a whole body");
        assert_eq!(stable(&classic), stable(&openmetrics_to_prometheus(&whole)));
        assert!(classic.contains("# TYPE wide_total counter\nwide_total{name=\"0"));
        // An HTTP/1.0 client gets the same text, ended by the connection's end.
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .expect("sends");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("reads");
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response.split_once("\r\n\r\n").expect("a head");
        assert!(!head.contains("chunked"), "{head}");
        assert_eq!(stable(body), stable(&openmetrics_to_prometheus(&whole)));
        assert_eq!(state.metrics.self_metrics.scrapes_aborted.get(), 0);
    }

    /// A scraper that stops reading loses its scrape after `SLOW_CLIENT_WAIT` instead of making
    /// the agent hold the exposition (or the families' locks) for it; it is counted.
    #[tokio::test]
    async fn a_scraper_that_does_not_read_is_cut_off_and_counted() {
        let (addr, state) = endpoint(300_000).await;
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        stream.write_all(request.as_bytes()).await.expect("sends");
        let deadline = std::time::Instant::now() + IO_TIMEOUT + SLOW_CLIENT_WAIT * 3;
        while state.metrics.self_metrics.scrapes_aborted.get() == 0 {
            assert!(std::time::Instant::now() < deadline, "not cut off");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        assert!(dechunk(&response).is_err(), "the body must not look whole");
        // The endpoint still serves the next scraper.
        assert!(dechunk(&scrape(addr, "").await).is_ok());
    }

    #[test]
    fn counters_get_their_total_suffix_in_classic_text() {
        let om = "# HELP x_bytes Bytes.\n# TYPE x_bytes counter\n# UNIT x_bytes bytes\nx_bytes_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        let classic = openmetrics_to_prometheus(om);
        assert_eq!(
            classic,
            "# HELP x_bytes_total Bytes.\n# TYPE x_bytes_total counter\nx_bytes_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn exemplars_are_left_out_of_classic_text() {
        let om = concat!(
            "# HELP d_seconds D.\n# TYPE d_seconds histogram\n# UNIT d_seconds seconds\n",
            "d_seconds_bucket{route=\"/a # {b}\\\" # x\",le=\"0.1\"} 3 # {trace_id=\"ab\",span_id=\"cd\"} 0.07 1764900000.123\n",
            "d_seconds_bucket{le=\"+Inf\"} 5\n",
            "d_seconds_count 5\n# EOF\n",
        );
        assert_eq!(
            openmetrics_to_prometheus(om),
            concat!(
                "# HELP d_seconds D.\n# TYPE d_seconds histogram\n",
                "d_seconds_bucket{route=\"/a # {b}\\\" # x\",le=\"0.1\"} 3\n",
                "d_seconds_bucket{le=\"+Inf\"} 5\n",
                "d_seconds_count 5\n",
            )
        );
    }

    #[test]
    fn the_bearer_token_must_match_exactly() {
        let head = |auth: &str| format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n\r\n");
        let token = b"s3cret-token";
        assert!(authorized(
            head("Authorization: Bearer s3cret-token").as_bytes(),
            token
        ));
        assert!(authorized(
            head("authorization:  bearer s3cret-token ").as_bytes(),
            token
        ));
        for wrong in [
            "Authorization: Bearer s3cret-toke",
            "Authorization: Bearer s3cret-token2",
            "Authorization: Basic s3cret-token",
            "Authorization: s3cret-token",
            "X-Authorization: Bearer s3cret-token",
            "Authorization: Bearer",
            "",
        ] {
            assert!(!authorized(head(wrong).as_bytes(), token), "{wrong}");
        }
    }

    #[test]
    fn negotiation_follows_accept() {
        assert!(accepts_openmetrics(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n"
        ));
        assert!(!accepts_openmetrics(
            "GET /metrics HTTP/1.1\r\nAccept: */*\r\n"
        ));
        assert!(!accepts_openmetrics("GET /metrics HTTP/1.1\r\n"));
    }
}
