use super::*;
use crate::protocol::testkit::{self, Golden, Xorshift};

// ---- message builders ----

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn z(body: &[u8]) -> Vec<u8> {
    let mut v = body.to_vec();
    v.push(0);
    v
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(&z(k.as_bytes()));
        body.extend_from_slice(&z(v.as_bytes()));
    }
    body.push(0);
    let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

fn ssl_request() -> Vec<u8> {
    let mut m = 8u32.to_be_bytes().to_vec();
    m.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    m
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &z(sql.as_bytes()))
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = z(name.as_bytes());
    b.extend_from_slice(&z(sql.as_bytes()));
    b.extend_from_slice(&0u16.to_be_bytes());
    msg(b'P', &b)
}

fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    let mut b = z(portal.as_bytes());
    b.extend_from_slice(&z(stmt.as_bytes()));
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    msg(b'B', &b)
}

fn describe_portal(portal: &str) -> Vec<u8> {
    let mut b = vec![b'P'];
    b.extend_from_slice(&z(portal.as_bytes()));
    msg(b'D', &b)
}

fn execute(portal: &str, max_rows: u32) -> Vec<u8> {
    let mut b = z(portal.as_bytes());
    b.extend_from_slice(&max_rows.to_be_bytes());
    msg(b'E', &b)
}

fn close_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend_from_slice(&z(name.as_bytes()));
    msg(b'C', &b)
}

fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', &z(tag.as_bytes()))
}

