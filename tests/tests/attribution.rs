//! Kubernetes attribution end to end: real processes in real cgroups named the way kubelet
//! names them (v2 systemd driver and v1 cgroupfs driver), a fake API server speaking the real
//! list/watch protocol, and the agent's metrics carrying the right pod, workload and peer.

use std::process::Command;
use std::time::{Duration, Instant};

use harness::{
    curl, http_get, wait_for_metric, Agent, AgentOptions, FakeKubeApi, PyServer, TestCgroup,
    HTTP_TEST_SERVER,
};
use serde_json::{json, Value};

const SERVER: &str = "http_server_request_duration_seconds_count";
const CLIENT: &str = "http_client_request_duration_seconds_count";
const WAIT: Duration = Duration::from_secs(20);
const NODE: &str = "node-a";
const NS: &str = "shop";

const WEB_UID: &str = "6f1c2a4e-0b1d-4c3e-9a8b-111111111111";
const WEB_CID: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DB_UID: &str = "7e2d3b5f-1c2e-4d4f-8b9c-222222222222";
const DB_CID: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn meta(name: &str, uid: &str) -> Value {
    json!({"name": name, "namespace": NS, "uid": uid, "resourceVersion": "1",
           "creationTimestamp": "2026-11-01T00:00:00Z", "labels": {}})
}

fn owner(kind: &str, name: &str, uid: &str) -> Value {
    let api = if kind == "Job" { "batch/v1" } else { "apps/v1" };
    json!([{"apiVersion": api, "kind": kind, "name": name, "uid": uid,
            "controller": true, "blockOwnerDeletion": true}])
}

/// A running pod on `NODE` with one container.
fn pod(name: &str, uid: &str, ip: &str, container: &str, container_id: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta(name, uid),
        "spec": {"nodeName": NODE, "containers": [{"name": container, "image": "example/app:1"}]},
        "status": {
            "phase": "Running", "qosClass": "Burstable", "hostIP": "127.0.0.1",
            "podIP": ip, "podIPs": [{"ip": ip}],
            "containerStatuses": [{
                "name": container, "ready": true, "restartCount": 0, "image": "example/app:1",
                "imageID": "", "containerID": container_id, "started": true,
                "state": {"running": {"startedAt": "2026-11-01T00:00:01Z"}}
            }]
        }
    })
}

/// The web Deployment's pod (through its ReplicaSet), labelled `app.kubernetes.io/name`.
fn apply_web(api: &FakeKubeApi, silently: bool) {
    let mut rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "metadata": meta("web-5d8f7c", "rs-web"),
                        "spec": {"selector": {"matchLabels": {"app": "web"}}}});
    rs["metadata"]["ownerReferences"] = owner("Deployment", "web", "dep-web");
    let mut web = pod(
        "web-5d8f7c-abcde",
        WEB_UID,
        "127.0.0.2",
        "app",
        &format!("containerd://{WEB_CID}"),
    );
    web["metadata"]["ownerReferences"] = owner("ReplicaSet", "web-5d8f7c", "rs-web");
    web["metadata"]["labels"] = json!({"app.kubernetes.io/name": "storefront"});
    for object in [rs, web] {
        if silently {
            api.apply_silently(&object.to_string());
        } else {
            api.apply(&object.to_string());
        }
    }
}

/// The db StatefulSet's pod and a Service `db-svc` with ClusterIP 127.0.0.4. The pod names its
/// service in the annotation the OpenTelemetry Kubernetes conventions give, which wins over its
/// `app.kubernetes.io/instance` label (and over the owner's name): `orders-db`.
fn apply_db(api: &FakeKubeApi) {
    let mut db = pod(
        "db-0",
        DB_UID,
        "127.0.0.3",
        "server",
        &format!("cri-o://{DB_CID}"),
    );
    db["metadata"]["ownerReferences"] = owner("StatefulSet", "db", "sts-db");
    db["metadata"]["labels"] = json!({"app.kubernetes.io/instance": "orders-eu"});
    db["metadata"]["annotations"] = json!({"resource.opentelemetry.io/service.name": "orders-db"});
    api.apply(&db.to_string());
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": meta("db-svc", "svc-db"),
                     "spec": {"type": "ClusterIP", "clusterIP": "127.0.0.4",
                              "clusterIPs": ["127.0.0.4"],
                              "ports": [{"port": 80, "protocol": "TCP"}]}});
    api.apply(&svc.to_string());
}

fn agent_options(api: &FakeKubeApi, extra: &[&str]) -> AgentOptions {
    let mut args: Vec<String> = [
        "--kubernetes",
        "on",
        "--kube-api-url",
        &api.api_url(),
        "--node-name",
        NODE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    AgentOptions {
        args,
        ..AgentOptions::default()
    }
}

fn get(port: u16, host: &str, n: usize) {
    for _ in 0..n {
        curl(&["-sf", &format!("http://{host}:{port}/")]).unwrap();
    }
}

/// `curl` run inside `cgroup` (moved there before it execs), `n` times to `url`.
fn curl_in(cgroup: &TestCgroup, url: &str, n: usize) {
    let procs = cgroup.path().join("cgroup.procs");
    for _ in 0..n {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec curl -sf -o /dev/null {url}",
                procs.display()
            ))
            .status()
            .unwrap();
        assert!(status.success(), "curl {url} from the pod failed");
    }
}

