//! End-to-end: traffic crafted to hurt the agent, sent to real servers on loopback. Any pod on a
//! node can send such bytes, so each case that once hurt Periscope stays here as a regression
//! test: the agent must keep running and keep counting ordinary traffic exactly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::{wait_for_metric, Agent, PgServer};

const WAIT: Duration = Duration::from_secs(15);

/// One PostgreSQL frontend message: type byte, big-endian length (itself included), body.
fn pg_message(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads backend messages until `ReadyForQuery`; returns the types seen.
fn read_until_ready(stream: &mut TcpStream) -> Vec<u8> {
    let mut types = Vec::new();
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).expect("a backend message");
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        stream.read_exact(&mut body).expect("its body");
        types.push(header[0]);
        if header[0] == b'Z' {
            return types;
        }
    }
}

/// Opens a protocol-3 session as `postgres` (trust authentication).
fn pg_session(pg: &PgServer) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", pg.port())).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0postgres\0database\0postgres\0\0");
    let mut startup = (body.len() as u32 + 4).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    stream.write_all(&startup).unwrap();
    let types = read_until_ready(&mut stream);
    assert_eq!(types.first(), Some(&b'R'), "{types:?}");
    stream
}

/// Issue 15's crash: one Parse message holding ~54 KB of nested `COPY( COPY( …`, written in
/// 1 KiB pieces, overflowed the stack of the thread that summarised it and aborted the agent.
#[test]
fn nested_copy_statement_does_not_crash_the_agent() {
    let pg = PgServer::start();
    let mut agent = Agent::start(&[]).unwrap();
    let port = pg.port().to_string();

    let levels = 9_000;
    let sql = format!("{}{}", "COPY( ".repeat(levels), ")".repeat(levels));
    assert!(sql.len() > 54_000);
    let mut parse = b"\0".to_vec(); // unnamed statement
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(b"\0\0\0"); // end of text, no parameter types
                                        // Parse, Bind, Execute, Sync, as a driver sends a statement with parameters.
    let mut bytes = pg_message(b'P', &parse);
    bytes.extend(pg_message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    bytes.extend(pg_message(b'E', &[0, 0, 0, 0, 0]));
    bytes.extend(pg_message(b'S', &[]));
    let mut stream = pg_session(&pg);
    for piece in bytes.chunks(1024) {
        stream.write_all(piece).unwrap();
    }
    let types = read_until_ready(&mut stream);
    assert!(types.contains(&b'E'), "the server rejects it: {types:?}");
    drop(stream);

    // The statement is counted like any other failed one, from both ends, with the server's
    // SQLSTATE (42601 syntax error) and its operation.
    for name in [
        "db_client_operation_duration_seconds_count",
        "db_server_operation_duration_seconds_count",
    ] {
        wait_for_metric(
            &agent,
            name,
            &[
                ("server_port", &port),
                ("db_operation_name", "COPY"),
                ("error_type", "42601"),
            ],
            1.0,
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    }
    assert!(agent.is_running(), "{}", agent.log());

    // Ordinary traffic after it is still counted exactly.
    for _ in 0..3 {
        pg.psql(&["-c", "SELECT 1"]).unwrap();
    }
    wait_for_metric(
        &agent,
        "db_client_operation_duration_seconds_count",
        &[("server_port", &port), ("db_operation_name", "SELECT")],
        3.0,
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    assert!(agent.is_running(), "{}", agent.log());
}

/// Connections the agent mutes (an unknown protocol) that close at once: the mute and the
/// close land in the same drain, which once left an entry in the kernel's mute table per
/// connection until the table was full (and muted connections were copied again, uncounted).
/// The table must be empty once they are all gone.
#[test]
fn muted_connections_that_close_at_once_leave_no_kernel_entries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(300) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"SSH-2.0-not-a-protocol-Periscope-decodes\r\n");
        }
    });
    let agent = Agent::start(&[]).unwrap();
    for _ in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"SSH-2.0-OpenSSH_9.2 hello\r\n").unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
    }
    server.join().unwrap();
    // Every connection was muted (both ends), and is closed now.
    let muted = harness::wait_until(WAIT, Duration::from_millis(100), || {
        agent
            .metrics()
            .sum("periscope_connections_muted_total", &[])
            >= 300.0
    });
    assert!(muted, "{}", agent.metrics().text());
    // The table is counted every 10 s.
    std::thread::sleep(Duration::from_secs(11));
    wait_for_metric(
        &agent,
        "periscope_kernel_map_entries",
        &[("map", "MUTED")],
        0.0,
        WAIT,
    )
    .unwrap();
}

/// CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_PERFMON and CAP_BPF: what the agent keeps.
const KEPT_CAPABILITIES: u64 = (1 << 2) | (1 << 19) | (1 << 38) | (1 << 39);