fn error(state: &str) -> Vec<u8> {
    let mut b = b"SERROR\0VERROR\0C".to_vec();
    b.extend_from_slice(&z(state.as_bytes()));
    b.extend_from_slice(b"Msomething went wrong\0\0");
    msg(b'E', &b)
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn row_desc() -> Vec<u8> {
    msg(
        b'T',
        b"\0\x01a\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    )
}

fn data_row(v: &str) -> Vec<u8> {
    let mut b = vec![0, 1];
    b.extend_from_slice(&(v.len() as u32).to_be_bytes());
    b.extend_from_slice(v.as_bytes());
    msg(b'D', &b)
}

fn login() -> Vec<u8> {
    cat(&[
        msg(b'R', &[0, 0, 0, 0]),
        msg(b'S', b"server_version\x0015.18\0"),
        msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]),
        ready(),
    ])
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

type Conn = testkit::Conn<PgDecoder>;

impl Conn {
    /// A connection past start-up.
    fn logged_in() -> Self {
        let mut c = Conn::new();
        c.req(&startup(&[("user", "alice"), ("database", "shop")]))
            .resp(&login());
        c
    }

    fn lines(&mut self) -> Vec<String> {
        lines(&self.take())
    }
}

/// Compact view of an exchange, without timestamps.
fn line(x: &PgExchange) -> String {
    let mut s = format!("{} | {}", x.query_summary, x.query_text);
    if let Some(n) = &x.statement_name {
        s += &format!(" | name={n}");
    }
    if let Some(r) = x.rows {
        s += &format!(" | rows={r}");
    }
    if let Some(e) = &x.error_sqlstate {
        s += &format!(" | error={e}");
    }
    if !x.complete {
        s += " | incomplete";
    }
    s
}

fn lines(xs: &[PgExchange]) -> Vec<String> {
    xs.iter().map(line).collect()
}

#[test]
fn startup_then_simple_query() {
    let mut c = Conn::new();
    c.req(&startup(&[
        ("user", "alice"),
        ("database", "shop"),
        ("application_name", "web"),
    ]));
    assert_eq!(
        c.dec.startup(),
        Some(&StartupInfo {
            database: Some("shop".into()),
            user: Some("alice".into()),
            application_name: Some("web".into()),
        })
    );
    c.resp(&login());
    c.req(&query("SELECT name FROM users WHERE id = 42"));
    c.resp(&cat(&[
        row_desc(),
        data_row("bob"),
        complete("SELECT 1"),
        ready(),
    ]));
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["SELECT users | SELECT name FROM users WHERE id = ? | rows=1"]
    );
    let x = &xs[0];
    assert_eq!(
        (x.operation.as_str(), x.collection.as_deref()),
        ("SELECT", Some("users"))
    );
    assert_eq!((x.start_ns, x.end_ns), (30, 45));
    assert_eq!(
        x.request_bytes,
        query("SELECT name FROM users WHERE id = 42").len() as u64
    );
    assert_eq!(
        x.response_bytes,
        (row_desc().len() + data_row("bob").len() + complete("SELECT 1").len()) as u64
    );
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn database_defaults_to_user() {
    let mut c = Conn::new();
    c.req(&startup(&[("user", "alice")]));
    let info = c.dec.startup().expect("startup seen");
    assert_eq!(info.database.as_deref(), Some("alice"));
    assert_eq!(info.application_name, None);
}

#[test]
fn multi_statement_query_pairs_in_order() {
    let mut c = Conn::logged_in();
    c.req(&query(
        "SELECT 1; UPDATE t SET a=1 WHERE b='x';  ;INSERT INTO u VALUES (1)",
    ));
    c.resp(&cat(&[row_desc(), data_row("1"), complete("SELECT 1")]));
    c.resp(&cat(&[
        complete("UPDATE 3"),
        complete("INSERT 0 1"),
        ready(),
    ]));
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        [
            "SELECT | SELECT ? | rows=1",
            "UPDATE t | UPDATE t SET a=? WHERE b=? | rows=3",
            "INSERT u | INSERT INTO u VALUES (?) | rows=1",
        ]
    );
    // All start at the Query; each ends at its own CommandComplete's chunk.
    assert_eq!(
        xs.iter().map(|x| x.start_ns).collect::<Vec<_>>(),
        [30, 30, 30]
    );
    assert_eq!(
        xs.iter().map(|x| x.end_ns).collect::<Vec<_>>(),
        [45, 55, 55]
    );
    // The Query's bytes go to the first statement only.
    assert!(xs[0].request_bytes > 0 && xs[1].request_bytes == 0);
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn error_aborts_the_rest_of_a_simple_query() {
    let mut c = Conn::logged_in();
    c.req(&query("SELECT 1; SELECT * FROM missing; SELECT 3"));
    c.resp(&cat(&[
        row_desc(),
        data_row("1"),
        complete("SELECT 1"),
        error("42P01"),
        ready(),
    ]));
    assert_eq!(
        c.lines(),
        [
            "SELECT | SELECT ? | rows=1",
            "SELECT missing | SELECT * FROM missing | error=42P01",
        ]
    );
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn empty_query() {
    let mut c = Conn::logged_in();
    c.req(&query("")).resp(&cat(&[msg(b'I', &[]), ready()]));
    c.req(&query(" -- nothing\n"))
        .resp(&cat(&[msg(b'I', &[]), ready()]));
    assert_eq!(c.lines(), ["EMPTY | ", "EMPTY | "]);
}

#[test]
fn extended_unnamed_statement() {
    let mut c = Conn::logged_in();
    c.req(&cat(&[
        parse("", "SELECT * FROM orders WHERE id = $1"),
        bind("", ""),
        describe_portal(""),
        execute("", 0),
        sync(),
    ]));
    c.resp(&cat(&[
        msg(b'1', &[]),
        msg(b'2', &[]),
        row_desc(),
        data_row("a"),
        data_row("b"),
        complete("SELECT 2"),
        ready(),
    ]));
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["SELECT orders | SELECT * FROM orders WHERE id = $1 | rows=2"]
    );
    assert_eq!((xs[0].start_ns, xs[0].end_ns), (30, 45));
    assert_eq!(xs[0].request_bytes as usize, {
        parse("", "SELECT * FROM orders WHERE id = $1").len()
            + bind("", "").len()
            + describe_portal("").len()
            + execute("", 0).len()
    });
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn named_statements_are_remembered_and_prepare_alone_does_not_start_the_execution() {
    let mut c = Conn::logged_in();
    // Prepare on its own (pgbench -M prepared), then execute twice by name.
    c.req(&cat(&[
        parse("s1", "UPDATE acc SET bal = bal + $1 WHERE id = $2"),
        sync(),
    ]));
    c.resp(&cat(&[msg(b'1', &[]), ready()]));
    for _ in 0..2 {
        c.req(&cat(&[bind("", "s1"), execute("", 0), sync()]));
        c.resp(&cat(&[msg(b'2', &[]), complete("UPDATE 1"), ready()]));
    }
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        [
            "UPDATE acc | UPDATE acc SET bal = bal + $1 WHERE id = $2 | name=s1 | rows=1",
            "UPDATE acc | UPDATE acc SET bal = bal + $1 WHERE id = $2 | name=s1 | rows=1",
        ]
    );
    assert_eq!((xs[0].start_ns, xs[0].end_ns), (50, 65));
    assert_eq!(
        xs[0].request_bytes as usize,
        bind("", "s1").len() + execute("", 0).len()
    );
    // Closing the statement forgets it: a later Bind by that name has no SQL.
    c.req(&cat(&[
        close_statement("s1"),
        bind("", "s1"),
        execute("", 0),
        sync(),
    ]));
    c.resp(&cat(&[
        msg(b'3', &[]),
        msg(b'2', &[]),
        complete("UPDATE 1"),
        ready(),
    ]));
    assert_eq!(c.lines(), ["UPDATE |  | name=s1 | rows=1"]);
}

#[test]
fn unknown_statement_uses_the_tag() {
    let mut c = Conn::logged_in();
    c.req(&cat(&[bind("", "never_parsed"), execute("", 0), sync()]));
    c.resp(&cat(&[msg(b'2', &[]), complete("CREATE TABLE"), ready()]));
    c.req(&cat(&[bind("", "never_parsed"), execute("", 0), sync()]));
    c.resp(&cat(&[msg(b'2', &[]), error("40001"), ready()]));
    assert_eq!(
        c.lines(),
        [
            "CREATE |  | name=never_parsed",
            "UNKNOWN |  | name=never_parsed | error=40001"
        ]
    );
}

#[test]
fn pipeline_pairs_in_order() {
    let mut c = Conn::logged_in();
    c.req(&cat(&[
        parse("", "INSERT INTO t (a) VALUES ($1)"),
        bind("", ""),
        execute("", 0),
        parse("", "SELECT a FROM t"),
        bind("", ""),
        execute("", 0),
        parse("", "DELETE FROM t"),
        bind("", ""),
        execute("", 0),
        sync(),
    ]));
    c.resp(&cat(&[
        msg(b'1', &[]),
        msg(b'2', &[]),
        complete("INSERT 0 1"),
    ]));
    c.resp(&cat(&[
        msg(b'1', &[]),
        msg(b'2', &[]),
        data_row("1"),
        data_row("2"),
        complete("SELECT 2"),
        msg(b'1', &[]),
        msg(b'2', &[]),
        complete("DELETE 2"),
        ready(),
    ]));
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        [
            "INSERT t | INSERT INTO t (a) VALUES ($1) | rows=1",
            "SELECT t | SELECT a FROM t | rows=2",
            "DELETE t | DELETE FROM t | rows=2",
        ]
    );
    assert_eq!(
        xs.iter().map(|x| x.end_ns).collect::<Vec<_>>(),
        [45, 55, 55]
    );
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn pipeline_error_skips_until_sync() {
    let mut c = Conn::logged_in();
    c.req(&cat(&[
        parse("", "SELECT 1"),
        bind("", ""),
        execute("", 0),
        parse("", "SELECT * FROM missing"),
        bind("", ""),
        execute("", 0),
        parse("", "SELECT 3"),
        bind("", ""),
        execute("", 0),
        sync(),
    ]));
    c.resp(&cat(&[
        msg(b'1', &[]),
        msg(b'2', &[]),
        data_row("1"),
        complete("SELECT 1"),
        error("42P01"),
        ready(),
    ]));
    // After the Sync, the connection works again.
    c.req(&cat(&[
        parse("", "SELECT 4"),
        bind("", ""),
        execute("", 0),
        sync(),
    ]));
    c.resp(&cat(&[
        msg(b'1', &[]),
        msg(b'2', &[]),
        complete("SELECT 1"),
        ready(),
    ]));
    assert_eq!(
        c.lines(),
        [
            "SELECT | SELECT ? | rows=1",
            "SELECT missing | SELECT * FROM missing | error=42P01",
            "SELECT | SELECT ? | rows=1",
        ]
    );
    let stats = c.dec.take_stats();
    assert_eq!(stats.unpaired_requests, 1, "the skipped third Execute");
    assert_eq!(stats.unexpected_responses, 0);
}

#[test]
fn sync_sent_after_the_error_arrived_still_drops_the_skipped() {
    let mut c = Conn::logged_in();
    c.req(&cat(&[
        parse("", "SELECT x"),
        bind("", ""),
        execute("", 0),
        flush(),
    ]));
    c.resp(&error("42703"));
    c.req(&cat(&[
        parse("", "SELECT 2"),
        bind("", ""),
        execute("", 0),
        sync(),
    ]));
    c.resp(&ready());
    assert_eq!(c.lines(), ["SELECT | SELECT x | error=42703"]);
    assert_eq!(c.dec.take_stats().unpaired_requests, 1);
}

#[test]
fn failed_prepare_produces_no_exchange() {
    let mut c = Conn::logged_in();
    c.req(&cat(&[parse("s", "SELEC 1"), sync()]));
    c.resp(&cat(&[error("42601"), ready()]));
    assert!(c.take().is_empty());
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn portal_suspended_and_named_portals() {
    let mut c = Conn::logged_in();
    c.req(&cat(&[
        parse("", "SELECT * FROM big"),
        bind("cur", ""),
        execute("cur", 2),
        flush(),
    ]));
    c.resp(&cat(&[
        msg(b'1', &[]),
        msg(b'2', &[]),
        data_row("1"),
        data_row("2"),
        msg(b's', &[]),
    ]));
    c.req(&cat(&[execute("cur", 2), sync()]));
    c.resp(&cat(&[data_row("3"), complete("SELECT 1"), ready()]));
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        [
            "SELECT big | SELECT * FROM big | rows=2",
            "SELECT big | SELECT * FROM big | rows=1"
        ]
    );
    assert_eq!(xs[1].start_ns, 50);
}

#[test]
fn copy_from_stdin_is_one_exchange_with_its_data() {
    let mut c = Conn::logged_in();
    c.req(&query("COPY items (a, b) FROM STDIN WITH (FORMAT csv)"));
    c.resp(&msg(b'G', &[0, 0, 2, 0, 0, 0, 0]));
    let data = cat(&[
        msg(b'd', b"1,x\n2,y\n"),
        msg(b'd', b"3,z\n"),
        msg(b'c', &[]),
    ]);
    c.req(&data);
    c.resp(&cat(&[complete("COPY 3"), ready()]));
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["COPY items | COPY items (a, b) FROM STDIN WITH (FORMAT csv) | rows=3"]
    );
    assert_eq!(
        xs[0].request_bytes as usize,
        query("COPY items (a, b) FROM STDIN WITH (FORMAT csv)").len() + data.len()
    );
}

