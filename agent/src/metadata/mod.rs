//! Who a process is: executable, container id and pod UID from the cgroup path, service
//! name. Standalone mode needs nothing but `/proc`; [`kubernetes`] adds pod, owner and peer
//! attribution from the Kubernetes API.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub mod cgroup;
pub mod cgroup_paths;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod language;

/// Identity of one process (thread group), cached per tgid until it exits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// `/proc/<pid>/comm`.
    pub comm: String,
    /// Base name of `/proc/<pid>/exe` (empty when unreadable, e.g. a kernel thread).
    pub exe_name: String,
    /// `/proc/<pid>/exe` (empty when unreadable).
    pub exe_path: String,
    /// The service name the process gives itself: `OTEL_SERVICE_NAME`, else `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`, from its environment (what its own SDK would use).
    pub env_service_name: Option<String>,
    /// Container id when the process runs in a container (from its cgroup path).
    pub container_id: Option<String>,
    /// `service.name`: the executable's name in standalone mode; in a cluster the pod's
    /// `app.kubernetes.io/name` label, else its workload's name.
    pub service_name: String,
    /// Kubernetes pod UID when the process runs in a pod (from its cgroup path), the key for
    /// Kubernetes attribution (`kubernetes::Attribution::pod`).
    pub pod_uid: Option<String>,
    /// Pod, container and workload, once the Kubernetes watch knows the pod.
    pub k8s: Option<Arc<K8sIdentity>>,
    /// Unique per `ProcessInfo` value ever made, so caches can key on identity without
    /// pointer reuse after a free.
    pub seq: u64,
}

/// Where a process sits in the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct K8sIdentity {
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub container_name: String,
    pub node_name: String,
    /// Top owner: `Deployment` (through its ReplicaSet), `StatefulSet`, `DaemonSet`, `CronJob`
    /// (through its Job), `Job`, or `Pod` for a bare pod.
    pub owner_kind: String,
    pub owner_name: String,
    /// `app.kubernetes.io/name`, else the owner's name.
    pub service_name: String,
    /// The pod's labels (bounded), for `--include-pod-labels` and `--exclude-pod-labels`.
    pub labels: Vec<(String, String)>,
}

/// The remote end of a connection, named by the cluster (a pod or a Service).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerName {
    pub namespace: String,
    pub owner_name: String,
    /// The Kubernetes Service for a ClusterIP, else the peer pod's service name.
    pub service_name: String,
}

/// What the cluster knows, as the rest of the agent needs it: implemented by the Kubernetes
/// attribution; absent in standalone mode.
pub trait ClusterView: Send + Sync {
    /// Changes whenever anything the view answers may have changed.
    fn generation(&self) -> u64;
    /// The pod and container of a process, by the pod UID or container id of its cgroup.
    fn identity(
        &self,
        pod_uid: Option<&str>,
        container_id: Option<&str>,
    ) -> Option<Arc<K8sIdentity>>;
    /// The pod or Service behind an IP address.
    fn peer(&self, ip: std::net::IpAddr) -> Option<PeerName>;
    /// Whether the pod still exists (series of deleted pods expire).
    fn pod_exists(&self, namespace: &str, name: &str) -> bool;
    /// Whether every watch has listed its objects at least once.
    fn is_synced(&self) -> bool;
}

fn lookup(cluster: &dyn ClusterView, info: &ProcessInfo) -> Option<Arc<K8sIdentity>> {
    if info.pod_uid.is_none() && info.container_id.is_none() {
        return None;
    }
    cluster.identity(info.pod_uid.as_deref(), info.container_id.as_deref())
}

