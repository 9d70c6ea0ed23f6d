//! End-to-end: TLS traffic decoded from the plaintext the TLS uprobes see. Real servers with
//! certificates made by `openssl` in the test (nginx HTTPS, PostgreSQL `ssl=on`), real
//! clients (curl, Python `requests` and `urllib`, psql, psycopg), exact counts on both ends.

use std::process::Command;
use std::time::Duration;

use harness::{curl, wait_for_metric, Agent, Nginx, PgServer, TempDir};

const HTTP_SERVER: &str = "http_server_request_duration_seconds_count";
const HTTP_CLIENT: &str = "http_client_request_duration_seconds_count";
const DB_CLIENT: &str = "db_client_operation_duration_seconds_count";
const DB_SERVER: &str = "db_server_operation_duration_seconds_count";
const WAIT: Duration = Duration::from_secs(15);

/// nginx serving HTTPS on its port, with a certificate in `certs`.
fn https_nginx(certs: &TempDir) -> Nginx {
    let (cert, key) = harness::tls::self_signed(certs.path()).unwrap();
    Nginx::start_with_config(&format!(
        r#"server {{
            listen 127.0.0.1:@PORT@ ssl;
            ssl_certificate {};
            ssl_certificate_key {};
            location /ok {{ return 200 "ok\n"; }}
            location /warm {{ return 200 "warm\n"; }}
            location /missing {{ return 404; }}
            location /users/ {{ return 200 "user\n"; }}
        }}"#,
        cert.display(),
        key.display()
    ))
}

fn https(nginx: &Nginx, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", nginx.port())
}

fn labels<'a>(port: &'a str, route: &'a str, status: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("server_port", port),
        ("http_route", route),
        ("http_response_status_code", status),
    ]
}

