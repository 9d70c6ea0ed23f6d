//! What the rest of the agent reads: pods on this node by UID or container id, and peers
//! (pods and Services anywhere in the cluster) by IP. Written only by the watch task.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use rustc_hash::FxHashMap;

/// A pod running on this node, with its workload resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.uid`.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `spec.nodeName`.
    pub node_name: String,
    /// The top owner's kind: `Deployment` (through its ReplicaSet), `CronJob` (through its
    /// Job), `StatefulSet`, `DaemonSet`, `Job`, `ReplicaSet` (one no Deployment owns), or
    /// `Pod` for a pod no known controller owns (then `owner_name` is the pod's name).
    pub owner_kind: String,
    /// The top owner's name.
    pub owner_name: String,
    /// The label `app.kubernetes.io/name`, else `owner_name`.
    pub service_name: String,
    /// The pod's labels (bounded, sorted by key).
    pub labels: Vec<(String, String)>,
    /// Container id (the hex part of `containerd://<id>`, `cri-o://<id>`, `docker://<id>`)
    /// → container name, for regular, init and ephemeral containers that have started.
    pub containers: BTreeMap<String, String>,
}

/// What a remote IP address is, when it belongs to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// A pod's IP (`status.podIPs`).
    Pod,
    /// A Service's ClusterIP (`spec.clusterIPs`).
    Service,
}

/// A peer workload, for labelling the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub namespace: String,
    /// For a pod, its top owner's kind (as [`PodInfo::owner_kind`]); for a Service, `Service`.
    pub owner_kind: String,
    /// For a pod, its top owner's name; for a Service, the Service's name.
    pub owner_name: String,
    /// For a Service, its name; for a pod, the pod's `service_name` (label
    /// `app.kubernetes.io/name`, else the owner's name).
    pub service_name: String,
    pub kind: PeerKind,
}

/// Kubernetes attribution shared between the watch task (the only writer) and the pipeline
/// (readers). Cloning is cheap: all clones share one state.
///
/// A new `Attribution` knows nothing: every lookup answers `None` until [`run`] fills it, so
/// standalone mode can hold one without a cluster.
///
/// [`run`]: super::run
#[derive(Clone, Default)]
pub struct Attribution {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    tables: RwLock<Tables>,
    generation: AtomicU64,
    synced: AtomicBool,
    connected: AtomicBool,
}

/// The lookup tables. Pods appear once per key that finds them (UID, mirror-pod hash,
/// container ids), always as the same `Arc`.
#[derive(Default)]
pub(crate) struct Tables {
    pub(crate) pods_by_uid: FxHashMap<String, Arc<PodInfo>>,
    pub(crate) pods_by_container: FxHashMap<String, Arc<PodInfo>>,
    pub(crate) pod_peers: FxHashMap<IpAddr, Arc<PeerInfo>>,
    pub(crate) service_peers: FxHashMap<IpAddr, Arc<PeerInfo>>,
}

impl std::fmt::Debug for Attribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables = self.read();
        f.debug_struct("Attribution")
            .field("generation", &self.generation())
            .field("synced", &self.is_synced())
            .field("connected", &self.is_connected())
            .field("pods", &tables.pods_by_uid.len())
            .field("pod_peers", &tables.pod_peers.len())
            .field("service_peers", &tables.service_peers.len())
            .finish()
    }
}

impl Attribution {
    /// An empty attribution: every pod and peer unknown, not synced, not connected.
    pub fn new() -> Attribution {
        Attribution::default()
    }

    /// The pod a process runs in: by pod UID (from its cgroup, see
    /// [`cgroup::pod_uid`](crate::metadata::cgroup::pod_uid)) first, else by container id.
    /// Also returns the container's name when `container_id` is one of the pod's containers.
    pub fn pod(
        &self,
        pod_uid: Option<&str>,
        container_id: Option<&str>,
    ) -> Option<(Arc<PodInfo>, Option<String>)> {
        let tables = self.read();
        let pod = pod_uid
            .and_then(|uid| tables.pods_by_uid.get(uid))
            .or_else(|| container_id.and_then(|id| tables.pods_by_container.get(id)))?
            .clone();
        drop(tables);
        let container = container_id.and_then(|id| pod.containers.get(id).cloned());
        Some((pod, container))
    }

    /// The workload behind a remote address: a Service's ClusterIP, else a pod's IP.
    pub fn peer(&self, ip: IpAddr) -> Option<Arc<PeerInfo>> {
        let ip = canonical_ip(ip);
        let tables = self.read();
        tables
            .service_peers
            .get(&ip)
            .or_else(|| tables.pod_peers.get(&ip))
            .cloned()
    }

    /// Increases on every change to what [`pod`](Self::pod) or [`peer`](Self::peer) answer,
    /// so caches of derived labels know when to refresh. Status-only pod updates that change
    /// no answer do not bump it.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Whether every watch has listed its objects at least once (stays true afterwards).
    pub fn is_synced(&self) -> bool {
        self.inner.synced.load(Ordering::Acquire)
    }