/// A process's standalone name: its executable, else its comm, else `unknown`.
fn process_name(exe_name: &str, comm: &str) -> String {
    [exe_name, comm]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

fn next_seq() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl ProcessInfo {
    /// Reads a process's identity from `proc_root` (normally `/proc`). Never fails: what cannot
    /// be read stays empty, and `service_name` falls back to `comm`, then `unknown`.
    /// `comm_hint` is the name the kernel saw, used when the process is already gone.
    pub fn read(proc_root: &Path, pid: u32, comm_hint: Option<&str>) -> ProcessInfo {
        ProcessInfo::read_with(proc_root, pid, comm_hint, || None)
    }

    /// Like [`ProcessInfo::read`]; when the process is already gone, its cgroup v2 path comes
    /// from `cgroup_of_gone` (the kernel's cgroup id for it, resolved), so a client that lived
    /// for milliseconds is still attributed to its container and pod.
    pub fn read_with(
        proc_root: &Path,
        pid: u32,
        comm_hint: Option<&str>,
        cgroup_of_gone: impl FnOnce() -> Option<String>,
    ) -> ProcessInfo {
        let dir = proc_root.join(pid.to_string());
        let comm = std::fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim_end().to_owned())
            .ok()
            .or_else(|| comm_hint.map(str::to_owned))
            .unwrap_or_default();
        let exe_path = std::fs::read_link(dir.join("exe"))
            .map(|p| {
                p.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_owned()
            })
            .unwrap_or_default();
        let exe_name = exe_path.rsplit('/').next().unwrap_or_default().to_owned();
        let cgroup_file = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .or_else(|| cgroup_of_gone().map(|path| format!("0::{path}\n")));
        let container_id = cgroup_file.as_deref().and_then(cgroup::container_id);
        let pod_uid = cgroup_file.as_deref().and_then(cgroup::pod_uid);
        let env_service_name = env_service_name(&dir);
        let service_name = env_service_name
            .clone()
            .unwrap_or_else(|| process_name(&exe_name, &comm));
        ProcessInfo {
            pid,
            comm,
            exe_name,
            exe_path,
            env_service_name,
            container_id,
            service_name,
            pod_uid,
            k8s: None,
            seq: next_seq(),
        }
    }

    /// `process.executable.name`: the executable's base name, else `comm`.
    pub fn executable_name(&self) -> &str {
        if self.exe_name.is_empty() {
            &self.comm
        } else {
            &self.exe_name
        }
    }

    /// The language the process is written in, when its executable's name tells
    /// ([`language::from_executable`]).
    pub fn language(&self) -> Option<&'static str> {
        language::from_executable(self.executable_name())
    }

    /// The same process with its Kubernetes identity set (or cleared): a new value with a new
    /// `seq`, so series caches keyed on it start over.
    pub fn with_k8s(&self, k8s: Option<Arc<K8sIdentity>>) -> ProcessInfo {
        let service_name = match (&self.env_service_name, &k8s) {
            (Some(own), _) => own.clone(),
            (None, Some(id)) if !id.service_name.is_empty() => id.service_name.clone(),
            _ => process_name(&self.exe_name, &self.comm),
        };
        ProcessInfo {
            service_name,
            k8s,
            seq: next_seq(),
            ..self.clone()
        }
    }
}

/// How much of a process's environment is read at most, and the longest service name kept.
const ENVIRON_BYTES: u64 = 128 * 1024;
const MAX_SERVICE_NAME: usize = 128;

/// `OTEL_SERVICE_NAME`, else `service.name` of `OTEL_RESOURCE_ATTRIBUTES`, from
/// `<dir>/environ` (the environment the process started with); `None` when unset, empty or
/// unreadable. Only these two variables are looked at, and nothing else is kept.
fn env_service_name(dir: &Path) -> Option<String> {
    use std::io::Read;
    let mut environ = Vec::new();
    std::fs::File::open(dir.join("environ"))
        .ok()?
        .take(ENVIRON_BYTES)
        .read_to_end(&mut environ)
        .ok()?;
    service_name_in_environ(&environ)
}

fn service_name_in_environ(environ: &[u8]) -> Option<String> {
    let var = |name: &[u8]| {
        environ
            .split(|&b| b == 0)
            .find_map(|entry| entry.strip_prefix(name)?.strip_prefix(b"="))
    };
    let keep = |v: &[u8]| {
        let v = String::from_utf8_lossy(v).trim().to_owned();
        (!v.is_empty() && v.len() <= MAX_SERVICE_NAME && !v.chars().any(char::is_control))
            .then_some(v)
    };
    if let Some(name) = var(b"OTEL_SERVICE_NAME").and_then(keep) {
        return Some(name);
    }
    var(b"OTEL_RESOURCE_ATTRIBUTES")?
        .split(|&b| b == b',')
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            pair.strip_prefix(b"service.name=")
        })
        .and_then(keep)
}

/// Process identities by tgid, read once and dropped when the process exits. With a cluster
/// view, an entry's Kubernetes identity is looked up again whenever the view changes, so a pod
/// created after its process was first seen is named within one watch event.
pub struct ProcessCache {
    proc_root: std::path::PathBuf,
    by_pid: HashMap<u32, Entry>,
    cluster: Option<Arc<dyn ClusterView>>,
    /// cgroup id → path, for processes gone before their `/proc` entry was read (made on
    /// first need), and when it was last walked.
    cgroups: Option<(cgroup_paths::CgroupPaths, std::time::Instant)>,
}

/// At most one walk of the cgroup tree per this long, however many unknown ids show up.
const CGROUP_WALK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