#[test]
fn copy_to_stdout_and_copy_fail() {
    let mut c = Conn::logged_in();
    c.req(&query("COPY (SELECT * FROM items) TO STDOUT"));
    c.resp(&cat(&[
        msg(b'H', &[0, 0, 1, 0, 0]),
        msg(b'd', b"1\n"),
        msg(b'd', b"2\n"),
        msg(b'c', &[]),
        complete("COPY 2"),
        ready(),
    ]));
    c.req(&query("COPY items FROM STDIN"));
    c.resp(&msg(b'G', &[0, 0, 1, 0, 0]));
    c.req(&cat(&[msg(b'd', b"1\n"), msg(b'f', b"client gave up\0")]));
    c.resp(&cat(&[error("57014"), ready()]));
    assert_eq!(
        c.lines(),
        [
            "COPY items | COPY (SELECT * FROM items) TO STDOUT | rows=2",
            "COPY items | COPY items FROM STDIN | error=57014",
        ]
    );
}

#[test]
fn direction_decides_what_a_letter_means() {
    // Frontend D/C/H are Describe/Close/Flush; backend D/C/H are DataRow/CommandComplete/
    // CopyOutResponse. A Describe must not count as a row, a Close not complete anything.
    let mut c = Conn::logged_in();
    c.req(&cat(&[
        parse("s", "SELECT a FROM t"),
        msg(b'D', b"Ss\0"),
        flush(),
        close_statement("other"),
        bind("", "s"),
        execute("", 0),
        sync(),
    ]));
    c.resp(&cat(&[
        msg(b'1', &[]),
        msg(b't', &[0, 0]),
        row_desc(),
        msg(b'3', &[]),
        msg(b'2', &[]),
        data_row("x"),
        complete("SELECT 1"),
        ready(),
    ]));
    assert_eq!(c.lines(), ["SELECT t | SELECT a FROM t | name=s | rows=1"]);
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn ssl_request_answered_n_continues_in_plaintext() {
    let mut c = Conn::new();
    c.req(&ssl_request()).resp(b"N");
    assert!(!c.dec.is_tls());
    c.req(&startup(&[("user", "u")])).resp(&login());
    c.req(&query("BEGIN"))
        .resp(&cat(&[complete("BEGIN"), ready()]));
    assert_eq!(c.lines(), ["BEGIN | BEGIN"]);
    assert_eq!(c.dec.startup().and_then(|s| s.user.as_deref()), Some("u"));
}

#[test]
fn ssl_request_answered_s_is_tls() {
    let mut c = Conn::new();
    c.req(&ssl_request()).resp(b"S");
    assert!(c.dec.is_tls());
    c.req(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage")
        .resp(b"\x16\x03\x03 more tls");
    c.close();
    assert!(c.take().is_empty());
    let mut c = Conn::new();
    let mut gss = 8u32.to_be_bytes().to_vec();
    gss.extend_from_slice(&GSSENC_REQUEST.to_be_bytes());
    c.req(&gss).resp(b"G");
    assert!(c.dec.is_tls());
}

#[test]
fn bad_encryption_answer_is_malformed() {
    let mut c = Conn::new();
    c.req(&ssl_request());
    assert_eq!(
        c.feed(Stream::Response, b"X", 0),
        Err(DecodeError::Malformed("bad_encryption_answer"))
    );
}

#[test]
fn cancel_request_produces_nothing() {
    let mut c = Conn::new();
    let mut cancel = 16u32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    cancel.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    c.req(&cancel).close();
    assert!(c.take().is_empty());
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn passwords_are_skipped_and_terminate_is_nothing() {
    let mut c = Conn::new();
    c.req(&startup(&[("user", "u")]));
    c.resp(&msg(b'R', &[0, 0, 0, 3]));
    c.req(&msg(b'p', b"hunter2\0"));
    c.resp(&login());
    assert!(!format!("{:?}", c.dec).contains("hunter2"));
    c.req(&msg(b'X', &[])).close();
    assert!(c.take().is_empty());
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn close_mid_response_is_incomplete_and_unanswered_are_unpaired() {
    let mut c = Conn::logged_in();
    c.req(&cat(&[query("SELECT * FROM big")]));
    c.resp(&cat(&[row_desc(), data_row("1")]));
    c.close();
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["SELECT big | SELECT * FROM big | rows=1 | incomplete"]
    );
    assert_eq!((xs[0].start_ns, xs[0].end_ns), (30, 50));
    let mut c = Conn::logged_in();
    c.req(&query("SELECT 1; SELECT 2")).close();
    assert!(c.take().is_empty());
    assert_eq!(c.dec.take_stats().unpaired_requests, 2);
}

#[test]
fn unexpected_responses_are_counted() {
    let mut c = Conn::logged_in();
    c.resp(&cat(&[complete("SELECT 1"), ready()]));
    assert!(c.take().is_empty());
    assert_eq!(c.dec.take_stats().unexpected_responses, 1);
}

fn conversation() -> (Vec<u8>, Vec<u8>) {
    let req = cat(&[
        startup(&[("user", "u"), ("database", "d")]),
        query("SELECT 1; SELECT 'a' FROM t"),
        parse("p", "UPDATE t SET a = $1"),
        sync(),
        bind("", "p"),
        execute("", 0),
        sync(),
        query("COPY t FROM STDIN"),
        msg(b'd', b"1\n"),
        msg(b'c', &[]),
    ]);
    let resp = cat(&[
        login(),
        row_desc(),
        data_row("1"),
        complete("SELECT 1"),
        row_desc(),
        data_row("a"),
        data_row("a"),
        complete("SELECT 2"),
        ready(),
        msg(b'1', &[]),
        ready(),
        msg(b'2', &[]),
        complete("UPDATE 7"),
        ready(),
        msg(b'G', &[0, 0, 1, 0, 0]),
        complete("COPY 1"),
        ready(),
    ]);
    (req, resp)
}

/// Feeds the request pieces, then the response pieces, in chunks; returns lines and stats.
fn run_pieces(req: &[&[u8]], resp: &[&[u8]]) -> (Vec<String>, DecoderStats) {
    let mut c = Conn::new();
    for p in req {
        c.req(p);
    }
    for p in resp {
        c.resp(p);
    }
    c.close();
    (c.lines(), c.dec.take_stats())
}

#[test]
fn split_at_every_byte_boundary() {
    let (req, resp) = conversation();
    let want = run_pieces(&[&req], &[&resp]);
    assert_eq!(
        want.0,
        [
            "SELECT | SELECT ? | rows=1",
            "SELECT t | SELECT ? FROM t | rows=2",
            "UPDATE t | UPDATE t SET a = $1 | name=p | rows=7",
            "COPY t | COPY t FROM STDIN | rows=1",
        ]
    );
    assert_eq!(want.1, DecoderStats::default());
    for k in 0..=req.len() {
        assert_eq!(
            run_pieces(&[&req[..k], &req[k..]], &[&resp]),
            want,
            "request split {k}"
        );
    }
    for k in 0..=resp.len() {
        assert_eq!(
            run_pieces(&[&req], &[&resp[..k], &resp[k..]]),
            want,
            "response split {k}"
        );
    }
    let bytes = |b: &[u8]| b.chunks(1).map(<[u8]>::to_vec).collect::<Vec<_>>();
    let (rb, sb) = (bytes(&req), bytes(&resp));
    let rb: Vec<&[u8]> = rb.iter().map(Vec::as_slice).collect();
    let sb: Vec<&[u8]> = sb.iter().map(Vec::as_slice).collect();
    assert_eq!(run_pieces(&rb, &sb), want, "one-byte chunks");
}

#[test]
fn gap_inside_a_data_row_is_skipped_by_length() {
    let mut c = Conn::logged_in();
    c.req(&query("SELECT blob FROM files"));
    let big = data_row(&"x".repeat(5000));
    let all = cat(&[row_desc(), big.clone(), complete("SELECT 1"), ready()]);
    let cut = row_desc().len() + 100;
    // Captured up to 100 bytes into the row; the next 4000 bytes are a gap.
    c.resp_gap(&all[..cut], 4000);
    c.resp(&all[cut + 4000..]);
    assert_eq!(
        c.lines(),
        ["SELECT files | SELECT blob FROM files | rows=1"]
    );
    assert_eq!(c.dec.take_stats(), DecoderStats::default());
}

#[test]
fn gap_inside_a_query_keeps_its_prefix() {
    let mut c = Conn::logged_in();
    let q = query(&format!("INSERT INTO logs VALUES ('{}')", "y".repeat(3000)));
    c.req_gap(&q[..64], q.len() as u64 - 64);
    c.resp(&cat(&[complete("INSERT 0 1"), ready()]));
    let xs = c.take();
    assert_eq!(
        lines(&xs),
        ["INSERT logs | INSERT INTO logs VALUES (? | rows=1"]
    );
    assert_eq!(xs[0].request_bytes, q.len() as u64);
    let stats = c.dec.take_stats();
    assert_eq!((stats.truncated_headers, stats.resyncs), (1, 0));
}

#[test]
fn gap_over_a_header_resyncs_at_the_next_plausible_chunk() {
    let mut c = Conn::logged_in();
    c.req(&query("SELECT a FROM t"));
    // The response is cut inside the DataRows and the gap runs past their end.
    let rows = cat(&[row_desc(), data_row("1"), data_row("2")]);
    c.resp_gap(&rows[..10], rows.len() as u64 - 10 + 3);
    // A chunk that starts mid-message is discarded...
    c.resp(b"garbage that is not a message");
    // ...and one that starts with messages resyncs.
    c.resp(&cat(&[complete("SELECT 2"), ready()]));
    c.req(&query("SELECT 2"))
        .resp(&cat(&[complete("SELECT 1"), ready()]));
    assert_eq!(
        c.lines(),
        [
            "SELECT t | SELECT a FROM t | rows=2",
            "SELECT | SELECT ? | rows=1"
        ]
    );
    let stats = c.dec.take_stats();
    assert_eq!((stats.resyncs, stats.truncated_headers), (1, 1));
}

#[test]
fn ready_for_query_realigns_after_lost_completions() {
    let mut c = Conn::logged_in();
    c.req(&query("SELECT 1; SELECT 2; SELECT 3"));
    let resp = cat(&[
        complete("SELECT 1"),
        complete("SELECT 1"),
        complete("SELECT 1"),
    ]);
    // The first completion is captured, the other two fall in a gap, then ReadyForQuery.
    c.resp_gap(
        &resp[..complete("SELECT 1").len()],
        2 * complete("SELECT 1").len() as u64 + 1,
    );
    c.resp(&ready());
    c.req(&query("SELECT 4"))
        .resp(&cat(&[complete("SELECT 1"), ready()]));
    assert_eq!(
        c.lines(),
        ["SELECT | SELECT ? | rows=1", "SELECT | SELECT ? | rows=1"]
    );
    let stats = c.dec.take_stats();
    assert_eq!(stats.resyncs, 1);
    // The ReadyForQuery ends the three-statement query: its two unanswered statements
    // are unpaired.
    assert_eq!(stats.unpaired_requests, 2);
}

#[test]
fn mid_stream_syncs_at_a_plausible_chunk_and_counts_nothing_before() {
    let mut dec = PgDecoder::new_mid_stream();
    let mut out = Vec::new();
    let chunk = |stream, bytes: &'static [u8]| Chunk {
        stream,
        first_ns: 1,
        last_ns: 2,
        bytes,
        len: bytes.len() as u64,
    };
    // The tail of a result set, then its completion: not paired, not counted.
    let tail: &'static [u8] = b"ow data\0\0\0";
    dec.feed(&chunk(Stream::Response, tail), &mut out).unwrap();
    let rest: &'static [u8] = Box::leak(cat(&[complete("SELECT 9"), ready()]).into_boxed_slice());
    dec.feed(&chunk(Stream::Response, rest), &mut out).unwrap();
    let q: &'static [u8] = Box::leak(query("SELECT * FROM t").into_boxed_slice());
    dec.feed(
        &chunk(Stream::Request, b"ial middle of a query\0"),
        &mut out,
    )
    .unwrap();
    dec.feed(&chunk(Stream::Request, q), &mut out).unwrap();
    let ans: &'static [u8] = Box::leak(
        cat(&[row_desc(), data_row("1"), complete("SELECT 1"), ready()]).into_boxed_slice(),
    );
    dec.feed(&chunk(Stream::Response, ans), &mut out).unwrap();
    assert_eq!(lines(&out), ["SELECT t | SELECT * FROM t | rows=1"]);
    assert_eq!(dec.take_stats(), DecoderStats::default());
}

#[test]
fn new_accepts_a_connection_joined_mid_stream() {
    let mut c = Conn::new();
    c.req(&cat(&[
        parse("", "SELECT 1"),
        bind("", ""),
        execute("", 0),
        sync(),
    ]));
    c.resp(&cat(&[
        msg(b'1', &[]),
        msg(b'2', &[]),
        complete("SELECT 1"),
        ready(),
    ]));
    assert_eq!(c.lines(), ["SELECT | SELECT ? | rows=1"]);
    assert_eq!(c.dec.startup(), None);
}

#[test]
fn mid_stream_gives_up_on_garbage() {
    let mut dec = PgDecoder::new_mid_stream();
    let mut out = Vec::new();
    let mut result = Ok(());
    for _ in 0..MID_STREAM_GIVE_UP_CHUNKS {
        let chunk = Chunk {
            stream: Stream::Request,
            first_ns: 0,
            last_ns: 0,
            bytes: b"\x01\x02 not postgres",
            len: 16,
        };
        result = dec.feed(&chunk, &mut out);
    }
    assert_eq!(result, Err(NOT_POSTGRES));
}

#[test]
fn garbage_fails_fast() {
    let cases: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00\x00\x00\x08\x00\x02\x00\x00", // protocol 2.0
        b"\xff\xff\xff\xff\x00\x03\x00\x00",
        b"Q\x00\x00\x00\x02xyz",
    ];
    for bytes in cases {
        let mut c = Conn::new();
        assert_eq!(
            c.feed(Stream::Request, bytes, 0),
            Err(NOT_POSTGRES),
            "{bytes:?}"
        );
        // Stays failed.
        assert_eq!(c.feed(Stream::Request, b"", 0), Err(NOT_POSTGRES));
    }
}

