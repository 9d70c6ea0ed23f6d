use super::*;

fn none() -> TlsOptions {
    TlsOptions::default()
}

#[test]
fn endpoints_resolve_per_protocol() {
    let s = TraceSettings::new(
        Some("http://c:4318/"),
        None,
        Protocol::HttpProtobuf,
        None,
        false,
        &none(),
    )
    .expect("valid");
    assert_eq!(s.url.expect("set").to_string(), "http://c:4318/v1/traces");
    let s = TraceSettings::new(
        Some("http://c:4317"),
        None,
        Protocol::Grpc,
        None,
        false,
        &none(),
    )
    .expect("valid");
    assert_eq!(
        s.url.expect("set").to_string(),
        format!("http://c:4317{GRPC_PATH}")
    );
    let s = TraceSettings::new(
        Some("http://c:4318"),
        Some("http://d:9/x"),
        Protocol::HttpProtobuf,
        Some("a=b,api-key=x%20y"),
        false,
        &none(),
    )
    .expect("valid");
    assert_eq!(s.url.expect("set").to_string(), "http://d:9/x");
    assert_eq!(s.headers.len(), 2);
    assert_eq!(s.headers[1].1, "x y");
    assert!(
        !TraceSettings::new(None, None, Protocol::Grpc, None, false, &none())
            .expect("valid")
            .enabled()
    );
    assert!(
        TraceSettings::new(None, None, Protocol::Grpc, Some("novalue"), false, &none()).is_err()
    );
}

/// A self-signed certificate and its key (`openssl req -x509 -newkey ec`), good as a CA
/// file and as a client pair alike.
#[cfg(feature = "tls")]
fn testdata(file: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/export/otlp/testdata"
    ))
    .join(file)
}

#[cfg(feature = "tls")]
fn tls_options(ca: Option<&str>, cert: Option<&str>, key: Option<&str>) -> TlsOptions {
    let setting = |name, file: Option<&str>| file.map(|f| (name, testdata(f)));
    TlsOptions {
        certificate: setting("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
        client_certificate: setting("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert),
        client_key: setting("OTEL_EXPORTER_OTLP_CLIENT_KEY", key),
        insecure: false,
    }
}

fn settings(endpoint: &str, protocol: Protocol, tls: &TlsOptions) -> anyhow::Result<String> {
    TraceSettings::new(Some(endpoint), None, protocol, None, false, tls)
        .map(|s| format!("{} tls={}", s.url.expect("set"), s.tls.is_some()))
}

#[cfg(feature = "tls")]
#[test]
fn https_endpoints_use_tls() {
    let files = tls_options(Some("client.pem"), Some("client.pem"), Some("client.key"));
    for options in [none(), files] {
        assert_eq!(
            settings("https://c:4318", Protocol::HttpProtobuf, &options).expect("valid"),
            "https://c:4318/v1/traces tls=true"
        );
        assert_eq!(
            settings("https://c:4317", Protocol::Grpc, &options).expect("valid"),
            format!("https://c:4317{GRPC_PATH} tls=true")
        );
        assert_eq!(
            settings("http://c:4317", Protocol::Grpc, &options).expect("valid"),
            format!("http://c:4317{GRPC_PATH} tls=false")
        );
    }
    // No scheme: gRPC is TLS unless insecure; OTLP/HTTP has no such form.
    assert_eq!(
        settings("c:4317", Protocol::Grpc, &none()).expect("valid"),
        format!("https://c:4317{GRPC_PATH} tls=true")
    );
    let insecure = TlsOptions {
        insecure: true,
        ..none()
    };
    assert_eq!(
        settings("c:4317", Protocol::Grpc, &insecure).expect("valid"),
        format!("http://c:4317{GRPC_PATH} tls=false")
    );
    assert!(settings("https://c:4317", Protocol::Grpc, &insecure)
        .expect("valid")
        .ends_with("tls=true"));
    assert!(settings("c:4318", Protocol::HttpProtobuf, &none()).is_err());
    assert!(settings("ftp://c:4318", Protocol::HttpProtobuf, &none()).is_err());
}

#[cfg(feature = "tls")]
#[test]
fn bad_tls_files_name_the_setting_and_path() {
    let error = |options: TlsOptions| {
        format!(
            "{:#}",
            settings("https://c", Protocol::Grpc, &options).expect_err("a bad file")
        )
    };
    let missing = error(tls_options(Some("nope.pem"), None, None));
    assert!(
        missing.contains("OTEL_EXPORTER_OTLP_CERTIFICATE")
            && missing.contains(&testdata("nope.pem").display().to_string())
            && missing.contains("No such file"),
        "{missing}"
    );
    // A key is not a certificate, and a certificate is not a key.
    let not_cert = error(tls_options(Some("client.key"), None, None));
    assert!(
        not_cert.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && not_cert.contains("client.key"),
        "{not_cert}"
    );
    let not_key = error(tls_options(None, Some("client.pem"), Some("client.pem")));
    assert!(
        not_key.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY") && not_key.contains("client.pem"),
        "{not_key}"
    );
    let not_pem = error(tls_options(None, Some("../mod.rs"), Some("client.key")));
    assert!(
        not_pem.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE") && not_pem.contains("mod.rs"),
        "{not_pem}"
    );
    let half = error(tls_options(None, Some("client.pem"), None));
    assert!(
        half.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE is set but not its pair"),
        "{half}"
    );
    // Plain http:// never reads the files.
    assert!(settings(
        "http://c",
        Protocol::Grpc,
        &tls_options(Some("nope.pem"), None, None)
    )
    .is_ok());
}

#[cfg(not(feature = "tls"))]
#[test]
fn https_needs_the_tls_feature() {
    assert!(settings("https://c", Protocol::Grpc, &none()).is_err());
}

#[cfg(feature = "tls")]
#[test]
fn tls_failures_are_recognised() {
    let handshake = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
    );
    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] std::io::Error);
    // As hyper-rustls passes it on: tokio-rustls' io::Error in an io::Error of its own.
    let outer = Outer(std::io::Error::other(handshake));
    assert_eq!(
        tls::tls_cause(&outer).as_deref(),
        Some("invalid peer certificate: UnknownIssuer")
    );
    assert_eq!(
        causes(&outer),
        "client error (Connect): invalid peer certificate: UnknownIssuer"
    );
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert_eq!(tls::tls_cause(&refused), None);
}

