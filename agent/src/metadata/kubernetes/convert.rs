//! Kubernetes objects → the few fields attribution needs.
//!
//! Pods and Services are decoded one object at a time ([`Lenient`]): a list with one object
//! the API types cannot decode still delivers all the others, and the bad one becomes an
//! error that names it. Only small records leave this module; the decoded objects are
//! dropped as soon as their fields are copied out.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::PartialObjectMeta;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Where a pod's metadata names its service, in the order of the OpenTelemetry Kubernetes
/// conventions (`service.name`): the annotation, then the well-known labels `instance` and
/// `name`. The owner's name comes after them (`Model::pod_info`).
pub(crate) const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
pub(crate) const APP_INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub(crate) const APP_NAME_LABEL: &str = "app.kubernetes.io/name";
/// The annotation a mirror pod carries: the UID its static pod runs under (in cgroups).
pub(crate) const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// `(namespace, name)`: how objects are keyed across watch events.
pub(crate) type Key = (String, String);

/// An owner reference reduced to what owner resolution reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Owner {
    pub(crate) kind: String,
    pub(crate) name: String,
}

/// Labels kept per pod at most, and the longest key or value kept (the API server allows
/// 317-byte keys and 63-byte values).
pub(crate) const MAX_LABELS: usize = 64;
const MAX_LABEL_BYTES: usize = 320;

/// What a pod contributes: its identity, workload, containers and IPs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodRecord {
    pub(crate) uid: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) node_name: String,
    /// The owner reference with `controller: true`, if any.
    pub(crate) controller: Option<Owner>,
    /// The service name the pod's metadata gives: the `resource.opentelemetry.io/service.name`
    /// annotation, else the `app.kubernetes.io/instance` label, else `app.kubernetes.io/name`
    /// (the first set and not empty).
    pub(crate) app_name: Option<String>,
    /// The pod's labels (for `--include-pod-labels`/`--exclude-pod-labels`), at most
    /// [`MAX_LABELS`], sorted by key.
    pub(crate) labels: Vec<(String, String)>,
    /// For a mirror pod, the UID of its static pod (what its cgroup is named after).
    pub(crate) mirror_uid: Option<String>,
    /// (container id without the runtime prefix, container name).
    pub(crate) containers: Vec<(String, String)>,
    /// Pod IPs that identify this pod alone: empty for host-network pods (they share the
    /// node's IP) and for finished pods (their IP may already belong to a new pod).
    pub(crate) ips: Vec<IpAddr>,
}

/// What a Service contributes: its ClusterIPs (none for headless and ExternalName ones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ServiceRecord {
    pub(crate) ips: Vec<IpAddr>,
}

/// A Kubernetes type that is watched through [`Lenient`], with the record it reduces to.
pub(crate) trait Extract:
    Resource<DynamicType = ()> + DeserializeOwned + Send + Sync + 'static
{
    type Record: Clone + std::fmt::Debug + Send + Sync + 'static;

    /// The kind's name in errors and [`KubeEvent::ObjectError`](super::KubeEvent).
    const KIND: &'static str;

    /// Copies the needed fields out, or says which value is unusable.
    fn extract(self) -> Result<Self::Record, String>;
}

/// An object decoded without failing its list: `decoded` holds the record or the reason it
/// could not be made. `meta` keeps only name, namespace, UID and resourceVersion (read
/// leniently, so a delete or a resume point survives even a malformed object).
pub(crate) struct Lenient<K: Extract> {
    meta: ObjectMeta,
    pub(crate) decoded: Result<K::Record, String>,
    _kind: PhantomData<fn() -> K>,
}

impl<K: Extract> Lenient<K> {
    /// `(namespace, name)`, empty strings for what the object lacks.
    pub(crate) fn key(&self) -> Key {
        key_of(&self.meta)
    }
}

