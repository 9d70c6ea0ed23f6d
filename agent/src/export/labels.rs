//! The label sets every workload metric shares: who the process is (`WorkloadLabels`) and,
//! on client-side metrics, who it talked to (`PeerLabels`); and the one-label sets of
//! self-metrics any component counts with (`ReasonLabel`, `MetricLabel`).
//!
//! Kubernetes labels are written only when known, so a standalone agent's series carry no
//! empty `k8s_*` labels (Prometheus treats an empty label and a missing one alike).

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};

use crate::metadata::{ClusterView, K8sIdentity, PeerName, ProcessInfo};

/// `reason`: why something was counted (lost events, dropped spans, watch errors, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// `metric`: the metric a self-metric speaks of (`periscope_series_dropped_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct MetricLabel {
    pub metric: String,
}

/// The process (and, in a cluster, the pod, container and workload) a series belongs to.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkloadLabels {
    pub service_name: String,
    pub container_id: String,
    pub k8s_namespace_name: String,
    pub k8s_pod_name: String,
    pub k8s_container_name: String,
    pub k8s_node_name: String,
    /// Kind of the top owner: `Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`, or
    /// `Pod` for a bare pod. One documented pair instead of one label per kind keeps
    /// "by workload" queries to a single `sum by (k8s_owner_name)`.
    pub k8s_owner_kind: String,
    pub k8s_owner_name: String,
}

impl WorkloadLabels {
    pub fn of(process: &ProcessInfo) -> WorkloadLabels {
        let mut labels = WorkloadLabels {
            service_name: process.service_name.clone(),
            container_id: process.container_id.clone().unwrap_or_default(),
            ..WorkloadLabels::default()
        };
        if let Some(k8s) = &process.k8s {
            labels.set_k8s(k8s);
        }
        labels
    }

    /// The labels of whatever runs in cgroup `path` (v2): its container, and its pod when
    /// the cluster knows the pod UID or container id found in the path. `service_name` is the
    /// pod's, or empty (a cgroup is not one executable).
    pub fn of_cgroup(path: &str, cluster: Option<&dyn ClusterView>) -> WorkloadLabels {
        let text = format!("0::{path}");
        let container_id = crate::metadata::cgroup::container_id(&text);
        let pod_uid = crate::metadata::cgroup::pod_uid(&text);
        let k8s = cluster.and_then(|c| c.identity(pod_uid.as_deref(), container_id.as_deref()));
        let mut labels = WorkloadLabels {
            container_id: container_id.unwrap_or_default(),
            ..WorkloadLabels::default()
        };
        if let Some(k8s) = k8s {
            labels.service_name = k8s.service_name.clone();
            labels.set_k8s(&k8s);
        }
        labels
    }

    fn set_k8s(&mut self, k8s: &K8sIdentity) {
        self.k8s_namespace_name = k8s.namespace.clone();
        self.k8s_pod_name = k8s.pod_name.clone();
        self.k8s_container_name = k8s.container_name.clone();
        self.k8s_node_name = k8s.node_name.clone();
        self.k8s_owner_kind = k8s.owner_kind.clone();
        self.k8s_owner_name = k8s.owner_name.clone();
    }

    /// The pod this series belongs to, if any: series of deleted pods expire.
    pub fn pod_key(&self) -> Option<(String, String)> {
        (!self.k8s_pod_name.is_empty())
            .then(|| (self.k8s_namespace_name.clone(), self.k8s_pod_name.clone()))
    }
}

impl EncodeLabelSet for WorkloadLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("service_name", self.service_name.as_str()).encode(encoder.encode_label())?;
        ("container_id", self.container_id.as_str()).encode(encoder.encode_label())?;
        let optional = [
            ("k8s_namespace_name", &self.k8s_namespace_name),
            ("k8s_pod_name", &self.k8s_pod_name),
            ("k8s_container_name", &self.k8s_container_name),
            ("k8s_node_name", &self.k8s_node_name),
            ("k8s_owner_kind", &self.k8s_owner_kind),
            ("k8s_owner_name", &self.k8s_owner_name),
        ];
        encode_non_empty(&optional, encoder)
    }
}

