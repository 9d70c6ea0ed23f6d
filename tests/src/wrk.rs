//! Load generation with `wrk --latency`, and parsing of its report.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

/// What one `wrk --latency` run reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkResult {
    /// Requests completed (`N requests in …`).
    pub requests: u64,
    /// `Requests/sec`.
    pub rps: f64,
    /// Latency percentiles, in milliseconds.
    pub p50_ms: f64,
    /// 75th percentile latency (ms).
    pub p75_ms: f64,
    /// 90th percentile latency (ms).
    pub p90_ms: f64,
    /// 99th percentile latency (ms).
    pub p99_ms: f64,
    /// Sum of `Socket errors: connect …, read …, write …, timeout …`.
    pub socket_errors: u64,
    /// `Non-2xx or 3xx responses`.
    pub non_2xx: u64,
    /// wrk's whole stdout.
    pub output: String,
}

/// How to run wrk.
#[derive(Debug, Clone)]
pub struct WrkOptions {
    /// Target URL.
    pub url: String,
    /// `-t`.
    pub threads: u32,
    /// `-c` (at least `threads`).
    pub connections: u32,
    /// `-d`, rounded up to whole seconds (wrk's resolution).
    pub duration: Duration,
    /// Pin wrk to this CPU with `taskset`.
    pub cpu: Option<usize>,
}

/// Runs `wrk -t<threads> -c<conns> -d<duration> --latency <url>`; panics if it fails.
pub fn wrk(url: &str, threads: u32, conns: u32, duration: Duration) -> WrkResult {
    run_wrk(&WrkOptions {
        url: url.to_owned(),
        threads,
        connections: conns,
        duration,
        cpu: None,
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs wrk as described by `options` and parses its report.
pub fn run_wrk(options: &WrkOptions) -> anyhow::Result<WrkResult> {
    let seconds = options.duration.as_secs_f64().ceil().max(1.0) as u64;
    let mut cmd = match options.cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    cmd.arg(format!("-t{}", options.threads.max(1)))
        .arg(format!(
            "-c{}",
            options.connections.max(options.threads).max(1)
        ))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg(&options.url);
    let output = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is wrk installed? `cargo xtask setup`)"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&stdout).with_context(|| format!("parsing the output of {cmd:?}:\n{stdout}"))
}

/// Parses the report `wrk --latency` prints.
pub fn parse_wrk(output: &str) -> anyhow::Result<WrkResult> {
    let mut result = WrkResult {
        output: output.to_owned(),
        ..WrkResult::default()
    };
    let mut have = (false, false, false);
    let mut in_distribution = false;
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", "Distribution"] => in_distribution = true,
            [percent, time] if in_distribution && percent.ends_with('%') => {
                let ms = parse_time_ms(time)?;
                match *percent {
                    "50%" => {
                        result.p50_ms = ms;
                        have.2 = true;
                    }
                    "75%" => result.p75_ms = ms,
                    "90%" => result.p90_ms = ms,
                    "99%" => result.p99_ms = ms,
                    _ => {}
                }
            }
            [n, "requests", "in", ..] => {
                in_distribution = false;
                result.requests = n.parse().with_context(|| format!("bad line {line:?}"))?;
                have.0 = true;
            }
            ["Requests/sec:", rps] => {
                result.rps = rps.parse().with_context(|| format!("bad line {line:?}"))?;
                have.1 = true;
            }
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 1, write 0, timeout 2
                result.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                result.non_2xx = n.parse().with_context(|| format!("bad line {line:?}"))?;
            }
            _ => in_distribution = in_distribution && !words.is_empty(),
        }
    }
    if !(have.0 && have.1 && have.2) {
        bail!("wrk output lacks the request count, Requests/sec or the latency distribution");
    }
    Ok(result)
}

/// wrk prints times as `412.00us`, `1.21ms`, `2.00s`, `1.50m`, `1.00h`.
fn parse_time_ms(text: &str) -> anyhow::Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("time without unit: {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad time {text:?}"))?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => bail!("unknown time unit in {text:?}"),
    };
    Ok(number * factor)
}