    /// Whether the API server answers every watch right now.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// Number of pods on this node that are known.
    pub fn pod_count(&self) -> usize {
        let tables = self.read();
        // Mirror pods are reachable under two keys; count pods, not keys.
        let mut uids: Vec<&str> = tables
            .pods_by_uid
            .values()
            .map(|p| p.uid.as_str())
            .collect();
        uids.sort_unstable();
        uids.dedup();
        uids.len()
    }

    /// Number of IPs with a known peer (pods and Services).
    pub fn peer_count(&self) -> usize {
        let tables = self.read();
        tables.pod_peers.len() + tables.service_peers.len()
    }

    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        // Writers never panic while holding the lock, and the tables stay consistent even if
        // one did (each write is a set of independent map updates), so poisoning is ignored.
        self.inner
            .tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `update` on the tables; bumps the generation if it returns `true`. The bump
    /// happens while the write lock is held, so a reader that sees the new generation
    /// also sees the new tables.
    pub(crate) fn update(&self, update: impl FnOnce(&mut Tables) -> bool) {
        let mut tables = self
            .inner
            .tables
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if update(&mut tables) {
            self.inner.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn set_synced(&self) {
        self.inner.synced.store(true, Ordering::Release);
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.inner.connected.store(connected, Ordering::Release);
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket reports for an
/// IPv4 peer) are looked up as the IPv4 address the API reports.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

impl Attribution {
    /// Whether a pod of that namespace and name is on this node now.
    pub fn has_pod(&self, namespace: &str, name: &str) -> bool {
        self.read()
            .pods_by_uid
            .values()
            .any(|p| p.name == name && p.namespace == namespace)
    }
}

/// The view the capture pipeline and the exporters read.
impl crate::metadata::ClusterView for Attribution {
    fn generation(&self) -> u64 {
        Attribution::generation(self)
    }

    fn identity(
        &self,
        pod_uid: Option<&str>,
        container_id: Option<&str>,
    ) -> Option<Arc<crate::metadata::K8sIdentity>> {
        let (pod, container) = self.pod(pod_uid, container_id)?;
        Some(Arc::new(crate::metadata::K8sIdentity {
            namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            container_name: container.unwrap_or_default(),
            node_name: pod.node_name.clone(),
            owner_kind: pod.owner_kind.clone(),
            owner_name: pod.owner_name.clone(),
            service_name: pod.service_name.clone(),
            labels: pod.labels.clone(),
        }))
    }

    fn peer(&self, ip: IpAddr) -> Option<crate::metadata::PeerName> {
        let peer = Attribution::peer(self, ip)?;
        Some(crate::metadata::PeerName {
            namespace: peer.namespace.clone(),
            owner_name: peer.owner_name.clone(),
            service_name: peer.service_name.clone(),
        })
    }

    fn pod_exists(&self, namespace: &str, name: &str) -> bool {
        self.has_pod(namespace, name)
    }

    fn is_synced(&self) -> bool {
        Attribution::is_synced(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_attribution_knows_nothing() {
        let a = Attribution::new();
        assert!(a.pod(Some("uid"), Some("cid")).is_none());
        assert!(a.peer("10.0.0.1".parse().unwrap()).is_none());
        assert_eq!(a.generation(), 0);
        assert!(!a.is_synced());
        assert!(!a.is_connected());
    }

    #[test]
    fn lookups_by_uid_then_container_and_mapped_ipv4() {
        let a = Attribution::new();
        let pod = Arc::new(PodInfo {
            uid: "u1".into(),
            name: "web-1".into(),
            containers: [("c1".to_owned(), "app".to_owned())].into(),
            ..PodInfo::default()
        });
        let peer = Arc::new(PeerInfo {
            namespace: "shop".into(),
            owner_kind: "Deployment".into(),
            owner_name: "web".into(),
            service_name: "web".into(),
            kind: PeerKind::Pod,
        });
        a.update(|t| {
            t.pods_by_uid.insert("u1".into(), pod.clone());
            t.pods_by_container.insert("c1".into(), pod.clone());
            t.pod_peers
                .insert("10.0.0.7".parse().unwrap(), peer.clone());
            true
        });
        assert_eq!(a.generation(), 1);
        let (p, c) = a.pod(Some("u1"), Some("c1")).unwrap();
        assert_eq!((p.name.as_str(), c.as_deref()), ("web-1", Some("app")));
        let (p, c) = a.pod(None, Some("c1")).unwrap();
        assert_eq!((p.name.as_str(), c.as_deref()), ("web-1", Some("app")));
        let (p, c) = a.pod(Some("u1"), Some("other")).unwrap();
        assert_eq!((p.name.as_str(), c), ("web-1", None));
        assert!(a.pod(Some("nope"), None).is_none());
        assert_eq!(
            a.peer("::ffff:10.0.0.7".parse().unwrap()).as_deref(),
            Some(&*peer)
        );
        a.update(|_| false);
        assert_eq!(a.generation(), 1);
    }
}
