//! What the agent gives up once it no longer needs it.
//!
//! The agent holds every tenant's decoded traffic in memory (SQL text, paths, headers), so a
//! core dump of it would be a copy of other pods' data on the node's disk: it makes itself
//! non-dumpable first thing (`PR_SET_DUMPABLE` 0), which also keeps other processes of the
//! same user from attaching to it with `ptrace`.
//!
//! Once its programs are loaded and attached, it drops every capability except those it still
//! uses (`drop_capabilities`): `CAP_BPF` (every `bpf()` call, map reads included, when
//! unprivileged BPF is disabled, as it is by default), `CAP_PERFMON` (attaching uprobes and
//! reading kernel memory from programs), `CAP_SYS_PTRACE` (`/proc/<pid>/exe`, `fd/` and
//! `environ` of other users' processes) and `CAP_DAC_READ_SEARCH` (the same directories and
//! files under other owners). `CAP_SYS_ADMIN` stays only with `--bpf-stats` (walking the
//! kernel's program list by id needs it) or on kernels without `CAP_BPF` (before 5.8). The
//! bounding set is emptied of the rest too and `no_new_privs` set, so nothing the agent could
//! be made to execute regains them.
//!
//! Capabilities belong to threads, and the runtime's threads already run when the drop
//! happens: each thread is sent a real-time signal whose handler makes the same calls
//! (`prctl`, `capset`: async-signal-safe system calls), as libcap's `psx` does, and the drop
//! is verified in `/proc/self/task/*/status` until every thread shows it.

/// Disables core dumps of this process (and `ptrace` attach by non-root peers).
pub fn disable_core_dumps() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_DUMPABLE takes an integer argument and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The set every thread is brought down to (effective = permitted; inheritable empty).
static TARGET: AtomicU64 = AtomicU64::new(0);
/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
static LAST_CAP: AtomicU32 = AtomicU32::new(40);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capabilities the agent keeps after start-up (see the module comment), as a bit set.
pub fn kept_after_start(bpf_stats: bool, last_cap: u32) -> u64 {
    let bit = |cap: u32| 1u64 << cap;
    let mut keep = bit(CAP_DAC_READ_SEARCH) | bit(CAP_SYS_PTRACE);
    if last_cap >= CAP_BPF {
        keep |= bit(CAP_BPF) | bit(CAP_PERFMON);
    } else {
        keep |= bit(CAP_SYS_ADMIN);
    }
    if bpf_stats {
        keep |= bit(CAP_SYS_ADMIN);
    }
    keep
}

/// Names of the capabilities in `set`, for the log.
pub fn names(set: u64) -> String {
    const NAMES: [(u32, &str); 5] = [
        (CAP_DAC_READ_SEARCH, "dac_read_search"),
        (CAP_SYS_PTRACE, "sys_ptrace"),
        (CAP_SYS_ADMIN, "sys_admin"),
        (CAP_PERFMON, "perfmon"),
        (CAP_BPF, "bpf"),
    ];
    let mut out: Vec<String> = Vec::new();
    let mut rest = set;
    for (cap, name) in NAMES {
        if set & (1 << cap) != 0 {
            out.push(name.to_owned());
            rest &= !(1 << cap);
        }
    }
    if rest != 0 {
        out.push(format!("{rest:#x}"));
    }
    out.join(", ")
}

/// This thread's permitted set.
fn permitted() -> std::io::Result<u64> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills the header and two data structs, as version 3 defines.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32))
}

/// Brings the calling thread down to `TARGET`: bounding set, `no_new_privs`, then `capset`.
/// Only system calls, so it may run in a signal handler.
fn apply() -> i64 {
    apply_target(TARGET.load(Ordering::SeqCst))
}

/// Brings the calling thread, and only it, down to `keep` (as `drop_capabilities` does for
/// every other thread). For a thread that `drop_capabilities` is then told to leave alone.
pub fn restrict_this_thread(keep: u64) -> anyhow::Result<()> {
    if let Ok(last) = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap") {
        if let Ok(last) = last.trim().parse::<u32>() {
            LAST_CAP.store(last, Ordering::SeqCst);
        }
    }
    let target = permitted().context("capget")? & keep;
    if apply_target(target) != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    Ok(())
}

