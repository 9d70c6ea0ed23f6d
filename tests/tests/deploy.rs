//! deploy/: the plain manifests and the Helm chart (rendered by Helm's own Go engine) validate
//! against Kubernetes' OpenAPI schemas, the chart renders exactly the plain manifests by
//! default, the security settings are the least-privilege set, the alert rules pass promtool
//! (and fire in its unit tests) with the chart's threshold and duration values in them, every
//! alert links to a runbook section of deploy/README.md, and the dashboards are well formed
//! (every selector filters by the cluster and the other variables).
//!
//! Tools (all installed by `cargo xtask setup`): `kubernetes-validate` and `helm-python-sdk`
//! (PyPI), `promtool` (Debian's prometheus). No root, no agent, no cluster.
//!
//! Custom resources (ServiceMonitor, PodMonitor, PrometheusRule: `monitoring.coreos.com/v1`)
//! have no schema in kubernetes-validate, which only warns about them; they are excluded from
//! it by API group and validated instead against the Prometheus Operator's CRD schemas
//! (`@kubernetes-models/prometheus-operator` on npm, JSON-schema validators generated from the
//! CRDs: types, enums, patterns and required fields, but unknown fields pass), checked field by
//! field below, and their rules by promtool.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use harness::TempDir;
use serde_json::{json, Value};

use common::{
    alert_groups, alert_rule_objects, alert_rules, dashboard_queries, dashboard_variables,
    dashboards, deploy_dir, metric_names, panels, parse_label_values, selectors, write_rules_file,
    yaml_docs, yaml_file, KNOWN_METRICS,
};

/// Oldest and newest Kubernetes versions whose schemas kubernetes-validate ships.
const KUBERNETES_VERSIONS: &[&str] = &["1.25.0", "1.37.0"];
const CUSTOM_GROUP: &str = "monitoring.coreos.com/";

const CAPABILITIES: &[&str] = &[
    "BPF",
    "PERFMON",
    "SYS_RESOURCE",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
    "NET_ADMIN",
    "SYS_ADMIN",
];
const JAEGER_ENDPOINT: &str = "http://jaeger-collector.observability:4317";

fn kube_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

