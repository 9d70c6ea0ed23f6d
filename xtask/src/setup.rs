//! `cargo xtask setup`: make a Debian bookworm machine (as root) able to build, run, test,
//! fuzz and benchmark Periscope. Idempotent; each check is cheap, so a complete machine is
//! verified in about a second.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::util::{cmd, probe, run};

/// Debian packages: LLVM for bpf-linker, the servers and tools the tests and benches drive.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "nginx-light",
    "wrk",
    "nghttp2-client",
    "curl",
    "openssl",    // the TLS span export tests make their CA and certificates with it
    "prometheus", // promtool, and the server the dashboard tests query
    "bpftool",
    "iproute2",
    "iptables", // packet drops between network namespaces in the flow tests
    "python3",
    "postgresql",      // initdb, postgres, psql, pgbench for the Postgres tests
    "kcat",            // an independent Kafka client for the Kafka tests
    "skopeo",          // reads the OCI archive `cargo xtask image` writes, in its test
    "umoci",           // unpacks that archive's layer, in the same test
    "musl-tools",      // a C compiler for musl: ring (rustls) in `cargo xtask image`'s static build
    "ca-certificates", // the CA bundle `cargo xtask image` puts in the image
    "gcc",             // tests/tests/tls.rs builds a client with OpenSSL linked in statically
    "libssl-dev",      // … from these headers and static libraries
];

/// Python packages the tests drive real servers and clients with: (pip name, import name).
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("flask", "flask"),
    ("gunicorn", "gunicorn"),
    ("psycopg[binary]", "psycopg"),
    // tests/tests/traces.rs: a connection pool shared by threads.
    ("psycopg-pool", "psycopg_pool"),
    ("confluent-kafka", "confluent_kafka"),
    ("kafka-python", "kafka"),
    // tests/tests/tls.rs and traces.rs: an HTTP(S) client most Python services use (named
    // here rather than left to arrive as another package's dependency).
    ("requests", "requests"),
    // `cargo xtask bench compare`: the in-process instrumentation Periscope is compared to.
    ("prometheus-flask-exporter", "prometheus_flask_exporter"),
    ("opentelemetry-distro", "opentelemetry.distro"),
    ("opentelemetry-sdk", "opentelemetry.sdk.trace"),
    (
        "opentelemetry-instrumentation-flask",
        "opentelemetry.instrumentation.flask",
    ),
    // tests/tests/traces.rs: a real OTLP receiver (gRPC and HTTP/protobuf) decoding with the
    // official OTLP protobuf bindings.
    (
        "opentelemetry-proto",
        "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    ),
    ("grpcio", "grpc"),
    // tests/tests/http2.rs: an ASGI server that accepts `Upgrade: h2c` (nginx does not).
    ("hypercorn", "hypercorn"),
    // deploy/ tests: Helm's own template engine (the Go SDK in a wheel; no helm package exists
    // on Debian bookworm) and Kubernetes' OpenAPI schemas.
    ("helm-python-sdk", "helm_python"),
    ("kubernetes-validate", "kubernetes_validate"),
];

/// npm packages, installed globally: (package, version). The deploy tests validate the
/// Prometheus Operator's custom resources (ServiceMonitor, PodMonitor, PrometheusRule) with
/// these JSON-schema validators generated from the operator's CRDs; no Python or Debian
/// package carries those schemas.
const NPM_PACKAGES: &[(&str, &str)] = &[("@kubernetes-models/prometheus-operator", "6.0.0")];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const TRACEFS: &str = "/sys/kernel/tracing";

fn report(what: &str, state: &str) {
    println!("[setup] {what}: {state}");
}

