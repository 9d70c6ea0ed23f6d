//! What the agent gives up once it no longer needs it.
//!
//! The agent holds every tenant's decoded traffic in memory (SQL text, paths, headers), so a
//! core dump of it would be a copy of other pods' data on the node's disk: it makes itself
//! non-dumpable first thing (`PR_SET_DUMPABLE` 0), which also keeps other processes of the
//! same user from attaching to it with `ptrace`.

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

#[cfg(test)]
mod tests {
    #[test]
    fn core_dumps_are_disabled() {
        super::disable_core_dumps().unwrap();
        // SAFETY: PR_GET_DUMPABLE reads a flag of this process.
        let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        assert_eq!(dumpable, 0);
    }
}
