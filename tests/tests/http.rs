//! End-to-end: real servers and clients on loopback, the real agent with its kernel programs,
//! exact counts against what the clients sent. Run as root, one test at a time
//! (`cargo xtask test` does both).

use std::time::Duration;

use harness::{
    curl, promtool_check_metrics, tcp_raw, wait_for_metric, wrk, Agent, Nginx, PyServer,
};

const SERVER: &str = "http_server_request_duration_seconds_count";
const CLIENT: &str = "http_client_request_duration_seconds_count";
const WAIT: Duration = Duration::from_secs(10);

fn nginx() -> Nginx {
    Nginx::start(
        r#"
        location /ok { return 200 "ok\n"; }
        location /missing { return 404; }
        location /broken { return 500; }
        location /users/ { return 200 "user\n"; }
        "#,
    )
}

fn labels<'a>(port: &'a str, route: &'a str, status: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("server_port", port),
        ("http_route", route),
        ("http_response_status_code", status),
    ]
}

/// Waits until both roles saw exactly `n` exchanges for the route and status.
fn expect_both(agent: &Agent, port: u16, route: &str, status: &str, n: f64) {
    let port = port.to_string();
    let l = labels(&port, route, status);
    wait_for_metric(agent, SERVER, &l, n, WAIT).unwrap();
    wait_for_metric(agent, CLIENT, &l, n, WAIT).unwrap();
}

#[test]
fn curl_against_nginx_counts_every_request_once_per_role_and_status() {
    let nginx = nginx();
    let agent = Agent::start(&[]).unwrap();
    let port = nginx.port();
    // Separate curl processes, each a new connection; and one keep-alive curl for several.
    for _ in 0..7 {
        curl(&["-o", "/dev/null", &nginx.url("/ok")]).unwrap();
    }
    for _ in 0..3 {
        curl(&["-o", "/dev/null", &nginx.url("/missing")]).unwrap();
    }
    let urls: Vec<String> = (1..=5)
        .map(|i| nginx.url(&format!("/broken?try={i}")))
        .collect();
    let mut args = vec!["-o", "/dev/null"];
    for url in &urls {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args).unwrap();
    let ids: Vec<String> = (1..=4)
        .map(|i| nginx.url(&format!("/users/{}", 1000 + i)))
        .collect();
    for url in &ids {
        curl(&["-o", "/dev/null", url]).unwrap();
    }

    expect_both(&agent, port, "/ok", "200", 7.0);
    expect_both(&agent, port, "/missing", "404", 3.0);
    expect_both(&agent, port, "/broken", "500", 5.0);
    expect_both(&agent, port, "/users/{id}", "200", 4.0);
    let m = agent.metrics();
    let port_s = port.to_string();
    // Nothing else was counted on that port, and no label carries a query string.
    assert_eq!(m.sum(SERVER, &[("server_port", &port_s)]), 19.0);
    assert_eq!(m.sum(CLIENT, &[("server_port", &port_s)]), 19.0);
    assert!(
        !m.text().contains("try="),
        "a query string leaked into a label"
    );
    let on_port = [("server_port", port_s.as_str())];
    assert!(m
        .matching(SERVER, &on_port)
        .all(|s| s.labels["service_name"] == "nginx" && s.labels["http_request_method"] == "GET"));
    assert!(m
        .matching(CLIENT, &on_port)
        .all(|s| s.labels["service_name"] == "curl" && s.labels["server_address"] == "127.0.0.1"));
}

#[test]
fn wrk_keep_alive_load_is_counted_exactly() {
    let nginx = nginx();
    let agent = Agent::start(&[]).unwrap();
    let result = wrk(&nginx.url("/ok"), 1, 8, Duration::from_secs(3));
    assert!(
        result.requests > 1000,
        "wrk made only {} requests",
        result.requests
    );
    let port = nginx.port().to_string();
    let l = labels(&port, "/ok", "200");
    // wrk counts the responses it read: so does the client side, exactly.
    wait_for_metric(&agent, CLIENT, &l, result.requests as f64, WAIT).unwrap();
    // nginx may also have answered the few requests wrk abandoned when it stopped (at most
    // one per connection), which wrk never read.
    let server = agent.metrics().sum(SERVER, &l);
    assert!(
        server >= result.requests as f64 && server <= result.requests as f64 + 8.0,
        "server saw {server}, wrk completed {}",
        result.requests
    );
    let m = agent.metrics();
    assert_eq!(m.sum("periscope_kernel_events_lost_total", &[]), 0.0);
}