/// This thread's id.
pub fn this_thread_id() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// `CAP_SYS_ADMIN`, which attaching uprobes needs on the kernels measured (Linux 6.18 refuses
/// `perf_event_open` of a uprobe with only `CAP_PERFMON`): kept by the TLS discovery thread.
pub const SYS_ADMIN: u64 = 1 << CAP_SYS_ADMIN;

fn apply_target(target: u64) -> i64 {
    for cap in 0..=LAST_CAP.load(Ordering::SeqCst).min(63) {
        if target & (1 << cap) == 0 {
            // SAFETY: prctl takes integers; it fails harmlessly without CAP_SETPCAP.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |shift: u32| (target >> shift) as u32;
    let data = [
        CapData {
            effective: word(0),
            permitted: word(0),
            inheritable: 0,
        },
        CapData {
            effective: word(32),
            permitted: word(32),
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads the header and two data structs, as version 3 defines.
    unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) }
}

extern "C" fn on_signal(_signal: libc::c_int) {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    apply();
    // SAFETY: restores the interrupted code's errno (`__errno_location` is this thread's).
    unsafe { *libc::__errno_location() = errno };
}

/// The `CapPrm` and `CapEff` of one thread, from its `status` file.
fn thread_caps(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some((field("CapPrm:")?, field("CapEff:")?))
}

/// Drops every capability outside `keep` in every thread of the process but the `exempt`
/// ones (which restrict themselves, `restrict_this_thread`); returns (kept, dropped) sets.
/// Fails if a thread still holds more after a few seconds.
pub fn drop_capabilities(keep: u64, exempt: &[i32]) -> anyhow::Result<(u64, u64)> {
    if let Ok(last) = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap") {
        if let Ok(last) = last.trim().parse::<u32>() {
            LAST_CAP.store(last, Ordering::SeqCst);
        }
    }
    let before = permitted().context("capget")?;
    let target = before & keep;
    TARGET.store(target, Ordering::SeqCst);
    let signal = libc::SIGRTMIN() + 5;
    // SAFETY: installs a handler that only makes system calls; SA_RESTART keeps interrupted
    // calls going where the kernel allows it.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error()).context("sigaction");
        }
    }
    if apply() != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    let pid = std::process::id() as libc::pid_t;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut pending = Vec::new();
        for entry in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
            let Ok(entry) = entry else { continue };
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
                continue; // the thread exited
            };
            let tid = entry
                .file_name()
                .to_string_lossy()
                .parse::<i32>()
                .unwrap_or(0);
            if exempt.contains(&tid) {
                continue;
            }
            match thread_caps(&status) {
                Some((prm, eff)) if prm == target && eff == target => {}
                _ => pending.push(
                    entry
                        .file_name()
                        .to_string_lossy()
                        .parse::<i32>()
                        .unwrap_or(0),
                ),
            }
        }
        if pending.is_empty() {
            return Ok((target, before & !target));
        }
        if Instant::now() > deadline {
            bail!(
                "threads {pending:?} still hold capabilities outside {}",
                names(target)
            );
        }
        for tid in pending {
            // SAFETY: signals a thread of this process; the handler is installed above.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn core_dumps_are_disabled() {
        super::disable_core_dumps().unwrap();
        // SAFETY: PR_GET_DUMPABLE reads a flag of this process.
        let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        assert_eq!(dumpable, 0);
    }

    #[test]
    fn kept_capabilities_follow_the_kernel_and_bpf_stats() {
        use super::*;
        let keep = kept_after_start(false, 40);
        assert_eq!(names(keep), "dac_read_search, sys_ptrace, perfmon, bpf");
        assert_eq!(
            names(kept_after_start(true, 40)),
            "dac_read_search, sys_ptrace, sys_admin, perfmon, bpf"
        );
        // Before 5.8 there is no CAP_BPF: CAP_SYS_ADMIN gates bpf().
        assert_eq!(
            names(kept_after_start(false, 37)),
            "dac_read_search, sys_ptrace, sys_admin"
        );
    }

    #[test]
    fn reads_a_threads_capabilities_from_its_status() {
        let status = "Name:\tperiscope\nCapInh:\t0000000000000000\nCapPrm:\t000000c000080004\nCapEff:\t000000c000080004\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(
            super::thread_caps(status),
            Some((0xc0_0008_0004, 0xc0_0008_0004))
        );
        assert_eq!(super::kept_after_start(false, 40), 0xc0_0008_0004);
        assert_eq!(super::thread_caps("Name:\tx\n"), None);
    }
}
