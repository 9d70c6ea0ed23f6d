//! The watch task's own state: small records from every watch, and the derivation of
//! [`PodInfo`] and [`PeerInfo`] from them (owner resolution, service names). Pure code: it
//! is fed [`Msg`]s and writes into an [`Attribution`]; no I/O, so it is tested directly.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::attribution::{Attribution, PeerInfo, PeerKind, PodInfo, Tables};
use super::convert::{describe_key, Key, Owner, PodRecord, ServiceRecord};
use super::KubeEvent;

/// The five watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Watch {
    /// Pods with `spec.nodeName=<this node>`: full detail.
    NodePods,
    /// All pods: IP → peer.
    Pods,
    /// ReplicaSets (metadata only): ReplicaSet → Deployment.
    ReplicaSets,
    /// Jobs (metadata only): Job → CronJob.
    Jobs,
    /// Services: ClusterIP → Service.
    Services,
}

impl Watch {
    fn index(self) -> usize {
        self as usize
    }

    /// What is watched, for messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Watch::NodePods => "pods on this node",
            Watch::Pods => "pods",
            Watch::ReplicaSets => "replicasets",
            Watch::Jobs => "jobs",
            Watch::Services => "services",
        }
    }

    /// The object kind, for [`KubeEvent::ObjectError`].
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Watch::NodePods | Watch::Pods => "Pod",
            Watch::ReplicaSets => "ReplicaSet",
            Watch::Jobs => "Job",
            Watch::Services => "Service",
        }
    }
}

/// One object's record, as the watch that saw it produces it.
#[derive(Clone, Debug)]
pub(crate) enum Record {
    Pod(Box<PodRecord>),
    /// A ReplicaSet's or a Job's controller.
    Owner(Option<Owner>),
    Service(ServiceRecord),
}

/// Why a watch failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The API server could not be reached or refused the request.
    Connection(String),
    /// The server answered, but with an object (or list) that cannot be used.
    Object(String),
}

/// What a watch task tells the model.
#[derive(Clone, Debug)]
pub(crate) enum Msg {
    /// A (re)list starts: objects not applied before `InitDone` are gone.
    Init(Watch),
    /// An object exists in this state. `record: None` when it could not be decoded: its
    /// previous state is kept (the error was reported separately).
    Apply {
        watch: Watch,
        key: Key,
        record: Option<Record>,
    },
    Delete {
        watch: Watch,
        key: Key,
    },
    /// The (re)list is complete.
    InitDone(Watch),
    Failed {
        watch: Watch,
        failure: Failure,
    },
    /// The API server answered this watch's probe after a connection failure. (A resumed
    /// watch on a quiet resource delivers nothing, so without the probe nothing would say
    /// that it works again.)
    Reachable(Watch),
}

/// A pod anywhere in the cluster, reduced to what its peer entry needs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ClusterPod {
    controller: Option<Owner>,
    app_name: Option<String>,
    ips: Vec<IpAddr>,
}

/// The model: records per watch and the peer entries derived so far.
pub(crate) struct Model {
    node_pods: HashMap<Key, PodRecord>,
    pods: HashMap<Key, ClusterPod>,
    replica_sets: HashMap<Key, Option<Owner>>,
    jobs: HashMap<Key, Option<Owner>>,
    services: HashMap<Key, ServiceRecord>,
    /// Cluster pods by (namespace, controller kind, controller name), for the pods whose
    /// peer entry depends on a ReplicaSet or Job, so an owner change re-derives only them.
    pods_by_controller: HashMap<(String, String, String), HashSet<String>>,
    /// Keys seen since the last `Init`, per watch, while a (re)list runs.
    relisting: [Option<HashSet<Key>>; 5],
    listed: [bool; 5],
    /// Per watch: `None` until it first reports, then whether its last report succeeded.
    healthy: [Option<bool>; 5],
    last_failure: Option<String>,
    /// The last connectivity state announced (`None`: nothing announced yet).
    announced: Option<bool>,
    synced_announced: bool,
    // Changes not yet written to the attribution.
    node_dirty: bool,
    dirty_pods: HashSet<Key>,
    dirty_services: HashSet<Key>,
    /// Derived state that lives in the attribution tables, remembered here to diff against.
    pod_peer_ips: HashMap<Key, Published>,
    service_peer_ips: HashMap<Key, Published>,
    /// Which pod (or Service) owns each published IP, so that a deleted pod never removes
    /// the entry of a newer pod that reuses its IP.
    pod_ip_owner: HashMap<IpAddr, Key>,
    service_ip_owner: HashMap<IpAddr, Key>,
}