#[test]
fn latency_is_true_within_a_stated_tolerance() {
    let py = PyServer::http_test_server();
    let agent = Agent::start(&[]).unwrap();
    let n = 5;
    for _ in 0..n {
        curl(&[
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{}/sleep/50", py.port()),
        ])
        .unwrap();
    }
    let port = py.port().to_string();
    let l = labels(&port, "/sleep/{id}", "200");
    wait_for_metric(&agent, SERVER, &l, n as f64, WAIT).unwrap();
    wait_for_metric(&agent, CLIENT, &l, n as f64, WAIT).unwrap();
    let m = agent.metrics();
    for name in [
        "http_server_request_duration_seconds",
        "http_client_request_duration_seconds",
    ] {
        let sum = m.sum(&format!("{name}_sum"), &l);
        let mean = sum / n as f64;
        // The server sleeps 50 ms; Python adds well under 10 ms.
        assert!(
            (0.050..0.060).contains(&mean),
            "{name}: mean {mean:.4} s is not 50 ms + <10 ms"
        );
        // Every observation lands in the (0.05, 0.075] bucket.
        let le_50 = m.sum(
            &format!("{name}_bucket"),
            &[l[0], l[1], l[2], ("le", "0.05")],
        );
        let le_75 = m.sum(
            &format!("{name}_bucket"),
            &[l[0], l[1], l[2], ("le", "0.075")],
        );
        assert_eq!((le_50, le_75), (0.0, n as f64), "{name} buckets");
    }
    // The client's view includes the server's, on the same clock.
    let server = m.sum("http_server_request_duration_seconds_sum", &l);
    let client = m.sum("http_client_request_duration_seconds_sum", &l);
    assert!(client >= server, "client {client} < server {server}");
}

