use super::*;
use agent_ebpf::{DIR_EGRESS, OPEN_PAYLOAD_LEN, ORIGIN_ACCEPT, ORIGIN_CONNECT};
use decoder::Protocols;

/// role, route, status, start, end, server port, service name
type Seen = (Role, String, u16, u64, u64, Option<u16>, String);

#[derive(Default)]
struct Recorded {
    exchanges: Vec<Seen>,
    opened: Vec<&'static str>,
    ended: Vec<EndReason>,
    muted: Vec<MuteReason>,
    parse_errors: Vec<&'static str>,
    /// Exchanges of other protocols, by their target (`SELECT users`, ...).
    targets: Vec<String>,
    inexact: Vec<&'static str>,
    /// Whether each exchange was TLS plaintext.
    tls: Vec<bool>,
    /// Each exchange's client end on this node.
    peer_conns: Vec<Option<u64>>,
}

impl Sink for Recorded {
    fn exchange(&mut self, e: &Exchange) {
        self.tls.push(e.endpoint.tls);
        self.peer_conns.push(e.endpoint.peer_conn);
        let Detail::Http(h) = &e.detail else {
            self.targets
                .push(format!("{} {}", e.operation(), e.target().unwrap_or("")));
            return;
        };
        self.exchanges.push((
            e.role,
            h.route.clone(),
            h.status,
            e.start_ns,
            e.end_ns,
            e.endpoint.server_port,
            e.endpoint.process.service_name.clone(),
        ));
    }
    fn opened(&mut self, how: &'static str) {
        self.opened.push(how);
    }
    fn ended(&mut self, reason: EndReason) {
        self.ended.push(reason);
    }
    fn muted(&mut self, reason: MuteReason) {
        self.muted.push(reason);
    }
    fn parse_error(&mut self, _protocol: &'static str, reason: &'static str) {
        self.parse_errors.push(reason);
    }
    fn decoder_stats(&mut self, _protocol: &'static str, _stats: DecoderStats) {}
    fn inexact(&mut self, _protocol: &'static str, reason: &'static str) {
        self.inexact.push(reason);
    }
}

/// A process id that does not exist, so identity comes from the kernel's comm.
const PID: u32 = u32::MAX - 7;

fn header(kind: EventKind, conn_id: u64, ts: u64) -> EventHeader {
    EventHeader {
        kind: kind as u8,
        conn_id,
        ts_ns: ts,
        tgid: PID,
        tid: PID,
        // One descriptor per connection, as in a real process.
        fd: conn_id as i32,
        listen_fd: -1,
        ..Default::default()
    }
}

/// The mute action for connection `id` of the test process (fd = id, see `header`), decided
/// on its socket bytes.
fn mute(id: u64) -> KernelAction {
    KernelAction::MuteSocket {
        tgid: PID,
        fd: id as i32,
        conn_id: id,
        tls: false,
    }
}

fn open_payload(port: u16, comm: &str) -> Vec<u8> {
    let mut p = vec![0u8; OPEN_PAYLOAD_LEN];
    p[0..2].copy_from_slice(&2u16.to_ne_bytes());
    p[2..4].copy_from_slice(&port.to_be_bytes());
    p[4..8].copy_from_slice(&[127, 0, 0, 1]);
    p[agent_ebpf::OPEN_COMM_OFFSET..agent_ebpf::OPEN_COMM_OFFSET + comm.len()]
        .copy_from_slice(comm.as_bytes());
    p
}

struct Harness {
    tracker: Tracker,
    sink: Recorded,
    actions: Vec<KernelAction>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            tracker: Tracker::new(std::path::Path::new("/proc")),
            sink: Recorded::default(),
            actions: Vec::new(),
        }
    }

    fn open(&mut self, conn_id: u64, origin: u8, port: u16, comm: &str) {
        self.open_on(conn_id as i32, conn_id, origin, port, comm);
    }

    /// Like `open`, on descriptor `fd`.
    fn open_on(&mut self, fd: i32, conn_id: u64, origin: u8, port: u16, comm: &str) {
        let mut h = header(EventKind::Open, conn_id, 1);
        h.fd = fd;
        h.origin = origin;
        let payload = open_payload(port, comm);
        h.cap_len = payload.len() as u32;
        self.tracker
            .on_event(&h, &payload, &mut self.sink, &mut self.actions);
    }

    fn data(&mut self, conn_id: u64, direction: u8, ts: u64, bytes: &[u8], real_len: usize) {
        let mut h = header(EventKind::Data, conn_id, ts);
        h.direction = direction;
        h.ret_len = real_len as i64;
        h.cap_len = bytes.len() as u32;
        self.tracker
            .on_event(&h, bytes, &mut self.sink, &mut self.actions);
    }

    /// A framed event covering all of `bytes` as one record, number `seq` of its direction.
    fn framed(&mut self, conn_id: u64, direction: u8, ts: u64, seq: u32, bytes: &[u8]) {
        let mut h = header(EventKind::Data, conn_id, ts);
        h.direction = direction;
        h.ret_len = bytes.len() as i64;
        h.frame_end = bytes.len() as u32;
        h.frame_seq = seq;
        let record = agent_ebpf::FrameRecord {
            len: bytes.len() as u32,
            ..Default::default()
        };
        let payload = pieces::encode(&[(record, bytes)]);
        h.cap_len = payload.len() as u32;
        self.tracker
            .on_event(&h, &payload, &mut self.sink, &mut self.actions);
    }

    /// TLS plaintext from the uprobes (`SSL_read`/`SSL_write`).
    fn plaintext(&mut self, conn_id: u64, direction: u8, ts: u64, bytes: &[u8]) {
        let mut h = header(EventKind::Data, conn_id, ts);
        h.direction = direction;
        h.ret_len = bytes.len() as i64;
        h.cap_len = bytes.len() as u32;
        h.syscall = if direction == DIR_INGRESS {
            agent_ebpf::Syscall::SslRead
        } else {
            agent_ebpf::Syscall::SslWrite
        } as u8;
        self.tracker
            .on_event(&h, bytes, &mut self.sink, &mut self.actions);
    }

    fn close(&mut self, conn_id: u64, ts: u64) {
        let h = header(EventKind::Close, conn_id, ts);
        self.tracker
            .on_event(&h, &[], &mut self.sink, &mut self.actions);
    }
}