/// Objects of the plain manifests: the core files (`kubectl apply -f deploy/kubernetes/`),
/// or those of `monitoring/`.
fn plain_objects(subdir: &str) -> Vec<Value> {
    let dir = kube_dir().join(subdir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files.iter().flat_map(|f| yaml_file(f)).collect()
}

fn kind_name(object: &Value) -> (String, String) {
    (
        object["kind"].as_str().unwrap_or_default().to_owned(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The one object of `kind` (a copy).
fn find(objects: &[Value], kind: &str) -> Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0].clone()
}

/// Renders the chart with Helm's Go template engine (the helm-python-sdk wheel wraps Helm's
/// own SDK; Debian has no helm package) as release `periscope` in namespace `periscope`.
/// Returns the objects, or Helm's error.
fn render_chart(values: &Value) -> anyhow::Result<Vec<Value>> {
    const RENDER: &str = r#"
import json, sys
import helm_python as helm
with helm.Chart.load(sys.argv[1]) as chart:
    out = chart.render(json.loads(sys.argv[2]), name="periscope", namespace="periscope")
json.dump(out, sys.stdout)
"#;
    let chart = deploy_dir().join("helm/periscope");
    let out = Command::new("python3")
        .arg("-c")
        .arg(RENDER)
        .arg(&chart)
        .arg(values.to_string())
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "helm render failed (helm-python-sdk: `cargo xtask setup` installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let files: BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).context("helm render output")?;
    let mut objects = Vec::new();
    for (path, text) in &files {
        if path.ends_with(".txt") {
            continue; // NOTES.txt
        }
        objects.extend(yaml_docs(text).with_context(|| format!("rendered {path}:\n{text}"))?);
    }
    Ok(objects)
}

/// The chart's labels that the plain manifests do not carry.
fn without_helm_labels(mut object: Value) -> Value {
    if let Some(labels) = object["metadata"]["labels"].as_object_mut() {
        labels.remove("helm.sh/chart");
        labels.remove("app.kubernetes.io/managed-by");
    }
    object
}

/// Runs kubernetes-validate in strict mode (unknown fields are errors) against every object
/// that has a schema, for each version in [`KUBERNETES_VERSIONS`]; returns how many objects
/// were validated.
fn kubernetes_validate(objects: &[Value]) -> anyhow::Result<usize> {
    let dir = TempDir::new("validate")?;
    let mut files = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        if object["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with(CUSTOM_GROUP))
        {
            continue;
        }
        let (kind, name) = kind_name(object);
        let path = dir.path().join(format!("{i:02}-{kind}-{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(object)?)?;
        files.push(path);
    }
    for version in KUBERNETES_VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", version])
            .args(&files)
            .output()
            .context("running kubernetes-validate (`cargo xtask setup` installs it)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let passed = stdout.lines().filter(|l| l.starts_with("INFO ")).count();
        // A missing schema is only a warning for kubernetes-validate: not here.
        if !out.status.success() || passed != files.len() {
            bail!(
                "kubernetes-validate {version}: {passed}/{} passed ({}):\n{stdout}{}",
                files.len(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(files.len())
}

/// Validates the `monitoring.coreos.com/v1` objects among `objects` against the Prometheus
/// Operator's CRD schemas; returns how many were validated.
fn validate_custom_resources(objects: &[Value]) -> anyhow::Result<usize> {
    const PACKAGE: &str = "@kubernetes-models/prometheus-operator";
    let custom: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            o["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with(CUSTOM_GROUP))
        })
        .collect();
    let root = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .context("running npm (`cargo xtask setup` installs it)")?;
    let module = Path::new(String::from_utf8_lossy(&root.stdout).trim())
        .join(PACKAGE)
        .join("monitoring.coreos.com/v1/index.js");
    if !module.exists() {
        bail!(
            "{} is missing: `cargo xtask setup` installs {PACKAGE}",
            module.display()
        );
    }
    let dir = TempDir::new("crd-validate")?;
    let input = dir.path().join("objects.json");
    std::fs::write(&input, serde_json::to_string(&custom)?)?;
    let script = dir.path().join("validate.mjs");
    // Imported by file URL: the package's `exports` only cover bare imports.
    std::fs::write(
        &script,
        format!(
            r#"import {{ readFileSync }} from "node:fs";
const models = await import("file://{module}");
let failed = 0;
for (const object of JSON.parse(readFileSync(process.argv[2], "utf8"))) {{
  const name = `${{object.kind}}/${{object.metadata?.name}}`;
  const Model = models[object.kind];
  if (!Model) {{ console.log(`ERROR ${{name}}: no schema for this kind`); failed++; continue; }}
  try {{ new Model(object).validate(); console.log(`OK ${{name}}`); }}
  catch (e) {{ console.log(`ERROR ${{name}}: ${{e.message}}`); failed++; }}
}}
process.exit(failed ? 1 : 0);
"#,
            module = module.display()
        ),
    )?;
    let out = Command::new("node").arg(&script).arg(&input).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok = stdout.lines().filter(|l| l.starts_with("OK ")).count();
    if !out.status.success() || ok != custom.len() {
        bail!(
            "CRD validation: {ok}/{} passed ({}):\n{stdout}{}",
            custom.len(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(custom.len())
}

#[test]
fn custom_resources_validate_against_the_operator_schemas() {
    let plain = plain_objects("monitoring");
    assert_eq!(validate_custom_resources(&plain).unwrap(), 3);
    for monitor in ["serviceMonitor", "podMonitor"] {
        let rendered = render_chart(&all_features(monitor)).unwrap();
        assert_eq!(
            validate_custom_resources(&rendered).unwrap(),
            2,
            "{monitor}"
        );
    }
    // And the check can fail: a relabeling action that does not exist, a numeric `for`.
    let mut broken = plain.clone();
    let monitor = broken
        .iter_mut()
        .find(|o| o["kind"] == "ServiceMonitor")
        .unwrap();
    monitor["spec"]["endpoints"][0]["relabelings"][0]["action"] = json!("rename");
    let rule = broken
        .iter_mut()
        .find(|o| o["kind"] == "PrometheusRule")
        .unwrap();
    rule["spec"]["groups"][0]["rules"][0]["for"] = json!(600);
    let err = format!("{:#}", validate_custom_resources(&broken).unwrap_err());
    assert!(err.contains("1/3 passed"), "{err}");
    assert!(err.contains("relabelings/0/action"), "{err}");
    assert!(err.contains("rules/0/for"), "{err}");
}

#[test]
fn plain_manifests_validate_against_the_kubernetes_schemas() {
    let mut objects = plain_objects("");
    objects.extend(yaml_file(&kube_dir().join("examples/jaeger.yaml")));
    let validated = kubernetes_validate(&objects).unwrap();
    let kinds: BTreeSet<String> = objects.iter().map(|o| kind_name(o).0).collect();
    assert_eq!(validated, objects.len());
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Deployment",
            "Namespace",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into()
    );
    // Everything of Periscope's but the cluster-scoped objects lives in its namespace.
    for object in plain_objects("").iter().chain(&plain_objects("monitoring")) {
        let (kind, name) = kind_name(object);
        match kind.as_str() {
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" => {}
            _ => assert_eq!(
                object["metadata"]["namespace"], "periscope",
                "{kind}/{name}"
            ),
        }
    }
}

#[test]
fn the_validator_rejects_a_broken_daemonset() {
    // The check above must be able to fail: an unknown field and a wrong type are caught.
    let mut objects = plain_objects("");
    let daemonset = objects
        .iter_mut()
        .find(|o| o["kind"] == "DaemonSet")
        .unwrap();
    daemonset["spec"]["template"]["spec"]["hostPid"] = json!(true);
    let err = kubernetes_validate(&objects).unwrap_err();
    assert!(format!("{err:#}").contains("hostPid"), "{err:#}");

    let mut objects = plain_objects("");
    let daemonset = objects
        .iter_mut()
        .find(|o| o["kind"] == "DaemonSet")
        .unwrap();
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
        ["add"] = json!("BPF");
    assert!(kubernetes_validate(&objects).is_err());
}

#[test]
fn chart_defaults_render_the_plain_manifests() {
    let rendered = render_chart(&json!({})).unwrap();
    assert_eq!(kubernetes_validate(&rendered).unwrap(), rendered.len());
    let rendered: BTreeMap<(String, String), Value> = rendered
        .into_iter()
        .map(|o| (kind_name(&o), without_helm_labels(o)))
        .collect();
    // `helm install --create-namespace` makes the Namespace; everything else is the same.
    let plain: BTreeMap<(String, String), Value> = plain_objects("")
        .into_iter()
        .filter(|o| o["kind"] != "Namespace")
        .map(|o| (kind_name(&o), o))
        .collect();
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>()
    );
    for (key, object) in &plain {
        assert_eq!(
            &rendered[key], object,
            "{key:?} differs between the chart and deploy/kubernetes"
        );
    }
}

/// Values with every optional feature on.
fn all_features(monitor: &str) -> Value {
    json!({
        monitor: {"enabled": true, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": true},
        "dashboards": {"enabled": true, "namespace": "monitoring"},
        "otlp": {"endpoint": JAEGER_ENDPOINT},
        "securityContext": {"privileged": true},
        "priorityClassName": "system-node-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "podAnnotations": {"example.com/team": "observability"},
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
        "imagePullSecrets": [{"name": "registry"}],
        "image": {"repository": "registry.example.com/periscope", "tag": "1.2.3"},
        "maxSeries": 2000000,
        "protocols": ["http", "kafka"],
        "mounts": {"btf": false},
    })
}

fn env_of(daemonset: &Value) -> BTreeMap<String, Value> {
    daemonset["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = e
                .get("value")
                .cloned()
                .unwrap_or_else(|| e["valueFrom"].clone());
            (e["name"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

#[test]
fn chart_with_every_feature_validates_and_matches_the_plain_extras() {
    for monitor in ["serviceMonitor", "podMonitor"] {
        let rendered = render_chart(&all_features(monitor)).unwrap();
        let core = kubernetes_validate(&rendered).unwrap();
        let dashboards = dashboards();
        // 5 core objects + one ConfigMap per dashboard.
        assert_eq!(core, 5 + dashboards.len(), "{monitor}");

        // The Prometheus Operator objects are the plain ones, plus the extra label asked for.
        let plain_monitoring = plain_objects("monitoring");
        let kind = if monitor == "serviceMonitor" {
            "ServiceMonitor"
        } else {
            "PodMonitor"
        };
        for kind in [kind, "PrometheusRule"] {
            let mut ours = without_helm_labels(find(&rendered, kind));
            if let Some(labels) = ours["metadata"]["labels"].as_object_mut() {
                labels.remove("release");
            }
            assert_eq!(ours, find(&plain_monitoring, kind), "{kind}");
        }
        let other = if monitor == "serviceMonitor" {
            "PodMonitor"
        } else {
            "ServiceMonitor"
        };
        assert!(!rendered.iter().any(|o| o["kind"] == other));
        assert_eq!(
            find(&rendered, kind)["metadata"]["labels"]["release"],
            "kube-prometheus-stack"
        );

        // Dashboards: one ConfigMap each, labelled for Grafana's sidecar, holding the file.
        let configmaps: Vec<&Value> = rendered
            .iter()
            .filter(|o| o["kind"] == "ConfigMap")
            .collect();
        assert_eq!(configmaps.len(), dashboards.len());
        for (name, dashboard) in &dashboards {
            let cm = configmaps
                .iter()
                .find(|c| c["metadata"]["name"] == format!("periscope-dashboard-{name}"))
                .unwrap_or_else(|| panic!("no ConfigMap for dashboard {name}"));
            assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
            assert_eq!(cm["metadata"]["namespace"], "monitoring");
            let data = cm["data"][format!("periscope-{name}.json")]
                .as_str()
                .unwrap_or_else(|| panic!("ConfigMap of {name} has no periscope-{name}.json"));
            let parsed: Value = serde_json::from_str(data).unwrap();
            assert_eq!(&parsed, dashboard, "{name}");
        }

        // The DaemonSet with everything on.
        let daemonset = find(&rendered, "DaemonSet");
        let pod = &daemonset["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "registry.example.com/periscope:1.2.3");
        assert_eq!(pod["priorityClassName"], "system-node-critical");
        assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
        assert_eq!(pod["imagePullSecrets"][0]["name"], "registry");
        assert_eq!(
            daemonset["spec"]["template"]["metadata"]["annotations"]["example.com/team"],
            "observability"
        );
        assert_eq!(
            container["securityContext"],
            json!({"runAsUser": 0, "privileged": true, "readOnlyRootFilesystem": true})
        );
        let env = env_of(&daemonset);
        assert_eq!(env["PERISCOPE_MAX_SERIES"], "2000000");
        assert_eq!(env["PERISCOPE_PROTOCOLS"], "http,kafka");
        assert_eq!(env["RUST_BACKTRACE"], "1");
        // The OTLP settings are those of the plain Jaeger example.
        let patch = &yaml_file(&kube_dir().join("examples/otlp-jaeger-patch.yaml"))[0];
        for e in patch["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
        {
            assert_eq!(env[e["name"].as_str().unwrap()], e["value"], "{e}");
        }
        // No BTF volume when mounts.btf is off.
        assert!(!pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "btf"));
        // No TLS files unless asked for.
        assert!(!env.contains_key("OTEL_EXPORTER_OTLP_CERTIFICATE"));
    }
}

/// An https collector: the CA and the client pair come from Secrets, mounted where the
/// standard variables point.
#[test]
fn chart_mounts_the_collectors_tls_secrets() {
    let mut values = all_features("serviceMonitor");
    values["otlp"] = json!({
        "endpoint": "https://otel-collector.observability:4317",
        "tls": {"caSecret": "otlp-ca", "clientSecret": "periscope-otlp-client"},
    });
    let rendered = render_chart(&values).unwrap();
    kubernetes_validate(&rendered).unwrap();
    let daemonset = find(&rendered, "DaemonSet");
    let env = env_of(&daemonset);
    let pod = &daemonset["spec"]["template"]["spec"];
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    let volumes = pod["volumes"].as_array().unwrap();
    for (variable, file, volume, secret) in [
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "ca.crt",
            "otlp-ca",
            "otlp-ca",
        ),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            "tls.crt",
            "otlp-client",
            "periscope-otlp-client",
        ),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "tls.key",
            "otlp-client",
            "periscope-otlp-client",
        ),
    ] {
        let mount = mounts
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("no mount of {volume}: {mounts:#?}"));
        let path = format!("{}/{file}", mount["mountPath"].as_str().unwrap());
        assert_eq!(env[variable], path.as_str(), "{variable}");
        assert_eq!(mount["readOnly"], true);
        let v = volumes.iter().find(|v| v["name"] == volume).unwrap();
        assert_eq!(v["secret"]["secretName"], secret);
    }
}

/// Values `config` become the agent's configuration file: a ConfigMap mounted where
/// `PERISCOPE_CONFIG` points, a checksum that rolls the pods when it changes, and a file the
/// real agent reads (its `--print-config` shows each key as coming from the file). Without
/// `config`, none of it is rendered.
#[test]
fn chart_values_config_becomes_the_agents_configuration_file() {
    let mut values = all_features("serviceMonitor");
    values["config"] = json!({"traces-batch-size": 100, "protocols": ["http", "postgres"]});
    let rendered = render_chart(&values).unwrap();
    kubernetes_validate(&rendered).unwrap();
    let config_map = |objects: &[Value]| {
        objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["data"]["config.yaml"].is_string())
            .cloned()
    };
    let map = config_map(&rendered).expect("the configuration file's ConfigMap");
    let text = map["data"]["config.yaml"].as_str().unwrap();
    let daemonset = find(&rendered, "DaemonSet");
    let env = env_of(&daemonset);
    let pod = &daemonset["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap()
        .clone();
    assert_eq!(
        env["PERISCOPE_CONFIG"],
        format!("{}/config.yaml", mount["mountPath"].as_str().unwrap()).as_str()
    );
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap()
        .clone();
    assert_eq!(volume["configMap"]["name"], map["metadata"]["name"]);
    let annotations = &daemonset["spec"]["template"]["metadata"]["annotations"];
    assert!(annotations["checksum/config"].is_string(), "{annotations}");

    let dir = harness::TempDir::new("chart-config").unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(harness::agent_binary())
        .arg("--print-config")
        .env("PERISCOPE_CONFIG", &file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    for line in [
        "traces-batch-size: \"100\"  # file",
        "protocols: \"http,postgres\"  # file",
    ] {
        assert!(printed.contains(line), "{line}\n{printed}");
    }

    values["config"] = json!({});
    let rendered = render_chart(&values).unwrap();
    assert!(config_map(&rendered).is_none());
    assert!(!env_of(&find(&rendered, "DaemonSet")).contains_key("PERISCOPE_CONFIG"));
}

/// A protected /metrics: the TLS pair and the token come from Secrets, mounted where the
/// agent's variables point; the probes switch to HTTPS; both monitors scrape with https, the
/// CA and server name, and the bearer token.
#[test]
fn chart_protects_metrics_with_tls_and_a_bearer_token() {
    for monitor in ["serviceMonitor", "podMonitor"] {
        let mut values = all_features(monitor);
        values["metricsAuth"] = json!({
            "tlsSecret": "periscope-metrics-tls",
            "serverName": "periscope.monitoring.svc",
            "tokenSecret": "periscope-metrics-token",
        });
        let rendered = render_chart(&values).unwrap();
        kubernetes_validate(&rendered).unwrap();
        let daemonset = find(&rendered, "DaemonSet");
        let env = env_of(&daemonset);
        let pod = &daemonset["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let mounts = container["volumeMounts"].as_array().unwrap();
        let volumes = pod["volumes"].as_array().unwrap();
        for (variable, file, volume, secret) in [
            (
                "PERISCOPE_METRICS_TLS_CERT",
                "tls.crt",
                "metrics-tls",
                "periscope-metrics-tls",
            ),
            (
                "PERISCOPE_METRICS_TLS_KEY",
                "tls.key",
                "metrics-tls",
                "periscope-metrics-tls",
            ),
            (
                "PERISCOPE_METRICS_BEARER_TOKEN_FILE",
                "token",
                "metrics-token",
                "periscope-metrics-token",
            ),
        ] {
            let mount = mounts.iter().find(|m| m["name"] == volume).unwrap();
            let path = format!("{}/{file}", mount["mountPath"].as_str().unwrap());
            assert_eq!(env[variable], path.as_str(), "{variable}");
            let v = volumes.iter().find(|v| v["name"] == volume).unwrap();
            assert_eq!(v["secret"]["secretName"], secret);
            assert!(v["secret"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["key"] == file));
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(container[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
        }
        let kind = if monitor == "serviceMonitor" {
            "ServiceMonitor"
        } else {
            "PodMonitor"
        };
        let endpoints = if monitor == "serviceMonitor" {
            "endpoints"
        } else {
            "podMetricsEndpoints"
        };
        let endpoint = &find(&rendered, kind)["spec"][endpoints][0];
        assert_eq!(endpoint["scheme"], "https", "{endpoint}");
        assert_eq!(
            endpoint["tlsConfig"]["serverName"],
            "periscope.monitoring.svc"
        );
        assert_eq!(
            endpoint["tlsConfig"]["ca"]["secret"]["name"],
            "periscope-metrics-tls"
        );
        assert_eq!(endpoint["tlsConfig"]["ca"]["secret"]["key"], "ca.crt");
        assert_eq!(endpoint["authorization"]["type"], "Bearer");
        assert_eq!(
            endpoint["authorization"]["credentials"]["name"],
            "periscope-metrics-token"
        );
        assert_eq!(endpoint["authorization"]["credentials"]["key"], "token");
    }
    // Without metricsAuth: plain HTTP everywhere, nothing mounted.
    let rendered = render_chart(&all_features("serviceMonitor")).unwrap();
    let daemonset = find(&rendered, "DaemonSet");
    assert!(!env_of(&daemonset).contains_key("PERISCOPE_METRICS_TLS_CERT"));
    let endpoint = &find(&rendered, "ServiceMonitor")["spec"]["endpoints"][0];
    assert!(endpoint.get("scheme").is_none() && endpoint.get("authorization").is_none());
    assert!(
        daemonset["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
            .get("scheme")
            .is_none()
    );
    // TLS without a server name cannot be verified by pod IP: refused at render time.
    let mut values = all_features("serviceMonitor");
    values["metricsAuth"] = json!({"tlsSecret": "periscope-metrics-tls"});
    assert!(render_chart(&values).is_err());
}

#[test]
fn chart_passes_helm_lint() {
    // `helm lint` with Helm's own linter: messages are (severity, path, text); severity 1 is
    // INFO, 2 WARNING, 3 ERROR.
    const LINT: &str = r#"
import json, sys
import helm_python as helm
json.dump(helm.lint(sys.argv[1]), sys.stdout)
"#;
    let out = harness::output_ok(
        Command::new("python3")
            .arg("-c")
            .arg(LINT)
            .arg(deploy_dir().join("helm/periscope")),
    )
    .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["total_charts_linted"], 1, "{report}");
    assert_eq!(report["errors"], json!([]), "{report}");
    for message in report["messages"].as_array().unwrap() {
        assert!(message["severity"].as_i64().unwrap() < 2, "{message}");
    }
}

#[test]
fn chart_refuses_both_monitors() {
    let err = render_chart(&json!({
        "serviceMonitor": {"enabled": true},
        "podMonitor": {"enabled": true},
    }))
    .unwrap_err();
    assert!(format!("{err:#}").contains("not both"), "{err:#}");
}

/// The security settings every default DaemonSet (plain and chart) must have.
fn assert_least_privilege(daemonset: &Value) {
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["hostNetwork"], false);
    assert_eq!(pod["serviceAccountName"], "periscope");
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(
        pod["affinity"],
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{
            "key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]
        }]}]}}}),
        "the image's architectures"
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"], json!({"type": "RuntimeDefault"}));
    let added: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(added, CAPABILITIES);

    // Host paths: exactly these, and every mount read-only.
    let volumes: BTreeMap<&str, &str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["hostPath"]["path"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        volumes,
        BTreeMap::from([
            ("btf", "/sys/kernel/btf"),
            ("tracefs", "/sys/kernel/tracing"),
            ("debugfs", "/sys/kernel/debug"),
            ("cgroup", "/sys/fs/cgroup"),
        ])
    );
    for mount in c["volumeMounts"].as_array().unwrap() {
        let name = mount["name"].as_str().unwrap();
        assert_eq!(mount["readOnly"], true, "{name}");
        assert_eq!(mount["mountPath"], volumes[name], "{name}");
        let propagation = if name == "tracefs" || name == "debugfs" {
            json!("HostToContainer")
        } else {
            Value::Null
        };
        assert_eq!(mount["mountPropagation"], propagation, "{name}");
    }

    // Probes, port, resources, the environment the agent reads.
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}])
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    let env = env_of(daemonset);
    assert_eq!(
        env["NODE_NAME"],
        json!({"fieldRef": {"fieldPath": "spec.nodeName"}})
    );
    assert_eq!(env["PERISCOPE_METRICS_ADDR"], "0.0.0.0:9464");
    assert_eq!(env["PERISCOPE_PROTOCOLS"], "http,http2,postgres,kafka");
    assert_eq!(env["PERISCOPE_MAX_SERIES"], "5000");
    assert_eq!(env["PERISCOPE_SERIES_MEMORY_BUDGET"], "67108864");
    assert_eq!(env["PERISCOPE_SERIES_GRACE"], "5m");
    // Tracing is off by default: no endpoint.
    assert!(!env.keys().any(|k| k.starts_with("OTEL_")), "{env:?}");
}

#[test]
fn daemonset_has_the_least_privilege_settings() {
    assert_least_privilege(&find(&plain_objects(""), "DaemonSet"));
    assert_least_privilege(&find(&render_chart(&json!({})).unwrap(), "DaemonSet"));
}

#[test]
fn cluster_role_only_reads_what_attribution_needs() {
    for objects in [plain_objects(""), render_chart(&json!({})).unwrap()] {
        let role = find(&objects, "ClusterRole");
        let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for rule in role["rules"].as_array().unwrap() {
            let verbs: Vec<&str> = rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(verbs, ["list", "watch"], "{rule}");
            assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    granted
                        .entry(group.as_str().unwrap().to_owned())
                        .or_default()
                        .insert(resource.as_str().unwrap().to_owned());
                }
            }
        }
        let expected: BTreeMap<String, BTreeSet<String>> = [
            ("", &["pods", "services"][..]),
            ("apps", &["replicasets"][..]),
            ("batch", &["jobs"][..]),
        ]
        .into_iter()
        .map(|(g, rs)| (g.to_owned(), rs.iter().map(|r| r.to_string()).collect()))
        .collect();
        assert_eq!(granted, expected);
        let binding = find(&objects, "ClusterRoleBinding");
        assert_eq!(
            binding["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "periscope"})
        );
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "periscope", "namespace": "periscope"}])
        );
    }
}

