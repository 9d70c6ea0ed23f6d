//! `cargo xtask bench traces`: what does span export cost, and how many spans per second can
//! the agent export?
//!
//! The same nginx-under-wrk load as `bench http`, in three modes rotated each round (after one
//! discarded warm-up round): no agent, the agent with tracing off (no OTLP endpoint), and the
//! agent exporting every exchange as a span (OTLP/gRPC, `always_on` sampler) to a local
//! receiver. The receiver is a lean Python one that only decodes and counts
//! ([`RECEIVER`]); its CPU is read too, so a reader can tell whether it, rather than the agent,
//! limited the export rate.

use std::fmt;
use std::io::Read;
use std::net::TcpStream;

use anyhow::{bail, Context};
use harness::{free_port, AgentOptions, Metrics, PyServer, WrkResult};

use crate::bench::{
    counted_for_port, machine, requests_counted, rotated, run_with_agent, spread, spread_cell,
    AgentRun, CatchUp, Cpu, HttpArgs, NginxBench, Run, CLIENT_REQUESTS_METRIC,
};
use crate::util::probe;

/// The OTLP/gRPC receiver: `<stats port> <grpc port>`; see the script's docstring.
const RECEIVER: &str = include_str!("bench_traces_receiver.py");
const EXPORTED_METRIC: &str = "periscope_spans_exported_total";
const DROPPED_METRIC: &str = "periscope_spans_dropped_total";
/// Spans each wrk request should make: nginx's server span and wrk's client span (Periscope
/// decodes both ends on this host).
const SPANS_PER_REQUEST: f64 = 2.0;

/// Options of `cargo xtask bench traces`.
#[derive(Debug, clap::Args)]
pub struct TracesArgs {
    /// CPU for the OTLP receiver (python), or `none`.
    #[arg(long, default_value = "none")]
    receiver_cpu: Cpu,
    #[command(flatten)]
    http: HttpArgs,
}

/// What runs beside nginx and wrk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    NoAgent,
    /// The agent without an OTLP endpoint: metrics only.
    TracingOff,
    /// The agent exporting every exchange as a span to the receiver.
    TracingOn,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::NoAgent, Mode::TracingOff, Mode::TracingOn];

    fn name(self) -> &'static str {
        match self {
            Mode::NoAgent => "no agent",
            Mode::TracingOff => "tracing off",
            Mode::TracingOn => "tracing on",
        }
    }

    /// The order of the modes in `round` (0 is the warm-up): rotated by one each round.
    fn order(round: usize) -> [Mode; 3] {
        rotated(Mode::ALL, round)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The receiver's counters, as its stats port reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ReceiverCounts {
    spans: u64,
    requests: u64,
}

/// The lean receiver, stopped on drop.
struct Receiver {
    server: PyServer,
    grpc_port: u16,
}

impl Receiver {
    fn start(cpu: Cpu) -> anyhow::Result<Receiver> {
        let grpc_port = free_port();
        let server = PyServer::launch(RECEIVER, &[&grpc_port.to_string()])
            .context("starting the OTLP receiver")?;
        if let Some(cpu) = cpu.0 {
            // All of its threads (grpcio's included), which exist by now: it listens.
            let pid = server.pid().to_string();
            if probe("taskset", &["-a", "-p", "-c", &cpu.to_string(), &pid]).is_none() {
                bail!("could not pin the receiver (pid {pid}) to CPU {cpu} with taskset");
            }
        }
        Ok(Receiver { server, grpc_port })
    }

    fn counts(&self) -> anyhow::Result<ReceiverCounts> {
        let mut line = String::new();
        TcpStream::connect(("127.0.0.1", self.server.port()))
            .and_then(|mut s| s.read_to_string(&mut line))
            .with_context(|| {
                format!(
                    "asking the receiver for its counts; its log:\n{}",
                    self.server.log()
                )
            })?;
        parse_counts(&line).with_context(|| format!("the receiver answered {line:?}"))
    }
}

fn parse_counts(line: &str) -> Option<ReceiverCounts> {
    let mut fields = line.split_whitespace().map(str::parse::<u64>);
    let counts = ReceiverCounts {
        spans: fields.next()?.ok()?,
        requests: fields.next()?.ok()?,
    };
    fields.next().is_none().then_some(counts)
}

/// One wrk run in one mode.
struct TraceRun {
    mode: Mode,
    run: Run,
    /// What the receiver got during a `tracing on` run, and its CPU.
    received: Option<ReceiverCounts>,
}

impl TraceRun {
    fn agent(&self) -> Option<&AgentRun> {
        self.run.agent.as_ref()
    }