const REQ: &[u8] = b"GET /users/42 HTTP/1.1\r\nHost: a\r\n\r\n";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[test]
fn client_role_from_a_written_request_with_peer_port_and_comm() {
    let mut h = Harness::new();
    h.open(9, ORIGIN_CONNECT, 8080, "curl");
    h.data(9, DIR_EGRESS, 100, REQ, REQ.len());
    h.data(9, DIR_INGRESS, 350, RESP, RESP.len());
    h.close(9, 400);
    assert_eq!(
        h.sink.exchanges,
        vec![(
            Role::Client,
            "/users/{id}".to_owned(),
            200,
            100,
            350,
            Some(8080),
            "curl".to_owned()
        )]
    );
    assert_eq!(h.sink.opened, vec!["connect"]);
    assert_eq!(h.sink.ended, vec![EndReason::Closed]);
    assert!(h.tracker.is_empty());
}

#[test]
fn server_role_from_a_read_request() {
    let mut h = Harness::new();
    h.open(3, ORIGIN_ACCEPT, 40000, "nginx");
    h.data(3, DIR_INGRESS, 10, REQ, REQ.len());
    h.data(3, DIR_EGRESS, 30, RESP, RESP.len());
    let got = &h.sink.exchanges;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].3, got[0].4), (Role::Server, 10, 30));
    // The listening socket of a process that does not exist is unknown: no port, not a guess.
    assert_eq!(got[0].5, None);
}

#[test]
fn unknown_protocols_are_muted_in_the_kernel_once() {
    let mut h = Harness::new();
    h.open(4, ORIGIN_CONNECT, 22, "ssh");
    h.data(4, DIR_EGRESS, 1, b"SSH-2.0-OpenSSH_9.2\r\n", 21);
    h.data(4, DIR_EGRESS, 2, b"more bytes", 10);
    assert_eq!(h.sink.muted, vec![MuteReason::UnknownProtocol]);
    assert_eq!(h.actions, vec![mute(4)]);
    assert!(h.sink.exchanges.is_empty());
}

#[test]
fn malformed_http_is_a_counted_parse_error_and_muted() {
    let mut h = Harness::new();
    h.open(6, ORIGIN_ACCEPT, 80, "srv");
    h.data(
        6,
        DIR_INGRESS,
        1,
        b"GET / HTTP/1.1\r\nContent-Length: zz\r\n\r\n",
        38,
    );
    assert_eq!(h.sink.parse_errors.len(), 1);
    assert_eq!(h.sink.muted, vec![MuteReason::ParseError]);
    assert_eq!(h.actions, vec![mute(6)]);
}

#[test]
fn lost_open_event_still_decodes() {
    let mut h = Harness::new();
    h.data(11, DIR_EGRESS, 5, REQ, REQ.len());
    h.data(11, DIR_INGRESS, 9, RESP, RESP.len());
    assert_eq!(h.sink.exchanges.len(), 1);
    assert_eq!(h.sink.opened.len(), 1);
}

#[test]
fn process_exit_ends_its_connections_and_forgets_them_in_the_kernel() {
    let mut h = Harness::new();
    h.open(21, ORIGIN_CONNECT, 80, "a");
    h.open(22, ORIGIN_CONNECT, 81, "a");
    // A response cut by the exit is still reported, as incomplete.
    h.data(21, DIR_EGRESS, 1, REQ, REQ.len());
    h.data(
        21,
        DIR_INGRESS,
        2,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok",
        42,
    );
    let exit = header(EventKind::ProcessExit, 0, 50);
    h.tracker.on_event(&exit, &[], &mut h.sink, &mut h.actions);
    assert!(h.tracker.is_empty());
    assert_eq!(h.sink.ended, vec![EndReason::ProcessExit; 2]);
    let mut forgotten: Vec<u64> = h
        .actions
        .iter()
        .filter_map(|a| match a {
            KernelAction::Forget { conn_id, .. } => Some(*conn_id),
            _ => None,
        })
        .collect();
    forgotten.sort();
    assert_eq!(forgotten, vec![21, 22]);
    assert_eq!(h.sink.exchanges.len(), 1);
}

#[test]
fn truncated_capture_is_skipped_by_length() {
    // 100 kB body, only the first 64 bytes of the write captured.
    let mut h = Harness::new();
    h.open(30, ORIGIN_ACCEPT, 80, "srv");
    let head = b"POST /upload HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
    let mut captured = head.to_vec();
    captured.extend([b'x'; 64]);
    h.data(30, DIR_INGRESS, 1, &captured, head.len() + 100_000);
    h.data(30, DIR_EGRESS, 2, RESP, RESP.len());
    let got = &h.sink.exchanges;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].1.as_str(), got[0].2), ("/upload", 200));
}

