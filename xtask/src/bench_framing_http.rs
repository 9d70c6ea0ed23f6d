//! `cargo xtask bench framing-http`: what does HTTP/1.1 pipelining with large bodies cost
//! with the agent's in-kernel message framing, against its old prefix capture?
//!
//! Model: one nginx (master + one worker, `sendfile off`, so that bodies go out through
//! `writev` from nginx's output buffers and pass the agent's write hooks) serves, for each
//! body size B, a static file of B bytes at `/body/<B>` (0 is an empty file, answered with
//! `Content-Length: 0`). wrk drives it over C keep-alive connections with a Lua script in
//! the pattern of wrk's `pipeline.lua`: each connection writes D `GET`s at once and the next
//! D once all D responses are in. So one `read` of nginx holds several requests, and one
//! `read` of wrk several responses, or a slice of one large body.
//!
//! Pairing: every round runs, per body size, three variants one after another: no agent, an
//! agent capturing a prefix per syscall (`--framing=false`), and an agent framing the
//! messages in the kernel (the default: it scans the heads and skips the bodies by
//! Content-Length or chunk size). Both agents run with `--bpf-stats`, so that the kernel
//! programs' own run time is measured too; one warm-up round is discarded, so that drift of
//! the machine hits every variant alike. The variants are `bench framing`'s.
//!
//! Figures per request divide by the requests wrk completed: agent CPU (from /proc), kernel
//! BPF time, bytes copied to userspace and events sent to it (deltas of the agent's
//! self-metrics from its scrape before wrk started to the last, once it has caught up). The
//! claim to check: with framing, bytes copied and agent + kernel CPU per request do not grow
//! with the body, whereas prefix capture copies up to its window (`--capture-bytes`, 4096 by
//! default) per syscall, and a large body takes many syscalls. A table of medians per body
//! size puts the two side by side.
//!
//! Exactness compares the requests the agent counted for nginx's port, on the server and on
//! the client side, with wrk's count. wrk stops mid-batch: nginx may have answered up to D
//! requests per connection that wrk never read, so a count from 0 to C × D above wrk's is
//! exact; anything else is shown in bold.
//!
//! Latency: with pipelining wrk times batches (from writing D requests to the last of their
//! responses), not requests, and its own percentiles are wrong (see [`PIPELINE_SCRIPT`]); the
//! script undoes wrk's coordinated-omission correction and prints the batches' p50 and p99.
//!
//! Gaps: latency is per batch, not per request. The BPF time covers every program the agent
//! loaded, whichever process's syscall it ran in (flow tracking included), and bytes copied
//! cover every connection on the machine (this bench's scrapes of the agent included), the
//! same in both agent variants. Agent CPU is read in clock ticks (the report says how coarse).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use harness::{
    cpu_time, http_get, parse_wrk, rss_bytes, Agent, AgentOptions, Metrics, TempDir, WrkResult,
};

use crate::bench::{
    clock_ticks_per_second, command_tail, counted_for_port, machine, ok_nginx,
    other_agents_warning, requests_counted, settle, spread, spread_cell, Cpu,
    CLIENT_REQUESTS_METRIC, LOST_METRIC, REQUESTS_METRIC,
};
use crate::bench_framing::{run_rounds, Variant, BPF_TIME_METRIC, CAPTURED_METRIC};
use crate::bench_pgbench::placement_of;
use crate::util::{bench_agent, build_agent, display, probe, root};

/// Where nginx serves the bodies: `/body/<B>` is the file of B bytes.
const BODY_PATH: &str = "/body/";
/// Events the kernel programs wrote to the ring buffer for the agent.
const EVENTS_METRIC: &str = "periscope_kernel_events_sent_total";

/// Options of `cargo xtask bench framing-http`.
#[derive(Debug, clap::Args)]
pub struct FramingHttpArgs {
    /// Response body sizes in bytes, comma-separated (0: an empty file, answered with
    /// `Content-Length: 0`).
    #[arg(long, value_delimiter = ',', default_value = "0,65536")]
    body_bytes: Vec<u64>,
    /// Requests wrk writes at once on each connection (HTTP/1.1 pipelining); it writes the
    /// next batch once every response of this one is in.
    #[arg(long, default_value_t = 16)]
    pipeline: u32,
    /// Length of each wrk run, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Measured rounds; each runs wrk once per body size and variant (without agent, prefix
    /// capture, in-kernel framing).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// wrk connections (-c), all keep-alive.
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// wrk threads (-t).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// CPU for nginx (master and its single worker), or `none`.
    #[arg(long, default_value = "1")]
    nginx_cpu: Cpu,
    /// CPU for wrk, or `none`.
    #[arg(long, default_value = "0")]
    wrk_cpu: Cpu,
    /// CPU for the agent, or `none` (the scheduler places it).
    #[arg(long, default_value = "none")]
    agent_cpu: Cpu,
    /// Use the existing agent binary instead of running `cargo build --release -p agent`
    /// (also implied by PERISCOPE_BIN).
    #[arg(long)]
    no_build: bool,
    /// Extra arguments for both agents, after `--`.
    #[arg(last = true)]
    agent_args: Vec<String>,
}