    fn wrk(&self) -> &WrkResult {
        &self.run.wrk
    }

    /// wrk's own measuring window, in seconds.
    fn wrk_seconds(&self) -> f64 {
        self.wrk().requests as f64 / self.wrk().rps.max(f64::MIN_POSITIVE)
    }

    /// The figures that only a `tracing on` run has.
    fn export(&self) -> Option<Export> {
        let agent = self.agent().filter(|_| self.mode == Mode::TracingOn)?;
        let exported = agent.delta(EXPORTED_METRIC, &[]);
        let mut dropped: Vec<(String, f64)> = reasons(&agent.settled)
            .into_iter()
            .map(|reason| {
                let n = agent.delta(DROPPED_METRIC, &[("reason", &reason)]);
                (reason, n)
            })
            .collect();
        dropped.retain(|(_, n)| *n > 0.0);
        let in_window =
            agent.wrk_end.sum(EXPORTED_METRIC, &[]) - agent.before.sum(EXPORTED_METRIC, &[]);
        let seconds = self.wrk_seconds();
        Some(Export {
            exported,
            dropped,
            per_second: in_window / seconds,
            received: self.received.map_or(0, |r| r.spans) as f64,
            receiver_cpu_us: agent.watched_cpu.as_secs_f64() * 1e6,
            receiver_busy: agent.watched_cpu_wrk.as_secs_f64() / seconds,
        })
    }
}

/// Span export during one `tracing on` run.
struct Export {
    /// Spans the receiver accepted, by the agent's count, until the agent had caught up.
    exported: f64,
    /// Spans dropped, by reason (only reasons that dropped any).
    dropped: Vec<(String, f64)>,
    /// Spans accepted per second during wrk's run alone.
    per_second: f64,
    /// Spans the receiver counted.
    received: f64,
    /// The receiver's CPU over the whole run, in µs.
    receiver_cpu_us: f64,
    /// The receiver's CPU during wrk's run, as a share of one CPU.
    receiver_busy: f64,
}

impl Export {
    fn dropped_total(&self) -> f64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }

    fn dropped_cell(&self) -> String {
        if self.dropped.is_empty() {
            return "0".into();
        }
        self.dropped
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The `reason` labels of the dropped-spans counter.
fn reasons(metrics: &Metrics) -> Vec<String> {
    let mut reasons: Vec<String> = metrics
        .samples(DROPPED_METRIC)
        .into_iter()
        .filter_map(|s| s.labels.get("reason").cloned())
        .collect();
    reasons.sort();
    reasons.dedup();
    reasons
}

/// Runs the benchmark and prints a Markdown report.
pub fn traces(args: &TracesArgs) -> anyhow::Result<()> {
    // The `tracing off` agent would export anyway if the environment told it to.
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "PERISCOPE_TRACES_STDOUT",
    ] {
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            bail!("{var} is set: unset it, or the `tracing off` agent exports spans too");
        }
    }
    let bench = NginxBench::start(
        &args.http,
        &[("--receiver-cpu", "OTLP receiver", args.receiver_cpu)],
    )?;
    let receiver = Receiver::start(args.receiver_cpu)?;
    let port = bench.nginx.port();
    let off = bench.agent_options.clone();
    let mut on = off.clone();
    on.args.splice(
        0..0,
        [
            "--otlp-endpoint".to_owned(),
            format!("http://127.0.0.1:{}", receiver.grpc_port),
            "--otlp-protocol".to_owned(),
            "grpc".to_owned(),
            "--traces-sampler".to_owned(),
            "always_on".to_owned(),
        ],
    );
    println!("[bench] tracing on: {}", on.args.join(" "));

    let measure = |label: &str, mode: Mode| -> anyhow::Result<TraceRun> {
        let run = match mode {
            Mode::NoAgent => TraceRun {
                mode,
                run: bench.run_without()?,
                received: None,
            },
            Mode::TracingOff => TraceRun {
                mode,
                run: bench.run_with(&off)?,
                received: None,
            },
            Mode::TracingOn => run_tracing_on(&bench, &on, &receiver, port)?,
        };
        println!("[bench] {label} {mode:<11}: {}", round_line(&run));
        Ok(run)
    };

    let mut rounds: Vec<Vec<TraceRun>> = Vec::new();
    for round in 0..=args.http.rounds {
        let label = if round == 0 {
            "warm-up (discarded)".to_owned()
        } else {
            format!("round {round}")
        };
        let mut runs = Vec::new();
        for mode in Mode::order(round) {
            runs.push(measure(&label, mode)?);
        }
        if round > 0 {
            // Kept in the order of Mode::ALL, whatever order they ran in.
            runs.sort_by_key(|r| Mode::ALL.iter().position(|&m| m == r.mode));
            rounds.push(runs);
        }
    }
    let placement = bench.placement.clone();
    drop(bench);
    drop(receiver);

    println!("\n{}", report(args, &placement, &rounds));
    Ok(())
}

