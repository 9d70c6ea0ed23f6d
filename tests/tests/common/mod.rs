//! What the deploy/ tests share: reading manifests, dashboards and alert rules, and the
//! Grafana variable substitution that turns a dashboard query into plain PromQL.

#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

/// `<workspace>/deploy`.
pub fn deploy_dir() -> PathBuf {
    harness::workspace_root().join("deploy")
}

/// Every non-empty YAML document in `text`, as JSON values.
pub fn yaml_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The YAML documents of a file.
pub fn yaml_file(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    yaml_docs(&text).unwrap_or_else(|e| panic!("parsing {}: {e:#}", path.display()))
}

/// The dashboards in deploy/dashboards, by file stem, sorted.
pub fn dashboards() -> Vec<(String, Value)> {
    let dir = deploy_dir().join("dashboards");
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        out.push((stem, value));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One query of a dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub panel: String,
    pub expr: String,
}

/// Every panel of a dashboard (rows' nested panels included), rows themselves excluded.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a [Value], out: &mut Vec<&'a Value>) {
        for panel in panels {
            if let Some(nested) = panel["panels"].as_array() {
                walk(nested, out);
            }
            if panel["type"] != "row" {
                out.push(panel);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        dashboard["panels"]
            .as_array()
            .map_or(&[][..], Vec::as_slice),
        &mut out,
    );
    out
}

/// Every target expression of every panel.
pub fn dashboard_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("<untitled>").to_owned();
        for target in panel["targets"].as_array().map_or(&[][..], Vec::as_slice) {
            if let Some(expr) = target["expr"].as_str() {
                out.push(PanelQuery {
                    panel: title.clone(),
                    expr: expr.to_owned(),
                });
            }
        }
    }
    out
}

/// The dashboard's query variables: (name, `label_values(...)` query).
pub fn dashboard_variables(dashboard: &Value) -> Vec<(String, Value)> {
    dashboard["templating"]["list"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| (v["name"].as_str().unwrap_or_default().to_owned(), v.clone()))
        .collect()
}

/// Splits `label_values(<selector>, <label>)` into its selector and label.
pub fn parse_label_values(query: &str) -> anyhow::Result<(String, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .with_context(|| format!("not a label_values(…) query: {query}"))?;
    let (selector, label) = inner
        .rsplit_once(',')
        .with_context(|| format!("label_values without a label: {query}"))?;
    Ok((selector.trim().to_owned(), label.trim().to_owned()))
}

/// The `spec` (groups) of the plain PrometheusRule, deploy/kubernetes/monitoring/
/// prometheusrule.yaml: the rules a Prometheus without the Operator loads, and what the Helm
/// chart renders with its default values.
pub fn alert_groups() -> Value {
    let path = deploy_dir().join("kubernetes/monitoring/prometheusrule.yaml");
    let docs = yaml_file(&path);
    assert_eq!(docs.len(), 1, "{}: one PrometheusRule", path.display());
    docs[0]["spec"].clone()
}

/// Every rule of [`alert_groups`], in order.
pub fn alert_rule_objects() -> Vec<Value> {
    let groups = alert_groups();
    let mut out = Vec::new();
    for group in groups["groups"].as_array().expect("groups") {
        out.extend(group["rules"].as_array().expect("rules").iter().cloned());
    }
    out
}

/// The alert rules of the plain PrometheusRule (the chart renders the same by default):
/// (alert name, expr).
pub fn alert_rules() -> Vec<(String, String)> {
    alert_rule_objects()
        .iter()
        .map(|rule| {
            let name = rule["alert"].as_str().expect("alert name").to_owned();
            let expr = rule["expr"].as_str().expect("expr").to_owned();
            (name, expr)
        })
        .collect()
}

/// Writes the alert groups as a Prometheus rules file `rules.yaml` in `dir` (what promtool and
/// Prometheus load); returns its path.
pub fn write_rules_file(dir: &Path, groups: &Value) -> PathBuf {
    let path = dir.join("rules.yaml");
    let text = serde_yaml::to_string(groups).expect("rules as YAML");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// The label selectors (`{...}`, without the braces) of a PromQL expression or of a
/// `label_values(...)` query, in order; braces inside quoted strings do not count.
pub fn selectors(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut open = None;
    for (i, c) in expr.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => open = Some(i + 1),
            '}' => {
                if let Some(start) = open.take() {
                    out.push(&expr[start..i]);
                }
            }
            _ => {}
        }
    }
    out
}