#[test]
fn framing_errors_after_sync_are_malformed() {
    let mut c = Conn::logged_in();
    assert_eq!(
        c.feed(Stream::Request, b"\x07\x00\x00\x00\x04", 0),
        Err(DecodeError::Malformed("bad_message_type"))
    );
    let mut c = Conn::logged_in();
    assert_eq!(
        c.feed(Stream::Response, b"Z\x00\x00\x00\x09IIIII", 0),
        Err(DecodeError::Malformed("bad_message_length"))
    );
    assert_eq!(
        DecodeError::Malformed("bad_message_length").reason(),
        "bad_message_length"
    );
    assert_eq!(NOT_POSTGRES.reason(), "not_postgres");
}

#[test]
fn huge_bodies_are_skipped_past_the_buffer_cap() {
    let mut c = Conn::logged_in();
    let sql = format!("SELECT '{}' FROM t", "z".repeat(200_000));
    let q = query(&sql);
    for piece in q.chunks(7000) {
        c.req(piece);
    }
    assert!(c.dec.req.body.len() <= MAX_BUFFERED_BYTES);
    c.resp(&cat(&[complete("SELECT 0"), ready()]));
    let xs = c.take();
    assert_eq!(lines(&xs), ["SELECT | SELECT ? | rows=0"]);
    assert_eq!(xs[0].request_bytes, q.len() as u64);
}