impl FramingHttpArgs {
    /// The full command line, every option spelled out, for the report.
    fn command(&self) -> String {
        let sizes: Vec<String> = self.body_bytes.iter().map(u64::to_string).collect();
        let mut c = format!(
            "cargo xtask bench framing-http --body-bytes {} --pipeline {} --duration {} \
             --rounds {} --connections {} --threads {} --nginx-cpu {} --wrk-cpu {} \
             --agent-cpu {}",
            sizes.join(","),
            self.pipeline,
            self.duration,
            self.rounds,
            self.connections,
            self.threads,
            self.nginx_cpu,
            self.wrk_cpu,
            self.agent_cpu
        );
        c.push_str(&command_tail(self.no_build, &self.agent_args));
        c
    }

    /// C × D: the responses nginx may have written that wrk never read when it stopped.
    fn in_flight(&self) -> u64 {
        u64::from(self.connections) * u64::from(self.pipeline)
    }
}

/// What the agent did during one run: deltas from its scrape before wrk started to the one
/// after it had caught up.
struct AgentRun {
    cpu: Duration,
    rss_bytes: u64,
    /// Kernel events lost, by reason; only reasons that moved.
    lost: BTreeMap<String, f64>,
    bpf_seconds: f64,
    captured_bytes: f64,
    /// Events the kernel sent to the agent (one per captured syscall or message piece).
    events: f64,
    /// Requests counted for nginx's port on the server side (nginx's syscalls) and on the
    /// client side (wrk's).
    server_counted: f64,
    client_counted: f64,
}

struct Run {
    wrk: WrkResult,
    /// Latency per batch of D requests, from the script (wrk's own percentiles are wrong
    /// with pipelining, see [`PIPELINE_SCRIPT`]).
    batch: Option<BatchLatency>,
    agent: Option<AgentRun>,
}

impl Run {
    fn p99_ms(&self) -> Option<f64> {
        Some(self.batch?.p99_ms)
    }

    /// `total` per request wrk completed.
    fn per_request(&self, total: f64) -> f64 {
        total / self.wrk.requests.max(1) as f64
    }

    fn cpu_us_per_request(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(self.per_request(a.cpu.as_secs_f64() * 1e6))
    }

    fn bpf_us_per_request(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(self.per_request(a.bpf_seconds * 1e6))
    }

    /// Agent CPU and kernel BPF time together: the whole CPU cost of watching a request.
    fn total_us_per_request(&self) -> Option<f64> {
        Some(self.cpu_us_per_request()? + self.bpf_us_per_request()?)
    }

    fn bytes_per_request(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(self.per_request(a.captured_bytes))
    }

    fn events_per_request(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(self.per_request(a.events))
    }

    /// Requests counted on the server side minus wrk's.
    fn server_excess(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(a.server_counted - self.wrk.requests as f64)
    }

    /// Requests counted on the client side minus wrk's.
    fn client_excess(&self) -> Option<f64> {
        let a = self.agent.as_ref()?;
        Some(a.client_counted - self.wrk.requests as f64)
    }
}

