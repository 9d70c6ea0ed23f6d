//! `syscall-workload <cgroup dir> <op>=<count>...`: moves itself into a cgroup v2 directory,
//! then makes exactly the syscalls it is told to, each through `syscall(2)` so that no libc
//! wrapper substitutes another syscall (glibc's `nanosleep()` is `clock_nanosleep`). Used by
//! the syscall statistics tests, which count these calls per cgroup.
//!
//! Ops (`<count>` calls each, in the order given):
//! - `getppid`: succeeds;
//! - `openat-missing`: `openat` of a path that does not exist → ENOENT;
//! - `openat-notdir`: `openat(/dev/null, O_DIRECTORY)` → ENOTDIR;
//! - `openat-devnull`: `openat(/dev/null)` succeeds; the fds are closed at the end with as many
//!   successful `close` calls;
//! - `close-bad`: `close(-1)` → EBADF;
//! - `read-eagain`: `read` of an empty non-blocking pipe → EAGAIN;
//! - `nanosleep-ms`: `nanosleep` for `<count>` = `<ms>x<times>` (e.g. `20x3`);
//! - `sched_get_priority_max`, `sched_get_priority_min`: succeed (syscalls nobody else makes).
//!
//! The cgroup is joined by writing to `cgroup.procs` through a file opened before, and never
//! closed afterwards, and the process ends with `_exit`: its calls in the cgroup are exactly
//! the ones asked for (the kernel closes the remaining fds at exit without any syscall), plus
//! the `write` that moved it, which returns in the new cgroup.

use std::io::Write;
use std::os::fd::IntoRawFd;

fn main() {
    if let Err(e) = run() {
        eprintln!("syscall-workload: {e}");
        std::process::exit(2);
    }
    // SAFETY: ends the process at once. Returning from main would let the runtime unmap its
    // signal stack first: one more `munmap` in the cgroup than asked for.
    unsafe { libc::_exit(0) }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let cgroup = args
        .next()
        .ok_or("usage: syscall-workload <cgroup dir> <op>=<count>...")?;
    let mut ops = Vec::new();
    for arg in args {
        let (op, count) = arg
            .split_once('=')
            .ok_or_else(|| format!("{arg:?} is not <op>=<count>"))?;
        ops.push((op.to_owned(), count.to_owned()));
    }
    // Everything that needs a syscall the tests may count is prepared before the move.
    let mut pipe = [0i32; 2];
    // SAFETY: `pipe` has room for the two fds.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    let missing = c"/nonexistent/periscope-syscall-workload";
    let devnull = c"/dev/null";
    let mut buf = [0u8; 16];
    let mut opened = Vec::new();
    let mut procs = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("{cgroup}/cgroup.procs"))
        .map_err(|e| format!("opening {cgroup}/cgroup.procs: {e}"))?;
    procs
        .write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(|e| format!("joining {cgroup}: {e}"))?;
    // Never closed: see the module comment.
    let _ = procs.into_raw_fd();

    for (op, count) in &ops {
        if op == "nanosleep-ms" {
            let (ms, times) = count
                .split_once('x')
                .and_then(|(m, t)| Some((m.parse::<i64>().ok()?, t.parse::<u32>().ok()?)))
                .ok_or_else(|| format!("nanosleep-ms={count}: expected <ms>x<times>"))?;
            let ts = libc::timespec {
                tv_sec: ms / 1000,
                tv_nsec: (ms % 1000) * 1_000_000,
            };
            for _ in 0..times {
                // SAFETY: valid timespec; no remainder wanted.
                let rc = unsafe {
                    libc::syscall(libc::SYS_nanosleep, &ts as *const libc::timespec, 0usize)
                };
                if rc != 0 {
                    return Err(format!("nanosleep: {}", std::io::Error::last_os_error()));
                }
            }
            continue;
        }
        let count: u32 = count.parse().map_err(|e| format!("{op}={count}: {e}"))?;
        for _ in 0..count {
            // SAFETY: each call passes valid pointers (NUL-terminated paths, a live buffer) or
            // none; the results are checked against what the op expects below.
            let (rc, expected_errno) = unsafe {
                match op.as_str() {
                    "getppid" => (libc::syscall(libc::SYS_getppid), None),
                    "sched_get_priority_max" => (
                        libc::syscall(libc::SYS_sched_get_priority_max, libc::SCHED_OTHER),
                        None,
                    ),
                    "sched_get_priority_min" => (
                        libc::syscall(libc::SYS_sched_get_priority_min, libc::SCHED_OTHER),
                        None,
                    ),
                    "openat-missing" => (
                        libc::syscall(
                            libc::SYS_openat,
                            libc::AT_FDCWD,
                            missing.as_ptr(),
                            libc::O_RDONLY,
                        ),
                        Some(libc::ENOENT),
                    ),
                    "openat-notdir" => (
                        libc::syscall(
                            libc::SYS_openat,
                            libc::AT_FDCWD,
                            devnull.as_ptr(),
                            libc::O_RDONLY | libc::O_DIRECTORY,
                        ),
                        Some(libc::ENOTDIR),
                    ),
                    "openat-devnull" => {
                        let fd = libc::syscall(
                            libc::SYS_openat,
                            libc::AT_FDCWD,
                            devnull.as_ptr(),
                            libc::O_RDONLY | libc::O_CLOEXEC,
                        );
                        if fd >= 0 {
                            opened.push(fd);
                        }
                        (fd, None)
                    }
                    "close-bad" => (libc::syscall(libc::SYS_close, -1), Some(libc::EBADF)),
                    "read-eagain" => (
                        libc::syscall(libc::SYS_read, pipe[0], buf.as_mut_ptr(), buf.len()),
                        Some(libc::EAGAIN),
                    ),
                    other => return Err(format!("unknown op {other:?}")),
                }
            };
            let errno = std::io::Error::last_os_error().raw_os_error();
            match expected_errno {
                None if rc < 0 => return Err(format!("{op}: failed with errno {errno:?}")),
                Some(want) if rc >= 0 || errno != Some(want) => {
                    return Err(format!(
                        "{op}: returned {rc} (errno {errno:?}), expected errno {want}"
                    ))
                }
                _ => {}
            }
        }
    }
    for fd in opened {
        // SAFETY: closing fds this process opened above and does not use otherwise.
        if unsafe { libc::syscall(libc::SYS_close, fd) } != 0 {
            return Err(format!("close: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
