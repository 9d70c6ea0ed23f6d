//! `cargo xtask abuse cardinality`: random HTTP paths, random SQL table names (queries on
//! tables that do not exist, so errors too), random Kafka topics, hundreds of short-lived
//! curl processes and connections, all under a low `--max-series`. Series must stay under
//! the cap with the rest counted as dropped, memory must stay bounded, and afterwards the
//! agent must still count a fresh batch on an existing series exactly.

use std::time::{Duration, Instant};

use anyhow::Context;
use harness::{curl, Metrics, MockKafka, PgServer};

use super::{most_series, wait_for, Env, Load, Report, DROPPED_SERIES_METRIC, TRACKED_METRIC};
use crate::bench::ok_nginx;

const SERVER_METRIC: &str = "http_server_request_duration_seconds_count";
/// The DaemonSet's memory request (deploy/kubernetes/04-daemonset.yaml): what a node
/// reserves for the agent, so the bound it must stay under.
const RSS_BOUND_BYTES: u64 = 128 * 1024 * 1024;
/// See [`super::soak`]: other processes' connections on this shared machine.
const TRACKED_SLACK: f64 = 10.0;

/// Options of `cargo xtask abuse cardinality`.
#[derive(Debug, clap::Parser)]
#[command(name = "cardinality")]
pub struct CardinalityArgs {
    /// The agent's `--max-series`.
    #[arg(long, default_value_t = 100)]
    max_series: usize,
    /// Requests with random paths from the Python client (a new connection every 5).
    #[arg(long, default_value_t = 3000)]
    requests: u32,
    /// curl processes, one random path each (short-lived processes and connections).
    #[arg(long, default_value_t = 500)]
    processes: u32,
    /// Queries on random, nonexistent tables (psql, errors), plus a tenth as many CREATE
    /// TABLE and SELECT on new random tables.
    #[arg(long, default_value_t = 500)]
    tables: u32,
    /// Messages to random Kafka topics, one topic each.
    #[arg(long, default_value_t = 300)]
    topics: u32,
    /// Requests of the fresh batch after the attack, on a series made before it.
    #[arg(long, default_value_t = 100)]
    fresh_requests: usize,
}

impl CardinalityArgs {
    fn command(&self) -> String {
        format!(
            "cargo xtask abuse cardinality --max-series {} --requests {} --processes {} \
             --tables {} --topics {} --fresh-requests {}",
            self.max_series,
            self.requests,
            self.processes,
            self.tables,
            self.topics,
            self.fresh_requests
        )
    }
}

/// `n` letters from g–z: never taken for an id by the route templating, never hex.
pub(super) fn random_word(n: usize, seed: &mut u64) -> String {
    (0..n)
        .map(|_| {
            // xorshift64: enough randomness for names, no dependency.
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            char::from(b'g' + (*seed % 20) as u8)
        })
        .collect()
}