#[test]
fn pipelined_requests_on_one_socket_are_paired_in_order() {
    let nginx = nginx();
    let agent = Agent::start(&[]).unwrap();
    let mut batch = Vec::new();
    // nginx closes the connection after a 500, so the error comes last.
    let paths = ["/ok", "/missing", "/ok", "/ok", "/missing", "/ok"];
    for path in paths {
        batch.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    batch.extend_from_slice(b"GET /broken HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let reply = tcp_raw(nginx.port(), &batch, Duration::from_secs(5));
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 7, "{reply}");
    // One write carried all seven requests: both roles must still pair them one by one.
    expect_both(&agent, nginx.port(), "/ok", "200", 4.0);
    expect_both(&agent, nginx.port(), "/missing", "404", 2.0);
    expect_both(&agent, nginx.port(), "/broken", "500", 1.0);
}

/// With the kernel framing HTTP (bodies skipped by length) and with prefix capture (what
/// connections found open and kernels without `bpf_loop` get).
#[test]
fn chunked_split_and_oversized_messages_are_counted_once() {
    for framing in ["--framing=true", "--framing=false"] {
        chunked_split_and_oversized(framing);
    }
}

fn chunked_split_and_oversized(framing: &str) {
    let py = PyServer::http_test_server();
    // A small capture limit makes the big request and response exceed it.
    let agent = Agent::start(&["--capture-bytes", "512", framing]).unwrap();
    let base = format!("http://127.0.0.1:{}", py.port());
    for _ in 0..3 {
        // 20 chunks, each its own write(2).
        let body = curl(&[&format!("{base}/chunked/20")]).unwrap();
        assert!(!body.is_empty());
    }
    // A 200 kB response: many writes, almost all of it beyond the capture limit.
    curl(&["-o", "/dev/null", &format!("{base}/big/200000")]).unwrap();
    // A 100 kB request body, far beyond the capture limit.
    let body = "x".repeat(100_000);
    let echoed = curl(&["--data-binary", &body, &format!("{base}/upload")]).unwrap();
    assert!(echoed.contains("100000"), "{echoed}");
    // HEAD: headers say a body would follow, none does.
    curl(&["-I", &format!("{base}/big/5000")]).unwrap();

    let port = py.port();
    expect_both(&agent, port, "/chunked/{id}", "200", 3.0);
    expect_both(&agent, port, "/big/{id}", "200", 2.0);
    expect_both(&agent, port, "/upload", "200", 1.0);
    let m = agent.metrics();
    let port_s = port.to_string();
    let up = [("server_port", port_s.as_str()), ("http_route", "/upload")];
    assert_eq!(
        m.sum("http_server_request_body_size_bytes_sum", &up),
        100_000.0
    );
    let head = [
        ("server_port", port_s.as_str()),
        ("http_request_method", "HEAD"),
    ];
    assert_eq!(m.sum(SERVER, &head), 1.0);
    assert_eq!(
        m.sum("http_server_response_body_size_bytes_sum", &head),
        0.0
    );
    if framing == "--framing=false" {
        assert!(m.sum("periscope_truncated_captures_total", &[]) > 0.0);
    }
    assert_eq!(
        m.sum("periscope_parse_errors_total", &[]),
        0.0,
        "{}",
        m.text()
    );
}

#[test]
fn exposition_passes_promtool() {
    let nginx = nginx();
    let agent = Agent::start(&[]).unwrap();
    curl(&["-o", "/dev/null", &nginx.url("/ok")]).unwrap();
    expect_both(&agent, nginx.port(), "/ok", "200", 1.0);
    promtool_check_metrics(agent.metrics().text()).unwrap();
}

/// The agent describes itself: `target_info` with its `service_name` (`OTEL_SERVICE_NAME`),
/// version, host and `OTEL_RESOURCE_ATTRIBUTES`; `periscope_build_info`; and the workloads keep
/// their own service names.
/// `--exclude-executables` and `--exclude-ports`: nginx (excluded by name) is not watched,
/// in the kernel: its first connection reveals it and is muted, and the 19 after it are never
/// tracked, so nothing of them is copied. A server on an excluded port is muted per
/// connection, on both ends. curl, which is watched, still counts every request to nginx.
#[test]
fn excluded_processes_and_ports_are_not_watched() {
    let nginx = nginx();
    let other = PyServer::http_test_server();
    let agent = Agent::start(&[
        "--exclude-executables",
        "nginx",
        "--exclude-ports",
        &other.port().to_string(),
    ])
    .unwrap();
    let excluded = [("reason", "excluded")];
    curl(&["-o", "/dev/null", &nginx.url("/ok")]).unwrap();
    wait_for_metric(
        &agent,
        "periscope_connections_muted_total",
        &excluded,
        1.0,
        WAIT,
    )
    .unwrap();
    for _ in 0..19 {
        curl(&["-o", "/dev/null", &nginx.url("/ok")]).unwrap();
    }
    for _ in 0..5 {
        curl(&["-o", "/dev/null", &other.url("/status/200")]).unwrap();
    }
    let port = nginx.port().to_string();
    wait_for_metric(&agent, CLIENT, &labels(&port, "/ok", "200"), 20.0, WAIT).unwrap();
    // The 5 connections to the excluded port, each muted at both ends.
    wait_for_metric(
        &agent,
        "periscope_connections_muted_total",
        &excluded,
        11.0,
        WAIT,
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let m = agent.metrics();
    assert_eq!(
        m.sum("periscope_connections_muted_total", &excluded),
        11.0,
        "nginx's later connections were tracked: {}",
        m.text()
    );
    assert_eq!(
        m.sum(SERVER, &[("server_port", &port)]),
        0.0,
        "{}",
        m.text()
    );
    let other_port = other.port().to_string();
    let to_other = [("server_port", other_port.as_str())];
    assert_eq!(m.sum(SERVER, &to_other) + m.sum(CLIENT, &to_other), 0.0);
}

/// A process that names itself (`OTEL_SERVICE_NAME` in its environment, as its own SDK would
/// read it) is that service: a Python server started with it. Another (curl) keeps its
/// executable's name.
#[test]
fn a_process_named_by_its_environment_is_that_service() {
    let port = harness::free_port();
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .env("OTEL_SERVICE_NAME", "edge-files")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let _server = harness::ChildProcess::spawn("python3 -m http.server", &mut cmd).unwrap();
    assert!(harness::wait_for_port(port, Duration::from_secs(15)));
    let agent = Agent::start(&[]).unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    for _ in 0..3 {
        curl(&["-o", "/dev/null", &url]).unwrap();
    }
    let port = port.to_string();
    let named = [
        ("server_port", port.as_str()),
        ("service_name", "edge-files"),
    ];
    wait_for_metric(&agent, SERVER, &named, 3.0, WAIT).unwrap();
    let plain = [("server_port", port.as_str()), ("service_name", "curl")];
    wait_for_metric(&agent, CLIENT, &plain, 3.0, WAIT).unwrap();
}

/// `--include-ports`: only connections to that server port are watched.
#[test]
fn an_include_list_of_ports_watches_only_those() {
    let nginx = nginx();
    let other = PyServer::http_test_server();
    let port = nginx.port().to_string();
    let agent = Agent::start(&["--include-ports", &port]).unwrap();
    for _ in 0..4 {
        curl(&["-o", "/dev/null", &nginx.url("/ok")]).unwrap();
        curl(&["-o", "/dev/null", &other.url("/status/200")]).unwrap();
    }
    expect_both(&agent, nginx.port(), "/ok", "200", 4.0);
    let m = agent.metrics();
    let other_port = other.port().to_string();
    let to_other = [("server_port", other_port.as_str())];
    assert_eq!(m.sum(SERVER, &to_other) + m.sum(CLIENT, &to_other), 0.0);
    assert_eq!(m.sum(SERVER, &[]), 4.0, "{}", m.text());
}

#[test]
fn the_agent_describes_itself_in_target_info() {
    let nginx = nginx();
    let agent = Agent::start_with(harness::AgentOptions {
        env: vec![
            ("OTEL_SERVICE_NAME".into(), "edge-agent".into()),
            (
                "OTEL_RESOURCE_ATTRIBUTES".into(),
                "k8s.cluster.name=ci".into(),
            ),
        ],
        ..harness::AgentOptions::default()
    })
    .unwrap();
    curl(&["-o", "/dev/null", &nginx.url("/ok")]).unwrap();
    expect_both(&agent, nginx.port(), "/ok", "200", 1.0);
    let m = agent.metrics();
    let info = m.samples("target_info");
    assert_eq!(info.len(), 1, "{}", m.text());
    assert_eq!(info[0].labels["service_name"], "edge-agent");
    assert_eq!(info[0].labels["k8s_cluster_name"], "ci");
    assert!(!info[0].labels["service_version"].is_empty());
    assert_eq!(info[0].value, 1.0);
    assert_eq!(m.sum("periscope_build_info", &[]), 1.0, "{}", m.text());
    for s in m.samples(SERVER) {
        assert_ne!(s.labels["service_name"], "edge-agent", "{}", m.text());
    }
    promtool_check_metrics(m.text()).unwrap();
}

#[test]
fn both_hook_mechanisms_give_identical_counts() {
    let nginx = nginx();
    let mut seen = Vec::new();
    for mode in ["btf", "raw"] {
        // With syscall statistics too, whose exit side runs in the framing exit program: the
        // largest variant the verifier sees (the harness fails an agent that then fell back
        // to prefix capture).
        let agent = Agent::start(&["--syscall-hooks", mode, "--syscalls", "default"]).unwrap();
        let m = agent.metrics();
        let info = m.samples("periscope_hooks_info");
        let expected = if mode == "btf" {
            "tp_btf"
        } else {
            "raw_tracepoint"
        };
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].labels["syscall_hooks"], expected);
        for _ in 0..4 {
            curl(&["-o", "/dev/null", &nginx.url("/ok")]).unwrap();
        }
        curl(&["-o", "/dev/null", &nginx.url("/missing")]).unwrap();
        expect_both(&agent, nginx.port(), "/ok", "200", 4.0);
        expect_both(&agent, nginx.port(), "/missing", "404", 1.0);
        let m = agent.metrics();
        let port = nginx.port().to_string();
        seen.push((
            m.sum(SERVER, &[("server_port", &port)]),
            m.sum(CLIENT, &[("server_port", &port)]),
        ));
    }
    assert_eq!(seen[0], seen[1]);
}