#[test]
fn monitors_scrape_the_metrics_port_as_job_periscope() {
    let objects = plain_objects("monitoring");
    let service = find(&plain_objects(""), "Service");
    assert_eq!(service["spec"]["clusterIP"], "None");
    let daemonset = find(&plain_objects(""), "DaemonSet");
    let pod_labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    for (kind, endpoints) in [
        ("ServiceMonitor", "endpoints"),
        ("PodMonitor", "podMetricsEndpoints"),
    ] {
        let monitor = find(&objects, kind);
        // The alert rules select job="periscope": the job comes from this label's value.
        let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();
        assert_eq!(pod_labels[job_label], "periscope", "{kind}");
        assert_eq!(service["metadata"]["labels"][job_label], "periscope");
        // The selector matches the pods (PodMonitor) and the Service (ServiceMonitor).
        let target_labels = if kind == "PodMonitor" {
            pod_labels
        } else {
            &service["metadata"]["labels"]
        };
        for (k, v) in monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(&target_labels[k], v, "{kind} selector {k}");
        }
        let endpoint = &monitor["spec"][endpoints][0];
        assert_eq!(endpoint["port"], "metrics");
        assert_eq!(endpoint["path"], "/metrics");
        assert_eq!(
            monitor["spec"]["namespaceSelector"]["matchNames"],
            json!(["periscope"])
        );
    }
}

