//! `cargo xtask abuse hostile`: adversarial payloads against an agent with default settings.
//!
//! - Thousands of connections that each leave a large HTTP request head or Kafka frame
//!   unfinished, both of whose ends are decoded, and PostgreSQL connections that send Parse
//!   messages with 60 KB statement names and never Sync: decoders together must stay under
//!   `--decoder-memory-budget` (the connections past it muted and counted) and the agent's
//!   RSS under the stated bound.
//! - A PostgreSQL statement of deeply nested `COPY (COPY (…))`, sent with the extended
//!   protocol (the Parse that once overflowed the agent's stack): the agent must live on.
//! - A series flood first: random HTTP routes and random SQL tables, seen at both ends, far
//!   past `--max-series` and `--series-memory-budget`: the series must stay under the budget
//!   (the rest dropped and counted), and every later scrape renders them all.
//! - Meanwhile an ordinary client's requests must be counted exactly, on both ends (their
//!   series made before the flood), and the agent's peak RSS (`VmHWM`) stay under the bound.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use harness::{curl, PgServer};

use super::{wait_for, Env, Load, Report, DROPPED_SERIES_METRIC};
use crate::bench::ok_nginx;

const HEADS: &str = include_str!("unfinished_heads.py");
const SERVER_METRIC: &str = "http_server_request_duration_seconds_count";
const CLIENT_METRIC: &str = "http_client_request_duration_seconds_count";
/// The worst case the README states for default settings.
const RSS_BOUND_BYTES: u64 = 256 * 1024 * 1024;

/// Options of `cargo xtask abuse hostile`.
#[derive(Debug, clap::Parser)]
#[command(name = "hostile")]
pub struct HostileArgs {
    /// Connections that leave a request head (half HTTP, half Kafka) unfinished (each decoded
    /// at both ends).
    #[arg(long, default_value_t = 4000)]
    connections: u32,
    /// Bytes of each unfinished head (the HTTP decoder keeps up to 16 KiB of a head).
    #[arg(long, default_value_t = 15_000)]
    head_bytes: u32,
    /// PostgreSQL connections that each send 60 Parse messages with 60 KB names, no Sync.
    #[arg(long, default_value_t = 16)]
    parse_connections: u32,
    /// Nesting depth of the `COPY (…)` statement.
    #[arg(long, default_value_t = 5000)]
    copy_depth: u32,
    /// Ordinary requests sent while the heads are held, each counted at both ends.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Requests on distinct random routes in the series flood (a series at each end).
    #[arg(long, default_value_t = 12_000)]
    routes: u32,
    /// Queries on distinct random nonexistent tables in the series flood.
    #[arg(long, default_value_t = 6_000)]
    tables: u32,
}

impl HostileArgs {
    fn command(&self) -> String {
        format!(
            "cargo xtask abuse hostile --connections {} --head-bytes {} --parse-connections {} \
             --copy-depth {} --requests {} --routes {} --tables {}",
            self.connections,
            self.head_bytes,
            self.parse_connections,
            self.copy_depth,
            self.requests,
            self.routes,
            self.tables
        )
    }
}