#[test]
fn prepared_statement_map_is_bounded() {
    let mut c = Conn::logged_in();
    for i in 0..(MAX_PREPARED + 10) {
        c.req(&cat(&[
            parse(&format!("s{i}"), &format!("SELECT {i} FROM t{i}")),
            sync(),
        ]));
        c.resp(&cat(&[msg(b'1', &[]), ready()]));
    }
    assert_eq!(c.dec.prepared.len(), MAX_PREPARED);
    assert!(c.dec.prepared_order.len() <= 2 * MAX_PREPARED);
    // The oldest went first; the newest is there.
    assert!(c.dec.statement(b"s0").statement.is_none());
    assert!(c
        .dec
        .statement(format!("s{}", MAX_PREPARED + 9).as_bytes())
        .statement
        .is_some());
    // Re-preparing and closing the same name keeps the order list bounded.
    for _ in 0..5000 {
        c.req(&cat(&[
            parse("again", "SELECT 1"),
            close_statement("again"),
        ]));
    }
    assert!(c.dec.prepared_order.len() <= 2 * MAX_PREPARED + 1);
}

/// The reproduced memory attack: Parse messages with 60 KB statement names and 60 KB of SQL,
/// never synced. What one connection keeps stays within its byte caps.
#[test]
fn huge_statement_names_and_sql_are_bounded_by_bytes() {
    let mut c = Conn::logged_in();
    let sql = format!("SELECT {} FROM t", "x, ".repeat(20_000));
    for i in 0..200 {
        let name = format!("{i:04}{}", "n".repeat(60_000));
        c.req(&parse(&name, &sql));
        let b = bind("", &name);
        c.req(&b);
    }
    assert!(c.dec.prepared_bytes <= MAX_PREPARED_BYTES);
    let kept: usize = c.dec.prepared.keys().map(String::len).sum::<usize>()
        + c.dec
            .prepared_order
            .iter()
            .map(|(n, _)| n.len())
            .sum::<usize>()
        + c.dec.portals.iter().map(|(n, _)| n.len()).sum::<usize>();
    assert!(kept < 64 * 1024, "names keep {kept} bytes");
    for (portal, _) in c.dec.prepared.values() {
        let text = &portal.statement.as_ref().unwrap().text;
        assert!(text.len() <= MAX_TEXT_BYTES);
    }
    // A long name still finds its statement.
    let name = format!("0199{}", "n".repeat(60_000));
    assert!(c.dec.statement(name.as_bytes()).statement.is_some());
}