/// Runs the benchmark and prints a Markdown report.
pub fn framing_http(args: &FramingHttpArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.duration == 0 || args.pipeline == 0 {
        bail!("--rounds, --duration and --pipeline must be at least 1");
    }
    if args.threads == 0 || args.connections < args.threads {
        bail!("--threads must be at least 1 and --connections at least --threads");
    }
    if args.body_bytes.is_empty() {
        bail!("--body-bytes needs at least one body size, e.g. `--body-bytes 0,65536`");
    }
    if !harness::is_root() {
        bail!(
            "the agent loads eBPF programs: run as root \
             (try `sudo -E cargo xtask bench framing-http`)"
        );
    }
    crate::setup::setup()?;
    let bin = bench_agent(args.no_build, build_agent)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (what, cpu) in [
        ("--nginx-cpu", args.nginx_cpu),
        ("--wrk-cpu", args.wrk_cpu),
        ("--agent-cpu", args.agent_cpu),
    ] {
        if cpu.0.is_some_and(|c| c >= cpus) {
            bail!("{what} {cpu}: this machine has only CPUs 0..{cpus}");
        }
    }

    // The bodies (`body/<B>`) and one wrk script per size; removed on drop.
    let dir = TempDir::new("bench-framing-http")?;
    let bodies = dir.path().join("body");
    std::fs::create_dir(&bodies).with_context(|| format!("creating {}", bodies.display()))?;
    let mut scripts = Vec::new();
    for &size in &args.body_bytes {
        let body = bodies.join(size.to_string());
        std::fs::write(&body, vec![b'x'; size as usize])
            .with_context(|| format!("writing {}", body.display()))?;
        let script = dir.path().join(format!("pipeline_{size}.lua"));
        std::fs::write(
            &script,
            pipeline_script(args.pipeline, size, args.connections),
        )
        .with_context(|| format!("writing {}", script.display()))?;
        scripts.push(script);
    }
    // `ok_nginx`: one worker, keep-alive for the whole run. `sendfile` is off by default in
    // the harness' config; spelled out, as the bench depends on it.
    let nginx = ok_nginx(
        args.nginx_cpu.0,
        &format!(
            "location {BODY_PATH} {{ alias {}/; sendfile off; }}",
            bodies.display()
        ),
    )?;
    let port = nginx.port();
    let response_heads = args
        .body_bytes
        .iter()
        .map(|&size| check_body(port, size))
        .collect::<anyhow::Result<Vec<usize>>>()
        .with_context(|| format!("nginx's error log:\n{}", nginx.error_log()))?;

    let warning = other_agents_warning("their overhead is in every column");
    let on = placement_of;
    let placement = format!(
        "nginx (master + 1 worker) {}, wrk -t{} -c{} {}, agent {} (taskset); {cpus} CPUs online",
        on(args.nginx_cpu),
        args.threads,
        args.connections,
        on(args.wrk_cpu),
        on(args.agent_cpu)
    );
    println!("[bench] {placement}");
    println!(
        "[bench] target {}, agent {}",
        nginx.url(BODY_PATH),
        bin.display()
    );

    let agent_options = AgentOptions {
        bin: Some(bin.clone()),
        args: args.agent_args.clone(),
        cpu: args.agent_cpu.0,
        ..AgentOptions::default()
    };
    let measure = |label: &str, size: u64, script: &Path, variant: Variant| {
        let run = run_variant(args, port, script, variant, &agent_options)
            .with_context(|| format!("{label}, body {size} bytes, {}", variant.name()))?;
        if run.wrk.non_2xx > 0 {
            bail!(
                "wrk got {} responses that were not 2xx or 3xx; nginx's error log:\n{}",
                run.wrk.non_2xx,
                nginx.error_log()
            );
        }
        println!(
            "[bench] {label} body {size:>7} bytes {:<7}: {}",
            variant.name(),
            round_line(args, &run)
        );
        anyhow::Ok(run)
    };

    let rounds = run_rounds(args.rounds, &args.body_bytes, &scripts, measure)?;
    drop(nginx);

    let setting = Setting {
        placement: format!("{placement}.{warning}"),
        port,
        bin,
        response_heads,
    };
    println!("\n{}", report(args, &setting, &rounds));
    Ok(())
}

/// wrk's Lua script: `@DEPTH@` pipelined `GET @PATH@` per write (the pattern of wrk's own
/// `scripts/pipeline.lua`); wrk counts the requests `request` returns and waits for that many
/// responses before it calls it again, timing the whole batch.
///
/// `done` works around wrk 4.1's percentiles, which are wrong with pipelining: before it
/// reports, wrk "corrects" its latency histogram for coordinated omission (`stats_correct`),
/// assuming one request in flight per connection: for every recorded latency n it adds one
/// at n − e, n − 2e, … while above e, where e = duration / (requests / connections). With D
/// requests per batch e is D times too small, and the added entries fall below the
/// histogram's minimum, where wrk's percentile never looks (its p99 comes out as 0). The
/// correction is undone here, highest latency first (an entry at v received one count from
/// each recorded latency at v + k·e, all higher), and the recorded batch latencies'
/// percentiles are printed on a line of their own (see [`parse_batch_latency`]).
const PIPELINE_SCRIPT: &str = r#"-- Written by `cargo xtask bench framing-http`.
init = function(args)
  local r = {}
  for i = 1, @DEPTH@ do
    r[i] = wrk.format("GET", "@PATH@")
  end
  req = table.concat(r)
end

request = function()
  return req
end