#[test]
fn connections_open_before_start_up_are_decoded() {
    let nginx = nginx();
    // A keep-alive client (python) that connects first, then waits for the agent.
    let script = r#"
import socket, sys, time
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port))
def get(path):
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"ok\n"):
        data += s.recv(4096)
get("/ok")
print("connected", flush=True)
while not __import__("os").path.exists(__import__("os").environ["PERISCOPE_GO"]):
    time.sleep(0.05)
for _ in range(3):
    get("/ok")
print("done", flush=True)
time.sleep(30)
"#;
    let (agent, _client) = harness::start_agent_mid_client(
        std::process::Command::new("python3")
            .args(["-c", script])
            .arg(nginx.port().to_string()),
        &[],
    )
    .unwrap();
    // Only the three requests made after start-up, on the adopted connection, both ends.
    expect_both(&agent, nginx.port(), "/ok", "200", 3.0);
    let m = agent.metrics();
    assert!(m.sum("periscope_connections_opened_total", &[("reason", "proc")]) >= 2.0);
}

#[test]
fn garbage_and_unknown_protocols_are_counted_not_fatal() {
    let nginx = nginx();
    let agent = Agent::start(&[]).unwrap();
    // Not HTTP at all (nor a TLS record): the connection is muted after its first bytes.
    let _ = tcp_raw(
        nginx.port(),
        &[0xff, 0xfe, 0x01, 0x00, 0xff, 0, 1, 2],
        Duration::from_secs(2),
    );
    // HTTP-looking, then binary junk in the header block.
    let mut junk = b"GET /ok HTTP/1.1\r\nHost: x\r\n".to_vec();
    junk.extend((0..200u8).map(|i| i.wrapping_mul(37)));
    junk.extend_from_slice(b"\r\n\r\n");
    let _ = tcp_raw(nginx.port(), &junk, Duration::from_secs(2));
    harness::wait_until(WAIT, Duration::from_millis(100), || {
        let m = agent.metrics();
        m.sum(
            "periscope_connections_muted_total",
            &[("reason", "unknown_protocol")],
        ) >= 2.0
            && m.sum("periscope_parse_errors_total", &[("protocol", "http1")]) >= 1.0
    });
    let m = agent.metrics();
    assert!(
        m.sum(
            "periscope_connections_muted_total",
            &[("reason", "unknown_protocol")]
        ) >= 2.0,
        "{}",
        m.text()
    );
    assert!(m.sum("periscope_parse_errors_total", &[("protocol", "http1")]) >= 1.0);
    // The agent still works afterwards.
    curl(&["-o", "/dev/null", &nginx.url("/ok")]).unwrap();
    expect_both(&agent, nginx.port(), "/ok", "200", 1.0);
}