#[test]
fn pending_overflow_keeps_pairing_aligned() {
    let mut c = Conn::logged_in();
    let n = MAX_PENDING + 50;
    let mut req = Vec::new();
    for i in 0..n {
        req.extend(parse("", &format!("SELECT {i} FROM t")));
        req.extend(bind("", ""));
        req.extend(execute("", 0));
    }
    req.extend(sync());
    c.req(&req);
    let mut resp = Vec::new();
    for _ in 0..n {
        resp.extend(complete("SELECT 1"));
    }
    resp.extend(ready());
    c.resp(&resp);
    c.req(&query("SELECT 1 FROM after"))
        .resp(&cat(&[complete("SELECT 1"), ready()]));
    let xs = c.take();
    assert_eq!(xs.len(), MAX_PENDING + 1);
    assert_eq!(
        xs.last().map(line).as_deref(),
        Some("SELECT after | SELECT ? FROM after | rows=1")
    );
    assert_eq!(c.dec.take_stats().unpaired_requests, 50);
}

#[test]
fn detect_recognises_startup_and_mid_stream_messages() {
    assert_eq!(
        detect(&startup(&[("user", "u")]), false),
        Some(Stream::Request)
    );
    assert_eq!(detect(&ssl_request(), false), Some(Stream::Request));
    assert_eq!(detect(&ssl_request()[..7], false), None);
    assert_eq!(detect(&query("SELECT 1"), false), None);
    assert_eq!(detect(&query("SELECT 1"), true), Some(Stream::Request));
    assert_eq!(
        detect(
            &cat(&[parse("", "SELECT 1"), bind("", ""), execute("", 0), sync()]),
            true
        ),
        Some(Stream::Request)
    );
    assert_eq!(
        detect(b"Q\x00\x00\x00\x0b\x01\x02\x03\x04\x05\x00", true),
        None
    );
    assert_eq!(detect(b"GET / HTTP/1.1\r\n", true), None);
    assert_eq!(detect(b"HTTP/1.1 200 OK\r\n", true), None);
    assert_eq!(detect(b"", true), None);
    // A valid first message followed by an invalid header is not claimed.
    assert_eq!(
        detect(&cat(&[sync(), b"\x07\x00\x00\x00\x04".to_vec()]), true),
        None
    );
}

