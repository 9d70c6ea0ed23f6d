//! End-to-end: TCP flows between two network namespaces joined by a veth pair, with exact
//! counts against what the test's own clients and servers did (bytes each way, connections,
//! refusals, timeouts, resets) and against the kernel's own per-namespace retransmit counter.
//! Run as root, one test at a time (`cargo xtask test` does both).

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, ChildStdout, Stdio};
use std::time::Duration;

use harness::{free_port, wait_for_metric, Agent, ChildProcess, NetnsPair, TempDir};

const WAIT: Duration = Duration::from_secs(15);
const BYTES: &str = "network_io_bytes_total";
const OPENED: &str = "network_tcp_connections_opened_total";
const CLOSED: &str = "network_tcp_connections_closed_total";
const OPEN_NOW: &str = "network_tcp_connections_established";
const FAILURES: &str = "network_tcp_connect_failures_total";
const RETRANSMITS: &str = "network_tcp_retransmits_total";
const RTT_COUNT: &str = "network_tcp_rtt_seconds_count";

/// The test's peers: one script, one mode per role. Every mode prints a line when it reached
/// the point the test waits for, so the test never sleeps on a guess.
const PEER: &str = r#"
import socket, struct, sys

def read_exactly(s, n):
    got = 0
    while got < n:
        d = s.recv(min(65536, n - got))
        if not d:
            raise SystemExit(f"EOF after {got} of {n} bytes")
        got += len(d)

mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
args = [int(a) for a in sys.argv[4:]]
if mode == "server":  # conns, bytes in, bytes out per connection; out < 0: reset after reading
    conns, n_in, n_out = args[:3]
    close_first = len(args) > 3 and args[3] == 1
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(64)
    print("ready", flush=True)
    for _ in range(conns):
        c, _ = srv.accept()
        read_exactly(c, n_in)
        if n_out < 0:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            continue
        c.sendall(b"s" * n_out)
        if not close_first:
            while c.recv(65536):
                pass
        c.close()
    print("done", flush=True)
elif mode == "client":  # conns, bytes out, bytes in; waits for a stdin line after connecting
    conns, n_out, n_in, wait = args
    for _ in range(conns):
        s = socket.create_connection((host, port), timeout=60)
        if wait:
            print("connected", flush=True)
            sys.stdin.readline()
        s.sendall(b"c" * n_out)
        read_exactly(s, n_in)
        if wait:
            print("exchanged", flush=True)
            sys.stdin.readline()
        s.close()
    print("done", flush=True)
elif mode == "fail":  # attempts; prints the error of each
    for _ in range(args[0]):
        s = socket.socket()
        try:
            s.connect((host, port))
            print("connected", flush=True)
        except OSError as e:
            print(type(e).__name__, flush=True)
        s.close()
elif mode == "udpserver":  # datagrams; answers each with len // 2 + 3 bytes
    srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind((host, port))
    print("ready", flush=True)
    for _ in range(args[0]):
        d, peer = srv.recvfrom(65536)
        srv.sendto(b"u" * (len(d) // 2 + 3), peer)
    print("done", flush=True)
elif mode == "udpclient":  # one datagram of each size, each waiting for its answer
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(10)
    for n in args:
        s.sendto(b"c" * n, (host, port))
        d, _ = s.recvfrom(65536)
        if len(d) != n // 2 + 3:
            raise SystemExit(f"answer of {len(d)} bytes to {n}")
    print("done", flush=True)
elif mode == "reset":  # bytes out, then wait for the peer's reset
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(b"c" * args[0])
    try:
        print("read", len(s.recv(1)), flush=True)
    except ConnectionResetError:
        print("ConnectionResetError", flush=True)
"#;

/// A peer script running in a namespace, with line-by-line access to its stdout.
struct Peer {
    process: ChildProcess,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(dir: &TempDir, ns: &str, mode: &str, host: &str, port: u16, args: &[i64]) -> Peer {
        let script = dir.path().join("peer.py");
        std::fs::write(&script, PEER).expect("writing the peer script");
        let mut argv = vec![
            script.display().to_string(),
            mode.to_owned(),
            host.to_owned(),
            port.to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = NetnsPair::command(ns, "python3", &argv);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut process = ChildProcess::spawn(&format!("peer {mode}"), &mut cmd).expect("python3");
        let stdout = BufReader::new(process.take_stdout().expect("piped stdout"));
        let stdin = process.take_stdin();
        Peer {
            process,
            stdin,
            stdout,
        }
    }

    /// The next line the peer printed (panics at EOF).
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).expect("reading the peer");
        assert!(n > 0, "{} exited early", self.process.name());
        line.trim().to_owned()
    }

    fn expect(&mut self, want: &str) {
        let got = self.line();
        assert_eq!(got, want, "{} said {got:?}", self.process.name());
    }

    fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"go\n").expect("writing to the peer");
        stdin.flush().expect("flushing");
    }
}