#[test]
fn sockaddr_v4_and_v6() {
    let mut v4 = [0u8; 28];
    v4[0..2].copy_from_slice(&2u16.to_ne_bytes());
    v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
    v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
    assert_eq!(parse_sockaddr(&v4), Some("127.0.0.1:8080".parse().unwrap()));

    let mut v6 = [0u8; 28];
    v6[0..2].copy_from_slice(&10u16.to_ne_bytes());
    v6[2..4].copy_from_slice(&443u16.to_be_bytes());
    v6[23] = 1;
    assert_eq!(parse_sockaddr(&v6), Some("[::1]:443".parse().unwrap()));

    assert_eq!(parse_sockaddr(&[]), None);
    assert_eq!(parse_sockaddr(&[1, 0, 0, 0]), None);
}

#[test]
fn a_forked_child_continues_its_parents_connection() {
    let mut h = Harness::new();
    h.open(40, ORIGIN_ACCEPT, 5432, "postgres");
    // The kernel copied fd 5 to the child (conn 41), naming conn 40 as the parent.
    let mut fork = header(EventKind::Open, 41, 2);
    fork.tgid = PID - 1;
    fork.origin = ORIGIN_ACCEPT;
    fork.syscall = agent_ebpf::Syscall::Fork as u8;
    let mut payload = vec![0u8; OPEN_PAYLOAD_LEN];
    payload[..8].copy_from_slice(&40u64.to_ne_bytes());
    fork.cap_len = payload.len() as u32;
    h.tracker
        .on_event(&fork, &payload, &mut h.sink, &mut h.actions);
    // The parent closes its copy; the child serves.
    h.close(40, 3);
    h.data(41, DIR_INGRESS, 10, REQ, REQ.len());
    h.data(41, DIR_EGRESS, 20, RESP, RESP.len());
    assert_eq!(h.sink.opened, vec!["accept", "fork"]);
    assert_eq!(h.sink.exchanges.len(), 1);
    assert_eq!(h.sink.exchanges[0].0, Role::Server);
}

#[test]
fn a_child_of_a_muted_connection_is_muted_too() {
    let mut h = Harness::new();
    h.open(50, ORIGIN_ACCEPT, 22, "sshd");
    h.data(50, DIR_INGRESS, 1, b"SSH-2.0-OpenSSH_9.2\r\n", 21);
    let mut fork = header(EventKind::Open, 51, 2);
    fork.syscall = agent_ebpf::Syscall::Fork as u8;
    let mut payload = vec![0u8; OPEN_PAYLOAD_LEN];
    payload[..8].copy_from_slice(&50u64.to_ne_bytes());
    fork.cap_len = payload.len() as u32;
    h.tracker
        .on_event(&fork, &payload, &mut h.sink, &mut h.actions);
    assert_eq!(h.actions, vec![mute(50), mute(51)]);
}

#[test]
fn a_short_first_read_is_held_until_the_protocol_shows() {
    // A server reading a 4-byte length prefix on its own, then the rest (Kafka brokers do).
    let mut h = Harness::new();
    h.open(60, ORIGIN_ACCEPT, 9092, "broker");
    h.data(60, DIR_INGRESS, 1, &REQ[..2], 2);
    h.data(60, DIR_INGRESS, 2, &REQ[2..], REQ.len() - 2);
    h.data(60, DIR_EGRESS, 3, RESP, RESP.len());
    assert!(h.sink.muted.is_empty());
    assert_eq!(h.sink.exchanges.len(), 1);
    // Started by the held piece's timestamp.
    assert_eq!(h.sink.exchanges[0].3, 1);
}

#[test]
fn short_bytes_that_cannot_start_a_protocol_are_muted_at_once() {
    let mut h = Harness::new();
    h.open(61, ORIGIN_CONNECT, 1080, "client");
    // No length prefix is negative, no text protocol starts with 0xff.
    h.data(61, DIR_EGRESS, 1, &[0xff, 0x00, 0x01, 0x02, 0x03], 5);
    assert_eq!(h.sink.muted, vec![MuteReason::UnknownProtocol]);
}

/// The ring buffer was full when a socket closed: the next socket on its descriptor ends it.
#[test]
fn a_new_socket_on_a_descriptor_ends_the_one_whose_close_was_lost() {
    let mut h = Harness::new();
    h.open_on(5, 9, ORIGIN_CONNECT, 8080, "curl");
    h.data(9, DIR_EGRESS, 100, REQ, REQ.len());
    h.data(9, DIR_INGRESS, 350, RESP, RESP.len());
    // No close event for 9; 10 opens on the same descriptor.
    h.open_on(5, 10, ORIGIN_CONNECT, 8080, "curl");
    assert_eq!(h.sink.ended, vec![EndReason::CloseLost]);
    assert_eq!(h.tracker.len(), 1);
    assert_eq!(h.sink.exchanges.len(), 1);
    // Its own close still ends it normally, once.
    h.close(10, 400);
    assert_eq!(h.sink.ended, vec![EndReason::CloseLost, EndReason::Closed]);
    assert!(h.tracker.is_empty());
}

/// A protocol added to a registry (the test-only echo protocol, appended to the real ones)
/// is detected and decoded through the same path as the real ones: detection on the first
/// bytes (a short prefix held first), the registry's constructor, its `Detail` mapping.
#[test]
fn a_protocol_from_an_extended_registry_is_detected() {
    let mut h = Harness::new();
    h.tracker
        .set_protocols(Protocols::all_of(&crate::protocol::echo::TEST_REGISTRY));
    h.open(70, ORIGIN_CONNECT, 7, "pinger");
    h.data(70, DIR_EGRESS, 1, b"PI", 2);
    h.data(70, DIR_EGRESS, 2, b"NG /users/7\n", 12);
    h.data(70, DIR_INGRESS, 3, b"PONG /users/7\n", 14);
    h.close(70, 4);
    assert!(h.sink.muted.is_empty());
    assert_eq!(
        h.sink.exchanges,
        vec![(
            Role::Client,
            "/users/7".to_owned(),
            200,
            1,
            3,
            Some(7),
            "pinger".to_owned()
        )]
    );
    // Without the extension the same bytes are an unknown protocol.
    let mut h = Harness::new();
    h.open(71, ORIGIN_CONNECT, 7, "pinger");
    h.data(71, DIR_EGRESS, 1, b"PING /users/7\n", 14);
    assert_eq!(h.sink.muted, vec![MuteReason::UnknownProtocol]);
}

