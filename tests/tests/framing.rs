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
    // Every record fetched is counted once, on both ends, although the responses are MiBs
    // (the kernel walks each Fetch response's batches).
    let m = agent.metrics();
    let topic = [("messaging_destination_name", "bulk")];
    for family in [
        "messaging_client_consumed_messages_total",
        "messaging_server_delivered_messages_total",
        "messaging_client_sent_messages_total",
        "messaging_server_received_messages_total",
    ] {
        let want = if family.contains("consumed") || family.contains("delivered") {
            4000.0
        } else {
            2000.0
        };
        assert_eq!(m.sum(family, &topic), want, "{family}\n{}", m.text());
    }
    // (Unpaired requests are long-poll Fetches the clients abandoned at close, see above.)
    let inexact = m.sum(
        "periscope_exchanges_inexact_total",
        &[("protocol", "kafka"), ("reason", "incomplete")],
    );
    assert_eq!(inexact, 0.0, "{}", m.text());
    no_lost_framing(&agent);
}

/// A Kafka peer pair in Python that speaks Fetch in every response layout (versions 0 to 17:
/// legacy messages, aborted transactions, flexible versions with tagged fields everywhere,
/// topic ids), each response ~15 KB with 230 records in whole batches and a partial batch
/// the count must leave out, then Produce requests of ~15 KB and 230 records over three
/// partitions (versions 3 to 13), all written and read in pieces that split fields, batch
/// headers and varints at many offsets. The kernel sees real syscalls on both ends.
const KAFKA_FETCH_LAYOUTS: &str = r#"
import socket, struct, threading, time, random
VERSIONS = [(0, True), (3, True), (4, False), (7, False), (11, False), (12, False),
            (13, False), (16, False), (17, False)]
TOPIC_ID = b"\xcd" * 16
def uv(n):
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7f) | 0x80]); n >>= 7
    return out + bytes([n])
def ln(flex, n, w=4):
    return uv(n + 1) if flex else struct.pack(">i" if w == 4 else ">h", n)
def tags(flex):
    return uv(1) + uv(7) + uv(3) + b"tag" if flex else b""
def batch(n, pad):
    rest = struct.pack(">ibihiqqqhii", 0, 2, 0, 0, n - 1, 1, 1, -1, -1, -1, n) + b"\x5a" * pad
    return struct.pack(">qi", 0, len(rest)) + rest
def legacy(pad):
    rest = struct.pack(">ibbq", 0, 1, 0, 1) + b"\x33" * pad
    return struct.pack(">qi", 0, len(rest)) + rest
def frame(b):
    return struct.pack(">i", len(b)) + b
def request(v, corr):
    f = v >= 12
    b = struct.pack(">hhih", 1, v, corr, 1) + b"c" + tags(f)
    b += struct.pack(">iii", -1, 500, 1)
    if v >= 3: b += struct.pack(">i", 50 << 20)
    if v >= 4: b += b"\x00"
    if v >= 7: b += struct.pack(">ii", 0, -1)
    b += ln(f, 1) + (TOPIC_ID if v >= 13 else ln(f, 4, 2) + b"bulk") + ln(f, 3)
    for p in range(3):
        b += struct.pack(">i", p)
        if v >= 9: b += struct.pack(">i", -1)
        b += struct.pack(">q", 0)
        if v >= 12: b += struct.pack(">i", -1)
        if v >= 5: b += struct.pack(">q", -1)
        b += struct.pack(">i", 8 << 20) + tags(f)
    b += tags(f)
    if v >= 7: b += ln(f, 0)
    if v >= 11: b += ln(f, 0, 2)
    return frame(b + tags(f))
def produce(v, corr):
    f = v >= 9
    b = struct.pack(">hhih", 0, v, corr, 1) + b"p" + tags(f)
    if v >= 3: b += uv(0) if f else struct.pack(">h", -1)
    b += struct.pack(">hi", 1, 30000) + ln(f, 1)
    b += (TOPIC_ID if v >= 13 else ln(f, 4, 2) + b"bulk") + ln(f, 3)
    big = b"".join(batch(5, 200) for _ in range(40))
    small = b"".join(batch(3, 50) for _ in range(10))
    for p, records in [(0, big), (1, b""), (2, small)]:
        b += struct.pack(">i", p) + ln(f, len(records)) + records + tags(f)
    return frame(b + tags(f) + tags(f))
