use super::*;
use crate::protocol::testkit::{self, Golden};
use crate::protocol::Protocols;

type Conn = testkit::Conn<EchoDecoder>;

fn pairs(xs: &[EchoExchange]) -> Vec<(&str, &str, u64, u64)> {
    xs.iter()
        .map(|x| (x.ping.as_str(), x.pong.as_str(), x.start_ns, x.end_ns))
        .collect()
}

#[test]
fn pings_pair_with_pongs_in_order_across_chunks() {
    let mut c = Conn::new();
    c.req(b"PING a\nPI")
        .req(b"NG b\n")
        .resp(b"PONG a\n")
        .resp(b"PO");
    c.resp(b"NG b\n");
    assert_eq!(
        pairs(&c.take()),
        [("a", "a", 10, 35), ("b", "b", 10, 55)],
        "b starts in the chunk of its first byte"
    );
    c.close();
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn a_gap_resyncs_at_the_next_line_and_drops_the_waiting() {
    let mut c = Conn::new();
    c.req(b"PING a\n").resp_gap(b"PON", 100);
    c.resp(b"G a\n").req(b"PING b\n").resp(b"PONG b\n");
    assert_eq!(pairs(&c.take()), [("b", "b", 40, 55)]);
    let lost = DecoderStats {
        resyncs: 1,
        truncated_headers: 1,
        unpaired_requests: 1,
        unexpected_responses: 0,
    };
    assert_eq!(c.dec.take_stats(), lost);
}

#[test]
fn errors_stick_and_unanswered_pings_are_unpaired() {
    let mut c = Conn::new();
    assert_eq!(c.feed(Stream::Request, b"GET /", 0), Err(NOT_ECHO));
    assert_eq!(c.feed(Stream::Request, b"PING a\n", 0), Err(NOT_ECHO));
    let mut c = Conn::new();
    c.req(b"PING a\n");
    assert_eq!(
        c.feed(Stream::Request, b"PONG\n", 0),
        Err(DecodeError::Malformed("bad_line"))
    );
    let mut c = Conn::new();
    let long = [b"PING ".as_slice(), &[b'x'; MAX_LINE_BYTES]].concat();
    assert_eq!(
        c.feed(Stream::Request, &long, 0),
        Err(DecodeError::Malformed("line_too_long"))
    );
    let mut c = Conn::new();
    for _ in 0..MAX_PENDING + 2 {
        c.req(b"PING a\n");
    }
    c.close();
    assert_eq!(c.dec.take_stats().unpaired_requests, MAX_PENDING as u64 + 2);
}

const GOLDEN: Golden<EchoDecoder> = Golden {
    fixtures: "echo",
    at_least: 1,
    line: |x| format!("PING {} / PONG {}", x.ping, x.pong),
    state: |_| None,
    check: |f, d| assert_eq!(d.stats.unpaired_requests, 1, "{}: PING quiet", f.name),
    splits_per_run: usize::MAX,
    limits: &[0, 1, 5, 16, 64, 4096],
    subset_from: Some(5),
    key: |x| x.ping.clone(),
};

testkit::golden_tests!(GOLDEN);

#[test]
fn the_extended_registry_detects_echo_after_the_real_protocols() {
    let on = Protocols::all_of(&TEST_REGISTRY);
    assert!(on.is_on("echo") && on.is_on("http"));
    let found: Vec<&str> = on
        .enabled()
        .filter(|p| (p.detect)(b"PING x\n", false).is_some())
        .map(|p| p.name)
        .collect();
    assert_eq!(found, ["echo"]);
    // A prefix is held, as for the real protocols.
    assert!(on.registry().iter().any(|p| (p.could_start)(b"PIN")));
    // The real registry does not know it.
    assert!(Protocols::parse("echo").is_err());
}
