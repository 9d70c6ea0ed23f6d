use std::cell::RefCell;

use super::*;

fn key(ns: &str, name: &str) -> Key {
    (ns.to_owned(), name.to_owned())
}

fn owner(kind: &str, name: &str) -> Option<Owner> {
    Some(Owner {
        kind: kind.to_owned(),
        name: name.to_owned(),
    })
}

fn pod(ns: &str, name: &str, uid: &str, controller: Option<Owner>, ip: &str) -> PodRecord {
    PodRecord {
        uid: uid.to_owned(),
        namespace: ns.to_owned(),
        name: name.to_owned(),
        node_name: "node-a".to_owned(),
        controller,
        app_name: None,
        labels: Vec::new(),
        mirror_uid: None,
        containers: vec![(format!("{uid}-c"), "app".to_owned())],
        ips: vec![ip.parse().unwrap()],
    }
}

/// A model and an attribution, fed through the same path as the watch tasks.
struct Fixture {
    model: Model,
    attribution: Attribution,
    events: RefCell<Vec<KubeEvent>>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            model: Model::new(),
            attribution: Attribution::new(),
            events: RefCell::new(Vec::new()),
        }
    }

    fn feed(&mut self, msgs: impl IntoIterator<Item = Msg>) {
        let events = |e| self.events.borrow_mut().push(e);
        for msg in msgs {
            self.model.handle(msg, &events);
        }
        self.model.publish(&self.attribution, &events);
    }

    fn pod_both(&mut self, p: PodRecord) {
        let k = key(&p.namespace, &p.name);
        self.feed([
            apply(Watch::NodePods, k.clone(), Record::Pod(Box::new(p.clone()))),
            apply(Watch::Pods, k, Record::Pod(Box::new(p))),
        ]);
    }

    fn owner_of(&self, uid: &str) -> (String, String, String) {
        let (p, _) = self.attribution.pod(Some(uid), None).expect("pod known");
        (
            p.owner_kind.clone(),
            p.owner_name.clone(),
            p.service_name.clone(),
        )
    }

    fn peer(&self, ip: &str) -> Option<(String, String, String, PeerKind)> {
        self.attribution.peer(ip.parse().unwrap()).map(|p| {
            (
                p.owner_kind.clone(),
                p.owner_name.clone(),
                p.service_name.clone(),
                p.kind,
            )
        })
    }
}

fn apply(watch: Watch, key: Key, record: Record) -> Msg {
    Msg::Apply {
        watch,
        key,
        record: Some(record),
    }
}

fn s(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.to_owned(), b.to_owned(), c.to_owned())
}

