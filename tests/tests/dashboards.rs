//! End-to-end: the Grafana dashboards and the alert rules of deploy/ against real data. The
//! agent watches nginx + curl, PostgreSQL + psql and a Kafka broker (librdkafka's mock) + kcat,
//! a real Prometheus scrapes it every second, and every dashboard query and alert expression
//! runs through Prometheus' HTTP API the way Grafana sends it (variables at their "All" value).
//! Every query must succeed, and every dashboard query must return data, except those on
//! metrics that land later (flows, syscalls, the Kubernetes connection: `LANDS_LATER`), which
//! are only checked for syntax until then. Run as root (the agent loads eBPF programs).

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{curl, kcat, url_encode, wait_until, Agent, MockKafka, Nginx, PgServer, Prometheus};
use serde_json::Value;

use common::{
    alert_rules, dashboard_queries, dashboard_variables, dashboards, deploy_dir,
    grafana_substitute, only_later_metrics, parse_label_values,
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
    let agent = Agent::start(&[]).unwrap();
    let rules = deploy_dir().join("helm/periscope/files/alerts.yaml");
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