impl Model {
    pub(crate) fn new() -> Model {
        Model {
            node_pods: HashMap::new(),
            pods: HashMap::new(),
            replica_sets: HashMap::new(),
            jobs: HashMap::new(),
            services: HashMap::new(),
            pods_by_controller: HashMap::new(),
            relisting: Default::default(),
            listed: [false; 5],
            healthy: [None; 5],
            last_failure: None,
            announced: None,
            synced_announced: false,
            node_dirty: false,
            dirty_pods: HashSet::new(),
            dirty_services: HashSet::new(),
            pod_peer_ips: HashMap::new(),
            service_peer_ips: HashMap::new(),
            pod_ip_owner: HashMap::new(),
            service_ip_owner: HashMap::new(),
        }
    }

    /// Applies one message. Call [`publish`](Self::publish) after a batch.
    pub(crate) fn handle(&mut self, msg: Msg, events: &dyn Fn(KubeEvent)) {
        match msg {
            Msg::Init(watch) => {
                // Emitted before any request is made, so it proves nothing about the server.
                self.relisting[watch.index()] = Some(HashSet::new());
            }
            Msg::Apply { watch, key, record } => {
                self.healthy[watch.index()] = Some(true);
                if let Some(seen) = &mut self.relisting[watch.index()] {
                    seen.insert(key.clone());
                }
                if let Some(record) = record {
                    self.apply(watch, key, record);
                }
            }
            Msg::Delete { watch, key } => {
                self.healthy[watch.index()] = Some(true);
                self.delete(watch, &key);
            }
            Msg::InitDone(watch) => {
                self.healthy[watch.index()] = Some(true);
                if let Some(seen) = self.relisting[watch.index()].take() {
                    for key in self.keys(watch) {
                        if !seen.contains(&key) {
                            self.delete(watch, &key);
                        }
                    }
                }
                self.listed[watch.index()] = true;
            }
            Msg::Reachable(watch) => self.healthy[watch.index()] = Some(true),
            Msg::Failed { watch, failure } => match failure {
                Failure::Connection(error) => {
                    self.healthy[watch.index()] = Some(false);
                    self.last_failure = Some(format!("watching {}: {error}", watch.describe()));
                }
                Failure::Object(error) => {
                    // The server answered: that is connectivity, whatever it said.
                    self.healthy[watch.index()] = Some(true);
                    events(KubeEvent::ObjectError {
                        kind: watch.kind(),
                        error,
                    });
                }
            },
        }
    }

    fn keys(&self, watch: Watch) -> Vec<Key> {
        match watch {
            Watch::NodePods => self.node_pods.keys().cloned().collect(),
            Watch::Pods => self.pods.keys().cloned().collect(),
            Watch::ReplicaSets => self.replica_sets.keys().cloned().collect(),
            Watch::Jobs => self.jobs.keys().cloned().collect(),
            Watch::Services => self.services.keys().cloned().collect(),
        }
    }

    fn apply(&mut self, watch: Watch, key: Key, record: Record) {
        match (watch, record) {
            (Watch::NodePods, Record::Pod(pod)) => {
                if self.node_pods.get(&key) != Some(&*pod) {
                    self.node_pods.insert(key, *pod);
                    self.node_dirty = true;
                }
            }
            (Watch::Pods, Record::Pod(pod)) => {
                let pod = ClusterPod {
                    controller: pod.controller,
                    app_name: pod.app_name,
                    ips: pod.ips,
                };
                if self.pods.get(&key) == Some(&pod) {
                    return; // a status-only update: nothing attribution reads changed
                }
                if let Some(old) = self.pods.remove(&key) {
                    self.unindex_pod(&key, &old);
                }
                self.index_pod(&key, &pod);
                self.pods.insert(key.clone(), pod);
                self.dirty_pods.insert(key);
            }
            (Watch::ReplicaSets, Record::Owner(owner)) => {
                self.set_owner(Watch::ReplicaSets, key, Some(owner));
            }
            (Watch::Jobs, Record::Owner(owner)) => self.set_owner(Watch::Jobs, key, Some(owner)),
            (Watch::Services, Record::Service(service)) => {
                if self.services.get(&key) != Some(&service) {
                    self.services.insert(key.clone(), service);
                    self.dirty_services.insert(key);
                }
            }
            // The watch tasks pair each watch with its record type; a mismatch is a bug
            // there, and ignoring it is safer than guessing.
            (watch, record) => {
                log::debug!("kubernetes: ignoring {record:?} from the {watch:?} watch");
            }
        }
    }