/// One PostgreSQL message: type, length, body.
fn pg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Framed events of one direction that never arrived (ring buffer full) are noticed by their
/// sequence numbers: counted as inexact, and the decoder resynchronises instead of reading the
/// next event's messages as the rest of the lost ones; later statements pair exactly again.
#[test]
fn lost_framed_events_are_counted_and_the_decoder_resynchronises() {
    let mut h = Harness::new();
    h.open(7, ORIGIN_CONNECT, 5432, "psql");
    let mut startup = Vec::new();
    let params = b"user\0postgres\0database\0shop\0\0";
    startup.extend_from_slice(&(8 + params.len() as u32).to_be_bytes());
    startup.extend_from_slice(&196608u32.to_be_bytes());
    startup.extend_from_slice(params);
    h.framed(7, DIR_EGRESS, 10, 0, &startup);
    let ready = pg(b'Z', b"I");
    let login = [pg(b'R', &[0, 0, 0, 0]), ready.clone()].concat();
    h.framed(7, DIR_INGRESS, 20, 0, &login);
    let answer = [pg(b'C', b"SELECT 1\0"), ready.clone()].concat();
    let mut t = 30;
    for (seq, table) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let query = pg(b'Q', format!("SELECT 1 FROM {table}\0").as_bytes());
        h.framed(7, DIR_EGRESS, t, seq as u32 + 1, &query);
        // The answer to the query on `b` is lost.
        if table != "b" {
            h.framed(7, DIR_INGRESS, t + 5, seq as u32 + 1, &answer);
        }
        t += 10;
    }
    h.close(7, t);
    assert_eq!(h.sink.inexact, vec!["events_lost"]);
    let targets = &h.sink.targets;
    assert_eq!(
        targets.first().map(String::as_str),
        Some("SELECT a"),
        "{targets:?}"
    );
    assert_eq!(
        targets.last().map(String::as_str),
        Some("SELECT d"),
        "{targets:?}"
    );
}

/// `close_range` ends exactly the tracked descriptors in its range, asks the kernel to forget
/// them, and bytes still reported under their ids (another file on the reused descriptor) are
/// dropped instead of becoming a connection whose open event was "lost".
#[test]
fn close_range_ends_the_range_and_drops_bytes_of_reused_descriptors() {
    let mut h = Harness::new();
    for id in [3, 5, 9] {
        h.open(id, ORIGIN_CONNECT, 8080, "app");
    }
    h.data(5, DIR_EGRESS, 10, REQ, REQ.len());
    let mut range = header(EventKind::CloseRange, 8, 20);
    range.fd = 4; // closes 4..=8
    h.tracker.on_event(&range, &[], &mut h.sink, &mut h.actions);
    assert_eq!(h.sink.ended, vec![EndReason::Closed]);
    assert_eq!(
        h.actions,
        vec![KernelAction::Forget {
            tgid: PID,
            fd: 5,
            conn_id: 5
        }]
    );
    assert_eq!(h.tracker.len(), 2);
    // A file now on descriptor 5, still reported under the old id until the kernel forgets.
    h.data(5, DIR_EGRESS, 30, b"GET /secret HTTP/1.1\r\n\r\n", 24);
    assert_eq!(h.tracker.len(), 2);
    assert!(h.sink.exchanges.is_empty());
    // `close_range(0, ~0U)` ends the rest.
    let mut all = header(EventKind::CloseRange, u64::from(u32::MAX), 40);
    all.fd = 0;
    h.tracker.on_event(&all, &[], &mut h.sink, &mut h.actions);
    assert!(h.tracker.is_empty());
}

/// `exec` ends the connections whose descriptor did not survive: here the test's own process
/// stands in, with one socket kept open without close-on-exec, one with it, and a plain file.
#[test]
fn exec_ends_connections_whose_descriptor_did_not_survive() {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let kept = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let cloexec = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let file = std::fs::File::open("/proc/self/status").unwrap();
    // SAFETY: clears FD_CLOEXEC on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::fcntl(kept.as_raw_fd(), libc::F_SETFD, 0) },
        0
    );
    let me = std::process::id();
    let mut h = Harness::new();
    let fds = [
        kept.as_raw_fd(),
        cloexec.as_raw_fd(),
        file.as_raw_fd(),
        100_000,
    ];
    for (i, fd) in fds.iter().enumerate() {
        let mut open = header(EventKind::Open, i as u64 + 1, 1);
        open.tgid = me;
        open.fd = *fd;
        open.origin = ORIGIN_CONNECT;
        let payload = open_payload(8080, "app");
        open.cap_len = payload.len() as u32;
        h.tracker
            .on_event(&open, &payload, &mut h.sink, &mut h.actions);
    }
    let mut exec = header(EventKind::Exec, 0, 20);
    exec.tgid = me;
    exec.fd = -1;
    h.tracker.on_event(&exec, &[], &mut h.sink, &mut h.actions);
    let mut forgotten: Vec<i32> = h
        .actions
        .iter()
        .filter_map(|a| match a {
            KernelAction::Forget { fd, .. } => Some(*fd),
            _ => None,
        })
        .collect();
    forgotten.sort();
    let mut expected = vec![cloexec.as_raw_fd(), file.as_raw_fd(), 100_000];
    expected.sort();
    assert_eq!(forgotten, expected);
    assert_eq!(h.tracker.len(), 1, "only the socket kept across exec stays");
}

