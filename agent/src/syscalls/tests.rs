use super::*;
use agent_ebpf::{errno_class, latency_bucket, syscall_errno};

// The tests that use numbers (`selections`, the entry events) are x86_64's: the unit tests
// run on the x86_64 build host; arm64's numbers are checked by the table test below and, on a
// real arm64 kernel, by `cargo xtask vm` (`syscalls.default-events`).

#[test]
#[cfg(target_arch = "x86_64")]
fn the_table_is_x86_64s() {
    assert_eq!(table::COUNT, 470);
    for (nr, name) in [
        (0, "read"),
        (1, "write"),
        (3, "close"),
        (35, "nanosleep"),
        (39, "getpid"),
        (59, "execve"),
        (110, "getppid"),
        (202, "futex"),
        (257, "openat"),
        (435, "clone3"),
        (449, "futex_waitv"),
        (469, "file_setattr"),
    ] {
        assert_eq!(syscall_name(nr), name);
        assert_eq!(selectable(name), Ok(nr));
    }
    assert_eq!(syscall_name(400), "nr_400", "unused on x86_64");
    assert_eq!(syscall_name(9999), "nr_9999");
    let mut seen = BTreeSet::new();
    for name in table::NAMES.iter().filter(|n| !n.is_empty()) {
        assert!(seen.insert(*name), "{name} twice");
    }
    const { assert!(table::COUNT <= SYSCALL_NR_LIMIT) };
}