    fn delete(&mut self, watch: Watch, key: &Key) {
        match watch {
            Watch::NodePods => {
                if self.node_pods.remove(key).is_some() {
                    self.node_dirty = true;
                }
            }
            Watch::Pods => {
                if let Some(old) = self.pods.remove(key) {
                    self.unindex_pod(key, &old);
                    self.dirty_pods.insert(key.clone());
                }
            }
            Watch::ReplicaSets | Watch::Jobs => self.set_owner(watch, key.clone(), None),
            Watch::Services => {
                if self.services.remove(key).is_some() {
                    self.dirty_services.insert(key.clone());
                }
            }
        }
    }

    /// Records a ReplicaSet's or Job's controller (`None`: the object is gone) and marks the
    /// pods that resolve through it, if what they resolve to changed.
    fn set_owner(&mut self, watch: Watch, key: Key, owner: Option<Option<Owner>>) {
        let table = match watch {
            Watch::ReplicaSets => &mut self.replica_sets,
            _ => &mut self.jobs,
        };
        let before = table.get(&key).cloned();
        if before == owner {
            return; // the usual case: a status update of a ReplicaSet or Job
        }
        match owner {
            Some(owner) => table.insert(key.clone(), owner),
            None => table.remove(&key),
        };
        self.node_dirty = true;
        let (namespace, name) = key;
        let index = (namespace, watch.kind().to_owned(), name);
        if let Some(pods) = self.pods_by_controller.get(&index) {
            for pod in pods {
                self.dirty_pods.insert((index.0.clone(), pod.clone()));
            }
        }
    }

    fn index_pod(&mut self, key: &Key, pod: &ClusterPod) {
        if let Some(c) = pod.controller.as_ref().filter(|c| is_indirect(&c.kind)) {
            self.pods_by_controller
                .entry((key.0.clone(), c.kind.clone(), c.name.clone()))
                .or_default()
                .insert(key.1.clone());
        }
    }

    fn unindex_pod(&mut self, key: &Key, pod: &ClusterPod) {
        if let Some(c) = pod.controller.as_ref().filter(|c| is_indirect(&c.kind)) {
            let index = (key.0.clone(), c.kind.clone(), c.name.clone());
            if let Some(set) = self.pods_by_controller.get_mut(&index) {
                set.remove(&key.1);
                if set.is_empty() {
                    self.pods_by_controller.remove(&index);
                }
            }
        }
    }

    /// The top owner of a pod whose controller is `controller`.
    fn top_owner(&self, namespace: &str, pod_name: &str, controller: Option<&Owner>) -> Owner {
        let through = |table: &HashMap<Key, Option<Owner>>, owner: &Owner, top: &str| {
            table
                .get(&(namespace.to_owned(), owner.name.clone()))
                .and_then(|o| o.as_ref())
                .filter(|o| o.kind == top)
                .cloned()
                .unwrap_or_else(|| owner.clone())
        };
        match controller {
            Some(c) if c.kind == "ReplicaSet" => through(&self.replica_sets, c, "Deployment"),
            Some(c) if c.kind == "Job" => through(&self.jobs, c, "CronJob"),
            Some(c) if c.kind == "StatefulSet" || c.kind == "DaemonSet" => c.clone(),
            // No controller, or one we do not model (a Node for mirror pods, custom
            // resources): the pod is its own workload.
            _ => Owner {
                kind: "Pod".to_owned(),
                name: pod_name.to_owned(),
            },
        }
    }

    fn pod_info(&self, pod: &PodRecord) -> PodInfo {
        let owner = self.top_owner(&pod.namespace, &pod.name, pod.controller.as_ref());
        PodInfo {
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            node_name: pod.node_name.clone(),
            service_name: pod.app_name.clone().unwrap_or_else(|| owner.name.clone()),
            owner_kind: owner.kind,
            owner_name: owner.name,
            containers: pod.containers.iter().cloned().collect(),
            labels: pod.labels.clone(),
        }
    }