fn python(code: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .envs(env.iter().copied())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn https_from_curl_and_requests_is_counted_exactly_on_both_ends() {
    let certs = TempDir::new("tls-certs").unwrap();
    let nginx = https_nginx(&certs);
    let agent = Agent::start(&[]).unwrap();
    // curl: a new connection (and process) per request, and one keep-alive run of five.
    for _ in 0..7 {
        curl(&["-k", "-o", "/dev/null", &https(&nginx, "/ok")]).unwrap();
    }
    for _ in 0..3 {
        curl(&["-k", "-o", "/dev/null", &https(&nginx, "/missing")]).unwrap();
    }
    let urls: Vec<String> = (1..=5)
        .map(|i| https(&nginx, &format!("/users/{}", 100 + i)))
        .collect();
    let mut args = vec!["-k"];
    for url in &urls {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args).unwrap();
    // Python requests (its own OpenSSL calls, SSL_read_ex/SSL_write_ex): a keep-alive session
    // of six and two one-off requests.
    python(
        r#"
import os, requests, urllib3
urllib3.disable_warnings()
url = os.environ["URL"]
with requests.Session() as s:
    for _ in range(6):
        assert s.get(url, verify=False).status_code == 200
for _ in range(2):
    assert requests.get(url, verify=False, headers={"Connection": "close"}).status_code == 200
"#,
        &[("URL", &https(&nginx, "/ok"))],
    );

    let port = nginx.port().to_string();
    for (route, status, n) in [("/ok", "200", 15.0), ("/missing", "404", 3.0)] {
        wait_for_metric(&agent, HTTP_SERVER, &labels(&port, route, status), n, WAIT).unwrap();
        wait_for_metric(&agent, HTTP_CLIENT, &labels(&port, route, status), n, WAIT).unwrap();
    }
    let users = labels(&port, "/users/{id}", "200");
    wait_for_metric(&agent, HTTP_SERVER, &users, 5.0, WAIT).unwrap();
    wait_for_metric(&agent, HTTP_CLIENT, &users, 5.0, WAIT).unwrap();
    let m = agent.metrics();
    let on_port = [("server_port", port.as_str())];
    assert_eq!(m.sum(HTTP_SERVER, &on_port), 23.0, "{}", m.text());
    assert_eq!(m.sum(HTTP_CLIENT, &on_port), 23.0, "{}", m.text());
    assert!(m
        .matching(HTTP_SERVER, &on_port)
        .all(|s| s.labels["service_name"] == "nginx"));
    let curl_client = m.sum(
        HTTP_CLIENT,
        &[("server_port", &port), ("service_name", "curl")],
    );
    assert_eq!(curl_client, 15.0, "{}", m.text());
    assert!(m.sum("periscope_tls_files_probed", &[]) >= 1.0);
    assert_eq!(
        m.sum("periscope_parse_errors_total", &[]),
        0.0,
        "{}",
        m.text()
    );
}

#[test]
fn postgres_over_ssl_is_counted_exactly_from_psql_and_psycopg() {
    let pg = PgServer::start_ssl();
    let agent = Agent::start(&[]).unwrap();
    // psql, simple protocol, SSL required (and checked by the server's own view).
    for i in 0..4 {
        let out = pg
            .command_ssl("psql")
            .args(["-X", "-A", "-t", "-c"])
            .arg(format!(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND {i} >= 0"
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
    }
    // psycopg, extended protocol (parameters), 30 statements returning 1..=30 rows, then a
    // pipeline of 20 more on the same SSL connection. psycopg's binary package brings its own
    // libssl (`psycopg_binary.libs/libssl-<hash>.so.3`), mapped when it is imported: the first
    // connection names the process to the agent, which probes that copy within a moment (an
    // exchange before that is not seen: see the README's TLS section).
    let url = format!("{}?sslmode=require", pg.url("postgres"));
    let out = python(
        r#"
import os, time, psycopg
psycopg.connect(os.environ["URL"]).close()
time.sleep(3)
with psycopg.connect(os.environ["URL"]) as conn:
    conn.execute("CREATE TEMP TABLE t (n int)")
    conn.execute("INSERT INTO t SELECT generate_series(1, 30)")
    total = 0
    for i in range(1, 31):
        total += len(conn.execute("SELECT n FROM t WHERE n <= %s", (i,)).fetchall())
    with conn.pipeline():
        cursors = [conn.execute("SELECT n FROM t WHERE n <= %s", (i,)) for i in range(1, 21)]
    total += sum(len(c.fetchall()) for c in cursors)
    print(total, conn.info.pgconn.ssl_in_use)
"#,
        &[("URL", &url)],
    );
    assert_eq!(out.trim(), "675 True", "{out}");
    let port = pg.port().to_string();
    let select_t = [
        ("server_port", port.as_str()),
        ("db_operation_name", "SELECT"),
        ("db_collection_name", "t"),
    ];
    wait_for_metric(&agent, DB_CLIENT, &select_t, 50.0, WAIT).unwrap();
    wait_for_metric(&agent, DB_SERVER, &select_t, 50.0, WAIT).unwrap();
    let select_ssl = [
        ("server_port", port.as_str()),
        ("db_operation_name", "SELECT"),
        ("db_collection_name", "pg_stat_ssl"),
    ];
    wait_for_metric(&agent, DB_CLIENT, &select_ssl, 4.0, WAIT).unwrap();
    wait_for_metric(&agent, DB_SERVER, &select_ssl, 4.0, WAIT).unwrap();
    let m = agent.metrics();
    for side in ["db_client", "db_server"] {
        let rows = m.sum(&format!("{side}_response_returned_rows_sum"), &select_t);
        assert_eq!(rows, 675.0, "{side}: {}", m.text());
    }
    assert_eq!(
        m.sum(
            DB_CLIENT,
            &[("server_port", &port), ("db_namespace", "postgres")]
        ),
        m.sum(DB_CLIENT, &[("server_port", &port)]),
        "{}",
        m.text()
    );
}

#[test]
fn a_private_libssl_loaded_late_is_found_and_probed() {
    let certs = TempDir::new("tls-certs").unwrap();
    let nginx = https_nginx(&certs);
    // A copy of the node's libssl (another inode, as a container's would be), loaded by a
    // process that starts after the agent and imports `ssl` only later.
    let lib = TempDir::new("tls-lib").unwrap();
    let system = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/lib/x86_64-linux-gnu/libssl.so.3",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libssl.so.3 is installed");
    std::fs::copy(system, lib.path().join("libssl.so.3")).unwrap();
    let agent = Agent::start(&[]).unwrap();
    let lib_dir = lib.path().display().to_string();
    let out = python(
        r#"
import os, time
time.sleep(1)
import ssl, urllib.request
assert any(os.environ["LIB"] in l for l in open("/proc/self/maps")), "not the private copy"
time.sleep(7)  # the agent scans every 5 s
ctx = ssl._create_unverified_context()
for _ in range(9):
    urllib.request.urlopen(os.environ["URL"], context=ctx).read()
print("done")
"#,
        &[
            ("URL", &https(&nginx, "/ok")),
            ("LD_LIBRARY_PATH", &lib_dir),
            ("LIB", &lib_dir),
        ],
    );
    assert_eq!(out.trim(), "done");
    let port = nginx.port().to_string();
    let client = [("server_port", port.as_str()), ("http_route", "/ok")];
    wait_for_metric(&agent, HTTP_CLIENT, &client, 9.0, WAIT).unwrap();
    let log = agent.log();
    assert!(
        log.contains("probing SSL_read/SSL_write in /proc/")
            && log.contains(&format!("{lib_dir}/libssl.so.3")),
        "{log}"
    );
}

const STATIC_CLIENT: &str = include_str!("tls/static_client.c");

/// A program with OpenSSL linked in statically maps no libssl: its first TLS connection names
/// it to the agent, which finds `SSL_read`/`SSL_write` in its own symbol table.
#[test]
fn an_executable_with_openssl_linked_in_is_probed_at_its_first_tls_connection() {
    let certs = TempDir::new("tls-certs").unwrap();
    let nginx = https_nginx(&certs);
    let build = TempDir::new("tls-static").unwrap();
    let source = build.path().join("static_client.c");
    std::fs::write(&source, STATIC_CLIENT).unwrap();
    let exe = build.path().join("static_client");
    let out = Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&exe)
        .arg(&source)
        .args([
            "-Wl,-Bstatic",
            "-lssl",
            "-lcrypto",
            "-Wl,-Bdynamic",
            "-lpthread",
            "-ldl",
        ])
        .output()
        .expect("gcc (cargo xtask setup installs it and libssl-dev)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = Agent::start(&[]).unwrap();
    let n = 6;
    let out = Command::new(&exe)
        .args([nginx.port().to_string(), n.to_string(), "3".to_owned()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    let port = nginx.port().to_string();
    let client = [("server_port", port.as_str()), ("http_route", "/ok")];
    wait_for_metric(&agent, HTTP_CLIENT, &client, n as f64, WAIT).unwrap();
    wait_for_metric(&agent, HTTP_SERVER, &client, n as f64, WAIT).unwrap();
    let log = agent.log();
    assert!(
        log.contains("tls: probing SSL_read/SSL_write in /proc/") && log.contains("/exe ("),
        "{log}"
    );
}

const KAFKA_TLS_PROXY: &str = include_str!("tls/kafka_tls_proxy.py");

/// Kafka over SSL: librdkafka's mock cluster has no SSL listener, so a TLS-terminating proxy
/// (`tls/kafka_tls_proxy.py`, Python `ssl`) fronts it and advertises itself. confluent-kafka
/// produces through it (its wheel's librdkafka carries OpenSSL linked in, found when its first
/// TLS connection names the process), kafka-python consumes (Python `ssl`, the node's
/// libssl). Both the clients' plaintext and the proxy's are decoded: exact message counts on
/// both ends of the TLS hop.
#[test]
fn kafka_over_ssl_is_counted_exactly_from_librdkafka_and_kafka_python() {
    let kafka = harness::MockKafka::start();
    let certs = TempDir::new("tls-certs").unwrap();
    let (cert, key) = harness::tls::self_signed(certs.path()).unwrap();
    let script = certs.path().join("proxy.py");
    std::fs::write(&script, KAFKA_TLS_PROXY).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(&script)
        .arg(kafka.port().to_string())
        .arg(&cert)
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut proxy = harness::ChildProcess::spawn("kafka-tls-proxy", &mut cmd).unwrap();
    let stdout = proxy.take_stdout().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let port: u16 = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
    let bootstrap = format!("127.0.0.1:{port}");
    let agent = Agent::start(&[]).unwrap();
    // librdkafka: a warm-up message names the process (see the first test of this file),
    // then 7 messages, each flushed on its own.
    let out = python(
        r#"
import os, time
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": os.environ["BOOTSTRAP"], "security.protocol": "ssl",
              "enable.ssl.certificate.verification": False, "linger.ms": 0})
p.produce("warmup", b"w", partition=0); p.flush(10)
time.sleep(3)
for i in range(7):
    p.produce("payments", b"payment %d" % i, partition=0)
    assert p.flush(10) == 0
print("sent")
"#,
        &[("BOOTSTRAP", &bootstrap)],
    );
    assert_eq!(out.trim(), "sent");
    let out = python(
        r#"
import os, ssl
from kafka import KafkaConsumer, TopicPartition
ctx = ssl._create_unverified_context()
c = KafkaConsumer(bootstrap_servers=os.environ["BOOTSTRAP"], security_protocol="SSL",
                  ssl_context=ctx, api_version=(2, 0, 0), enable_auto_commit=False,
                  consumer_timeout_ms=5000)
tp = TopicPartition("payments", 0)
c.assign([tp])
c.seek_to_beginning(tp)
n = 0
for m in c:
    n += 1
    if n == 7:
        break
c.close()
print(n)
"#,
        &[("BOOTSTRAP", &bootstrap)],
    );
    assert_eq!(out.trim(), "7");
    let port = port.to_string();
    let payments = [
        ("server_port", port.as_str()),
        ("messaging_system", "kafka"),
        ("messaging_destination_name", "payments"),
    ];
    for (name, n) in [
        ("messaging_client_sent_messages_total", 7.0),
        ("messaging_server_received_messages_total", 7.0),
        ("messaging_client_consumed_messages_total", 7.0),
        ("messaging_server_delivered_messages_total", 7.0),
    ] {
        wait_for_metric(&agent, name, &payments, n, WAIT).unwrap();
    }
}

/// A server process, killed however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` as a server on 127.0.0.1:`port` and waits until it accepts.
fn serve(command: &mut Command, port: u16) -> Killed {
    let server = Killed(command.spawn().unwrap());
    let up = harness::wait_until(WAIT, Duration::from_millis(50), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "the server listens on {port}");
    server
}

/// An HTTPS server on Python `asyncio` (TLS on memory BIOs: the event loop reads and writes
/// the socket itself, `SSL_read`/`SSL_write` do no I/O), answering `/ok…` with 200 and
/// anything else with 404, keep-alive.
const ASYNCIO_SERVER: &str = r#"
import asyncio, ssl, sys
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)

async def handle(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1]
            status = b"200 OK" if path.startswith(b"/ok") else b"404 Not Found"
            body = b"hello\n"
            w.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    w.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

/// An `asyncio` HTTPS client: two keep-alive connections at once on the event loop's one
/// thread (eight `/ok`, six `/users/<n>`), then five connections of one `/missing` each.
const ASYNCIO_CLIENT: &str = r#"
import asyncio, os, ssl
port = int(os.environ["PORT"])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

async def connection(paths):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    for path in paths:
        w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await w.drain()
        head = (await r.readuntil(b"\r\n\r\n")).lower()
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        await r.readexactly(length)
    w.close()
    await w.wait_closed()

async def main():
    await asyncio.gather(
        connection(["/ok"] * 8),
        connection([f"/users/{n}" for n in range(1, 7)]),
    )
    for _ in range(5):
        await connection(["/missing"])

asyncio.run(main())
"#;

/// TLS on memory BIOs (Python `asyncio`; Node.js and others work alike): the plaintext's
/// socket is the one the thread reads just before `SSL_read`, or writes just after
/// `SSL_write`. Exact on both ends, with the asyncio end as client (against nginx) and as
/// server (curl against it), and nothing left unattributed.
#[test]
fn tls_on_memory_bios_from_asyncio_is_counted_exactly_on_both_ends() {
    let certs = TempDir::new("tls-certs").unwrap();
    let nginx = https_nginx(&certs);
    let (cert, key) = harness::tls::self_signed(certs.path()).unwrap();
    let port = harness::free_port();
    let _server = serve(
        Command::new("python3")
            .args(["-c", ASYNCIO_SERVER, &port.to_string()])
            .arg(&cert)
            .arg(&key)
            .stdout(std::process::Stdio::null()),
        port,
    );
    let agent = Agent::start(&[]).unwrap();

    python(ASYNCIO_CLIENT, &[("PORT", &nginx.port().to_string())]);
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    for _ in 0..6 {
        curl(&["-k", "-o", "/dev/null", &url("/ok")]).unwrap();
    }
    for _ in 0..3 {
        curl(&["-k", "-o", "/dev/null", &url("/nope")]).unwrap();
    }
    let keep_alive: Vec<String> = (0..4).map(|i| url(&format!("/ok/{i}"))).collect();
    let mut args = vec!["-k"];
    for u in &keep_alive {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    curl(&args).unwrap();

    // asyncio as client, nginx as server.
    let nginx_port = nginx.port().to_string();
    let expected = [
        ("/ok", "200", 8.0),
        ("/users/{id}", "200", 6.0),
        ("/missing", "404", 5.0),
    ];
    for (route, status, n) in expected {
        let l = labels(&nginx_port, route, status);
        wait_for_metric(&agent, HTTP_SERVER, &l, n, WAIT).unwrap();
        wait_for_metric(&agent, HTTP_CLIENT, &l, n, WAIT).unwrap();
    }
    // curl as client, asyncio as server.
    let port = port.to_string();
    for side in [HTTP_SERVER, HTTP_CLIENT] {
        let ok = [
            ("server_port", port.as_str()),
            ("http_response_status_code", "200"),
        ];
        wait_for_metric(&agent, side, &ok, 10.0, WAIT).unwrap();
        let missing = [
            ("server_port", port.as_str()),
            ("http_response_status_code", "404"),
        ];
        wait_for_metric(&agent, side, &missing, 3.0, WAIT).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    let m = agent.metrics();
    for (p, n) in [(nginx_port.as_str(), 19.0), (port.as_str(), 13.0)] {
        for side in [HTTP_SERVER, HTTP_CLIENT] {
            assert_eq!(
                m.sum(side, &[("server_port", p)]),
                n,
                "{side} {p}\n{}",
                m.text()
            );
        }
    }
    assert!(m
        .matching(HTTP_SERVER, &[("server_port", port.as_str())])
        .all(|s| s.labels["service_name"].starts_with("python3")));
    let lost = |reason| m.sum("periscope_kernel_events_lost_total", &[("reason", reason)]);
    assert_eq!(lost("tls_unattributed"), 0.0, "{}", m.text());
    assert_eq!(
        m.sum("periscope_exchanges_inexact_total", &[]),
        0.0,
        "{}",
        m.text()
    );
    assert_eq!(m.sum("periscope_parse_errors_total", &[]), 0.0);
}

/// Node.js HTTPS (OpenSSL linked into the `node` executable, or the shared `libssl`, by
/// distribution; its TLS runs on memory BIOs either way) as server, with curl as client, and
/// as keep-alive client against nginx. The first TLS connection makes the agent probe
/// `node`; what follows is exact on both ends.
#[test]
fn node_https_server_and_client_are_counted_exactly_once_probed() {
    let certs = TempDir::new("tls-certs").unwrap();
    let nginx = https_nginx(&certs);
    let (cert, key) = harness::tls::self_signed(certs.path()).unwrap();
    let port = harness::free_port();
    let server_js = format!(
        "const https = require('https'); const fs = require('fs');\n\
         https.createServer({{key: fs.readFileSync('{}'), cert: fs.readFileSync('{}')}},\n\
           (req, res) => {{ res.writeHead(req.url.startsWith('/ok') ? 200 : 404,\n\
             {{'Content-Length': 6}}); res.end('hello\\n'); }}).listen({port}, '127.0.0.1');\n",
        key.display(),
        cert.display()
    );
    let _server = serve(Command::new("node").args(["-e", &server_js]), port);
    let agent = Agent::start(&[]).unwrap();
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    // Warm-up: TLS without plaintext from node makes the agent look at its files (a node
    // with OpenSSL linked in); until node's plaintext shows up on the server side.
    let port_s = port.to_string();
    let warm = [("server_port", port_s.as_str()), ("http_route", "/warm")];
    let probed = harness::wait_until(WAIT, Duration::from_millis(200), || {
        curl(&["-k", "-o", "/dev/null", &url("/warm")]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        agent.metrics().sum(HTTP_SERVER, &warm) >= 1.0
    });
    assert!(
        probed,
        "node's plaintext decoded\n{}",
        agent.metrics().text()
    );
    let ok = [("server_port", port_s.as_str()), ("http_route", "/ok")];
    let before = agent.metrics();
    let (server0, client0) = (before.sum(HTTP_SERVER, &ok), before.sum(HTTP_CLIENT, &ok));
    for _ in 0..8 {
        curl(&["-k", "-o", "/dev/null", &url("/ok")]).unwrap();
    }
    let client_js = format!(
        "const https = require('https');\n\
         const agent = new https.Agent({{keepAlive: true, maxSockets: 1}});\n\
         let n = 0;\n\
         function one() {{\n\
           if (n++ >= 12) {{ agent.destroy(); return; }}\n\
           https.get({{host: '127.0.0.1', port: {}, path: '/users/' + n,\n\
             rejectUnauthorized: false, agent}}, res => {{ res.resume(); res.on('end', one); }});\n\
         }}\n\
         one();\n",
        nginx.port()
    );
    harness::output_ok(Command::new("node").args(["-e", &client_js])).unwrap();
    wait_for_metric(&agent, HTTP_SERVER, &ok, server0 + 8.0, WAIT).unwrap();
    wait_for_metric(&agent, HTTP_CLIENT, &ok, client0 + 8.0, WAIT).unwrap();
    let nginx_port = nginx.port().to_string();
    let users = labels(&nginx_port, "/users/{id}", "200");
    wait_for_metric(&agent, HTTP_SERVER, &users, 12.0, WAIT).unwrap();
    wait_for_metric(&agent, HTTP_CLIENT, &users, 12.0, WAIT).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let m = agent.metrics();
    assert_eq!(m.sum(HTTP_SERVER, &ok), server0 + 8.0, "{}", m.text());
    assert_eq!(m.sum(HTTP_CLIENT, &ok), client0 + 8.0, "{}", m.text());
    assert_eq!(m.sum(HTTP_CLIENT, &users), 12.0, "{}", m.text());
    assert!(m
        .matching(HTTP_CLIENT, &[("server_port", nginx_port.as_str())])
        .all(|s| s.labels["service_name"] == "node"));
    let lost = m.sum(
        "periscope_kernel_events_lost_total",
        &[("reason", "tls_unattributed")],
    );
    assert_eq!(lost, 0.0, "{}", m.text());
}