struct Entry {
    info: Arc<ProcessInfo>,
    /// The cluster view's generation when `info.k8s` was looked up.
    generation: u64,
    /// The kernel's cgroup id for the process when it was read (0: not known).
    cgroup_id: u64,
}

impl ProcessCache {
    pub fn new(proc_root: impl Into<std::path::PathBuf>) -> Self {
        ProcessCache {
            proc_root: proc_root.into(),
            by_pid: HashMap::new(),
            cluster: None,
            cgroups: None,
        }
    }

    /// Names processes' pods through `cluster` from now on.
    pub fn set_cluster(&mut self, cluster: Arc<dyn ClusterView>) {
        self.cluster = Some(cluster);
        self.by_pid.clear();
    }

    pub fn get(&mut self, pid: u32, comm_hint: Option<&str>) -> Arc<ProcessInfo> {
        self.get_in(pid, comm_hint, 0)
    }

    /// Like [`ProcessCache::get`], for a process the kernel saw in cgroup `cgroup_id` (v2 id,
    /// 0 if unknown): used when the process has exited before it could be read, and to notice
    /// that a cached identity is stale. A cgroup other than the one the entry was read in
    /// means the pid now names another process (reused after an exit no event reported: the
    /// kernel only reports exits of processes still in its recent-sockets table) or that the
    /// process moved (`echo $$ > cgroup.procs; exec …`): either way it is read again.
    pub fn get_in(
        &mut self,
        pid: u32,
        comm_hint: Option<&str>,
        cgroup_id: u64,
    ) -> Arc<ProcessInfo> {
        if cgroup_id != 0 {
            match self.by_pid.get_mut(&pid) {
                Some(entry) if entry.cgroup_id == 0 => entry.cgroup_id = cgroup_id,
                Some(entry) if entry.cgroup_id != cgroup_id => {
                    self.by_pid.remove(&pid);
                }
                _ => {}
            }
        }
        if cgroup_id != 0 && !self.by_pid.contains_key(&pid) {
            let gone = !self.proc_root.join(pid.to_string()).exists();
            if gone {
                let path = self.cgroup_path(cgroup_id);
                let info = ProcessInfo::read_with(&self.proc_root, pid, comm_hint, || path);
                return self.insert(pid, info, cgroup_id);
            }
        }
        let generation = self.cluster.as_ref().map_or(0, |c| c.generation());
        let root = &self.proc_root;
        let cluster = &self.cluster;
        let entry = self.by_pid.entry(pid).or_insert_with(|| {
            let info = ProcessInfo::read(root, pid, comm_hint);
            let k8s = cluster.as_ref().and_then(|c| lookup(c.as_ref(), &info));
            Entry {
                info: Arc::new(if k8s.is_some() {
                    info.with_k8s(k8s)
                } else {
                    info
                }),
                generation,
                cgroup_id,
            }
        });
        if entry.generation != generation {
            entry.generation = generation;
            if let Some(c) = cluster {
                let k8s = lookup(c.as_ref(), &entry.info);
                if k8s != entry.info.k8s {
                    entry.info = Arc::new(entry.info.with_k8s(k8s));
                }
            }
        }
        entry.info.clone()
    }

    fn insert(&mut self, pid: u32, info: ProcessInfo, cgroup_id: u64) -> Arc<ProcessInfo> {
        let generation = self.cluster.as_ref().map_or(0, |c| c.generation());
        let k8s = self
            .cluster
            .as_ref()
            .and_then(|c| lookup(c.as_ref(), &info));
        let info = Arc::new(if k8s.is_some() {
            info.with_k8s(k8s)
        } else {
            info
        });
        self.by_pid.insert(
            pid,
            Entry {
                info: info.clone(),
                generation,
                cgroup_id,
            },
        );
        info
    }

    /// The cgroup v2 path of `id`, walking the hierarchy again (at most once a second) when it
    /// is unknown.
    fn cgroup_path(&mut self, id: u64) -> Option<String> {
        let now = std::time::Instant::now();
        let (paths, walked) = self
            .cgroups
            .get_or_insert_with(|| (cgroup_paths::CgroupPaths::discover(), now));
        if paths.get(id).is_none() && now.duration_since(*walked) >= CGROUP_WALK_EVERY {
            paths.refresh();
            *walked = now;
        }
        paths.get(id).map(str::to_owned)
    }

