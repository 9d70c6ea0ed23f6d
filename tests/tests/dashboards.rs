//! End-to-end: the Grafana dashboards and the alert rules of deploy/ against real data. The
//! agent watches nginx + curl, PostgreSQL + psql and a Kafka broker (librdkafka's mock) + kcat,
//! a real Prometheus scrapes it every second, and every dashboard query and alert expression
//! runs through Prometheus' HTTP API the way Grafana sends it (variables at their "All" value,
//! `.*`: `$cluster` too, which thus matches this Prometheus' series that have no `cluster` label).
//! Every query must succeed, and every dashboard query must return data, except those on
//! metrics that land later (flows, syscalls, the Kubernetes connection: `LANDS_LATER`), which
//! are only checked for syntax until then.
//!
//! The agent runs as the DaemonSet runs it: with only the capabilities the manifest adds (as its
//! bounding set), no_new_privs (`allowPrivilegeEscalation: false`) and the manifest's
//! environment. Run as root (the agent loads eBPF programs).

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{
    agent_binary, curl, kcat, url_encode, wait_until, Agent, AgentOptions, MockKafka, Nginx,
    PgServer, Prometheus, TempDir,
};
use serde_json::Value;

use common::{
    alert_groups, alert_rules, dashboard_queries, dashboard_variables, dashboards, deploy_dir,
    grafana_substitute, only_later_metrics, parse_label_values, write_rules_file, yaml_file,
};

const WAIT: Duration = Duration::from_secs(20);

/// The `data` of a successful API answer.
fn data(body: &str) -> anyhow::Result<Value> {
    let v: Value = serde_json::from_str(body).with_context(|| format!("not JSON: {body}"))?;
    if v["status"] != "success" {
        bail!("status {}: {body}", v["status"]);
    }
    Ok(v["data"].clone())
}