def produced(v, corr):
    f = v >= 9
    return frame(struct.pack(">i", corr) + tags(f) + ln(f, 0) + struct.pack(">i", 0) + tags(f))
def response(v, corr, old):
    f = v >= 12
    b = struct.pack(">i", corr) + tags(f)
    if v >= 1: b += struct.pack(">i", 0)
    if v >= 7: b += struct.pack(">hi", 0, 7)
    b += ln(f, 1) + (TOPIC_ID if v >= 13 else ln(f, 4, 2) + b"bulk") + ln(f, 3)
    big = b"".join(batch(5, 200) for _ in range(40)) + batch(7, 100)[:90]
    small = b"".join(legacy(20) for _ in range(30)) if old else b"".join(batch(3, 50) for _ in range(10))
    for p, records in [(0, big), (1, b""), (2, small)]:
        b += struct.pack(">ihq", p, 0, 1000)
        if v >= 4: b += struct.pack(">q", 1000)
        if v >= 5: b += struct.pack(">q", 0)
        if v >= 4:
            b += ln(f, 2)
            for t in range(2): b += struct.pack(">qq", t, t * 10) + tags(f)
        if v >= 11: b += struct.pack(">i", -1)
        b += ln(f, len(records)) + records + tags(f)
    return frame(b + tags(f) + tags(f))
rng = random.Random(7)
def cuts(plan, n):
    if plan == 2: return list(range(1000, n, 1000))
    if plan == 3: return list(range(7, 300, 7))
    if plan == 4: return sorted(rng.sample(range(1, n), 3))
    if plan == 5: return list(range(300, 1500, 61))
    return []
CLIENT_READ = [1 << 20, 13, 1 << 20, 1 << 20, 97, 1 << 20]
def recv_exact(s, n, size):
    out = b""
    while len(out) < n:
        got = s.recv(min(size, n - len(out)))
        if not got: raise EOFError
        out += got
    return out
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(16)
def serve():
    while True:
        c, _ = srv.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        served = 0
        try:
            while True:
                # The size alone first, as a JVM broker reads, then the rest in pieces.
                n = struct.unpack(">i", recv_exact(c, 4, 4))[0]
                body = recv_exact(c, n, CLIENT_READ[served % 6])
                served += 1
                key, v, corr = struct.unpack(">hhi", body[:8])
                if key == 0:
                    c.sendall(produced(v, corr))
                    continue
                out = response(v, corr, dict(VERSIONS)[v])
                at = 0
                for cut in cuts(corr % 6, len(out)) + [len(out)]:
                    c.sendall(out[at:cut]); at = cut
                    time.sleep(0.001)
        except EOFError:
            c.close()
threading.Thread(target=serve, daemon=True).start()
records = 0
for v, _ in VERSIONS:
    s = socket.create_connection(srv.getsockname())
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for corr in range(6):
        s.sendall(request(v, corr))
        size = CLIENT_READ[corr]
        n = struct.unpack(">i", recv_exact(s, 4, 4))[0]
        recv_exact(s, n, size)
        records += 230
    s.close()
sent = 0
for v in [3, 7, 9, 13]:
    s = socket.create_connection(srv.getsockname())
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for corr in range(6):
        out = produce(v, corr)
        at = 0
        for cut in cuts(corr % 6, len(out)) + [len(out)]:
            s.sendall(out[at:cut]); at = cut
            time.sleep(0.001)
        n = struct.unpack(">i", recv_exact(s, 4, 4))[0]
        recv_exact(s, n, 1 << 20)
        sent += 230
    s.close()
print(records, sent)
"#;

#[test]
fn kafka_fetch_records_exact_in_every_response_layout() {
    let agent = Agent::start(&[]).unwrap();
    let out =
        harness::output_ok(std::process::Command::new("python3").args(["-c", KAFKA_FETCH_LAYOUTS]))
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "12420 5520");
    for (op, n) in [("receive", 54.0), ("send", 24.0)] {
        for side in ["client", "server"] {
            let name = format!("messaging_{side}_operation_duration_seconds_count");
            let labels = [("messaging_operation_name", op)];
            wait_for_metric(&agent, &name, &labels, n, WAIT).unwrap();
        }
    }
    let m = agent.metrics();
    for (family, n) in [
        ("messaging_client_consumed_messages_total", 12420.0),
        ("messaging_server_delivered_messages_total", 12420.0),
        ("messaging_client_sent_messages_total", 5520.0),
        ("messaging_server_received_messages_total", 5520.0),
    ] {
        assert_eq!(m.sum(family, &[]), n, "{family}\n{}", m.text());
    }
    let inexact = m.sum(
        "periscope_exchanges_inexact_total",
        &[("protocol", "kafka")],
    );
    assert_eq!(inexact, 0.0, "{}", m.text());
    no_lost_framing(&agent);
}