done = function(summary, latency, requests)
  -- wrk's correction interval: runtime_us / (complete / connections), integer divisions.
  local per_connection = math.floor(summary.requests / @CONNECTIONS@)
  local e = 0
  if per_connection > 0 then
    e = math.floor(summary.duration / per_connection)
  end
  -- The distinct latencies (µs) wrk holds, lowest first, with their counts.
  local values, counts = {}, {}
  for i = 1, #latency do
    values[i], counts[i] = latency(i)
  end
  -- received[v]: what the correction added at v, from the recorded latencies above it.
  local received, recorded, batches = {}, {}, 0
  for i = #values, 1, -1 do
    local v = values[i]
    local n = counts[i] - (received[v] or 0)
    recorded[i] = n
    batches = batches + n
    if e > 0 and v >= 2 * e and n > 0 then
      local m = v - e
      while m > e do
        received[m] = (received[m] or 0) + n
        m = m - e
      end
    end
  end
  -- Nearest rank: the smallest latency at least p % of the batches are at or below.
  local function percentile(p)
    local rank = math.max(1, math.ceil(p / 100 * batches))
    local seen = 0
    for i = 1, #values do
      seen = seen + recorded[i]
      if seen >= rank then
        return values[i]
      end
    end
    return 0
  end
  print(string.format("periscope-batch-latency-us batches=%d p50=%d p99=%d",
    batches, percentile(50), percentile(99)))
end
"#;

/// [`PIPELINE_SCRIPT`] for `pipeline` requests of `GET /body/<size>` per write, on wrk's
/// `connections`.
fn pipeline_script(pipeline: u32, size: u64, connections: u32) -> String {
    PIPELINE_SCRIPT
        .replace("@DEPTH@", &pipeline.to_string())
        .replace("@PATH@", &format!("{BODY_PATH}{size}"))
        .replace("@CONNECTIONS@", &connections.to_string())
}

/// The batch latencies the script's `done` printed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct BatchLatency {
    /// Batches whose latency wrk recorded.
    batches: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Finds the line `periscope-batch-latency-us batches=<n> p50=<µs> p99=<µs>` in wrk's output.
fn parse_batch_latency(output: &str) -> Option<BatchLatency> {
    let line = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("periscope-batch-latency-us "))?;
    let field = |key: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    Some(BatchLatency {
        batches: field("batches")?,
        p50_ms: field("p50")? as f64 / 1e3,
        p99_ms: field("p99")? as f64 / 1e3,
    })
}

/// Fetches `/body/<size>` once, to catch a wrong nginx config before measuring anything;
/// returns the response head's length in bytes (for the report's reference figures).
fn check_body(port: u16, size: u64) -> anyhow::Result<usize> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let path = format!("{BODY_PATH}{size}");
    let response = http_get(addr, &path, Duration::from_secs(5))?;
    if response.status != 200 || response.body.len() as u64 != size {
        bail!(
            "GET {path}: status {} with {} body bytes; expected 200 with {size}",
            response.status,
            response.body.len()
        );
    }
    // Status line, header lines and the empty line, as nginx writes them to wrk: the same
    // status line for this HTTP/1.0 request, but `Connection: keep-alive` where this one got
    // `Connection: close`.
    let status_line = "HTTP/1.1 200 OK\r\n".len();
    let headers: usize = response
        .headers
        .iter()
        .map(|(name, value)| {
            let value = if name.eq_ignore_ascii_case("connection") {
                "keep-alive"
            } else {
                value
            };
            name.len() + ": ".len() + value.len() + "\r\n".len()
        })
        .sum();
    Ok(status_line + headers + "\r\n".len())
}

