//! Child processes that never outlive their handle, and a few `/proc` readers.

use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A spawned child process that is stopped on drop (SIGTERM, then SIGKILL after 5 s), along
/// with every process it forked (nginx workers, gunicorn workers, …).
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawns `cmd`; `name` only labels error messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<ChildProcess> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(ChildProcess {
            name: name.to_owned(),
            child,
            status: None,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdout, if it was spawned with `Stdio::piped()` and not taken yet.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's stdin, if it was spawned with `Stdio::piped()` and not taken yet.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// `Some(status)` once the child has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) to the child, if it is still running.
    pub fn signal(&mut self, signal: libc::c_int) -> anyhow::Result<()> {
        if self.try_wait().is_some() {
            return Ok(());
        }
        send_signal(self.pid(), signal)
    }

    /// Sends `signal`, waits up to `grace` for the child to exit, then SIGKILLs it. Any
    /// descendants still alive afterwards are SIGKILLed too. Returns the exit status;
    /// calling it again returns the same status.
    pub fn stop(&mut self, signal: libc::c_int, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_wait() {
            return Ok(status);
        }
        // Collected before signalling: once the parent is gone, orphans are re-parented
        // and can no longer be found through it.
        let family = descendants(self.pid());
        send_signal(self.pid(), signal)?;
        let deadline = Instant::now() + grace;
        let status = loop {
            if let Some(status) = self.try_wait() {
                break status;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "harness: {} (pid {}) ignored signal {signal} for {grace:?}; sending SIGKILL",
                    self.name,
                    self.pid()
                );
                let _ = self.child.kill();
                let status = self
                    .child
                    .wait()
                    .with_context(|| format!("waiting for {}", self.name))?;
                self.status = Some(status);
                break status;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for pid in family {
            // Ignore errors: most of them exited with their parent, as they should.
            let _ = send_signal(pid, libc::SIGKILL);
        }
        Ok(status)
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Err(e) = self.stop(libc::SIGTERM, Duration::from_secs(5)) {
            eprintln!("harness: stopping {}: {e:#}", self.name);
        }
    }
}

fn send_signal(pid: u32, signal: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) has no memory-safety preconditions; a stale pid yields ESRCH.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process runs with effective uid 0 (needed to load eBPF programs).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// All processes descended from `pid` (children, grandchildren, …), found by scanning
/// `/proc/*/stat` for parent pids.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) {
                if let Some(ppid) = stat_fields(&stat).and_then(|f| f.get(1)?.parse().ok()) {
                    parents.push((child, ppid));
                }
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(child, ppid) in &parents {
            if ppid == parent && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// The fields of `/proc/<pid>/stat` after `(comm)`, so index 0 is field 3 (`state`).
/// comm may itself contain spaces and parentheses, hence the search for the last `)`.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

/// User + system CPU time consumed so far by all threads of process `pid`
/// (`utime + stime` from `/proc/<pid>/stat`; resolution is one clock tick, usually 10 ms).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let fields = stat_fields(&stat).with_context(|| format!("malformed {path}"))?;
    // utime and stime are fields 14 and 15 (1-based), i.e. indices 11 and 12 here.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("malformed {path}: {stat}"))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    Ok(Duration::from_nanos(total * 1_000_000_000 / hz))
}

/// Resident set size of process `pid` in bytes (`VmRSS` from `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmRSS:")
}

/// The most resident memory `pid` has had since it started (`VmHWM`), in bytes: the peak,
/// whenever it happened between samples.
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmHWM:")
}

/// A `… kB` line of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in {path}"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("malformed line in {path}: {line:?}"))?;
    Ok(kib * 1024)
}

/// Runs `cmd` to completion and returns what it printed; an error naming the program and
/// holding its standard error when it exits unsuccessfully.
pub fn output_ok(cmd: &mut Command) -> anyhow::Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .with_context(|| format!("starting {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