pub(crate) fn key_of(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl<K: Extract> Clone for Lenient<K> {
    fn clone(&self) -> Self {
        Lenient {
            meta: self.meta.clone(),
            decoded: self.decoded.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K: Extract> std::fmt::Debug for Lenient<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lenient")
            .field("kind", &K::KIND)
            .field("meta", &self.meta)
            .field("decoded", &self.decoded)
            .finish()
    }
}

impl<'de, K: Extract> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Only invalid JSON fails here (and that fails the whole response anyway); anything
        // the typed decode rejects becomes `decoded: Err`.
        let value = serde_json::Value::deserialize(deserializer)?;
        let meta = lenient_meta(&value);
        let decoded = match serde_json::from_value::<K>(value) {
            Ok(object) => object.extract(),
            Err(e) => Err(format!(
                "{} {}: cannot decode: {e}",
                K::KIND,
                describe_key(&key_of(&meta))
            )),
        };
        Ok(Lenient {
            meta,
            decoded,
            _kind: PhantomData,
        })
    }
}

/// Name, namespace, UID and resourceVersion, each taken only if it is a string.
fn lenient_meta(value: &serde_json::Value) -> ObjectMeta {
    let field = |name: &str| {
        value
            .get("metadata")
            .and_then(|m| m.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    ObjectMeta {
        name: field("name"),
        namespace: field("namespace"),
        uid: field("uid"),
        resource_version: field("resourceVersion"),
        ..ObjectMeta::default()
    }
}

impl<K: Extract> Resource for Lenient<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// `ns/name` for messages (`?` for a missing part).
pub(crate) fn describe_key((namespace, name): &Key) -> String {
    let or_q = |s: &str| {
        if s.is_empty() {
            "?".to_owned()
        } else {
            s.to_owned()
        }
    };
    format!("{}/{}", or_q(namespace), or_q(name))
}

fn controller_of(refs: Option<&[OwnerReference]>) -> Option<Owner> {
    refs?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| Owner {
            kind: r.kind.clone(),
            name: r.name.clone(),
        })
}

/// `containerd://<id>` → `<id>` (any runtime prefix; a bare id is taken as it is).
fn strip_runtime(container_id: &str) -> &str {
    container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id)
}

fn parse_ip(kind: &str, key: &Key, field: &str, text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "{kind} {}: {field} {text:?} is not an IP address",
            describe_key(key)
        )
    })
}

impl Extract for Pod {
    type Record = PodRecord;
    const KIND: &'static str = "Pod";

    fn extract(self) -> Result<PodRecord, String> {
        let key = key_of(&self.metadata);
        let uid = match self.metadata.uid.as_deref() {
            Some(uid) if !uid.is_empty() => uid.to_owned(),
            _ => return Err(format!("Pod {}: no metadata.uid", describe_key(&key))),
        };
        if key.0.is_empty() || key.1.is_empty() {
            return Err(format!(
                "Pod {} (uid {uid}): no metadata.namespace or metadata.name",
                describe_key(&key)
            ));
        }
        let label = |map: &Option<std::collections::BTreeMap<String, String>>, name: &str| {
            map.as_ref()
                .and_then(|m| m.get(name))
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let app_name = label(&self.metadata.annotations, SERVICE_NAME_ANNOTATION)
            .or_else(|| label(&self.metadata.labels, APP_INSTANCE_LABEL))
            .or_else(|| label(&self.metadata.labels, APP_NAME_LABEL));
        // Bounded: the API server limits label sizes, but a pod's count of them is not.
        let labels = self
            .metadata
            .labels
            .iter()
            .flatten()
            .filter(|(k, v)| k.len() <= MAX_LABEL_BYTES && v.len() <= MAX_LABEL_BYTES)
            .take(MAX_LABELS)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mirror_uid = label(&self.metadata.annotations, MIRROR_ANNOTATION);
        let controller = controller_of(self.metadata.owner_references.as_deref());
        let spec = self.spec.unwrap_or_default();
        let status = self.status.unwrap_or_default();

        let statuses: [&Option<Vec<ContainerStatus>>; 3] = [
            &status.init_container_statuses,
            &status.container_statuses,
            &status.ephemeral_container_statuses,
        ];
        let containers = statuses
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|c| {
                let id = strip_runtime(c.container_id.as_deref()?);
                (!id.is_empty()).then(|| (id.to_owned(), c.name.clone()))
            })
            .collect();

        let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        let mut ips = Vec::new();
        if !finished && spec.host_network != Some(true) {
            let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
            for text in listed.chain(status.pod_ip.as_deref()) {
                if text.is_empty() {
                    continue;
                }
                let ip = parse_ip("Pod", &key, "status.podIPs", text)?;
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }

        Ok(PodRecord {
            uid,
            namespace: key.0,
            name: key.1,
            node_name: spec.node_name.unwrap_or_default(),
            controller,
            app_name,
            labels,
            mirror_uid,
            containers,
            ips,
        })
    }
}

impl Extract for Service {
    type Record = ServiceRecord;
    const KIND: &'static str = "Service";