/// `alerts.runbookBaseUrl` of the chart's values.yaml.
fn runbook_base() -> String {
    let values = &yaml_file(&deploy_dir().join("helm/periscope/values.yaml"))[0];
    values["alerts"]["runbookBaseUrl"]
        .as_str()
        .expect("alerts.runbookBaseUrl")
        .to_owned()
}

/// The runbook_url an alert carries by default: its section of deploy/README.md.
fn runbook_url(alert: &str) -> String {
    format!("{}#{}", runbook_base(), alert.to_lowercase())
}

/// The chart's PrometheusRule, rendered with these `alerts` values.
fn rendered_rule(alerts: Value) -> anyhow::Result<Value> {
    let objects = render_chart(&json!({"prometheusRule": {"enabled": true}, "alerts": alerts}))?;
    Ok(find(&objects, "PrometheusRule"))
}

/// The rule of `alert` in a PrometheusRule's spec.
fn rule_named<'a>(spec: &'a Value, alert: &str) -> &'a Value {
    spec["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| r["alert"] == alert)
        .unwrap_or_else(|| panic!("no rule {alert}"))
}

/// Each alert's key under the chart's `alerts` values.
const ALERT_KEYS: &[(&str, &str)] = &[
    ("httpServerErrorRatio", "PeriscopeHTTPServerErrorRatioHigh"),
    ("httpServerLatencyP99", "PeriscopeHTTPServerLatencyP99High"),
    ("postgresErrorRatio", "PeriscopePostgresErrorRatioHigh"),
    ("kafkaErrorRatio", "PeriscopeKafkaErrorRatioHigh"),
    ("kernelEventsLost", "PeriscopeKernelEventsLost"),
    ("flowEventsLost", "PeriscopeFlowEventsLost"),
    ("spansDropped", "PeriscopeSpansDropped"),
    ("seriesDropped", "PeriscopeSeriesDropped"),
    (
        "kubernetesAPIUnreachable",
        "PeriscopeKubernetesAPIUnreachable",
    ),
    ("agentDown", "PeriscopeAgentDown"),
    ("agentAbsent", "PeriscopeAgentAbsent"),
];