/// One `tracing on` run: waits afterwards until every exchange the agent counted for nginx's
/// port (server and client ends) has been exported or dropped, so that the agent's CPU
/// includes draining its queue.
fn run_tracing_on(
    bench: &NginxBench,
    on: &AgentOptions,
    receiver: &Receiver,
    port: u16,
) -> anyhow::Result<TraceRun> {
    let exchanges =
        |m: &Metrics| requests_counted(m, port) + counted_for_port(m, CLIENT_REQUESTS_METRIC, port);
    let spans = |m: &Metrics| m.sum(EXPORTED_METRIC, &[]) + m.sum(DROPPED_METRIC, &[]);
    let received_before = receiver.counts()?;
    let run = run_with_agent(
        &bench.wrk_options,
        on,
        port,
        &[receiver.server.pid()],
        &CatchUp {
            progress: &|m| requests_counted(m, port) + spans(m),
            complete: &|before, now, wrk| {
                requests_counted(now, port) - requests_counted(before, port) >= wrk.requests as f64
                    && spans(now) - spans(before) >= exchanges(now) - exchanges(before)
            },
        },
    )?;
    let received_after = receiver.counts()?;
    Ok(TraceRun {
        mode: Mode::TracingOn,
        run,
        received: Some(ReceiverCounts {
            spans: received_after.spans - received_before.spans,
            requests: received_after.requests - received_before.requests,
        }),
    })
}

fn round_line(run: &TraceRun) -> String {
    let mut line = crate::bench::round_line(&run.run);
    if let (Some(e), Some(r)) = (run.export(), run.received) {
        line.push_str(&format!(
            "; spans exported {} ({:.0}/s during wrk, {:.2} per request), dropped {}, \
             receiver got {} in {} requests, receiver CPU {:.2} s ({:.0}% of a CPU during wrk)",
            e.exported,
            e.per_second,
            (e.exported + e.dropped_total()) / run.wrk().requests.max(1) as f64,
            e.dropped_cell(),
            r.spans,
            r.requests,
            e.receiver_cpu_us / 1e6,
            e.receiver_busy * 100.0
        ));
    }
    line
}

/// The agent's CPU per exported span in one round: the `tracing on` agent's CPU minus what
/// the `tracing off` agent of the same round spent for as many requests, divided by the spans
/// exported. (Scaling by requests, because the two runs do not serve the same number.)
fn cpu_us_per_span(off: &TraceRun, on: &TraceRun) -> Option<f64> {
    let off_us = off.run.cpu_us_per_request()?;
    let on_us = on.run.cpu_us_per_request()?;
    let exported = on.export()?.exported;
    (exported > 0.0).then(|| (on_us - off_us) * on.wrk().requests as f64 / exported)
}

