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
    /// Speak HTTP/2 instead: `h2load` with this many concurrent streams per connection
    /// ([`run_h2load`]).
    pub h2_streams: Option<u32>,
    /// Paced load: each connection waits this many milliseconds after a response before it
    /// sends its next request (wrk's Lua `delay()`; the latency wrk reports starts when the
    /// request is written, after the wait). None: as fast as the server answers.
    pub delay_ms: Option<u32>,
}

/// Runs `wrk -t<threads> -c<conns> -d<duration> --latency <url>`; panics if it fails.
pub fn wrk(url: &str, threads: u32, conns: u32, duration: Duration) -> WrkResult {
    run_wrk(&WrkOptions {
        url: url.to_owned(),
        threads,
        connections: conns,
        duration,
        cpu: None,
        h2_streams: None,
        delay_ms: None,
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs wrk as described by `options` and parses its report (h2load with `h2_streams`).
pub fn run_wrk(options: &WrkOptions) -> anyhow::Result<WrkResult> {
    if let Some(streams) = options.h2_streams {
        return run_h2load(options, streams);
    }
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
        .arg("--latency");
    let script = match options.delay_ms {
        Some(ms) => {
            let path = std::env::temp_dir().join(format!(
                "periscope-wrk-delay-{}-{ms}.lua",
                std::process::id()
            ));
            std::fs::write(&path, format!("function delay()\n  return {ms}\nend\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            cmd.arg("-s").arg(&path);
            Some(path)
        }
        None => None,
    };
    cmd.arg(&options.url);
    let output = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is wrk installed? `cargo xtask setup`)"));
    if let Some(path) = script {
        let _ = std::fs::remove_file(path);
    }
    let output = output?;
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

/// Runs `h2load` (HTTP/2, prior knowledge for `http://`, ALPN for `https://`) with `options`
/// for its duration, `streams` concurrent streams per connection, and reads the latency
/// percentiles from its per-request log (h2load prints no percentiles). The result has the
/// shape of wrk's: `p50_ms`..`p99_ms` from the log, `non_2xx` from its status counts.
pub fn run_h2load(options: &WrkOptions, streams: u32) -> anyhow::Result<WrkResult> {
    let seconds = options.duration.as_secs_f64().ceil().max(1.0) as u64;
    let log = std::env::temp_dir().join(format!("h2load-{}.log", std::process::id()));
    let mut cmd = match options.cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "h2load"]);
            c
        }
        None => Command::new("h2load"),
    };
    cmd.arg(format!("-t{}", options.threads.max(1)))
        .arg(format!(
            "-c{}",
            options.connections.max(options.threads).max(1)
        ))
        .arg(format!("-m{}", streams.max(1)))
        .arg(format!("-D{seconds}"))
        .arg(format!("--log-file={}", log.display()))
        .arg(&options.url);
    let output = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is h2load installed? `cargo xtask setup`)"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let durations = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_h2load(&stdout, &durations).with_context(|| format!("parsing the output of {cmd:?}"))
}

/// Parses h2load's report and its `--log-file` (start µs, status, duration µs per request).
pub fn parse_h2load(output: &str, log: &str) -> anyhow::Result<WrkResult> {
    let mut result = WrkResult {
        output: output.to_owned(),
        ..WrkResult::default()
    };
    let (mut have_requests, mut have_rps) = (false, false);
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["finished", "in", _, rps, "req/s,", ..] => {
                result.rps = rps.parse().with_context(|| format!("bad line {line:?}"))?;
                have_rps = true;
            }
            ["requests:", _, "total,", _, "started,", _, "done,", ok, "succeeded,", rest @ ..] => {
                result.requests = ok.parse().with_context(|| format!("bad line {line:?}"))?;
                result.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
                have_requests = true;
            }
            ["status", "codes:", _, "2xx,", three, "3xx,", four, "4xx,", five, "5xx"] => {
                result.non_2xx = [three, four, five]
                    .iter()
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    if !(have_requests && have_rps) {
        bail!("h2load output lacks the request count or req/s");
    }
    let mut micros: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    if micros.is_empty() {
        bail!("h2load's log holds no request");
    }
    micros.sort_unstable();
    let at = |q: f64| {
        let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
        micros[i] as f64 / 1000.0
    };
    (result.p50_ms, result.p75_ms, result.p90_ms, result.p99_ms) =
        (at(0.50), at(0.75), at(0.90), at(0.99));
    Ok(result)
}

#[cfg(test)]
mod h2load_tests {
    use super::parse_h2load;

    #[test]
    fn report_and_log_give_counts_and_percentiles() {
        let report = "finished in 2.00s, 1500.50 req/s, 1MB/s\n\
                      requests: 3001 total, 3001 started, 3001 done, 3000 succeeded, 1 failed, 1 errored, 0 timeout\n\
                      status codes: 2990 2xx, 0 3xx, 10 4xx, 0 5xx\n";
        let log: String = (1..=100)
            .map(|i| format!("1700000000000000\t200\t{}\n", i * 10))
            .collect();
        let r = parse_h2load(report, &log).unwrap();
        assert_eq!(
            (r.requests, r.rps, r.non_2xx, r.socket_errors),
            (3000, 1500.5, 10, 2)
        );
        assert_eq!((r.p50_ms, r.p99_ms), (0.5, 0.99));
        assert!(parse_h2load(report, "").is_err());
        assert!(parse_h2load("nothing", &log).is_err());
    }
}