#[test]
fn pods_workloads_and_peers_are_named_from_real_cgroups() {
    let api = FakeKubeApi::start();
    apply_web(&api, false);
    apply_db(&api);
    let web_cgroup = TestCgroup::v2_systemd("burstable", WEB_UID, WEB_CID).unwrap();
    let db_cgroup = TestCgroup::v1_cgroupfs("besteffort", DB_UID, DB_CID).unwrap();
    let web = PyServer::launch_in_cgroup(HTTP_TEST_SERVER, &[], &web_cgroup).unwrap();
    let db = PyServer::launch_in_cgroup(HTTP_TEST_SERVER, &["0.0.0.0"], &db_cgroup).unwrap();

    let agent = Agent::start_with(agent_options(&api, &[])).unwrap();
    get(web.port(), "127.0.0.1", 7);
    get(db.port(), "127.0.0.1", 5);

    let web_labels = [
        ("k8s_namespace_name", NS),
        ("k8s_pod_name", "web-5d8f7c-abcde"),
        ("k8s_container_name", "app"),
        ("k8s_node_name", NODE),
        ("k8s_owner_kind", "Deployment"),
        ("k8s_owner_name", "web"),
        ("service_name", "storefront"),
        ("container_id", WEB_CID),
    ];
    let db_labels = [
        ("k8s_namespace_name", NS),
        ("k8s_pod_name", "db-0"),
        ("k8s_container_name", "server"),
        ("k8s_owner_kind", "StatefulSet"),
        ("k8s_owner_name", "db"),
        ("service_name", "orders-db"),
        ("container_id", DB_CID),
    ];
    wait_for_metric(&agent, SERVER, &web_labels, 7.0, WAIT).unwrap();
    wait_for_metric(&agent, SERVER, &db_labels, 5.0, WAIT).unwrap();
    let m = agent.metrics();
    assert_eq!(
        m.sum(SERVER, &[]),
        12.0,
        "no request counted twice or unnamed"
    );

    // A client in the web pod calls the db pod by its pod IP, by its Service's ClusterIP, and
    // an address the cluster does not know.
    let url = |host: &str| format!("http://{host}:{}/", db.port());
    curl_in(&web_cgroup, &url("127.0.0.3"), 3);
    curl_in(&web_cgroup, &url("127.0.0.4"), 2);
    curl_in(&web_cgroup, &url("127.0.0.9"), 1);
    let from_web = [
        ("k8s_pod_name", "web-5d8f7c-abcde"),
        ("k8s_owner_name", "web"),
    ];
    let to = |peer: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        from_web.iter().chain(peer).copied().collect()
    };
    let to_pod = to(&[
        ("peer_k8s_namespace_name", NS),
        ("peer_k8s_owner_name", "db"),
        ("peer_service_name", "orders-db"),
        ("server_address", ""),
    ]);
    let to_service = to(&[
        ("peer_k8s_namespace_name", NS),
        ("peer_k8s_owner_name", "db-svc"),
        ("peer_service_name", "db-svc"),
        ("server_address", ""),
    ]);
    let to_outside = to(&[("server_address", "127.0.0.9")]);
    wait_for_metric(&agent, CLIENT, &to_pod, 3.0, WAIT).unwrap();
    wait_for_metric(&agent, CLIENT, &to_service, 2.0, WAIT).unwrap();
    wait_for_metric(&agent, CLIENT, &to_outside, 1.0, WAIT).unwrap();
    // The db pod served them all.
    wait_for_metric(&agent, SERVER, &db_labels, 11.0, WAIT).unwrap();
    let m = agent.metrics();
    assert_eq!(m.sum(CLIENT, &from_web), 6.0);
    assert_eq!(m.sum("periscope_kubernetes_connected", &[]), 1.0);
}

