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
}
