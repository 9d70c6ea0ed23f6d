//! The Prometheus families as OTLP metrics: the OpenTelemetry names the Prometheus names were
//! made from, label names as attribute keys, the workload labels as each point's resource, and
//! cumulative start times.
//!
//! # Names
//! A Prometheus name is an OpenTelemetry name with dots turned into underscores and the unit
//! appended; here it goes back. A semantic-convention family (`http_`, `rpc_`, `db_`,
//! `messaging_`) has every underscore a dot, but for the words the conventions spell with one
//! (`returned_rows`, `status_code`): `http_server_request_duration_seconds` is
//! `http.server.request.duration` in `s`. Any other family (Periscope's own) keeps its words
//! and has only its namespace separated: `periscope_spans_exported_total` is
//! `periscope.spans_exported`, `syscall_duration_seconds` is `syscall.duration`. The
//! OpenTelemetry Collector's Prometheus exporter turns each back into the Prometheus name.
//!
//! # Labels
//! Semantic-convention labels become their attribute (`http_response_status_code` →
//! `http.response.status_code`, an integer); the workload labels (`service_name`,
//! `container_id`, `k8s_*`) become the point's resource, as in the spans; other labels keep
//! their name. An empty label value is an absent attribute.

use std::collections::HashMap;

use super::openmetrics::{Family, Kind, Value};
use crate::export::otlp::proto::Value as Attr;

/// Semantic-convention label → attribute key, and whether its value is an integer.
const ATTRIBUTES: &[(&str, &str, bool)] = &[
    ("http_request_method", "http.request.method", false),
    (
        "http_response_status_code",
        "http.response.status_code",
        true,
    ),
    ("http_route", "http.route", false),
    (
        "network_protocol_version",
        "network.protocol.version",
        false,
    ),
    ("network_transport", "network.transport", false),
    ("network_io_direction", "network.io.direction", false),
    ("server_address", "server.address", false),
    ("server_port", "server.port", true),
    ("error_type", "error.type", false),
    ("db_system_name", "db.system.name", false),
    ("db_operation_name", "db.operation.name", false),
    ("db_collection_name", "db.collection.name", false),
    ("db_namespace", "db.namespace", false),
    ("messaging_system", "messaging.system", false),
    (
        "messaging_operation_name",
        "messaging.operation.name",
        false,
    ),
    (
        "messaging_destination_name",
        "messaging.destination.name",
        false,
    ),
    ("rpc_system_name", "rpc.system.name", false),
    ("rpc_method", "rpc.method", false),
    ("rpc_status_code", "rpc.status_code", false),
];

/// Workload labels → resource attributes (the owner pair is handled apart).
const RESOURCE: &[(&str, &str)] = &[
    ("service_name", "service.name"),
    ("container_id", "container.id"),
    ("k8s_namespace_name", "k8s.namespace.name"),
    ("k8s_pod_name", "k8s.pod.name"),
    ("k8s_container_name", "k8s.container.name"),
    ("k8s_node_name", "k8s.node.name"),
];

/// Words the conventions write with an underscore.
const COMPOUND_WORDS: &[&str] = &["returned_rows", "status_code"];

/// Namespaces whose families carry semantic-convention names.
const SEMCONV_NAMESPACES: &[&str] = &["http_", "rpc_", "db_", "messaging_"];

