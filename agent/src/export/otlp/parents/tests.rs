use super::*;

fn span(kind: SpanKind, id: u8, start: u64, end: u64) -> Span {
    Span {
        trace_id: [id; 16],
        span_id: [id; 8],
        parent_span_id: None,
        trace_state: String::new(),
        name: String::new(),
        kind,
        start_unix_ns: start,
        end_unix_ns: end,
        attributes: Vec::new(),
        error: None,
    }
}

fn process(pid: u32) -> Arc<ProcessInfo> {
    Arc::new(ProcessInfo {
        pid,
        comm: String::new(),
        exe_name: String::new(),
        exe_path: String::new(),
        env_service_name: None,
        container_id: None,
        service_name: String::new(),
        pod_uid: None,
        k8s: None,
        seq: u64::from(pid),
    })
}

/// A span of process `pid`, thread `tid`, on connection `conn`.
fn arrival(pid: u32, tid: u32, conn: u64, span: Span) -> Arrival {
    Arrival {
        process: process(pid),
        tid: Some(tid),
        conn_id: conn,
        peer_conn: None,
        stream: 0,
        remote_parent: None,
        span,
    }
}

fn ids(out: &[Pending]) -> Vec<u8> {
    out.iter().map(|(_, s)| s.span_id[0]).collect()
}

fn find(out: &[Pending], id: u8) -> &Span {
    &out.iter()
        .find(|(_, s)| s.span_id[0] == id)
        .expect("span sent")
        .1
}

#[test]
fn a_call_inside_a_request_on_its_thread_becomes_its_child() {
    let on = Sampler::AlwaysOn;
    let mut p = Parents::default();
    let mut out = Vec::new();
    p.offer(
        arrival(1, 10, 100, span(SpanKind::Server, 1, 0, 5)),
        &on,
        &mut out,
    );
    assert_eq!(ids(&out), [1]);
    out.clear();
    // Held: the process serves requests.
    p.offer(
        arrival(1, 10, 200, span(SpanKind::Client, 2, 20, 30)),
        &on,
        &mut out,
    );
    // Another thread, and a call outside the request's time: not adopted.
    p.offer(
        arrival(1, 11, 201, span(SpanKind::Client, 3, 20, 30)),
        &on,
        &mut out,
    );
    p.offer(
        arrival(1, 10, 202, span(SpanKind::Client, 4, 5, 30)),
        &on,
        &mut out,
    );
    // A process never seen serving: passed on at once.
    p.offer(
        arrival(2, 10, 203, span(SpanKind::Client, 5, 20, 30)),
        &on,
        &mut out,
    );
    assert_eq!(ids(&out), [5]);
    out.clear();
    p.offer(
        arrival(1, 10, 101, span(SpanKind::Server, 6, 10, 40)),
        &on,
        &mut out,
    );
    assert_eq!(out.len(), 2);
    let child = find(&out, 2);
    assert_eq!(child.trace_id, [6; 16]);
    assert_eq!(child.parent_span_id, Some([6; 8]));
    out.clear();
    p.release(Instant::now(), false, &on, &mut out);
    assert!(out.is_empty());
    p.release(Instant::now() + HOLD, false, &on, &mut out);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|(_, s)| s.parent_span_id.is_none()));
    assert_eq!(p.held(), 0);
}

/// curl → nginx → app: nginx's upstream call (its thread) and the app's server span (the
/// connection) arrive before their parents, which arrive leaf first.
#[test]
fn a_chain_across_processes_becomes_one_trace() {
    let on = Sampler::AlwaysOn;
    let mut p = Parents::default();
    let mut out = Vec::new();
    // A first request makes nginx (pid 2) and the app (pid 3) known servers.
    p.offer(
        arrival(2, 20, 900, span(SpanKind::Server, 90, 0, 1)),
        &on,
        &mut out,
    );
    p.offer(
        arrival(3, 30, 901, span(SpanKind::Server, 91, 0, 1)),
        &on,
        &mut out,
    );
    out.clear();
    // The app's server span, on the connection nginx opened (conn 22); the app's end of
    // the connection finished reading a little before nginx's write returned.
    let mut app = arrival(3, 30, 31, span(SpanKind::Server, 3, 1_000_000, 2_000_000));
    app.peer_conn = Some(22);
    p.offer(app, &on, &mut out);
    // nginx's client span on conn 22 adopts it, and waits for nginx's server span.
    p.offer(
        arrival(2, 20, 22, span(SpanKind::Client, 2, 1_000_100, 2_100_000)),
        &on,
        &mut out,
    );
    // nginx's server span, on the connection curl opened (conn 11).
    let mut nginx = arrival(2, 20, 21, span(SpanKind::Server, 4, 900_000, 2_200_000));
    nginx.peer_conn = Some(11);
    p.offer(nginx, &on, &mut out);
    assert!(out.is_empty(), "the tree waits for its root");
    assert_eq!(p.held(), 3);
    // curl is no server: its span is the root, and settles the tree.
    p.offer(
        arrival(1, 10, 11, span(SpanKind::Client, 1, 800_000, 2_300_000)),
        &on,
        &mut out,
    );
    assert_eq!(out.len(), 4);
    assert!(out.iter().all(|(_, s)| s.trace_id == [1; 16]));
    assert_eq!(find(&out, 1).parent_span_id, None);
    assert_eq!(find(&out, 4).parent_span_id, Some([1; 8]));
    assert_eq!(find(&out, 2).parent_span_id, Some([4; 8]));
    assert_eq!(find(&out, 3).parent_span_id, Some([2; 8]));
    assert_eq!(p.held(), 0);
}