fn client(port: &str, peer: &str) -> Vec<(&'static str, String)> {
    vec![
        ("connection_role", "client".to_owned()),
        ("server_port", port.to_owned()),
        ("peer_address", peer.to_owned()),
        ("network_transport", "tcp".to_owned()),
    ]
}

fn server(port: &str, peer: &str) -> Vec<(&'static str, String)> {
    let mut labels = client(port, peer);
    labels[0].1 = "server".to_owned();
    labels
}

fn with<'a>(
    labels: &'a [(&'static str, String)],
    extra: &[(&'static str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra.iter().copied())
        .collect()
}

fn expect(agent: &Agent, metric: &str, labels: &[(&str, &str)], value: f64) {
    wait_for_metric(agent, metric, labels, value, WAIT).unwrap();
}

/// A server peer in the server namespace and, once it listens, a client peer (`mode`) in the
/// client namespace, both on `port`.
fn start_pair(
    dir: &TempDir,
    net: &NetnsPair,
    port: u16,
    server_args: &[i64],
    mode: &str,
    client_args: &[i64],
) -> (Peer, Peer) {
    let mut srv = Peer::start(
        dir,
        &net.server_ns,
        "server",
        &net.server_ip,
        port,
        server_args,
    );
    srv.expect("ready");
    let cli = Peer::start(dir, &net.client_ns, mode, &net.server_ip, port, client_args);
    (srv, cli)
}

/// The client sent `up` bytes and received `down`; the server saw the same from its side.
fn expect_bytes(
    agent: &Agent,
    client: &[(&'static str, String)],
    server: &[(&'static str, String)],
    up: f64,
    down: f64,
) {
    for (labels, direction, value) in [
        (client, "transmit", up),
        (client, "receive", down),
        (server, "receive", up),
        (server, "transmit", down),
    ] {
        expect(
            agent,
            BYTES,
            &with(labels, &[("network_io_direction", direction)]),
            value,
        );
    }
}

#[test]
fn bytes_connections_and_rtt_match_exactly_per_direction_and_peer() {
    let agent = Agent::start(&[]).unwrap();
    let net = NetnsPair::new().unwrap();
    let dir = TempDir::new("flows").unwrap();
    let port = free_port();
    let (conns, up, down) = (7, 12_345, 54_321);
    let (mut srv, mut cli) = start_pair(
        &dir,
        &net,
        port,
        &[conns, up, down],
        "client",
        &[conns, up, down, 0],
    );
    cli.expect("done");
    srv.expect("done");

    let port = port.to_string();
    let c = client(&port, &net.server_ip);
    let s = server(&port, &net.client_ip);
    let (conns, up, down) = (conns as f64, up as f64, down as f64);
    expect_bytes(&agent, &c, &s, conns * up, conns * down);
    for labels in [&c, &s] {
        expect(&agent, OPENED, &with(labels, &[]), conns);
        expect(&agent, CLOSED, &with(labels, &[]), conns);
        expect(&agent, OPEN_NOW, &with(labels, &[]), 0.0);
        expect(&agent, RTT_COUNT, &with(labels, &[]), conns);
        expect(&agent, FAILURES, &with(labels, &[]), 0.0);
    }
    // Both ends are python3: the owner is the process, not whoever the softirq interrupted.
    let m = agent.metrics();
    for sample in m
        .matching(OPENED, &with(&c, &[]))
        .chain(m.matching(OPENED, &with(&s, &[])))
    {
        assert!(
            sample
                .labels
                .get("service_name")
                .is_some_and(|n| n.starts_with("python3")),
            "{sample:?}"
        );
    }
}

#[test]
fn bytes_are_exact_when_the_server_closes_first() {
    // The other teardown order: the server's FIN goes first (HTTP/1.0 style), so the client
    // passes through CLOSE_WAIT and LAST_ACK and the server through FIN_WAIT1/FIN_WAIT2.
    let agent = Agent::start(&[]).unwrap();
    let net = NetnsPair::new().unwrap();
    let dir = TempDir::new("flows").unwrap();
    let port = free_port();
    let (conns, up, down) = (5, 777, 99_999);
    let (mut srv, mut cli) = start_pair(
        &dir,
        &net,
        port,
        &[conns, up, down, 1],
        "client",
        &[conns, up, down, 0],
    );
    cli.expect("done");
    srv.expect("done");
    let port = port.to_string();
    let c = client(&port, &net.server_ip);
    let s = server(&port, &net.client_ip);
    let (conns, up, down) = (conns as f64, up as f64, down as f64);
    expect(&agent, CLOSED, &with(&c, &[]), conns);
    expect(&agent, CLOSED, &with(&s, &[]), conns);
    expect_bytes(&agent, &c, &s, conns * up, conns * down);
}

#[test]
fn long_lived_connections_report_bytes_before_they_close() {
    let agent = Agent::start(&[]).unwrap();
    let net = NetnsPair::new().unwrap();
    let dir = TempDir::new("flows").unwrap();
    let port = free_port();
    let (up, down) = (100_000, 3_000);
    let (mut srv, mut cli) = start_pair(
        &dir,
        &net,
        port,
        &[1, up, down],
        "client",
        &[1, up, down, 1],
    );
    cli.expect("connected");
    let port_s = port.to_string();
    let c = client(&port_s, &net.server_ip);
    expect(&agent, OPEN_NOW, &with(&c, &[]), 1.0);
    cli.go();
    cli.expect("exchanged");
    // Still open: the counts come from the RTT callbacks, not from the close.
    expect(
        &agent,
        BYTES,
        &with(&c, &[("network_io_direction", "transmit")]),
        up as f64,
    );
    expect(
        &agent,
        BYTES,
        &with(&c, &[("network_io_direction", "receive")]),
        down as f64,
    );
    expect(&agent, CLOSED, &with(&c, &[]), 0.0);
    cli.go();
    cli.expect("done");
    srv.expect("done");
    expect(&agent, CLOSED, &with(&c, &[]), 1.0);
    expect(&agent, OPEN_NOW, &with(&c, &[]), 0.0);
    expect(
        &agent,
        BYTES,
        &with(&c, &[("network_io_direction", "transmit")]),
        up as f64,
    );
}

#[test]
fn refused_timed_out_and_reset_connections_are_told_apart() {
    let agent = Agent::start(&[]).unwrap();
    let net = NetnsPair::new().unwrap();
    let dir = TempDir::new("flows").unwrap();

    // Nothing listens: every SYN is answered by a reset.
    let closed_port = free_port();
    let mut refused = Peer::start(
        &dir,
        &net.client_ns,
        "fail",
        &net.server_ip,
        closed_port,
        &[5],
    );
    for _ in 0..5 {
        refused.expect("ConnectionRefusedError");
    }

    // SYNs dropped, one SYN retry: the connect times out after ~3 s.
    let silent_port = free_port();
    NetnsPair::exec(
        &net.client_ns,
        "sysctl",
        &["-qw", "net.ipv4.tcp_syn_retries=1"],
    )
    .unwrap();
    let silent = silent_port.to_string();
    NetnsPair::exec(
        &net.server_ns,
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", &silent, "-j", "DROP"],
    )
    .unwrap();
    let retrans_before = NetnsPair::retrans_segs(&net.client_ns).unwrap();
    let mut timeout = Peer::start(
        &dir,
        &net.client_ns,
        "fail",
        &net.server_ip,
        silent_port,
        &[1],
    );
    timeout.expect("TimeoutError");
    let syn_retries = NetnsPair::retrans_segs(&net.client_ns).unwrap() - retrans_before;

    // Established, then reset by the server.
    let reset_port = free_port();
    let (mut srv, mut cli) = start_pair(&dir, &net, reset_port, &[1, 10, -1], "reset", &[10]);
    cli.expect("ConnectionResetError");
    srv.expect("done");

    let check = |port: u16, kind: &str, n: f64| {
        let labels = client(&port.to_string(), &net.server_ip);
        expect(&agent, FAILURES, &with(&labels, &[("error_type", kind)]), n);
    };
    check(closed_port, "refused", 5.0);
    check(closed_port, "timeout", 0.0);
    check(silent_port, "timeout", 1.0);
    check(silent_port, "refused", 0.0);
    check(reset_port, "reset", 1.0);
    let silent_labels = client(&silent, &net.server_ip);
    assert!(syn_retries > 0, "the SYN was never retransmitted");
    expect(
        &agent,
        RETRANSMITS,
        &with(&silent_labels, &[]),
        syn_retries as f64,
    );
    // Failed connects never opened; the reset one did, and closed.
    let closed_labels = client(&closed_port.to_string(), &net.server_ip);
    expect(&agent, OPENED, &with(&closed_labels, &[]), 0.0);
    let reset_labels = client(&reset_port.to_string(), &net.server_ip);
    expect(&agent, OPENED, &with(&reset_labels, &[]), 1.0);
    expect(&agent, CLOSED, &with(&reset_labels, &[]), 1.0);
    expect(&agent, OPEN_NOW, &with(&reset_labels, &[]), 0.0);
    // The server aborted its own connection: closed, but no reset received.
    let server_labels = server(&reset_port.to_string(), &net.client_ip);
    expect(&agent, CLOSED, &with(&server_labels, &[]), 1.0);
    expect(&agent, FAILURES, &with(&server_labels, &[]), 0.0);
}

#[test]
fn dropped_packets_are_counted_as_retransmits() {
    let agent = Agent::start(&[]).unwrap();
    let net = NetnsPair::new().unwrap();
    let dir = TempDir::new("flows").unwrap();
    let port = free_port();
    let up = 200_000;
    let (mut srv, mut cli) = start_pair(&dir, &net, port, &[1, up, 10], "client", &[1, up, 10, 1]);
    cli.expect("connected");
    let before = NetnsPair::retrans_segs(&net.client_ns).unwrap();
    let port_s = port.to_string();
    let rule = [
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        port_s.as_str(),
        "-j",
        "DROP",
    ];
    let add: Vec<&str> = std::iter::once("-A").chain(rule).collect();
    let del: Vec<&str> = std::iter::once("-D").chain(rule).collect();
    NetnsPair::exec(&net.server_ns, "iptables", &add).unwrap();
    cli.go();
    // A few retransmission timeouts (200 ms, 400 ms, 800 ms...) pass before the path heals.
    std::thread::sleep(Duration::from_millis(1500));
    NetnsPair::exec(&net.server_ns, "iptables", &del).unwrap();
    cli.expect("exchanged");
    cli.go();
    cli.expect("done");
    srv.expect("done");
    let retransmitted = NetnsPair::retrans_segs(&net.client_ns).unwrap() - before;
    assert!(retransmitted > 0, "nothing was retransmitted");
    let c = client(&port_s, &net.server_ip);
    expect(&agent, RETRANSMITS, &with(&c, &[]), retransmitted as f64);
    // Retransmitted bytes are not counted twice.
    expect(
        &agent,
        BYTES,
        &with(&c, &[("network_io_direction", "transmit")]),
        up as f64,
    );
    let s = server(&port_s, &net.client_ip);
    expect(
        &agent,
        BYTES,
        &with(&s, &[("network_io_direction", "receive")]),
        up as f64,
    );
}

#[test]
fn flows_can_be_turned_off_and_their_series_are_capped() {
    let net = NetnsPair::new().unwrap();
    let dir = TempDir::new("flows").unwrap();
    let run = |args: &[&str]| {
        let agent = Agent::start(args).unwrap();
        let port = free_port();
        let (mut srv, mut cli) =
            start_pair(&dir, &net, port, &[3, 10, 10], "client", &[3, 10, 10, 0]);
        cli.expect("done");
        srv.expect("done");
        (agent, port)
    };

    let (agent, port) = run(&["--flows=false"]);
    // Give a running poller time to have exported (it would within a second).
    std::thread::sleep(Duration::from_secs(2));
    let m = agent.metrics();
    assert!(
        m.samples(OPENED).is_empty(),
        "flows were off, yet: {:?}",
        m.samples(OPENED)
    );
    let _ = port;
    drop(agent);

    // One series allowed: the first flow exported takes it, every other flow is dropped.
    let (agent, port) = run(&["--flows-max-series=1"]);
    let c = client(&port.to_string(), &net.server_ip);
    let s = server(&port.to_string(), &net.client_ip);
    harness::wait_until(WAIT, Duration::from_millis(200), || {
        agent.metrics().sum(
            "periscope_series_dropped_total",
            &[("metric", "network_tcp_flow")],
        ) > 0.0
    });
    let m = agent.metrics();
    let mut series = std::collections::HashSet::new();
    for sample in m.samples(OPENED) {
        let mut labels: Vec<_> = sample.labels.iter().collect();
        labels.sort();
        series.insert(format!("{labels:?}"));
    }
    assert!(series.len() <= 1, "more than one flow series: {series:?}");
    assert!(
        m.sum(
            "periscope_series_dropped_total",
            &[("metric", "network_tcp_flow")]
        ) > 0.0,
        "no drop counted"
    );
    // Our two flows cannot both be there.
    let both = m.sum(OPENED, &with(&c, &[])) > 0.0 && m.sum(OPENED, &with(&s, &[])) > 0.0;
    assert!(!both);
}

/// Flow series that saw nothing for `--series-ttl` go (every series of their label set), and
/// free their place under `--flows-max-series`. The cap is three: the test's own scrapes of
/// the agent are one flow that never idles, the first client/server pair the other two; the
/// second pair is exported only if the first pair's places were freed.
#[test]
fn idle_flow_series_expire_and_free_their_place_under_the_cap() {
    let net = NetnsPair::new().unwrap();
    let dir = TempDir::new("flows").unwrap();
    let agent = Agent::start(&["--flows-max-series=3", "--series-ttl=3s"]).unwrap();
    let exchange = |port: u16| {
        let (mut srv, mut cli) =
            start_pair(&dir, &net, port, &[3, 10, 10], "client", &[3, 10, 10, 0]);
        cli.expect("done");
        srv.expect("done");
    };
    let ours = |port: u16| {
        let port = port.to_string();
        agent
            .metrics()
            .samples(OPENED)
            .into_iter()
            .filter(|s| s.labels.get("server_port") == Some(&port))
            .count()
    };
    // Flows other tests left behind on this machine take places too until they idle out:
    // wait for every series but the scrapes' to go before the first pair.
    let others_gone = harness::wait_until(WAIT, Duration::from_millis(200), || {
        agent.metrics().samples(OPENED).len() <= 1
    });
    assert!(others_gone, "{:?}", agent.metrics().samples(OPENED));
    let first = free_port();
    exchange(first);
    assert!(
        harness::wait_until(WAIT, Duration::from_millis(200), || ours(first) == 2),
        "the first pair's flows were not exported: {:?}",
        agent.metrics().samples(OPENED)
    );
    // Idle for the TTL: gone, and counted.
    assert!(
        harness::wait_until(WAIT, Duration::from_millis(200), || ours(first) == 0),
        "the idle flow series stayed"
    );
    assert!(agent.metrics().sum("periscope_series_expired_total", &[]) > 0.0);
    // Their places under the cap are free again.
    let second = free_port();
    exchange(second);
    assert!(
        harness::wait_until(WAIT, Duration::from_millis(200), || ours(second) == 2),
        "the second pair was not admitted after the expiry: {:?}",
        agent.metrics().samples(OPENED)
    );
}

#[test]
fn connections_accepted_by_a_listener_older_than_the_agent_are_attributed() {
    let net = NetnsPair::new().unwrap();
    let dir = TempDir::new("flows").unwrap();
    let port = free_port();
    let mut srv = Peer::start(
        &dir,
        &net.server_ns,
        "server",
        &net.server_ip,
        port,
        &[2, 10, 20],
    );
    srv.expect("ready");
    // The listener exists before the agent: no sock_create program saw it.
    let agent = Agent::start(&[]).unwrap();
    let mut cli = Peer::start(
        &dir,
        &net.client_ns,
        "client",
        &net.server_ip,
        port,
        &[2, 10, 20, 0],
    );
    cli.expect("done");
    srv.expect("done");
    let s = server(&port.to_string(), &net.client_ip);
    expect(&agent, OPENED, &with(&s, &[]), 2.0);
    expect(
        &agent,
        BYTES,
        &with(&s, &[("network_io_direction", "receive")]),
        20.0,
    );
    let m = agent.metrics();
    let names: Vec<_> = m
        .matching(OPENED, &with(&s, &[]))
        .filter_map(|sample| sample.labels.get("service_name").cloned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with("python3"),
        "the listener's owner was lost: {names:?}"
    );
}

/// UDP sizes: empty, small, one full 1500-byte frame, and datagrams the 1500-byte veth MTU
/// fragments (the hooks see them whole: before fragmentation, after reassembly).
const UDP_SIZES: [i64; 6] = [0, 1, 100, 1472, 4000, 30_000];

/// Runs one UDP exchange of `UDP_SIZES` from `client_ns` to a server on `host` in
/// `server_ns`; returns the server port.
fn udp_exchange(dir: &TempDir, client_ns: &str, server_ns: &str, host: &str) -> u16 {
    let port = free_port();
    let mut srv = Peer::start(
        dir,
        server_ns,
        "udpserver",
        host,
        port,
        &[UDP_SIZES.len() as i64],
    );
    srv.expect("ready");
    let mut cli = Peer::start(dir, client_ns, "udpclient", host, port, &UDP_SIZES);
    cli.expect("done");
    srv.expect("done");
    port
}

#[test]
fn udp_payload_bytes_match_exactly_per_direction_and_peer() {
    let net = NetnsPair::new().unwrap();
    let dir = TempDir::new("flows").unwrap();

    // Off by default: no UDP series at all.
    let agent = Agent::start(&[]).unwrap();
    udp_exchange(&dir, &net.client_ns, &net.server_ns, &net.server_ip);
    std::thread::sleep(Duration::from_secs(2));
    let udp = agent.metrics().sum(BYTES, &[("network_transport", "udp")]);
    assert_eq!(udp, 0.0, "UDP bytes counted without --udp-flows");
    drop(agent);

    let agent = Agent::start(&["--udp-flows"]).unwrap();
    let port = udp_exchange(&dir, &net.client_ns, &net.server_ns, &net.server_ip).to_string();
    let sent: i64 = UDP_SIZES.iter().sum();
    let answered: i64 = UDP_SIZES.iter().map(|n| n / 2 + 3).sum();
    let (sent, answered) = (sent as f64, answered as f64);
    let mut c = client(&port, &net.server_ip);
    let mut s = server(&port, &net.client_ip);
    for labels in [&mut c, &mut s] {
        labels[3].1 = "udp".to_owned();
    }
    expect(
        &agent,
        BYTES,
        &with(&c, &[("network_io_direction", "transmit")]),
        sent,
    );
    expect(
        &agent,
        BYTES,
        &with(&c, &[("network_io_direction", "receive")]),
        answered,
    );
    expect(
        &agent,
        BYTES,
        &with(&s, &[("network_io_direction", "receive")]),
        sent,
    );
    expect(
        &agent,
        BYTES,
        &with(&s, &[("network_io_direction", "transmit")]),
        answered,
    );
    // Nothing else of ours: every UDP byte from or to our peers is in the four series above.
    let m = agent.metrics();
    for peer in [&net.client_ip, &net.server_ip] {
        let all = m.sum(
            BYTES,
            &[("network_transport", "udp"), ("peer_address", peer)],
        );
        assert_eq!(all, sent + answered, "UDP bytes with peer {peer}");
    }
    // Both ends are python3, named through the socket's creator.
    for sample in m
        .matching(BYTES, &with(&c, &[]))
        .chain(m.matching(BYTES, &with(&s, &[])))
    {
        assert!(
            sample
                .labels
                .get("service_name")
                .is_some_and(|n| n.starts_with("python3")),
            "{sample:?}"
        );
    }
}