/// After start-up every thread of the agent holds only the capabilities it still uses
/// (permitted, effective and bounding sets; `no_new_privs` set), and it still does its job
/// with them: a server started afterwards by another user (`nobody`, whose `/proc` entries
/// root may read only with the kept capabilities) is counted exactly and named.
#[test]
fn capabilities_are_dropped_in_every_thread_and_capture_still_works() {
    let agent = Agent::start(&[]).unwrap();
    let tasks = std::fs::read_dir(format!("/proc/{}/task", agent.pid())).unwrap();
    let mut threads = 0;
    let mut tls_discovery = 0;
    for task in tasks {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        // The TLS probe discovery thread alone also keeps CAP_SYS_ADMIN (uprobes need it).
        let kept = if status.lines().next() == Some("Name:\ttls-discovery") {
            tls_discovery += 1;
            KEPT_CAPABILITIES | 1 << 21
        } else {
            KEPT_CAPABILITIES
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in {status}"))
        };
        for set in ["CapPrm:", "CapEff:", "CapBnd:"] {
            assert_eq!(
                u64::from_str_radix(&field(set), 16).unwrap(),
                kept,
                "{set} of a thread: {status}"
            );
        }
        assert_eq!(field("CapInh:"), "0000000000000000");
        assert_eq!(field("NoNewPrivs:"), "1");
        threads += 1;
    }
    assert!(threads >= 3, "the runtime's threads too ({threads})");
    assert_eq!(tls_discovery, 1, "one TLS discovery thread");
    let port = harness::free_port();
    let dir = harness::TempDir::new("caps").unwrap();
    std::fs::write(dir.path().join("index.html"), "hello\n").unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let _server = harness::ChildProcess::spawn(
        "http.server as nobody",
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
            ])
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
    .unwrap();
    assert!(
        harness::wait_for_port(port, WAIT),
        "http.server did not listen"
    );
    let n = 6;
    for _ in 0..n {
        harness::curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/")]).unwrap();
    }
    let port = port.to_string();
    let labels = [
        ("server_port", port.as_str()),
        ("http_response_status_code", "200"),
    ];
    wait_for_metric(
        &agent,
        "http_server_request_duration_seconds_count",
        &labels,
        n as f64,
        WAIT,
    )
    .unwrap();
    let series = agent
        .metrics()
        .samples("http_server_request_duration_seconds_count");
    let ours: Vec<_> = series
        .iter()
        .filter(|s| s.labels.get("server_port").map(String::as_str) == Some(port.as_str()))
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    // `/proc/<pid>/exe` of another user's process needs CAP_SYS_PTRACE: without it the name
    // would fall back to `comm` (`python3`, not the executable's `python3.11`).
    let exe = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let exe = exe.file_name().unwrap().to_string_lossy();
    assert_eq!(
        ours[0].labels["service_name"], exe,
        "the server is named after its executable: {ours:?}"
    );
}

/// `curl` with `args`; returns (HTTP status, body). Status 0 when no HTTP answer came.
fn curl_status(args: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// `/metrics` over HTTPS with a bearer token, as kube-rbac-proxy setups scrape: the token is
/// required (401 without it or with a wrong one, with `WWW-Authenticate: Bearer`), the probes
/// stay open, and plain HTTP gets no answer.
#[test]
fn metrics_endpoint_serves_https_and_demands_the_bearer_token() {
    let dir = harness::TempDir::new("metrics-tls").unwrap();
    let (cert, key, token_file) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("token"),
    );
    harness::output_ok(
        std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=periscope"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )
    .unwrap();
    let token = "c2VjcmV0LXNjcmFwZS10b2tlbg";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let port = harness::free_port();
    let log = dir.path().join("agent.log");
    let _agent = harness::ChildProcess::spawn(
        "agent",
        std::process::Command::new(harness::agent_binary())
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-tls-cert")
            .arg(&cert)
            .arg("--metrics-tls-key")
            .arg(&key)
            .arg("--metrics-bearer-token-file")
            .arg(&token_file)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("agent.err")).unwrap()),
    )
    .unwrap();
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let cacert = cert.to_str().unwrap();
    let ready = harness::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        curl_status(&["--cacert", cacert, &url("/readyz")]).0 == 200
    });
    let stderr = || std::fs::read_to_string(dir.path().join("agent.err")).unwrap_or_default();
    assert!(ready, "not ready over HTTPS: {}", stderr());
    let bearer = format!("Authorization: Bearer {token}");
    let (status, body) = curl_status(&["--cacert", cacert, "-H", &bearer, &url("/metrics")]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("periscope_hooks_info"), "{body}");
    for args in [
        vec!["--cacert", cacert, url("/metrics").leak()],
        vec![
            "--cacert",
            cacert,
            "-H",
            "Authorization: Bearer c2VjcmV0LXNjcmFwZS10b2tlbh",
            url("/metrics").leak(),
        ],
    ] {
        let (status, body) = curl_status(&args);
        assert_eq!(status, 401, "{args:?}: {body}");
    }
    let headers = std::process::Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            cacert,
            &url("/metrics"),
        ])
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&headers.stdout);
    assert!(headers.contains("WWW-Authenticate: Bearer"), "{headers}");
    assert_eq!(curl_status(&["--cacert", cacert, &url("/healthz")]).0, 200);
    let (status, _) = curl_status(&[&format!("http://127.0.0.1:{port}/metrics")]);
    assert_eq!(status, 0, "plain HTTP must get no HTTP answer");
}

