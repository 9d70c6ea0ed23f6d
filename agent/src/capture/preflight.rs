//! Checks made before loading anything, so that a missing privilege or kernel feature gives one
//! clear sentence instead of a verifier dump.

use std::path::Path;

use anyhow::bail;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The oldest kernel with BPF ring buffers.
pub const MIN_KERNEL: (u32, u32) = (5, 8);

/// What the start-up log reports about the kernel.
#[derive(Clone, Debug)]
pub struct KernelFacts {
    pub release: String,
    pub btf: bool,
    pub tracefs: &'static str,
}

/// Runs every check; mounts tracefs if it is not mounted yet.
pub fn check() -> anyhow::Result<KernelFacts> {
    check_capabilities(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())?;
    check_seccomp()?;
    let release = kernel_release();
    check_kernel_version(&release)?;
    raise_memlock_limit();
    let tracefs = ensure_tracefs()?;
    // BTF is not needed: every hook is a tracepoint with a stable record layout. It is reported
    // because later upgrades (fentry) depend on it.
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    Ok(KernelFacts {
        release,
        btf,
        tracefs,
    })
}

/// Fails naming the missing capability. CAP_BPF + CAP_PERFMON (5.8+) or CAP_SYS_ADMIN suffice.
pub fn check_capabilities(proc_status: &str) -> anyhow::Result<()> {
    let effective = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect();
    bail!(
        "missing capability {} (or CAP_SYS_ADMIN): Periscope loads eBPF programs; run it as root or grant {}",
        missing.join(" and "),
        missing.join(" + ")
    )
}

/// Fails with the fix when a seccomp filter refuses `bpf()`: the container runtime's default
/// profile (`seccompProfile: RuntimeDefault`) allows it with `CAP_BPF` in containerd 1.7+ and
/// Docker 22.06+, and only with `CAP_SYS_ADMIN` in CRI-O and older containerd. Probed by
/// creating (and closing) a one-entry array map, only when a filter is on.
pub fn check_seccomp() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let filtered = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .is_some_and(|mode| mode.trim() == "2");
    if !filtered || bpf_map_create_allowed() {
        return Ok(());
    }
    bail!(
        "a seccomp profile refuses the bpf() system call (Seccomp: 2 in /proc/self/status). \
         The runtime's default profile allows it with CAP_BPF from containerd 1.7 and Docker \
         22.06 on, only with CAP_SYS_ADMIN in CRI-O and older containerd: there, run the agent \
         with securityContext.seccompProfile.type: Unconfined (Helm: \
         --set securityContext.seccompProfile.type=Unconfined)"
    )
}

/// Whether `bpf(BPF_MAP_CREATE)` of a one-entry array map gets past `EPERM`.
fn bpf_map_create_allowed() -> bool {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // map_type, key_size, value_size, max_entries, then zeros (the kernel accepts a short attr).
    let mut attr = [0u32; 16];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    // SAFETY: bpf() reads `size_of_val(&attr)` bytes of `attr`, which lives across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd >= 0 {
        // SAFETY: the map's descriptor is ours and closed once.
        unsafe { libc::close(fd as libc::c_int) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Fails on kernels older than `MIN_KERNEL`; unknown versions pass (the loader will tell).
pub fn check_kernel_version(release: &str) -> anyhow::Result<()> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|s| s.parse::<u32>().ok());
    let minor = parts.next().and_then(|s| s.parse::<u32>().ok());
    if let (Some(major), Some(minor)) = (major, minor) {
        if (major, minor) < MIN_KERNEL {
            bail!(
                "kernel {release} is too old: Periscope needs Linux {}.{} or newer (BPF ring buffer)",
                MIN_KERNEL.0,
                MIN_KERNEL.1
            );
        }
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK (only matters before Linux 5.11)");
    }
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when no one has.
fn ensure_tracefs() -> anyhow::Result<&'static str> {
    for path in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(path).join("events").is_dir() {
            return Ok(path);
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; a null data pointer is allowed.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 && Path::new("/sys/kernel/tracing/events").is_dir() {
        log::info!("mounted tracefs at /sys/kernel/tracing");
        return Ok("/sys/kernel/tracing");
    }
    bail!(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({}); mount it with `mount -t tracefs tracefs /sys/kernel/tracing` or mount the host's tracefs into the container",
        std::io::Error::last_os_error()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_named() {
        let none = "Name:\tx\nCapEff:\t0000000000000000\n";
        let err = check_capabilities(none).unwrap_err().to_string();
        assert!(err.contains("CAP_BPF and CAP_PERFMON"), "{err}");
        let bpf_only = format!("CapEff:\t{:016x}\n", 1u64 << CAP_BPF);
        let err = check_capabilities(&bpf_only).unwrap_err().to_string();
        assert!(err.contains("missing capability CAP_PERFMON"), "{err}");
        let both = format!(
            "CapEff:\t{:016x}\n",
            (1u64 << CAP_BPF) | (1u64 << CAP_PERFMON)
        );
        assert!(check_capabilities(&both).is_ok());
        assert!(check_capabilities("CapEff:\t000001ffffffffff\n").is_ok());
    }

    #[test]
    fn old_kernels_are_refused() {
        assert!(check_kernel_version("5.4.0-150-generic").is_err());
        assert!(check_kernel_version("5.8.0").is_ok());
        assert!(check_kernel_version("6.1.0-27-cloud-amd64").is_ok());
        assert!(check_kernel_version("weird").is_ok());
    }

    /// Installs, on this thread only, a seccomp filter that answers `bpf()` with EPERM (as a
    /// runtime's default profile without the CAP_BPF rule does); everything else is allowed.
    fn refuse_bpf_on_this_thread() {
        use libc::{
            sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W,
        };
        let stmt = |code: u32, k: u32| sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jump = |code: u32, k: u32, jt: u8, jf: u8| sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        // seccomp_data.nr is the first u32.
        let mut program = [
            stmt(BPF_LD | BPF_W | BPF_ABS, 0),
            jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_bpf as u32, 0, 1),
            stmt(
                BPF_RET | BPF_K,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            ),
            stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
        ];
        let fprog = sock_fprog {
            len: program.len() as u16,
            filter: program.as_mut_ptr(),
        };
        // SAFETY: plain prctl calls; `fprog` points at `program`, alive across the call.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &fprog as *const sock_fprog
                ),
                0,
                "{}",
                std::io::Error::last_os_error()
            );
        }
    }

    #[test]
    fn a_seccomp_filter_that_refuses_bpf_is_named_with_the_fix() {
        // Without a filter the check passes whatever bpf() says (no capability, no BPF: the
        // capability check and the loader speak then).
        check_seccomp().expect("no filter on the test thread");
        let err = std::thread::spawn(|| {
            refuse_bpf_on_this_thread();
            check_seccomp().unwrap_err().to_string()
        })
        .join()
        .expect("the filtered thread");
        assert!(
            err.contains("seccomp profile refuses the bpf() system call"),
            "{err}"
        );
        assert!(err.contains("seccompProfile.type: Unconfined"), "{err}");
    }
}