/// Runs every step; fails on the first one that cannot be satisfied.
pub fn setup() -> anyhow::Result<()> {
    let started = Instant::now();
    if !harness::is_root() {
        bail!(
            "cargo xtask setup must run as root: it installs Debian packages, mounts tracefs, \
             and the agent it prepares loads eBPF programs (try `sudo -E cargo xtask setup`)"
        );
    }
    apt_packages()?;
    rust_nightly()?;
    bpf_linker()?;
    cargo_fuzz()?;
    python_packages()?;
    npm_packages()?;
    tracefs()?;
    println!("[setup] done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    // One dpkg-query for all packages; unknown ones are missing from its output (it exits
    // non-zero for them, which is why its status is not checked).
    let output = std::process::Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package} ${Status}\n")
        .args(APT_PACKAGES)
        .stderr(std::process::Stdio::null())
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    let installed = |pkg: &str| {
        listing.lines().any(|l| {
            l.split_once(' ')
                .is_some_and(|(name, status)| name == pkg && status == "install ok installed")
        })
    };
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    for pkg in APT_PACKAGES {
        report(
            &format!("apt {pkg}"),
            if missing.contains(pkg) {
                "missing"
            } else {
                "ok"
            },
        );
    }
    if missing.is_empty() {
        return Ok(());
    }
    run(cmd("apt-get").arg("update"))?;
    run(cmd("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing))?;
    report(&format!("apt {}", missing.join(" ")), "installed");
    Ok(())
}

fn rust_nightly() -> anyhow::Result<()> {
    let has_nightly = probe("rustup", &["toolchain", "list"])
        .context("rustup is required (https://rustup.rs)")?
        .lines()
        .any(|l| l.starts_with("nightly"));
    if has_nightly {
        report("rustup toolchain nightly", "ok");
    } else {
        report("rustup toolchain nightly", "missing");
        run(cmd("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
        report("rustup toolchain nightly", "installed");
    }
    let has_src = probe(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default()
    .lines()
    .any(|l| l.starts_with("rust-src"));
    if has_src {
        report("rustup nightly rust-src", "ok");
    } else {
        report("rustup nightly rust-src", "missing");
        run(cmd("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
        report("rustup nightly rust-src", "installed");
    }
    Ok(())
}

fn bpf_linker_ok() -> bool {
    probe("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

fn bpf_linker() -> anyhow::Result<()> {
    let what = format!("bpf-linker {BPF_LINKER_VERSION}");
    if bpf_linker_ok() {
        report(&what, "ok");
        return Ok(());
    }
    if wait_for_other_cargo_install("bpf-linker")? && bpf_linker_ok() {
        report(&what, "ok (installed by the other cargo install)");
        return Ok(());
    }
    report(&what, "missing (compiling it takes a few minutes)");
    let install = |locked: bool| {
        let mut c = cmd("cargo");
        c.env("LLVM_PREFIX", LLVM_PREFIX).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ]);
        if locked {
            c.arg("--locked");
        }
        run(&mut c)
    };
    if let Err(e) = install(true) {
        println!("[setup] {e:#}; retrying without --locked");
        install(false)?;
    }
    if !bpf_linker_ok() {
        bail!("bpf-linker --version does not report {BPF_LINKER_VERSION} after installing it (is ~/.cargo/bin on PATH?)");
    }
    report(&what, "installed");
    Ok(())
}

fn cargo_fuzz_ok() -> bool {
    probe("cargo", &["fuzz", "--version"]).is_some()
}

fn cargo_fuzz() -> anyhow::Result<()> {
    if cargo_fuzz_ok() {
        report("cargo-fuzz", "ok");
        return Ok(());
    }
    if wait_for_other_cargo_install("cargo-fuzz")? && cargo_fuzz_ok() {
        report("cargo-fuzz", "ok (installed by the other cargo install)");
        return Ok(());
    }
    report("cargo-fuzz", "missing");
    run(cmd("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    report("cargo-fuzz", "installed");
    Ok(())
}

/// If another `cargo install <krate>` is running (a background job, a parallel setup),
/// waits for it to finish rather than racing it; returns whether there was one.
fn wait_for_other_cargo_install(krate: &str) -> anyhow::Result<bool> {
    let find = || -> Option<u32> {
        let me = std::process::id();
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                if pid == me {
                    return None;
                }
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                let is_cargo = argv
                    .first()
                    .is_some_and(|a| a == b"cargo" || a.ends_with(b"/cargo"));
                let installs_it =
                    argv.iter().any(|a| *a == b"install") && argv.contains(&krate.as_bytes());
                (is_cargo && installs_it).then_some(pid)
            })
    };
    let Some(pid) = find() else {
        return Ok(false);
    };
    report(
        &format!("cargo install {krate}"),
        &format!("already running as pid {pid}; waiting for it"),
    );
    let finished = harness::wait_until(Duration::from_secs(3600), Duration::from_secs(2), || {
        find().is_none()
    });
    if !finished {
        bail!("the other `cargo install {krate}` (pid {pid}) is still running after an hour");
    }
    Ok(true)
}

fn python_packages() -> anyhow::Result<()> {
    let names: Vec<&str> = PYTHON_PACKAGES.iter().map(|(pip, _)| *pip).collect();
    let what = format!("python3 {}", names.join(" "));
    let imports: Vec<&str> = PYTHON_PACKAGES.iter().map(|(_, module)| *module).collect();
    let check = format!("import {}", imports.join(", "));
    if probe("python3", &["-c", &check]).is_some() {
        report(&what, "ok");
        return Ok(());
    }
    report(&what, "missing");
    if probe("python3", &["-m", "pip", "--version"]).is_none() {
        report("python3 pip", "missing");
        run(cmd("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends", "python3-pip"]))?;
    }
    let pip = |extra: &[&str]| {
        run(cmd("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
            ])
            .args(extra)
            .args(&names))
    };
    // Debian's own python3 refuses pip installs into its site-packages (PEP 668) unless told.
    if let Err(e) = pip(&[]) {
        println!("[setup] {e:#}; retrying with --break-system-packages");
        pip(&["--break-system-packages"])?;
    }
    if probe("python3", &["-c", &check]).is_none() {
        bail!("python3 still cannot `{check}` after pip install");
    }
    report(&what, "installed");
    Ok(())
}

fn npm_packages() -> anyhow::Result<()> {
    if probe("npm", &["--version"]).is_none() {
        report("nodejs npm", "missing");
        run(cmd("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends", "nodejs", "npm"]))?;
    }
    let root = probe("npm", &["root", "-g"]).context("npm root -g")?;
    let root = Path::new(root.trim());
    for (package, version) in NPM_PACKAGES {
        let what = format!("npm {package}@{version}");
        let manifest = root.join(package).join("package.json");
        let installed = std::fs::read_to_string(&manifest)
            .is_ok_and(|m| m.contains(&format!("\"version\": \"{version}\"")));
        if installed {
            report(&what, "ok");
            continue;
        }
        report(&what, "missing");
        run(cmd("npm").args(["install", "-g", "--silent", &format!("{package}@{version}")]))?;
        report(&what, "installed");
    }
    Ok(())
}

fn tracefs() -> anyhow::Result<()> {
    let what = format!("tracefs at {TRACEFS}");
    if Path::new(TRACEFS).join("events").exists() {
        report(&what, "ok");
        return Ok(());
    }
    report(&what, "not mounted");
    std::fs::create_dir_all(TRACEFS).with_context(|| format!("creating {TRACEFS}"))?;
    run(cmd("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))
        .context("mounting tracefs (the agent attaches to syscall tracepoints through it)")?;
    report(&what, "mounted");
    Ok(())
}
