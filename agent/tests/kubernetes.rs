//! Kubernetes attribution against a real HTTP server speaking the list/watch protocol
//! (`tests/fixtures/kube_apiserver.py`): adds, updates, deletes, owner chains, peers,
//! an API server that is down at start, `410 Gone` relists, stalled watches and malformed
//! objects.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{wait_until, FakeKubeApi};
use periscope::metadata::kubernetes::{
    run, run_with_timing, Attribution, KubeEvent, KubeSettings, PeerInfo, PeerKind, PodInfo,
    WatchTiming,
};
use serde_json::{json, Value};

const NODE: &str = "node-a";
const CID_WEB: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const CID_SIDECAR: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const CID_REPORT: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const UID_WEB: &str = "0a000000-0000-4000-8000-000000000001";
const UID_REPORT: &str = "0a000000-0000-4000-8000-000000000002";
const UID_DB: &str = "0a000000-0000-4000-8000-000000000003";

/// Short timeouts so stalls and retries show within seconds (bookmarks come every 0.5 s,
/// well inside the 2 s read timeout, so healthy watches are never taken for stalled).
fn test_timing() -> WatchTiming {
    WatchTiming {
        watch_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
    }
}

/// The watch task on its own runtime, and the events it reported.
struct Watching {
    attribution: Attribution,
    events: Arc<Mutex<Vec<KubeEvent>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Watching {
    fn start(api: &FakeKubeApi, timing: Option<WatchTiming>) -> Watching {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let attribution = Attribution::new();
        let events = Arc::new(Mutex::new(Vec::new()));
        let settings = KubeSettings {
            api_url: Some(api.api_url()),
            node_name: NODE.to_owned(),
        };
        let sink = events.clone();
        let report = move |e: KubeEvent| sink.lock().unwrap().push(e);
        match timing {
            Some(timing) => runtime.spawn(run_with_timing(
                settings,
                timing,
                attribution.clone(),
                report,
            )),
            None => runtime.spawn(run(settings, attribution.clone(), report)),
        };
        Watching {
            attribution,
            events,
            _runtime: runtime,
        }
    }

    fn events(&self) -> Vec<KubeEvent> {
        self.events.lock().unwrap().clone()
    }

    fn object_errors(&self) -> Vec<(&'static str, String)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                KubeEvent::ObjectError { kind, error } => Some((kind, error)),
                _ => None,
            })
            .collect()
    }

    fn pod(&self, uid: &str) -> Option<PodInfo> {
        self.attribution
            .pod(Some(uid), None)
            .map(|(p, _)| (*p).clone())
    }

    fn peer(&self, ip: &str) -> Option<PeerInfo> {
        let ip: IpAddr = ip.parse().unwrap();
        self.attribution.peer(ip).map(|p| (*p).clone())
    }

    /// Waits up to `secs` for `condition`; on timeout fails with `what`, the events and the
    /// server's output.
    fn wait(&self, api: &FakeKubeApi, secs: u64, what: &str, condition: impl FnMut() -> bool) {
        if !wait_until(
            Duration::from_secs(secs),
            Duration::from_millis(20),
            condition,
        ) {
            panic!(
                "timed out after {secs} s waiting for: {what}\nevents: {:?}\nattribution: {:?}\nserver log:\n{}",
                self.events(),
                self.attribution,
                api.log()
            );
        }
    }

    fn wait_synced(&self, api: &FakeKubeApi) {
        self.wait(api, 15, "the first sync", || self.attribution.is_synced());
    }
}

fn pod(namespace: &str, name: &str, uid: &str, node: Option<&str>, ip: Option<&str>) -> Value {
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {},
        },
        "spec": {
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
            "restartPolicy": "Always",
            "serviceAccountName": "default",
        },
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    });
    if let Some(node) = node {
        p["spec"]["nodeName"] = node.into();
    }
    if let Some(ip) = ip {
        p["status"]["phase"] = "Running".into();
        p["status"]["hostIP"] = "192.0.2.10".into();
        p["status"]["podIP"] = ip.into();
        p["status"]["podIPs"] = json!([{"ip": ip}]);
    }
    p
}