#[test]
fn owners_resolve_through_replicasets_and_jobs_in_any_order() {
    let mut f = Fixture::new();
    // The pod arrives before its ReplicaSet: it is first attributed to the ReplicaSet.
    f.pod_both(pod(
        "shop",
        "web-abc-1",
        "u1",
        owner("ReplicaSet", "web-abc"),
        "10.0.0.1",
    ));
    assert_eq!(f.owner_of("u1"), s("ReplicaSet", "web-abc", "web-abc"));
    let g = f.attribution.generation();
    f.feed([apply(
        Watch::ReplicaSets,
        key("shop", "web-abc"),
        Record::Owner(owner("Deployment", "web")),
    )]);
    assert_eq!(f.owner_of("u1"), s("Deployment", "web", "web"));
    assert_eq!(
        f.peer("10.0.0.1"),
        Some((
            "Deployment".into(),
            "web".into(),
            "web".into(),
            PeerKind::Pod
        ))
    );
    assert!(f.attribution.generation() > g);

    // A ReplicaSet status update (same owner) changes nothing visible.
    let g = f.attribution.generation();
    f.feed([apply(
        Watch::ReplicaSets,
        key("shop", "web-abc"),
        Record::Owner(owner("Deployment", "web")),
    )]);
    assert_eq!(f.attribution.generation(), g);

    // Job → CronJob; a Job without a CronJob is its own top owner.
    f.feed([
        apply(
            Watch::Jobs,
            key("shop", "report-28000000"),
            Record::Owner(owner("CronJob", "report")),
        ),
        apply(Watch::Jobs, key("shop", "migrate"), Record::Owner(None)),
    ]);
    f.pod_both(pod(
        "shop",
        "report-28000000-x",
        "u2",
        owner("Job", "report-28000000"),
        "10.0.0.2",
    ));
    f.pod_both(pod(
        "shop",
        "migrate-y",
        "u3",
        owner("Job", "migrate"),
        "10.0.0.3",
    ));
    assert_eq!(f.owner_of("u2"), s("CronJob", "report", "report"));
    assert_eq!(f.owner_of("u3"), s("Job", "migrate", "migrate"));

    // StatefulSet and DaemonSet are top owners; a Node (mirror pod) or nothing is not.
    f.pod_both(pod(
        "db",
        "pg-0",
        "u4",
        owner("StatefulSet", "pg"),
        "10.0.0.4",
    ));
    f.pod_both(pod(
        "kube-system",
        "proxy-z",
        "u5",
        owner("DaemonSet", "proxy"),
        "10.0.0.5",
    ));
    f.pod_both(pod(
        "kube-system",
        "etcd-node-a",
        "u6",
        owner("Node", "node-a"),
        "10.0.0.6",
    ));
    f.pod_both(pod("default", "debug", "u7", None, "10.0.0.7"));
    assert_eq!(f.owner_of("u4"), s("StatefulSet", "pg", "pg"));
    assert_eq!(f.owner_of("u5"), s("DaemonSet", "proxy", "proxy"));
    assert_eq!(f.owner_of("u6"), s("Pod", "etcd-node-a", "etcd-node-a"));
    assert_eq!(f.owner_of("u7"), s("Pod", "debug", "debug"));

    // The ReplicaSet goes away: the pod falls back to it.
    f.feed([Msg::Delete {
        watch: Watch::ReplicaSets,
        key: key("shop", "web-abc"),
    }]);
    assert_eq!(f.owner_of("u1"), s("ReplicaSet", "web-abc", "web-abc"));
    assert_eq!(
        f.peer("10.0.0.1"),
        Some((
            "ReplicaSet".into(),
            "web-abc".into(),
            "web-abc".into(),
            PeerKind::Pod
        ))
    );
}

#[test]
fn app_label_names_the_service_and_mirror_pods_answer_to_their_hash() {
    let mut f = Fixture::new();
    let mut p = pod(
        "kube-system",
        "etcd-node-a",
        "u1",
        owner("Node", "node-a"),
        "10.0.0.1",
    );
    p.app_name = Some("etcd".into());
    p.mirror_uid = Some("0123456789abcdef0123456789abcdef".into());
    f.pod_both(p);
    assert_eq!(f.owner_of("u1"), s("Pod", "etcd-node-a", "etcd"));
    let (by_hash, container) = f
        .attribution
        .pod(Some("0123456789abcdef0123456789abcdef"), Some("u1-c"))
        .unwrap();
    assert_eq!(
        (by_hash.uid.as_str(), container.as_deref()),
        ("u1", Some("app"))
    );
    assert_eq!(f.attribution.pod_count(), 1);
}