/// The global decoder budget: what decoders hold is summed over connections; the one that
/// takes the sum over the budget is muted (reason `memory_budget`) and its share released,
/// the others go on, and closing gives the rest back.
#[test]
fn the_connection_that_exceeds_the_decoder_memory_budget_is_muted() {
    let mut h = Harness::new();
    h.tracker.set_decoder_memory_budget(24 << 10);
    // Half a request head each (no blank line yet): held until it completes.
    let partial = |n: usize| {
        let mut head = b"GET /a HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        head.resize(n, b'x');
        head
    };
    h.open(1, ORIGIN_CONNECT, 8080, "app");
    h.open(2, ORIGIN_CONNECT, 8080, "app");
    let first = partial(10_000);
    h.data(1, DIR_EGRESS, 10, &first, first.len());
    let held = h.tracker.decoder_memory();
    assert!((10_000..24 << 10).contains(&held), "{held}");
    assert!(h.sink.muted.is_empty());
    let second = partial(15_000);
    h.data(2, DIR_EGRESS, 20, &second, second.len());
    assert_eq!(h.sink.muted, vec![MuteReason::MemoryBudget]);
    assert_eq!(
        h.tracker.decoder_memory(),
        held,
        "the muted share is released"
    );
    assert!(matches!(
        h.actions.last(),
        Some(KernelAction::MuteSocket { conn_id: 2, .. })
    ));
    // The first connection is unharmed: its request completes and pairs.
    h.data(1, DIR_EGRESS, 30, b"\r\n\r\n", 4);
    h.data(1, DIR_INGRESS, 40, RESP, RESP.len());
    assert_eq!(h.sink.exchanges.len(), 1);
    h.close(1, 50);
    assert_eq!(h.tracker.decoder_memory(), 0);
}

/// A TLS ClientHello (record header and the start of the handshake).
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

#[test]
fn tls_connections_mute_their_socket_bytes_and_decode_their_plaintext() {
    let mut h = Harness::new();
    h.open(5, ORIGIN_CONNECT, 443, "curl");
    h.data(5, DIR_EGRESS, 1, CLIENT_HELLO, CLIENT_HELLO.len());
    assert_eq!(h.sink.muted, vec![MuteReason::Tls]);
    assert_eq!(
        h.actions,
        vec![KernelAction::MuteSocket {
            tgid: PID,
            fd: 5,
            conn_id: 5,
            tls: true
        }]
    );
    // More handshake bytes are ignored; the plaintext starts the conversation again.
    h.data(5, DIR_INGRESS, 2, &[0x16, 0x03, 0x03, 0x00, 0x7a], 5);
    h.plaintext(5, DIR_EGRESS, 10, REQ);
    // Encrypted bytes after plaintext (an alert, close_notify) are not decoded.
    h.data(
        5,
        DIR_INGRESS,
        15,
        &[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00],
        7,
    );
    h.plaintext(5, DIR_INGRESS, 20, RESP);
    assert_eq!(h.sink.exchanges.len(), 1, "{:?}", h.sink.exchanges);
    assert_eq!(
        (
            h.sink.exchanges[0].0,
            h.sink.exchanges[0].2,
            h.sink.exchanges[0].3
        ),
        (Role::Client, 200, 10)
    );
    assert_eq!(h.sink.tls, vec![true]);
    assert_eq!(h.actions.len(), 1, "nothing else asked of the kernel");
}

#[test]
fn a_one_byte_peek_at_a_client_hello_is_taken_for_tls() {
    // nginx peeks at one byte of an HTTPS connection (plain HTTP sent to it?) first.
    let mut h = Harness::new();
    h.open(6, ORIGIN_ACCEPT, 40000, "nginx");
    h.data(6, DIR_INGRESS, 1, &CLIENT_HELLO[..1], 1);
    assert_eq!(h.sink.muted, vec![MuteReason::Tls]);
    h.plaintext(6, DIR_INGRESS, 10, REQ);
    h.plaintext(6, DIR_EGRESS, 20, RESP);
    assert_eq!(h.sink.exchanges.len(), 1);
    assert_eq!(h.sink.exchanges[0].0, Role::Server);
}

#[test]
fn plaintext_that_is_no_known_protocol_mutes_everything() {
    let mut h = Harness::new();
    h.open(7, ORIGIN_CONNECT, 443, "app");
    h.data(7, DIR_EGRESS, 1, CLIENT_HELLO, CLIENT_HELLO.len());
    h.plaintext(7, DIR_EGRESS, 10, b"SSH-2.0-OpenSSH_9.2\r\n");
    assert_eq!(
        h.sink.muted,
        vec![MuteReason::Tls, MuteReason::UnknownProtocol]
    );
    assert_eq!(
        h.actions.last(),
        Some(&KernelAction::Mute {
            tgid: PID,
            fd: 7,
            conn_id: 7
        })
    );
}

#[test]
fn plaintext_that_starts_with_an_answer_is_decoded_as_joined_mid_stream() {
    // The probes came after the conversation began: the client's first plaintext is the
    // answer to a request they never saw. The next request/answer pair is counted.
    let mut h = Harness::new();
    h.open(8, ORIGIN_CONNECT, 443, "client");
    h.data(8, DIR_EGRESS, 1, CLIENT_HELLO, CLIENT_HELLO.len());
    h.plaintext(8, DIR_INGRESS, 10, RESP);
    h.plaintext(8, DIR_EGRESS, 20, REQ);
    h.plaintext(8, DIR_INGRESS, 30, RESP);
    assert_eq!(h.sink.muted, vec![MuteReason::Tls], "not muted again");
    assert_eq!(h.sink.exchanges.len(), 1, "{:?}", h.sink.exchanges);
    assert_eq!(h.sink.exchanges[0].3, 20);
}