    fn pod_peer(&self, key: &Key, pod: &ClusterPod) -> PeerInfo {
        let owner = self.top_owner(&key.0, &key.1, pod.controller.as_ref());
        PeerInfo {
            namespace: key.0.clone(),
            service_name: pod.app_name.clone().unwrap_or_else(|| owner.name.clone()),
            owner_kind: owner.kind,
            owner_name: owner.name,
            kind: PeerKind::Pod,
        }
    }

    /// Writes every pending change into `attribution` (one write lock, one generation bump
    /// if anything visible changed) and announces connectivity and sync transitions.
    pub(crate) fn publish(&mut self, attribution: &Attribution, events: &dyn Fn(KubeEvent)) {
        let node_pods = self.node_dirty.then(|| self.derive_node_pods());
        self.node_dirty = false;
        let pod_updates = self.derive_pod_peers();
        let service_updates = self.derive_service_peers();
        if node_pods.is_some() || !pod_updates.is_empty() || !service_updates.is_empty() {
            attribution.update(|tables| {
                let mut changed = false;
                if let Some(pods) = node_pods {
                    changed |= replace_node_pods(tables, pods);
                }
                for update in pod_updates {
                    changed = true;
                    update.write(&mut tables.pod_peers);
                }
                for update in service_updates {
                    changed = true;
                    update.write(&mut tables.service_peers);
                }
                changed
            });
        }
        self.announce(attribution, events);
    }

    fn derive_node_pods(&self) -> Vec<(PodInfo, Option<String>)> {
        self.node_pods
            .values()
            .map(|p| (self.pod_info(p), p.mirror_uid.clone()))
            .collect()
    }

    fn derive_pod_peers(&mut self) -> Vec<IpUpdate> {
        let derived: Vec<(Key, Option<Published>)> = std::mem::take(&mut self.dirty_pods)
            .into_iter()
            .map(|key| {
                let peer = self
                    .pods
                    .get(&key)
                    .filter(|p| !p.ips.is_empty())
                    .map(|p| (p.ips.clone(), Arc::new(self.pod_peer(&key, p))));
                (key, peer)
            })
            .collect();
        diff_peers(derived, &mut self.pod_peer_ips, &mut self.pod_ip_owner)
    }

    fn derive_service_peers(&mut self) -> Vec<IpUpdate> {
        let derived: Vec<(Key, Option<Published>)> = std::mem::take(&mut self.dirty_services)
            .into_iter()
            .map(|key| {
                let peer = self
                    .services
                    .get(&key)
                    .filter(|s| !s.ips.is_empty())
                    .map(|s| {
                        let peer = PeerInfo {
                            namespace: key.0.clone(),
                            owner_kind: "Service".to_owned(),
                            owner_name: key.1.clone(),
                            service_name: key.1.clone(),
                            kind: PeerKind::Service,
                        };
                        (s.ips.clone(), Arc::new(peer))
                    });
                (key, peer)
            })
            .collect();
        diff_peers(
            derived,
            &mut self.service_peer_ips,
            &mut self.service_ip_owner,
        )
    }

    fn announce(&mut self, attribution: &Attribution, events: &dyn Fn(KubeEvent)) {
        let state = if self.healthy.contains(&Some(false)) {
            Some(false)
        } else if self.healthy.contains(&Some(true)) {
            Some(true)
        } else {
            None
        };
        if state.is_some() && state != self.announced {
            self.announced = state;
            attribution.set_connected(state == Some(true));
            if state == Some(true) {
                events(KubeEvent::Connected);
            } else {
                let error = self
                    .last_failure
                    .clone()
                    .unwrap_or_else(|| "unknown error".to_owned());
                events(KubeEvent::Disconnected { error });
            }
        }
        if !self.synced_announced && self.listed.iter().all(|l| *l) {
            self.synced_announced = true;
            attribution.set_synced();
            events(KubeEvent::Synced);
        }
    }

    /// Records a connection failure that happened before any watch could start (no client).
    pub(crate) fn client_failed(&mut self, error: String) {
        self.healthy = [Some(false); 5];
        self.last_failure = Some(error);
    }