#[test]
fn partial_success_is_read() {
    // partial_success { rejected_spans: 3, error_message: "x" }
    assert_eq!(
        rejected_spans(&[0x0a, 0x05, 0x08, 0x03, 0x12, 0x01, b'x']),
        3
    );
    assert_eq!(rejected_spans(&[]), 0);
    assert_eq!(rejected_spans(&[0x0a, 0x09]), 0);
}

/// Settings for an HTTP/protobuf collector, nothing else set.
fn http_settings() -> TraceSettings {
    TraceSettings::new(
        Some("http://c:4318"),
        None,
        Protocol::HttpProtobuf,
        None,
        false,
        &none(),
    )
    .unwrap()
}

#[test]
fn the_export_timeout_is_taken_and_zero_is_refused() {
    let s = http_settings();
    assert_eq!(s.timeout, Duration::from_secs(10));
    let s = s.with_timeout_ms(Some(2500)).unwrap();
    assert_eq!(s.timeout, Duration::from_millis(2500));
    let Err(err) = s.with_timeout_ms(Some(0)) else {
        panic!("a timeout of 0 is refused");
    };
    assert!(
        err.to_string().contains("OTEL_EXPORTER_OTLP_TIMEOUT"),
        "{err}"
    );
}

/// Retries wait what the collector asked (capped), else the backoff with jitter: between half
/// and all of it.
#[test]
fn retries_honour_retry_after_and_jitter_the_backoff() {
    let b = Duration::from_millis(400);
    assert_eq!(
        retry_delay(b, Some(Duration::from_secs(2)), 7),
        Duration::from_secs(2)
    );
    assert_eq!(
        retry_delay(b, Some(Duration::from_secs(3600)), 7),
        MAX_RETRY_AFTER
    );
    let delays: Vec<Duration> = (0..64u64)
        .map(|i| retry_delay(b, None, i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    assert!(delays.iter().all(|d| *d >= b / 2 && *d < b), "{delays:?}");
    assert!(delays.iter().any(|d| *d != delays[0]), "jittered");
}

#[test]
fn compression_is_gzip_or_none() {
    let base = http_settings;
    assert!(base().with_compression(Some("gzip")).unwrap().gzip);
    assert!(!base().with_compression(Some("none")).unwrap().gzip);
    assert!(!base().with_compression(None).unwrap().gzip);
    let Err(err) = base().with_compression(Some("zstd")) else {
        panic!("zstd is refused");
    };
    assert!(
        err.to_string().contains("OTEL_EXPORTER_OTLP_COMPRESSION"),
        "{err}"
    );
    // What is sent inflates back to the encoded request.
    let body = vec![7u8; 10_000];
    let mut out = Vec::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(&gzip(&body)[..])
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, body);
}

/// A sent span becomes the exemplar of the series its exchange was counted in, with the ids
/// it was sent with; a span that was not sampled names nothing.
#[test]
fn a_sent_span_is_its_series_exemplar_and_an_unsampled_one_is_not() {
    use super::super::context::{IdGenerator, Sampler};
    use super::super::convert::WallClock;
    use crate::exchange::testkit::{http, server};
    use crate::export::prometheus::histogram::Histogram;

    static BOUNDS: [f64; 2] = [0.1, 1.0];
    for (sampler, named) in [(Sampler::AlwaysOn, true), (Sampler::AlwaysOff, false)] {
        let mut stitcher = Stitcher::new(Converter {
            clock: WallClock::measure(),
            sampler,
            ids: IdGenerator::new(),
        });
        let histogram = Histogram::new(&BOUNDS);
        let exchange = server(http("GET", 200, "/a", (0, 0)));
        histogram.observe(exchange.duration_seconds());
        let target = ExemplarTarget::new(&histogram, exchange.duration_seconds());
        let mut out = Vec::new();
        stitcher.offer(&exchange, Some(target), &mut out);
        stitcher.release(Instant::now(), true, &mut out);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("d", "D", histogram.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        match out.first() {
            Some((_, span)) if named => {
                let want = format!(
                    "trace_id=\"{}\",span_id=\"{}\"",
                    hex(&span.trace_id),
                    hex(&span.span_id)
                );
                assert!(text.contains(&want), "{text}");
            }
            None if !named => assert!(!text.contains(" # {"), "{text}"),
            other => panic!("sampled {named}: {other:?}"),
        }
        // An unsampled span's target waits out its time.
        assert_eq!(stitcher.exemplars.len(), usize::from(!named));
        stitcher.release(Instant::now() + EXEMPLAR_TARGET_TTL, true, &mut out);
        assert!(stitcher.exemplars.is_empty());
    }
}

/// `grpc-status-details-bin` (unpadded base64, as gRPC sends it): a `google.rpc.Status` whose
/// second detail is a `RetryInfo` of 2.5 s (the first, a `DebugInfo`, is skipped).
#[test]
fn retry_info_in_the_status_details_says_how_long_to_wait() {
    let trailer = b"CAgSCXRocm90dGxlZBosCih0eXBlLmdvb2dsZWFwaXMuY29tL2dvb2dsZS5ycGMuRGVidWdJbmZvEgAaNgoodHlwZS5nb29nbGVhcGlzLmNvbS9nb29nbGUucnBjLlJldHJ5SW5mbxIKCggIAhCAyrXuAQ";
    let status = base64_decode(trailer).expect("base64");
    assert_eq!(retry_info_delay(&status), Some(Duration::from_millis(2500)));
    // Without a RetryInfo, or garbled: nothing.
    assert_eq!(retry_info_delay(&status[..20]), None);
    assert_eq!(retry_info_delay(b"\x08\x08"), None);
    assert_eq!(base64_decode(b"not base64!"), None);
    assert_eq!(base64_decode(b"aGk="), Some(b"hi".to_vec()));
    // Random bytes never panic.
    let mut rng = crate::protocol::testkit::Xorshift(11);
    for _ in 0..2000 {
        let n = (rng.u64() % 64) as usize;
        let bytes: Vec<u8> = (0..n).map(|_| rng.u64() as u8).collect();
        let _ = retry_info_delay(&bytes);
    }
}
