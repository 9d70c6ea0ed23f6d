//! End-to-end: per-cgroup syscall statistics. A workload process joins a fresh cgroup v2
//! directory, makes an exact list of syscalls (some failing, some sleeping) and exits; the
//! agent's counts for that cgroup must match exactly. Run as root, one test at a time
//! (`cargo xtask test` does both).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use harness::{wait_for_metric, wait_until, Agent, Metrics, ScratchCgroup};

const COUNT: &str = "syscall_duration_seconds_count";
const SUM: &str = "syscall_duration_seconds_sum";
const BUCKET: &str = "syscall_duration_seconds_bucket";
const ERRORS: &str = "syscall_errors_total";
const DROPPED: &str = "periscope_series_dropped_total";
/// The agent reads the kernel every 2 s.
const WAIT: Duration = Duration::from_secs(15);
const CONTAINER_ID: &str = "5eed0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";

/// Runs the workload in `cgroup` with `ops` and waits for it to succeed.
fn workload(cgroup: &ScratchCgroup, ops: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_syscall-workload"))
        .arg(cgroup.dir())
        .args(ops)
        .output()
        .expect("starting syscall-workload");
    assert!(
        output.status.success(),
        "syscall-workload {ops:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `syscall` label values the agent exports for `cgroup_path`.
fn syscalls_of(m: &Metrics, path: &str) -> BTreeSet<String> {
    m.matching(COUNT, &[("cgroup_path", path)])
        .filter_map(|s| s.labels.get("syscall").cloned())
        .collect()
}

fn labels<'a>(path: &'a str, syscall: &'a str) -> [(&'a str, &'a str); 2] {
    [("cgroup_path", path), ("syscall", syscall)]
}

fn errors(m: &Metrics, path: &str, syscall: &str, error_type: &str) -> f64 {
    m.sum(
        ERRORS,
        &[
            ("cgroup_path", path),
            ("syscall", syscall),
            ("error_type", error_type),
        ],
    )
}

/// Cumulative count of the bucket whose upper bound is `le` seconds (compared as numbers).
fn bucket(m: &Metrics, path: &str, syscall: &str, le: f64) -> f64 {
    let matching: Vec<f64> = m
        .matching(BUCKET, &labels(path, syscall))
        .filter(|s| {
            s.labels
                .get("le")
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|bound| (bound - le).abs() <= le * 1e-9)
        })
        .map(|s| s.value)
        .collect();
    assert_eq!(matching.len(), 1, "one bucket le={le} for {syscall}");
    matching[0]
}

#[test]
fn counts_errors_and_latency_of_one_cgroups_syscalls_exactly() {
    // The default entry hook: each selected syscall's own `syscalls:sys_enter_<name>`.
    counts_exactly(
        None,
        "entry hook on the syscalls:sys_enter_* events of the 5 selected",
    );
}

#[test]
fn counts_exactly_with_the_raw_syscalls_entry_hook() {
    // The fallback for kernels without per-syscall events, forced (a hidden flag).
    counts_exactly(Some("raw-syscalls"), "entry hook on raw_syscalls:sys_enter");
}

/// Runs the exact-count workload under an agent with `--syscalls-entry <entry>` (if given),
/// whose log must say `logged` (the entry hook it chose).
fn counts_exactly(entry: Option<&str>, logged: &str) {
    let mut cgroup = ScratchCgroup::new(&format!("docker-{CONTAINER_ID}.scope")).unwrap();
    let path = cgroup.path();
    let mut args = vec![
        "--syscalls",
        "getppid,openat,close,read,nanosleep",
        "--syscalls-grace-seconds",
        "2",
    ];
    if let Some(entry) = entry {
        args.extend(["--syscalls-entry", entry]);
    }
    let agent = Agent::start(&args).unwrap();
    assert!(agent.log().contains(logged), "{}", agent.log());
    workload(
        &cgroup,
        &[
            "getppid=1000",
            "openat-missing=7",
            "openat-notdir=2",
            "openat-devnull=3",
            "close-bad=5",
            "read-eagain=4",
            "nanosleep-ms=20x3",
        ],
    );
    // The workload has exited: one poll after this brings every count at once.
    wait_for_metric(&agent, COUNT, &labels(&path, "nanosleep"), 3.0, WAIT).unwrap();
    let m = agent.metrics();
    let count = |syscall: &str| m.sum(COUNT, &labels(&path, syscall));
    assert_eq!(
        syscalls_of(&m, &path),
        ["close", "getppid", "nanosleep", "openat", "read"]
            .map(String::from)
            .into(),
        "exactly the selected syscalls the workload made\n{}",
        m.text()
    );
    assert_eq!(count("getppid"), 1000.0);
    assert_eq!(count("openat"), 12.0);
    assert_eq!(count("close"), 8.0);
    assert_eq!(count("read"), 4.0);
    assert_eq!(count("nanosleep"), 3.0);
    assert_eq!(errors(&m, &path, "openat", "ENOENT"), 7.0);
    assert_eq!(errors(&m, &path, "openat", "other"), 2.0, "ENOTDIR");
    assert_eq!(errors(&m, &path, "close", "EBADF"), 5.0);
    assert_eq!(errors(&m, &path, "read", "EAGAIN"), 4.0);
    assert_eq!(
        m.sum(ERRORS, &[("cgroup_path", &path)]),
        18.0,
        "no other errors: getppid, nanosleep and the successful calls are not errors"
    );
    // The container id comes from the path, on every series.
    assert_eq!(
        m.sum(
            COUNT,
            &[("cgroup_path", &path), ("container_id", CONTAINER_ID)]
        ),
        1027.0
    );
    // 20 ms sleeps land in (2^24 ns, 2^25 ns] = (16.8 ms, 33.6 ms].
    assert_eq!(bucket(&m, &path, "nanosleep", 16_777_216e-9), 0.0);
    assert_eq!(bucket(&m, &path, "nanosleep", 33_554_432e-9), 3.0);
    let slept = m.sum(SUM, &labels(&path, "nanosleep"));
    assert!((0.060..0.101).contains(&slept), "3 × 20 ms took {slept} s");
    // getppid is far below a millisecond.
    assert_eq!(bucket(&m, &path, "getppid", 1_048_576e-9), 1000.0);

    // Once the cgroup is gone, its series stay for the grace period (2 s), then go, and the
    // kernel entries with them.
    cgroup.remove().unwrap();
    let gone = wait_until(WAIT, Duration::from_millis(200), || {
        agent
            .try_metrics()
            .is_ok_and(|m| syscalls_of(&m, &path).is_empty())
    });
    assert!(
        gone,
        "series of the removed cgroup are still exported\n{}",
        agent.log()
    );
}