// HTTP/1.1: pipelines read with large buffers, so that one `read` holds many responses and
// most of their bodies, and chunked bodies whose framing falls around the capture window.

/// What a client saw on one connection: per status, responses and body payload bytes.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    by_status: std::collections::BTreeMap<u16, (u64, u64)>,
}

impl Seen {
    fn total(&self) -> u64 {
        self.by_status.values().map(|(n, _)| n).sum()
    }
}

/// Parses a stream of responses, `heads[i]` telling whether request `i` was HEAD (its
/// response has no body whatever its Content-Length says). Chunked bodies count their
/// payload only.
fn parse_responses(mut data: &[u8], heads: &[bool]) -> Seen {
    let mut seen = Seen::default();
    let mut i = 0;
    while !data.is_empty() {
        let end = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a whole head")
            + 4;
        let head = std::str::from_utf8(&data[..end])
            .unwrap()
            .to_ascii_lowercase();
        data = &data[end..];
        let status: u16 = head[9..12].parse().unwrap();
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let mut payload = 0u64;
        if !heads[i] {
            if field("transfer-encoding:").is_some() {
                loop {
                    let eol = data.windows(2).position(|w| w == b"\r\n").unwrap();
                    let line = std::str::from_utf8(&data[..eol]).unwrap();
                    let size = usize::from_str_radix(line.split(';').next().unwrap(), 16).unwrap();
                    data = &data[eol + 2..];
                    if size == 0 {
                        // Trailer lines up to an empty one.
                        loop {
                            let end = data.windows(2).position(|w| w == b"\r\n").unwrap();
                            data = &data[end + 2..];
                            if end == 0 {
                                break;
                            }
                        }
                        break;
                    }
                    payload += size as u64;
                    data = &data[size + 2..];
                }
            } else {
                let n: usize = field("content-length:").unwrap().parse().unwrap();
                payload = n as u64;
                data = &data[n..];
            }
        }
        let entry = seen.by_status.entry(status).or_default();
        entry.0 += 1;
        entry.1 += payload;
        i += 1;
    }
    assert_eq!(i, heads.len(), "a response per request");
    seen
}