    /// Clears the failure marks set by [`client_failed`](Self::client_failed) once a client
    /// exists: each watch reports for itself from then on.
    pub(crate) fn client_ready(&mut self) {
        for h in &mut self.healthy {
            if *h == Some(false) {
                *h = None;
            }
        }
    }
}

/// Whether a controller kind is resolved through another object (ReplicaSet → Deployment,
/// Job → CronJob).
fn is_indirect(kind: &str) -> bool {
    kind == "ReplicaSet" || kind == "Job"
}

/// A pod's or Service's IPs and the peer entry published for them.
type Published = (Vec<IpAddr>, Arc<PeerInfo>);

/// Turns freshly derived peers into table updates, for the keys whose entry changed.
fn diff_peers(
    derived: Vec<(Key, Option<Published>)>,
    published: &mut HashMap<Key, Published>,
    owners: &mut HashMap<IpAddr, Key>,
) -> Vec<IpUpdate> {
    let mut updates = Vec::new();
    for (key, new) in derived {
        // `Arc<PeerInfo>` compares by value, so an unchanged peer is skipped.
        if published.get(&key) == new.as_ref() {
            continue;
        }
        let old = published.remove(&key);
        updates.push(ip_update(&key, old, new.clone(), owners));
        if let Some(new) = new {
            published.insert(key, new);
        }
    }
    updates
}

/// Entries to remove and insert in one IP → peer table.
struct IpUpdate {
    remove: Vec<IpAddr>,
    insert: Vec<(IpAddr, Arc<PeerInfo>)>,
}

impl IpUpdate {
    fn write(self, table: &mut rustc_hash::FxHashMap<IpAddr, Arc<PeerInfo>>) {
        for ip in self.remove {
            table.remove(&ip);
        }
        table.extend(self.insert);
    }
}

/// Moves `key`'s IPs from `old` to `new`, updating who owns each IP. An IP is removed only
/// if `key` still owns it; the newest claimant of an IP wins.
fn ip_update(
    key: &Key,
    old: Option<Published>,
    new: Option<Published>,
    owners: &mut HashMap<IpAddr, Key>,
) -> IpUpdate {
    let mut update = IpUpdate {
        remove: Vec::new(),
        insert: Vec::new(),
    };
    let new_ips: &[IpAddr] = new.as_ref().map_or(&[], |(ips, _)| ips);
    for ip in old.iter().flat_map(|(ips, _)| ips) {
        if !new_ips.contains(ip) && owners.get(ip) == Some(key) {
            owners.remove(ip);
            update.remove.push(*ip);
        }
    }
    if let Some((ips, peer)) = new {
        for ip in ips {
            if let Some(previous) = owners.insert(ip, key.clone()) {
                if &previous != key {
                    log::debug!(
                        "kubernetes: IP {ip} moves from {} to {}",
                        describe_key(&previous),
                        describe_key(key)
                    );
                }
            }
            update.insert.push((ip, peer.clone()));
        }
    }
    update
}

/// Replaces the node-pod tables with `pods` (each with its mirror-pod alias), keeping the
/// existing `Arc` of every pod whose info did not change. Returns whether any lookup answers
/// differently now.
fn replace_node_pods(tables: &mut Tables, pods: Vec<(PodInfo, Option<String>)>) -> bool {
    let mut by_uid = rustc_hash::FxHashMap::default();
    let mut by_container = rustc_hash::FxHashMap::default();
    for (info, mirror_uid) in pods {
        let pod = match tables.pods_by_uid.get(&info.uid) {
            Some(existing) if **existing == info => existing.clone(),
            _ => Arc::new(info),
        };
        for id in pod.containers.keys() {
            by_container.insert(id.clone(), pod.clone());
        }
        if let Some(alias) = mirror_uid {
            by_uid.insert(alias, pod.clone());
        }
        by_uid.insert(pod.uid.clone(), pod);
    }
    let changed = !same_pods(&tables.pods_by_uid, &by_uid)
        || !same_pods(&tables.pods_by_container, &by_container);
    tables.pods_by_uid = by_uid;
    tables.pods_by_container = by_container;
    changed
}

fn same_pods(
    a: &rustc_hash::FxHashMap<String, Arc<PodInfo>>,
    b: &rustc_hash::FxHashMap<String, Arc<PodInfo>>,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| Arc::ptr_eq(v, w) || v == w))
}

#[cfg(test)]
mod tests;
