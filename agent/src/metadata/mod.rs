//! Who a process is: executable, container id and pod UID from the cgroup path, service
//! name. Standalone mode needs nothing but `/proc`; [`kubernetes`] adds pod, owner and peer
//! attribution from the Kubernetes API.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub mod cgroup;
pub mod kubernetes;

/// Identity of one process (thread group), cached per tgid until it exits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// `/proc/<pid>/comm`.
    pub comm: String,
    /// Base name of `/proc/<pid>/exe` (empty when unreadable, e.g. a kernel thread).
    pub exe_name: String,
    /// Container id when the process runs in a container (from its cgroup path).
    pub container_id: Option<String>,
    /// Kubernetes pod UID when the process runs in a pod (from its cgroup path), the key for
    /// [`kubernetes::Attribution::pod`].
    pub pod_uid: Option<String>,
    /// `service.name`: the executable's name in standalone mode.
    pub service_name: String,
}

impl ProcessInfo {
    /// Reads a process's identity from `proc_root` (normally `/proc`). Never fails: what cannot
    /// be read stays empty, and `service_name` falls back to `comm`, then `unknown`.
    /// `comm_hint` is the name the kernel saw, used when the process is already gone.
    pub fn read(proc_root: &Path, pid: u32, comm_hint: Option<&str>) -> ProcessInfo {
        let dir = proc_root.join(pid.to_string());
        let comm = std::fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim_end().to_owned())
            .ok()
            .or_else(|| comm_hint.map(str::to_owned))
            .unwrap_or_default();
        let exe_name = std::fs::read_link(dir.join("exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .map(|n| n.trim_end_matches(" (deleted)").to_owned())
            .unwrap_or_default();
        let cgroup_file = std::fs::read_to_string(dir.join("cgroup")).ok();
        let container_id = cgroup_file.as_deref().and_then(cgroup::container_id);
        let pod_uid = cgroup_file.as_deref().and_then(cgroup::pod_uid);
        let service_name = [&exe_name, &comm]
            .into_iter()
            .find(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned());
        ProcessInfo {
            pid,
            comm,
            exe_name,
            container_id,
            pod_uid,
            service_name,
        }
    }
}

/// Process identities by tgid, read once and dropped when the process exits.
pub struct ProcessCache {
    proc_root: std::path::PathBuf,
    by_pid: HashMap<u32, Arc<ProcessInfo>>,
}

impl ProcessCache {
    pub fn new(proc_root: impl Into<std::path::PathBuf>) -> Self {
        ProcessCache {
            proc_root: proc_root.into(),
            by_pid: HashMap::new(),
        }
    }

    pub fn get(&mut self, pid: u32, comm_hint: Option<&str>) -> Arc<ProcessInfo> {
        let root = &self.proc_root;
        self.by_pid
            .entry(pid)
            .or_insert_with(|| Arc::new(ProcessInfo::read(root, pid, comm_hint)))
            .clone()
    }

    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// Drops entries of processes that no longer exist (their exit event may have been lost).
    pub fn retain_alive(&mut self) {
        let root = &self.proc_root;
        self.by_pid
            .retain(|pid, _| root.join(pid.to_string()).exists());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = ProcessInfo::read(Path::new("/proc"), std::process::id(), None);
        assert!(!me.comm.is_empty());
        assert!(!me.exe_name.is_empty());
        assert_eq!(me.service_name, me.exe_name);
    }

    #[test]
    fn missing_process_is_unknown_not_an_error() {
        let ghost = ProcessInfo::read(Path::new("/proc"), u32::MAX - 1, None);
        assert_eq!(ghost.service_name, "unknown");
        assert_eq!(ghost.container_id, None);
        assert_eq!(ghost.pod_uid, None);
        let named = ProcessInfo::read(Path::new("/proc"), u32::MAX - 1, Some("curl"));
        assert_eq!(named.service_name, "curl");
    }
}