#[test]
fn pairs_beyond_the_series_cap_are_counted_as_dropped() {
    let cgroup = ScratchCgroup::new("capped").unwrap();
    let path = cgroup.path();
    // Syscalls nothing else on a machine makes, so that the workload's are the only pairs.
    let agent = Agent::start(&[
        "--syscalls",
        "sched_get_priority_max,sched_get_priority_min",
        "--syscalls-max-series",
        "1",
    ])
    .unwrap();
    workload(
        &cgroup,
        &["sched_get_priority_max=5", "sched_get_priority_min=7"],
    );
    let dropped = [("metric", "syscall_duration_seconds")];
    wait_for_metric(&agent, DROPPED, &dropped, 7.0, WAIT).unwrap();
    wait_for_metric(
        &agent,
        COUNT,
        &labels(&path, "sched_get_priority_max"),
        5.0,
        WAIT,
    )
    .unwrap();
    let m = agent.metrics();
    assert_eq!(m.samples(COUNT).len(), 1, "{}", m.text());
}

#[test]
fn none_attaches_no_syscall_statistics() {
    let cgroup = ScratchCgroup::new("none").unwrap();
    let agent = Agent::start(&["--syscalls", "none"]).unwrap();
    workload(&cgroup, &["getppid=10", "openat-missing=3"]);
    // A drain and a poll later there is still nothing.
    std::thread::sleep(Duration::from_secs(3));
    let m = agent.metrics();
    let names = m.names();
    assert!(
        names.iter().all(|n| !n.starts_with("syscall_")),
        "{names:?}"
    );
    assert_eq!(
        m.sum(DROPPED, &[("metric", "syscall_duration_seconds")]),
        0.0
    );
    assert!(
        agent.log().contains("syscall statistics off"),
        "{}",
        agent.log()
    );
}

#[test]
fn default_selection_counts_file_syscalls_but_not_getppid() {
    let cgroup = ScratchCgroup::new("default").unwrap();
    let path = cgroup.path();
    let agent = Agent::start(&["--syscalls", "default"]).unwrap();
    workload(&cgroup, &["getppid=10", "openat-missing=3", "close-bad=2"]);
    wait_for_metric(&agent, COUNT, &labels(&path, "openat"), 3.0, WAIT).unwrap();
    wait_for_metric(&agent, COUNT, &labels(&path, "close"), 2.0, WAIT).unwrap();
    wait_for_metric(&agent, COUNT, &labels(&path, "write"), 1.0, WAIT).unwrap();
    let m = agent.metrics();
    // `write` is the workload's write to `cgroup.procs`: it entered in the old cgroup and
    // returned in the new one, and a syscall counts where it returns.
    assert_eq!(
        syscalls_of(&m, &path),
        ["close", "openat", "write"].map(String::from).into(),
        "{}",
        m.text()
    );
    assert_eq!(m.sum(COUNT, &labels(&path, "openat")), 3.0);
    assert_eq!(m.sum(COUNT, &labels(&path, "close")), 2.0);
    assert_eq!(errors(&m, &path, "openat", "ENOENT"), 3.0);
    assert_eq!(errors(&m, &path, "close", "EBADF"), 2.0);
}