fn owned_by(mut object: Value, kind: &str, name: &str) -> Value {
    let api_version = match kind {
        "ReplicaSet" | "Deployment" | "StatefulSet" | "DaemonSet" => "apps/v1",
        _ => "batch/v1",
    };
    object["metadata"]["ownerReferences"] = json!([{
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": format!("{name}-uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    object
}

fn with_label(mut object: Value, key: &str, value: &str) -> Value {
    object["metadata"]["labels"][key] = value.into();
    object
}

fn with_containers(mut p: Value, containers: &[(&str, &str)]) -> Value {
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(name, id)| {
            json!({
                "name": name,
                "containerID": format!("containerd://{id}"),
                "image": "registry.example/app:1",
                "imageID": "registry.example/app@sha256:00",
                "ready": true,
                "restartCount": 0,
                "started": true,
                "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}},
            })
        })
        .collect();
    p["status"]["containerStatuses"] = statuses.into();
    p
}

fn replica_set(namespace: &str, name: &str, deployment: &str) -> Value {
    owned_by(
        json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": deployment}}},
            "status": {"replicas": 1},
        }),
        "Deployment",
        deployment,
    )
}

fn job(namespace: &str, name: &str, cron_job: Option<&str>) -> Value {
    let j = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"template": {"spec": {"containers": [{"name": "job", "image": "x"}]}}},
        "status": {"active": 1},
    });
    match cron_job {
        Some(c) => owned_by(j, "CronJob", c),
        None => j,
    }
}

fn service(namespace: &str, name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": [{"port": 5432, "protocol": "TCP", "targetPort": 5432}],
        },
    })
}

fn apply(api: &FakeKubeApi, object: &Value) -> u64 {
    api.apply(&object.to_string())
}

fn web_pod() -> Value {
    let p = pod(
        "shop",
        "web-7d4b9c-x1",
        UID_WEB,
        Some(NODE),
        Some("10.244.1.5"),
    );
    let p = with_label(p, "app.kubernetes.io/name", "storefront");
    let p = with_containers(p, &[("app", CID_WEB), ("sidecar", CID_SIDECAR)]);
    owned_by(p, "ReplicaSet", "web-7d4b9c")
}

/// The cluster most tests start from: a Deployment's pod and a CronJob's pod on this node,
/// a StatefulSet's pod on another node, a Service and a headless Service.
fn seed(api: &FakeKubeApi) {
    apply(api, &replica_set("shop", "web-7d4b9c", "web"));
    apply(api, &web_pod());
    apply(api, &job("shop", "report-29000000", Some("report")));
    let report = pod(
        "shop",
        "report-29000000-q2w",
        UID_REPORT,
        Some(NODE),
        Some("10.244.1.6"),
    );
    let report = with_containers(report, &[("report", CID_REPORT)]);
    apply(api, &owned_by(report, "Job", "report-29000000"));
    let db = pod("data", "db-0", UID_DB, Some("node-b"), Some("10.244.2.7"));
    apply(api, &owned_by(db, "StatefulSet", "db"));
    apply(api, &service("data", "db", "10.96.0.20"));
    apply(api, &service("data", "db-headless", "None"));
}

fn peer(namespace: &str, kind: &str, name: &str, service: &str, peer_kind: PeerKind) -> PeerInfo {
    PeerInfo {
        namespace: namespace.into(),
        owner_kind: kind.into(),
        owner_name: name.into(),
        service_name: service.into(),
        kind: peer_kind,
    }
}