fn report(args: &TracesArgs, placement: &str, rounds: &[Vec<TraceRun>]) -> String {
    let dash = || "–".to_owned();
    let h = &args.http;
    let mut out = String::new();
    out.push_str(
        "### Traces: nginx `return 200` under wrk, no agent / tracing off / tracing on\n\n",
    );
    out.push_str(&format!(
        "Command: `{}`\n\n",
        h.command("traces", &format!(" --receiver-cpu {}", args.receiver_cpu))
    ));
    out.push_str(&format!(
        "Machine: {}. Placement: {placement} Each round runs wrk for {} s in each mode, the \
         order rotated by one each round: no agent; tracing off (the agent without an OTLP \
         endpoint); tracing on (`--otlp-endpoint` to a local OTLP/gRPC receiver, \
         `--traces-sampler always_on`). Each agent is started fresh, ready before wrk starts, \
         and stopped with SIGINT once it has caught up (with tracing on: once every exchange \
         it counted for nginx's port is exported or dropped); its CPU is read over that \
         window. One warm-up round is discarded. The receiver is Python (grpcio + \
         opentelemetry-proto) and only decodes and counts spans.\n\n",
        machine(),
        h.seconds
    ));
    out.push_str(
        "| round | mode | requests/s | p50 (ms) | p99 (ms) | agent CPU (µs/request) | agent RSS \
         (MB) | kernel events lost | spans exported/s during wrk | spans / request | spans \
         dropped | receiver CPU during wrk (% of a CPU) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (i, runs) in rounds.iter().enumerate() {
        for run in runs {
            let w = run.wrk();
            let (cpu, rss, lost) = match (run.agent(), run.run.cpu_us_per_request()) {
                (Some(a), Some(us)) => (
                    format!("{us:.2}"),
                    format!("{:.1}", a.rss_bytes as f64 / 1e6),
                    format!("{}", a.lost),
                ),
                _ => (dash(), dash(), dash()),
            };
            let (rate, per_request, dropped, busy) = match run.export() {
                Some(e) => (
                    format!("{:.0}", e.per_second),
                    format!(
                        "{:.3}",
                        (e.exported + e.dropped_total()) / w.requests.max(1) as f64
                    ),
                    e.dropped_cell(),
                    format!("{:.0}", e.receiver_busy * 100.0),
                ),
                None => (dash(), dash(), dash(), dash()),
            };
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.3} | {:.3} | {cpu} | {rss} | {lost} | {rate} | \
                 {per_request} | {dropped} | {busy} |\n",
                i + 1,
                run.mode,
                w.rps,
                w.p50_ms,
                w.p99_ms
            ));
        }
    }

    let of = |mode: Mode| -> Vec<&TraceRun> {
        rounds
            .iter()
            .filter_map(|runs| runs.iter().find(|r| r.mode == mode))
            .collect()
    };
    let pick = |mode: Mode, f: &dyn Fn(&TraceRun) -> Option<f64>| -> Vec<f64> {
        of(mode).into_iter().filter_map(f).collect()
    };
    type Column = fn(&TraceRun) -> Option<f64>;
    let rows: [(&str, Column, usize); 6] = [
        ("requests/s", |r| Some(r.wrk().rps), 0),
        ("p50 latency (ms)", |r| Some(r.wrk().p50_ms), 3),
        ("p99 latency (ms)", |r| Some(r.wrk().p99_ms), 3),
        ("agent CPU (µs/request)", |r| r.run.cpu_us_per_request(), 2),
        (
            "agent RSS (MB)",
            |r| r.agent().map(|a| a.rss_bytes as f64 / 1e6),
            1,
        ),
        ("kernel events lost", |r| r.agent().map(|a| a.lost), 0),
    ];
    out.push_str(
        "\nmin / **median** / max over rounds:\n\n\
         | metric | no agent | tracing off | tracing on |\n|---|---:|---:|---:|\n",
    );
    for (name, f, decimals) in rows {
        out.push_str(&format!("| {name} |"));
        for mode in Mode::ALL {
            out.push_str(&format!(" {} |", spread_cell(&pick(mode, &f), decimals)));
        }
        out.push('\n');
    }

    out.push_str(
        "\nThroughput (requests/s) ratios, of medians; per round min / **median** / max:\n\n",
    );
    for (num, den) in [
        (Mode::TracingOn, Mode::TracingOff),
        (Mode::TracingOn, Mode::NoAgent),
        (Mode::TracingOff, Mode::NoAgent),
    ] {
        let rps = |mode| pick(mode, &|r| Some(r.wrk().rps));
        let per_round: Vec<f64> = rounds
            .iter()
            .filter_map(|runs| {
                let get = |m: Mode| runs.iter().find(|r| r.mode == m).map(|r| r.wrk().rps);
                Some(get(num)? / get(den)?)
            })
            .collect();
        out.push_str(&format!(
            "- {num} / {den}: **{:.3}** ({})\n",
            spread(&rps(num)).1 / spread(&rps(den)).1,
            spread_cell(&per_round, 3)
        ));
    }

    let exports: Vec<Export> = of(Mode::TracingOn)
        .into_iter()
        .filter_map(TraceRun::export)
        .collect();
    let on_runs = of(Mode::TracingOn);
    let col = |f: &dyn Fn(&Export) -> f64| -> Vec<f64> { exports.iter().map(f).collect() };
    let expected_rate: Vec<f64> = on_runs
        .iter()
        .map(|r| SPANS_PER_REQUEST * r.wrk().rps)
        .collect();
    let per_request: Vec<f64> = on_runs
        .iter()
        .zip(&exports)
        .map(|(r, e)| (e.exported + e.dropped_total()) / r.wrk().requests.max(1) as f64)
        .collect();
    let received_share: Vec<f64> = exports
        .iter()
        .filter(|e| e.exported > 0.0)
        .map(|e| e.received / e.exported)
        .collect();
    let per_span: Vec<f64> = rounds
        .iter()
        .filter_map(|runs| {
            let get = |m: Mode| runs.iter().find(|r| r.mode == m);
            cpu_us_per_span(get(Mode::TracingOff)?, get(Mode::TracingOn)?)
        })
        .collect();
    let receiver_per_span: Vec<f64> = exports
        .iter()
        .filter(|e| e.received > 0.0)
        .map(|e| e.receiver_cpu_us / e.received)
        .collect();
    out.push_str(&format!(
        "\nSpan export with tracing on, min / **median** / max over rounds (expected: {} spans \
         per request, nginx's server span and wrk's client span):\n\n\
         | metric | value |\n|---|---:|\n\
         | spans exported/s during wrk | {} |\n\
         | expected spans/s ({SPANS_PER_REQUEST} × requests/s) | {} |\n\
         | spans (exported + dropped) per wrk request | {} |\n\
         | spans dropped per run | {} |\n\
         | spans the receiver counted / the agent exported | {} |\n\
         | agent CPU per exported span (µs), tracing on − off, paired by round | {} |\n\
         | receiver CPU per span (µs) | {} |\n\
         | receiver CPU during wrk (% of one CPU) | {} |\n",
        SPANS_PER_REQUEST,
        spread_cell(&col(&|e| e.per_second), 0),
        spread_cell(&expected_rate, 0),
        spread_cell(&per_request, 3),
        spread_cell(&col(&Export::dropped_total), 0),
        spread_cell(&received_share, 4),
        spread_cell(&per_span, 2),
        spread_cell(&receiver_per_span, 2),
        spread_cell(&col(&|e| e.receiver_busy * 100.0), 0),
    ));

    let dropped: f64 = exports.iter().map(Export::dropped_total).sum();
    let mut by_reason: Vec<(String, f64)> = Vec::new();
    for (reason, n) in exports.iter().flat_map(|e| &e.dropped) {
        match by_reason.iter_mut().find(|(r, _)| r == reason) {
            Some((_, total)) => *total += n,
            None => by_reason.push((reason.clone(), *n)),
        }
    }
    if !per_request.is_empty() {
        let (_, median, _) = spread(&per_request);
        let verdict = if (median - SPANS_PER_REQUEST).abs() <= 0.02 {
            "as expected"
        } else {
            "**not** the expected 2: some exchanges were not decoded or not turned into spans"
        };
        out.push_str(&format!(
            "\nSpans per request (exported + dropped, median): {median:.3}, {verdict}.\n"
        ));
    }
    let busiest = col(&|e| e.receiver_busy)
        .into_iter()
        .fold(0.0_f64, f64::max);
    let receiver = if busiest >= 0.9 {
        format!(
            "The receiver used up to {:.0}% of a CPU during wrk: Python (one GIL) was likely the \
             bottleneck, so the export rate is a floor set by the receiver, not the agent's \
             ceiling.",
            busiest * 100.0
        )
    } else {
        format!(
            "The receiver used at most {:.0}% of a CPU during wrk, so it was not the limit.",
            busiest * 100.0
        )
    };
    out.push_str(&if dropped > 0.0 {
        format!(
            "\n**Spans were dropped** ({}): the exporter did not keep up with this load, and its \
             queue (`--traces-queue-size`) filled. {receiver}\n",
            by_reason
                .iter()
                .map(|(r, n)| format!("{n} {r}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!("\nNo span was dropped in any round. {receiver}\n")
    });
    out.push_str(
        "\nThe agent also traces the bench's own scrapes of its /metrics (a client span each, a \
         few per run) and any other HTTP traffic on the machine, so spans per request can \
         exceed 2 slightly; requests in flight when wrk stops add a few more. The receiver may \
         count a span or two more than the agent exported: the last scrape's span, flushed \
         when the agent stops, after its counters were read.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_rotate_and_every_round_has_each_once() {
        for round in 0..6 {
            let mut order = Mode::order(round).to_vec();
            order.sort_by_key(|m| m.name());
            assert_eq!(order.len(), 3);
            order.dedup();
            assert_eq!(order.len(), 3);
        }
        assert_eq!(Mode::order(1)[0], Mode::TracingOff);
    }

    #[test]
    fn receiver_counts_parse() {
        assert_eq!(
            parse_counts("1024 2\n"),
            Some(ReceiverCounts {
                spans: 1024,
                requests: 2
            })
        );
        assert_eq!(parse_counts(""), None);
        assert_eq!(parse_counts("1 2 3"), None);
        assert_eq!(parse_counts("x 2"), None);
    }
}
