use super::*;
use crate::protocol::testkit::{self, Golden, Xorshift};

/// Big-endian message writer for hand-made frames.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn i8(mut self, v: i8) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn uvarint(mut self, mut v: u32) -> Self {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    /// Array/bytes length: compact (n + 1) or int32.
    fn len(self, flex: bool, n: usize) -> Self {
        if flex {
            self.uvarint(n as u32 + 1)
        } else {
            self.i32(n as i32)
        }
    }
    fn str(self, flex: bool, s: Option<&str>) -> Self {
        match (s, flex) {
            (None, true) => self.uvarint(0),
            (None, false) => self.i16(-1),
            (Some(s), true) => self.uvarint(s.len() as u32 + 1).raw(s.as_bytes()),
            (Some(s), false) => self.i16(s.len() as i16).raw(s.as_bytes()),
        }
    }
    fn tags(self, flex: bool) -> Self {
        if flex {
            self.uvarint(0)
        } else {
            self
        }
    }
    /// Prefixes the size.
    fn frame(self) -> Vec<u8> {
        let mut f = (self.0.len() as i32).to_be_bytes().to_vec();
        f.extend(self.0);
        f
    }
}

fn req(api: i16, ver: i16, corr: i32, client: Option<&str>) -> W {
    let w = W::default().i16(api).i16(ver).i32(corr);
    match apis::request_header_version(api, ver) {
        0 => w,
        1 => w.str(false, client),
        _ => w.str(false, client).tags(true),
    }
}

fn resp(api: i16, ver: i16, corr: i32) -> W {
    let w = W::default().i32(corr);
    if apis::response_header_version(api, ver) == 1 {
        w.tags(true)
    } else {
        w
    }
}

/// A magic v2 record batch header claiming `n` records, with a few payload bytes.
fn batch(n: i32) -> Vec<u8> {
    let mut b = W::default()
        .i64(0)
        .i32(0)
        .i32(0)
        .i8(2)
        .i32(0)
        .i16(0)
        .i32(n - 1)
        .i64(1)
        .i64(1)
        .i64(-1)
        .i16(-1)
        .i32(-1)
        .i32(n)
        .raw(&[0x11; 9])
        .0;
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b
}

/// Produce request: topics of (name, partitions of record counts per batch).
fn produce_req(ver: i16, corr: i32, acks: i16, topics: &[(&str, &[&[i32]])]) -> Vec<u8> {
    let flex = ver >= 9;
    let mut w = req(0, ver, corr, Some("producer-1"));
    if ver >= 3 {
        w = w.str(flex, None);
    }
    w = w.i16(acks).i32(30_000).len(flex, topics.len());
    for (name, parts) in topics {
        w = w.str(flex, Some(name)).len(flex, parts.len());
        for (i, batches) in parts.iter().enumerate() {
            let records: Vec<u8> = batches.iter().flat_map(|&n| batch(n)).collect();
            w = w
                .i32(i as i32)
                .len(flex, records.len())
                .raw(&records)
                .tags(flex);
        }
        w = w.tags(flex);
    }
    w.tags(flex).frame()
}

/// Produce response: topics of (name, partition error codes).
fn produce_resp(ver: i16, corr: i32, topics: &[(&str, &[i16])]) -> Vec<u8> {
    let flex = ver >= 9;
    let mut w = resp(0, ver, corr).len(flex, topics.len());
    for (name, errs) in topics {
        w = w.str(flex, Some(name)).len(flex, errs.len());
        for (i, &e) in errs.iter().enumerate() {
            w = w.i32(i as i32).i16(e).i64(42);
            if ver >= 2 {
                w = w.i64(-1);
            }
            if ver >= 5 {
                w = w.i64(0);
            }
            if ver >= 8 {
                w = w.len(flex, 0).str(flex, None);
            }
            w = w.tags(flex);
        }
        w = w.tags(flex);
    }
    w.i32(0).tags(flex).frame()
}

type Conn = testkit::Conn<KafkaDecoder>;