/// Ids of loaded kernel programs named like Periscope's (`bpftool prog show`: `ID: TYPE  name
/// NAME  ...`).
fn periscope_programs() -> std::collections::BTreeSet<u32> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool");
    let names = [
        "sys_exit_btf",
        "sys_exit_raw",
        "sys_enter_stats_btf",
        "sys_enter_stats_raw",
        "sys_exit_stats_btf",
        "sys_exit_stats_raw",
        "fexit_read",
        "fexit_write",
        "sys_enter_close",
        "task_newtask",
        "process_exit",
        "ssl_read_enter",
        "ssl_write_enter",
        "ssl_return",
    ];
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (id, rest) = line.split_once(':')?;
            let name = rest
                .split_whitespace()
                .skip_while(|w| *w != "name")
                .nth(1)?;
            names.contains(&name).then(|| id.trim().parse().ok())?
        })
        .collect()
}

/// Waits until none of `ids` is loaded any more (the kernel frees programs after an RCU grace
/// period), and says which remain otherwise.
fn assert_unloaded(ids: &std::collections::BTreeSet<u32>) {
    harness::wait_until(WAIT, Duration::from_millis(100), || {
        periscope_programs().is_disjoint(ids)
    });
    let left: Vec<u32> = periscope_programs().intersection(ids).copied().collect();
    assert!(
        left.is_empty(),
        "programs {left:?} of a stopped agent are still loaded"
    );
}

