//! The few system calls an init process needs that std does not offer: mounting, bringing
//! loopback up, forking and powering off. All of vmtest's `unsafe` lives here.

use std::ffi::CStr;
use std::io;

/// Mounts `fstype` at `target` (created first); an error names both.
pub fn mount(fstype: &CStr, target: &str) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let target_c = std::ffi::CString::new(target).map_err(io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings; null data is allowed.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Points stdin, stdout and stderr at `/dev/console` if the kernel could not (it opens the
/// console for init only when the initramfs has `/dev/console`).
pub fn ensure_console() {
    // SAFETY: F_GETFD on any fd number is harmless.
    if unsafe { libc::fcntl(1, libc::F_GETFD) } != -1 {
        return;
    }
    // SAFETY: valid path; the fd is only dup'ed onto 0..=2.
    unsafe {
        let fd = libc::open(c"/dev/console".as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            for target in 0..=2 {
                libc::dup2(fd, target);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

/// Sets IFF_UP on `lo`: a fresh network namespace (the guest's) starts with loopback down.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket used only as an ioctl handle; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming "lo"; the kernel reads/writes only ifr_flags.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            Err(io::Error::last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}

/// `fork()`: `Ok(0)` in the child, `Ok(pid)` in the parent. Only called while the process is
/// single-threaded, so the child may use the allocator and std freely.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: callers guarantee the process is single-threaded.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        pid => Ok(pid),
    }
}

/// Ends a forked child without running the parent's exit handlers.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no shared state.
    unsafe { libc::_exit(code) }
}

/// Waits for `pid`; `Ok(true)` if it exited with status 0.
pub fn wait_ok(pid: libc::pid_t) -> io::Result<bool> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
}

/// Flushes filesystems and powers the machine off (QEMU then exits). Never returns.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; only PID 1 (root) calls this.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
    }
    // reboot only returns on failure; exiting PID 1 panics the kernel, and `panic=-1` plus
    // QEMU's `-no-reboot` still end the VM.
    std::process::exit(1)
}