#[test]
fn relist_removes_what_is_gone_and_keeps_what_is_undecodable() {
    let mut f = Fixture::new();
    f.feed([Msg::Init(Watch::NodePods)]);
    for (name, uid) in [("a", "ua"), ("b", "ub"), ("c", "uc")] {
        let p = pod("ns", name, uid, None, "10.0.0.1");
        f.feed([apply(
            Watch::NodePods,
            key("ns", name),
            Record::Pod(Box::new(p)),
        )]);
    }
    f.feed([Msg::InitDone(Watch::NodePods)]);
    assert_eq!(f.attribution.pod_count(), 3);
    // Relist: `a` is listed, `b` is listed but cannot be decoded, `c` is gone.
    let a = pod("ns", "a", "ua", None, "10.0.0.1");
    f.feed([
        Msg::Init(Watch::NodePods),
        apply(Watch::NodePods, key("ns", "a"), Record::Pod(Box::new(a))),
        Msg::Apply {
            watch: Watch::NodePods,
            key: key("ns", "b"),
            record: None,
        },
        Msg::InitDone(Watch::NodePods),
    ]);
    assert!(f.attribution.pod(Some("ua"), None).is_some());
    assert!(f.attribution.pod(Some("ub"), None).is_some());
    assert!(f.attribution.pod(Some("uc"), None).is_none());
    assert!(f.attribution.pod(None, Some("uc-c")).is_none());
    assert_eq!(f.attribution.pod_count(), 2);
}

#[test]
fn a_reused_ip_belongs_to_the_newer_pod() {
    let mut f = Fixture::new();
    let old = pod("ns", "old", "u1", None, "10.0.0.9");
    f.feed([apply(
        Watch::Pods,
        key("ns", "old"),
        Record::Pod(Box::new(old)),
    )]);
    let new = pod("ns", "new", "u2", None, "10.0.0.9");
    f.feed([apply(
        Watch::Pods,
        key("ns", "new"),
        Record::Pod(Box::new(new)),
    )]);
    // The old pod's delete arrives late; the IP stays with the new pod.
    f.feed([Msg::Delete {
        watch: Watch::Pods,
        key: key("ns", "old"),
    }]);
    assert_eq!(
        f.peer("10.0.0.9"),
        Some(("Pod".into(), "new".into(), "new".into(), PeerKind::Pod))
    );
    f.feed([Msg::Delete {
        watch: Watch::Pods,
        key: key("ns", "new"),
    }]);
    assert_eq!(f.peer("10.0.0.9"), None);
}

#[test]
fn services_win_over_pods_and_follow_deletes() {
    let mut f = Fixture::new();
    let svc = ServiceRecord {
        ips: vec!["10.96.0.10".parse().unwrap()],
    };
    f.feed([apply(
        Watch::Services,
        key("shop", "db"),
        Record::Service(svc),
    )]);
    assert_eq!(
        f.peer("10.96.0.10"),
        Some((
            "Service".into(),
            "db".into(),
            "db".into(),
            PeerKind::Service
        ))
    );
    f.feed([Msg::Delete {
        watch: Watch::Services,
        key: key("shop", "db"),
    }]);
    assert_eq!(f.peer("10.96.0.10"), None);
    assert_eq!(f.attribution.peer_count(), 0);
}

#[test]
fn connectivity_and_sync_are_announced_once_per_change() {
    let mut f = Fixture::new();
    f.feed([Msg::Failed {
        watch: Watch::Pods,
        failure: Failure::Connection("connection refused".into()),
    }]);
    f.feed([Msg::Failed {
        watch: Watch::Jobs,
        failure: Failure::Connection("connection refused".into()),
    }]);
    assert!(!f.attribution.is_connected());
    for watch in [
        Watch::NodePods,
        Watch::Pods,
        Watch::ReplicaSets,
        Watch::Jobs,
        Watch::Services,
    ] {
        f.feed([Msg::Init(watch), Msg::InitDone(watch)]);
    }
    f.feed([Msg::Failed {
        watch: Watch::Services,
        failure: Failure::Object("Service a/b: bad".into()),
    }]);
    assert!(f.attribution.is_connected());
    assert!(f.attribution.is_synced());
    assert_eq!(
        f.events.borrow().as_slice(),
        [
            KubeEvent::Disconnected {
                error: "watching pods: connection refused".into()
            },
            KubeEvent::Connected,
            KubeEvent::Synced,
            KubeEvent::ObjectError {
                kind: "Service",
                error: "Service a/b: bad".into()
            },
        ]
    );
}