#[test]
fn a_seen_caller_wins_over_a_traceparent_and_the_root_samples_the_tree() {
    let on = Sampler::AlwaysOn;
    let mut p = Parents::default();
    let mut out = Vec::new();
    let header = TraceParent {
        trace_id: [7; 16],
        parent_id: [9; 8],
        sampled: true,
    };
    // curl sent the header to nginx: both spans joined its trace.
    let mut joined = arrival(2, 20, 21, span(SpanKind::Server, 4, 10, 20));
    joined.peer_conn = Some(11);
    joined.span.trace_id = header.trace_id;
    joined.span.parent_span_id = Some(header.parent_id);
    joined.remote_parent = Some(header);
    p.offer(joined, &on, &mut out);
    assert!(out.is_empty());
    let mut curl = arrival(1, 10, 11, span(SpanKind::Client, 1, 12, 19));
    curl.span.trace_id = header.trace_id;
    curl.span.parent_span_id = Some(header.parent_id);
    curl.remote_parent = Some(header);
    p.offer(curl, &on, &mut out);
    assert_eq!(find(&out, 1).parent_span_id, Some([9; 8]));
    assert_eq!(find(&out, 4).parent_span_id, Some([1; 8]));
    assert!(out.iter().all(|(_, s)| s.trace_id == [7; 16]));
    // The ends' clocks are made to nest.
    assert_eq!(
        (find(&out, 1).start_unix_ns, find(&out, 1).end_unix_ns),
        (10, 19)
    );
    assert_eq!(
        (find(&out, 4).start_unix_ns, find(&out, 4).end_unix_ns),
        (10, 19)
    );
    out.clear();
    // Unseen, the caller named by the header is the parent.
    let mut alone = arrival(2, 20, 24, span(SpanKind::Server, 8, 30, 40));
    alone.peer_conn = Some(12);
    alone.span.parent_span_id = Some(header.parent_id);
    alone.remote_parent = Some(header);
    p.offer(alone, &on, &mut out);
    p.release(Instant::now() + HOLD, false, &on, &mut out);
    assert_eq!(find(&out, 8).parent_span_id, Some([9; 8]));
    out.clear();
    // A dropped root drops the spans it adopted.
    p.offer(
        arrival(2, 20, 900, span(SpanKind::Server, 90, 0, 1)),
        &Sampler::AlwaysOn,
        &mut out,
    );
    out.clear();
    p.offer(
        arrival(2, 20, 22, span(SpanKind::Client, 2, 12, 18)),
        &Sampler::AlwaysOn,
        &mut out,
    );
    p.offer(
        arrival(2, 20, 23, span(SpanKind::Server, 5, 10, 20)),
        &Sampler::AlwaysOff,
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(p.held(), 0);
}

#[test]
fn a_client_span_adopts_only_server_spans_inside_it() {
    let on = Sampler::AlwaysOn;
    let mut p = Parents::default();
    let mut out = Vec::new();
    // Two pipelined requests answered before the first answer was read, and a later one.
    let servers = [
        (3, 1_000, 2_000),
        (4, 3_000, 4_000),
        (5, 50_000_000, 60_000_000),
    ];
    for (id, start, end) in servers {
        let mut server = arrival(3, 30, 31, span(SpanKind::Server, id, start, end));
        server.peer_conn = Some(22);
        p.offer(server, &on, &mut out);
    }
    let first = arrival(1, 10, 22, span(SpanKind::Client, 1, 0, 10_000_000));
    p.offer(first, &on, &mut out);
    assert_eq!(ids(&out), [1, 3], "one server end per request");
    assert_eq!(p.held(), 2);
    let second = arrival(1, 10, 22, span(SpanKind::Client, 2, 500, 10_000_000));
    p.offer(second, &on, &mut out);
    assert_eq!(ids(&out), [1, 3, 2, 4]);
    assert_eq!(find(&out, 4).parent_span_id, Some([2; 8]));
    out.clear();
    p.release(Instant::now() + HOLD, true, &on, &mut out);
    assert_eq!(ids(&out), [5]);
    assert_eq!(out[0].1.parent_span_id, None);
    assert!(p.by_wait.is_empty());
}

/// The client read the answer before the server's write returned: the server span comes
/// second, whether the client span was sent already or still waits for its own parent.
#[test]
fn a_server_end_that_arrives_after_its_client_still_becomes_its_child() {
    let on = Sampler::AlwaysOn;
    let mut p = Parents::default();
    let mut out = Vec::new();
    // curl (no server) is sent at once, then nginx's server span arrives.
    p.offer(
        arrival(1, 10, 11, span(SpanKind::Client, 1, 100, 1_000)),
        &on,
        &mut out,
    );
    // Each end stamped by its own call's return: nginx's read seems to start before curl's
    // write, and to end after curl read the answer.
    let mut nginx = arrival(2, 20, 21, span(SpanKind::Server, 2, 90, 1_020));
    nginx.peer_conn = Some(11);
    p.offer(nginx, &on, &mut out);
    assert_eq!(ids(&out), [1, 2]);
    assert_eq!(find(&out, 2).parent_span_id, Some([1; 8]));
    assert_eq!(find(&out, 2).trace_id, [1; 16]);
    assert_eq!(find(&out, 2).end_unix_ns, 1_000);
    assert_eq!(find(&out, 2).start_unix_ns, 100);
    // Claimed: a second server span of the connection does not take the same parent.
    let mut again = arrival(2, 20, 21, span(SpanKind::Server, 3, 120, 900));
    again.peer_conn = Some(11);
    p.offer(again, &on, &mut out);
    assert_eq!(ids(&out), [1, 2]);
    out.clear();
    p.release(Instant::now() + HOLD, true, &on, &mut out);
    assert_eq!(ids(&out), [3]);
    out.clear();
    // nginx (a known server) calls the app: its client span waits for nginx's request,
    // the app's server span arrives, then nginx's server span settles the tree.
    p.offer(
        arrival(2, 20, 22, span(SpanKind::Client, 4, 200, 800)),
        &on,
        &mut out,
    );
    let mut app = arrival(3, 30, 31, span(SpanKind::Server, 5, 210, 810));
    app.peer_conn = Some(22);
    p.offer(app, &on, &mut out);
    assert!(out.is_empty());
    p.offer(
        arrival(2, 20, 23, span(SpanKind::Server, 6, 150, 900)),
        &on,
        &mut out,
    );
    assert_eq!(ids(&out), [6, 4, 5]);
    assert_eq!(find(&out, 5).parent_span_id, Some([4; 8]));
    assert!(out.iter().all(|(_, s)| s.trace_id == [6; 16]));
    assert_eq!(p.held(), 0);
}

/// A server span that comes after its (sent) client is fitted into the client's time with
/// the calls it made, so that the whole tree still nests.
#[test]
fn a_late_server_end_is_fitted_into_its_sent_client_with_its_children() {
    let on = Sampler::AlwaysOn;
    let mut p = Parents::default();
    let mut out = Vec::new();
    // nginx is known as a server.
    p.offer(
        arrival(2, 20, 20, span(SpanKind::Server, 9, 0, 10)),
        &on,
        &mut out,
    );
    // nginx's call to the app waits for nginx's request; curl's span is sent at once.
    p.offer(
        arrival(2, 20, 22, span(SpanKind::Client, 7, 95, 500)),
        &on,
        &mut out,
    );
    p.offer(
        arrival(1, 10, 11, span(SpanKind::Client, 1, 100, 1_000)),
        &on,
        &mut out,
    );
    out.clear();
    let mut nginx = arrival(2, 20, 21, span(SpanKind::Server, 2, 90, 1_020));
    nginx.peer_conn = Some(11);
    p.offer(nginx, &on, &mut out);
    assert_eq!(ids(&out), [2, 7]);
    assert_eq!(find(&out, 7).parent_span_id, Some([2; 8]));
    let times = |id| (find(&out, id).start_unix_ns, find(&out, id).end_unix_ns);
    assert_eq!(times(2), (100, 1_000));
    assert_eq!(times(7), (100, 500));
}

/// HTTP/2: concurrent streams on one connection overlap in time, so time alone would pair a
/// server span with any of them; the stream number pairs each with its own.
#[test]
fn multiplexed_streams_pair_by_stream_not_by_time() {
    let on = Sampler::AlwaysOn;
    let mut p = Parents::default();
    let mut out = Vec::new();
    // Two server spans on the server end (conn 31) of client conn 22: stream 3, then 1.
    for (id, stream) in [(13u8, 3u32), (11, 1)] {
        let mut server = arrival(3, 30, 31, span(SpanKind::Server, id, 1_000_000, 2_000_000));
        server.peer_conn = Some(22);
        server.stream = stream;
        p.offer(server, &on, &mut out);
    }
    // The client spans, both holding both servers' times: stream 1 first.
    for (id, stream) in [(1u8, 1u32), (3, 3)] {
        let mut client = arrival(1, 10, 22, span(SpanKind::Client, id, 900_000, 2_100_000));
        client.stream = stream;
        p.offer(client, &on, &mut out);
    }
    assert_eq!(find(&out, 11).parent_span_id, Some([1; 8]));
    assert_eq!(find(&out, 13).parent_span_id, Some([3; 8]));
    assert_eq!(p.held(), 0);
}