/// What Grafana does to a query before it sends it: the "All" value (`.*`) for every
/// template variable, and the built-in intervals. Fails on a `$` it did not replace, so a
/// typo in a variable name cannot slip through as a literal.
pub fn grafana_substitute(expr: &str) -> anyhow::Result<String> {
    let mut out = expr
        .replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m");
    for var in ["cluster", "namespace", "workload", "service", "node"] {
        out = out
            .replace(&format!("${{{var}}}"), ".*")
            .replace(&format!("${var}"), ".*");
    }
    if out.contains('$') {
        bail!("unknown variable left in {out:?}");
    }
    Ok(out)
}

/// Metrics the agent exports, or will export under this name (the interface the deploy
/// files are written against).
pub const KNOWN_METRICS: &[&str] = &[
    "http_server_request_duration_seconds",
    "http_client_request_duration_seconds",
    "http_server_request_body_size_bytes",
    "http_server_response_body_size_bytes",
    "http_client_request_body_size_bytes",
    "http_client_response_body_size_bytes",
    "db_client_operation_duration_seconds",
    "db_server_operation_duration_seconds",
    "db_client_response_returned_rows",
    "db_server_response_returned_rows",
    "messaging_client_operation_duration_seconds",
    "messaging_server_operation_duration_seconds",
    "messaging_client_sent_messages_total",
    "messaging_client_consumed_messages_total",
    "messaging_server_received_messages_total",
    "messaging_server_delivered_messages_total",
    "network_io_bytes_total",
    "network_tcp_connections_opened_total",
    "network_tcp_connections_closed_total",
    "network_tcp_connect_failures_total",
    "network_tcp_connections_established",
    "network_tcp_retransmits_total",
    "network_tcp_rtt_seconds",
    "syscall_duration_seconds",
    "syscall_errors_total",
    "periscope_kernel_events_lost_total",
    "periscope_kernel_events_sent_total",
    "periscope_events_read_total",
    "periscope_series_dropped_total",
    "periscope_parse_errors_total",
    "periscope_connections_tracked",
    "periscope_hooks_info",
    "periscope_kubernetes_connected",
    "periscope_kubernetes_errors_total",
    "periscope_flow_events_lost_total",
    "periscope_spans_dropped_total",
    "periscope_series_memory_bytes",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "up",
];

/// Metrics the dashboards test cannot make exist: the Kubernetes connection's (the test runs
/// the agent standalone; `tests/attribution.rs` checks them against a fake API server). A
/// query on them is checked for syntax only.
pub const LANDS_LATER: &[&str] = &["periscope_kubernetes_"];

/// The metric names an expression selects: identifiers followed by `{` or `[`, or standing
/// alone as a selector, with histogram suffixes folded into their family.
pub fn metric_names(expr: &str) -> Vec<String> {
    const NOT_METRICS: &[&str] = &[
        "sum",
        "rate",
        "increase",
        "histogram_quantile",
        "by",
        "on",
        "or",
        "and",
        "unless",
        "vector",
        "topk",
        "count",
        "max",
        "min",
        "avg",
        "absent",
        "le",
        "without",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
    ];
    let mut names = Vec::new();
    let mut chars = expr.char_indices().peekable();
    let bytes = expr.as_bytes();
    let mut in_string = false;
    let mut in_braces = 0usize;
    let mut in_parens_label_list = false;
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            // Label matchers and range durations (`[5m]`) hold no metric names.
            '{' | '[' => in_braces += 1,
            '}' | ']' => in_braces = in_braces.saturating_sub(1),
            _ if in_braces > 0 => {}
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                let mut end = i + 1;
                while let Some(&(j, d)) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                        end = j + 1;
                        chars.next();
                    } else {
                        break;
                    }
                }
                let word = &expr[start..end];
                // Label lists: `by (a, b)`, `on()`: skip until the closing parenthesis.
                if matches!(word, "by" | "on" | "without" | "ignoring") {
                    in_parens_label_list = true;
                    continue;
                }
                if in_parens_label_list {
                    continue;
                }
                let next = bytes[end..].iter().find(|b| !b.is_ascii_whitespace());
                if NOT_METRICS.contains(&word) || next == Some(&b'(') {
                    continue;
                }
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| {
                        word.strip_suffix(suffix)
                            .filter(|base| !base.ends_with("_total"))
                            .filter(|base| KNOWN_METRICS.contains(base))
                    })
                    .unwrap_or(word);
                names.push(family.to_owned());
            }
            ')' if in_parens_label_list => in_parens_label_list = false,
            _ => {}
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Whether every metric `expr` selects is one that lands later.
pub fn only_later_metrics(expr: &str) -> bool {
    let names = metric_names(expr);
    !names.is_empty()
        && names
            .iter()
            .filter(|n| n.as_str() != "up")
            .all(|n| LANDS_LATER.iter().any(|p| n.starts_with(p)))
}
