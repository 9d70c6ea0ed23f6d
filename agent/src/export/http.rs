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
                    Some(acceptor) => handle(acceptor.accept(stream).await?, &state).await,
                    #[cfg(not(feature = "tls"))]
                    Some(never) => match never {},
                    None => handle(stream, &state).await,
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
    state: &State,
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
            state.metrics.refresh_process_stats();
            let mut body = String::with_capacity(64 * 1024);
            if prometheus_client::encoding::text::encode(&mut body, &state.registry).is_err() {
                return respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/plain",
                    b"encoding failed\n",
                )
                .await;
            }
            let head = String::from_utf8_lossy(&buf);
            if accepts_openmetrics(&head) {
                respond(&mut stream, "200 OK", OPENMETRICS, body.as_bytes()).await
            } else {
                let body = openmetrics_to_prometheus(&body);
                respond(&mut stream, "200 OK", PROMETHEUS_TEXT, body.as_bytes()).await
            }
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

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4: counter families are named with
/// their `_total` suffix in `# HELP`/`# TYPE`, and `# UNIT` and `# EOF` lines are dropped.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
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