#[test]
fn follows_pods_owners_peers_and_services() {
    let api = FakeKubeApi::start();
    seed(&api);
    let w = Watching::start(&api, Some(test_timing()));
    w.wait_synced(&api);

    let expected_web = PodInfo {
        uid: UID_WEB.into(),
        namespace: "shop".into(),
        name: "web-7d4b9c-x1".into(),
        node_name: NODE.into(),
        owner_kind: "Deployment".into(),
        owner_name: "web".into(),
        service_name: "storefront".into(),
        labels: vec![("app.kubernetes.io/name".into(), "storefront".into())],
        containers: [
            (CID_WEB.to_owned(), "app".to_owned()),
            (CID_SIDECAR.to_owned(), "sidecar".to_owned()),
        ]
        .into(),
    };
    assert_eq!(w.pod(UID_WEB), Some(expected_web.clone()));
    let (by_container, name) = w.attribution.pod(None, Some(CID_SIDECAR)).unwrap();
    assert_eq!(
        (&*by_container, name.as_deref()),
        (&expected_web, Some("sidecar"))
    );
    let report = w.pod(UID_REPORT).unwrap();
    assert_eq!(
        (
            report.owner_kind.as_str(),
            report.owner_name.as_str(),
            report.service_name.as_str()
        ),
        ("CronJob", "report", "report")
    );
    // Another node's pod is a peer, not a local pod.
    assert_eq!(w.pod(UID_DB), None);
    assert_eq!(w.attribution.pod_count(), 2);
    assert_eq!(
        w.peer("10.244.1.5"),
        Some(peer(
            "shop",
            "Deployment",
            "web",
            "storefront",
            PeerKind::Pod
        ))
    );
    assert_eq!(
        w.peer("10.244.2.7"),
        Some(peer("data", "StatefulSet", "db", "db", PeerKind::Pod))
    );
    assert_eq!(
        w.peer("10.96.0.20"),
        Some(peer("data", "Service", "db", "db", PeerKind::Service))
    );
    assert_eq!(w.peer("10.96.0.21"), None);
    assert_eq!(w.attribution.peer_count(), 4);
    assert!(w.attribution.is_connected());
    assert_eq!(w.events(), [KubeEvent::Connected, KubeEvent::Synced]);

    // What was asked: the node's pods by field selector; ReplicaSets and Jobs metadata only.
    let requests = api.requests();
    let has = |needle: &str| requests.iter().any(|r| r.contains(needle));
    assert!(has("fieldSelector=spec.nodeName%3Dnode-a"), "{requests:#?}");
    assert!(has("GET /apis/apps/v1/replicasets?") && has("GET /apis/batch/v1/jobs?"));
    for r in requests
        .iter()
        .filter(|r| r.contains("/replicasets") || r.contains("/jobs"))
    {
        assert!(r.ends_with("accept=meta"), "{r}");
    }
    assert!(has("watch=true") && has("allowWatchBookmarks=true") && has("timeoutSeconds=5"));
    // Only list and watch of these four collections: what the ClusterRole grants
    // (deploy/kubernetes/02-rbac.yaml, the chart's rbac.yaml), nothing more.
    let collections = [
        "GET /api/v1/pods?",
        "GET /api/v1/services?",
        "GET /apis/apps/v1/replicasets?",
        "GET /apis/batch/v1/jobs?",
    ];
    for r in &requests {
        assert!(
            collections.iter().any(|c| r.starts_with(c)),
            "a request the ClusterRole does not grant: {r}"
        );
    }

    // A label change renames the service, and bumps the generation.
    let generation = w.attribution.generation();
    apply(
        &api,
        &with_label(web_pod(), "app.kubernetes.io/name", "shop-frontend"),
    );
    w.wait(&api, 5, "the new service name", || {
        w.pod(UID_WEB)
            .is_some_and(|p| p.service_name == "shop-frontend")
            && w.peer("10.244.1.5")
                .is_some_and(|p| p.service_name == "shop-frontend")
    });
    assert!(w.attribution.generation() > generation);

    // A status-only update (a restart count) changes no answer: the same Arcs are served.
    let (web_before, _) = w.attribution.pod(Some(UID_WEB), None).unwrap();
    let peer_before = w.attribution.peer("10.244.1.5".parse().unwrap()).unwrap();
    let mut restarted = with_label(web_pod(), "app.kubernetes.io/name", "shop-frontend");
    restarted["status"]["containerStatuses"][0]["restartCount"] = 1.into();
    apply(&api, &restarted);
    // Applied after the update, and seen by both pod watches: once it shows, so has the
    // update.
    let marker_uid = "0a000000-0000-4000-8000-0000000000ff";
    apply(
        &api,
        &pod(
            "shop",
            "marker",
            marker_uid,
            Some(NODE),
            Some("10.244.1.99"),
        ),
    );
    w.wait(&api, 5, "the marker pod", || {
        w.pod(marker_uid).is_some() && w.peer("10.244.1.99").is_some()
    });
    let (web_after, _) = w.attribution.pod(Some(UID_WEB), None).unwrap();
    let peer_after = w.attribution.peer("10.244.1.5".parse().unwrap()).unwrap();
    assert!(Arc::ptr_eq(&web_before, &web_after));
    assert!(Arc::ptr_eq(&peer_before, &peer_after));

    // A pod scheduled later enters the node's watch as ADDED (selector transition).
    let late_uid = "0a000000-0000-4000-8000-000000000004";
    let pending = owned_by(
        pod("shop", "web-7d4b9c-x2", late_uid, None, None),
        "ReplicaSet",
        "web-7d4b9c",
    );
    apply(&api, &pending);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.pod(late_uid), None);
    let scheduled = owned_by(
        pod(
            "shop",
            "web-7d4b9c-x2",
            late_uid,
            Some(NODE),
            Some("10.244.1.9"),
        ),
        "ReplicaSet",
        "web-7d4b9c",
    );
    apply(&api, &scheduled);
    w.wait(&api, 5, "the scheduled pod", || {
        w.pod(late_uid)
            .is_some_and(|p| p.owner_kind == "Deployment" && p.service_name == "web")
    });

    // A pod whose ReplicaSet shows up only later resolves once it does.
    let rollout_uid = "0a000000-0000-4000-8000-000000000005";
    let rollout = owned_by(
        pod(
            "shop",
            "web-5f6a7b-y1",
            rollout_uid,
            Some(NODE),
            Some("10.244.1.10"),
        ),
        "ReplicaSet",
        "web-5f6a7b",
    );
    apply(&api, &rollout);
    w.wait(&api, 5, "the rollout pod", || w.pod(rollout_uid).is_some());
    assert_eq!(w.pod(rollout_uid).unwrap().owner_kind, "ReplicaSet");
    apply(&api, &replica_set("shop", "web-5f6a7b", "web"));
    w.wait(&api, 5, "the rollout pod's Deployment", || {
        w.pod(rollout_uid)
            .is_some_and(|p| p.owner_kind == "Deployment" && p.owner_name == "web")
    });
    assert_eq!(
        w.peer("10.244.1.10"),
        Some(peer("shop", "Deployment", "web", "web", PeerKind::Pod))
    );

    // Deletes remove pods (by UID and container id), peers and Services.
    api.delete("Pod", "shop", "web-7d4b9c-x1");
    api.delete("Service", "data", "db");
    api.delete("Pod", "data", "db-0");
    w.wait(&api, 5, "the deletes", || {
        w.pod(UID_WEB).is_none() && w.peer("10.96.0.20").is_none() && w.peer("10.244.2.7").is_none()
    });
    assert!(w.attribution.pod(None, Some(CID_WEB)).is_none());
    assert_eq!(w.peer("10.244.1.5"), None);
    // Left on this node: the CronJob's pod, the two late pods and the marker.
    assert_eq!(w.attribution.pod_count(), 4);
    assert!(w.object_errors().is_empty(), "{:?}", w.events());
}

