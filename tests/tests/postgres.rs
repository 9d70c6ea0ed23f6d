//! End-to-end: a real PostgreSQL 15 server and real clients (pgbench in its three query modes,
//! psql, psycopg) on loopback, counted from both ends exactly.

use std::time::Duration;

use harness::{wait_for_metric, Agent, PgServer};

const CLIENT: &str = "db_client_operation_duration_seconds_count";
const SERVER: &str = "db_server_operation_duration_seconds_count";
const WAIT: Duration = Duration::from_secs(15);

/// The statements of pgbench's built-in TPC-B-like script that name a table, per transaction.
const TPCB: [(&str, &str); 5] = [
    ("UPDATE", "pgbench_accounts"),
    ("SELECT", "pgbench_accounts"),
    ("UPDATE", "pgbench_tellers"),
    ("UPDATE", "pgbench_branches"),
    ("INSERT", "pgbench_history"),
];

fn expect_both(agent: &Agent, port: &str, labels: &[(&str, &str)], n: f64) {
    let mut l = vec![("server_port", port)];
    l.extend_from_slice(labels);
    wait_for_metric(agent, CLIENT, &l, n, WAIT).unwrap();
    wait_for_metric(agent, SERVER, &l, n, WAIT).unwrap();
}

fn pgbench_is_counted_exactly(mode: &str) {
    let pg = PgServer::start();
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    let agent = Agent::start(&[]).unwrap();
    let transactions = 12;
    let out = pg
        .pgbench(&["-M", mode, "-t", &transactions.to_string(), "-c", "1", "-n"])
        .unwrap();
    assert!(
        out.contains("number of transactions actually processed: 12/12"),
        "{out}"
    );
    let port = pg.port().to_string();
    for (operation, table) in TPCB {
        expect_both(
            &agent,
            &port,
            &[
                ("db_operation_name", operation),
                ("db_collection_name", table),
                ("db_system_name", "postgresql"),
                ("db_namespace", "postgres"),
            ],
            transactions as f64,
        );
    }
    expect_both(
        &agent,
        &port,
        &[("db_operation_name", "BEGIN")],
        transactions as f64,
    );
    let m = agent.metrics();
    assert_eq!(
        m.sum("periscope_parse_errors_total", &[]),
        0.0,
        "{}",
        m.text()
    );
    // The SELECT returns one row per transaction.
    let rows = m.sum(
        "db_client_response_returned_rows_sum",
        &[
            ("server_port", &port),
            ("db_operation_name", "SELECT"),
            ("db_collection_name", "pgbench_accounts"),
        ],
    );
    assert_eq!(rows, transactions as f64);
}

#[test]
fn pgbench_simple_protocol() {
    pgbench_is_counted_exactly("simple");
}

#[test]
fn pgbench_extended_protocol() {
    pgbench_is_counted_exactly("extended");
}

#[test]
fn pgbench_prepared_statements() {
    pgbench_is_counted_exactly("prepared");
}

#[test]
fn pipelines_errors_and_copy() {
    let pg = PgServer::start();
    pg.psql(&["-c", "CREATE TABLE items (id int, name text)"])
        .unwrap();
    let agent = Agent::start(&[]).unwrap();
    let port = pg.port().to_string();
    // psycopg's pipeline mode: ten Parse/Bind/Execute before one Sync.
    let out = pg.python(
        r#"
import os, psycopg
with psycopg.connect(os.environ["PGURL"], autocommit=True) as c:
    with c.pipeline():
        for i in range(10):
            c.execute("INSERT INTO items VALUES (%s, %s)", (i, f"name {i}"))
    print(len(c.execute("SELECT id, name FROM items WHERE id >= %s", (0,)).fetchall()))
"#,
    );
    assert_eq!(out.trim(), "10");
    expect_both(
        &agent,
        &port,
        &[
            ("db_operation_name", "INSERT"),
            ("db_collection_name", "items"),
        ],
        10.0,
    );
    expect_both(
        &agent,
        &port,
        &[
            ("db_operation_name", "SELECT"),
            ("db_collection_name", "items"),
        ],
        1.0,
    );
    // A failing statement carries its SQLSTATE.
    assert!(pg.psql(&["-c", "SELECT * FROM no_such_table"]).is_err());
    expect_both(&agent, &port, &[("error_type", "42P01")], 1.0);
    // COPY out, counted once with its rows.
    let copied = pg.psql(&["-c", "COPY items TO STDOUT"]).unwrap();
    assert_eq!(copied.lines().count(), 10);
    expect_both(
        &agent,
        &port,
        &[
            ("db_operation_name", "COPY"),
            ("db_collection_name", "items"),
        ],
        1.0,
    );
    let m = agent.metrics();
    let copy_rows = m.sum(
        "db_server_response_returned_rows_sum",
        &[("server_port", &port), ("db_operation_name", "COPY")],
    );
    assert_eq!(copy_rows, 10.0);
    // No literal from the statements reached a label.
    assert!(!m.text().contains("name 3"));
}

#[test]
fn a_connection_open_before_start_up_is_decoded() {
    let pg = PgServer::start();
    pg.psql(&["-c", "CREATE TABLE early (id int)"]).unwrap();
    let script = r#"
import os, sys, time, psycopg
c = psycopg.connect(os.environ["PGURL"], autocommit=True)
c.execute("SELECT 1")
print("connected", flush=True)
while not os.path.exists(os.environ["PERISCOPE_GO"]):
    time.sleep(0.05)
for i in range(3):
    c.execute("SELECT id FROM early").fetchall()
print("done", flush=True)
"#;
    let (agent, _client) = harness::start_agent_mid_client(
        std::process::Command::new("python3")
            .args(["-c", script])
            .env("PGURL", pg.url("postgres")),
        &[],
    )
    .unwrap();
    let port = pg.port().to_string();
    expect_both(
        &agent,
        &port,
        &[
            ("db_operation_name", "SELECT"),
            ("db_collection_name", "early"),
        ],
        3.0,
    );
}