fn hex8(id: &[u8; 16]) -> String {
    id[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Compact view of an exchange, without timestamps.
fn line(x: &KafkaExchange) -> String {
    let topics: Vec<String> = x
        .topics
        .iter()
        .map(|t| {
            let mut s = t.name.clone().unwrap_or_else(|| "?".into());
            if let Some(id) = &t.topic_id {
                s += &format!("#{}", hex8(id));
            }
            format!(
                "{s} parts={} records={} err={}",
                t.partitions, t.record_count, t.error_code
            )
        })
        .collect();
    let mut s = format!(
        "{} v{} corr={} client={} err={}",
        x.api_name,
        x.api_version,
        x.correlation_id,
        x.client_id.as_deref().unwrap_or("-"),
        x.error_code
    );
    if let Some(acks) = x.acks {
        s += &format!(" acks={acks}");
    }
    if !topics.is_empty() {
        s += &format!(" topics=[{}]", topics.join(", "));
    }
    if !x.metadata_topics.is_empty() {
        let m: Vec<String> = x
            .metadata_topics
            .iter()
            .map(|(id, n)| format!("{}={n}", hex8(id)))
            .collect();
        s += &format!(" ids=[{}]", m.join(", "));
    }
    format!(
        "{s} req={} resp={} complete={}",
        x.request_bytes, x.response_bytes, x.complete
    )
}

fn lines(xs: &[KafkaExchange]) -> Vec<String> {
    xs.iter().map(line).collect()
}

#[test]
fn produce_non_flexible_and_flexible_pair_with_record_counts() {
    let mut c = Conn::new();
    let rq = produce_req(7, 1, 1, &[("orders", &[&[3], &[1, 4]])]);
    let rs = produce_resp(7, 1, &[("orders", &[0, 0])]);
    c.req(&rq).resp(&rs);
    let rq9 = produce_req(9, 2, -1, &[("orders", &[&[2]]), ("audit", &[&[1]])]);
    let rs9 = produce_resp(9, 2, &[("orders", &[0]), ("audit", &[6])]);
    c.req(&rq9).resp(&rs9);
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        [
            format!(
                "Produce v7 corr=1 client=producer-1 err=0 acks=1 topics=[orders parts=2 records=8 err=0] req={} resp={} complete=true",
                rq.len(),
                rs.len()
            ),
            format!(
                "Produce v9 corr=2 client=producer-1 err=6 acks=-1 topics=[orders parts=1 records=2 err=0, audit parts=1 records=1 err=6] req={} resp={} complete=true",
                rq9.len(),
                rs9.len()
            ),
        ]
    );
    assert_eq!((xs[0].start_ns, xs[0].end_ns), (10, 25));
    assert_eq!((xs[1].start_ns, xs[1].end_ns), (30, 45));
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn every_split_of_pipelined_frames_gives_the_same_exchanges() {
    let mut reqs = produce_req(9, 1, 1, &[("a", &[&[2]])]);
    reqs.extend(
        req(12, 4, 2, Some("c"))
            .raw(&[1, 0, 0, 0, 1, 2, b'm', 0])
            .frame(),
    );
    reqs.extend(produce_req(3, 3, 1, &[("b", &[&[5]])]));
    let mut resps = produce_resp(9, 1, &[("a", &[0])]);
    resps.extend(resp(12, 4, 2).i32(0).i16(27).tags(true).frame());
    resps.extend(produce_resp(3, 3, &[("b", &[0])]));
    let whole = {
        let mut c = Conn::new();
        c.req(&reqs).resp(&resps);
        lines(&c.take())
    };
    assert_eq!(whole.len(), 3);
    assert!(whole[1].starts_with("Heartbeat v4 corr=2 client=c err=27"));
    for stream_bytes in [Stream::Request, Stream::Response] {
        let bytes = if stream_bytes == Stream::Request {
            &reqs
        } else {
            &resps
        };
        for k in 0..=bytes.len() {
            for j in [k, (k + 7).min(bytes.len()), bytes.len()] {
                let mut c = Conn::new();
                let (a, rest) = bytes.split_at(k);
                let (b, d) = rest.split_at(j - k);
                if stream_bytes == Stream::Request {
                    c.req(a).req(b).req(d).resp(&resps);
                } else {
                    c.req(&reqs).resp(a).resp(b).resp(d);
                }
                assert_eq!(lines(&c.take()), whole, "split at {k}/{j}");
                assert_eq!(c.dec.take_stats(), DecoderStats::default());
            }
        }
    }
    // One byte at a time.
    let mut c = Conn::new();
    for b in reqs.chunks(1) {
        c.req(b);
    }
    for b in resps.chunks(1) {
        c.resp(b);
    }
    assert_eq!(lines(&c.take()), whole);
}

#[test]
fn pairs_by_correlation_id_and_counts_unknown_and_skipped() {
    let mut c = Conn::new();
    c.req(&produce_req(7, 10, 1, &[("a", &[&[1]])]))
        .req(&produce_req(7, 11, 1, &[("b", &[&[1]])]))
        .req(&produce_req(7, 12, 1, &[("c", &[&[1]])]));
    // An id nobody asked for.
    c.resp(&produce_resp(7, 99, &[("z", &[0])]));
    // 11 answered: 10 was skipped (a broker answers in order), so it is unpaired.
    c.resp(&produce_resp(7, 11, &[("b", &[0])]));
    let xs = c.take();
    assert_eq!(xs.len(), 1);
    assert_eq!(xs[0].correlation_id, 11);
    let stats = c.dec.take_stats();
    assert_eq!(
        (stats.unexpected_responses, stats.unpaired_requests),
        (1, 1)
    );
    c.close();
    assert_eq!(c.dec.take_stats().unpaired_requests, 1); // 12
}

#[test]
fn acks_zero_produce_is_emitted_without_a_response() {
    let mut c = Conn::new();
    let rq = produce_req(8, 5, 0, &[("fire", &[&[2]])]);
    c.req(&rq);
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        [format!(
            "Produce v8 corr=5 client=producer-1 err=0 acks=0 topics=[fire parts=1 records=2 err=0] req={} resp=0 complete=true",
            rq.len()
        )]
    );
    assert_eq!((xs[0].start_ns, xs[0].end_ns), (10, 15));
    c.close();
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn api_versions_response_uses_header_v0_even_when_flexible() {
    let mut c = Conn::new();
    // v3 request: header v2 (tagged fields), compact body strings.
    c.req(
        &req(18, 3, 1, Some("rdkafka"))
            .raw(&[4, b'l', b'i', b'b', 2, b'1', 0])
            .frame(),
    );
    // Response: correlation id then error_code directly (no header tagged fields).
    c.resp(
        &W::default()
            .i32(1)
            .i16(35)
            .uvarint(1)
            .i32(0)
            .tags(true)
            .frame(),
    );
    c.req(&req(18, 2, 2, Some("rdkafka")).frame());
    c.resp(
        &W::default()
            .i32(2)
            .i16(0)
            .i32(1)
            .i16(0)
            .i16(0)
            .i16(9)
            .i32(0)
            .frame(),
    );
    let xs = c.take();
    assert_eq!(xs[0].error_code, 35);
    assert_eq!(xs[0].api_name, "ApiVersions");
    assert_eq!(xs[1].error_code, 0);
    assert!(xs.iter().all(|x| x.complete));
}

/// Metadata v12 response naming topics by id, for the Fetch v13 tests.
fn metadata_v12(corr: i32, topics: &[(i16, &str, [u8; 16], usize)]) -> Vec<u8> {
    let f = true;
    let mut w = resp(3, 12, corr)
        .i32(0)
        .len(f, 1)
        .i32(1)
        .str(f, Some("localhost"))
        .i32(9092)
        .str(f, None)
        .tags(f)
        .str(f, Some("cluster"))
        .i32(1)
        .len(f, topics.len());
    for &(err, name, id, parts) in topics {
        w = w.i16(err).str(f, Some(name)).raw(&id).i8(0).len(f, parts);
        for p in 0..parts {
            w = w
                .i16(0)
                .i32(p as i32)
                .i32(1)
                .i32(0)
                .len(f, 1)
                .i32(1)
                .len(f, 1)
                .i32(1)
                .len(f, 0)
                .tags(f);
        }
        w = w.i32(-2147483648).tags(f);
    }
    w.tags(f).frame()
}

#[test]
fn metadata_and_fetch_by_topic_id() {
    let id = [0xab; 16];
    let mut c = Conn::new();
    // Metadata v12 request for "orders" (topic id zero, name set).
    c.req(
        &req(3, 12, 1, Some("cons"))
            .len(true, 1)
            .raw(&[0; 16])
            .str(true, Some("orders"))
            .tags(true)
            .i8(1)
            .i8(0)
            .tags(true)
            .frame(),
    );
    c.resp(&metadata_v12(
        1,
        &[(0, "orders", id, 3), (3, "missing", [0; 16], 0)],
    ));
    // Fetch v13 by topic id, two partitions; response with 2 batches (3 + 4 records) in one.
    let f = true;
    let fetch = req(1, 13, 2, Some("cons"))
        .i32(-1)
        .i32(500)
        .i32(1)
        .i32(50 << 20)
        .i8(0)
        .i32(0)
        .i32(-1)
        .len(f, 1)
        .raw(&id)
        .len(f, 2);
    let mut fetch = fetch;
    for p in 0..2 {
        fetch = fetch
            .i32(p)
            .i32(0)
            .i64(0)
            .i32(-1)
            .i64(-1)
            .i32(1 << 20)
            .tags(f);
    }
    let fetch = fetch.tags(f).len(f, 0).str(f, Some("")).tags(f).frame();
    c.req(&fetch);
    let mut records = batch(3);
    records.extend(batch(4));
    let mut w = resp(1, 13, 2)
        .i32(0)
        .i16(0)
        .i32(7)
        .len(f, 1)
        .raw(&id)
        .len(f, 2);
    for (p, err, recs) in [(0, 0i16, &records[..]), (1, 1, &[][..])] {
        w = w
            .i32(p)
            .i16(err)
            .i64(7)
            .i64(7)
            .i64(0)
            .len(f, 0)
            .i32(-1)
            .len(f, recs.len())
            .raw(recs)
            .tags(f);
    }
    let fetch_resp = w.tags(f).tags(f).frame();
    c.resp(&fetch_resp);
    let xs = c.take();
    let ls = lines(&xs);
    assert!(
        ls[0].contains(
            "err=3 topics=[orders#abababab parts=3 records=0 err=0, missing parts=0 records=0 err=3] ids=[abababab=orders]"
        ),
        "{}",
        ls[0]
    );
    assert_eq!(xs[0].metadata_topics, vec![(id, "orders".to_owned())]);
    assert!(
        ls[1].contains(
            "Fetch v13 corr=2 client=cons err=1 topics=[orders#abababab parts=2 records=7 err=1]"
        ),
        "{}",
        ls[1]
    );

    // Same Fetch response cut by a gap inside the records: header and first topic known,
    // but decoding ran out of captured bytes, so it is incomplete.
    c.req(&fetch.clone());
    let cut = fetch_resp.len() - 40;
    c.resp_gap(&fetch_resp[..cut], 40);
    let xs = c.take();
    assert!(!xs[0].complete);
    assert_eq!(xs[0].response_bytes, fetch_resp.len() as u64);
    assert_eq!(xs[0].topics[0].partitions, 2);
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn group_coordination_error_codes() {
    let mut c = Conn::new();
    // FindCoordinator v2 (top-level error) and v4 (coordinators[]).
    c.req(
        &req(10, 2, 1, Some("g"))
            .str(false, Some("grp"))
            .i8(0)
            .frame(),
    );
    c.resp(
        &resp(10, 2, 1)
            .i32(0)
            .i16(15)
            .str(false, None)
            .i32(-1)
            .str(false, Some(""))
            .i32(-1)
            .frame(),
    );
    c.req(
        &req(10, 4, 2, Some("g"))
            .i8(0)
            .len(true, 1)
            .str(true, Some("grp"))
            .tags(true)
            .frame(),
    );
    c.resp(
        &resp(10, 4, 2)
            .i32(0)
            .len(true, 1)
            .str(true, Some("grp"))
            .i32(1)
            .str(true, Some("h"))
            .i32(9092)
            .i16(14)
            .str(true, None)
            .tags(true)
            .tags(true)
            .frame(),
    );
    // JoinGroup v5 (throttle, error), SyncGroup v3, LeaveGroup v0 (no throttle).
    c.req(&req(11, 5, 3, Some("g")).frame());
    c.resp(&resp(11, 5, 3).i32(0).i16(79).frame());
    c.req(&req(14, 3, 4, Some("g")).frame());
    c.resp(&resp(14, 3, 4).i32(0).i16(27).frame());
    c.req(&req(13, 0, 5, Some("g")).frame());
    c.resp(&resp(13, 0, 5).i16(25).frame());
    // DescribeGroups: body not decoded.
    c.req(&req(15, 5, 6, Some("g")).frame());
    c.resp(&resp(15, 5, 6).i32(0).i16(16).frame());
    let got: Vec<(&str, i16)> = c
        .take()
        .iter()
        .map(|x| (x.api_name, x.error_code))
        .collect();
    assert_eq!(
        got,
        [
            ("FindCoordinator", 15),
            ("FindCoordinator", 14),
            ("JoinGroup", 79),
            ("SyncGroup", 27),
            ("LeaveGroup", 25),
            ("DescribeGroups", 0),
        ]
    );
}

#[test]
fn offsets_commit_fetch_and_list() {
    let mut c = Conn::new();
    // OffsetCommit v2: group, generation, member, retention, topics.
    c.req(
        &req(8, 2, 1, Some("g"))
            .str(false, Some("grp"))
            .i32(1)
            .str(false, Some("m"))
            .i64(-1)
            .i32(1)
            .str(false, Some("orders"))
            .i32(2)
            .i32(0)
            .i64(5)
            .str(false, Some(""))
            .i32(1)
            .i64(6)
            .str(false, None)
            .frame(),
    );
    c.resp(
        &resp(8, 2, 1)
            .i32(1)
            .str(false, Some("orders"))
            .i32(2)
            .i32(0)
            .i16(0)
            .i32(1)
            .i16(22)
            .frame(),
    );
    // OffsetFetch v8 (groups[]), all topics (null): partitions come from the response.
    let f = true;
    c.req(
        &req(9, 8, 2, Some("g"))
            .len(f, 1)
            .str(f, Some("grp"))
            .uvarint(0)
            .tags(f)
            .i8(0)
            .tags(f)
            .frame(),
    );
    c.resp(
        &resp(9, 8, 2)
            .i32(0)
            .len(f, 1)
            .str(f, Some("grp"))
            .len(f, 1)
            .str(f, Some("orders"))
            .len(f, 2)
            .i32(0)
            .i64(5)
            .i32(-1)
            .str(f, Some(""))
            .i16(0)
            .tags(f)
            .i32(1)
            .i64(-1)
            .i32(-1)
            .str(f, Some(""))
            .i16(0)
            .tags(f)
            .tags(f)
            .i16(0)
            .tags(f)
            .tags(f)
            .frame(),
    );
    // OffsetFetch v1: topics, no top-level error.
    c.req(
        &req(9, 1, 3, Some("g"))
            .str(false, Some("grp"))
            .i32(1)
            .str(false, Some("t"))
            .i32(1)
            .i32(0)
            .frame(),
    );
    c.resp(
        &resp(9, 1, 3)
            .i32(1)
            .str(false, Some("t"))
            .i32(1)
            .i32(0)
            .i64(-1)
            .str(false, Some(""))
            .i16(3)
            .frame(),
    );
    // ListOffsets v1.
    c.req(
        &req(2, 1, 4, Some("g"))
            .i32(-1)
            .i32(1)
            .str(false, Some("orders"))
            .i32(1)
            .i32(0)
            .i64(-2)
            .frame(),
    );
    c.resp(
        &resp(2, 1, 4)
            .i32(1)
            .str(false, Some("orders"))
            .i32(1)
            .i32(0)
            .i16(6)
            .i64(-1)
            .i64(0)
            .frame(),
    );
    let ls: Vec<String> = c
        .take()
        .iter()
        .map(|x| line(x).split(" req=").next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        ls,
        [
            "OffsetCommit v2 corr=1 client=g err=22 topics=[orders parts=2 records=0 err=22]",
            "OffsetFetch v8 corr=2 client=g err=0 topics=[orders parts=2 records=0 err=0]",
            "OffsetFetch v1 corr=3 client=g err=3 topics=[t parts=1 records=0 err=3]",
            "ListOffsets v1 corr=4 client=g err=6 topics=[orders parts=1 records=0 err=6]",
        ]
    );
}

#[test]
fn gap_inside_a_request_keeps_the_decoded_prefix() {
    let rq = produce_req(7, 1, 1, &[("orders", &[&[3], &[4]])]);
    // Capture holds the header and the first partition's batch header only.
    let keep = rq.len() - 50;
    let mut c = Conn::new();
    c.req_gap(&rq[..keep], (rq.len() - keep) as u64);
    c.resp(&produce_resp(7, 1, &[("orders", &[0, 0])]));
    let xs = c.take();
    assert_eq!(xs.len(), 1);
    assert_eq!(xs[0].topics[0].record_count, 3);
    assert_eq!(xs[0].topics[0].partitions, 2); // from the response
    assert_eq!(xs[0].request_bytes, rq.len() as u64);
    // The second partition's records were not seen: the count is not exact, and says so.
    assert!(!xs[0].complete);
    assert_eq!(c.dec.take_stats(), DecoderStats::default());

    // The gap also covers the start of the next request: framing is lost until a chunk
    // begins with a request again.
    let mut c = Conn::new();
    let next = produce_req(7, 2, 1, &[("orders", &[&[1]])]);
    c.req_gap(&rq[..keep], (rq.len() - keep + 20) as u64);
    c.req(&next[20..]); // tail of the lost request: discarded
    c.req(&produce_req(7, 3, 1, &[("orders", &[&[1]])]));
    c.resp(&produce_resp(7, 1, &[("orders", &[0, 0])]));
    c.resp(&produce_resp(7, 2, &[("orders", &[0])]));
    c.resp(&produce_resp(7, 3, &[("orders", &[0])]));
    let ids: Vec<i32> = c.take().iter().map(|x| x.correlation_id).collect();
    assert_eq!(ids, [1, 3]);
    let stats = c.dec.take_stats();
    assert_eq!(
        (
            stats.resyncs,
            stats.truncated_headers,
            stats.unexpected_responses
        ),
        (1, 1, 1)
    );
}

#[test]
fn response_framing_lost_in_a_gap_resyncs_on_a_pending_id() {
    let mut c = Conn::new();
    for id in 1..=3 {
        c.req(&produce_req(7, id, 1, &[("t", &[&[1]])]));
    }
    let r1 = produce_resp(7, 1, &[("t", &[0])]);
    // r1's first 10 bytes captured, then a gap covering r1 and 5 bytes of r2.
    c.resp_gap(&r1[..10], (r1.len() - 10 + 5) as u64);
    let r2 = produce_resp(7, 2, &[("t", &[0])]);
    c.resp(&r2[5..]); // garbage for the decoder: skipped
    c.resp(&produce_resp(7, 3, &[("t", &[0])]));
    let xs = c.take();
    assert_eq!(
        xs.iter()
            .map(|x| (x.correlation_id, x.complete))
            .collect::<Vec<_>>(),
        [(1, false), (3, true)]
    );
    let stats = c.dec.take_stats();
    // 2 dropped when framing was lost.
    assert_eq!(
        (
            stats.resyncs,
            stats.truncated_headers,
            stats.unpaired_requests
        ),
        (1, 1, 1)
    );
}

#[test]
fn close_cuts_a_response_and_counts_unpaired() {
    let mut c = Conn::new();
    c.req(&produce_req(7, 1, 1, &[("t", &[&[1]])]));
    c.req(&produce_req(7, 2, 1, &[("t", &[&[1]])]));
    let r1 = produce_resp(7, 1, &[("t", &[0])]);
    c.resp(&r1[..10]);
    c.close();
    let xs = c.take();
    assert_eq!(xs.len(), 1);
    assert!(!xs[0].complete);
    assert_eq!(xs[0].end_ns, 40); // close time, later than the chunk
    assert_eq!(c.dec.take_stats().unpaired_requests, 1);
    // Reusable after close.
    c.req(&produce_req(7, 1, 1, &[("t", &[&[1]])])).resp(&r1);
    assert_eq!(c.take().len(), 1);
}

#[test]
fn memory_caps() {
    // Pending queue.
    let mut c = Conn::new();
    for id in 0..(MAX_PENDING as i32 + 5) {
        c.req(&req(12, 0, id, None).frame());
    }
    assert_eq!(c.dec.pending.len(), MAX_PENDING);
    assert_eq!(c.dec.take_stats().unpaired_requests, 5);

    // Topics per exchange.
    let names: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
    let parts: &[&[i32]] = &[&[1]];
    let topics: Vec<(&str, &[&[i32]])> = names.iter().map(|n| (n.as_str(), parts)).collect();
    let mut c = Conn::new();
    c.req(&produce_req(7, 1, 0, &topics));
    assert_eq!(c.take()[0].topics.len(), MAX_TOPICS);

    // A frame larger than the buffer, in chunks: decoded from the kept prefix.
    let big: Vec<i32> = vec![1; 30_000];
    let rq = produce_req(7, 1, 1, &[("big", &[&big[..]])]);
    assert!(rq.len() > MAX_FRAME_BUFFER);
    let mut c = Conn::new();
    for part in rq.chunks(64 * 1024) {
        c.req(part);
    }
    assert!(c.dec.req.buf.capacity() <= KEEP_BUFFER_CAPACITY);
    c.resp(&produce_resp(7, 1, &[("big", &[0])]));
    let xs = c.take();
    let counted = xs[0].topics[0].record_count;
    assert!(counted > 10_000 && counted < 30_000, "{counted}");
    assert!(!xs[0].complete);
    assert_eq!(xs[0].request_bytes, rq.len() as u64);
}

#[test]
fn detect_accepts_kafka_and_rejects_others() {
    let produce = produce_req(9, 1, 1, &[("t", &[&[1]])]);
    assert_eq!(detect(&produce), Some(Stream::Request));
    assert_eq!(detect(&produce[..14]), Some(Stream::Request));
    assert_eq!(detect(&produce[..13]), None);
    assert_eq!(detect(&req(18, 3, 0, None).frame()), Some(Stream::Request));
    assert_eq!(detect(&req(7, 0, 0, None).frame()), Some(Stream::Request));
    assert_eq!(detect(b"GET / HTTP/1.1\r\n"), None);
    assert_eq!(detect(b"POST /x HTTP/1.1\r\n"), None);
    assert_eq!(
        detect(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        None
    );
    // Postgres StartupMessage, SSLRequest, CancelRequest.
    let mut pg = W::default()
        .i32(0x0003_0000)
        .raw(b"user\0postgres\0database\0app\0\0")
        .0;
    let mut startup = ((pg.len() + 4) as i32).to_be_bytes().to_vec();
    startup.append(&mut pg);
    assert_eq!(detect(&startup), None);
    // The longest user name Postgres allows (63 bytes): the client id length read from it
    // (0x00, 'a') still overruns the frame.
    let pg_long_user = [
        &[0, 0, 0, 78][..],
        &[0, 3, 0, 0],
        b"user\0a",
        &[b'x'; 62],
        b"\0\0",
    ]
    .concat();
    assert_eq!(detect(&pg_long_user), None);
    assert_eq!(detect(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]), None);
    assert_eq!(
        detect(&[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0]),
        None
    );
    // Unknown key, absurd version, bad client id length, empty.
    assert_eq!(detect(&req(75, 0, 0, None).frame()), None);
    assert_eq!(detect(&req(0, 25, 0, None).frame()), None);
    assert_eq!(
        detect(&W::default().i16(0).i16(9).i32(0).i16(-2).frame()),
        None
    );
    assert_eq!(
        detect(&W::default().i16(0).i16(9).i32(0).i16(100).frame()),
        None
    );
    assert_eq!(detect(b""), None);
}

#[test]
fn garbage_is_rejected_and_the_error_sticks() {
    let mut c = Conn::new();
    assert_eq!(
        c.feed(Stream::Request, b"GET / HTTP/1.1\r\n\r\n", 0),
        Err(NOT_KAFKA)
    );
    assert_eq!(
        c.feed(Stream::Request, &req(12, 0, 1, None).frame(), 0),
        Err(NOT_KAFKA)
    );
    let mut c = Conn::new();
    assert_eq!(
        c.feed(Stream::Request, &req(99, 0, 1, None).frame(), 0),
        Err(NOT_KAFKA)
    );
    // After a good frame, faults are Malformed.
    let mut c = Conn::new();
    c.req(&req(12, 0, 1, None).frame());
    let e = c.feed(Stream::Request, &[0xff, 0xff, 0xff, 0xff], 0);
    assert_eq!(e, Err(DecodeError::Malformed("bad_frame_size")));
    assert_eq!(e.unwrap_err().reason(), "bad_frame_size");
    let mut c = Conn::new();
    c.req(&req(12, 0, 1, None).frame());
    let e = c.feed(
        Stream::Request,
        &W::default().i16(-3).i16(0).i32(2).frame(),
        0,
    );
    assert_eq!(e, Err(DecodeError::Malformed("bad_request_header")));
    // Client id longer than its frame.
    let mut c = Conn::new();
    let e = c.feed(
        Stream::Request,
        &W::default().i16(12).i16(0).i32(2).i16(50).frame(),
        0,
    );
    assert_eq!(e, Err(NOT_KAFKA));
    assert_eq!(NOT_KAFKA.reason(), "not_kafka");
    // Unknown API key after sync: an exchange named Unknown.
    let mut c = Conn::new();
    c.req(&req(12, 0, 1, None).frame())
        .req(&req(300, 1, 2, Some("x")).i32(7).frame());
    c.resp(&resp(12, 0, 1).i16(0).frame())
        .resp(&resp(300, 1, 2).i32(0).frame());
    let xs = c.take();
    assert_eq!(
        (xs[1].api_name, xs[1].api_key, xs[1].error_code),
        ("Unknown", 300, 0)
    );
}

#[test]
fn random_input_never_panics() {
    let mut rng = Xorshift(0x1234_5678_9abc_def0u64);
    let valid = produce_req(9, 1, 1, &[("t", &[&[2]])]);
    let valid_resp = produce_resp(9, 1, &[("t", &[0])]);
    for round in 0..3000 {
        let mut dec = KafkaDecoder::new();
        let mut out = Vec::new();
        for t in 0..20u64 {
            let mut bytes: Vec<u8> = match rng.u64() % 3 {
                0 => valid.clone(),
                1 => valid_resp.clone(),
                _ => (0..rng.u64() % 64).map(|_| rng.u64() as u8).collect(),
            };
            if !bytes.is_empty() && round % 2 == 0 {
                let i = (rng.u64() as usize) % bytes.len();
                bytes[i] = rng.u64() as u8;
            }
            let cut = (rng.u64() as usize) % (bytes.len() + 1);
            let _ = dec.feed(&rng.chunk(t, &bytes[..cut], 4), &mut out);
        }
        dec.close(1000, &mut out);
        for x in &out {
            assert!(x.end_ns >= x.start_ns);
            assert!(x.topics.len() <= MAX_TOPICS);
        }
    }
}

// ---- golden tests over recorded traffic (tests/fixtures/kafka, see record.py) ----

const GOLDEN: Golden<KafkaDecoder> = Golden {
    fixtures: "kafka",
    at_least: 10,
    line,
    state: |_| None,
    check: |f, d| {
        // Clients close with requests in flight (a consumer's pending Fetch): unpaired is
        // expected there, but nothing else.
        assert_eq!(
            (d.stats.resyncs, d.stats.truncated_headers),
            (0, 0),
            "{}",
            f.name
        );
        assert_eq!(d.stats.unexpected_responses, 0, "{}", f.name);
        assert!(d.exchanges.iter().all(|x| x.complete), "{}", f.name);
    },
    splits_per_run: usize::MAX,
    // With a limit above every frame header, the same requests pair in the same order; from
    // 64 on, chunks holding several frames lose the later ones to the gap, the rest pair.
    limits: &[0, 1, 4, 16, 64, 200, 1024],
    subset_from: Some(64),
    key: |x| format!("{:?}", (x.api_key, x.api_version, x.correlation_id)),
};

testkit::golden_tests!(GOLDEN);

/// The same fixtures as the kernel's message walk delivers them.
#[test]
fn golden_fixtures_framed() {
    testkit::golden_fixtures_framed(&GOLDEN);
}

/// What the clients did, checked against the decoded fixtures independently of the goldens.
#[test]
fn golden_fixtures_match_what_the_clients_did() {
    let fixtures = GOLDEN.load();
    let decode = |prefix: &str| -> Vec<KafkaExchange> {
        fixtures
            .iter()
            .filter(|f| f.name.starts_with(prefix))
            .flat_map(|f| GOLDEN.decode(&testkit::slices(&f.chunks)).exchanges)
            .collect()
    };
    let produced = |xs: &[KafkaExchange]| -> u64 {
        xs.iter()
            .filter(|x| x.api_key == 0 && x.error_code == 0)
            .flat_map(|x| &x.topics)
            .filter(|t| t.name.as_deref() == Some("orders"))
            .map(|t| t.record_count)
            .sum()
    };
    let py = decode("kafkapy_produce_5");
    assert_eq!(produced(&py), 5);
    assert_eq!(py.iter().filter(|x| x.api_key == 0).count(), 5); // one Produce per get()
    assert!(py
        .iter()
        .filter(|x| x.api_key == 0)
        .all(|x| x.acks == Some(1)));
    assert_eq!(produced(&decode("rdkafka_produce_3")), 3);

    let errors = decode("kafkapy_errors");
    let summary: Vec<(&str, i16, Option<i16>)> = errors
        .iter()
        .map(|x| (x.api_name, x.error_code, x.acks))
        .collect();
    assert_eq!(
        summary,
        [
            ("Metadata", 3, None),
            ("Produce", 3, Some(1)),
            ("Produce", 0, Some(0)),
            ("Metadata", 0, None),
        ]
    );
    assert_eq!(errors[1].topics[0].record_count, 2);

    let v4 = decode("raw_apiversions_v4");
    assert_eq!((v4[0].api_version, v4[0].error_code), (4, 35));

    // Consumers fetched what was produced: 5 + 3 + 1 (acks=0) records in "orders".
    for (prefix, at_least) in [("kafkapy_consume_group", 5), ("rdkafka_consume_group", 9)] {
        let xs = decode(prefix);
        let fetched: u64 = xs
            .iter()
            .filter(|x| x.api_key == 1)
            .flat_map(|x| &x.topics)
            .map(|t| t.record_count)
            .sum();
        assert!(fetched >= at_least, "{prefix}: {fetched}");
        for api in [
            "FindCoordinator",
            "JoinGroup",
            "SyncGroup",
            "OffsetCommit",
            "Fetch",
        ] {
            assert!(xs.iter().any(|x| x.api_name == api), "{prefix}: no {api}");
        }
    }
}

/// The node-wide registry: a Metadata exchange on one connection names the topic ids a Fetch
/// on another carries alone; names already known are kept; the registry is bounded.
#[test]
fn topic_names_learnt_from_metadata_name_fetches_elsewhere() {
    let exchange = |metadata: Vec<([u8; 16], String)>, topics: Vec<TopicStats>| KafkaExchange {
        api_key: 0,
        api_name: "x",
        api_version: 0,
        correlation_id: 0,
        client_id: None,
        topics,
        acks: None,
        error_code: 0,
        metadata_topics: metadata,
        start_ns: 0,
        end_ns: 0,
        request_bytes: 0,
        response_bytes: 0,
        complete: true,
    };
    let topic = |name: Option<&str>, id: [u8; 16]| TopicStats {
        name: name.map(str::to_owned),
        topic_id: Some(id),
        partitions: 1,
        record_count: 0,
        error_code: 0,
    };
    let mut names = TopicNames::default();
    let mut fetch = exchange(
        Vec::new(),
        vec![topic(None, [1; 16]), topic(Some("kept"), [2; 16])],
    );
    names.learn_and_resolve(&mut fetch);
    assert_eq!(fetch.topics[0].name, None, "nothing learnt yet");
    let mut metadata = exchange(
        vec![([1; 16], "orders".into()), ([2; 16], "other".into())],
        Vec::new(),
    );
    names.learn_and_resolve(&mut metadata);
    names.learn_and_resolve(&mut fetch);
    assert_eq!(fetch.topics[0].name.as_deref(), Some("orders"));
    assert_eq!(fetch.topics[1].name.as_deref(), Some("kept"));
    // Bounded: when full, everything learnt is dropped and relearnt.
    let mut names = TopicNames::default();
    let mut many = exchange(
        (0..MAX_TOPIC_NAMES as u32 + 1)
            .map(|i| {
                let mut id = [0; 16];
                id[..4].copy_from_slice(&i.to_be_bytes());
                (id, format!("t{i}"))
            })
            .collect(),
        Vec::new(),
    );
    names.learn_and_resolve(&mut many);
    assert_eq!(names.len(), 1, "the last one, learnt after the drop");
}

/// A record batch of `n` records with `pad` payload bytes.
fn fat_batch(n: i32, pad: usize) -> Vec<u8> {
    let mut b = batch(n);
    b.extend(std::iter::repeat_n(0x5a, pad));
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b
}

/// A legacy (magic 1) message: one record.
fn legacy_message(pad: usize) -> Vec<u8> {
    let mut m = W::default()
        .i64(0)
        .i32(0)
        .i32(0)
        .i8(1)
        .i8(0)
        .i64(1)
        .i32(-1)
        .0;
    m.extend(std::iter::repeat_n(0x33, pad));
    let len = (m.len() - 12) as i32;
    m[8..12].copy_from_slice(&len.to_be_bytes());
    m
}

/// A topics array of one topic, "bulk" (or, from v13, its id), for Fetch and Produce of
/// version `v`; its partitions follow.
fn bulk_topic(w: W, v: i16, flex: bool, id: [u8; 16]) -> W {
    let w = w.len(flex, 1);
    if v >= 13 {
        w.raw(&id)
    } else {
        w.str(flex, Some("bulk"))
    }
}

/// A Fetch request of version `v` for partitions 0..3 of topic "bulk" (or its id).
fn fetch_request(v: i16, corr: i32, id: [u8; 16]) -> Vec<u8> {
    let f = v >= 12;
    let mut w = req(1, v, corr, Some("c")).i32(-1).i32(500).i32(1);
    if v >= 3 {
        w = w.i32(50 << 20);
    }
    if v >= 4 {
        w = w.i8(0);
    }
    if v >= 7 {
        w = w.i32(0).i32(-1);
    }
    w = bulk_topic(w, v, f, id).len(f, 3);
    for p in 0..3 {
        w = w.i32(p);
        if v >= 9 {
            w = w.i32(-1);
        }
        w = w.i64(0);
        if v >= 12 {
            w = w.i32(-1);
        }
        if v >= 5 {
            w = w.i64(-1);
        }
        w = w.i32(8 << 20).tags(f);
    }
    w = w.tags(f);
    if v >= 7 {
        w = w.len(f, 0);
    }
    if v >= 11 {
        w = w.str(f, Some(""));
    }
    w.tags(f).frame()
}

/// The Fetch response: partition 0 holds 40 batches of 5 records and a partial batch (not
/// counted), partition 1 nothing, partition 2 ten batches of 3 (or, before magic v2 existed
/// for the client, 30 legacy messages); 230 records. Aborted transactions and, in flexible
/// versions, tagged fields with data, in every place they may be.
fn fetch_response(v: i16, corr: i32, id: [u8; 16], legacy: bool) -> Vec<u8> {
    let f = v >= 12;
    let tagged = |w: W| {
        if f {
            w.uvarint(1).uvarint(7).uvarint(3).raw(b"tag")
        } else {
            w
        }
    };
    let mut w = tagged(W::default().i32(corr));
    if v >= 1 {
        w = w.i32(0);
    }
    if v >= 7 {
        w = w.i16(0).i32(7);
    }
    w = bulk_topic(w, v, f, id).len(f, 3);
    let mut big = Vec::new();
    for _ in 0..40 {
        big.extend(fat_batch(5, 200));
    }
    big.extend(&fat_batch(7, 100)[..90]);
    let mut small = Vec::new();
    if legacy {
        for _ in 0..30 {
            small.extend(legacy_message(20));
        }
    } else {
        for _ in 0..10 {
            small.extend(fat_batch(3, 50));
        }
    }
    for (p, records) in [(0, &big[..]), (1, &[][..]), (2, &small[..])] {
        w = w.i32(p).i16(0).i64(1000);
        if v >= 4 {
            w = w.i64(1000);
        }
        if v >= 5 {
            w = w.i64(0);
        }
        if v >= 4 {
            w = w.len(f, 2);
            for t in 0..2 {
                w = tagged(w.i64(t).i64(t * 10));
            }
        }
        if v >= 11 {
            w = w.i32(-1);
        }
        w = tagged(w.len(f, records.len()).raw(records));
    }
    tagged(tagged(w)).frame()
}

/// Records a conversation's exchanges counted, over all topics, and whether each was
/// complete.
fn fetched(xs: &[KafkaExchange]) -> Vec<(u64, bool)> {
    xs.iter()
        .filter(|x| x.api_key == apis::FETCH)
        .map(|x| (x.topics.iter().map(|t| t.record_count).sum(), x.complete))
        .collect()
}

#[test]
fn fetch_records_are_exact_at_any_size_when_the_kernel_walks_them() {
    let id = [0xcd; 16];
    for (v, legacy) in [
        (0, true),
        (3, true),
        (4, false),
        (7, false),
        (11, false),
        (12, false),
        (13, false),
        (16, false),
        (17, false),
    ] {
        let request = fetch_request(v, 9, id);
        let response = fetch_response(v, 9, id, legacy);
        assert!(response.len() > 10_000);
        // Captured by prefix (4 KiB), the records past it are not counted: the exchange says
        // so.
        let mut c = Conn::new();
        c.req(&request);
        c.resp_gap(&response[..4096], response.len() as u64 - 4096);
        let got = fetched(&c.take());
        assert!(
            got.len() == 1 && got[0].0 < 230 && !got[0].1,
            "v{v} by prefix: {got:?}"
        );
        // Walked by the kernel: exact, whatever the syscalls' sizes and the head size.
        let n = response.len();
        let mut cuts: Vec<Vec<usize>> = vec![vec![]];
        for k in (1..n).filter(|k| *k < 400 || *k > n - 400 || k % 11 == 0) {
            cuts.push(vec![k]);
        }
        for k in (1..n - 61).step_by(97) {
            cuts.push(vec![k, k + 1 + k % 60]);
        }
        for cut in &cuts {
            let mut syscalls = vec![(Stream::Request, &request[..])];
            let mut from = 0;
            for &k in cut.iter().chain([n].iter()) {
                syscalls.push((Stream::Response, &response[from..k]));
                from = k;
            }
            for cap in [16, 4080] {
                let got = testkit::decode_framed::<KafkaDecoder>(&syscalls, cap)
                    .unwrap_or_else(|e| panic!("v{v} cut {cut:?} cap {cap}: {e}"));
                assert_eq!(
                    fetched(&got.exchanges),
                    vec![(230, true)],
                    "v{v} cut {cut:?} cap {cap}"
                );
                assert_eq!(got.stats, DecoderStats::default(), "v{v} cut {cut:?}");
            }
        }
    }
}

#[test]
fn fetch_responses_pipelined_after_other_requests_are_walked_by_correlation_id() {
    // Two Fetch requests in flight with a Metadata between them, all answered in one read,
    // then a Produce: each Fetch is counted exactly, nothing else is disturbed.
    let id = [0xcd; 16];
    let mut requests = fetch_request(11, 1, id);
    requests.extend(req(3, 1, 2, Some("c")).len(false, 0).frame());
    requests.extend(fetch_request(11, 3, id));
    let mut responses = fetch_response(11, 1, id, false);
    responses.extend(resp(3, 1, 2).len(false, 0).i32(-1).len(false, 0).frame());
    responses.extend(fetch_response(11, 3, id, false));
    let produce = produce_req(3, 4, 1, &[("bulk", &[&[2, 3]])]);
    let produced = produce_resp(3, 4, &[("bulk", &[0])]);
    let syscalls = vec![
        (Stream::Request, &requests[..]),
        (Stream::Response, &responses[..]),
        (Stream::Request, &produce[..]),
        (Stream::Response, &produced[..]),
    ];
    let got = testkit::decode_framed::<KafkaDecoder>(&syscalls, 4080).unwrap();
    assert_eq!(fetched(&got.exchanges), vec![(230, true), (230, true)]);
    assert_eq!(got.exchanges.len(), 4);
    assert_eq!(got.stats, DecoderStats::default());
}

#[test]
fn records_runs_that_do_not_fit_the_frame_are_gaps() {
    // A run where no Fetch response is being received, or longer than the frame's rest, is a
    // capture gap: never a count.
    let run = Run {
        stream: Stream::Response,
        first_ns: 1,
        last_ns: 1,
        kind: RECORDS_RUN,
        count: 5,
        bytes: 100,
    };
    let request = fetch_request(11, 1, [0; 16]);
    let response = fetch_response(11, 1, [0; 16], false);
    let mut c = Conn::new();
    c.req(&request).resp(&response[..60]);
    let over = Run {
        bytes: response.len() as u64,
        ..run
    };
    c.dec.skipped(&over, &mut c.out).unwrap();
    // Between frames: a gap in the response stream (framing lost), not a count.
    c.dec.skipped(&run, &mut c.out).unwrap();
    c.close();
    let out = c.take();
    assert_eq!(fetched(&out), vec![(0, false)]);
}

/// A Produce request of version `v` to topic "bulk" (or its id): partition 0 holds 40
/// batches of 5 records, partition 1 ten of 3; 230 records, ~12 KB.
fn big_produce_request(v: i16, corr: i32, id: [u8; 16]) -> Vec<u8> {
    let f = v >= 9;
    let mut w = req(0, v, corr, Some("p"));
    if v >= 3 {
        w = w.str(f, None);
    }
    w = bulk_topic(w.i16(1).i32(30_000), v, f, id).len(f, 2);
    let big: Vec<u8> = (0..40).flat_map(|_| fat_batch(5, 200)).collect();
    let small: Vec<u8> = (0..10).flat_map(|_| fat_batch(3, 50)).collect();
    for (p, records) in [(0, &big), (1, &small)] {
        w = w.i32(p).len(f, records.len()).raw(records).tags(f);
    }
    w.tags(f).tags(f).frame()
}

#[test]
fn produce_records_are_exact_at_any_size_when_the_kernel_walks_them() {
    let id = [0xcd; 16];
    for v in [2, 3, 7, 8, 9, 12, 13] {
        let request = big_produce_request(v, 4, id);
        let response = produce_resp(v, 4, &[("bulk", &[0, 0])]);
        let sent = |xs: &[KafkaExchange]| -> Vec<(u64, bool)> {
            xs.iter()
                .map(|x| (x.topics.iter().map(|t| t.record_count).sum(), x.complete))
                .collect()
        };
        // By prefix: the second partition is past the capture, and the exchange says so.
        let mut c = Conn::new();
        c.req_gap(&request[..4096], request.len() as u64 - 4096);
        c.resp(&response);
        let got = sent(&c.take());
        assert!(
            got.len() == 1 && got[0].0 < 230 && !got[0].1,
            "v{v}: {got:?}"
        );
        let n = request.len();
        for k in (1..n).filter(|k| *k < 300 || *k > n - 300 || k % 13 == 0) {
            let syscalls = vec![
                (Stream::Request, &request[..k]),
                (Stream::Request, &request[k..]),
                (Stream::Response, &response[..]),
            ];
            for cap in [16, 4080] {
                let got = testkit::decode_framed::<KafkaDecoder>(&syscalls, cap)
                    .unwrap_or_else(|e| panic!("v{v} split {k} cap {cap}: {e}"));
                // (A 16-byte head cuts the response itself: then only the count is checked.)
                let got: Vec<_> = sent(&got.exchanges)
                    .into_iter()
                    .map(|(n, complete)| (n, complete || cap == 16))
                    .collect();
                assert_eq!(got, vec![(230, true)], "v{v} split {k} cap {cap}");
            }
        }
    }
}