pub(crate) fn hostile(env: &Env, args: &HostileArgs) -> anyhow::Result<Report> {
    let mut report = Report::new("Hostile payloads under default settings", &args.command());
    let nginx = ok_nginx(None, "")?;
    let pg = PgServer::launch().context("starting PostgreSQL")?;
    let agent = env.agent(&[])?;
    let pid = agent.pid();
    let rss_start = harness::rss_bytes(pid)?;
    // `--decoder-memory-budget`'s default (`agent::conn::DEFAULT_DECODER_MEMORY_BUDGET`).
    let budget: u64 = 64 << 20;
    // `--series-memory-budget`'s default (`agent::export::prometheus::DEFAULT_MEMORY_BUDGET`).
    let series_budget: u64 = 64 << 20;
    let port = nginx.port().to_string();
    let ok = [("server_port", port.as_str()), ("http_route", "/ok")];
    let url = nginx.url("/ok");

    // The ordinary requests' series, made before the flood.
    curl(&[url.as_str()])?;
    wait_for(&agent, Duration::from_secs(10), |m| {
        m.sum(SERVER_METRIC, &ok) >= 1.0 && m.sum(CLIENT_METRIC, &ok) >= 1.0
    })?;
    let ok_before = agent.try_metrics()?;
    let ok_before = (
        ok_before.sum(SERVER_METRIC, &ok),
        ok_before.sum(CLIENT_METRIC, &ok),
    );

    // The series flood: random routes (20 per connection) and random tables.
    let rate = 1000.0;
    let flood = Load::http(nginx.port(), rate, f64::from(args.routes) / rate, 20, true)?;
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ u64::from(std::process::id());
    let sql: String = (0..args.tables)
        .map(|_| {
            format!(
                "SELECT * FROM missing_{};\n",
                super::cardinality::random_word(12, &mut seed)
            )
        })
        .collect();
    let dir = harness::TempDir::new("hostile")?;
    let file = dir.path().join("tables.sql");
    std::fs::write(&file, &sql)?;
    let mut psql = pg.command("psql");
    psql.args(["-X", "-q", "-f"])
        .arg(&file)
        .stderr(Stdio::null());
    psql.output().context("running psql")?;
    let routes_answered = flood.finish()?;
    let (flooded, _) = wait_for(&agent, Duration::from_secs(15), |m| {
        m.sum(DROPPED_SERIES_METRIC, &[]) > 0.0
    })?;
    let series_memory = flooded.sum("periscope_series_memory_bytes", &[]);
    let series_dropped = flooded.sum(DROPPED_SERIES_METRIC, &[]);
    let series_held: usize = ["http_server", "http_client", "db_server", "db_client"]
        .iter()
        .map(|side| {
            let name = match *side {
                "http_server" | "http_client" => format!("{side}_request_duration_seconds_count"),
                _ => format!("{side}_operation_duration_seconds_count"),
            };
            flooded.samples(&name).len()
        })
        .sum();

    // The nested COPY, with the extended protocol (psycopg sends a Parse when there are
    // parameters to bind).
    let depth = args.copy_depth as usize;
    let sql = format!(
        "{}SELECT %s{}",
        "COPY (".repeat(depth),
        ") TO STDOUT".repeat(depth)
    );
    let copy = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys, psycopg\n\
             with psycopg.connect(os.environ['PGURL'], autocommit=True) as c:\n\
             \x20   try:\n\
             \x20       c.execute(sys.argv[1], [1])\n\
             \x20   except psycopg.Error as e:\n\
             \x20       print(type(e).__name__)\n",
        )
        .arg(&sql)
        .env("PGURL", pg.url("postgres"))
        .output()
        .context("running the nested COPY")?;
    let copy_outcome = String::from_utf8_lossy(&copy.stdout).trim().to_owned();

    // The unfinished heads, held while the ordinary requests run.
    let mut heads = Command::new("python3")
        .arg("-c")
        .arg(HEADS)
        .args([
            args.connections.to_string(),
            args.head_bytes.to_string(),
            "15".to_owned(),
            pg.port().to_string(),
            args.parse_connections.to_string(),
            "60".to_owned(),
            "60000".to_owned(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the unfinished heads")?;
    let mut line = String::new();
    BufReader::new(heads.stdout.take().context("stdout")?).read_line(&mut line)?;
    if line.trim() != "held" {
        let _ = heads.wait();
        anyhow::bail!("the hostile connections were not all made (see the Python error above)");
    }
    std::thread::sleep(Duration::from_secs(3));
    let mut rss_max = harness::rss_bytes(pid)?;
    let held = agent.try_metrics()?;
    let decoder_memory = held.sum("periscope_decoder_memory_bytes", &[]);
    let muted = held.sum(
        "periscope_connections_muted_total",
        &[("reason", "memory_budget")],
    );
    let tracked = held.sum(super::TRACKED_METRIC, &[]);
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), args.requests).collect();
    let answered = curl(&urls)?.lines().filter(|l| *l == "ok").count();
    let n = args.requests as f64;
    let (end, _) = wait_for(&agent, Duration::from_secs(15), |m| {
        m.sum(SERVER_METRIC, &ok) - ok_before.0 >= n && m.sum(CLIENT_METRIC, &ok) - ok_before.1 >= n
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let end = agent.try_metrics().unwrap_or(end);
    rss_max = rss_max.max(harness::peak_rss_bytes(pid)?);
    let counted = (
        end.sum(SERVER_METRIC, &ok) - ok_before.0,
        end.sum(CLIENT_METRIC, &ok) - ok_before.1,
    );
    let _ = heads.kill();
    let _ = heads.wait();
    let alive = harness::rss_bytes(pid).is_ok() && agent.try_metrics().is_ok();
    drop(agent);

    let mb = |b: f64| b / 1e6;
    report.para(&format!(
        "Series flood first: a Python client GETs {} random routes `/u/<10 letters g–z>` \
         ({routes_answered} answered; 20 per connection) and psql queries {} random \
         nonexistent tables, each seen as server and as client.",
        args.routes, args.tables
    ));
    report.para(&format!(
        "Then {} connections each write a {}-byte HTTP request head (half of them) or Kafka \
         Produce frame announcing 1 MiB (the other half) that never ends to a server that \
         reads and keeps it (so both ends are decoded: {:.0} MB offered to the decoders), and \
         {} PostgreSQL connections each send 60 Parse messages with 60 KB statement names and \
         no Sync ({:.0} MB more), after a PostgreSQL `COPY (` nested {} deep sent as a Parse (the server answered \
         `{copy_outcome}`); while the heads are held, curl fetches `/ok` {} times.",
        args.connections,
        args.head_bytes,
        2.0 * f64::from(args.connections) * f64::from(args.head_bytes) / 1e6,
        args.parse_connections,
        2.0 * f64::from(args.parse_connections) * 60.0 * 60_000.0 / 1e6,
        args.copy_depth,
        args.requests
    ));
    report.para(&format!(
        "| figure | value |\n|---|---:|\n\
         | agent RSS at start / peak (`VmHWM`, MB) | {:.1} / {:.1} |\n\
         | HTTP and SQL series held / `periscope_series_memory_bytes` / dropped observations | {series_held} / {series_memory} / {series_dropped} |\n\
         | `periscope_decoder_memory_bytes` while held | {decoder_memory} |\n\
         | connections muted for the budget / tracked | {muted} / {tracked} |\n\
         | ordinary requests answered / counted as server / as client | {answered} / {} / {} |",
        mb(rss_start as f64),
        mb(rss_max as f64),
        counted.0,
        counted.1
    ));
    report.check(
        "the agent lives through the nested COPY and the heads",
        if alive { "alive".into() } else { "gone".into() },
        alive,
    );
    report.check(
        &format!("decoders hold ≤ the default budget ({} MiB)", budget >> 20),
        format!("{decoder_memory}"),
        decoder_memory <= budget as f64,
    );
    report.check(
        &format!(
            "series hold ≤ the default series budget ({} MiB), the rest dropped and counted",
            series_budget >> 20
        ),
        format!("{series_memory} bytes, {series_dropped} dropped"),
        series_memory <= series_budget as f64 && series_dropped > 0.0,
    );
    report.check(
        "connections past the budget are muted and counted (> 0)",
        format!("{muted}"),
        muted > 0.0,
    );
    report.check(
        &format!("agent peak RSS (`VmHWM`) ≤ {} MiB", RSS_BOUND_BYTES >> 20),
        format!("max {:.1} MB", mb(rss_max as f64)),
        rss_max <= RSS_BOUND_BYTES,
    );
    report.check(
        "ordinary requests counted exactly at both ends",
        format!("{} / {} of {answered}", counted.0, counted.1),
        answered == args.requests && counted == (n, n),
    );
    Ok(report)
}