/// `wrk -t<T> -c<C> -d<S>s --latency -s <script> <url>`, pinned with taskset. Not the
/// harness' `run_wrk`: that one takes no script. Its report is parsed all the same, and the
/// script's batch latencies too: `None` (with a warning) when they do not add up, i.e.
/// when the batches recorded × D are not within C × D below the requests completed.
fn run_wrk_script(
    args: &FramingHttpArgs,
    port: u16,
    script: &Path,
) -> anyhow::Result<(WrkResult, Option<BatchLatency>)> {
    let mut cmd = match args.wrk_cpu.0 {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    // The script sets every request's path; the URL only names the server.
    cmd.arg(format!("-t{}", args.threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", args.duration))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/"));
    let out = cmd.output().with_context(|| {
        format!(
            "starting {} (is wrk installed? `cargo xtask setup`)",
            display(&cmd)
        )
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{stdout}",
            display(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wrk = parse_wrk(&stdout)
        .with_context(|| format!("parsing the output of `{}`:\n{stdout}", display(&cmd)))?;
    let batch = parse_batch_latency(&stdout).filter(|b| {
        let in_batches = b.batches * u64::from(args.pipeline);
        let adds_up = wrk
            .requests
            .checked_sub(in_batches)
            .is_some_and(|extra| extra <= args.in_flight());
        if !adds_up {
            eprintln!(
                "[bench] warning: wrk recorded {} batches of {} but completed {} requests; \
                 leaving out its batch latencies. Its output:\n{stdout}",
                b.batches, args.pipeline, wrk.requests
            );
        }
        adds_up
    });
    Ok((wrk, batch))
}

/// One wrk run of `script`, with the agent `variant` asks for; with an agent, waits
/// afterwards until it has counted every request wrk completed on both ends (or its counts
/// stopped moving).
fn run_variant(
    args: &FramingHttpArgs,
    port: u16,
    script: &Path,
    variant: Variant,
    agent_options: &AgentOptions,
) -> anyhow::Result<Run> {
    let Some(variant_args) = variant.agent_args() else {
        let (wrk, batch) = run_wrk_script(args, port, script)?;
        return Ok(Run {
            wrk,
            batch,
            agent: None,
        });
    };
    let mut options = agent_options.clone();
    options.args = variant_args
        .iter()
        .map(|&a| a.to_owned())
        .chain(agent_options.args.iter().cloned())
        .collect();
    let mut agent = Agent::start_with(options)?;
    let pid = agent.pid();
    let before = agent
        .try_metrics()
        .with_context(|| format!("scraping the agent; its log:\n{}", agent.log()))?;
    let cpu_before = cpu_time(pid)?;
    let (wrk, batch) = run_wrk_script(args, port, script)?;
    let server = |m: &Metrics| requests_counted(m, port);
    let client = |m: &Metrics| counted_for_port(m, CLIENT_REQUESTS_METRIC, port);
    let completed = wrk.requests as f64;
    let (_, after) = settle(&agent, &|m| server(m) + client(m), &|m| {
        server(m) - server(&before) >= completed && client(m) - client(&before) >= completed
    })?;
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    let rss = rss_bytes(pid)?;
    let status = agent.stop()?;
    if !status.success() {
        eprintln!(
            "[bench] warning: the agent exited with {status} after SIGINT; its log:\n{}",
            agent.log()
        );
    }
    let delta = |metric: &str| after.sum(metric, &[]) - before.sum(metric, &[]);
    Ok(Run {
        agent: Some(AgentRun {
            cpu,
            rss_bytes: rss,
            lost: lost_by_reason(&before, &after),
            bpf_seconds: delta(BPF_TIME_METRIC),
            captured_bytes: delta(CAPTURED_METRIC),
            events: delta(EVENTS_METRIC),
            server_counted: server(&after) - server(&before),
            client_counted: client(&after) - client(&before),
        }),
        wrk,
        batch,
    })
}

/// How much `periscope_kernel_events_lost_total` grew from `before` to `after`, per
/// `reason`; reasons that did not move are left out.
fn lost_by_reason(before: &Metrics, after: &Metrics) -> BTreeMap<String, f64> {
    after
        .samples(LOST_METRIC)
        .into_iter()
        .filter_map(|s| {
            let reason = s.labels.get("reason")?.clone();
            let lost = s.value - before.sum(LOST_METRIC, &[("reason", &reason)]);
            (lost > 0.0).then_some((reason, lost))
        })
        .collect()
}

/// `framing_bound 3, ringbuf_full 10`, or `0`.
fn lost_cell(lost: &BTreeMap<String, f64>) -> String {
    if lost.is_empty() {
        return "0".to_owned();
    }
    let parts: Vec<String> = lost.iter().map(|(r, n)| format!("{r} {n}")).collect();
    parts.join(", ")
}

/// `counted / wrk (+excess)`, in bold when the excess is outside 0..=`in_flight`.
fn counted_cell(counted: f64, completed: u64, in_flight: u64) -> String {
    let excess = counted - completed as f64;
    let cell = format!("{counted} / {completed} ({excess:+})");
    if (0.0..=in_flight as f64).contains(&excess) {
        cell
    } else {
        format!("**{cell}**")
    }
}

fn round_line(args: &FramingHttpArgs, run: &Run) -> String {
    let w = &run.wrk;
    let mut line = format!("{:.0} req/s, {} requests", w.rps, w.requests);
    if let Some(b) = run.batch {
        line.push_str(&format!(
            ", {} batches, per batch p50 {:.3} ms p99 {:.3} ms",
            b.batches, b.p50_ms, b.p99_ms
        ));
    }
    if w.socket_errors > 0 {
        line.push_str(&format!(", {} socket errors", w.socket_errors));
    }
    if let Some(a) = &run.agent {
        line.push_str(&format!(
            "; agent {:.2} s CPU, BPF {:.3} s, {:.0} bytes copied ({:.0}/request), {} events \
             ({:.2}/request), RSS {:.1} MB, lost events {}, counted server {} client {}",
            a.cpu.as_secs_f64(),
            a.bpf_seconds,
            a.captured_bytes,
            run.per_request(a.captured_bytes),
            a.events,
            run.per_request(a.events),
            a.rss_bytes as f64 / 1e6,
            lost_cell(&a.lost),
            counted_cell(a.server_counted, w.requests, args.in_flight()),
            counted_cell(a.client_counted, w.requests, args.in_flight())
        ));
    }
    line
}

/// What the report says about the setting, besides the options.
struct Setting {
    /// Where everything ran, and a warning if other agents were running.
    placement: String,
    port: u16,
    bin: PathBuf,
    /// The response head's length per body size, in `--body-bytes` order.
    response_heads: Vec<usize>,
}

fn report(args: &FramingHttpArgs, setting: &Setting, rounds: &[Vec<Vec<Run>>]) -> String {
    let dash = "–";
    let in_flight = args.in_flight();
    let port = setting.port;
    let mut out = String::new();
    out.push_str("### HTTP/1.1 pipelining, large bodies: prefix capture vs in-kernel framing\n\n");
    out.push_str(&format!("Command: `{}`\n\n", args.command()));
    out.push_str(&format!(
        "Run {}, work tree at commit {} (uncommitted changes not shown), agent binary `{}`.\n\n",
        probe("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).map_or_else(
            || "at an unknown date".to_owned(),
            |d| format!("on {}", d.trim())
        ),
        head_commit().as_deref().unwrap_or("unknown"),
        setting.bin.display()
    ));
    // The request head `wrk.format` makes: request line and Host header.
    let request_head = |size: u64| {
        format!("GET {BODY_PATH}{size} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").len()
    };
    let heads: Vec<String> = args
        .body_bytes
        .iter()
        .zip(&setting.response_heads)
        .map(|(&size, response)| format!("{} + {response} at {size}", request_head(size)))
        .collect();
    out.push_str(&format!(
        "Machine: {}. Placement: {} nginx serves `{BODY_PATH}<B>`, a static file of B bytes \
         (`sendfile off`: bodies go out through writev from nginx's output buffers), on \
         127.0.0.1 port {port}, keep-alive; wrk runs `-t{} -c{} -d{}s --latency -s <script>`, \
         the script writing {} pipelined `GET {BODY_PATH}<B>` at once per connection and the \
         next batch once every response is in. Each round runs, per body size B, wrk without \
         an agent, with an agent capturing a prefix per syscall (`--framing=false \
         --bpf-stats`) and with one framing messages in the kernel (`--bpf-stats`), in that \
         order; agents are started fresh, ready before wrk starts, stopped with SIGINT after; \
         one warm-up round is discarded. p99 is **per batch** of {} requests (from writing \
         them to the last response), from wrk's latency histogram with wrk's \
         coordinated-omission correction undone by the script (wrk's own percentiles are wrong \
         with pipelining). Per request = over the requests wrk completed: agent CPU from \
         /proc; kernel BPF time = `{BPF_TIME_METRIC}` summed over every program; bytes copied \
         = `{CAPTURED_METRIC}` (nginx's and wrk's syscalls both); events = `{EVENTS_METRIC}`; \
         each a delta from before wrk started to after the \
         agent caught up (its counts for the port stable over 250 ms). Counted / wrk = \
         `{REQUESTS_METRIC}` (server side) and `{CLIENT_REQUESTS_METRIC}` (client side) for \
         the port, against the requests wrk completed: wrk stops mid-batch, so nginx may have \
         answered up to {} × {} = {in_flight} requests that wrk never read; an excess from 0 \
         to {in_flight} is exact, anything else is in **bold**. For reference, request + \
         response head bytes: {}; framing copies each head once per end (nginx's and wrk's), \
         prefix capture up to `--capture-bytes` (4096 by default) per read and write.\n\n",
        machine(),
        setting.placement,
        args.threads,
        args.connections,
        args.duration,
        args.pipeline,
        args.pipeline,
        args.connections,
        args.pipeline,
        heads.join(", ")
    ));

    out.push_str(
        "| round | body (bytes) | variant | requests/s | p99 per batch (ms) | agent CPU (µs/request) | kernel BPF time (µs/request) | bytes copied / request | events / request | agent RSS (MB) | kernel events lost | server counted / wrk | client counted / wrk |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n",
    );
    for i in 0..args.rounds {
        for (&size, size_rounds) in args.body_bytes.iter().zip(rounds) {
            for (variant, run) in Variant::ALL.iter().zip(&size_rounds[i]) {
                let w = &run.wrk;
                let agent_cells = match &run.agent {
                    Some(a) => [
                        format!("{:.2}", run.per_request(a.cpu.as_secs_f64() * 1e6)),
                        format!("{:.2}", run.per_request(a.bpf_seconds * 1e6)),
                        format!("{:.0}", run.per_request(a.captured_bytes)),
                        format!("{:.2}", run.per_request(a.events)),
                        format!("{:.1}", a.rss_bytes as f64 / 1e6),
                        lost_cell(&a.lost),
                        counted_cell(a.server_counted, w.requests, in_flight),
                        counted_cell(a.client_counted, w.requests, in_flight),
                    ],
                    None => std::array::from_fn(|_| dash.to_owned()),
                };
                let p99 = run
                    .p99_ms()
                    .map_or_else(|| dash.to_owned(), |p| format!("{p:.3}"));
                out.push_str(&format!(
                    "| {} | {size} | {} | {:.0} | {p99} | {} |\n",
                    i + 1,
                    variant.name(),
                    w.rps,
                    agent_cells.join(" | ")
                ));
            }
        }
    }

    /// One number per run, `None` where it does not apply (agent figures without the agent).
    type Column = fn(&Run) -> Option<f64>;
    let columns: [(&str, Column, usize); 9] = [
        ("requests/s", |r| Some(r.wrk.rps), 0),
        ("p99 latency per batch (ms)", Run::p99_ms, 3),
        ("agent CPU (µs/request)", Run::cpu_us_per_request, 2),
        ("kernel BPF time (µs/request)", Run::bpf_us_per_request, 2),
        (
            "agent CPU + kernel BPF time (µs/request)",
            Run::total_us_per_request,
            2,
        ),
        ("bytes copied / request", Run::bytes_per_request, 0),
        ("events / request", Run::events_per_request, 2),
        ("server counted − wrk", Run::server_excess, 0),
        ("client counted − wrk", Run::client_excess, 0),
    ];
    // The values of `f` for variant `v` at body size `s`, one per round.
    let values = |s: usize, v: usize, f: Column| -> Vec<f64> {
        rounds[s].iter().filter_map(|runs| f(&runs[v])).collect()
    };
    out.push_str(
        "\nmin / **median** / max over rounds:\n\n\
         | body (bytes) | metric | without agent | prefix capture | in-kernel framing |\n\
         |---:|---|---:|---:|---:|\n",
    );
    for (s, &size) in args.body_bytes.iter().enumerate() {
        for (name, f, decimals) in columns {
            let cells: Vec<String> = (0..Variant::ALL.len())
                .map(|v| spread_cell(&values(s, v, f), decimals))
                .collect();
            out.push_str(&format!("| {size} | {name} | {} |\n", cells.join(" | ")));
        }
    }

    // The claim to check, side by side: per-request cost against the body size.
    if args.body_bytes.len() > 1 {
        let (first, last) = (0, args.body_bytes.len() - 1);
        let header: Vec<String> = args
            .body_bytes
            .iter()
            .map(|size| format!("body {size}"))
            .collect();
        out.push_str(&format!(
            "\nDoes the cost per request grow with the body? Medians over rounds, and the ratio \
             of the largest body's ({}) to the smallest's ({}):\n\n\
             | variant | metric | {} | ratio |\n|---|---|{}---:|\n",
            args.body_bytes[last],
            args.body_bytes[first],
            header.join(" | "),
            "---:|".repeat(header.len())
        ));
        let growth: [(&str, Column, usize); 3] = [
            ("bytes copied / request", Run::bytes_per_request, 0),
            ("events / request", Run::events_per_request, 2),
            (
                "agent CPU + kernel BPF time (µs/request)",
                Run::total_us_per_request,
                2,
            ),
        ];
        for v in [Variant::Prefix, Variant::Framed] {
            let vi = Variant::ALL.iter().position(|&x| x == v).unwrap_or(0);
            for (name, f, decimals) in growth {
                let medians: Vec<Option<f64>> = (0..args.body_bytes.len())
                    .map(|s| {
                        let vals = values(s, vi, f);
                        (!vals.is_empty()).then(|| spread(&vals).1)
                    })
                    .collect();
                let cells: Vec<String> = medians
                    .iter()
                    .map(|m| m.map_or_else(|| dash.to_owned(), |m| format!("{m:.decimals$}")))
                    .collect();
                let ratio = match (medians[first], medians[last]) {
                    (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
                    _ => dash.to_owned(),
                };
                out.push_str(&format!(
                    "| {} | {name} | {} | {ratio} |\n",
                    v.name(),
                    cells.join(" | ")
                ));
            }
        }
    }

    // /proc counts CPU in clock ticks: say how coarse that is at this run length.
    let hz = clock_ticks_per_second();
    let fewest = rounds
        .iter()
        .flatten()
        .flatten()
        .filter(|r| r.agent.is_some())
        .map(|r| r.wrk.requests)
        .min()
        .unwrap_or(0);
    out.push_str(&format!(
        "\nAgent CPU is read from /proc in clock ticks of {} ms: one tick is {:.3} µs/request \
         in the agent run with the fewest requests ({fewest}). Kernel BPF time covers every \
         program the agent loaded (flow tracking too), whichever process's syscall it ran in; \
         bytes copied cover every connection on the machine (this bench's scrapes of the agent \
         too). Latency is per batch of {} pipelined requests, not per request. Kernel \
         events lost are deltas by reason: `framing_lost` / `framing_bound` mean framing was \
         given up for a direction, which then falls back to prefix capture.\n",
        1000 / hz,
        1e6 / hz as f64 / fewest.max(1) as f64,
        args.pipeline
    ));
    out
}

/// The commit checked out, abbreviated, read from the repository's files (HEAD, then the
/// branch's loose or packed ref) rather than by running git; `None` if they cannot be read.
fn head_commit() -> Option<String> {
    let dot_git = root().join(".git");
    // In a linked worktree `.git` is a file naming its git dir, whose `commondir` holds the
    // refs.
    let git_dir = match std::fs::read_to_string(&dot_git) {
        Ok(text) => root().join(text.trim().strip_prefix("gitdir:")?.trim()),
        Err(_) => dot_git,
    };
    let common = std::fs::read_to_string(git_dir.join("commondir"))
        .map_or_else(|_| git_dir.clone(), |c| git_dir.join(c.trim()));
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let hash = match head.trim().strip_prefix("ref:") {
        None => head.trim().to_owned(),
        Some(name) => {
            let name = name.trim();
            match std::fs::read_to_string(common.join(name)) {
                Ok(hash) => hash.trim().to_owned(),
                // `<hash> refs/heads/<branch>` lines.
                Err(_) => std::fs::read_to_string(common.join("packed-refs"))
                    .ok()?
                    .lines()
                    .find_map(|l| l.strip_suffix(name)?.strip_suffix(' ').map(str::to_owned))?,
            }
        }
    };
    let valid = hash.len() >= 7 && hash.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| hash[..7].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: FramingHttpArgs,
    }

    #[test]
    fn options_default_and_command_spells_them_out() {
        let cli = Cli::try_parse_from(["framing-http"]).unwrap();
        assert_eq!(cli.args.body_bytes, [0, 65536]);
        assert_eq!(cli.args.in_flight(), 8 * 16);
        assert_eq!(
            cli.args.command(),
            "cargo xtask bench framing-http --body-bytes 0,65536 --pipeline 16 --duration 10 \
             --rounds 3 --connections 8 --threads 1 --nginx-cpu 1 --wrk-cpu 0 --agent-cpu none"
        );
        let cli = Cli::try_parse_from([
            "framing-http",
            "--body-bytes",
            "100,1000000",
            "--no-build",
            "--",
            "-v",
        ])
        .unwrap();
        assert_eq!(cli.args.body_bytes, [100, 1_000_000]);
        assert!(cli.args.command().ends_with("--no-build -- -v"));
        assert!(Cli::try_parse_from(["framing-http", "--body-bytes", "x"]).is_err());
    }

    #[test]
    fn script_pipelines_the_body_request() {
        let script = pipeline_script(4, 65536, 8);
        assert!(script.contains("for i = 1, 4 do"));
        assert!(script.contains("wrk.format(\"GET\", \"/body/65536\")"));
        assert!(script.contains("math.floor(summary.requests / 8)"));
        assert!(!script.contains('@'));
    }

    #[test]
    fn batch_latency_line_is_found_after_wrk_report() {
        let output = "  Latency Distribution\n     50%    3.97ms\n     99%    0.00us\n  \
                      60529 requests in 3.00s, 3.71GB read\nRequests/sec:  20174.69\n\
                      periscope-batch-latency-us batches=3779 p50=5510 p99=11843\n";
        assert_eq!(
            parse_batch_latency(output),
            Some(BatchLatency {
                batches: 3779,
                p50_ms: 5.51,
                p99_ms: 11.843
            })
        );
        assert_eq!(parse_batch_latency("Requests/sec: 1\n"), None);
        assert_eq!(
            parse_batch_latency("periscope-batch-latency-us batches=1 p50=x p99=2\n"),
            None
        );
        // wrk's own report still parses with the script's line after it.
        assert_eq!(parse_wrk(output).unwrap().requests, 60529);
    }

    #[test]
    fn cells_show_losses_and_flag_inexact_counts() {
        let before = Metrics::parse(
            "periscope_kernel_events_lost_total{reason=\"ringbuf_full\"} 2\n\
             periscope_kernel_events_lost_total{reason=\"framing_bound\"} 0\n",
        )
        .unwrap();
        let after = Metrics::parse(
            "periscope_kernel_events_lost_total{reason=\"ringbuf_full\"} 2\n\
             periscope_kernel_events_lost_total{reason=\"framing_bound\"} 3\n",
        )
        .unwrap();
        assert_eq!(
            lost_cell(&lost_by_reason(&before, &after)),
            "framing_bound 3"
        );
        assert_eq!(lost_cell(&lost_by_reason(&after, &after)), "0");

        assert_eq!(counted_cell(105.0, 100, 128), "105 / 100 (+5)");
        assert_eq!(counted_cell(100.0, 100, 128), "100 / 100 (+0)");
        assert_eq!(counted_cell(99.0, 100, 128), "**99 / 100 (-1)**");
        assert_eq!(counted_cell(229.0, 100, 128), "**229 / 100 (+129)**");
    }
}
