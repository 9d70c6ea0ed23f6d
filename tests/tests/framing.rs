//! End-to-end: exact counts when one read or write carries many messages past the capture
//! window (the kernel frames PostgreSQL messages, see agent-ebpf's `io/framing.rs`). Real
//! PostgreSQL 15, psql, psycopg and pgbench; rows and statements counted on both ends against
//! what the clients themselves saw.

use std::time::Duration;

use harness::{python_kafka_client, wait_for_metric, Agent, MockKafka, PgServer};

const WAIT: Duration = Duration::from_secs(30);
const BIG_ROWS: u64 = 1_000_000;

/// Waits until both ends counted `n` statements with these labels, then returns the
/// returned-rows sums (client, server).
fn counted_both(agent: &Agent, port: &str, labels: &[(&str, &str)], n: f64) -> (f64, f64) {
    let mut l = vec![("server_port", port)];
    l.extend_from_slice(labels);
    for side in ["client", "server"] {
        let name = format!("db_{side}_operation_duration_seconds_count");
        wait_for_metric(agent, &name, &l, n, WAIT).unwrap();
    }
    let m = agent.metrics();
    (
        m.sum("db_client_response_returned_rows_sum", &l),
        m.sum("db_server_response_returned_rows_sum", &l),
    )
}

fn table(op: &'static str, table: &'static str) -> [(&'static str, &'static str); 2] {
    [("db_operation_name", op), ("db_collection_name", table)]
}

/// A server with `big` (a million rows of ~40 bytes) and `small` (one row).
fn server() -> PgServer {
    let pg = PgServer::start();
    pg.psql(&[
        "-c",
        &format!(
            "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS name \
             FROM generate_series(1, {BIG_ROWS}) g"
        ),
        "-c",
        "CREATE TABLE small (id int)",
        "-c",
        "INSERT INTO small VALUES (1)",
        "-c",
        "CREATE TABLE sink (id int, name text)",
    ])
    .unwrap();
    pg
}

fn no_lost_framing(agent: &Agent) {
    let m = agent.metrics();
    for name in ["framing_lost", "framing_bound", "ringbuf_full"] {
        assert_eq!(
            m.sum("periscope_kernel_events_lost_total", &[("reason", name)]),
            0.0,
            "{name}\n{}",
            m.text()
        );
    }
    assert_eq!(m.sum("periscope_parse_errors_total", &[]), 0.0);
    let resyncs = m.sum("periscope_decoder_anomalies_total", &[("reason", "resync")]);
    assert_eq!(resyncs, 0.0, "{}", m.text());
}

#[test]
fn result_sets_of_every_size_then_another_statement() {
    let pg = server();
    let agent = Agent::start(&[]).unwrap();
    let port = pg.port().to_string();
    let sizes = [10, 10_000, BIG_ROWS];
    for n in sizes {
        // One psql session each: the big SELECT, then a small one on the same connection.
        let out = pg
            .psql(&[
                "-At",
                "-c",
                &format!("SELECT * FROM big LIMIT {n}"),
                "-c",
                "SELECT id FROM small",
            ])
            .unwrap();
        assert_eq!(out.lines().count() as u64, n + 1);
    }
    let want: u64 = sizes.iter().sum();
    let (client, server) = counted_both(&agent, &port, &table("SELECT", "big"), 3.0);
    assert_eq!((client, server), (want as f64, want as f64));
    let (client, server) = counted_both(&agent, &port, &table("SELECT", "small"), 3.0);
    assert_eq!((client, server), (3.0, 3.0));
    no_lost_framing(&agent);
}

#[test]
fn copy_out_and_in_then_another_statement() {
    let pg = server();
    let agent = Agent::start(&[]).unwrap();
    let port = pg.port().to_string();
    let out = pg
        .psql(&[
            "-At",
            "-c",
            "COPY big TO STDOUT",
            "-c",
            "SELECT id FROM small",
        ])
        .unwrap();
    assert_eq!(out.lines().count() as u64, BIG_ROWS + 1);
    let copied_in = 100_000;
    let script = format!(
        r#"
import os, psycopg
with psycopg.connect(os.environ["PGURL"], autocommit=True) as c:
    with c.cursor().copy("COPY sink FROM STDIN") as copy:
        for i in range({copied_in}):
            copy.write_row((i, f"row number {{i}} of the copy"))
    print(c.execute("SELECT id FROM small").fetchall()[0][0])
"#
    );
    assert_eq!(pg.python(&script).trim(), "1");
    let (client, server) = counted_both(&agent, &port, &table("COPY", "big"), 1.0);
    assert_eq!((client, server), (BIG_ROWS as f64, BIG_ROWS as f64));
    let (client, server) = counted_both(&agent, &port, &table("COPY", "sink"), 1.0);
    assert_eq!((client, server), (copied_in as f64, copied_in as f64));
    let (client, server) = counted_both(&agent, &port, &table("SELECT", "small"), 2.0);
    assert_eq!((client, server), (2.0, 2.0));
    no_lost_framing(&agent);
}