#[test]
fn alert_rules_pass_promtool_and_match_the_chart() {
    let rule = find(&plain_objects("monitoring"), "PrometheusRule");
    // The chart's default values render exactly the plain rules.
    let chart = rendered_rule(json!({})).unwrap();
    assert_eq!(rule["spec"], chart["spec"]);
    assert_eq!(rule["spec"], alert_groups());
    let dir = TempDir::new("rules").unwrap();
    let rules = write_rules_file(dir.path(), &rule["spec"]);
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: BTreeSet<String> = alert_rules().into_iter().map(|(n, _)| n).collect();
    assert!(
        stdout.contains(&format!("SUCCESS: {} rules found", names.len())),
        "{stdout}"
    );
    assert_eq!(
        names,
        ALERT_KEYS
            .iter()
            .map(|(_, alert)| alert.to_string())
            .collect()
    );
    for r in alert_rule_objects() {
        let name = r["alert"].as_str().unwrap();
        assert!(
            matches!(
                r["labels"]["severity"].as_str(),
                Some("warning" | "critical")
            ),
            "{name}"
        );
        for key in ["summary", "description"] {
            assert!(
                r["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name} {key}"
            );
        }
        assert_eq!(r["annotations"]["runbook_url"], runbook_url(name), "{name}");
        // Every alert has a `for`, which the chart takes from its values.
        assert!(r["for"].is_string(), "{name}");
        for metric in metric_names(r["expr"].as_str().unwrap()) {
            assert!(KNOWN_METRICS.contains(&metric.as_str()), "{name}: {metric}");
        }
    }
}

/// A promtool rule unit test: `series` (promtool's input_series), evaluated at `at`, must fire
/// exactly `expected` (alertname, labels) alerts.
fn promtool_test(rules: &Path, dir: &Path, name: &str, series: &str, alerts: &str) {
    let test = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &test,
        format!(
            "rule_files: [{}]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}\n    alert_rule_test:\n{alerts}\n",
            rules.display()
        ),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&test)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules ({name}):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With `nameOverride` the monitors name the job after the override (`jobLabel` is
/// `app.kubernetes.io/name`), and the rendered rules select that job: an agent that is up does
/// not count as absent, one that is down fires.
#[test]
fn alert_rules_follow_the_name_override() {
    let objects = render_chart(&json!({
        "nameOverride": "obs-agent",
        "prometheusRule": {"enabled": true},
        "serviceMonitor": {"enabled": true},
    }))
    .unwrap();
    let monitor = find(&objects, "ServiceMonitor");
    assert_eq!(monitor["spec"]["jobLabel"], "app.kubernetes.io/name");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "obs-agent"
    );
    let rule = find(&objects, "PrometheusRule");
    let text = rule["spec"].to_string();
    assert!(!text.contains(r#"job=\"periscope\""#), "{text}");
    assert!(
        rule_named(&rule["spec"], "PeriscopeAgentAbsent")["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains(r#"job="obs-agent""#)
    );
    let dir = TempDir::new("rule-override").unwrap();
    let rules = write_rules_file(dir.path(), &rule["spec"]);
    let agent = r#"job="obs-agent", instance="10.0.0.7:9464", namespace="periscope", pod="obs-agent-x", node="n1""#;
    promtool_test(
        &rules,
        dir.path(),
        "override",
        &format!("      - series: 'up{{{agent}}}'\n        values: '1x5 0x20'"),
        &format!(
            r#"      - eval_time: 4m
        alertname: PeriscopeAgentAbsent
        exp_alerts: []
      - eval_time: 4m
        alertname: PeriscopeAgentDown
        exp_alerts: []
      - eval_time: 15m
        alertname: PeriscopeAgentDown
        exp_alerts:
          - exp_labels: {{job: obs-agent, instance: '10.0.0.7:9464', namespace: periscope, pod: obs-agent-x, node: n1, severity: critical}}
            exp_annotations:
              summary: "A Periscope agent cannot be scraped; its node is unobserved."
              description: "Prometheus has failed to scrape 10.0.0.7:9464 (node n1) for 5m."
              runbook_url: "{}"
      - eval_time: 15m
        alertname: PeriscopeAgentAbsent
        exp_alerts: []"#,
            runbook_url("PeriscopeAgentDown")
        ),
    );
}

#[test]
fn alerts_fire_exactly_when_they_should() {
    let dir = TempDir::new("rule-tests").unwrap();
    let rules = write_rules_file(dir.path(), &alert_groups());
    let w = r#"k8s_namespace_name="shop", k8s_owner_kind="Deployment", k8s_owner_name="cart", service_name="cart""#;
    // 10 requests/s of which 1/s are 500s: 10% > 5%, for longer than `for: 10m`.
    promtool_test(
        &rules,
        dir.path(),
        "http-5xx",
        &format!(
            "      - series: 'http_server_request_duration_seconds_count{{{w}, http_response_status_code=\"200\"}}'\n        values: '0+540x30'\n      - series: 'http_server_request_duration_seconds_count{{{w}, http_response_status_code=\"500\"}}'\n        values: '0+60x30'"
        ),
        &format!(
            "      - eval_time: 25m\n        alertname: PeriscopeHTTPServerErrorRatioHigh\n        exp_alerts:\n          - exp_labels: {{{}}}\n            exp_annotations:\n              summary: More than 5% of HTTP requests fail with 5xx.\n              description: 'shop/cart (cart) answered 10% of its HTTP requests with a 5xx status over the last 5 minutes.'\n              runbook_url: {}\n      - eval_time: 8m\n        alertname: PeriscopeHTTPServerErrorRatioHigh\n        exp_alerts: []",
            w.replace('=', ": ") + ", severity: warning",
            runbook_url("PeriscopeHTTPServerErrorRatioHigh")
        ),
    );
    // 1% errors: no alert.
    promtool_test(
        &rules,
        dir.path(),
        "http-1pct",
        &format!(
            "      - series: 'http_server_request_duration_seconds_count{{{w}, http_response_status_code=\"200\"}}'\n        values: '0+594x30'\n      - series: 'http_server_request_duration_seconds_count{{{w}, http_response_status_code=\"503\"}}'\n        values: '0+6x30'"
        ),
        "      - eval_time: 25m\n        alertname: PeriscopeHTTPServerErrorRatioHigh\n        exp_alerts: []",
    );
    // Postgres: every statement fails; Kafka: none fails.
    promtool_test(
        &rules,
        dir.path(),
        "pg-kafka",
        &format!(
            "      - series: 'db_client_operation_duration_seconds_count{{{w}, db_system_name=\"postgresql\", db_namespace=\"shop\", error_type=\"42P01\"}}'\n        values: '0+60x30'\n      - series: 'messaging_client_operation_duration_seconds_count{{{w}, messaging_system=\"kafka\", messaging_operation_name=\"send\", error_type=\"\"}}'\n        values: '0+600x30'"
        ),
        &format!(
            "      - eval_time: 25m\n        alertname: PeriscopePostgresErrorRatioHigh\n        exp_alerts:\n          - exp_labels: {{{}, db_namespace: shop, severity: warning}}\n            exp_annotations:\n              summary: More than 5% of PostgreSQL statements fail.\n              description: '100% of the statements shop/cart (cart) sent to database shop failed over the last 5 minutes (error_type is the SQLSTATE).'\n              runbook_url: {}\n      - eval_time: 25m\n        alertname: PeriscopeKafkaErrorRatioHigh\n        exp_alerts: []",
            w.replace('=', ": "),
            runbook_url("PeriscopePostgresErrorRatioHigh")
        ),
    );
    // The agent: down, losing events, dropping series, cut off from the API server.
    let agent = r#"job="periscope", instance="10.0.0.7:9464", namespace="periscope", pod="periscope-x", node="n1""#;
    promtool_test(
        &rules,
        dir.path(),
        "agent",
        &format!(
            "      - series: 'up{{{agent}}}'\n        values: '1 1 0x20'\n      - series: 'periscope_kernel_events_sent_total{{{agent}}}'\n        values: '0+590x20'\n      - series: 'periscope_kernel_events_lost_total{{{agent}, reason=\"ringbuf_full\"}}'\n        values: '0+10x20'\n      - series: 'periscope_kernel_events_lost_total{{{agent}, reason=\"conn_table_full\"}}'\n        values: '0x20'\n      - series: 'periscope_series_dropped_total{{{agent}, metric=\"http_server_request_duration_seconds\"}}'\n        values: '0 0 0 5 5 5 5'\n      - series: 'periscope_kubernetes_connected{{{agent}}}'\n        values: '1 1 0x20'\n      - series: 'periscope_flow_events_lost_total{{{agent}, reason=\"flow_table_full\"}}'\n        values: '0+30x20'\n      - series: 'periscope_spans_dropped_total{{{agent}, reason=\"export_failed\"}}'\n        values: '0+120x20'\n      - series: 'periscope_spans_dropped_total{{{agent}, reason=\"queue_full\"}}'\n        values: '0x20'"
        ),
        &format!(
            r#"      - eval_time: 15m
        alertname: PeriscopeAgentDown
        exp_alerts:
          - exp_labels: {{job: periscope, instance: '10.0.0.7:9464', namespace: periscope, pod: periscope-x, node: n1, severity: critical}}
            exp_annotations:
              summary: "A Periscope agent cannot be scraped; its node is unobserved."
              description: "Prometheus has failed to scrape 10.0.0.7:9464 (node n1) for 5m."
              runbook_url: "{}"
      - eval_time: 15m
        alertname: PeriscopeKernelEventsLost
        exp_alerts:
          - exp_labels: {{namespace: periscope, pod: periscope-x, node: n1, reason: ringbuf_full, severity: warning}}
            exp_annotations:
              summary: "Periscope loses more than 0.1% of its kernel events; traffic is undercounted."
              description: "The agent on n1 (periscope-x) loses 1.667% of its kernel events (ringbuf_full). ringbuf_full: raise PERISCOPE_RINGBUF_BYTES or the CPU limit; *_table_full: the node has more concurrent connections than the kernel tables hold."
              runbook_url: "{}"
      - eval_time: 5m
        alertname: PeriscopeSeriesDropped
        exp_alerts:
          - exp_labels: {{namespace: periscope, pod: periscope-x, node: n1, metric: http_server_request_duration_seconds, severity: warning}}
            exp_annotations:
              summary: "Periscope's cardinality cap was hit; some observations are dropped."
              description: "The agent on n1 dropped 5 observations of http_server_request_duration_seconds in 15 minutes because it already has PERISCOPE_MAX_SERIES label sets or all series hold PERISCOPE_SERIES_MEMORY_BUDGET bytes (periscope_series_memory_bytes). Look for a label with unbounded values (routes, tables, topics), or raise the cap."
              runbook_url: "{}"
      - eval_time: 15m
        alertname: PeriscopeKubernetesAPIUnreachable
        exp_alerts:
          - exp_labels: {{namespace: periscope, pod: periscope-x, node: n1, severity: warning}}
            exp_annotations:
              summary: "Periscope cannot reach the Kubernetes API; new pods are not attributed."
              description: "The agent on n1 (periscope-x) has not been connected to the Kubernetes API for 5m: series of pods started since then lack k8s_* labels. Check the agent log and its ServiceAccount's RBAC."
              runbook_url: "{}"
      - eval_time: 15m
        alertname: PeriscopeFlowEventsLost
        exp_alerts:
          - exp_labels: {{namespace: periscope, pod: periscope-x, node: n1, reason: flow_table_full, severity: warning}}
            exp_annotations:
              summary: "Periscope is losing TCP flow updates; network_* metrics undercount."
              description: "The agent on n1 (periscope-x) loses 0.5 flow updates/s (flow_table_full). flow_table_full: the node has more concurrent flows than the kernel flow table holds."
              runbook_url: "{}"
      - eval_time: 15m
        alertname: PeriscopeSpansDropped
        exp_alerts:
          - exp_labels: {{namespace: periscope, pod: periscope-x, node: n1, reason: export_failed, severity: warning}}
            exp_annotations:
              summary: "Periscope drops spans before they reach the collector."
              description: "The agent on n1 (periscope-x) drops 2 spans/s (export_failed). export_failed: the OTLP collector is unreachable or refuses them (see periscope_span_export_errors_total and the agent log); queue_full: the collector is slower than the traffic, raise its capacity or PERISCOPE_TRACES_QUEUE_SIZE."
              runbook_url: "{}"
      - eval_time: 8m
        alertname: PeriscopeSpansDropped
        exp_alerts: []
      - eval_time: 15m
        alertname: PeriscopeAgentAbsent
        exp_alerts: []"#,
            runbook_url("PeriscopeAgentDown"),
            runbook_url("PeriscopeKernelEventsLost"),
            runbook_url("PeriscopeSeriesDropped"),
            runbook_url("PeriscopeKubernetesAPIUnreachable"),
            runbook_url("PeriscopeFlowEventsLost"),
            runbook_url("PeriscopeSpansDropped"),
        ),
    );
    // Kernel events: a loss is a ratio of what the kernel sent and lost, so 0.5 events/s lost
    // out of 1000/s (0.05%) stays under the 0.1% threshold.
    promtool_test(
        &rules,
        dir.path(),
        "kernel-small-loss",
        &format!(
            "      - series: 'periscope_kernel_events_sent_total{{{agent}}}'\n        values: '0+60000x20'\n      - series: 'periscope_kernel_events_lost_total{{{agent}, reason=\"ringbuf_full\"}}'\n        values: '0+30x20'"
        ),
        "      - eval_time: 15m\n        alertname: PeriscopeKernelEventsLost\n        exp_alerts: []",
    );
}

/// Values other than the defaults for every alert: each threshold, minimum rate and duration.
fn custom_alert_values() -> Value {
    json!({
        "runbookBaseUrl": "https://wiki.example.com/periscope/",
        "httpServerErrorRatio": {"threshold": 0.2, "minRate": 0.5, "for": "2m"},
        "httpServerLatencyP99": {"threshold": 2.5, "minRate": 0.25, "for": "15m"},
        "postgresErrorRatio": {"threshold": 0.1, "minRate": 1, "for": "20m"},
        "kafkaErrorRatio": {"threshold": 0.15, "minRate": 2, "for": "30m"},
        "kernelEventsLost": {"threshold": 0.05, "for": "1m"},
        "flowEventsLost": {"threshold": 3, "for": "7m"},
        "spansDropped": {"threshold": 4, "for": "11m"},
        "seriesDropped": {"threshold": 10, "for": "1m"},
        "kubernetesAPIUnreachable": {"for": "6m"},
        "agentDown": {"for": "3m"},
        "agentAbsent": {"for": "1h"},
    })
}

/// The numbers an expression compares with (`> 0.05`), in order.
fn compared_with(expr: &str) -> Vec<f64> {
    expr.match_indices("> ")
        .filter_map(|(i, _)| expr[i + 2..].split_whitespace().next()?.parse().ok())
        .collect()
}

/// The expression with every number it compares with replaced by `N`.
fn without_comparands(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find("> ") {
        out.push_str(&rest[..i + 2]);
        rest = &rest[i + 2..];
        let number = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
        if rest[..number].parse::<f64>().is_ok() {
            out.push('N');
            rest = &rest[number..];
        }
    }
    out.push_str(rest);
    out
}

/// Every threshold, minimum rate and `for` of the chart's `alerts` values lands in its rule,
/// and nothing else changes; promtool shows them at work.
#[test]
fn alert_thresholds_and_durations_are_chart_values() {
    let values = custom_alert_values();
    let rule = rendered_rule(values.clone()).unwrap();
    assert_eq!(
        validate_custom_resources(std::slice::from_ref(&rule)).unwrap(),
        1
    );
    let defaults = alert_groups();
    for (key, alert) in ALERT_KEYS {
        let ours = rule_named(&rule["spec"], alert);
        let default = rule_named(&defaults, alert);
        let v = &values[key];
        assert_eq!(ours["for"], v["for"], "{alert}");
        assert_ne!(
            default["for"], v["for"],
            "{alert}: the test value is the default"
        );
        let expr = ours["expr"].as_str().unwrap();
        let default_expr = default["expr"].as_str().unwrap();
        // The threshold, then the workload alerts' minimum rate, in the expression.
        let expected: Vec<f64> = ["threshold", "minRate"]
            .iter()
            .filter_map(|k| v[k].as_f64())
            .collect();
        assert_eq!(compared_with(expr), expected, "{alert}: {expr}");
        assert_eq!(
            compared_with(default_expr).len(),
            expected.len(),
            "{alert}: {default_expr}"
        );
        for (ours, default) in compared_with(expr).iter().zip(compared_with(default_expr)) {
            assert_ne!(*ours, default, "{alert}: the test value is the default");
        }
        assert_eq!(
            without_comparands(expr),
            without_comparands(default_expr),
            "{alert}"
        );
        assert_eq!(
            ours["annotations"]["runbook_url"],
            format!(
                "https://wiki.example.com/periscope#{}",
                alert.to_lowercase()
            ),
            "{alert}"
        );
    }
    // The text follows the values.
    let text = |alert: &str, key: &str| {
        rule_named(&rule["spec"], alert)["annotations"][key]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for (alert, summary) in [
        ("PeriscopeHTTPServerErrorRatioHigh", "More than 20% of"),
        ("PeriscopePostgresErrorRatioHigh", "More than 10% of"),
        ("PeriscopeKafkaErrorRatioHigh", "More than 15% of"),
        ("PeriscopeKernelEventsLost", "loses more than 5% of"),
        ("PeriscopeHTTPServerLatencyP99High", "above 2.5 s"),
    ] {
        assert!(text(alert, "summary").contains(summary), "{alert}");
    }
    assert!(text("PeriscopeKubernetesAPIUnreachable", "description").contains("API for 6m:"));
    assert!(text("PeriscopeAgentDown", "description").ends_with("for 3m."));

    // At work: 10% of 5xx no longer fires at 20%, 25% fires after 2 minutes instead of 10
    // (the default rules stay silent at 8m, `alerts_fire_exactly_when_they_should`), and an
    // idle workload failing everything stays below the minimum rate of 0.5 requests/s.
    let dir = TempDir::new("rule-values").unwrap();
    let rules = write_rules_file(dir.path(), &rule["spec"]);
    let series = |owner: &str, ok: u32, failed: u32| {
        let w = format!(
            r#"k8s_namespace_name="shop", k8s_owner_kind="Deployment", k8s_owner_name="{owner}", service_name="{owner}""#
        );
        format!(
            "      - series: 'http_server_request_duration_seconds_count{{{w}, http_response_status_code=\"200\"}}'\n        values: '0+{ok}x30'\n      - series: 'http_server_request_duration_seconds_count{{{w}, http_response_status_code=\"500\"}}'\n        values: '0+{failed}x30'"
        )
    };
    promtool_test(
        &rules,
        dir.path(),
        "values",
        &[
            series("cart", 540, 60),
            series("checkout", 450, 150),
            series("idle", 0, 18),
        ]
        .join("\n"),
        r#"      - eval_time: 8m
        alertname: PeriscopeHTTPServerErrorRatioHigh
        exp_alerts:
          - exp_labels: {k8s_namespace_name: shop, k8s_owner_kind: Deployment, k8s_owner_name: checkout, service_name: checkout, severity: warning}
            exp_annotations:
              summary: More than 20% of HTTP requests fail with 5xx.
              description: 'shop/checkout (checkout) answered 25% of its HTTP requests with a 5xx status over the last 5 minutes.'
              runbook_url: https://wiki.example.com/periscope#periscopehttpservererrorratiohigh
      - eval_time: 25m
        alertname: PeriscopeHTTPServerErrorRatioHigh
        exp_alerts:
          - exp_labels: {k8s_namespace_name: shop, k8s_owner_kind: Deployment, k8s_owner_name: checkout, service_name: checkout, severity: warning}
            exp_annotations:
              summary: More than 20% of HTTP requests fail with 5xx.
              description: 'shop/checkout (checkout) answered 25% of its HTTP requests with a 5xx status over the last 5 minutes.'
              runbook_url: https://wiki.example.com/periscope#periscopehttpservererrorratiohigh"#,
    );

    // No base URL: no runbook_url.
    let rule = rendered_rule(json!({"runbookBaseUrl": ""})).unwrap();
    for r in rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
    {
        assert!(r["annotations"].get("runbook_url").is_none(), "{r}");
    }
}

/// Alert values Prometheus or the Operator would not take, or a ratio no error ratio can
/// reach, are refused at render time with the value's path, the value and the fix.
#[test]
fn chart_refuses_bad_alert_values() {
    for (alerts, expected) in [
        (
            json!({"agentDown": {"for": 10}}),
            "alerts.agentDown.for: 10 is not a Prometheus duration; write it with its unit",
        ),
        (
            json!({"agentAbsent": {"for": "5 minutes"}}),
            "alerts.agentAbsent.for: 5 minutes is not a Prometheus duration",
        ),
        (
            json!({"httpServerErrorRatio": {"threshold": 5}}),
            "alerts.httpServerErrorRatio.threshold: 5 is above 1",
        ),
        (
            json!({"kernelEventsLost": {"threshold": "high"}}),
            "alerts.kernelEventsLost.threshold: high is not a number",
        ),
        (
            json!({"kafkaErrorRatio": {"minRate": -1}}),
            "alerts.kafkaErrorRatio.minRate: -1 is negative",
        ),
    ] {
        let err = format!("{:#}", rendered_rule(alerts.clone()).unwrap_err());
        assert!(err.contains(expected), "{alerts}: {err}");
    }
    // A latency threshold is in seconds, not a ratio: above 1 is fine.
    let rule = rendered_rule(json!({"httpServerLatencyP99": {"threshold": 5}})).unwrap();
    assert_eq!(
        compared_with(
            rule_named(&rule["spec"], "PeriscopeHTTPServerLatencyP99High")["expr"]
                .as_str()
                .unwrap()
        ),
        [5.0, 0.1]
    );
    // Without the PrometheusRule, the values are not used (nor checked).
    render_chart(&json!({"alerts": {"agentDown": {"for": 10}}})).unwrap();
}

/// One heading of a Markdown file and what it holds.
#[derive(Debug)]
struct Section {
    level: usize,
    title: String,
    /// GitHub's anchor for it (`#…` in a link).
    anchor: String,
    /// Its first line and the line after its last (the next heading of its level or above).
    lines: std::ops::Range<usize>,
    /// Its text, sub-sections included.
    body: String,
}

/// GitHub's anchor for a heading: lower case, punctuation (everything but letters, digits,
/// `-`, `_` and spaces) removed, spaces turned into dashes. Repeats get `-1`, `-2`… (see
/// [`markdown_sections`]).
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The ATX headings (`## Title`) of a Markdown text outside fenced code blocks, with their
/// sections.
fn markdown_sections(text: &str) -> Vec<Section> {
    let lines: Vec<&str> = text.lines().collect();
    let mut headings = Vec::new();
    let mut fence: Option<&str> = None;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if let Some(open) = fence {
            if trimmed.starts_with(open) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(&trimmed[..3]);
            continue;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&level) && line[level..].starts_with(' ') {
            headings.push((i, level, line[level..].trim().to_owned()));
        }
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut sections = Vec::new();
    for (n, (start, level, title)) in headings.iter().enumerate() {
        let end = headings[n + 1..]
            .iter()
            .find(|(_, l, _)| l <= level)
            .map_or(lines.len(), |(i, _, _)| *i);
        let base = github_anchor(title);
        let count = seen.entry(base.clone()).or_insert(0);
        let anchor = if *count == 0 {
            base
        } else {
            format!("{base}-{count}")
        };
        *count += 1;
        sections.push(Section {
            level: *level,
            title: title.clone(),
            anchor,
            lines: *start..end,
            body: lines[start + 1..end].join("\n"),
        });
    }
    sections
}

/// Whether `text` names `metric` (a family: `_count`, `_bucket` or `_sum` may follow) as a
/// whole name, not as part of another.
fn mentions_metric(text: &str, metric: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(metric).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = &text[i + metric.len()..];
        before.is_none_or(|c| !ident(c))
            && (after.chars().next().is_none_or(|c| !ident(c))
                || ["_count", "_bucket", "_sum"].iter().any(|s| {
                    after
                        .strip_prefix(s)
                        .is_some_and(|rest| rest.chars().next().is_none_or(|c| !ident(c)))
                }))
    })
}

#[test]
fn github_anchors_follow_githubs_rules() {
    assert_eq!(github_anchor("PeriscopeAgentDown"), "periscopeagentdown");
    assert_eq!(
        github_anchor("2a. Install with kubectl"),
        "2a-install-with-kubectl"
    );
    // The main README links to this one from deploy/README.md's neighbour.
    assert_eq!(
        github_anchor("TLS (`--tls`, on by default)"),
        "tls---tls-on-by-default"
    );
    let sections = markdown_sections(
        "# A\n\n```sh\n# not a heading\n```\n\n## B b\n\ntext\n\n### C\n\n## B b\n\n#no heading\n",
    );
    let found: Vec<(usize, &str, &str)> = sections
        .iter()
        .map(|s| (s.level, s.title.as_str(), s.anchor.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (1, "A", "a"),
            (2, "B b", "b-b"),
            (3, "C", "c"),
            (2, "B b", "b-b-1")
        ]
    );
    assert_eq!(sections[1].body, "\ntext\n\n### C\n");
    assert!(mentions_metric("`up{job}`", "up"));
    assert!(!mentions_metric("upstream", "up"));
    assert!(mentions_metric(
        "rate(http_server_request_duration_seconds_bucket[5m])",
        "http_server_request_duration_seconds"
    ));
    assert!(!mentions_metric(
        "periscope_kernel_events_lost_total_x",
        "periscope_kernel_events_lost_total"
    ));
}

/// Every alert's runbook_url points at a heading of deploy/README.md under "Runbooks", named
/// after the alert; that section says what it means, its causes, what to check and how to fix
/// it, and names every metric the alert's expression uses. Every runbook there is an alert's,
/// and every in-page link of the README lands on a heading.
#[test]
fn every_alert_has_a_runbook_section_in_the_readme() {
    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).unwrap();
    let sections = markdown_sections(&readme);
    let by_anchor: BTreeMap<&str, &Section> =
        sections.iter().map(|s| (s.anchor.as_str(), s)).collect();
    let runbooks = by_anchor["runbooks"];
    let runbook_sections: BTreeMap<&str, &Section> = sections
        .iter()
        .filter(|s| s.level == runbooks.level + 1 && runbooks.lines.contains(&s.lines.start))
        .map(|s| (s.title.as_str(), s))
        .collect();
    assert!(
        runbook_base().ends_with("/blob/main/deploy/README.md"),
        "{}",
        runbook_base()
    );
    let mut alerts = BTreeSet::new();
    for rule in alert_rule_objects() {
        let name = rule["alert"].as_str().unwrap();
        alerts.insert(name.to_owned());
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let (base, anchor) = url.rsplit_once('#').unwrap();
        assert_eq!(base, runbook_base(), "{name}");
        let section = by_anchor.get(anchor).unwrap_or_else(|| {
            panic!("{name}: no heading of deploy/README.md has anchor #{anchor}")
        });
        assert_eq!(section.title, name);
        assert_eq!(
            runbook_sections.get(name).map(|s| s.lines.start),
            Some(section.lines.start),
            "{name}: not under Runbooks"
        );
        for part in [
            "**What it means.**",
            "**Likely causes",
            "**What to check.**",
            "**How to fix.**",
        ] {
            assert!(section.body.contains(part), "{name}: no {part}");
        }
        for metric in metric_names(rule["expr"].as_str().unwrap()) {
            assert!(
                mentions_metric(&section.body, &metric),
                "{name}: the runbook does not name {metric}"
            );
        }
    }
    assert_eq!(
        runbook_sections
            .keys()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        alerts,
        "runbooks without an alert"
    );
    for (i, _) in readme.match_indices("](#") {
        let anchor = &readme[i + 3..i + 3 + readme[i + 3..].find(')').unwrap()];
        assert!(by_anchor.contains_key(anchor), "broken link #{anchor}");
    }
}

#[test]
fn dashboards_are_well_formed() {
    let dashboards = dashboards();
    let names: Vec<&str> = dashboards.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["agent", "flows", "http", "kafka", "postgres"]);
    let mut uids = BTreeSet::new();
    for (name, dashboard) in &dashboards {
        assert!(
            uids.insert(dashboard["uid"].as_str().unwrap().to_owned()),
            "{name}: duplicate uid"
        );
        assert!(dashboard["title"]
            .as_str()
            .unwrap()
            .starts_with("Periscope / "));
        // Template variables: each with an "All" of `.*`, queried with label_values; the
        // cluster first, so that the others list what the chosen clusters have.
        let variables = dashboard_variables(dashboard);
        let expected: &[&str] = if name == "agent" {
            &["cluster", "node"]
        } else {
            &["cluster", "namespace", "workload", "service"]
        };
        assert_eq!(
            variables
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            expected,
            "{name}"
        );
        let label_of = |var: &str| match var {
            "cluster" => "cluster",
            "namespace" => "k8s_namespace_name",
            "workload" => "k8s_owner_name",
            "service" => "service_name",
            _ => "node",
        };
        let filter = |var: &str| format!("{}=~\"${var}\"", label_of(var));
        for (i, (var, v)) in variables.iter().enumerate() {
            assert_eq!(v["includeAll"], true, "{name} ${var}");
            // `.*` also matches a series without the label: with no `cluster` label at all
            // (one Prometheus) the cluster selector is empty and every query still matches.
            assert_eq!(v["allValue"], ".*", "{name} ${var}");
            let query = v["query"]["query"].as_str().unwrap();
            assert_eq!(v["definition"], query, "{name} ${var}");
            let (selector, label) = parse_label_values(query).unwrap();
            assert_eq!(label, label_of(var), "{name} ${var}");
            // Each lists what the variables before it chose.
            for (before, _) in &variables[..i] {
                assert!(
                    selectors(&selector)
                        .iter()
                        .all(|s| s.contains(&filter(before))),
                    "{name} ${var}: does not filter by ${before}: {query}"
                );
            }
        }
        // Every panel has a query; every selector of every query filters by every variable,
        // every metric has a selector, queries use the rate interval Grafana picks, and name
        // only metrics of the interface.
        for panel in panels(dashboard) {
            let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
            assert!(
                targets
                    .iter()
                    .any(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())),
                "{name}: panel {:?} has no query",
                panel["title"]
            );
            assert_eq!(panel["datasource"]["uid"], "${datasource}");
        }
        for q in dashboard_queries(dashboard) {
            let context = format!("{name} / {}: {}", q.panel, q.expr);
            let selectors = selectors(&q.expr);
            assert!(!selectors.is_empty(), "{context}");
            for selector in &selectors {
                for (var, _) in &variables {
                    assert!(
                        selector.contains(&filter(var)),
                        "{context}: {{{selector}}} does not filter by ${var}"
                    );
                }
            }
            if q.expr.contains("rate(") || q.expr.contains("increase(") {
                assert!(q.expr.contains("[$__rate_interval]"), "{context}");
                assert!(!has_fixed_range(&q.expr), "{context}");
            }
            let metrics = metric_names(&q.expr);
            assert!(!metrics.is_empty(), "{context}");
            for metric in metrics {
                assert!(
                    KNOWN_METRICS.contains(&metric.as_str()),
                    "{context}: unknown metric {metric}"
                );
                assert!(
                    !has_bare_metric(&q.expr, &metric),
                    "{context}: {metric} without a selector"
                );
            }
        }
    }
}