/// A client that makes one real request on a socket, then puts a file on that socket's
/// descriptor number (`dup2` over it, or `close_range` and a fresh `open`) and moves an
/// HTTP-looking request and response through the file: the agent must count the real request
/// and never take the file's bytes for the closed connection's.
const FD_REUSE_CLIENT: &str = r#"
import ctypes, os, socket, sys, tempfile

port, mode = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n")
got = b""
while b"\r\n\r\n" not in got:
    got += s.recv(4096)
assert got.startswith(b"HTTP/1.1 200"), got
head, _, body = got.partition(b"\r\n\r\n")
length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
while len(body) < length[0]:
    body += s.recv(4096)
fd = s.fileno()
req = f"GET /leak-{mode} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
path = tempfile.mktemp()
if mode == "dup2":
    f = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.dup2(f, fd)
else:
    # close_range(2) itself (glibc 2.34+), not Python's os.closerange (a loop of close).
    assert ctypes.CDLL(None, use_errno=True).close_range(fd, fd, 0) == 0
    f = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    assert f == fd, (f, fd)
os.pwrite(fd, resp, len(req))      # not a hooked syscall: sets the "response" up
os.write(fd, req)                  # egress on the reused descriptor
assert os.read(fd, 100) == resp    # ingress on it
os.unlink(path)
os._exit(0)                        # no close: nothing else tidies the descriptor up
"#;

#[test]
fn a_file_on_a_descriptor_reused_after_dup2_or_close_range_is_not_captured() {
    let server = harness::PyServer::http_test_server();
    let agent = Agent::start(&[]).unwrap();
    for mode in ["dup2", "close_range"] {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(FD_REUSE_CLIENT)
            .arg(server.port().to_string())
            .arg(mode)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = server.port().to_string();
    let labels = [("server_port", port.as_str())];
    wait_for_metric(
        &agent,
        "http_server_request_duration_seconds_count",
        &labels,
        2.0,
        WAIT,
    )
    .unwrap();
    wait_for_metric(
        &agent,
        "http_client_request_duration_seconds_count",
        &labels,
        2.0,
        WAIT,
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let m = agent.metrics();
    for name in [
        "http_server_request_duration_seconds_count",
        "http_client_request_duration_seconds_count",
    ] {
        let leaked: Vec<_> = m
            .samples(name)
            .into_iter()
            .filter(|s| {
                s.labels
                    .get("http_route")
                    .is_some_and(|r| r.contains("leak"))
            })
            .collect();
        assert!(leaked.is_empty(), "{name}: {leaked:?}");
        assert_eq!(m.sum(name, &labels), 2.0, "{name}");
    }
}

/// Many connections that each leave a request head unfinished make every decoder hold bytes:
/// together they stay under `--decoder-memory-budget` (the connections past it are muted and
/// counted), and an ordinary request alongside is still counted exactly.
#[test]
fn decoders_stay_within_the_memory_budget_under_many_unfinished_heads() {
    let server = harness::PyServer::http_test_server();
    let budget: u64 = 2 << 20;
    let agent = Agent::start(&["--decoder-memory-budget", &budget.to_string()]).unwrap();
    let mut head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    head.resize(12_000, b'a');
    let mut held = Vec::new();
    for _ in 0..400 {
        let mut s = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        s.write_all(&head).unwrap();
        held.push(s);
    }
    let muted = [("reason", "memory_budget")];
    let all_seen = harness::wait_until(WAIT, Duration::from_millis(200), || {
        agent
            .metrics()
            .sum("periscope_connections_opened_total", &[])
            >= 800.0
    });
    assert!(
        all_seen,
        "the agent did not see both ends of every connection"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let m = agent.metrics();
    let memory = m.sum("periscope_decoder_memory_bytes", &[]);
    assert!(
        memory <= budget as f64,
        "decoders hold {memory} B, budget {budget}"
    );
    // 400 × 12 kB ≈ 4.8 MB of heads: more than half of them had to go.
    assert!(m.sum("periscope_connections_muted_total", &muted) >= 150.0);
    let ok = harness::curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &server.url("/status/200"),
    ])
    .unwrap();
    assert_eq!(ok, "200");
    let port = server.port().to_string();
    let labels = [
        ("server_port", port.as_str()),
        ("http_response_status_code", "200"),
    ];
    wait_for_metric(
        &agent,
        "http_client_request_duration_seconds_count",
        &labels,
        1.0,
        WAIT,
    )
    .unwrap();
    drop(held);
}
