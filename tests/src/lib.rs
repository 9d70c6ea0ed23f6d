//! Harness for Periscope's end-to-end tests.
//!
//! Everything here is blocking `std` code so tests read top to bottom: start real servers
//! ([`Nginx`], [`PyServer`], a Kubernetes API server: [`FakeKubeApi`], an OTLP collector:
//! [`Receiver`]), start the agent ([`Agent`]), drive traffic ([`curl`], [`wrk`], [`tcp_raw`])
//! and assert on the scraped exposition ([`Metrics`], [`wait_for_metric`]) or on what the
//! collector received.
//!
//! Every process started here is stopped when its handle is dropped (also when a test
//! panics), together with any children it forked, and every temporary directory is removed
//! (set `PERISCOPE_KEEP_TMP=1` to keep them for a post-mortem).
//!
//! End-to-end tests share one kernel, so run them one at a time: `cargo xtask test` passes
//! `--test-threads=1`. The harness' own self-test is safe to run in parallel.

mod agent;
mod cgroup;
mod grpc;
mod http;
mod kafka;
mod kube_api;
mod metrics;
mod netns;
mod nginx;
mod otlp;
mod postgres;
mod process;
mod prometheus;
mod promtool;
mod pyserver;
mod scratch_cgroup;
pub mod tls;
mod wrk;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

pub use agent::{
    agent_binary, start_agent_mid_client, wait_for_metric, Agent, AgentOptions, EarlyClient,
};
pub use cgroup::TestCgroup;
pub use grpc::GrpcServer;
pub use http::{curl, http_get, tcp_raw, wait_for_port, HttpResponse};
pub use kafka::{kcat, python_kafka_client, MockKafka};
pub use kube_api::{FakeKubeApi, KUBE_APISERVER};
pub use metrics::{Metrics, Sample};
pub use netns::NetnsPair;
pub use nginx::{Nginx, NginxOptions};
pub use otlp::{Receiver, OTLP_RECEIVER};
pub use postgres::PgServer;
pub use process::{
    cpu_time, descendants, is_root, output_ok, peak_rss_bytes, rss_bytes, ChildProcess,
};
pub use prometheus::{url_encode, Prometheus};
pub use promtool::promtool_check_metrics;
pub use pyserver::{PyServer, HTTP_TEST_SERVER};
pub use scratch_cgroup::{cgroup2_mount, ScratchCgroup};
pub use wrk::{parse_h2load, parse_wrk, run_h2load, run_wrk, wrk, WrkOptions, WrkResult};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness crate lives one level below the workspace root")
        .to_path_buf()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it back, close).
///
/// Another process may grab it before the caller binds it; that race is acceptable in tests.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work on any machine that runs these tests")
}

/// Calls `condition` every `poll_every` until it returns `true` (→ `true`) or `timeout` has
/// elapsed (→ `false`). The condition is always evaluated at least once, and once more at
/// the deadline, so a slow poll interval never loses the last chance.
pub fn wait_until(
    timeout: Duration,
    poll_every: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(poll_every.min(deadline - now));
    }
}

/// A uniquely named directory under the system temp dir, removed (recursively) on drop
/// unless `PERISCOPE_KEEP_TMP=1`.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/periscope-<label>-<pid>-<n>-<nanos>`.
    pub fn new(label: &str) -> anyhow::Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "periscope-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating temp dir {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var("PERISCOPE_KEEP_TMP").is_ok_and(|v| v == "1") {
            eprintln!("harness: keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Reads a (log) file for an error message: lossy UTF-8, at most the last `max` bytes.
pub(crate) fn read_tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            let prefix = if start > 0 { "[…]" } else { "" };
            format!("{prefix}{}", String::from_utf8_lossy(&bytes[start..]))
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