#[test]
fn random_bytes_never_panic_and_stay_bounded() {
    // Deterministic pseudo-random chunks, with and without a valid prefix.
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1du64);
    for round in 0..300 {
        let mut dec = if round % 3 == 0 {
            PgDecoder::new_mid_stream()
        } else {
            PgDecoder::new()
        };
        let mut out = Vec::new();
        if round % 2 == 0 {
            let login = startup(&[("user", "u")]);
            let chunk = Chunk {
                stream: Stream::Request,
                first_ns: 0,
                last_ns: 0,
                bytes: &login,
                len: login.len() as u64,
            };
            let _ = dec.feed(&chunk, &mut out);
        }
        for t in 0..40u64 {
            let n = (rng.u64() % 64) as usize;
            let mut bytes: Vec<u8> = (0..n).map(|_| rng.u64() as u8).collect();
            if rng.u64().is_multiple_of(2) && !bytes.is_empty() {
                // Often start with a real message type.
                bytes[0] = b"QPBESDCZTCIdn12"[(rng.u64() % 15) as usize];
            }
            let chunk = Chunk {
                stream: rng.stream(),
                first_ns: t,
                last_ns: t,
                bytes: &bytes,
                len: n as u64 + rng.gap(8),
            };
            if dec.feed(&chunk, &mut out).is_err() {
                break;
            }
        }
        dec.close(100, &mut out);
        assert!(out.iter().all(|x| x.end_ns >= x.start_ns));
    }
}