#[test]
fn stopping_detaches_everything_and_a_second_start_works() {
    let before = periscope_programs();
    let mut agent = Agent::start(&[]).unwrap();
    let ours: std::collections::BTreeSet<u32> =
        periscope_programs().difference(&before).copied().collect();
    assert!(!ours.is_empty(), "the agent loaded no programs");
    let status = agent.stop().unwrap();
    assert!(status.success(), "{status}\n{}", agent.log());
    assert_unloaded(&ours);
    // SIGKILL too: the kernel detaches what the dead process held.
    let before = periscope_programs();
    let agent = Agent::start(&[]).unwrap();
    let ours: std::collections::BTreeSet<u32> =
        periscope_programs().difference(&before).copied().collect();
    assert!(!ours.is_empty());
    // SAFETY: signalling a child we started.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
    assert_unloaded(&ours);
    drop(agent);
    let again = Agent::start(&[]).unwrap();
    assert!(again.metrics().sum("periscope_hooks_info", &[]) == 1.0);
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(harness::agent_binary())
        .args(["--metrics-addr", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-addr") && err.contains("already in use"),
        "{err}"
    );
}

#[test]
fn bad_flags_name_the_setting() {
    let out = std::process::Command::new(harness::agent_binary())
        .args(["--capture-bytes", "100000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--capture-bytes"));
}

/// A configuration file applies below flags: HTTP switched off by the file is not decoded,
/// while the harness's `--metrics-addr` flag wins over the file's; `--print-config` says where
/// each value came from; a bad value stops start-up naming the key.
#[test]
fn a_configuration_file_applies_below_flags() {
    let nginx = nginx();
    let dir = harness::TempDir::new("config").unwrap();
    let file = dir.path().join("periscope.yaml");
    std::fs::write(
        &file,
        "protocols: [postgres]\nmetrics-addr: 127.0.0.1:1\nflows: false\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let agent = Agent::start(&["--config", path]).unwrap();
    for _ in 0..3 {
        curl(&["-o", "/dev/null", &nginx.url("/ok")]).unwrap();
    }
    assert!(harness::wait_until(
        WAIT,
        Duration::from_millis(100),
        || {
            agent.metrics().sum(
                "periscope_connections_muted_total",
                &[("reason", "unknown_protocol")],
            ) >= 3.0
        }
    ));
    let m = agent.metrics();
    assert_eq!(m.sum(SERVER, &[]), 0.0, "{}", m.text());
    assert_eq!(m.sum("network_tcp_connections_opened_total", &[]), 0.0);

    let out = std::process::Command::new(harness::agent_binary())
        .args([
            "--config",
            path,
            "--metrics-addr=127.0.0.1:2",
            "--print-config",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    for line in [
        "protocols: \"postgres\"  # file",
        "metrics-addr: \"127.0.0.1:2\"  # flag",
        "capture-bytes: \"4096\"  # default",
    ] {
        assert!(printed.contains(line), "{line}\n{printed}");
    }

    std::fs::write(&file, "capture-bytes: 100000\n").unwrap();
    let out = std::process::Command::new(harness::agent_binary())
        .args(["--config", path])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(path) && err.contains("key `capture-bytes`: bad value \"100000\""),
        "{err}"
    );
}

#[test]
fn without_privileges_the_missing_capability_is_named() {
    use std::os::unix::process::CommandExt;
    let port = harness::free_port();
    let out = std::process::Command::new(harness::agent_binary())
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing capability CAP_BPF"), "{err}");
}

#[test]
fn accept_then_fork_servers_are_seen_from_the_child() {
    // Python's ForkingHTTPServer accepts in the parent and serves from a forked child, like
    // PostgreSQL's postmaster does.
    let py = PyServer::start(
        r#"
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ForkingMixIn
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = b"forked\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(ForkingMixIn, HTTPServer): pass
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#,
    );
    let agent = Agent::start(&[]).unwrap();
    for _ in 0..4 {
        curl(&[
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{}/f", py.port()),
        ])
        .unwrap();
    }
    let port = py.port().to_string();
    let l = labels(&port, "/f", "200");
    wait_for_metric(&agent, SERVER, &l, 4.0, WAIT).unwrap();
    wait_for_metric(&agent, CLIENT, &l, 4.0, WAIT).unwrap();
    let m = agent.metrics();
    assert_eq!(
        m.sum("periscope_connections_opened_total", &[("reason", "fork")]),
        4.0
    );
}

#[test]
fn auto_picks_the_cheapest_hooks_the_kernel_allows() {
    // fexit where BPF trampolines are allowed; this development VM refuses them (EPERM), and
    // the agent must then say so and fall back to BTF tracepoints.
    let fexit = Agent::start(&["--syscall-hooks", "fexit"]);
    let auto = Agent::start(&[]).unwrap();
    let info = auto.metrics().samples("periscope_hooks_info");
    let chosen = info[0].labels["syscall_hooks"].clone();
    match fexit {
        Ok(agent) => {
            drop(agent);
            assert_eq!(chosen, "fexit");
        }
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains("--syscall-hooks fexit"), "{e}");
            assert_eq!(chosen, "tp_btf");
        }
    }
}

#[test]
fn a_stalled_scraper_does_not_hold_capture_up() {
    use std::io::Write;
    let nginx = nginx();
    let agent = Agent::start(&["--bpf-stats"]).unwrap();
    // A scraper that connects, sends half a request and never reads: the agent must keep
    // capturing and keep serving other scrapers.
    let mut stalled = std::net::TcpStream::connect(agent.addr()).unwrap();
    stalled.write_all(b"GET /metr").unwrap();
    for _ in 0..20 {
        curl(&["-o", "/dev/null", &nginx.url("/ok")]).unwrap();
    }
    expect_both(&agent, nginx.port(), "/ok", "200", 20.0);
    // With --bpf-stats the kernel programs' own cost is exported.
    harness::wait_until(WAIT, Duration::from_millis(200), || {
        agent.metrics().sum("periscope_bpf_program_runs_total", &[]) > 0.0
    });
    let m = agent.metrics();
    assert!(
        m.sum("periscope_bpf_program_runs_total", &[]) > 0.0,
        "{}",
        m.text()
    );
    assert!(m.sum("periscope_bpf_program_run_time_seconds_total", &[]) > 0.0);
    drop(stalled);
}

#[test]
fn series_beyond_the_cap_are_dropped_and_counted() {
    let nginx = nginx();
    let agent = Agent::start(&["--max-series", "5"]).unwrap();
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra",
        "tango",
    ];
    for word in words {
        curl(&["-o", "/dev/null", &nginx.url(&format!("/users/{word}"))]).unwrap();
    }
    let port = nginx.port().to_string();
    // Five routes get series; the other fifteen requests are dropped and counted.
    wait_for_metric(
        &agent,
        "periscope_series_dropped_total",
        &[("metric", "http_server_request_duration_seconds")],
        15.0,
        WAIT,
    )
    .unwrap();
    let m = agent.metrics();
    assert_eq!(m.samples(SERVER).len(), 5, "{}", m.text());
    assert_eq!(m.sum(SERVER, &[("server_port", &port)]), 5.0);
}

