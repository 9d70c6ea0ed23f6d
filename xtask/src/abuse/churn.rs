//! `cargo xtask abuse churn`: a cluster whose pods and routes come and go for minutes.
//!
//! The agent runs in cluster mode against the fake API server (`harness::FakeKubeApi`). Every
//! `--every-ms` a pod is created — a real cgroup named the way kubelet names it, the Pod object
//! applied — a curl inside it fetches `--routes-per-pod` routes of its own from nginx, and the
//! pod is deleted again (object and cgroup). Meanwhile a steady pod fetches `/ok` in every
//! round. Its requests must be counted exactly; the churned pods' series must appear while
//! they live and be gone `--series-grace` after their deletion, the churned routes'
//! server series `--series-ttl` after their last request; series bytes, kernel map entries
//! and RSS must come back to where they were.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use harness::{FakeKubeApi, Metrics, TestCgroup};
use serde_json::json;

use super::{slope, wait_for, Env, Report};
use crate::bench::ok_nginx;

const NODE: &str = "node-churn";
const NS: &str = "churn";
const CLIENT_METRIC: &str = "http_client_request_duration_seconds_count";
const SERVER_METRIC: &str = "http_server_request_duration_seconds_count";
/// The worst case the README states for default settings.
const RSS_BOUND_BYTES: u64 = 256 * 1024 * 1024;

/// Options of `cargo xtask abuse churn`.
#[derive(Debug, clap::Parser)]
#[command(name = "churn")]
pub struct ChurnArgs {
    /// Minutes of churn.
    #[arg(long, default_value_t = 3)]
    minutes: u64,
    /// A pod is created, used and deleted every this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    every_ms: u64,
    /// Distinct routes each churned pod fetches (a client and a server series each).
    #[arg(long, default_value_t = 10)]
    routes_per_pod: u32,
    /// Requests of the steady pod per round.
    #[arg(long, default_value_t = 5)]
    steady_per_round: u32,
    /// The agent's `--series-grace` (how long a deleted pod's series stay).
    #[arg(long, default_value_t = 10)]
    grace_seconds: u64,
    /// The agent's `--series-ttl` (how long a route seen no more keeps its series).
    #[arg(long, default_value_t = 30)]
    ttl_seconds: u64,
}

impl ChurnArgs {
    fn command(&self) -> String {
        format!(
            "cargo xtask abuse churn --minutes {} --every-ms {} --routes-per-pod {} \
             --steady-per-round {} --grace-seconds {} --ttl-seconds {}",
            self.minutes,
            self.every_ms,
            self.routes_per_pod,
            self.steady_per_round,
            self.grace_seconds,
            self.ttl_seconds
        )
    }
}

/// A running pod on [`NODE`] with one container whose id is `container_id`, and an address of
/// its own (never the loopback address the test traffic goes to: a pod that owned it would be
/// the peer of every request, and its name would churn the steady pod's client series).
fn pod(n: u64, name: &str, uid: &str, container_id: &str) -> String {
    let ip = format!("10.244.{}.{}", n / 250, n % 250 + 1);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": uid, "resourceVersion": "1",
                     "creationTimestamp": "2026-11-01T00:00:00Z", "labels": {}},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "example/app:1"}]},
        "status": {
            "phase": "Running", "qosClass": "Burstable", "hostIP": "127.0.0.1",
            "podIP": ip, "podIPs": [{"ip": ip}],
            "containerStatuses": [{
                "name": "app", "ready": true, "restartCount": 0, "image": "example/app:1",
                "imageID": "", "containerID": format!("containerd://{container_id}"),
                "started": true, "state": {"running": {"startedAt": "2026-11-01T00:00:01Z"}}
            }]
        }
    })
    .to_string()
}

/// A pod's uid and 64-hex container id, from its number.
fn ids(n: u64) -> (String, String) {
    (
        format!("00000000-0000-4000-8000-{n:012x}"),
        format!("{n:064x}"),
    )
}

/// Runs one curl inside `cgroup` fetching every URL in `urls`; returns how many answered ok.
fn curl_in(cgroup: &TestCgroup, urls: &[String]) -> anyhow::Result<usize> {
    let procs = cgroup.path().join("cgroup.procs");
    let mut script = format!("echo $$ > {} && exec curl -s", procs.display());
    for url in urls {
        script.push_str(&format!(" -w '\\n' {url}"));
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .context("running curl in a pod's cgroup")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l == "ok")
        .count())
}

