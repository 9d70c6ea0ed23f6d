use super::*;

#[test]
fn normalize_replaces_literals_and_keeps_the_rest() {
    let cases = [
        ("SELECT 1", "SELECT ?"),
        (
            "SELECT * FROM t WHERE a = 'x' AND b = 42 AND c = 3.5e-2",
            "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?",
        ),
        ("select 'it''s', E'a\\'b', 7", "select ?, ?, ?"),
        ("SELECT $$a ' b$$, $fn$ x $$ y $fn$ , 1", "SELECT ?, ? , ?"),
        (
            "UPDATE t SET a = $1 WHERE id = $2",
            "UPDATE t SET a = $1 WHERE id = $2",
        ),
        (
            "SELECT true, false, null, -5",
            "SELECT true, false, null, -?",
        ),
        // A quoted name that is not a plain one is withheld: it may be a string.
        (
            "SELECT \"Weird 'col'\", t1.c2 FROM t1",
            "SELECT ?, t1.c2 FROM t1",
        ),
        (
            "SELECT x'1F', b'101', n'abc', U&'d\\0061t'",
            "SELECT ?, ?, ?, ?",
        ),
        ("SELECT .5, 0x1F, 1_000, 1e10", "SELECT ?, ?, ?, ?"),
        ("SELECT '2024-01-01'::date", "SELECT ?::date"),
        ("SELECT a$1, e.x, \"E\"'", "SELECT a$1, e.x, \"E\"?"),
        ("  SELECT\n\t1 ,\r\n  2  ", "SELECT ? , ?"),
        (
            "SELECT /* c /* nested */ */ 1 -- trailing\n FROM t",
            "SELECT ? FROM t",
        ),
        (
            "SELECT 'élan', 'ü' || nom FROM café",
            "SELECT ?, ? || nom FROM café",
        ),
        (
            "SELECT 1 WHERE a ~ '$x' AND $ = 1",
            "SELECT ? WHERE a ~ ? AND $ = ?",
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(normalize(sql), want, "{sql:?}");
    }
}

#[test]
fn normalize_survives_unterminated_things() {
    for sql in [
        "SELECT 'abc",
        "SELECT E'abc\\",
        "SELECT $$abc",
        "SELECT $tag$abc $tag",
        "SELECT \"abc",
        "SELECT /* abc",
        "SELECT 1 --",
        "'",
        "$",
        "E",
        "U&",
        "é",
        "",
    ] {
        let n = normalize(sql);
        assert!(n.len() <= sql.len() + 1, "{sql:?} -> {n:?}");
    }
    assert_eq!(normalize("SELECT 'abc"), "SELECT ?");
    assert_eq!(normalize("SELECT \"abc"), "SELECT \"abc");
}

#[test]
fn normalize_caps_on_a_char_boundary() {
    let sql = format!("SELECT {}", "é".repeat(2000));
    let n = normalize(&sql);
    assert!(n.len() <= MAX_QUERY_TEXT_BYTES && n.len() > MAX_QUERY_TEXT_BYTES - 4);
    let long_in = format!("SELECT * FROM t WHERE id IN ({})", "12345, ".repeat(10_000));
    let n = normalize(&long_in);
    assert!(n.len() <= MAX_QUERY_TEXT_BYTES);
    assert!(n.starts_with("SELECT * FROM t WHERE id IN (?, ?"));
}

#[test]
fn normalize_is_linear() {
    // Pathological inputs: many `$` that never close, many nested comment openers.
    let dollars = "$a".repeat(50_000);
    let comments = "/*".repeat(50_000);
    let quotes = "'".repeat(100_001);
    for sql in [dollars, comments, quotes] {
        let t = std::time::Instant::now();
        normalize(&sql);
        split_statements(&sql);
        summarize(&sql);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}

#[test]
fn split_respects_quotes_comments_and_dollar_quotes() {
    assert_eq!(
        split_statements("SELECT 1; SELECT 2"),
        ["SELECT 1", "SELECT 2"]
    );
    assert_eq!(
        split_statements("SELECT 1; UPDATE t SET a=1;"),
        ["SELECT 1", "UPDATE t SET a=1"]
    );
    assert_eq!(
        split_statements("SELECT ';'; SELECT \";\" FROM t; SELECT E'\\';'"),
        ["SELECT ';'", "SELECT \";\" FROM t", "SELECT E'\\';'"]
    );
    assert_eq!(
        split_statements(
            "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql; SELECT f()"
        ),
        [
            "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql",
            "SELECT f()"
        ]
    );
    assert_eq!(
        split_statements("SELECT 1 -- a; comment\n; /* ; */ SELECT 2"),
        ["SELECT 1 -- a; comment", "/* ; */ SELECT 2"]
    );
    assert!(split_statements("").is_empty());
    assert!(split_statements(" ; ;; -- only a comment\n /* x */ ").is_empty());
    assert_eq!(
        split_statements("SELECT 'unterminated; x"),
        ["SELECT 'unterminated; x"]
    );
}

#[test]
fn summarize_finds_operation_and_table() {
    let s = |sql: &str| {
        let (op, coll) = summarize(sql);
        format!("{op} {}", coll.as_deref().unwrap_or("-"))
    };
    let cases = [
        ("SELECT a FROM orders WHERE id = 1", "SELECT orders"),
        ("select * from Public.Orders o join items i on true", "SELECT public.orders"),
        ("SELECT * FROM \"MyTable\"", "SELECT MyTable"),
        ("SELECT * FROM \"Sch\".items", "SELECT Sch.items"),
        ("SELECT 1", "SELECT -"),
        ("SELECT extract(year FROM ts) FROM events", "SELECT events"),
        ("SELECT * FROM (SELECT * FROM t) s", "SELECT -"),
        ("SELECT * FROM generate_series(1, 3)", "SELECT -"),
        ("SELECT * FROM ONLY parent", "SELECT parent"),
        ("INSERT INTO pgbench_history (tid) VALUES (1)", "INSERT pgbench_history"),
        ("UPDATE pgbench_accounts SET abalance = 1", "UPDATE pgbench_accounts"),
        ("update only t set a = 1", "UPDATE t"),
        ("DELETE FROM s.t WHERE x", "DELETE s.t"),
        ("COPY copy_t FROM STDIN WITH (FORMAT csv)", "COPY copy_t"),
        ("COPY (SELECT g FROM big_t) TO STDOUT", "COPY big_t"),
        ("copy ( select g from generate_series(1,2) g ) to stdout", "COPY -"),
        (
            "WITH recent AS (SELECT * FROM orders WHERE ts > now()) DELETE FROM archive USING recent",
            "DELETE archive",
        ),
        (
            "WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n+1 FROM t) SELECT n FROM t",
            "SELECT t",
        ),
        ("BEGIN", "BEGIN -"),
        ("begin isolation level serializable", "BEGIN -"),
        ("END;", "END -"),
        ("/* app=web */ SELECT * FROM users", "SELECT users"),
        ("-- x\nCOMMIT", "COMMIT -"),
        ("TRUNCATE TABLE pgbench_history", "TRUNCATE pgbench_history"),
        ("CREATE TEMP TABLE IF NOT EXISTS tmp_x (a int)", "CREATE tmp_x"),
        ("CREATE UNIQUE INDEX i ON s.t (a)", "CREATE s.t"),
        ("DROP TABLE IF EXISTS old", "DROP old"),
        ("CREATE ROLE r", "CREATE -"),
        ("MERGE INTO target t USING src s ON t.id = s.id", "MERGE target"),
        ("SELECT 1; SELECT * FROM second", "SELECT -"),
        ("(SELECT a FROM x) UNION (SELECT a FROM y)", "SELECT -"),
        ("", " -"),
        ("   -- nothing\n", " -"),
        ("'just a string'", " -"),
        ("SELECT * FROM", "SELECT -"),
        ("\u{fffd}\u{fffd}LECT 1", " -"),
        ("sel_ect 1", " -"),
    ];
    for (sql, want) in cases {
        assert_eq!(s(sql), want, "{sql:?}");
    }
}

#[test]
fn summarize_caps_names() {
    let long = "x".repeat(500);
    let (op, coll) = summarize(&format!("{long} FROM {long}.{long}"));
    assert_eq!(op.len(), MAX_OPERATION_BYTES);
    assert!(coll.is_none());
    let (_, coll) = summarize(&format!("SELECT * FROM {long}.{long}.{long}.{long}"));
    assert_eq!(coll.map(|c| c.len()), Some(3 * MAX_IDENT_BYTES + 2));
}

/// Runs `f` on a thread with a small stack, so that recursion on input depth would overflow
/// it (the agent's decoding threads have a fixed stack too), and fails if it takes longer
/// than a linear pass could.
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let t = std::time::Instant::now();
    let out = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(f)
        .expect("thread")
        .join()
        .expect("no stack overflow, no panic");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    out
}

#[test]
fn nested_copy_is_neither_recursive_nor_quadratic() {
    // The crash of issue 15: ~54 KB of `COPY( COPY( ...` aborted the agent with a stack
    // overflow. 2 MB of it would take minutes if each level were rescanned.
    for (levels, tail) in [(9_000, ""), (350_000, ""), (9_000, "SELECT a FROM deep_t")] {
        let sql = format!("{}{tail}{}", "COPY( ".repeat(levels), ")".repeat(levels));
        let (op, coll) = bounded(move || summarize(&sql));
        assert_eq!(op, "COPY");
        assert_eq!(coll.as_deref(), (!tail.is_empty()).then_some("deep_t"));
    }
    let sql = "COPY (COPY (SELECT a FROM t) TO STDOUT) TO STDOUT";
    assert_eq!(summarize(sql), ("COPY".into(), Some("t".into())));
    // The query's own parenthesis ends it: the FROM after it belongs to the COPY.
    let sql = "COPY (SELECT 1) FROM wrong";
    assert_eq!(summarize(sql), ("COPY".into(), None));
}

#[test]
fn long_dollar_tags_are_linear() {
    // A 100 KB tag over 100 KB of text that almost closes it at every byte: a search over
    // every window compares ~10^10 bytes.
    let tag = "a".repeat(100_000);
    let sql = format!("SELECT ${tag}${} FROM t", "a".repeat(100_000));
    let sql2 = sql.clone();
    let (n, (op, coll)) = bounded(move || (normalize(&sql), summarize(&sql2)));
    assert_eq!(n, "SELECT ?");
    assert_eq!((op.as_str(), coll), ("SELECT", None));
    let closed = format!("SELECT ${tag}$ x ${tag}$ FROM t");
    assert_eq!(normalize(&closed), "SELECT ? FROM t");
    assert_eq!(summarize(&closed).1.as_deref(), Some("t"));
}

#[test]
fn private_text_never_leaves_in_query_text() {
    // Double quotes that hold text rather than a name.
    assert_eq!(
        normalize(r#"SELECT "Name", "order_items" FROM "Orders" WHERE email = "jane@example.com""#),
        r#"SELECT "Name", "order_items" FROM "Orders" WHERE email = ?"#
    );
    assert_eq!(normalize(r#"SELECT "Jane Doe""#), "SELECT ?");
    // A backslash before a quote: either reading of the literal is withheld.
    for sql in [
        r"SELECT * FROM t WHERE a = 'it\'s secret stuff' AND b = 1",
        r"SELECT * FROM t WHERE a = 'C:\' AND b = 'secret stuff'",
    ] {
        let n = normalize(sql);
        assert_eq!(n, "SELECT * FROM t WHERE a = ?", "{sql}");
    }
    // Backslashes elsewhere (regular expressions) change nothing.
    assert_eq!(
        normalize(r"SELECT * FROM t WHERE a ~ '\d+' AND b = 2"),
        "SELECT * FROM t WHERE a ~ ? AND b = ?"
    );
}