#[test]
fn api_server_down_at_start_then_up() {
    let api = FakeKubeApi::start_down();
    seed(&api);
    // Default timing: the production backoff (0.5 s doubling) must bring it back quickly.
    let w = Watching::start(&api, None);
    w.wait(&api, 10, "a Disconnected event", || {
        w.events()
            .iter()
            .any(|e| matches!(e, KubeEvent::Disconnected { .. }))
    });
    assert!(!w.attribution.is_connected());
    assert!(!w.attribution.is_synced());
    assert_eq!(w.pod(UID_WEB), None);
    let KubeEvent::Disconnected { error } = &w.events()[0] else {
        panic!("first event: {:?}", w.events());
    };
    assert!(error.starts_with("watching "), "{error}");
    assert!(
        error.contains("Connection refused") || error.contains("connection refused"),
        "{error}"
    );

    let up_at = Instant::now();
    api.up();
    w.wait(&api, 10, "attribution after the server came up", || {
        w.pod(UID_WEB).is_some_and(|p| p.owner_kind == "Deployment") && w.attribution.is_synced()
    });
    eprintln!(
        "attribution {:?} after the API server came up",
        up_at.elapsed()
    );
    w.wait(&api, 35, "connected", || w.attribution.is_connected());
    let events = w.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, KubeEvent::Disconnected { .. }))
            .count(),
        1,
        "{events:?}"
    );
    assert_eq!(&events[1..], [KubeEvent::Connected, KubeEvent::Synced]);
}