#[test]
fn api_server_down_at_start_then_pods_come_and_go() {
    let api = FakeKubeApi::start_down();
    let web_cgroup = TestCgroup::v2_systemd("guaranteed", WEB_UID, WEB_CID).unwrap();
    let web = PyServer::launch_in_cgroup(HTTP_TEST_SERVER, &[], &web_cgroup).unwrap();
    let mut options = agent_options(&api, &["--series-grace", "2s"]);
    options.require_ready = false;
    let agent = Agent::start_with(options).unwrap();

    // Unreachable: capturing, not ready, saying why; metrics flow without pod labels.
    let deadline = Instant::now() + WAIT;
    loop {
        let readyz = http_get(agent.addr(), "/readyz", Duration::from_secs(2)).unwrap();
        assert_eq!(readyz.status, 503);
        if readyz.text().contains("Kubernetes") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "capture never started: {}",
            readyz.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    get(web.port(), "127.0.0.1", 3);
    wait_for_metric(&agent, SERVER, &[("container_id", WEB_CID)], 3.0, WAIT).unwrap();
    let m = agent.metrics();
    assert_eq!(m.sum("periscope_kubernetes_connected", &[]), 0.0);
    assert!(m.sum("periscope_kubernetes_errors_total", &[]) >= 1.0);
    assert_eq!(
        m.matching(SERVER, &[("k8s_pod_name", "web-5d8f7c-abcde")])
            .count(),
        0
    );

    // The API server comes up (with the pod already there): ready and named within seconds.
    apply_web(&api, true);
    api.up();
    let deadline = Instant::now() + WAIT;
    while !http_get(agent.addr(), "/readyz", Duration::from_secs(2)).is_ok_and(|r| r.status == 200)
    {
        assert!(
            Instant::now() < deadline,
            "not ready after the API server came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let named = [
        ("k8s_pod_name", "web-5d8f7c-abcde"),
        ("service_name", "storefront"),
    ];
    get(web.port(), "127.0.0.1", 4);
    wait_for_metric(&agent, SERVER, &named, 4.0, WAIT).unwrap();
    assert_eq!(
        agent.metrics().sum("periscope_kubernetes_connected", &[]),
        1.0
    );

    // A pod created after start is named as soon as its watch event arrives.
    apply_db(&api);
    let db_cgroup = TestCgroup::v1_cgroupfs("besteffort", DB_UID, DB_CID).unwrap();
    let db = PyServer::launch_in_cgroup(HTTP_TEST_SERVER, &[], &db_cgroup).unwrap();
    get(db.port(), "127.0.0.1", 2);
    wait_for_metric(&agent, SERVER, &[("k8s_pod_name", "db-0")], 2.0, WAIT).unwrap();

    // The web pod is deleted: its one series goes after the 2 s grace period; db's stays.
    api.delete("Pod", NS, "web-5d8f7c-abcde");
    let deadline = Instant::now() + WAIT;
    loop {
        let m = agent.metrics();
        if m.matching(SERVER, &[("k8s_pod_name", "web-5d8f7c-abcde")])
            .next()
            .is_none()
        {
            assert_eq!(m.sum("periscope_series_expired_total", &[]), 1.0);
            assert_eq!(m.sum(SERVER, &[("k8s_pod_name", "db-0")]), 2.0);
            break;
        }
        assert!(Instant::now() < deadline, "the deleted pod's series stayed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Choosing what is watched in a cluster: by workload, and by a pod label selector (which
/// leaves out processes that are in no pod, such as a client on the host).
#[test]
fn workloads_and_pod_labels_choose_what_is_watched() {
    let api = FakeKubeApi::start();
    apply_web(&api, false);
    apply_db(&api);
    let web_cgroup = TestCgroup::v2_systemd("burstable", WEB_UID, WEB_CID).unwrap();
    let db_cgroup = TestCgroup::v1_cgroupfs("besteffort", DB_UID, DB_CID).unwrap();
    let web = PyServer::launch_in_cgroup(HTTP_TEST_SERVER, &[], &web_cgroup).unwrap();
    let db = PyServer::launch_in_cgroup(HTTP_TEST_SERVER, &["0.0.0.0"], &db_cgroup).unwrap();
    let web_pod = [("k8s_owner_name", "web")];
    let db_pod = [("k8s_owner_name", "db")];

    let agent = Agent::start_with(agent_options(
        &api,
        &["--exclude-workloads", "StatefulSet/db"],
    ))
    .unwrap();
    get(web.port(), "127.0.0.1", 4);
    get(db.port(), "127.0.0.1", 3);
    wait_for_metric(&agent, SERVER, &web_pod, 4.0, WAIT).unwrap();
    // The host's curl is in no pod: an exclude list leaves it watched.
    wait_for_metric(&agent, CLIENT, &[("service_name", "curl")], 7.0, WAIT).unwrap();
    let m = agent.metrics();
    assert_eq!(m.sum(SERVER, &db_pod), 0.0, "{}", m.text());
    assert_eq!(m.sum(SERVER, &[]), 4.0, "{}", m.text());
    drop(agent);

    let selector = "app.kubernetes.io/name=storefront";
    let agent =
        Agent::start_with(agent_options(&api, &["--include-pod-labels", selector])).unwrap();
    get(web.port(), "127.0.0.1", 5);
    get(db.port(), "127.0.0.1", 2);
    curl_in(&web_cgroup, &format!("http://127.0.0.3:{}/", db.port()), 3);
    wait_for_metric(&agent, SERVER, &web_pod, 5.0, WAIT).unwrap();
    wait_for_metric(&agent, CLIENT, &[("k8s_owner_name", "web")], 3.0, WAIT).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let m = agent.metrics();
    assert_eq!(m.sum(SERVER, &db_pod), 0.0, "{}", m.text());
    // Only the web pod's own client calls: the host's curl (and this test, scraping the
    // agent) are in no pod.
    assert_eq!(m.sum(CLIENT, &[]), 3.0, "{}", m.text());
}