/// A series that sees no request for `--series-ttl` is removed (and counted), and comes back
/// from zero with the next request; a series in use is kept.
#[test]
fn idle_series_expire_and_come_back_from_zero() {
    let nginx = nginx();
    let agent = Agent::start(&["--series-ttl", "3s"]).unwrap();
    let port = nginx.port().to_string();
    let (busy, quiet) = (nginx.url("/users/busy"), nginx.url("/users/quiet"));
    for _ in 0..3 {
        curl(&["-o", "/dev/null", &quiet]).unwrap();
    }
    let quiet_route = [
        ("server_port", port.as_str()),
        ("http_route", "/users/quiet"),
    ];
    wait_for_metric(&agent, SERVER, &quiet_route, 3.0, WAIT).unwrap();
    // The busy route gets a request every half second; the quiet one none.
    let started = std::time::Instant::now();
    let mut busy_requests = 0;
    let expired = loop {
        curl(&["-o", "/dev/null", &busy]).unwrap();
        busy_requests += 1;
        let m = agent.metrics();
        let routes = m.samples(SERVER);
        if routes
            .iter()
            .all(|s| s.labels.get("http_route").map(String::as_str) != Some("/users/quiet"))
        {
            break m;
        }
        assert!(
            started.elapsed() < WAIT,
            "the quiet series stayed:\n{}",
            m.text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "removed before the ttl"
    );
    // The busy series was kept: every request of it is counted.
    let busy_route = [
        ("server_port", port.as_str()),
        ("http_route", "/users/busy"),
    ];
    wait_for_metric(&agent, SERVER, &busy_route, f64::from(busy_requests), WAIT).unwrap();
    // curl's client series of the quiet route went too.
    assert!(
        expired.sum("periscope_series_expired_total", &[]) >= 2.0,
        "{}",
        expired.text()
    );
    curl(&["-o", "/dev/null", &quiet]).unwrap();
    wait_for_metric(&agent, SERVER, &quiet_route, 1.0, WAIT).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        agent.metrics().sum(SERVER, &quiet_route),
        1.0,
        "counted from zero"
    );
}