/// The server end of a connection whose client end is on this node names it, even when the
/// server's last write is reported after the client closed (a TLS server's `SSL_write` returns
/// after the client may have read the answer and exited), until the client's address is
/// reused or a second has passed.
#[test]
fn a_server_exchange_reported_after_its_client_closed_still_names_the_client() {
    let client_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let server_addr: SocketAddr = "127.0.0.1:8443".parse().unwrap();
    let exchange = |h: &mut Harness, client: u64, server: u64, t: u64, close_at: u64| {
        h.data(client, DIR_EGRESS, t, REQ, REQ.len());
        h.data(server, DIR_INGRESS, t + 1, REQ, REQ.len());
        h.data(client, DIR_INGRESS, t + 3, RESP, RESP.len());
        h.close(client, close_at);
        h.data(server, DIR_EGRESS, t + 2, RESP, RESP.len());
    };
    let open = |h: &mut Harness, client: u64, server: u64| {
        let mut payload = open_payload(server_addr.port(), "curl");
        set_local_v4(&mut payload, client_addr.port());
        let mut o = header(EventKind::Open, client, 1);
        o.origin = ORIGIN_CONNECT;
        o.cap_len = payload.len() as u32;
        h.tracker
            .on_event(&o, &payload, &mut h.sink, &mut h.actions);
        let found = listeners::FoundSocket {
            tgid: PID,
            fd: server as i32,
            local: server_addr,
            remote: client_addr,
            is_server: true,
        };
        h.tracker.adopt(server, &found, &mut h.sink, &mut h.actions);
    };
    let mut h = Harness::new();
    open(&mut h, 1, 2);
    exchange(&mut h, 1, 2, 100, 110);
    // The client's exchange (no peer), then the server's naming it.
    assert_eq!(h.sink.peer_conns, vec![None, Some(1)]);
    // The same address again, later: the new connection is named.
    open(&mut h, 3, 4);
    exchange(&mut h, 3, 4, 200, 210);
    assert_eq!(h.sink.peer_conns[2..], [None, Some(3)]);
    // A server write reported more than a second after its client closed is not linked.
    h.data(4, DIR_INGRESS, 300, REQ, REQ.len());
    h.close(2, 2_000_000_000);
    h.data(4, DIR_EGRESS, 2_000_000_001, RESP, RESP.len());
    assert_eq!(h.sink.peer_conns[4..], [None]);
}

/// A library on memory BIOs: the first write's plaintext comes before its socket is known
/// (`SslWriteUnbound`, under its `SSL *`), and is decoded on the connection a `TlsBind`
/// names, in order. Unbound plaintext never bound is dropped after 30 s, counted.
#[test]
fn plaintext_written_before_its_socket_is_known_is_decoded_once_bound() {
    let ssl = 0x5555_0000_1000u64;
    let unbound = |h: &mut Harness, ssl: u64, ts: u64, bytes: &[u8]| {
        let mut u = header(EventKind::Data, ssl, ts);
        u.fd = -1;
        u.direction = DIR_EGRESS;
        u.syscall = agent_ebpf::Syscall::SslWriteUnbound as u8;
        u.ret_len = bytes.len() as i64;
        u.cap_len = bytes.len() as u32;
        h.tracker.on_event(&u, bytes, &mut h.sink, &mut h.actions);
    };
    let bind = |h: &mut Harness, conn: u64, ssl: u64, ts: u64| {
        let mut b = header(EventKind::Data, conn, ts);
        b.direction = DIR_EGRESS;
        b.origin = ORIGIN_CONNECT;
        b.syscall = agent_ebpf::Syscall::TlsBind as u8;
        b.cap_len = 8;
        h.tracker
            .on_event(&b, &ssl.to_ne_bytes(), &mut h.sink, &mut h.actions);
    };
    let mut h = Harness::new();
    h.open(8, ORIGIN_CONNECT, 443, "python3");
    h.data(8, DIR_EGRESS, 1, CLIENT_HELLO, CLIENT_HELLO.len());
    // Another SSL object's write, never bound.
    unbound(&mut h, ssl + 1, 5, REQ);
    unbound(&mut h, ssl, 10, REQ);
    assert!(h.sink.exchanges.is_empty());
    bind(&mut h, 8, ssl, 11);
    h.plaintext(8, DIR_INGRESS, 20, RESP);
    assert_eq!(h.sink.exchanges.len(), 1, "{:?}", h.sink.exchanges);
    let (role, route, status, start, end, port, _) = &h.sink.exchanges[0];
    assert_eq!(
        (*role, route.as_str(), *status, *start, *end, *port),
        (Role::Client, "/users/{id}", 200, 10, 20, Some(443))
    );
    assert_eq!(h.sink.tls, [true]);
    // The keep-alive's next request is an ordinary plaintext write (the kernel knows the
    // pair now).
    h.plaintext(8, DIR_EGRESS, 30, REQ);
    h.plaintext(8, DIR_INGRESS, 40, RESP);
    assert_eq!(h.sink.exchanges.len(), 2);
    assert!(h.sink.inexact.is_empty());
    // 30 s later the stray one is dropped and counted.
    unbound(&mut h, ssl + 2, 31_000_000_000, REQ);
    assert_eq!(h.sink.inexact, ["tls_unbound_dropped"]);
}