// ---- golden tests over recorded traffic (tests/fixtures/postgres, see record.py) ----

const GOLDEN: Golden<PgDecoder> = Golden {
    fixtures: "postgres",
    at_least: 12,
    line: |x| {
        format!(
            "{} | req={} resp={}",
            line(x),
            x.request_bytes,
            x.response_bytes
        )
    },
    state: |dec| Some(format!("startup {:?} tls={}", dec.startup(), dec.is_tls())),
    check: |_, _| {},
    // Every boundary of the big fixtures costs seconds in debug builds: sample them.
    splits_per_run: 400,
    // With a limit above every request message, the same statements come out.
    limits: &[0, 1, 5, 16, 64, 200, 4096],
    subset_from: None,
    key: |x| format!("{:?}", (&x.query_summary, &x.error_sqlstate)),
};

testkit::golden_tests!(GOLDEN);

/// The same fixtures as the kernel's message walk delivers them.
#[test]
fn golden_fixtures_framed() {
    testkit::golden_fixtures_framed(&GOLDEN);
}

/// Rough cost: `cargo test --release -p agent --lib postgres::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let prep = cat(&[
        parse(
            "s",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        ),
        sync(),
    ]);
    let req = cat(&[bind("", "s"), describe_portal(""), execute("", 0), sync()]);
    let resp = cat(&[
        msg(b'2', &[]),
        msg(b'n', &[]),
        complete("UPDATE 1"),
        ready(),
    ]);
    let simple_req =
        query("UPDATE pgbench_accounts SET abalance = abalance + -3946 WHERE aid = 82361;");
    let simple_resp = cat(&[complete("UPDATE 1"), ready()]);
    for (name, setup, req, resp) in [
        ("prepared", Some(&prep), &req, &resp),
        (
            "simple (with normalisation)",
            None,
            &simple_req,
            &simple_resp,
        ),
    ] {
        let mut dec = PgDecoder::new_mid_stream();
        let mut out = Vec::with_capacity(1);
        let feed = |dec: &mut PgDecoder, out: &mut Vec<PgExchange>, stream, bytes: &[u8]| {
            let c = Chunk {
                stream,
                first_ns: 1,
                last_ns: 2,
                bytes,
                len: bytes.len() as u64,
            };
            dec.feed(&c, out).unwrap();
        };
        if let Some(p) = setup {
            feed(&mut dec, &mut out, Stream::Request, p);
            feed(
                &mut dec,
                &mut out,
                Stream::Response,
                &cat(&[msg(b'1', &[]), ready()]),
            );
        }
        let n = 1_000_000u64;
        let start = std::time::Instant::now();
        for _ in 0..n {
            feed(&mut dec, &mut out, Stream::Request, req);
            feed(&mut dec, &mut out, Stream::Response, resp);
            assert_eq!(out.len(), 1);
            out.clear();
        }
        let per = start.elapsed().as_nanos() as f64 / n as f64;
        println!("{name}: {per:.0} ns per statement");
    }
}

/// Issue 14: a statement completed by the connection's close still names its database (the
/// reset at close used to drop the start-up info before the close's statements were mapped).
#[test]
fn statements_completed_at_close_keep_the_database() {
    use crate::exchange::Detail;
    use crate::protocol::{session, Chunk, Shared, Stream};
    let mut decoder = session::<PgDecoder>(false);
    let (mut shared, mut out) = (Shared::default(), Vec::new());
    let mut t = 0;
    let mut feed = |stream, bytes: &[u8], out: &mut Vec<Detail>| {
        t += 10;
        let chunk = Chunk {
            stream,
            first_ns: t,
            last_ns: t,
            bytes,
            len: bytes.len() as u64,
        };
        decoder.feed(&chunk, &mut shared, out).unwrap();
    };
    feed(
        Stream::Request,
        &startup(&[("user", "alice"), ("database", "shop")]),
        &mut out,
    );
    feed(Stream::Response, &login(), &mut out);
    feed(Stream::Request, &query("SELECT * FROM big"), &mut out);
    feed(
        Stream::Response,
        &cat(&[row_desc(), data_row("1")]),
        &mut out,
    );
    assert!(out.is_empty());
    decoder.close(100, &mut shared, &mut out);
    let [Detail::Postgres(pg)] = out.as_slice() else {
        panic!("one statement, completed by the close: {out:?}");
    };
    assert!(!pg.statement.complete);
    assert_eq!(pg.db_namespace.as_deref(), Some("shop"));
}