/// Sends `requests` in one write and reads everything until the server closes, `buffer`
/// bytes per `read` at most.
fn pipeline(port: u16, requests: &[u8], buffer: usize) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(requests).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; buffer];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Runs Python `code` with `input` on its stdin; returns its stdout.
fn python_stdio(code: &str, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("python3")
        .args(["-c", code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Both ends counted exactly what the clients saw: responses and body bytes per status.
fn http_ends_match(agent: &Agent, port: u16, seen: &Seen) {
    let port = port.to_string();
    for (status, (n, bytes)) in &seen.by_status {
        let status = status.to_string();
        let l = [
            ("server_port", port.as_str()),
            ("http_response_status_code", status.as_str()),
        ];
        for side in ["server", "client"] {
            let count = format!("http_{side}_request_duration_seconds_count");
            wait_for_metric(agent, &count, &l, *n as f64, WAIT).unwrap();
        }
        std::thread::sleep(Duration::from_secs(1));
        let m = agent.metrics();
        for side in ["server", "client"] {
            let count = format!("http_{side}_request_duration_seconds_count");
            assert_eq!(
                m.sum(&count, &l),
                *n as f64,
                "{side} {status}\n{}",
                m.text()
            );
            let body = format!("http_{side}_response_body_size_bytes_sum");
            assert_eq!(
                m.sum(&body, &l),
                *bytes as f64,
                "{side} {status}\n{}",
                m.text()
            );
        }
    }
}

/// Files of 0 bytes to 1 MiB (some missing) in `root`, and 100 pipelined requests for them
/// (GET and HEAD, the last one closing), with which of them are HEAD.
fn pipelined_files(root: &std::path::Path) -> (Vec<u8>, Vec<bool>) {
    let sizes: Vec<usize> = (0..100)
        .map(|i| match i % 10 {
            0 => 0,
            1 => 1,
            2 => 4095,
            3 => 4096,
            4 => 4097,
            5 => 100 * i,
            6 => 65536,
            7 => 8191 + i,
            8 => 1 << 20,
            _ => 300_000 + i,
        })
        .collect();
    for (i, size) in sizes.iter().enumerate() {
        if i % 13 != 5 {
            std::fs::write(root.join(format!("f{i}")), vec![b'x'; *size]).unwrap();
        }
    }
    let mut requests = Vec::new();
    let mut heads = Vec::new();
    for i in 0..sizes.len() {
        let head = i % 7 == 3;
        let method = if head { "HEAD" } else { "GET" };
        let close = if i + 1 == sizes.len() {
            "Connection: close\r\n"
        } else {
            ""
        };
        requests.extend_from_slice(
            format!("{method} /files/f{i} HTTP/1.1\r\nHost: x\r\nUser-Agent: pipeline-test\r\n{close}\r\n")
                .as_bytes(),
        );
        heads.push(head);
    }
    (requests, heads)
}

/// A Python client that sends its stdin in one write on a connection to `port` (TLS with
/// `tls`) and writes what it reads, `buffer` bytes per read at most, to stdout.
fn python_pipeline_client(port: u16, tls: bool, buffer: usize) -> String {
    let wrap = if tls {
        "import ssl\n\
         ctx = ssl.create_default_context()\n\
         ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\n\
         s = ctx.wrap_socket(s)\n"
    } else {
        ""
    };
    format!(
        "import socket, sys\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         {wrap}\
         s.sendall(sys.stdin.buffer.read())\n\
         while True:\n    \
             b = s.recv({buffer})\n    \
             if not b: break\n    \
             sys.stdout.buffer.write(b)\n"
    )
}

/// 100 pipelined requests (GET and HEAD, files of 0 bytes to 1 MiB, some missing) on one
/// connection, written at once and read back with 1 MiB and 64 KiB buffers, from Rust and from
/// Python: nginx reads the pipeline in pieces, the clients read many responses per `read`.
#[test]
fn http_pipeline_of_a_hundred_requests_with_bodies_up_to_a_mebibyte() {
    let root = harness::TempDir::new("pipeline").unwrap();
    let (requests, heads) = pipelined_files(root.path());
    let nginx = harness::Nginx::start(&format!(
        "location /files/ {{ alias {}/; }}",
        root.path().display()
    ));
    let agent = Agent::start(&[]).unwrap();
    let mut seen = parse_responses(&pipeline(nginx.port(), &requests, 1 << 20), &heads);
    let client = python_pipeline_client(nginx.port(), false, 65536);
    let python = parse_responses(&python_stdio(&client, &requests), &heads);
    assert_eq!(seen, python);
    for (n, bytes) in seen.by_status.values_mut() {
        *n *= 2;
        *bytes *= 2;
    }
    assert_eq!(seen.total(), 200);
    assert!(seen.by_status.contains_key(&404), "{seen:?}");
    http_ends_match(&agent, nginx.port(), &seen);
    no_lost_framing(&agent);
}

/// The same pipeline over HTTPS (the plaintext of nginx's and Python's `SSL_read_ex`/
/// `SSL_write_ex`, framed like socket bytes), read back by Python with 1 MiB and 16 KiB
/// buffers.
#[test]
fn https_pipeline_of_a_hundred_requests_with_bodies_up_to_a_mebibyte() {
    let root = harness::TempDir::new("pipeline").unwrap();
    let (requests, heads) = pipelined_files(root.path());
    let certs = harness::TempDir::new("tls-certs").unwrap();
    let (cert, key) = harness::tls::self_signed(certs.path()).unwrap();
    let nginx = harness::Nginx::start_with_config(&format!(
        "server {{ listen 127.0.0.1:@PORT@ ssl; ssl_certificate {}; ssl_certificate_key {}; \
         location /files/ {{ alias {}/; }} }}",
        cert.display(),
        key.display(),
        root.path().display()
    ));
    let agent = Agent::start(&[]).unwrap();
    let mut seen = Seen::default();
    for buffer in [1 << 20, 16384] {
        let client = python_pipeline_client(nginx.port(), true, buffer);
        let got = parse_responses(&python_stdio(&client, &requests), &heads);
        for (status, (n, bytes)) in got.by_status {
            let entry = seen.by_status.entry(status).or_default();
            entry.0 += n;
            entry.1 += bytes;
        }
    }
    assert_eq!(seen.total(), 200);
    assert!(seen.by_status.contains_key(&404), "{seen:?}");
    http_ends_match(&agent, nginx.port(), &seen);
    no_lost_framing(&agent);
    let m = agent.metrics();
    assert_eq!(
        m.sum(
            "periscope_kernel_events_lost_total",
            &[("reason", "tls_unattributed")]
        ),
        0.0,
        "{}",
        m.text()
    );
}

/// A Python server answering each request on a connection in order with `reply(path)`, which
/// `reply` (Python source) defines; request bodies (by Content-Length) are read and dropped, and
/// a request saying `close` ends the connection after its response.
fn reply_server(reply: &str) -> String {
    format!("import socket, sys, threading\n{reply}\n{REPLY_LOOP}")
}

const REPLY_LOOP: &str = r#"
def serve(conn):
    buf = b""
    while True:
        b = conn.recv(1 << 20)
        if not b:
            break
        buf += b
        while b"\r\n\r\n" in buf:
            head, rest = buf.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                break
            buf = rest[length:]
            conn.sendall(reply(head.split(b" ")[1]))
            if b"close" in head.lower():
                conn.close()
                return
    conn.close()

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// `reply` for a server that answers each request `GET /c/<d>` with one `write` of a chunked response
/// whose first chunk's closing CRLF begins `d` bytes after the 4 KiB mark of the write, then
/// chunks of 5,000 and 3 bytes, and a trailer when `d` is even.
const CHUNKED_REPLY: &str = r#"

def chunk(n):
    return b"%x\r\n" % n + b"y" * n + b"\r\n"

def reply(path):
    d = int(path.rsplit(b"/", 1)[1])
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    first = 4096 - len(head) - len(b"%x\r\n" % 4000) + d
    end = b"0\r\nx-checksum: 1\r\n\r\n" if d % 2 == 0 else b"0\r\n\r\n"
    return head + chunk(first) + chunk(5000) + chunk(3) + end
"#;

/// Chunked responses whose framing (the CRLF closing a chunk, the next size line) falls at
/// every offset from 12 bytes before to 12 bytes after the capture window's end, pipelined and
/// read with a large buffer.
#[test]
fn chunked_bodies_with_boundaries_at_every_offset_around_the_capture_window() {
    let server = harness::PyServer::start(&reply_server(CHUNKED_REPLY));
    let agent = Agent::start(&[]).unwrap();
    let offsets: Vec<i32> = (-12..=12).collect();
    let mut requests = Vec::new();
    for (i, d) in offsets.iter().enumerate() {
        let close = if i + 1 == offsets.len() {
            "Connection: close\r\n"
        } else {
            ""
        };
        requests
            .extend_from_slice(format!("GET /c/{d} HTTP/1.1\r\nHost: x\r\n{close}\r\n").as_bytes());
    }
    let heads = vec![false; offsets.len()];
    let seen = parse_responses(&pipeline(server.port(), &requests, 1 << 20), &heads);
    assert_eq!(seen.total(), offsets.len() as u64);
    http_ends_match(&agent, server.port(), &seen);
    no_lost_framing(&agent);
}

/// nginx with `sendfile on` (the distributions' default) writes each head and sends the body
/// from the file with no user buffer: the kernel skips those bytes by length and keeps framing.
#[test]
fn http_bodies_sent_with_sendfile_keep_framing() {
    let root = harness::TempDir::new("sendfile").unwrap();
    let sizes = [0usize, 1, 4097, 65536, 1 << 20, 300_001];
    for (i, size) in sizes.iter().enumerate() {
        std::fs::write(root.path().join(format!("f{i}")), vec![b'x'; *size]).unwrap();
    }
    let nginx = harness::Nginx::start(&format!(
        "sendfile on; location /files/ {{ alias {}/; }}",
        root.path().display()
    ));
    let agent = Agent::start(&[]).unwrap();
    let mut requests = Vec::new();
    let mut heads = Vec::new();
    for round in 0..5 {
        for i in 0..sizes.len() {
            let head = (round + i) % 4 == 1;
            let method = if head { "HEAD" } else { "GET" };
            requests.extend_from_slice(
                format!("{method} /files/f{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            );
            heads.push(head);
        }
    }
    requests.extend_from_slice(b"GET /files/f0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    heads.push(false);
    let seen = parse_responses(&pipeline(nginx.port(), &requests, 1 << 20), &heads);
    assert_eq!(seen.total(), heads.len() as u64);
    http_ends_match(&agent, nginx.port(), &seen);
    no_lost_framing(&agent);
}

const SPELLINGS_REPLY: &str = r#"

HEADS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.1 200\r\ncontent-length:%d\r\n\r\n",
    b"HTTP/1.1 201 Created\r\nContent-Length:  000%d\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nCONTENT-LENGTH: %d\r\nContent-Type: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Lengthy: 7\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\t\r\n\r\n",
    b"HTTP/1.1 202 Accepted\r\nServer: x\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"X-A-Rather-Long-Header-Name: some value\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length:\t%d\r\n\r\n",
]

def reply(path):
    _, _, variant, size = path.split(b"/")
    variant, size = int(variant), int(size)
    if variant == len(HEADS):
        chunk = b"%x\r\n" % size + b"c" * size + b"\r\n" if size else b""
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + b"0\r\n\r\n"
    return HEADS[variant] % size + b"b" * size
"#;

/// Heads in the spellings the kernel scan takes in words (a response's `HTTP/1.1 ddd `, `GET`
/// and `POST`, Content-Length's name and digits, names it skips) and in the ones it leaves to
/// its byte scan (no reason phrase, no space or two, tabs, leading zeros, HTTP/1.0, upper
/// case, a name that only begins as Content-Length, seven-digit lengths, chunked), with
/// bodies past the capture window, pipelined both ways: every message is counted once, with
/// its exact body size, at both ends.
#[test]
fn heads_in_every_spelling_the_word_scan_takes_or_leaves_frame_exactly() {
    let server = harness::PyServer::start(&reply_server(SPELLINGS_REPLY));
    let agent = Agent::start(&[]).unwrap();
    let variants = 9;
    let sizes = [0usize, 1, 5000, 1_234_567, 65535];
    let mut requests = Vec::new();
    let mut count = 0;
    for variant in 0..variants {
        for size in sizes {
            for post in [false, true] {
                let target = format!("/v/{variant}/{size}");
                let head = if post {
                    format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n")
                } else {
                    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n")
                };
                requests.extend_from_slice(head.as_bytes());
                count += 1;
                if count == variants * sizes.len() * 2 {
                    requests.extend_from_slice(b"Connection: close\r\n");
                }
                requests.extend_from_slice(b"\r\n");
                if post {
                    requests.extend_from_slice(&[b'p'; 5000]);
                }
            }
        }
    }
    let heads = vec![false; count];
    let seen = parse_responses(&pipeline(server.port(), &requests, 1 << 20), &heads);
    assert_eq!(seen.total(), count as u64);
    http_ends_match(&agent, server.port(), &seen);
    no_lost_framing(&agent);
}

/// Requests whose head is split into two `write`s right after `Content-` (and after each
/// other byte of `Content-Length: 5000`), with a pause so the server reads them apart: the
/// word scan must not decide a name from bytes the syscall does not hold. Every body is
/// skipped by its length, so every request after it is counted once.
#[test]
fn heads_split_inside_the_content_length_name_frame_exactly() {
    use std::io::Write;
    let server = harness::PyServer::start(&reply_server(SPELLINGS_REPLY));
    let agent = Agent::start(&[]).unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    s.set_nodelay(true).unwrap();
    let head = b"POST /v/0/7 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n";
    let name_at = head.windows(8).position(|w| w == b"Content-").unwrap();
    let splits: Vec<usize> = (name_at + 1..name_at + 21).collect();
    for &split in &splits {
        s.write_all(&head[..split]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let mut rest = head[split..].to_vec();
        rest.extend_from_slice(&[b'p'; 5000]);
        rest.extend_from_slice(b"GET /v/0/3 HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(&rest).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    s.write_all(b"GET /v/0/0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut out).unwrap();
    let heads = vec![false; 2 * splits.len() + 1];
    let seen = parse_responses(&out, &heads);
    assert_eq!(seen.total(), heads.len() as u64);
    http_ends_match(&agent, server.port(), &seen);
    no_lost_framing(&agent);
}