/// The single value of an instant query that sums to one series (NaN if there is none).
fn scalar(prometheus: &Prometheus, expr: &str) -> f64 {
    prometheus
        .query(expr)
        .and_then(|body| data(&body))
        .ok()
        .and_then(|d| d["result"][0]["value"][1].as_str()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Waits until `expr` evaluates to exactly `expected` in Prometheus.
fn expect_exactly(prometheus: &Prometheus, expr: &str, expected: f64) {
    let mut last = f64::NAN;
    let hit = wait_until(WAIT, Duration::from_millis(250), || {
        last = scalar(prometheus, expr);
        last == expected
    });
    assert!(
        hit,
        "{expr} = {last}, expected {expected}\nprometheus log:\n{}",
        prometheus.log()
    );
}

/// Capability bit numbers (linux/capability.h) of the names a DaemonSet may add.
fn capability_bit(name: &str) -> Option<u32> {
    Some(match name {
        "DAC_READ_SEARCH" => 2,
        "SYS_PTRACE" => 19,
        "SYS_RESOURCE" => 24,
        "NET_ADMIN" => 12,
        "PERFMON" => 38,
        "BPF" => 39,
        "SYS_ADMIN" => 21,
        _ => return None,
    })
}

/// A `Cap…:` mask from /proc/<pid>/status.
fn cap_mask(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

/// Starts the agent with the plain DaemonSet's capabilities, no_new_privs and environment.
/// Returns it with the wrapper's directory (which must outlive it).
fn deployed_agent() -> (Agent, TempDir) {
    let manifest = deploy_dir().join("kubernetes/04-daemonset.yaml");
    let daemonset = &yaml_file(&manifest)[0];
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    let added: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().expect("capability name"))
        .collect();
    let mut wanted = 0u64;
    for cap in &added {
        wanted |= 1 << capability_bit(cap).unwrap_or_else(|| panic!("unknown capability {cap}"));
    }
    // This machine may not hold every capability itself (setpriv can only keep what the
    // bounding set has): the agent gets the manifest's set as far as it is ours to give.
    let ours = cap_mask(std::process::id(), "CapBnd:");
    let expected = wanted & ours;
    if expected != wanted {
        eprintln!(
            "note: this machine lacks capabilities {:#x} of the DaemonSet's set; the agent runs without them",
            wanted & !ours
        );
    }
    let keep: Vec<String> = added
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    let dir = TempDir::new("deployed-agent").unwrap();
    let wrapper = dir.path().join("periscope");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set=-all,{} --inh-caps=-all --no-new-privs '{}' \"$@\"\n",
            keep.join(","),
            agent_binary().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The manifest's literal environment (the listen address comes from the harness' flag).
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .filter(|(name, _)| name != "PERISCOPE_METRICS_ADDR")
        // Syscall statistics are off by default (their cost); the syscall panels need them.
        .map(|(name, value)| match name.as_str() {
            "PERISCOPE_SYSCALLS" => (name, "default".to_owned()),
            _ => (name, value),
        })
        .collect();
    let agent = Agent::start_with(AgentOptions {
        bin: Some(wrapper),
        env,
        ..AgentOptions::default()
    })
    .unwrap();
    // `exec` kept the pid: this is the agent itself. It started with `expected` and, once
    // attached, dropped all but BPF, PERFMON, SYS_PTRACE and DAC_READ_SEARCH.
    let kept_after_start = expected & ((1 << 2) | (1 << 19) | (1 << 38) | (1 << 39));
    assert_eq!(
        cap_mask(agent.pid(), "CapEff:"),
        kept_after_start,
        "{}",
        agent.log()
    );
    // The bounding set shrinks only with CAP_SETPCAP, which the DaemonSet does not grant;
    // with no_new_privs nothing can use what is left of it.
    assert_eq!(cap_mask(agent.pid(), "CapBnd:"), expected);
    assert!(
        agent
            .log()
            .contains("capabilities: kept dac_read_search, sys_ptrace, perfmon, bpf"),
        "{}",
        agent.log()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
    (agent, dir)
}

#[test]
fn every_dashboard_query_and_alert_runs_against_real_traffic() {
    let started = Instant::now();
    let nginx = Nginx::start(
        r#"
        location /api/users/ { return 200 "user\n"; }
        location /fail { return 500; }
        location /missing { return 404; }
        "#,
    );
    let pg = PgServer::start();
    pg.psql(&["-c", "CREATE TABLE items (id int PRIMARY KEY, name text)"])
        .unwrap();
    let kafka = MockKafka::start();
    let (agent, _agent_dir) = deployed_agent();
    let rules_dir = TempDir::new("rules").unwrap();
    let rules = write_rules_file(rules_dir.path(), &alert_groups());
    let prometheus = Prometheus::start("periscope", &[agent.addr()], Some(&rules)).unwrap();
    expect_exactly(&prometheus, r#"up{job="periscope"}"#, 1.0);

    // HTTP: 10 requests to one route template, 3 server errors, 2 not found; each group on
    // one keep-alive curl.
    let users: Vec<String> = (1..=10)
        .map(|i| nginx.url(&format!("/api/users/{i}")))
        .collect();
    let fail = vec![nginx.url("/fail"); 3];
    let missing = vec![nginx.url("/missing"); 2];
    for urls in [&users, &fail, &missing] {
        let mut args = Vec::new();
        for url in urls {
            args.extend(["-o", "/dev/null", url.as_str()]);
        }
        curl(&args).unwrap();
    }
    // PostgreSQL: one INSERT, four SELECTs, one statement on a missing table (42P01).
    pg.psql(&[
        "-c",
        "INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    ])
    .unwrap();
    let select = "SELECT * FROM items";
    pg.psql(&["-c", select, "-c", select, "-c", select, "-c", select])
        .unwrap();
    assert!(pg.psql(&["-c", "SELECT * FROM no_such_table"]).is_err());
    // Kafka: three messages produced, then consumed.
    kcat(&kafka, &["-P", "-t", "orders", "-p", "0"], "a\nb\nc\n").unwrap();
    let read = kcat(
        &kafka,
        &[
            "-C",
            "-t",
            "orders",
            "-p",
            "0",
            "-o",
            "beginning",
            "-c",
            "3",
            "-e",
        ],
        "",
    )
    .unwrap();
    assert_eq!(read.lines().count(), 3, "{read}");

    // Exact counts, through PromQL.
    let port = nginx.port();
    expect_exactly(
        &prometheus,
        &format!(r#"sum(http_server_request_duration_seconds_count{{server_port="{port}"}})"#),
        15.0,
    );
    expect_exactly(
        &prometheus,
        &format!(
            r#"sum(http_server_request_duration_seconds_count{{server_port="{port}", http_route="/api/users/{{id}}"}})"#
        ),
        10.0,
    );
    expect_exactly(
        &prometheus,
        &format!(
            r#"sum by (http_response_status_code) (http_client_request_duration_seconds_count{{server_port="{port}", http_response_status_code="500"}})"#
        ),
        3.0,
    );
    let pg_port = pg.port();
    expect_exactly(
        &prometheus,
        &format!(
            r#"sum(db_server_operation_duration_seconds_count{{server_port="{pg_port}", db_operation_name="SELECT", db_collection_name="items"}})"#
        ),
        4.0,
    );
    expect_exactly(
        &prometheus,
        &format!(
            r#"sum(db_client_operation_duration_seconds_count{{server_port="{pg_port}", error_type="42P01"}})"#
        ),
        1.0,
    );
    let k_port = kafka.port();
    for counter in [
        "messaging_client_sent_messages_total",
        "messaging_client_consumed_messages_total",
    ] {
        expect_exactly(
            &prometheus,
            &format!(
                r#"sum({counter}{{server_port="{k_port}", messaging_destination_name="orders"}})"#
            ),
            3.0,
        );
    }
    // A broker error: fetching far past the end of the partition (OFFSET_OUT_OF_RANGE).
    let _ = kcat(
        &kafka,
        &["-C", "-t", "orders", "-p", "0", "-o", "1000", "-e", "-q"],
        "",
    );
    let errors = format!(
        r#"sum(messaging_client_operation_duration_seconds_count{{server_port="{k_port}", error_type="OFFSET_OUT_OF_RANGE"}})"#
    );
    assert!(
        wait_until(WAIT, Duration::from_millis(250), || scalar(
            &prometheus,
            &errors
        ) >= 1.0),
        "{errors} never reached 1"
    );
    // Two more scrapes, so that every series has the two samples `rate()` needs.
    std::thread::sleep(Duration::from_secs(3));

    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, dashboard) in dashboards() {
        let queries = dashboard_queries(&dashboard);
        // A dashboard only on metrics that land later has no label values to offer yet.
        let all_later = queries.iter().all(|q| only_later_metrics(&q.expr));
        for q in queries {
            checked += 1;
            let context = format!("{name} / {}", q.panel);
            let expr = match grafana_substitute(&q.expr) {
                Ok(expr) => expr,
                Err(e) => {
                    failures.push(format!("{context}: {e:#}"));
                    continue;
                }
            };
            match prometheus.query(&expr).and_then(|body| data(&body)) {
                Err(e) => failures.push(format!("{context}: {e:#}")),
                // The flows & syscalls dashboard and the agent's Kubernetes panels query
                // metrics that land later: checked for syntax here, for data once they land.
                Ok(_) if only_later_metrics(&expr) => {}
                Ok(d) if d["result"].as_array().is_none_or(Vec::is_empty) => {
                    failures.push(format!("{context}: no data for {expr}"));
                }
                Ok(_) => {}
            }
        }
        // Template variables, the way Grafana resolves label_values(selector, label).
        for (var, v) in dashboard_variables(&dashboard) {
            let query = v["query"]["query"].as_str().unwrap_or_default();
            let result = parse_label_values(query).and_then(|(selector, label)| {
                let selector = grafana_substitute(&selector)?;
                let body = prometheus.get(&format!(
                    "/api/v1/label/{label}/values?match[]={}",
                    url_encode(&selector)
                ))?;
                data(&body)
            });
            match result {
                Err(e) => failures.push(format!("{name} ${var}: {e:#}")),
                // service_name is set without Kubernetes too (the executable's name).
                Ok(values)
                    if var == "service"
                        && !all_later
                        && values.as_array().is_none_or(Vec::is_empty) =>
                {
                    failures.push(format!("{name} ${var}: no values for {query}"))
                }
                // No series here has a `cluster` label: the selector is empty, and every
                // query above returned data through its All value all the same.
                Ok(values) if var == "cluster" && values != serde_json::json!([]) => {
                    failures.push(format!("{name} ${var}: unexpected values {values}"))
                }
                Ok(_) => {}
            }
        }
    }

    // Every alert expression as a query, and as a rule Prometheus evaluates.
    let alerts = alert_rules();
    for (alert, expr) in &alerts {
        checked += 1;
        if let Err(e) = prometheus.query(expr).and_then(|body| data(&body)) {
            failures.push(format!("alert {alert}: {e:#}"));
        }
    }
    let mut last_rules = String::new();
    let evaluated = wait_until(WAIT, Duration::from_millis(250), || {
        let Ok(body) = prometheus.get("/api/v1/rules") else {
            return false;
        };
        let rules: Vec<Value> = data(&body)
            .ok()
            .and_then(|d| d["groups"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        last_rules = body;
        rules.len() == alerts.len()
            && rules.iter().all(|r| {
                r["health"] == "ok"
                    && r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001-"))
            })
    });
    if !evaluated {
        failures.push(format!(
            "not every rule was evaluated healthy: {last_rules}"
        ));
    }

    assert!(
        failures.is_empty(),
        "{} of {checked} queries failed:\n{}\nprometheus log:\n{}",
        failures.len(),
        failures.join("\n"),
        prometheus.log()
    );
    // The agent never stopped, and nothing was lost on the way.
    assert_eq!(
        scalar(&prometheus, "sum(periscope_kernel_events_lost_total)"),
        0.0
    );
    eprintln!(
        "{checked} queries checked in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(agent);
}