/// An HTTP/2 connection found open at start-up (a gRPC channel): the first request seen opens
/// its header block with a reference to the table the agent never saw, which does not tell
/// the side. The socket does (its local port listens), so the chunk of whole frames is decoded
/// as the request it is, and the call is counted, with no invented path.
#[test]
fn an_adopted_http2_connection_takes_its_side_from_the_socket() {
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let run = |is_server: bool| {
        let mut h = Harness::new();
        let found = listeners::FoundSocket {
            tgid: PID,
            fd: 5,
            local: "127.0.0.1:50051".parse().unwrap(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            is_server,
        };
        h.tracker.adopt(5, &found, &mut h.sink, &mut h.actions);
        // HEADERS (END_HEADERS) opening with dynamic entry 67, then `:method POST`; DATA
        // (END_STREAM) of a 5-byte gRPC message.
        let mut request = frame(1, 0x4, 3, &[0xc3, 0x83]);
        request.extend(frame(0, 0x1, 3, &[0, 0, 0, 0, 0]));
        // `:status 200`, END_HEADERS | END_STREAM.
        let response = frame(1, 0x5, 3, &[0x88]);
        h.data(5, DIR_INGRESS, 10, &request, request.len());
        h.data(5, DIR_EGRESS, 20, &response, response.len());
        h
    };
    let h = run(true);
    assert_eq!(h.sink.exchanges.len(), 1, "{:?}", h.sink.exchanges);
    let (role, route, status, start, end, _, _) = &h.sink.exchanges[0];
    assert_eq!(
        (*role, route.as_str(), *status, *start, *end),
        (Role::Server, "", 200, 10, 20)
    );
    // A client socket with the same bytes the other way round is not a server.
    let h = run(false);
    assert!(
        h.sink.exchanges.iter().all(|x| x.0 == Role::Client),
        "{:?}",
        h.sink.exchanges
    );
}

/// `--exclude-ports` mutes the connection; `--exclude-executables` mutes it and excludes its
/// process in the kernel (in the cgroup the kernel saw it in) until the process exits.
#[test]
fn connections_not_watched_are_muted_and_their_process_excluded_in_the_kernel() {
    use crate::selection::{Lists, Ports, Selection};
    let selection = Selection {
        executables: Lists {
            include: vec![],
            exclude: vec!["pg*".into()],
        },
        ports: Lists {
            include: vec![],
            exclude: vec![Ports(9000, 9100)],
        },
        ..Selection::default()
    };
    let mut h = Harness::new();
    h.tracker.set_selection(selection.clone());
    h.open(1, ORIGIN_CONNECT, 80, "curl");
    h.open(2, ORIGIN_CONNECT, 9050, "curl");
    assert_eq!(h.sink.muted, vec![MuteReason::Excluded]);
    assert_eq!(h.actions, vec![mute(2)]);
    h.data(1, DIR_EGRESS, 1, REQ, REQ.len());
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    h.data(1, DIR_INGRESS, 2, response, response.len());
    h.data(2, DIR_EGRESS, 3, REQ, REQ.len());
    h.data(2, DIR_INGRESS, 4, response, response.len());
    assert_eq!(h.sink.exchanges.len(), 1, "only the watched port");

    let mut h = Harness::new();
    h.tracker.set_selection(selection);
    let mut open = header(EventKind::Open, 3, 1);
    open.origin = ORIGIN_CONNECT;
    open.cgroup_id = 77;
    let payload = open_payload(5432, "pgbench");
    open.cap_len = payload.len() as u32;
    h.tracker
        .on_event(&open, &payload, &mut h.sink, &mut h.actions);
    assert_eq!(h.sink.muted, vec![MuteReason::Excluded]);
    assert_eq!(
        h.actions,
        vec![
            KernelAction::Exclude {
                tgid: PID,
                cgroup_id: 77
            },
            mute(3)
        ]
    );
    h.actions.clear();
    let exit = header(EventKind::ProcessExit, 0, 50);
    h.tracker.on_event(&exit, &[], &mut h.sink, &mut h.actions);
    assert!(h.actions.contains(&KernelAction::Unexclude { tgid: PID }));
}

/// The scale bench's shape (issue 20): many keep-alive HTTP/1.1 connections, both ends on the
/// node, each after one small exchange and then idle. What the tracker holds per connection
/// (both sockets, with its share of the tracker's maps) stays small: 5,316 bytes before buffers
/// were released when idle (issue 20: 10,000 of them took the RSS from 37 to 97 MB), 1,540
/// after.
#[test]
fn an_idle_keep_alive_connection_holds_little() {
    use crate::test_alloc::held_by_this_thread;
    const N: u64 = 1000;
    let open_pair = |h: &mut Harness, i: u64| {
        let (client, server) = (2 * i + 1, 2 * i + 2);
        let mut payload = open_payload(8080, "client");
        let port = 10_000 + i as u16;
        set_local_v4(&mut payload, port);
        let mut o = header(EventKind::Open, client, 1);
        o.origin = ORIGIN_CONNECT;
        o.cap_len = payload.len() as u32;
        h.tracker
            .on_event(&o, &payload, &mut h.sink, &mut h.actions);
        let mut payload = open_payload(port, "server");
        payload[agent_ebpf::OPEN_LOCAL_OFFSET..agent_ebpf::OPEN_LOCAL_OFFSET + 2]
            .copy_from_slice(&2u16.to_ne_bytes());
        payload[agent_ebpf::OPEN_LOCAL_OFFSET + 2..agent_ebpf::OPEN_LOCAL_OFFSET + 4]
            .copy_from_slice(&8080u16.to_be_bytes());
        let mut o = header(EventKind::Open, server, 1);
        o.origin = ORIGIN_ACCEPT;
        o.cap_len = payload.len() as u32;
        h.tracker
            .on_event(&o, &payload, &mut h.sink, &mut h.actions);
        let t = 100 + 10 * i;
        h.data(client, DIR_EGRESS, t, REQ, REQ.len());
        h.data(server, DIR_INGRESS, t + 1, REQ, REQ.len());
        h.data(server, DIR_EGRESS, t + 2, RESP, RESP.len());
        h.data(client, DIR_INGRESS, t + 3, RESP, RESP.len());
    };
    let mut h = Harness::new();
    // Warm up: the process cache, the scratch buffers.
    open_pair(&mut h, N);
    h.sink = Recorded::default();
    h.actions = Vec::new();
    let before = held_by_this_thread();
    for i in 0..N {
        open_pair(&mut h, i);
    }
    let held = held_by_this_thread() - before;
    let sink_held = h.sink.exchanges.capacity() * std::mem::size_of::<Seen>()
        + h.sink
            .exchanges
            .iter()
            .map(|s| s.1.capacity() + s.6.capacity())
            .sum::<usize>()
        + h.sink.opened.capacity() * 16
        + h.sink.tls.capacity()
        + h.sink.peer_conns.capacity() * std::mem::size_of::<Option<u64>>()
        + h.actions.capacity() * std::mem::size_of::<KernelAction>();
    let per_conn = (held as usize - sink_held) / N as usize;
    assert_eq!(h.tracker.len(), 2 * N as usize + 2);
    assert_eq!(h.sink.exchanges.len(), 2 * N as usize);
    println!(
        "per connection (2 sockets): {per_conn} B held; size_of Conn {} State {} Http1Decoder {} \
         HttpExchange {}; map capacities: conns {} clients {} by_fd {}",
        std::mem::size_of::<Conn>(),
        std::mem::size_of::<State>(),
        std::mem::size_of::<crate::protocol::http1::Http1Decoder>(),
        std::mem::size_of::<crate::protocol::http1::HttpExchange>(),
        h.tracker.conns.capacity(),
        h.tracker.clients.capacity(),
        h.tracker.by_fd.capacity(),
    );
    assert!(per_conn <= 1_600, "{per_conn} B per connection");
}

/// Writes an `Open` payload's local address: 127.0.0.1 on `port` (AF_INET, as the kernel
/// reports a connect's local address).
fn set_local_v4(payload: &mut [u8], port: u16) {
    let at = agent_ebpf::OPEN_LOCAL_OFFSET;
    payload[at..at + 2].copy_from_slice(&2u16.to_ne_bytes());
    payload[at + 2..at + 4].copy_from_slice(&port.to_be_bytes());
    payload[at + 4..at + 8].copy_from_slice(&[127, 0, 0, 1]);
}

#[test]
fn close_checks_double_then_come_every_sixteen_idle_periods() {
    let due: Vec<u64> = (0..9).map(|n| close_check_due(5, n)).collect();
    assert_eq!(due, vec![5, 10, 20, 40, 80, 160, 240, 320, 400]);
    assert_eq!(
        close_check_due(5, u16::MAX),
        5 * 16 * (u64::from(u16::MAX) - 3)
    );
}

/// An idle connection whose close event was lost is found by asking `/proc` whether its
/// descriptor still holds a socket; one that does is asked again only after twice the idle
/// time (20,000 idle sockets were asked every 5 s).
#[test]
fn an_idle_connection_is_checked_for_a_lost_close_with_back_off() {
    const S: u64 = 1_000_000_000;
    let root = std::env::temp_dir().join(format!("periscope-close-checks-{}", std::process::id()));
    let fd_dir = root.join(format!("{PID}/fd"));
    std::fs::create_dir_all(&fd_dir).unwrap();
    let link = fd_dir.join("70");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("socket:[4242]", &link).unwrap();
    let mut h = Harness::new();
    h.tracker = Tracker::new(&root);
    h.open(70, ORIGIN_CONNECT, 8080, "client");
    h.data(70, DIR_EGRESS, S, REQ, REQ.len());
    h.data(70, DIR_INGRESS, S, RESP, RESP.len());
    // Idle 5 s: checked, still a socket.
    h.tracker.expire_closed(6 * S, 5 * S, &mut h.sink);
    assert_eq!(h.tracker.len(), 1);
    // The socket is closed, its close event lost.
    std::fs::remove_file(&link).unwrap();
    // Idle 9 s: the next check is due at 10 s idle.
    h.tracker.expire_closed(10 * S, 5 * S, &mut h.sink);
    assert_eq!(h.tracker.len(), 1);
    h.tracker.expire_closed(11 * S, 5 * S, &mut h.sink);
    assert!(h.tracker.is_empty());
    assert_eq!(h.sink.ended, vec![EndReason::CloseLost]);
    assert_eq!(h.sink.exchanges.len(), 1);
    // Bytes start the back-off over.
    std::os::unix::fs::symlink("socket:[4243]", &link).unwrap();
    h.open(70, ORIGIN_CONNECT, 8080, "client");
    h.data(70, DIR_EGRESS, 20 * S, REQ, REQ.len());
    h.tracker.expire_closed(25 * S, 5 * S, &mut h.sink);
    h.tracker.expire_closed(30 * S, 5 * S, &mut h.sink);
    h.data(70, DIR_INGRESS, 31 * S, RESP, RESP.len());
    std::fs::remove_file(&link).unwrap();
    h.tracker.expire_closed(36 * S, 5 * S, &mut h.sink);
    assert!(h.tracker.is_empty());
    let _ = std::fs::remove_dir_all(&root);
}
