use super::parse::find_byte;
use super::*;
use crate::protocol::testkit::{self, Golden, Xorshift};

type Conn = testkit::Conn<Http1Decoder>;

/// Compact view of an exchange, without timestamps.
fn line(x: &HttpExchange) -> String {
    format!(
        "{} {} {} {} req_body={} resp_body={} complete={}",
        x.method,
        x.path,
        x.route,
        x.status,
        x.request_body_bytes,
        x.response_body_bytes,
        x.complete
    )
}

fn lines(xs: &[HttpExchange]) -> Vec<String> {
    xs.iter().map(line).collect()
}

const GET_A: &[u8] = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n";
const OK_5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn keep_alive_pairs_in_order_with_timestamps() {
    let mut c = Conn::new();
    c.req(GET_A).resp(OK_5);
    c.req(b"GET /b?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .resp(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        [
            "GET /a /a 200 req_body=0 resp_body=5 complete=true",
            "GET /b /b 404 req_body=0 resp_body=0 complete=true"
        ]
    );
    assert_eq!((xs[0].start_ns, xs[0].end_ns), (10, 25));
    assert_eq!((xs[1].start_ns, xs[1].end_ns), (30, 45));
    assert_eq!(xs[0].host.as_deref(), Some("example.com"));
    c.close();
    assert!(c.take().is_empty());
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut c = Conn::new();
    c.req(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nPOST /3 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /4 HTTP/1.1\r\n\r\n");
    c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nyy");
    c.resp(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nzzz");
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        [
            "GET /1 /{id} 200 req_body=0 resp_body=1 complete=true",
            "GET /2 /{id} 201 req_body=0 resp_body=2 complete=true",
            "POST /3 /{id} 202 req_body=3 resp_body=0 complete=true",
            "GET /4 /{id} 500 req_body=0 resp_body=3 complete=true",
        ]
    );
    // All requests came in one chunk; responses in two.
    assert!(xs.iter().all(|x| x.start_ns == 10));
    assert_eq!(
        xs.iter().map(|x| x.end_ns).collect::<Vec<_>>(),
        [25, 25, 35, 35]
    );
}