    fn extract(self) -> Result<ServiceRecord, String> {
        let key = key_of(&self.metadata);
        if key.0.is_empty() || key.1.is_empty() {
            return Err(format!(
                "Service {}: no metadata.namespace or metadata.name",
                describe_key(&key)
            ));
        }
        let spec = self.spec.unwrap_or_default();
        let mut ips = Vec::new();
        let listed = spec.cluster_ips.iter().flatten().map(String::as_str);
        for text in listed.chain(spec.cluster_ip.as_deref()) {
            // Headless Services say "None"; ExternalName ones have no ClusterIP.
            if text.is_empty() || text == "None" {
                continue;
            }
            let ip = parse_ip("Service", &key, "spec.clusterIPs", text)?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        Ok(ServiceRecord { ips })
    }
}

/// A ReplicaSet's or Job's controller, from its metadata alone (metadata-only watch).
pub(crate) fn owner_record<K>(object: &PartialObjectMeta<K>) -> Option<Owner> {
    controller_of(object.metadata.owner_references.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lenient_pod(json: serde_json::Value) -> Lenient<Pod> {
        serde_json::from_value(json).expect("valid JSON always deserializes")
    }

    fn pod_json() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-7d4b9c-abcde", "namespace": "shop",
                "uid": "11111111-2222-3333-4444-555555555555", "resourceVersion": "42",
                "labels": {"app.kubernetes.io/name": "storefront", "pod-template-hash": "7d4b9c"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "not-controller", "uid": "x"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c",
                     "uid": "y", "controller": true, "blockOwnerDeletion": true}
                ]
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "nginx"}]},
            "status": {
                "phase": "Running", "podIP": "10.1.0.5",
                "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}],
                "initContainerStatuses": [{"name": "init", "containerID": "containerd://aaa",
                    "image": "busybox", "imageID": "", "ready": false, "restartCount": 0}],
                "containerStatuses": [
                    {"name": "app", "containerID": "cri-o://bbb", "image": "nginx",
                     "imageID": "", "ready": true, "restartCount": 0},
                    {"name": "waiting", "image": "x", "imageID": "", "ready": false, "restartCount": 0}
                ]
            }
        })
    }

    /// `service.name` by the OpenTelemetry Kubernetes conventions: the annotation, then the
    /// `instance` label, then the `name` label (an empty one does not count).
    #[test]
    fn the_service_name_follows_the_conventions_order() {
        let service = |annotation: Option<&str>, instance: Option<&str>| {
            let mut json = pod_json();
            if let Some(a) = annotation {
                json["metadata"]["annotations"] =
                    serde_json::json!({ "resource.opentelemetry.io/service.name": a });
            }
            if let Some(i) = instance {
                json["metadata"]["labels"]["app.kubernetes.io/instance"] = i.into();
            }
            lenient_pod(json).decoded.unwrap().app_name
        };
        assert_eq!(service(None, None).as_deref(), Some("storefront"));
        assert_eq!(service(None, Some("shop-eu")).as_deref(), Some("shop-eu"));
        assert_eq!(
            service(Some("checkout"), Some("shop-eu")).as_deref(),
            Some("checkout")
        );
        assert_eq!(service(Some(""), Some("")).as_deref(), Some("storefront"));
    }

    #[test]
    fn pod_fields() {
        let pod = lenient_pod(pod_json());
        assert_eq!(
            pod.key(),
            ("shop".to_owned(), "web-7d4b9c-abcde".to_owned())
        );
        let record = pod.decoded.unwrap();
        assert_eq!(
            record,
            PodRecord {
                uid: "11111111-2222-3333-4444-555555555555".into(),
                namespace: "shop".into(),
                name: "web-7d4b9c-abcde".into(),
                node_name: "node-a".into(),
                controller: Some(Owner {
                    kind: "ReplicaSet".into(),
                    name: "web-7d4b9c".into()
                }),
                app_name: Some("storefront".into()),
                labels: vec![
                    ("app.kubernetes.io/name".into(), "storefront".into()),
                    ("pod-template-hash".into(), "7d4b9c".into()),
                ],
                mirror_uid: None,
                containers: vec![("aaa".into(), "init".into()), ("bbb".into(), "app".into())],
                ips: vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            }
        );
    }

    #[test]
    fn host_network_and_finished_pods_claim_no_ip() {
        let mut json = pod_json();
        json["spec"]["hostNetwork"] = true.into();
        assert_eq!(lenient_pod(json).decoded.unwrap().ips, Vec::<IpAddr>::new());
        let mut json = pod_json();
        json["status"]["phase"] = "Succeeded".into();
        assert_eq!(lenient_pod(json).decoded.unwrap().ips, Vec::<IpAddr>::new());
    }

    #[test]
    fn malformed_pods_are_errors_that_name_them_not_panics() {
        let mut json = pod_json();
        json["status"]["containerStatuses"] = "not a list".into();
        let pod = lenient_pod(json);
        // The key survives, so a later delete still finds the entry.
        assert_eq!(
            pod.key(),
            ("shop".to_owned(), "web-7d4b9c-abcde".to_owned())
        );
        let error = pod.decoded.unwrap_err();
        assert!(
            error.starts_with("Pod shop/web-7d4b9c-abcde: cannot decode: invalid type"),
            "{error}"
        );

        let mut json = pod_json();
        json["status"]["podIPs"] = serde_json::json!([{"ip": "10.1.0.999"}]);
        assert_eq!(
            lenient_pod(json).decoded.unwrap_err(),
            "Pod shop/web-7d4b9c-abcde: status.podIPs \"10.1.0.999\" is not an IP address"
        );

        let mut json = pod_json();
        json["metadata"].as_object_mut().unwrap().remove("uid");
        assert_eq!(
            lenient_pod(json).decoded.unwrap_err(),
            "Pod shop/web-7d4b9c-abcde: no metadata.uid"
        );

        let pod = lenient_pod(serde_json::json!("just a string"));
        assert_eq!(pod.key(), (String::new(), String::new()));
        assert!(pod
            .decoded
            .unwrap_err()
            .starts_with("Pod ?/?: cannot decode"));
    }

    #[test]
    fn service_cluster_ips() {
        let svc: Lenient<Service> = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "db", "namespace": "shop", "resourceVersion": "7"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::a"]}
        }))
        .unwrap();
        assert_eq!(
            svc.decoded.unwrap().ips,
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00:96::a".parse().unwrap()
            ]
        );
        let headless: Lenient<Service> = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-headless", "namespace": "shop"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"]}
        }))
        .unwrap();
        assert_eq!(headless.decoded.unwrap().ips, Vec::<IpAddr>::new());
    }

    #[test]
    fn runtime_prefixes() {
        assert_eq!(strip_runtime("containerd://abc"), "abc");
        assert_eq!(strip_runtime("docker://abc"), "abc");
        assert_eq!(strip_runtime("abc"), "abc");
    }
}