/// Series of `metric` whose `k8s_pod_name` starts with `prefix`.
fn pod_series(m: &Metrics, metric: &str, prefix: &str) -> usize {
    m.samples(metric)
        .iter()
        .filter(|s| {
            s.labels
                .get("k8s_pod_name")
                .is_some_and(|p| p.starts_with(prefix))
        })
        .count()
}

pub(crate) fn churn(env: &Env, args: &ChurnArgs) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "Cluster churn: pods and routes come and go",
        &args.command(),
    );
    let api = FakeKubeApi::start();
    let nginx = ok_nginx(None, "")?;
    let (steady_uid, steady_cid) = ids(1);
    let steady = TestCgroup::v2_systemd("burstable", &steady_uid, &steady_cid)?;
    api.apply(&pod(1, "steady", &steady_uid, &steady_cid));
    let agent = env.agent(&[
        "--kubernetes".into(),
        "on".into(),
        "--kube-api-url".into(),
        api.api_url(),
        "--node-name".into(),
        NODE.into(),
        "--series-grace".into(),
        format!("{}s", args.grace_seconds),
        "--series-ttl".into(),
        format!("{}s", args.ttl_seconds),
    ])?;
    let pid = agent.pid();
    let ok_url = nginx.url("/ok");
    let ok = [("http_route", "/ok"), ("k8s_pod_name", "steady")];

    // The baseline: the steady pod's series exist, nothing churned yet.
    let mut steady_answered = curl_in(&steady, std::slice::from_ref(&ok_url))?;
    // (The map gauges are set by a poller: wait for them too.)
    let (before, _) = wait_for(&agent, Duration::from_secs(15), |m| {
        m.sum(CLIENT_METRIC, &ok) >= 1.0 && m.sum("periscope_kernel_map_entries", &[]) > 0.0
    })?;
    let series_memory_before = before.sum("periscope_series_memory_bytes", &[]);
    let map_entries_before = before.sum("periscope_kernel_map_entries", &[]);
    let rss_start = harness::rss_bytes(pid)?;

    let started = Instant::now();
    let until = started + Duration::from_secs(args.minutes * 60);
    let (mut pods, mut churn_answered, mut churn_seen) = (0u64, 0usize, 0usize);
    let mut rss = Vec::new();
    let mut last_sample = Instant::now();
    while Instant::now() < until {
        let round = Instant::now();
        pods += 1;
        let (uid, cid) = ids(1000 + pods);
        let name = format!("churn-{pods}");
        let cgroup = TestCgroup::v2_systemd("besteffort", &uid, &cid)?;
        api.apply(&pod(1000 + pods, &name, &uid, &cid));
        let urls: Vec<String> = (0..args.routes_per_pod)
            .map(|r| nginx.url(&format!("/churn/p{pods}r{r}")))
            .collect();
        churn_answered += curl_in(&cgroup, &urls)?;
        let steady_urls = vec![ok_url.clone(); args.steady_per_round as usize];
        steady_answered += curl_in(&steady, &steady_urls)?;
        api.delete("Pod", NS, &name);
        drop(cgroup);
        if last_sample.elapsed() >= Duration::from_secs(10) {
            last_sample = Instant::now();
            let m = agent.try_metrics()?;
            churn_seen = churn_seen.max(pod_series(&m, CLIENT_METRIC, "churn-"));
            rss.push((
                started.elapsed().as_secs_f64() / 3600.0,
                harness::rss_bytes(pid)? as f64 / 1e6,
            ));
        }
        let rest = Duration::from_millis(args.every_ms).saturating_sub(round.elapsed());
        std::thread::sleep(rest);
    }
    let churn_seconds = started.elapsed().as_secs_f64();

    // The steady pod's count, before its series idles out with the rest.
    let n = steady_answered as f64;
    let (counted, _) = wait_for(&agent, Duration::from_secs(15), |m| {
        m.sum(CLIENT_METRIC, &ok) >= n && m.sum(SERVER_METRIC, &[("http_route", "/ok")]) >= n
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let counted = agent.try_metrics().unwrap_or(counted);
    let steady_counted = counted.sum(CLIENT_METRIC, &ok);
    let steady_served = counted.sum(SERVER_METRIC, &[("http_route", "/ok")]);
    // `/ok` client series named otherwise than the steady pod (none if attribution is right).
    let misnamed: Vec<String> = counted
        .samples(CLIENT_METRIC)
        .iter()
        .filter(|s| s.labels.get("http_route").is_some_and(|r| r == "/ok"))
        .filter(|s| s.labels.get("k8s_pod_name").is_none_or(|p| p != "steady"))
        .map(|s| {
            let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            format!(
                "{} requests as pod `{}`, service `{}`",
                s.value,
                label("k8s_pod_name"),
                label("service_name")
            )
        })
        .collect();

    // After the churn: every churned series goes within grace or ttl (plus a sweep period).
    let settle = Duration::from_secs(args.grace_seconds.max(args.ttl_seconds) + 30);
    let settling = Instant::now();
    let (after, settled) = wait_for(&agent, settle, |m| {
        pod_series(m, CLIENT_METRIC, "churn-") == 0
            && m.samples(SERVER_METRIC).iter().all(|s| {
                !s.labels
                    .get("http_route")
                    .is_some_and(|r| r.starts_with("/churn"))
            })
    })?;
    let settled_in = settling.elapsed().as_secs_f64();
    let end = agent.try_metrics()?;
    let series_memory_after = after.sum("periscope_series_memory_bytes", &[]);
    let map_entries_after = end.sum("periscope_kernel_map_entries", &[]);
    let expired = end.sum("periscope_series_expired_total", &[]);
    let rss_end = harness::rss_bytes(pid)?;
    let rss_peak = harness::peak_rss_bytes(pid)?;
    let rss_slope = slope(&rss[rss.len() / 2..]);
    drop(agent);

    let mb = |b: u64| b as f64 / 1e6;
    report.para(&format!(
        "For {churn_seconds:.0} s the agent runs in cluster mode against the fake API server \
         (`--series-grace {}s --series-ttl {}s`, every other setting at its default). Every \
         {} ms a pod is created (a kubelet-named cgroup v2 and its Pod object), a curl in it \
         fetches {} routes of its own from nginx, and the pod is deleted (object and cgroup): \
         {pods} pods, {} distinct routes, {churn_answered} answered. A steady pod fetches \
         `/ok` {} times per round.",
        args.grace_seconds,
        args.ttl_seconds,
        args.every_ms,
        args.routes_per_pod,
        pods * u64::from(args.routes_per_pod),
        args.steady_per_round
    ));
    report.para(&format!(
        "| figure | value |\n|---|---:|\n\
         | churned pods' client series at most, while churning | {churn_seen} |\n\
         | series removed (`periscope_series_expired_total`) | {expired} |\n\
         | all churned series gone after the churn | {} |\n\
         | `periscope_series_memory_bytes` before / after | {series_memory_before} / {series_memory_after} |\n\
         | kernel map entries before / after | {map_entries_before} / {map_entries_after} |\n\
         | agent RSS start / end / peak (`VmHWM`) (MB) | {:.1} / {:.1} / {:.1} |\n\
         | RSS slope over the second half (MB/hour) | {rss_slope:+.1} |\n\
         | steady pod: answered / counted as client / as server | {steady_answered} / {steady_counted} / {steady_served} |\n\
         | steady pod's `/ok` client requests under other names | {} |",
        if settled {
            format!("in {settled_in:.1} s")
        } else {
            "no".into()
        },
        mb(rss_start),
        mb(rss_end),
        mb(rss_peak),
        if misnamed.is_empty() {
            "none".to_owned()
        } else {
            misnamed.join("; ")
        }
    ));
    report.check(
        "churned pods' series are attributed while they live (> 0 seen)",
        format!("{churn_seen}"),
        churn_seen > 0,
    );
    report.check(
        &format!(
            "every churned series gone within max(grace, ttl) + 30 s ({} s)",
            settle.as_secs()
        ),
        if settled {
            format!("{settled_in:.1} s")
        } else {
            "some remain".into()
        },
        settled,
    );
    report.check(
        "series bytes back to the baseline (+ 64 kB)",
        format!("{series_memory_before} → {series_memory_after}"),
        series_memory_after <= series_memory_before + 65_536.0,
    );
    report.check(
        "kernel map entries back to the baseline (+ 64)",
        format!("{map_entries_before} → {map_entries_after}"),
        map_entries_after <= map_entries_before + 64.0,
    );
    report.check(
        &format!(
            "agent peak RSS (`VmHWM`) ≤ {} MiB, end ≤ start + 16 MB",
            RSS_BOUND_BYTES >> 20
        ),
        format!(
            "peak {:.1} MB, {:.1} → {:.1} MB",
            mb(rss_peak),
            mb(rss_start),
            mb(rss_end)
        ),
        rss_peak <= RSS_BOUND_BYTES && rss_end <= rss_start + 16_000_000,
    );
    report.check(
        "the steady pod's requests counted exactly, as client and as server",
        format!("{steady_counted} / {steady_served} of {steady_answered}"),
        steady_counted == n && steady_served == n,
    );
    Ok(report)
}