/// Changes made while the watches miss them (silently, then the history compacted): only a
/// relist can find them, and it must find all of them.
fn expire_and_check_relist(api: &FakeKubeApi, w: &Watching, while_down: bool) {
    let pod_lists = |api: &FakeKubeApi| {
        api.requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true"))
            .count()
    };
    let lists_before = pod_lists(api);
    if while_down {
        api.down();
    }
    let added_uid = "0a000000-0000-4000-8000-000000000006";
    let added = pod(
        "shop",
        "added-while-away",
        added_uid,
        Some(NODE),
        Some("10.244.1.11"),
    );
    api.apply_silently(&added.to_string());
    api.delete_silently("Pod", "shop", "report-29000000-q2w");
    api.apply_silently(&with_label(web_pod(), "app.kubernetes.io/name", "renamed").to_string());
    api.delete_silently("Service", "data", "db");
    api.expire();
    if while_down {
        std::thread::sleep(Duration::from_millis(500));
        api.up();
    }
    w.wait(api, 10, "the relist to show every missed change", || {
        w.pod(added_uid).is_some()
            && w.pod(UID_REPORT).is_none()
            && w.pod(UID_WEB).is_some_and(|p| p.service_name == "renamed")
            && w.peer("10.96.0.20").is_none()
            && w.peer("10.244.1.6").is_none()
            && w.peer("10.244.1.11").is_some()
    });
    assert!(w.attribution.pod(None, Some(CID_REPORT)).is_none());
    assert_eq!(
        w.peer("10.244.1.11"),
        Some(peer(
            "shop",
            "Pod",
            "added-while-away",
            "added-while-away",
            PeerKind::Pod
        ))
    );
    // Nothing else was lost on the way.
    assert_eq!(w.pod(UID_WEB).unwrap().owner_kind, "Deployment");
    assert_eq!(
        w.peer("10.244.2.7"),
        Some(peer("data", "StatefulSet", "db", "db", PeerKind::Pod))
    );
    // Both pod watches listed again.
    assert!(pod_lists(api) >= lists_before + 2, "{:#?}", api.requests());
    assert!(w.object_errors().is_empty(), "{:?}", w.events());
}

#[test]
fn gone_410_event_forces_a_relist_and_nothing_is_lost() {
    let api = FakeKubeApi::start();
    seed(&api);
    let w = Watching::start(&api, Some(test_timing()));
    w.wait_synced(&api);
    w.wait(&api, 5, "both pod watches open", || {
        api.watchers("pods") == 2
    });
    expire_and_check_relist(&api, &w, false);
}

#[test]
fn gone_http_410_on_resume_forces_a_relist() {
    let api = FakeKubeApi::start();
    api.gone_as_http(true);
    seed(&api);
    let w = Watching::start(&api, Some(test_timing()));
    w.wait_synced(&api);
    // Away while the history is compacted: the resume gets HTTP 410, not an ERROR event.
    expire_and_check_relist(&api, &w, true);
    assert!(
        api.requests().iter().any(|r| r.contains("watch=true")),
        "the watches resumed"
    );
}

#[test]
fn stalled_watch_is_detected_and_recovered() {
    let api = FakeKubeApi::start();
    seed(&api);
    let w = Watching::start(&api, Some(test_timing()));
    w.wait_synced(&api);
    w.wait(&api, 5, "both pod watches open", || {
        api.watchers("pods") == 2
    });
    let watches_before = api
        .requests()
        .iter()
        .filter(|r| r.contains("/api/v1/pods?") && r.contains("watch=true"))
        .count();

    let stalled_at = Instant::now();
    api.stall(true);
    // Delivered to no one: the open watches are black-holed.
    apply(
        &api,
        &with_label(web_pod(), "app.kubernetes.io/name", "after-stall"),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.pod(UID_WEB).unwrap().service_name, "storefront");
    api.stall(false);
    // The 2 s read timeout gives up on the silent connections; the resumed watches replay
    // the change from the history. (Without stall detection the connections would stay
    // silent for good, and the server ignores timeoutSeconds on them.)
    w.wait(&api, 8, "the change after the stall", || {
        w.pod(UID_WEB)
            .is_some_and(|p| p.service_name == "after-stall")
    });
    eprintln!("recovered {:?} after the stall began", stalled_at.elapsed());
    // Both stalled watches are replaced; the change may come through the first before the
    // second times out.
    w.wait(&api, 5, "both pod watches reopened", || {
        let watches_after = api
            .requests()
            .iter()
            .filter(|r| r.contains("/api/v1/pods?") && r.contains("watch=true"))
            .count();
        watches_after >= watches_before + 2
    });
    w.wait(&api, 5, "connected again", || w.attribution.is_connected());
    assert!(w.object_errors().is_empty(), "{:?}", w.events());
}