pub(crate) fn cardinality(env: &Env, args: &CardinalityArgs) -> anyhow::Result<Report> {
    let mut report = Report::new(
        &format!(
            "Cardinality attack under `--max-series {}`",
            args.max_series
        ),
        &args.command(),
    );
    let nginx = ok_nginx(None, "")?;
    let pg = PgServer::launch().context("starting PostgreSQL")?;
    let kafka = MockKafka::launch()?;
    let agent = env.agent(&["--max-series".into(), args.max_series.to_string()])?;
    let pid = agent.pid();
    let port = nginx.port().to_string();
    let fresh = [("server_port", port.as_str()), ("http_route", "/fresh")];

    // A series made before the attack, for the fresh batch after it.
    curl(&["-o", "/dev/null", &nginx.url("/fresh")])?;
    let (baseline, _) = wait_for(&agent, Duration::from_secs(10), |m| {
        m.sum(SERVER_METRIC, &fresh) >= 1.0
    })?;
    let tracked_baseline = baseline.sum(TRACKED_METRIC, &[]);
    let rss_start = harness::rss_bytes(pid)?;
    let mut rss_max = rss_start;
    let sample = |rss_max: &mut u64| -> anyhow::Result<()> {
        *rss_max = (*rss_max).max(harness::rss_bytes(pid)?);
        Ok(())
    };

    let started = Instant::now();
    let rate = 500.0;
    let http = Load::http(nginx.port(), rate, f64::from(args.requests) / rate, 5, true)?;
    let topics = Load::kafka(
        kafka.bootstrap(),
        "unused",
        100.0,
        f64::from(args.topics) / 100.0,
        true,
    )?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    for i in 0..args.processes {
        let url = nginx.url(&format!("/p/{}", random_word(10, &mut seed)));
        curl(&["-o", "/dev/null", &url])?;
        if i % 50 == 0 {
            sample(&mut rss_max)?;
        }
    }
    let mut sql = String::new();
    for i in 0..args.tables {
        let table = format!("t_{}", random_word(10, &mut seed));
        sql.push_str(&format!("SELECT * FROM missing_{table};\n"));
        if i % 10 == 0 {
            sql.push_str(&format!(
                "CREATE TABLE {table} (id int);\nSELECT * FROM {table};\n"
            ));
        }
    }
    // One Query message with all statements would stop at the first error; -f sends them
    // one by one, and without ON_ERROR_STOP every statement runs.
    let dir = harness::TempDir::new("cardinality")?;
    let file = dir.path().join("attack.sql");
    std::fs::write(&file, &sql)?;
    let mut psql = pg.command("psql");
    psql.args(["-X", "-q", "-f"]).arg(&file);
    let psql_out = psql.output().context("running psql")?;
    sample(&mut rss_max)?;
    let responses = http.finish()?;
    let sent = topics.finish()?;
    sample(&mut rss_max)?;
    let attack_seconds = started.elapsed().as_secs_f64();

    let load_stopped = Instant::now();
    let (after, back) = wait_for(&agent, Duration::from_secs(30), |m| {
        m.sum(TRACKED_METRIC, &[]) <= tracked_baseline + TRACKED_SLACK
    })?;
    let back_in = load_stopped.elapsed().as_secs_f64();
    let tracked_after = after.sum(TRACKED_METRIC, &[]);
    sample(&mut rss_max)?;
    let (family, series) = most_series(&after);
    let dropped = |prefix: &str, m: &Metrics| -> f64 {
        m.samples(DROPPED_SERIES_METRIC)
            .iter()
            .filter(|s| {
                s.labels
                    .get("metric")
                    .is_some_and(|v| v.starts_with(prefix))
            })
            .map(|s| s.value)
            .sum()
    };

    // The fresh batch, on the series made before the attack.
    let fresh_before = after.sum(SERVER_METRIC, &fresh);
    let url = nginx.url("/fresh");
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), args.fresh_requests).collect();
    let answered = curl(&urls)?.lines().filter(|l| *l == "ok").count();
    let n = args.fresh_requests as f64;
    wait_for(&agent, Duration::from_secs(10), |m| {
        m.sum(SERVER_METRIC, &fresh) - fresh_before >= n
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let end = agent.try_metrics()?;
    let fresh_counted = end.sum(SERVER_METRIC, &fresh) - fresh_before;
    sample(&mut rss_max)?;
    drop(agent);

    let mb = |b: u64| b as f64 / 1e6;
    report.para(&format!(
        "In {attack_seconds:.0} s: a Python client sends {} GETs to `/u/<10 random letters>` \
         (a new connection every 5 requests; {responses} answered), {} curl processes each \
         fetch `/p/<random>`, psql runs {} SELECTs on random nonexistent tables (each an \
         error) and creates and reads {} random tables (psql: {}), and kafka-python produces \
         one message to each of {} random topics ({sent} acknowledged). Letters g–z keep \
         every path segment out of the route templating's `{{id}}`, so each is a new route.",
        args.requests,
        args.processes,
        args.tables,
        args.tables.div_ceil(10),
        psql_out.status,
        args.topics
    ));
    let dropped_http = dropped("http_", &end);
    let dropped_db = dropped("db_", &end);
    let dropped_messaging = dropped("messaging_", &end);
    report.para(&format!(
        "| figure | value |\n|---|---:|\n\
         | most series of one capped family (`{family}`) | {series} |\n\
         | `{DROPPED_SERIES_METRIC}`: http_* / db_* / messaging_* | {dropped_http} / {dropped_db} / {dropped_messaging} |\n\
         | agent RSS at start / max (MB) | {:.1} / {:.1} |\n\
         | connections tracked: baseline / after ({back_in:.1} s later) | {tracked_baseline} / {tracked_after} |\n\
         | fresh batch: curl answers / counted | {answered} / {fresh_counted} |",
        mb(rss_start),
        mb(rss_max)
    ));
    report.check(
        &format!(
            "series per capped family ≤ --max-series {}",
            args.max_series
        ),
        format!("{series} (`{family}`)"),
        series <= args.max_series,
    );
    report.check(
        "dropped observations counted for HTTP, database and messaging metrics (each > 0)",
        format!("{dropped_http} / {dropped_db} / {dropped_messaging}"),
        dropped_http > 0.0 && dropped_db > 0.0 && dropped_messaging > 0.0,
    );
    report.check(
        &format!(
            "agent RSS ≤ {} MiB (the DaemonSet's memory request) throughout",
            RSS_BOUND_BYTES >> 20
        ),
        format!("max {:.1} MB", mb(rss_max)),
        rss_max <= RSS_BOUND_BYTES,
    );
    report.check(
        &format!("connections tracked back to baseline + {TRACKED_SLACK} within 30 s"),
        format!("{tracked_baseline} → {tracked_after} after {back_in:.1} s"),
        back,
    );
    report.check(
        "fresh batch on an existing series counted exactly",
        format!("{fresh_counted} / {answered}"),
        answered == args.fresh_requests && fresh_counted == n,
    );
    Ok(report)
}