#[test]
fn psycopg_pipeline_of_a_thousand_mixed_statements() {
    let pg = server();
    let agent = Agent::start(&[]).unwrap();
    let port = pg.port().to_string();
    // 500 SELECTs returning 1–50 rows each and 500 INSERTs, all in one pipeline, after a
    // large fetch on the same connection.
    let out = pg.python(
        r#"
import os, psycopg
with psycopg.connect(os.environ["PGURL"], autocommit=True) as c:
    big = len(c.execute("SELECT * FROM big WHERE id <= %s", (200000,)).fetchall())
    curs = []
    with c.pipeline():
        for i in range(1000):
            if i % 2:
                curs.append(c.execute("SELECT * FROM big WHERE id <= %s", (i % 50 + 1,)))
            else:
                c.execute("INSERT INTO sink VALUES (%s, %s)", (i, "x"))
    rows = sum(len(cur.fetchall()) for cur in curs)
    print(big, rows)
"#,
    );
    let expected: u64 = (0..1000u64)
        .filter(|i| i % 2 == 1)
        .map(|i| i % 50 + 1)
        .sum();
    assert_eq!(out.trim(), format!("200000 {expected}"));
    let (client, server) = counted_both(&agent, &port, &table("SELECT", "big"), 501.0);
    let want = (200_000 + expected) as f64;
    assert_eq!((client, server), (want, want));
    let (client, server) = counted_both(&agent, &port, &table("INSERT", "sink"), 500.0);
    assert_eq!((client, server), (500.0, 500.0));
    no_lost_framing(&agent);
}

/// A ring buffer far too small for a million-row result: events are lost, and every loss
/// that touches a framed connection is noticed (sequence numbers) and counted as inexact
/// instead of being misread as the messages that follow.
#[test]
fn ring_buffer_losses_on_framed_connections_are_counted() {
    let pg = server();
    let agent = Agent::start(&["--ringbuf-bytes", "16384"]).unwrap();
    let out = pg
        .psql(&[
            "-At",
            "-c",
            "SELECT * FROM big",
            "-c",
            "SELECT id FROM small",
        ])
        .unwrap();
    assert_eq!(out.lines().count() as u64, BIG_ROWS + 1);
    let counted = harness::wait_until(WAIT, Duration::from_millis(200), || {
        let m = agent.metrics();
        m.sum(
            "periscope_kernel_events_lost_total",
            &[("reason", "ringbuf_full")],
        ) > 0.0
            && m.sum(
                "periscope_exchanges_inexact_total",
                &[("protocol", "postgresql"), ("reason", "events_lost")],
            ) > 0.0
    });
    assert!(counted, "{}", agent.metrics().text());
}

fn pgbench_big_select(mode: &str) {
    let pg = server();
    let script =
        std::env::temp_dir().join(format!("periscope-big-{}-{mode}.sql", std::process::id()));
    std::fs::write(&script, "SELECT * FROM big WHERE id <= 10000;\n").unwrap();
    let agent = Agent::start(&[]).unwrap();
    let port = pg.port().to_string();
    let transactions = 8;
    let out = pg
        .pgbench(&[
            "-n",
            "-M",
            mode,
            "-c",
            "1",
            "-t",
            &transactions.to_string(),
            "-f",
            script.to_str().unwrap(),
        ])
        .unwrap();
    assert!(out.contains("actually processed: 8/8"), "{out}");
    let (client, server) = counted_both(&agent, &port, &table("SELECT", "big"), 8.0);
    assert_eq!((client, server), (80_000.0, 80_000.0));
    no_lost_framing(&agent);
}

#[test]
fn pgbench_extended_with_ten_thousand_rows() {
    pgbench_big_select("extended");
}