#[test]
fn content_length_and_chunked_bodies_both_ways() {
    let mut c = Conn::new();
    c.req(b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Trailer: t\r\n\r\n");
    c.resp(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
    );
    c.req(b"PUT /p HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789");
    c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(
        lines(&c.take()),
        [
            "POST /up /up 200 req_body=7 resp_body=10 complete=true",
            "PUT /p /p 200 req_body=10 resp_body=2 complete=true",
        ]
    );
}

#[test]
fn chunked_with_bare_lf_and_uppercase_hex() {
    let mut c = Conn::new();
    c.req(GET_A);
    c.resp(b"HTTP/1.1 200 OK\nTransfer-Encoding: Chunked\n\n1F\nabcdefghijklmnopqrstuvwxyz01234\n0\n\n");
    assert_eq!(
        lines(&c.take()),
        ["GET /a /a 200 req_body=0 resp_body=31 complete=true"]
    );
}

#[test]
fn head_204_304_have_no_body_whatever_the_headers_say() {
    let mut c = Conn::new();
    c.req(b"HEAD /h HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /m HTTP/1.1\r\n\r\nGET /z HTTP/1.1\r\n\r\n");
    c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.resp(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n");
    c.resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n");
    c.resp(OK_5);
    assert_eq!(
        lines(&c.take()),
        [
            "HEAD /h /h 200 req_body=0 resp_body=0 complete=true",
            "GET /n /n 204 req_body=0 resp_body=0 complete=true",
            "GET /m /m 304 req_body=0 resp_body=0 complete=true",
            "GET /z /z 200 req_body=0 resp_body=5 complete=true",
        ]
    );
}

#[test]
fn continue_does_not_complete_the_exchange() {
    let mut c = Conn::new();
    c.req(b"POST /u HTTP/1.1\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n");
    c.resp(b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(c.out.is_empty());
    c.req(b"abc").req(b"def");
    c.resp(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["POST /u /u 201 req_body=6 resp_body=0 complete=true"]
    );
    assert_eq!((xs[0].start_ns, xs[0].end_ns), (10, 55));
    assert!(!c.dec.upgraded());
}

#[test]
fn early_response_pairs_before_request_body_ends() {
    let mut c = Conn::new();
    c.req(b"POST /big HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789");
    c.resp(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    c.req(b"rest of the body is dropped");
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["POST /big /big 413 req_body=10 resp_body=0 complete=true"]
    );
}

#[test]
fn switching_protocols_completes_and_upgrades() {
    let mut c = Conn::new();
    c.req(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    c.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
    assert!(c.dec.upgraded());
    c.req(b"\x81\x85garbage that is not HTTP");
    c.resp(b"\x00\x01\x02");
    assert_eq!(
        lines(&c.take()),
        ["GET /ws /ws 101 req_body=0 resp_body=0 complete=true"]
    );
}

#[test]
fn h2c_upgrade_refused_or_to_another_protocol() {
    const ASK_H2C: &[u8] = b"GET /a HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
    // A server that does not speak h2c answers in HTTP/1.1: the connection stays HTTP/1.
    let mut c = Conn::new();
    c.req(ASK_H2C).resp(OK_5);
    c.req(GET_A).resp(OK_5);
    assert!(!c.dec.upgraded());
    assert_eq!(lines(&c.take()).len(), 2);
    // A 101 to something else than asked (or a 101 to h2c nobody asked for) is an upgrade
    // the decoder does not follow: the 101 completes the exchange.
    let mut c = Conn::new();
    c.req(ASK_H2C);
    c.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
    assert!(c.dec.upgraded());
    let mut c = Conn::new();
    c.req(GET_A);
    c.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n");
    assert!(c.dec.upgraded());
    assert_eq!(
        lines(&c.take()),
        ["GET /a /a 101 req_body=0 resp_body=0 complete=true"]
    );
    // Accepted (`Upgrade` lists tokens, any case): the 101 is no exchange of its own, and the
    // client's next bytes must be the HTTP/2 preface.
    let mut c = Conn::new();
    c.req(b"POST /a HTTP/1.1\r\nUpgrade: foo, H2C\r\nContent-Length: 3\r\n\r\nabc");
    c.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n");
    assert!(!c.dec.upgraded());
    assert!(c.take().is_empty());
    let mut out = Vec::new();
    let not_h2 = c.dec.feed(
        &Chunk {
            stream: Stream::Request,
            first_ns: 9,
            last_ns: 9,
            bytes: b"GET /b HTTP/1.1\r\n\r\n",
            len: 19,
        },
        &mut out,
    );
    assert!(not_h2.is_err(), "{not_h2:?}");
}

#[test]
fn connect_tunnel() {
    let mut c = Conn::new();
    // Tunnel bytes may follow the CONNECT before the proxy answers.
    c.req(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01\x00");
    c.resp(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03");
    assert!(c.dec.upgraded());
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["CONNECT example.com:443  200 req_body=0 resp_body=0 complete=true"]
    );
    assert_eq!(xs[0].host.as_deref(), Some("example.com:443"));

    // A refused CONNECT leaves the connection in HTTP.
    let mut c = Conn::new();
    c.req(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n");
    c.resp(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n");
    assert!(!c.dec.upgraded());
    c.req(GET_A).resp(OK_5);
    assert_eq!(
        lines(&c.take()),
        [
            "CONNECT example.com:443  407 req_body=0 resp_body=0 complete=true",
            "GET /a /a 200 req_body=0 resp_body=5 complete=true",
        ]
    );
}

#[test]
fn read_until_close_is_complete_at_close() {
    let mut c = Conn::new();
    c.req(b"GET /old HTTP/1.0\r\n\r\n");
    c.resp(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome");
    c.resp(b" more");
    assert!(c.out.is_empty());
    c.close();
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["GET /old /old 200 req_body=0 resp_body=9 complete=true"]
    );
    // Ends with the last response byte, not at close.
    assert_eq!((xs[0].start_ns, xs[0].end_ns), (10, 35));
}

#[test]
fn unknown_transfer_coding_on_a_response_reads_until_close() {
    let mut c = Conn::new();
    c.req(GET_A);
    c.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc");
    c.close();
    assert_eq!(
        lines(&c.take()),
        ["GET /a /a 200 req_body=0 resp_body=3 complete=true"]
    );
}

#[test]
fn response_cut_mid_body_is_incomplete() {
    let mut c = Conn::new();
    c.req(GET_A);
    c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal");
    c.close();
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["GET /a /a 200 req_body=0 resp_body=3 complete=false"]
    );
    assert_eq!(xs[0].end_ns, 30, "cut responses end at close");

    let mut c = Conn::new();
    c.req(GET_A);
    c.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab");
    c.close();
    assert_eq!(
        lines(&c.take()),
        ["GET /a /a 200 req_body=0 resp_body=2 complete=false"]
    );
}

#[test]
fn unpaired_and_unexpected_are_counted_not_emitted() {
    let mut c = Conn::new();
    c.resp(OK_5);
    c.req(GET_A).req(GET_A);
    c.resp(OK_5);
    c.resp(b"HTTP/1.1 200 OK\r\nContent-Le"); // head cut by close
    c.req(b"GET /partial HTTP/1.1\r\n");
    c.close();
    assert_eq!(c.take().len(), 1);
    assert_eq!(
        c.dec.take_stats(),
        DecoderStats {
            unexpected_responses: 1,
            unpaired_requests: 2,
            ..Default::default()
        }
    );
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn pending_queue_overflow_drops_oldest() {
    let mut c = Conn::new();
    for i in 0..MAX_PENDING + 3 {
        c.req(format!("GET /r{i} HTTP/1.1\r\n\r\n").as_bytes());
    }
    c.resp(OK_5);
    let xs = c.take();
    assert_eq!(xs[0].path, "/r3");
    assert_eq!(c.dec.take_stats().unpaired_requests, 3);
}

/// A conversation exercising most framing: keep-alive, chunked with extensions and
/// trailers, HEAD, 100-continue, pipelining, query strings.
const CONV_REQ: &[u8] = b"GET /users/42?x=1 HTTP/1.1\r\nHost: h\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n\
POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3;a=b\r\nabc\r\n0\r\nT: v\r\n\r\n\
HEAD /h HTTP/1.1\r\n\r\n\
\r\nPUT /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nwxyz\
GET /last HTTP/1.0\r\n\r\n";
const CONV_RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.0 200 OK\r\n\r\nuntil close";
const CONV_LINES: [&str; 5] = [
    "GET /users/42 /users/{id} 200 req_body=0 resp_body=3 complete=true",
    "POST /up /up 201 req_body=3 resp_body=18 complete=true",
    "HEAD /h /h 200 req_body=0 resp_body=0 complete=true",
    "PUT /p /p 204 req_body=4 resp_body=0 complete=true",
    "GET /last /last 200 req_body=0 resp_body=11 complete=true",
];

/// Feeds all request pieces, then all response pieces, then closes.
fn run_pieces(req: &[&[u8]], resp: &[&[u8]]) -> (Vec<String>, DecoderStats) {
    let mut c = Conn::new();
    for p in req {
        c.req(p);
    }
    for p in resp {
        c.resp(p);
    }
    c.close();
    (lines(&c.take()), c.dec.take_stats())
}

#[test]
fn conversation_in_one_chunk_each() {
    let (got, stats) = run_pieces(&[CONV_REQ], &[CONV_RESP]);
    assert_eq!(got, CONV_LINES);
    assert_eq!(stats, DecoderStats::default());
}

#[test]
fn split_at_every_byte_boundary() {
    for k in 0..=CONV_REQ.len() {
        let (a, b) = CONV_REQ.split_at(k);
        let (got, stats) = run_pieces(&[a, b], &[CONV_RESP]);
        assert_eq!(got, CONV_LINES, "request split at {k}");
        assert_eq!(stats, DecoderStats::default(), "request split at {k}");
    }
    for k in 0..=CONV_RESP.len() {
        let (a, b) = CONV_RESP.split_at(k);
        let (got, stats) = run_pieces(&[CONV_REQ], &[a, b]);
        assert_eq!(got, CONV_LINES, "response split at {k}");
        assert_eq!(stats, DecoderStats::default(), "response split at {k}");
    }
}

/// Between messages a keep-alive connection holds no buffer: not the head buffers a split head
/// used, not the pending queue (only the last route, kept to skip recomputing it).
#[test]
fn an_idle_connection_keeps_no_buffers() {
    let mut c = Conn::new();
    let (a, b) = GET_A.split_at(7);
    let (x, y) = OK_5.split_at(20);
    c.req(a).req(b).resp(x).resp(y);
    assert_eq!(c.take().len(), 1);
    assert_eq!(c.dec.req.head.capacity(), 0);
    assert_eq!(c.dec.resp.head.capacity(), 0);
    assert_eq!(c.dec.pending.capacity(), 0);
    let route = c
        .dec
        .last_route
        .as_ref()
        .map_or(0, |(p, r)| p.capacity() + r.capacity());
    assert_eq!(c.dec.heap_bytes(), route);
}

/// One request in flight holds room for one pending entry, not the default four: at 20,000
/// connections with a request outstanding at once that was 14 MB (`bench scale`). A pipeline
/// still queues every request.
#[test]
fn one_request_in_flight_reserves_room_for_one() {
    let mut c = Conn::new();
    c.req(GET_A);
    assert_eq!(c.dec.pending.len(), 1);
    assert_eq!(c.dec.pending.capacity(), 1);
    c.req(GET_A).req(GET_A);
    assert_eq!(c.dec.pending.len(), 3);
    c.resp(OK_5).resp(OK_5).resp(OK_5);
    assert_eq!(c.take().len(), 3);
    assert_eq!(c.dec.pending.capacity(), 0);
}

#[test]
fn split_at_every_pair_of_boundaries() {
    let req = b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nab";
    let resp =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;e\r\nx\r\n0\r\nT: 1\r\n\r\n";
    let want = ["POST /x /x 200 req_body=2 resp_body=1 complete=true"];
    for i in 0..=req.len() {
        for j in i..=req.len() {
            let (got, _) = run_pieces(&[&req[..i], &req[i..j], &req[j..]], &[resp]);
            assert_eq!(got, want, "request split at {i},{j}");
        }
    }
    for i in 0..=resp.len() {
        for j in i..=resp.len() {
            let (got, _) = run_pieces(&[req], &[&resp[..i], &resp[i..j], &resp[j..]]);
            assert_eq!(got, want, "response split at {i},{j}");
        }
    }
}

#[test]
fn one_byte_chunks() {
    let req: Vec<&[u8]> = CONV_REQ.chunks(1).collect();
    let resp: Vec<&[u8]> = CONV_RESP.chunks(1).collect();
    assert_eq!(run_pieces(&req, &resp).0, CONV_LINES);
}

#[test]
fn start_is_the_chunk_of_the_first_byte_and_end_of_the_last() {
    let mut c = Conn::new();
    c.req(b"GET /a HT")
        .req(b"TP/1.1\r\nHost: x\r")
        .req(b"\n\r\n");
    c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe")
        .resp(b"llo");
    let xs = c.take();
    assert_eq!((xs[0].start_ns, xs[0].end_ns), (10, 55));
}

#[test]
fn gap_inside_a_content_length_body_is_skipped_by_length() {
    let mut c = Conn::new();
    c.req_gap(
        b"POST /u HTTP/1.1\r\nContent-Length: 10000\r\n\r\n0123",
        9996,
    );
    c.req(GET_A);
    c.resp_gap(
        b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\nabc",
        30000,
    );
    c.resp_gap(b"abc", 39994);
    c.resp(OK_5);
    assert_eq!(
        lines(&c.take()),
        [
            "POST /u /u 200 req_body=10000 resp_body=70000 complete=true",
            "GET /a /a 200 req_body=0 resp_body=5 complete=true",
        ]
    );
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn gap_inside_chunk_data_is_skipped() {
    let mut c = Conn::new();
    c.req(GET_A);
    c.resp_gap(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nab",
        254,
    );
    c.resp(b"\r\n0\r\n\r\n");
    assert_eq!(
        lines(&c.take()),
        ["GET /a /a 200 req_body=0 resp_body=256 complete=true"]
    );
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

/// Issue 14: a server writes `size CRLF data CRLF` in one write and the capture window ends
/// anywhere from inside the data to past its closing CRLF. A gap that ends in that CRLF (two
/// bytes the protocol fixes) keeps framing: exact body size, the response complete as soon as
/// its last chunk arrives, nothing counted as lost.
#[test]
fn a_gap_ending_in_a_chunks_closing_crlf_keeps_framing() {
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n";
    let data = vec![b'x'; 0x1000];
    let mut write = head.to_vec();
    write.extend_from_slice(&data);
    write.extend_from_slice(b"\r\n");
    // Captured prefixes ending 3 bytes before the data's end up to just after its CRLF.
    let data_end = head.len() + data.len();
    for captured in data_end - 3..=write.len() {
        let mut c = Conn::new();
        c.req(GET_A);
        let gap = (write.len() - captured) as u64;
        c.resp_gap(&write[..captured], gap);
        c.resp(b"0\r\n\r\n");
        let xs = c.take();
        assert_eq!(
            lines(&xs),
            ["GET /a /a 200 req_body=0 resp_body=4096 complete=true"],
            "captured {captured} of {}",
            write.len()
        );
        assert_eq!(
            c.dec.take_stats(),
            DecoderStats::default(),
            "captured {captured}"
        );
    }
    // A gap that reaches into the next size line still loses framing, and says so.
    let mut c = Conn::new();
    c.req(GET_A);
    let mut more = write.clone();
    more.extend_from_slice(b"4\r\nabcd\r\n");
    c.resp_gap(&more[..data_end], (more.len() - data_end) as u64);
    c.resp(b"0\r\n\r\n");
    assert_eq!(c.dec.take_stats().resyncs, 1);
}

#[test]
fn message_starting_in_a_gap_keeps_pairing() {
    // The second pipelined request starts in the gap of the first's body.
    let mut c = Conn::new();
    c.req_gap(b"POST /u HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", 30);
    c.req(b"Host: x\r\n\r\n"); // rest of the lost request: discarded (resync)
    c.req(b"GET /third HTTP/1.1\r\n\r\n");
    c.resp(OK_5).resp(OK_5).resp(OK_5);
    assert_eq!(
        lines(&c.take()),
        [
            "POST /u /u 200 req_body=4 resp_body=5 complete=true",
            "UNKNOWN   200 req_body=0 resp_body=5 complete=true",
            "GET /third /third 200 req_body=0 resp_body=5 complete=true",
        ]
    );
    assert_eq!(
        c.dec.take_stats(),
        DecoderStats {
            resyncs: 1,
            truncated_headers: 1,
            ..Default::default()
        }
    );
}

#[test]
fn truncated_request_head_keeps_what_was_captured() {
    let mut c = Conn::new();
    c.req_gap(b"GET /big/7?q HTTP/1.1\r\nHost: h\r\nCookie: aaaa", 9000);
    c.req(b"aaaaaaa\r\n\r\n"); // continuation: discarded until a request line
    c.req(b"GET /next HTTP/1.1\r\n\r\n");
    c.resp(OK_5).resp(OK_5);
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        [
            "GET /big/7 /big/{id} 200 req_body=0 resp_body=5 complete=true",
            "GET /next /next 200 req_body=0 resp_body=5 complete=true",
        ]
    );
    assert_eq!(xs[0].host.as_deref(), Some("h"));
    assert_eq!(
        c.dec.take_stats(),
        DecoderStats {
            resyncs: 1,
            truncated_headers: 1,
            ..Default::default()
        }
    );
}

#[test]
fn truncated_request_line_becomes_unknown() {
    let mut c = Conn::new();
    c.req_gap(b"GET /aaaa", 100);
    c.resp(OK_5);
    assert_eq!(
        lines(&c.take()),
        ["UNKNOWN   200 req_body=0 resp_body=5 complete=true"]
    );
}

#[test]
fn truncated_response_head_is_held_until_the_next_status_line() {
    let mut c = Conn::new();
    c.req(GET_A).req(GET_A);
    c.resp_gap(b"HTTP/1.1 200 OK\r\nSet-Cookie: xx", 5000); // t=3
    c.resp(b"body bytes"); // t=4: part of the held response
    c.resp(OK_5); // t=5
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        [
            "GET /a /a 200 req_body=0 resp_body=10 complete=true",
            "GET /a /a 200 req_body=0 resp_body=5 complete=true",
        ]
    );
    assert_eq!(xs[0].end_ns, 45);
    assert_eq!(xs[1].end_ns, 55);
    assert_eq!(
        c.dec.take_stats(),
        DecoderStats {
            resyncs: 1,
            truncated_headers: 1,
            ..Default::default()
        }
    );

    // ...or until close.
    let mut c = Conn::new();
    c.req(GET_A);
    c.resp_gap(b"HTTP/1.1 503 Unavailable\r\n", 100);
    c.close();
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["GET /a /a 503 req_body=0 resp_body=0 complete=true"]
    );
    assert_eq!(xs[0].end_ns, 25);
}

#[test]
fn truncated_head_of_bodiless_response_completes_at_once() {
    let mut c = Conn::new();
    c.req(b"HEAD /h HTTP/1.1\r\n\r\n").req(GET_A);
    c.resp_gap(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Long: aa", 9000);
    c.resp(OK_5);
    assert_eq!(
        lines(&c.take()),
        [
            "HEAD /h /h 200 req_body=0 resp_body=0 complete=true",
            "GET /a /a 200 req_body=0 resp_body=5 complete=true",
        ]
    );
}

#[test]
fn truncated_status_line_drops_its_request() {
    let mut c = Conn::new();
    c.req(GET_A).req(b"GET /b HTTP/1.1\r\n\r\n");
    c.resp_gap(b"HTTP/1.1 2", 5000);
    c.resp(OK_5);
    assert_eq!(
        lines(&c.take()),
        ["GET /b /b 200 req_body=0 resp_body=5 complete=true"]
    );
    let stats = c.dec.take_stats();
    assert_eq!((stats.unpaired_requests, stats.truncated_headers), (1, 1));
}

#[test]
fn chunk_sizes_lost_in_a_gap_hold_the_response_until_the_next_status_line() {
    let mut c = Conn::new();
    c.req(GET_A).req(GET_A);
    c.resp_gap(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
        500,
    ); // t=3
    c.resp(b"more data\r\n0\r\n\r\n"); // t=4
    c.resp(OK_5); // t=5
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        [
            // 4 framed + 500 in the gap + 16 of the next chunk (framing unknown: all count)
            "GET /a /a 200 req_body=0 resp_body=520 complete=true",
            "GET /a /a 200 req_body=0 resp_body=5 complete=true",
        ]
    );
    assert_eq!(xs[0].end_ns, 45);
    assert_eq!(c.dec.take_stats().resyncs, 1);
}

#[test]
fn chunked_request_framing_lost_in_a_gap_resyncs_the_request_stream() {
    let mut c = Conn::new();
    c.req_gap(
        b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
        100,
    );
    c.req(b"ef\r\n0\r\n\r\n"); // discarded
    c.req(GET_A);
    c.resp(OK_5).resp(OK_5);
    assert_eq!(
        lines(&c.take()),
        [
            "POST /u /u 200 req_body=102 resp_body=5 complete=true",
            "GET /a /a 200 req_body=0 resp_body=5 complete=true",
        ]
    );
    assert_eq!(c.dec.take_stats().resyncs, 1);
}

#[test]
fn chunk_ending_mid_header_line() {
    let mut c = Conn::new();
    c.req(b"GET /a HTTP/1.1\r\nHo")
        .req(b"st: split.example\r")
        .req(b"\n\r")
        .req(b"\n");
    c.resp(b"HTTP/1.1 200 OK\r\nContent-")
        .resp(b"Length: 1\r\n\r\nx");
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["GET /a /a 200 req_body=0 resp_body=1 complete=true"]
    );
    assert_eq!(xs[0].host.as_deref(), Some("split.example"));
}

#[test]
fn header_names_are_case_insensitive_and_chunked_wins_over_length() {
    let mut c = Conn::new();
    c.req(b"GET /a HTTP/1.1\r\nHOST: up.example\r\nTraceParent: 00-abc-def-01\r\ntraceSTATE: k=v\r\n\r\n");
    c.resp(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nTRANSFER-ENCODING: CHUNKED\r\n\r\n1\r\nx\r\n0\r\n\r\n");
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["GET /a /a 200 req_body=0 resp_body=1 complete=true"]
    );
    assert_eq!(xs[0].host.as_deref(), Some("up.example"));
    assert_eq!(xs[0].traceparent.as_deref(), Some("00-abc-def-01"));
    assert_eq!(xs[0].tracestate.as_deref(), Some("k=v"));
}

#[test]
fn repeated_identical_content_length_is_fine() {
    let mut c = Conn::new();
    c.req(b"POST /a HTTP/1.1\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nab");
    c.resp(OK_5);
    assert_eq!(
        lines(&c.take()),
        ["POST /a /a 200 req_body=2 resp_body=5 complete=true"]
    );
}

fn first_error(req: &[u8], resp: &[u8]) -> Option<DecodeError> {
    let mut c = Conn::new();
    c.feed(Stream::Request, req, 0)
        .and_then(|_| c.feed(Stream::Response, resp, 0))
        .err()
}

#[test]
fn framing_errors_are_malformed() {
    let m = |r| Some(DecodeError::Malformed(r));
    assert_eq!(
        first_error(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b""
        ),
        m("conflicting_content_length")
    );
    assert_eq!(
        first_error(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b""),
        m("bad_content_length")
    );
    assert_eq!(
        first_error(
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b""
        ),
        m("bad_content_length")
    );
    assert_eq!(
        first_error(GET_A, b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n"),
        m("bad_content_length")
    );
    assert_eq!(
        first_error(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", b""),
        m("bad_transfer_encoding")
    );
    assert_eq!(
        first_error(
            GET_A,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        ),
        m("bad_chunk_size")
    );
    assert_eq!(
        first_error(
            GET_A,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy"
        ),
        m("bad_chunk_end")
    );
    assert_eq!(
        first_error(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", b""),
        m("bad_header")
    );
    assert_eq!(
        first_error(b"GET / HTTP/1.1\r\nno colon\r\n\r\n", b""),
        m("bad_header")
    );
    // A bad start line after a good message is malformed, not "not HTTP".
    let mut c = Conn::new();
    c.req(GET_A);
    assert_eq!(
        c.feed(Stream::Request, b"\x00\x01\x02", 0),
        Err(DecodeError::Malformed("bad_request_line"))
    );
    // The decoder stays failed.
    assert_eq!(
        c.feed(Stream::Request, GET_A, 0),
        Err(DecodeError::Malformed("bad_request_line"))
    );
    assert_eq!(
        DecodeError::Malformed("bad_request_line").reason(),
        "bad_request_line"
    );
    assert_eq!(NOT_HTTP.reason(), "not_http");
}

#[test]
fn headers_over_16k_are_malformed_split_or_not() {
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.resize(MAX_HEAD_BYTES + 10, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        first_error(&big, b""),
        Some(DecodeError::Malformed("headers_too_large"))
    );
    let mut c = Conn::new();
    let mut err = None;
    for piece in big.chunks(1000) {
        if let Err(e) = c.feed(Stream::Request, piece, 0) {
            err = Some(e);
            break;
        }
    }
    assert_eq!(err, Some(DecodeError::Malformed("headers_too_large")));

    // Exactly at the limit is fine.
    let mut exact = b"GET / HTTP/1.1\r\nX: ".to_vec();
    exact.resize(MAX_HEAD_BYTES - 4, b'a');
    exact.extend_from_slice(b"\r\n\r\n");
    assert_eq!(exact.len(), MAX_HEAD_BYTES);
    assert_eq!(first_error(&exact, b""), None);
}

#[test]
fn garbage_fails_fast() {
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], // TLS ClientHello
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x00\x00\x00\x01",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"*1\r\n$4\r\nPING\r\n", // redis
        b"GETTING_LONGER_THAN_A_METHOD_CAN_EVER_BE /x HTTP/1.1\r\n",
    ] {
        assert_eq!(first_error(garbage, b""), Some(NOT_HTTP), "{garbage:?}");
    }
    assert_eq!(first_error(GET_A, b"SSH-2.0\r\n"), Some(NOT_HTTP));
    // Valid-looking method but not an HTTP/1 request line.
    assert_eq!(first_error(b"GET /x FTP/1.0\r\n\r\n", b""), Some(NOT_HTTP));
    assert_eq!(
        first_error(GET_A, b"HTTP/1.1 2000 OK\r\n\r\n"),
        Some(NOT_HTTP)
    );
    // Garbage split into one-byte chunks fails on the first byte too.
    let mut c = Conn::new();
    assert_eq!(c.feed(Stream::Request, b"\x16", 0), Err(NOT_HTTP));
}

#[test]
fn random_bytes_never_panic_and_stay_bounded() {
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15u64);
    let alphabet = b"GET /HTP1.0\r\n:0123456789abcdefContent-Length: chunked;\x00\xff";
    for _ in 0..2000 {
        let mut dec = Http1Decoder::new();
        let mut out = Vec::new();
        for t in 0..20u64 {
            let len = (rng.u64() % 64) as usize;
            let bytes: Vec<u8> = if rng.u64().is_multiple_of(2) {
                (0..len).map(|_| rng.u64() as u8).collect()
            } else {
                (0..len)
                    .map(|_| alphabet[(rng.u64() % alphabet.len() as u64) as usize])
                    .collect()
            };
            let _ = dec.feed(&rng.chunk(t, &bytes, 4), &mut out);
        }
        dec.close(1000, &mut out);
        for x in &out {
            assert!(x.end_ns >= x.start_ns);
            assert!(x.method.len() <= MAX_METHOD_CHARS);
        }
    }
}

#[test]
fn query_absolute_form_asterisk() {
    let mut c = Conn::new();
    c.req(b"GET http://proxy.example:8080/x/1?y=2 HTTP/1.1\r\nHost: ignored\r\n\r\n");
    c.req(b"GET http://bare.example HTTP/1.1\r\n\r\n");
    c.req(b"OPTIONS * HTTP/1.1\r\n\r\n");
    c.req(b"GET /s?q=1#frag HTTP/1.1\r\n\r\n");
    c.req(b"GET /f#frag HTTP/1.1\r\n\r\n");
    for _ in 0..5 {
        c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        [
            "GET /x/1 /x/{id} 200 req_body=0 resp_body=0 complete=true",
            "GET / / 200 req_body=0 resp_body=0 complete=true",
            "OPTIONS * * 200 req_body=0 resp_body=0 complete=true",
            "GET /s /s 200 req_body=0 resp_body=0 complete=true",
            "GET /f /f 200 req_body=0 resp_body=0 complete=true",
        ]
    );
    assert_eq!(xs[0].host.as_deref(), Some("proxy.example:8080"));
    assert_eq!(xs[1].host.as_deref(), Some("bare.example"));
    assert!(xs
        .iter()
        .all(|x| !x.route.contains('?') && !x.path.contains('?')));
}

/// Issue 15: credentials in an absolute-form target never reach the exchange (and so never a
/// span's `server.address`).
#[test]
fn userinfo_in_an_absolute_target_is_dropped() {
    let mut c = Conn::new();
    c.req(b"GET http://alice:s3cret@proxy.example:8080/x HTTP/1.1\r\n\r\n");
    c.req(b"GET http://token@bare.example HTTP/1.1\r\n\r\n");
    c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    c.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let xs = c.take();
    assert_eq!(xs[0].host.as_deref(), Some("proxy.example:8080"));
    assert_eq!(xs[1].host.as_deref(), Some("bare.example"));
    assert!(!format!("{xs:?}").contains("s3cret") && !format!("{xs:?}").contains("token"));
}

#[test]
fn long_method_path_and_headers_are_capped() {
    let long_path = format!("/{}", "p".repeat(1000));
    let req = format!(
        "NONSTANDARDMETHOD_X {long_path} HTTP/1.1\r\nHost: {}\r\ntracestate: {}\r\n\r\n",
        "h".repeat(1000),
        "t".repeat(1000)
    );
    let mut c = Conn::new();
    c.req(req.as_bytes()).resp(OK_5);
    let x = &c.take()[0];
    assert_eq!(x.method, "NONSTANDARDMETHO");
    assert_eq!(x.path.len(), MAX_PATH_BYTES);
    assert_eq!(x.host.as_ref().map(String::len), Some(MAX_HOST_BYTES));
    assert_eq!(
        x.tracestate.as_ref().map(String::len),
        Some(MAX_TRACESTATE_BYTES)
    );
    // Multi-byte UTF-8 cut at a character boundary, invalid bytes replaced.
    assert_eq!(capped_string("aé".as_bytes(), 2), "a");
    assert_eq!(capped_string(b"a\xffb", 10), "a\u{fffd}b");
    assert_eq!(capped_string(b"\xff\xff\xff", 3), "\u{fffd}");
}

#[test]
fn leading_blank_lines_between_messages_are_ignored() {
    let mut c = Conn::new();
    c.req(b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n");
    c.req(b"\r\nGET /b HTTP/1.1\r\n\r\n");
    c.resp(OK_5).resp(OK_5);
    assert_eq!(c.take().len(), 2);
}

#[test]
fn find_byte_matches_a_plain_search() {
    let hay: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37) | 1).collect();
    for len in 0..hay.len() {
        for needle in [b'\n', 0x81, 0xff, 1, 0x25] {
            let mut h = hay[..len].to_vec();
            let want = h.iter().position(|&c| c == needle);
            assert_eq!(find_byte(&h, needle), want, "len {len} needle {needle}");
            if len > 0 {
                h[len / 2] = needle;
                h[len - 1] = needle;
                let want = h.iter().position(|&c| c == needle);
                assert_eq!(find_byte(&h, needle), want, "len {len} needle {needle}");
            }
        }
    }
}

#[test]
fn detect_recognises_request_and_status_lines() {
    assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Some(Stream::Request));
    assert_eq!(detect(b"DELETE /x"), Some(Stream::Request));
    assert_eq!(detect(b"PROPFIND "), Some(Stream::Request));
    assert_eq!(detect(b"HTTP/1.1 200 OK"), Some(Stream::Response));
    assert_eq!(detect(b"HTTP/1.0 "), Some(Stream::Response));
    assert_eq!(detect(b"HTTP/2 200"), None);
    assert_eq!(detect(b"PRI * HTTP/2.0"), None);
    assert_eq!(detect(b"GET"), None);
    assert_eq!(detect(b"GETX /"), None);
    assert_eq!(detect(b"get / HTTP/1.1"), None);
    assert_eq!(detect(b""), None);
    assert_eq!(detect(b"\x16\x03\x01"), None);
}

#[test]
fn feed_after_close_starts_fresh() {
    let mut c = Conn::new();
    c.req(GET_A).close();
    assert_eq!(c.dec.take_stats().unpaired_requests, 1);
    c.req(GET_A).resp(OK_5);
    assert_eq!(c.take().len(), 1);
}

// ---- golden tests over recorded traffic (tests/fixtures/http1, see record.py) ----

const GOLDEN: Golden<Http1Decoder> = Golden {
    fixtures: "http1",
    at_least: 7,
    line: |x| format!("{} host={}", line(x), x.host.as_deref().unwrap_or("-")),
    state: |_| None,
    check: |_, _| {},
    splits_per_run: usize::MAX,
    // With a limit above every head, the same requests pair with the same statuses.
    limits: &[0, 1, 16, 64, 200, 1024],
    subset_from: None,
    key: |x| format!("{:?}", (&x.method, &x.path, x.status)),
};

testkit::golden_tests!(GOLDEN);

/// The same fixtures as the kernel's HTTP framing delivers them (heads and chunk-size lines
/// captured, bodies skipped), split at every byte.
#[test]
fn golden_fixtures_framed() {
    testkit::golden_fixtures_framed(&GOLDEN);
}

/// Rough throughput: `cargo test --release -p agent --lib http1::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let req = b"GET /api/v1/users/12345?expand=orders HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: keep-alive\r\n\r\n{\"id\":12345,\"name\":\"alice\"}";
    let mut dec = Http1Decoder::new();
    let mut out = Vec::with_capacity(1);
    let n = 1_000_000u64;
    let start = std::time::Instant::now();
    for i in 0..n {
        let rq = Chunk {
            stream: Stream::Request,
            first_ns: i,
            last_ns: i,
            bytes: req,
            len: req.len() as u64,
        };
        let rs = Chunk {
            stream: Stream::Response,
            bytes: resp,
            len: resp.len() as u64,
            ..rq
        };
        dec.feed(&rq, &mut out).unwrap();
        dec.feed(&rs, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.clear();
    }
    let per = start.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{per:.0} ns per request+response pair ({} + {} bytes)",
        req.len(),
        resp.len()
    );
}