/// Whether `metric` (a family: `_count`, `_bucket`, `_sum` may follow) appears in `expr`
/// without a `{…}` selector right after it, which no variable could filter.
fn has_bare_metric(expr: &str, metric: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    expr.match_indices(metric).any(|(i, _)| {
        if expr[..i].chars().next_back().is_some_and(ident) {
            return false;
        }
        let rest = expr[i + metric.len()..].trim_start_matches(ident);
        !rest.starts_with('{')
    })
}

/// Whether a fixed range selector such as `[5m]` appears (a regex class like `[45]..` does
/// not count: no unit follows its digits).
fn has_fixed_range(expr: &str) -> bool {
    expr.match_indices('[').any(|(i, _)| {
        let rest = &expr[i + 1..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        digits > 0
            && rest[digits..].starts_with(|c: char| "smhdwy".contains(c))
            && rest[digits + 1..].starts_with(']')
    })
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(
            r#"sum by (le, k8s_owner_name) (rate(http_server_request_duration_seconds_bucket{service_name=~"a.*"}[5m])) or on() vector(0)"#
        ),
        ["http_server_request_duration_seconds"]
    );
    assert_eq!(
        metric_names(
            r#"up{job="periscope"} == 0 and max by (node) (periscope_kubernetes_connected)"#
        ),
        ["periscope_kubernetes_connected", "up"]
    );
}

