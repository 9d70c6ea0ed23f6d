//! `vmtest`: Periscope's kernel-level capture tests, built to run as `/init` (PID 1) in a
//! minimal QEMU guest started by `cargo xtask vm`, one guest per kernel under test.
//!
//! As PID 1 it mounts the pseudo-filesystems, brings loopback up, runs every test, prints the
//! line protocol of [`report`] on the serial console and powers the guest off. It never hangs:
//! a watchdog fails an overrunning test and powers off.
//!
//! Run by hand (not as PID 1) it skips the guest set-up and exits with a status instead, which
//! is handy for trying the tests against the host kernel.
//!
//! `--role http-worker threads|fork` is the traffic generator it re-executes itself as, and
//! `--role syscall-worker <cgroup dir> <n>` the process whose syscalls are counted per cgroup;
//! `--role chain-backend|chain-proxy|chain-client` the three processes of the trace test.

mod capture_tests;
mod report;
mod sys;
mod trace_tests;
mod worker;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--role", "http-worker", serve] => {
            match worker::Serve::parse(serve).and_then(worker::run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("http-worker: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        ["--role", "chain-backend"] => exit_code("chain-backend", worker::chain_backend()),
        ["--role", "chain-proxy", backend] => {
            exit_code("chain-proxy", worker::chain_proxy(backend))
        }
        ["--role", "chain-client", proxy] => exit_code("chain-client", worker::chain_client(proxy)),
        ["--role", "syscall-worker", cgroup, calls] => match worker::syscalls(cgroup, calls) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("syscall-worker: {e:#}");
                ExitCode::FAILURE
            }
        },
        [] => {
            let pid1 = std::process::id() == 1;
            if pid1 {
                guest_setup();
            }
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .init();
            let finish = if pid1 { finish_guest } else { finish_process };
            report::start_watchdog(finish);
            capture_tests::run_all();
            finish(report::done())
        }
        _ => {
            eprintln!("usage: vmtest            (run the tests; as PID 1 inside a VM)\n       vmtest --role http-worker threads|fork\n       vmtest --role syscall-worker <cgroup dir> <n>");
            ExitCode::from(2)
        }
    }
}

fn exit_code(role: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{role}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the kernel does not do for an initramfs init.
fn guest_setup() {
    let mounts: [(&std::ffi::CStr, &str, bool); 7] = [
        (c"devtmpfs", "/dev", true),
        (c"proc", "/proc", true),
        (c"sysfs", "/sys", true),
        (c"tmpfs", "/tmp", true),
        (c"debugfs", "/sys/kernel/debug", false),
        (c"bpf", "/sys/fs/bpf", false),
        (c"cgroup2", "/sys/fs/cgroup", false),
    ];
    for (fstype, target, required) in mounts {
        if let Err(e) = sys::mount(fstype, target) {
            // Printed before the console check below only if stdout works already; the
            // protocol line makes a failed required mount visible to xtask either way.
            if required {
                report::line(&format!(
                    "VMTEST-SETUP mount {} on {target} failed: {e}",
                    fstype.to_string_lossy()
                ));
            }
        }
        if target == "/dev" {
            sys::ensure_console();
        }
    }
    if let Err(e) = sys::loopback_up() {
        report::line(&format!("VMTEST-SETUP bringing lo up failed: {e}"));
    }
}

fn finish_guest(_ok: bool) -> ! {
    sys::power_off()
}

fn finish_process(ok: bool) -> ! {
    std::process::exit(if ok { 0 } else { 1 })
}