#[test]
fn pgbench_prepared_with_ten_thousand_rows() {
    pgbench_big_select("prepared");
}

/// Client-side and broker-side counts of every Kafka operation once the clients are gone.
/// The agent sees both ends of each connection, so they agree, except for requests a client
/// abandoned at close (a long-poll Fetch, a Metadata refresh in flight): the broker answered
/// them, the client never read the answer. Those are counted as unpaired requests, so the
/// broker's surplus, over all operations, is at most the unpaired count, and the client never
/// has more than the broker.
fn kafka_ends_agree(agent: &Agent, port: &str) -> Vec<(String, f64)> {
    std::thread::sleep(Duration::from_secs(3));
    let m = agent.metrics();
    let mut by_operation = Vec::new();
    let mut surplus = 0.0;
    for sample in m.samples("messaging_server_operation_duration_seconds_count") {
        let label = |k: &str| sample.labels.get(k).cloned().unwrap_or_default();
        let op = label("messaging_operation_name");
        if label("server_port") != port || by_operation.iter().any(|(o, _)| *o == op) {
            continue;
        }
        let labels = [
            ("server_port", port),
            ("messaging_operation_name", op.as_str()),
        ];
        let client = m.sum("messaging_client_operation_duration_seconds_count", &labels);
        let server = m.sum("messaging_server_operation_duration_seconds_count", &labels);
        assert!(
            client <= server,
            "{op}: client {client}, broker {server}\n{}",
            m.text()
        );
        surplus += server - client;
        by_operation.push((op, client));
    }
    let unpaired = m.sum(
        "periscope_decoder_anomalies_total",
        &[("protocol", "kafka"), ("reason", "unpaired_request")],
    );
    assert!(
        surplus <= unpaired,
        "the broker answered {surplus} requests its clients were not seen sending, \
         {unpaired} unpaired\n{}",
        m.text()
    );
    for reason in ["resync", "unexpected_response", "truncated_headers"] {
        let n = m.sum(
            "periscope_decoder_anomalies_total",
            &[("protocol", "kafka"), ("reason", reason)],
        );
        assert_eq!(n, 0.0, "{reason}\n{}", m.text());
    }
    assert_eq!(m.sum("periscope_parse_errors_total", &[]), 0.0);
    by_operation
}

#[test]
fn kafka_fetches_of_several_mebibytes_then_more_requests() {
    let kafka = MockKafka::start();
    let agent = Agent::start(&[]).unwrap();
    let port = kafka.port().to_string();
    // 2,000 messages of 2 KiB (4 MiB: the mock cluster keeps 5 MiB per partition), read back
    // by librdkafka and by kafka-python with fetches of up to 8 MiB, each followed by more requests on the same connections (the
    // consumers keep fetching until they have everything, then commit and leave).
    let out = python_kafka_client(
        &kafka,
        r#"
import os
from confluent_kafka import Producer, Consumer, TopicPartition
from kafka import KafkaConsumer, TopicPartition as TP
b = os.environ["BOOTSTRAP"]
p = Producer({"bootstrap.servers": b, "linger.ms": 20})
for i in range(2000):
    p.produce("bulk", b"%06d" % i + b"x" * 2042, partition=0)
p.flush(30)
c = Consumer({"bootstrap.servers": b, "group.id": "g1", "enable.auto.commit": False,
              "fetch.max.bytes": 8 << 20, "max.partition.fetch.bytes": 8 << 20,
              "receive.message.max.bytes": 16 << 20})
c.assign([TopicPartition("bulk", 0, 0)])
n = 0
for _ in range(30):
    while n < 2000:
        m = c.poll(1)
        if m is None:
            break
        if not m.error():
            n += 1
c.close()
k = KafkaConsumer(bootstrap_servers=b, api_version=(2, 0, 0), enable_auto_commit=False,
                  fetch_max_bytes=8 << 20, max_partition_fetch_bytes=8 << 20,
                  consumer_timeout_ms=10000)
k.assign([TP("bulk", 0)])
k.seek_to_beginning()
m = 0
for _ in k:
    m += 1
    if m == 2000:
        break
k.close()
print(n, m)
"#,
    )
    .unwrap();
    assert_eq!(out.trim(), "2000 2000");
    let ops = kafka_ends_agree(&agent, &port);
    assert!(
        ops.iter().any(|(op, n)| op == "receive" && *n >= 2.0),
        "{ops:?}"
    );
    no_lost_framing(&agent);
}