/// The other end of a client connection: `server_address` is the peer's IP only when the
/// cluster cannot name it (an external address, or standalone mode); a pod or Service peer is
/// named by its namespace, workload and service instead, which stay stable across restarts.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct PeerLabels {
    pub server_address: String,
    pub peer_k8s_namespace_name: String,
    pub peer_k8s_owner_name: String,
    pub peer_service_name: String,
}

impl PeerLabels {
    pub fn of(ip: Option<std::net::IpAddr>, name: Option<&PeerName>) -> PeerLabels {
        match name {
            Some(name) => PeerLabels {
                server_address: String::new(),
                peer_k8s_namespace_name: name.namespace.clone(),
                peer_k8s_owner_name: name.owner_name.clone(),
                peer_service_name: name.service_name.clone(),
            },
            None => PeerLabels {
                server_address: ip.map(|ip| ip.to_string()).unwrap_or_default(),
                ..PeerLabels::default()
            },
        }
    }
}

impl EncodeLabelSet for PeerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("server_address", self.server_address.as_str()).encode(encoder.encode_label())?;
        let optional = [
            ("peer_k8s_namespace_name", &self.peer_k8s_namespace_name),
            ("peer_k8s_owner_name", &self.peer_k8s_owner_name),
            ("peer_service_name", &self.peer_service_name),
        ];
        encode_non_empty(&optional, encoder)
    }
}

fn encode_non_empty(
    labels: &[(&str, &String)],
    encoder: &mut LabelSetEncoder,
) -> Result<(), std::fmt::Error> {
    for (name, value) in labels {
        if !value.is_empty() {
            (*name, value.as_str()).encode(encoder.encode_label())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
    struct Both {
        #[prometheus(flatten)]
        workload: WorkloadLabels,
        #[prometheus(flatten)]
        peer: PeerLabels,
    }

    fn render(labels: Both) -> String {
        let mut registry = Registry::default();
        let family = Family::<Both, Counter>::default();
        registry.register("x", "x", family.clone());
        family.get_or_create(&labels).inc();
        let mut out = String::new();
        encode(&mut out, &registry).expect("encodes");
        out.lines()
            .find(|l| l.starts_with("x_total"))
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn standalone_series_carry_no_empty_k8s_labels() {
        let line = render(Both {
            workload: WorkloadLabels {
                service_name: "nginx".into(),
                ..Default::default()
            },
            peer: PeerLabels::of(Some([10, 0, 0, 7].into()), None),
        });
        assert_eq!(
            line,
            r#"x_total{service_name="nginx",container_id="",server_address="10.0.0.7"} 1"#
        );
    }

    #[test]
    fn cluster_series_name_pod_and_peer() {
        let peer = PeerName {
            namespace: "shop".into(),
            owner_name: "orders".into(),
            service_name: "orders-db".into(),
        };
        let line = render(Both {
            workload: WorkloadLabels {
                service_name: "api".into(),
                container_id: "c1".into(),
                k8s_namespace_name: "shop".into(),
                k8s_pod_name: "api-7d9f-x2".into(),
                k8s_container_name: "app".into(),
                k8s_node_name: "n1".into(),
                k8s_owner_kind: "Deployment".into(),
                k8s_owner_name: "api".into(),
            },
            peer: PeerLabels::of(Some([10, 0, 0, 7].into()), Some(&peer)),
        });
        assert_eq!(
            line,
            concat!(
                r#"x_total{service_name="api",container_id="c1",k8s_namespace_name="shop","#,
                r#"k8s_pod_name="api-7d9f-x2",k8s_container_name="app",k8s_node_name="n1","#,
                r#"k8s_owner_kind="Deployment",k8s_owner_name="api",server_address="","#,
                r#"peer_k8s_namespace_name="shop",peer_k8s_owner_name="orders","#,
                r#"peer_service_name="orders-db"} 1"#
            )
        );
    }
}