#[test]
fn jaeger_example_points_at_its_collector() {
    let objects = yaml_file(&kube_dir().join("examples/jaeger.yaml"));
    let collector = objects
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "jaeger-collector")
        .unwrap();
    assert_eq!(collector["metadata"]["namespace"], "observability");
    assert!(collector["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["port"] == 4317));
    let patch = &yaml_file(&kube_dir().join("examples/otlp-jaeger-patch.yaml"))[0];
    let container = &patch["spec"]["template"]["spec"]["containers"][0];
    // A strategic merge patch finds the container by name.
    let daemonset = find(&plain_objects(""), "DaemonSet");
    assert_eq!(
        container["name"],
        daemonset["spec"]["template"]["spec"]["containers"][0]["name"]
    );
    let env: BTreeMap<&str, &str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert_eq!(
        env,
        BTreeMap::from([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", JAEGER_ENDPOINT),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ])
    );
}

#[test]
fn network_policy_admits_only_the_named_scrapers_to_the_metrics_port() {
    let from = json!([{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }]);
    let rendered =
        render_chart(&json!({"networkPolicy": {"enabled": true, "metricsFrom": from}})).unwrap();
    kubernetes_validate(&rendered).unwrap();
    let policy = find(&rendered, "NetworkPolicy");
    let daemonset = find(&rendered, "DaemonSet");
    // It selects the agent's own pods, by the labels the DaemonSet gives them.
    let selector = policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap();
    let pod_labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(&pod_labels[key], value, "{key}");
    }
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    let rule = &policy["spec"]["ingress"][0];
    assert_eq!(rule["from"], from);
    assert_eq!(
        rule["ports"],
        json!([{"port": "metrics", "protocol": "TCP"}])
    );
    assert_eq!(policy["spec"]["ingress"].as_array().unwrap().len(), 1);

    // Off by default; on without peers is refused (it would cut Prometheus off).
    let defaults = render_chart(&json!({})).unwrap();
    assert!(defaults.iter().all(|o| o["kind"] != "NetworkPolicy"));
    let err = render_chart(&json!({"networkPolicy": {"enabled": true}})).unwrap_err();
    assert!(
        format!("{err:#}").contains("networkPolicy.metricsFrom"),
        "{err:#}"
    );
}
