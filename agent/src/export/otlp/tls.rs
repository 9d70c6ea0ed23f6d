//! TLS to the collector, for `https://` endpoints: rustls with the ring provider, trusting the
//! system's roots plus an optional CA file, with an optional client certificate (mutual TLS).
//!
//! Everything is read and checked once at start-up, so that a missing or malformed PEM file
//! stops the agent with the setting's name and path instead of failing every export. Without
//! the `tls` cargo feature (the fuzz and VM test builds, which must not need a C compiler for
//! ring) the connector is plain TCP and an `https://` endpoint is refused at start-up.

use std::path::PathBuf;
#[cfg(feature = "tls")]
use std::{path::Path, sync::Arc};

#[cfg(feature = "tls")]
use anyhow::Context;
#[cfg(feature = "tls")]
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use hyper_util::client::legacy::connect::HttpConnector;

use super::Protocol;

/// The TLS settings as configured. Each file is `(setting, path)`: the setting names the
/// variable and flag it came from, for errors.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Extra trusted CA certificates (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub certificate: Option<(&'static str, PathBuf)>,
    /// The client certificate chain for mutual TLS.
    pub client_certificate: Option<(&'static str, PathBuf)>,
    /// The client certificate's private key.
    pub client_key: Option<(&'static str, PathBuf)>,
    /// gRPC to an endpoint without a scheme goes in plaintext (`OTEL_EXPORTER_OTLP_INSECURE`).
    pub insecure: bool,
}

/// The checked TLS client configuration an `https://` endpoint is reached with.
#[cfg(feature = "tls")]
pub type ClientTls = Arc<rustls::ClientConfig>;
/// Without the `tls` feature there is none to be had.
#[cfg(not(feature = "tls"))]
pub type ClientTls = std::convert::Infallible;

/// What the exporter's HTTP client connects with: TLS for `https://`, plain TCP for `http://`.
#[cfg(feature = "tls")]
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
#[cfg(not(feature = "tls"))]
pub type Connector = HttpConnector;

/// Builds the client configuration for an `https://` endpoint.
#[cfg(feature = "tls")]
pub fn client_config(options: &TlsOptions) -> anyhow::Result<ClientTls> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable files in the system store are not fatal: the CA file may be all that's needed.
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        log::warn!("reading the system's trusted certificates: {e}");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some((setting, path)) = &options.certificate {
        for cert in pem_certificates(setting, path)? {
            roots.add(cert).with_context(|| {
                format!("{setting}: {}: not a usable CA certificate", path.display())
            })?;
        }
    }
    if roots.is_empty() {
        anyhow::bail!(
            "an https:// OTLP endpoint needs trusted CA certificates: the system has none \
             (install ca-certificates) and OTEL_EXPORTER_OTLP_CERTIFICATE is not set"
        );
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS: the ring provider")?
    .with_root_certificates(roots);
    let config = match (&options.client_certificate, &options.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some((cert_setting, cert_path)), Some((key_setting, key_path))) => {
            let chain = pem_certificates(cert_setting, cert_path)?;
            let bytes = read(key_setting, key_path)?;
            let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{key_setting}: {}: no PEM private key: {e}",
                    key_path.display()
                )
            })?;
            builder.with_client_auth_cert(chain, key).with_context(|| {
                format!(
                    "{cert_setting} and {key_setting}: {} and {} are not a certificate and its \
                     key",
                    cert_path.display(),
                    key_path.display()
                )
            })?
        }
        (Some((setting, _)), None) | (None, Some((setting, _))) => anyhow::bail!(
            "{setting} is set but not its pair: mutual TLS needs both \
             OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY"
        ),
    };
    Ok(Arc::new(config))
}

#[cfg(not(feature = "tls"))]
pub fn client_config(_options: &TlsOptions) -> anyhow::Result<ClientTls> {
    anyhow::bail!("https:// OTLP endpoints need a build with the `tls` cargo feature")
}

/// The file, or an error naming the setting and the path.
#[cfg(feature = "tls")]
pub(crate) fn read(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{setting}: cannot read {}", path.display()))
}

/// Every certificate in a PEM file; none is an error.
#[cfg(feature = "tls")]
pub(crate) fn pem_certificates(
    setting: &str,
    path: &Path,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{setting}: {}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "{setting}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

/// The connector: `tls` for `https://` URLs, plain TCP for `http://` ones. gRPC offers only
/// `h2` in ALPN; OTLP/HTTP offers nothing and so speaks HTTP/1.1.
#[cfg(feature = "tls")]
pub fn connector(tls: Option<&ClientTls>, protocol: Protocol) -> Connector {
    let Some(config) = tls else {
        return plain();
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(rustls::ClientConfig::clone(config))
        .https_or_http();
    match protocol {
        Protocol::Grpc => builder.enable_http2().build(),
        Protocol::HttpProtobuf => builder.enable_http1().build(),
    }
}

#[cfg(not(feature = "tls"))]
pub fn connector(tls: Option<&ClientTls>, _protocol: Protocol) -> Connector {
    match tls {
        Some(never) => match *never {},
        None => HttpConnector::new(),
    }
}

/// The connector of an `http://` endpoint, which has no TLS configuration: one that never
/// does TLS, so that both kinds of endpoint share one client type.
#[cfg(feature = "tls")]
fn plain() -> Connector {
    let never_used = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(never_used)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build()
}

/// The TLS error somewhere in a failed request's chain of causes, if that is why it failed.
pub fn tls_cause(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    #[cfg(feature = "tls")]
    {
        // tokio-rustls reports handshake failures as an io::Error wrapping the rustls::Error,
        // which hyper-rustls may wrap in another io::Error, and io::Error::source skips the
        // wrapped error itself: look inside each io::Error as well as at its source.
        let mut todo = vec![error];
        while let Some(e) = todo.pop() {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Some(tls.to_string());
            }
            if let Some(inner) = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                todo.push(inner);
            }
            todo.extend(e.source());
        }
    }
    #[cfg(not(feature = "tls"))]
    let _ = error;
    None
}