#[test]
fn malformed_objects_are_reported_and_skipped() {
    let api = FakeKubeApi::start();
    seed(&api);
    // In the initial list: a pod whose container statuses are not a list.
    let mut bad = pod(
        "shop",
        "bad-list",
        "0a000000-0000-4000-8000-000000000007",
        Some(NODE),
        Some("10.244.1.12"),
    );
    bad["status"]["containerStatuses"] = "oops".into();
    apply(&api, &bad);
    let w = Watching::start(&api, Some(test_timing()));
    w.wait_synced(&api);
    // The rest of the list is intact.
    assert_eq!(w.pod(UID_WEB).unwrap().owner_kind, "Deployment");
    assert_eq!(w.attribution.pod_count(), 2);
    assert_eq!(w.peer("10.244.1.12"), None);
    // Once per pod watch (this node's and the cluster's).
    let errors = w.object_errors();
    assert_eq!(errors.len(), 2, "{errors:?}");
    for (kind, error) in &errors {
        assert_eq!(*kind, "Pod");
        assert!(
            error.starts_with("Pod shop/bad-list: cannot decode: invalid type: string \"oops\""),
            "{error}"
        );
    }
    w.wait(&api, 5, "both pod watches open", || {
        api.watchers("pods") == 2
    });

    // In watches: a line that is not JSON, an event whose object has the wrong shape, a
    // Service whose ClusterIP is not an IP.
    api.raw_event("pods", "this is not json");
    // A pod on another node without IP (visible to no lookup), for a current resourceVersion.
    let marker = pod(
        "shop",
        "m1",
        "0a000000-0000-4000-8000-000000000008",
        Some("node-z"),
        None,
    );
    let rv = apply(&api, &marker);
    let weird = json!({"type": "ADDED", "object": {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "weird", "namespace": "shop", "uid": "u-weird", "resourceVersion": rv.to_string()},
        "spec": "not an object"}});
    api.raw_event("pods", &weird.to_string());
    apply(&api, &service("data", "broken", "10.96.0.999"));

    // The watches go on: a later valid change arrives.
    apply(
        &api,
        &with_label(web_pod(), "app.kubernetes.io/name", "still-fine"),
    );
    w.wait(&api, 5, "a valid change after the malformed ones", || {
        w.pod(UID_WEB)
            .is_some_and(|p| p.service_name == "still-fine")
    });
    w.wait(&api, 5, "every error reported", || {
        w.object_errors().len() >= 7
    });
    let errors = w.object_errors();
    let count = |pred: &dyn Fn(&(&str, String)) -> bool| errors.iter().filter(|e| pred(e)).count();
    assert_eq!(
        count(&|(k, e)| *k == "Pod" && e.starts_with("undecodable response:")),
        2,
        "{errors:?}"
    );
    assert_eq!(
        count(&|(k, e)| *k == "Pod"
            && e.starts_with(
                "Pod shop/weird: cannot decode: invalid type: string \"not an object\""
            )),
        2,
        "{errors:?}"
    );
    assert_eq!(
        count(&|(k, e)| *k == "Service"
            && e == "Service data/broken: spec.clusterIPs \"10.96.0.999\" is not an IP address"),
        1,
        "{errors:?}"
    );
    assert_eq!(errors.len(), 7, "{errors:?}");
    assert!(w.attribution.is_connected());
    assert_eq!(w.pod("u-weird"), None);
}