    /// A newer identity for a process first seen as `info`, if the cluster view changed what
    /// it knows (None in standalone mode, after the process left the cache, or if unchanged).
    pub fn refreshed(&mut self, info: &Arc<ProcessInfo>) -> Option<Arc<ProcessInfo>> {
        let generation = self.cluster.as_ref()?.generation();
        let entry = self.by_pid.get(&info.pid)?;
        if entry.generation == generation && Arc::ptr_eq(&entry.info, info) {
            return None;
        }
        let fresh = self.get(info.pid, None);
        (!Arc::ptr_eq(&fresh, info)).then_some(fresh)
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

/// A cluster view for tests that names one address, as a workload of `shop/orders`.
#[cfg(test)]
pub(crate) mod testkit {
    use std::net::IpAddr;
    use std::sync::Arc;

    use super::{ClusterView, K8sIdentity, PeerName};

    /// Names `ip` as a pod of `shop/orders` behind `service_name`; knows no other address, no
    /// process identity, and every pod exists.
    pub(crate) struct OnePeer {
        pub generation: u64,
        pub ip: [u8; 4],
        pub service_name: &'static str,
    }

    impl ClusterView for OnePeer {
        fn generation(&self) -> u64 {
            self.generation
        }
        fn identity(&self, _: Option<&str>, _: Option<&str>) -> Option<Arc<K8sIdentity>> {
            None
        }
        fn peer(&self, ip: IpAddr) -> Option<PeerName> {
            (ip == IpAddr::from(self.ip)).then(|| PeerName {
                namespace: "shop".into(),
                owner_name: "orders".into(),
                service_name: self.service_name.into(),
            })
        }
        fn pod_exists(&self, _: &str, _: &str) -> bool {
            true
        }
        fn is_synced(&self) -> bool {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workload's own `OTEL_SERVICE_NAME` (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`)
    /// names it before its pod does, as its own SDK would.
    #[test]
    fn the_process_environment_names_the_service_first() {
        let env = |vars: &[&str]| service_name_in_environ(vars.join("\0").as_bytes());
        assert_eq!(
            env(&["PATH=/bin", "OTEL_SERVICE_NAME=checkout"]).as_deref(),
            Some("checkout")
        );
        assert_eq!(
            env(&["OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod, service.name=cart"])
                .as_deref(),
            Some("cart")
        );
        assert_eq!(
            env(&[
                "OTEL_SERVICE_NAME=a",
                "OTEL_RESOURCE_ATTRIBUTES=service.name=b"
            ])
            .as_deref(),
            Some("a")
        );
        assert_eq!(env(&["OTEL_SERVICE_NAME=", "XOTEL_SERVICE_NAME=x"]), None);
        assert_eq!(env(&["OTEL_SERVICE_NAME=a\tb"]), None);
        assert_eq!(
            env(&[&format!("OTEL_SERVICE_NAME={}", "x".repeat(200))]),
            None
        );
        let me = ProcessInfo::read(Path::new("/proc"), std::process::id(), None);
        let named = ProcessInfo {
            env_service_name: Some("checkout".into()),
            ..me
        };
        let pod = K8sIdentity {
            service_name: "storefront".into(),
            ..K8sIdentity::default()
        };
        assert_eq!(
            named.with_k8s(Some(Arc::new(pod.clone()))).service_name,
            "checkout"
        );
        let unnamed = ProcessInfo {
            env_service_name: None,
            ..named
        };
        assert_eq!(
            unnamed.with_k8s(Some(Arc::new(pod))).service_name,
            "storefront"
        );
    }

    #[test]
    fn reads_own_process() {
        let me = ProcessInfo::read(Path::new("/proc"), std::process::id(), None);
        assert!(!me.comm.is_empty());
        assert!(!me.exe_name.is_empty());
        assert_eq!(me.service_name, me.exe_name);
    }

    /// A cached identity is read again when the kernel reports the pid in another cgroup
    /// (the pid reused by another process, or the process moved), and kept otherwise.
    #[test]
    fn a_pid_seen_in_another_cgroup_is_read_again() {
        let mut cache = ProcessCache::new("/proc");
        let me = std::process::id();
        let first = cache.get_in(me, None, 111);
        assert_eq!(cache.get_in(me, None, 111).seq, first.seq, "cached");
        assert_eq!(cache.get(me, None).seq, first.seq, "no cgroup said: cached");
        let moved = cache.get_in(me, None, 222);
        assert_ne!(moved.seq, first.seq, "read again");
        assert_eq!(cache.get_in(me, None, 222).seq, moved.seq, "cached again");
        // An entry read without a cgroup takes the first one the kernel reports.
        cache.forget(me);
        let plain = cache.get(me, None);
        assert_eq!(cache.get_in(me, None, 333).seq, plain.seq);
        assert_ne!(cache.get_in(me, None, 444).seq, plain.seq);
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