/// One resource's attributes, in a fixed order (its identity).
pub type Resource = Vec<(&'static str, Attr)>;

/// Metrics by resource, ready to encode.
#[derive(Debug, Default)]
pub struct Batch {
    pub resources: Vec<(Resource, Vec<Metric>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub description: String,
    pub unit: &'static str,
    pub kind: Kind,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub attributes: Vec<(String, Attr)>,
    pub start_ns: u64,
    pub value: Value,
}

/// What a reset shows as: a count or value below the last one seen.
fn level(value: &Value) -> f64 {
    match value {
        Value::Number(v) => *v,
        Value::Histogram { count, .. } => *count as f64,
    }
}

/// The OpenTelemetry name of a Prometheus family (see the module's doc).
pub fn otel_name(family: &str, unit: &str) -> String {
    let base = match family.strip_suffix(unit) {
        Some(b) if !unit.is_empty() => b.trim_end_matches('_'),
        _ => family,
    };
    if SEMCONV_NAMESPACES.iter().any(|ns| base.starts_with(ns)) {
        let mut name = base.replace('_', ".");
        for word in COMPOUND_WORDS {
            name = name.replace(&word.replace('_', "."), word);
        }
        name
    } else {
        base.replacen('_', ".", 1)
    }
}

/// The UCUM unit of a Prometheus unit.
pub fn otel_unit(unit: &str) -> &'static str {
    match unit {
        "seconds" => "s",
        "bytes" => "By",
        _ => "",
    }
}

/// Start times of cumulative series: a series keeps the start it was first seen with until
/// its count goes down (the series was removed and made again), then starts at the previous
/// export. Series not seen in an export are forgotten.
#[derive(Debug, Default)]
pub struct StartTimes {
    known: HashMap<String, (u64, f64)>,
    last_export_ns: Option<u64>,
}

impl StartTimes {
    /// The start of a series identified by `key`, at an export at `now_ns`; series first seen
    /// in the agent's first export started with the agent (`agent_start_ns`).
    fn start(
        &mut self,
        key: String,
        level: f64,
        agent_start_ns: u64,
        seen: &mut HashMap<String, (u64, f64)>,
    ) -> u64 {
        let fresh = self.last_export_ns.unwrap_or(agent_start_ns);
        let start = match self.known.get(&key) {
            Some(&(start, last)) if level >= last => start,
            _ => fresh,
        };
        seen.insert(key, (start, level));
        start
    }
}

/// Converts parsed families into OTLP metrics grouped by resource. `agent` is the resource of
/// series without workload labels (the agent's own); every workload's resource also carries
/// `node` (`OTEL_RESOURCE_ATTRIBUTES`: `k8s.cluster.name`, …) where it has no value of its own,
/// as the spans' resources do.
pub fn convert(
    families: &[Family],
    agent: &Resource,
    node: &[(&'static str, String)],
    starts: &mut StartTimes,
    agent_start_ns: u64,
    now_ns: u64,
) -> Batch {
    let mut batch = Batch::default();
    let mut index: HashMap<ResourceKey, usize> = HashMap::new();
    let mut seen = HashMap::new();
    for family in families {
        let Some(kind) = family.kind else { continue };
        // The agent's own resource, which the push carries as such.
        if family.name == "target_info" {
            continue;
        }
        let name = otel_name(&family.name, &family.unit);
        for series in &family.series {
            let (resource, attributes) = split_labels(&series.labels);
            let value = series.value.clone();
            let key = format!("{name}{resource:?}{attributes:?}");
            let start_ns = match kind {
                Kind::Gauge => now_ns,
                _ => starts.start(key, level(&value), agent_start_ns, &mut seen),
            };
            let slot = *index.entry(resource.clone()).or_insert_with(|| {
                let attrs = if resource.is_empty() {
                    agent.clone()
                } else {
                    let mut attrs: Resource = resource
                        .iter()
                        .map(|(k, v)| (*k, Attr::Str(v.clone())))
                        .collect();
                    for (key, value) in node {
                        if !attrs.iter().any(|(k, _)| k == key) {
                            attrs.push((key, Attr::Str(value.clone())));
                        }
                    }
                    attrs
                };
                batch.resources.push((attrs, Vec::new()));
                batch.resources.len() - 1
            });
            let metrics = &mut batch.resources[slot].1;
            let point = Point {
                attributes,
                start_ns,
                value,
            };
            match metrics.last_mut() {
                Some(m) if m.name == name => m.points.push(point),
                _ => metrics.push(Metric {
                    name: name.clone(),
                    description: family.help.clone(),
                    unit: otel_unit(&family.unit),
                    kind,
                    points: vec![point],
                }),
            }
        }
    }
    starts.known = seen;
    starts.last_export_ns = Some(now_ns);
    batch
}

/// A series' resource labels, by attribute key (its identity when grouping).
type ResourceKey = Vec<(&'static str, String)>;

/// A series' labels as (resource, attributes), each without empty values.
fn split_labels(labels: &[(String, String)]) -> (ResourceKey, Vec<(String, Attr)>) {
    let mut resource = Vec::new();
    let mut attributes = Vec::new();
    let mut owner_kind = "";
    let mut owner_name = "";
    for (key, value) in labels {
        if value.is_empty() {
            continue;
        }
        match key.as_str() {
            "k8s_owner_kind" => owner_kind = value,
            "k8s_owner_name" => owner_name = value,
            _ => {}
        }
        if let Some((_, attr)) = RESOURCE.iter().find(|(k, _)| k == key) {
            resource.push((*attr, value.clone()));
        } else if key.starts_with("k8s_owner_") {
            // The pair below.
        } else if let Some((_, attr, int)) = ATTRIBUTES.iter().find(|(k, _, _)| k == key) {
            let v = match value.parse::<i64>() {
                Ok(i) if *int => Attr::Int(i),
                _ => Attr::Str(value.clone()),
            };
            attributes.push(((*attr).to_owned(), v));
        } else {
            attributes.push((key.clone(), Attr::Str(value.clone())));
        }
    }
    // As the spans' resource: `k8s.deployment.name` and the like; a bare pod has none.
    let owner = match owner_kind {
        "Deployment" => Some("k8s.deployment.name"),
        "StatefulSet" => Some("k8s.statefulset.name"),
        "DaemonSet" => Some("k8s.daemonset.name"),
        "Job" => Some("k8s.job.name"),
        "CronJob" => Some("k8s.cronjob.name"),
        "ReplicaSet" => Some("k8s.replicaset.name"),
        _ => None,
    };
    if let (Some(key), false) = (owner, owner_name.is_empty()) {
        resource.push((key, owner_name.to_owned()));
    }
    (resource, attributes)
}

#[cfg(test)]
mod tests {
    use super::super::openmetrics::parse;
    use super::*;

    #[test]
    fn names_go_back_to_their_opentelemetry_form() {
        for (family, unit, want) in [
            (
                "http_server_request_duration_seconds",
                "seconds",
                "http.server.request.duration",
            ),
            (
                "http_client_request_body_size_bytes",
                "bytes",
                "http.client.request.body.size",
            ),
            (
                "db_client_response_returned_rows",
                "",
                "db.client.response.returned_rows",
            ),
            (
                "messaging_client_sent_messages",
                "",
                "messaging.client.sent.messages",
            ),
            (
                "rpc_server_call_duration_seconds",
                "seconds",
                "rpc.server.call.duration",
            ),
            ("periscope_spans_exported", "", "periscope.spans_exported"),
            ("syscall_duration_seconds", "seconds", "syscall.duration"),
            (
                "periscope_series_memory_bytes",
                "bytes",
                "periscope.series_memory",
            ),
        ] {
            assert_eq!(otel_name(family, unit), want, "{family}");
        }
        assert_eq!(otel_unit("seconds"), "s");
        assert_eq!(otel_unit("bytes"), "By");
    }

    const TEXT: &str = r#"# HELP http_server_request_duration_seconds Duration.
# TYPE http_server_request_duration_seconds histogram
# UNIT http_server_request_duration_seconds seconds
http_server_request_duration_seconds_sum{http_request_method="GET",http_response_status_code="200",http_route="/a",server_port="8080",service_name="shop",container_id="",k8s_namespace_name="prod",k8s_owner_kind="Deployment",k8s_owner_name="shop"} 0.5
http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="/a",server_port="8080",service_name="shop",container_id="",k8s_namespace_name="prod",k8s_owner_kind="Deployment",k8s_owner_name="shop"} 2
http_server_request_duration_seconds_bucket{le="0.1",http_request_method="GET",http_response_status_code="200",http_route="/a",server_port="8080",service_name="shop",container_id="",k8s_namespace_name="prod",k8s_owner_kind="Deployment",k8s_owner_name="shop"} 1
http_server_request_duration_seconds_bucket{le="+Inf",http_request_method="GET",http_response_status_code="200",http_route="/a",server_port="8080",service_name="shop",container_id="",k8s_namespace_name="prod",k8s_owner_kind="Deployment",k8s_owner_name="shop"} 2
# HELP target_info Target metadata.
# TYPE target_info gauge
target_info{service_name="periscope"} 1
# HELP periscope_connections_opened Connections.
# TYPE periscope_connections_opened counter
periscope_connections_opened_total{how="accept"} 3
# EOF
"#;

    fn agent() -> Resource {
        vec![("service.name", Attr::Static("periscope"))]
    }

    #[test]
    fn workload_labels_are_the_resource_and_the_rest_attributes() {
        let mut starts = StartTimes::default();
        let node = [
            ("k8s.cluster.name", "eu-1".to_owned()),
            ("service.name", "not-this".to_owned()),
        ];
        let batch = convert(&parse(TEXT), &agent(), &node, &mut starts, 100, 1000);
        assert_eq!(batch.resources.len(), 2);
        let (resource, metrics) = &batch.resources[0];
        assert_eq!(
            resource,
            &vec![
                ("service.name", Attr::Str("shop".into())),
                ("k8s.namespace.name", Attr::Str("prod".into())),
                ("k8s.deployment.name", Attr::Str("shop".into())),
                ("k8s.cluster.name", Attr::Str("eu-1".into())),
            ]
        );
        let m = &metrics[0];
        assert_eq!(
            (m.name.as_str(), m.unit, m.kind),
            ("http.server.request.duration", "s", Kind::Histogram)
        );
        assert_eq!(
            m.points[0].attributes,
            vec![
                ("http.request.method".to_owned(), Attr::Str("GET".into())),
                ("http.response.status_code".to_owned(), Attr::Int(200)),
                ("http.route".to_owned(), Attr::Str("/a".into())),
                ("server.port".to_owned(), Attr::Int(8080)),
            ]
        );
        assert_eq!(m.points[0].start_ns, 100);
        assert_eq!(
            m.points[0].value,
            Value::Histogram {
                bounds: vec![0.1],
                counts: vec![1, 1],
                sum: 0.5,
                count: 2
            }
        );
        let (resource, metrics) = &batch.resources[1];
        assert_eq!(resource, &agent());
        assert_eq!(metrics[0].name, "periscope.connections_opened");
        assert_eq!(metrics[0].kind, Kind::Counter);
        assert_eq!(metrics[0].points[0].value, Value::Number(3.0));
        assert_eq!(
            metrics[0].points[0].attributes,
            vec![("how".to_owned(), Attr::Str("accept".into()))]
        );
    }

    #[test]
    fn a_series_keeps_its_start_until_it_resets_and_a_new_one_starts_at_the_last_export() {
        let mut starts = StartTimes::default();
        let first = convert(&parse(TEXT), &agent(), &[], &mut starts, 100, 1000);
        let start = |b: &Batch, r: usize| b.resources[r].1[0].points[0].start_ns;
        assert_eq!(start(&first, 1), 100);
        let second = convert(&parse(TEXT), &agent(), &[], &mut starts, 100, 2000);
        assert_eq!(start(&second, 1), 100, "same series, same start");
        let reset = TEXT.replace("{how=\"accept\"} 3", "{how=\"accept\"} 1");
        let third = convert(&parse(&reset), &agent(), &[], &mut starts, 100, 3000);
        assert_eq!(
            start(&third, 1),
            2000,
            "a reset starts at the previous export"
        );
        let new = TEXT.replace("accept", "connect");
        let fourth = convert(&parse(&new), &agent(), &[], &mut starts, 100, 4000);
        assert_eq!(
            start(&fourth, 1),
            3000,
            "a new series starts at the previous export"
        );
    }
}