#[test]
fn connected_udp_sockets_are_not_taken_for_connections_nor_is_their_descriptor_later() {
    let nginx = nginx();
    let agent = Agent::start(&[]).unwrap();
    // A UDP "server" that answers every datagram with an HTTP response, a UDP client that
    // `connect`s to it and sends HTTP requests with `write`/`read` (the syscalls a TCP client
    // uses). Then a second UDP socket is closed with `close_range` (no `close(2)` for the
    // kernel's close hook to see) and a TCP socket takes its descriptor number: that socket's
    // requests must be counted.
    let script = r#"
import ctypes, os, socket, sys
nginx = int(sys.argv[1])
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.bind(("127.0.0.1", 0))
udp_port = srv.getsockname()[1]
cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
cli.connect(("127.0.0.1", udp_port))
for _ in range(3):
    os.write(cli.fileno(), b"GET /udp HTTP/1.1\r\nHost: x\r\n\r\n")
    _, peer = srv.recvfrom(4096)
    srv.sendto(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", peer)
    assert os.read(cli.fileno(), 4096).endswith(b"ok\n")
stale = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fd = stale.fileno()
libc = ctypes.CDLL(None, use_errno=True)
SYS_close_range = 436  # the same number on x86_64 and arm64
assert libc.syscall(SYS_close_range, fd, fd, 0) == 0, ctypes.get_errno()
stale.detach()
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
assert tcp.fileno() == fd, (tcp.fileno(), fd)
tcp.connect(("127.0.0.1", nginx))
for _ in range(2):
    tcp.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"ok\n"):
        data += tcp.recv(4096)
print(udp_port, flush=True)
"#;
    let out = harness::output_ok(
        std::process::Command::new("python3")
            .args(["-c", script])
            .arg(nginx.port().to_string()),
    )
    .unwrap();
    let udp_port = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // The TCP socket on the reused descriptor: its two requests, as client (and nginx's end).
    expect_both(&agent, nginx.port(), "/ok", "200", 2.0);
    // By then the UDP exchanges, made before, were read too: none is an HTTP request.
    let m = agent.metrics();
    for metric in [SERVER, CLIENT] {
        assert_eq!(
            m.sum(metric, &[("server_port", udp_port.as_str())]),
            0.0,
            "{}",
            m.text()
        );
    }
}