/// arm64's table (the generic one): the numbers of the syscalls the kernel programs hook
/// (`agent-ebpf/src/common.rs`, `nr`) and of a few others, and what it lacks.
#[test]
fn the_arm64_table_is_the_generic_one() {
    use table::aarch64::{COUNT, NAMES};
    for (nr, name) in [
        (24, "dup3"),
        (56, "openat"),
        (57, "close"),
        (63, "read"),
        (64, "write"),
        (65, "readv"),
        (66, "writev"),
        (71, "sendfile"),
        (79, "newfstatat"),
        (98, "futex"),
        (198, "socket"),
        (202, "accept"),
        (203, "connect"),
        (206, "sendto"),
        (207, "recvfrom"),
        (211, "sendmsg"),
        (212, "recvmsg"),
        (220, "clone"),
        (221, "execve"),
        (242, "accept4"),
        (243, "recvmmsg"),
        (435, "clone3"),
        (449, "futex_waitv"),
        (469, "file_setattr"),
    ] {
        assert_eq!(NAMES[nr], name, "{nr}");
    }
    for unused in [244, 245, 259, 295, 423, 453] {
        assert_eq!(NAMES[unused], "", "{unused}");
    }
    assert_eq!(COUNT, 470);
    let mut seen = BTreeSet::new();
    for name in NAMES.iter().filter(|n| !n.is_empty()) {
        assert!(seen.insert(*name), "{name} twice");
    }
    const { assert!(COUNT <= SYSCALL_NR_LIMIT) };
    let missing: Vec<&str> = DEFAULT_SYSCALLS
        .iter()
        .copied()
        .filter(|n| !NAMES.contains(n))
        .collect();
    assert_eq!(
        missing,
        ["poll", "select", "epoll_wait", "open", "fork", "vfork"]
    );
    for (syscall, _) in table::aarch64::EVENTS {
        assert!(NAMES.contains(syscall), "{syscall}");
    }
    for (syscall, _) in table::x86_64::EVENTS {
        assert!(table::x86_64::NAMES.contains(syscall), "{syscall}");
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn entry_events_are_named_after_the_syscalls_definition() {
    assert_eq!(enter_event(0).as_deref(), Some("sys_enter_read"));
    assert_eq!(enter_event(4).as_deref(), Some("sys_enter_newstat"));
    assert_eq!(enter_event(40).as_deref(), Some("sys_enter_sendfile64"));
    assert_eq!(enter_event(166).as_deref(), Some("sys_enter_umount"));
    assert_eq!(enter_event(400), None, "unused on x86_64");
    assert_eq!(enter_event(9999), None);
    // Every syscall of the default selection has its event on this kernel (if its tracefs
    // is visible to the unit tests).
    let events = std::path::Path::new("/sys/kernel/tracing/events/syscalls");
    if events.is_dir() {
        for nr in Selection::parse("default").unwrap().numbers() {
            let event = enter_event(nr).unwrap();
            assert!(events.join(&event).is_dir(), "{event} missing");
        }
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn selections() {
    let default = Selection::parse("default").unwrap();
    assert_eq!(default.numbers().count(), DEFAULT_SYSCALLS.len());
    assert!(Selection::parse("none").unwrap().is_empty());
    let some = Selection::parse(" getppid, openat ,close").unwrap();
    assert_eq!(some.numbers().collect::<Vec<_>>(), [3, 110, 257]);
    let filter = some.filter();
    assert!(filter.contains(110) && filter.contains(257) && filter.contains(3));
    assert!(!filter.contains(0) && !filter.contains(511) && !filter.contains(1 << 30));
    let more = Selection::parse("default,getppid").unwrap();
    assert_eq!(more.numbers().count(), DEFAULT_SYSCALLS.len() + 1);
    for bad in ["", "nope", "none,read", "exit_group", "rt_sigreturn", ","] {
        assert!(Selection::parse(bad).is_err(), "{bad:?}");
    }
    assert!(Selection::parse("opnat").unwrap_err().contains("opnat"));
}

#[test]
fn errno_classes() {
    let class = |errno: u64| ERRNO_CLASS_NAMES[errno_class(errno)];
    assert_eq!(class(11), "EAGAIN");
    assert_eq!(class(115), "EAGAIN", "EINPROGRESS would block too");
    assert_eq!(class(4), "EINTR");
    assert_eq!(class(512), "EINTR", "ERESTARTSYS");
    assert_eq!(class(516), "EINTR", "ERESTART_RESTARTBLOCK");
    assert_eq!(class(2), "ENOENT");
    assert_eq!(class(9), "EBADF");
    assert_eq!(class(110), "ETIMEDOUT");
    assert_eq!(class(1), "permission");
    assert_eq!(class(13), "permission");
    for errno in [111, 104, 103, 32, 107, 113, 101] {
        assert_eq!(class(errno), "connection", "{errno}");
    }
    assert_eq!(class(20), "other", "ENOTDIR");
    assert_eq!(class(515), "other");
    assert_eq!(syscall_errno(-2), Some(2));
    assert_eq!(syscall_errno(-4095), Some(4095));
    assert_eq!(syscall_errno(-4096), None, "not an errno");
    assert_eq!(syscall_errno(0), None);
    assert_eq!(syscall_errno(17), None);
}

#[test]
fn buckets_are_log2_with_inclusive_upper_bounds() {
    let bounds = bucket_bounds_seconds();
    assert_eq!(bounds.len(), LATENCY_BUCKETS);
    assert_eq!(bounds[0], 256e-9);
    assert_eq!(bounds[1], 512e-9);
    assert_eq!(bounds[LATENCY_BUCKETS - 2], (1u64 << 36) as f64 / 1e9);
    assert_eq!(bounds[LATENCY_BUCKETS - 1], f64::INFINITY);
    // Every duration lands in the first bucket whose bound it does not exceed.
    for ns in [
        0u64,
        1,
        255,
        256,
        257,
        511,
        512,
        513,
        1000,
        20_000_000,
        (1 << 36) - 1,
        1 << 36,
        (1 << 36) + 1,
        u64::MAX,
    ] {
        let b = latency_bucket(ns);
        let seconds = ns as f64 / 1e9;
        assert!(
            seconds <= bounds[b],
            "{ns} ns above the bound of bucket {b}"
        );
        if b > 0 {
            assert!(seconds > bounds[b - 1], "{ns} ns fits bucket {}", b - 1);
        }
    }
    // A 20 ms sleep: (16.8 ms, 33.6 ms].
    assert_eq!(
        bounds[latency_bucket(20_000_000)],
        (1u64 << 25) as f64 / 1e9
    );
}

#[test]
fn totals_survive_u32_wraps_across_cpus() {
    let cpu = |calls: u32, sum_ns: u64| {
        let mut stats = SyscallStats {
            sum_ns,
            ..SyscallStats::default()
        };
        stats.buckets[0] = calls;
        stats.errors[3] = calls;
        stats
    };
    let half = 1u32 << 31;
    // (CPU 0, CPU 1) counters at successive reads, and the true total after each.
    let reads = [
        ((half, 10), (half - 20, 20), (1u64 << 32) - 20),
        // The per-CPU sum wraps, no single counter does.
        ((half + 8, 11), (half + 7, 21), (1u64 << 32) + 15),
        // CPU 0's own counter wraps (half - 3 more calls), CPU 1 makes 10 more.
        ((5, 12), (half + 17, 22), (1u64 << 32) + (1u64 << 31) + 22),
    ];
    let mut totals = Totals::default();
    let mut last = Folded::default();
    for ((c0, s0), (c1, s1), expected) in reads {
        let now = Folded::of(&[cpu(c0, s0), cpu(c1, s1)]);
        totals.advance(&last, &now);
        last = now;
        assert_eq!(totals.buckets[0], expected);
        assert_eq!(totals.count(), expected);
        assert_eq!(totals.sum_ns, s0 + s1);
    }
    assert_eq!(
        totals.errors[3], totals.buckets[0],
        "errors wrap the same way"
    );
}

#[test]
fn labels_carry_the_container_id() {
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let path = format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope");
    assert_eq!(cgroup_labels(Some(&path), None).workload.container_id, id);
    assert_eq!(cgroup_labels(Some(&path), None).cgroup_path, path);
    let host = cgroup_labels(Some("/system.slice/ssh.service"), None);
    assert_eq!(host.workload.container_id, "");
    assert_eq!(cgroup_labels(None, None).cgroup_path, "");
}

#[test]
fn collector_encodes_histograms_and_error_counters() {
    let collector = SyscallCollector::new();
    let labels = SyscallLabels {
        syscall: "openat".into(),
        cgroup: cgroup_labels(Some("/a"), None),
    };
    {
        let shared = collector.shared();
        let mut exported = shared.lock().unwrap();
        let mut totals = Totals {
            sum_ns: 3_000,
            ..Totals::default()
        };
        totals.buckets[2] = 3;
        totals.errors[errno_class(2)] = 2;
        exported
            .series
            .insert(labels.clone(), Series { totals, entries: 1 });
    }
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(collector));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let series = r#"syscall="openat",cgroup_path="/a",service_name="",container_id="""#;
    for line in [
        "# TYPE syscall_duration_seconds histogram".to_owned(),
        format!("syscall_duration_seconds_count{{{series}}} 3"),
        format!("syscall_duration_seconds_sum{{{series}}} 0.000003"),
        format!("syscall_duration_seconds_bucket{{le=\"5.12e-7\",{series}}} 0"),
        format!("syscall_duration_seconds_bucket{{le=\"0.000001024\",{series}}} 3"),
        format!("syscall_duration_seconds_bucket{{le=\"+Inf\",{series}}} 3"),
        "# TYPE syscall_errors counter".to_owned(),
        r#"syscall_errors_total{syscall="openat",error_type="ENOENT",cgroup_path="/a",service_name="",container_id=""} 2"#.to_owned(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("EBADF"), "zero classes are not exported");
}
