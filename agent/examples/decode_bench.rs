//! Decode cost per exchange, from the recorded real traffic in `agent/tests/fixtures`.
//!
//! For each protocol of the registry (`periscope::protocol::REGISTRY`), every fixture is loaded
//! once; then each timed run replays all of them `--iterations` times, each replay through a
//! fresh decoder made by the registry entry, as the agent makes one for a new connection, and
//! counts the exchanges produced. Decoding goes through the same path as in the agent: the
//! boxed decoder, exchanges turned into `Detail`s (PostgreSQL's database name attached, Kafka
//! topic ids named). One untimed run first warms caches and the allocator, and checks that
//! every fixture decodes.
//!
//! `cargo xtask bench decode` builds and runs this (release, without the eBPF programs) and
//! turns its output into a Markdown report: one line per run,
//! `protocol=<p> run=<i> fixtures=<n> replays=<n> exchanges=<n> bytes=<n> errors=<n> ns=<n>`.
//!
//! Usage: `decode_bench [--iterations N] [--runs N] [--fixtures DIR] [--protocol P]…`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use periscope::exchange::Detail;
use periscope::protocol::fixture::{self, Fixture};
use periscope::protocol::{Chunk, Protocol, Shared, REGISTRY};

/// The protocols measured, in report order, by their fixture directory under the fixtures
/// root (which is also the name reports use).
fn protocols() -> Vec<&'static str> {
    REGISTRY.iter().map(|p| p.fixtures).collect()
}

struct Options {
    iterations: u64,
    runs: usize,
    fixtures: PathBuf,
    protocols: Vec<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        iterations: 5000,
        runs: 5,
        fixtures: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
        protocols: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        // A positive number, or an error naming the flag.
        let positive = |v: String| -> Result<u64, String> {
            v.parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{arg} {v:?}: expected a positive number"))
        };
        match arg.as_str() {
            "--iterations" => options.iterations = positive(value()?)?,
            "--runs" => options.runs = positive(value()?)? as usize,
            "--fixtures" => options.fixtures = PathBuf::from(value()?),
            "--protocol" => {
                let v = value()?;
                if !protocols().contains(&v.as_str()) {
                    return Err(format!(
                        "--protocol {v:?}: expected one of {:?}",
                        protocols()
                    ));
                }
                options.protocols.push(v);
            }
            "-h" | "--help" => {
                println!(
                    "decode_bench [--iterations N] [--runs N] [--fixtures DIR] [--protocol P]…\n\
                     protocols: {:?} (default: all)",
                    protocols()
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if options.protocols.is_empty() {
        options.protocols = protocols().iter().map(|p| p.to_string()).collect();
    }
    Ok(options)
}

/// Payload bytes of a fixture.
fn fixture_bytes(fixture: &Fixture) -> u64 {
    fixture.chunks.iter().map(|(_, b)| b.len() as u64).sum()
}

/// What replaying fixtures produced.
#[derive(Default, Clone, Copy)]
struct Tally {
    exchanges: u64,
    /// Fixtures the decoder gave up on (the agent would mute the connection there).
    errors: u64,
}

/// Replays one fixture through a fresh decoder, as one connection: chunk `i` moved at
/// `i` ns, and the connection closes after the last. Exchanges are dropped here, so their
/// allocations and frees are part of the cost, as in the agent.
fn replay(
    protocol: &Protocol,
    fixture: &Fixture,
    shared: &mut Shared,
    out: &mut Vec<Detail>,
) -> Tally {
    let mut decoder = (protocol.start)(false);
    let mut failed = false;
    for (i, (stream, bytes)) in fixture.chunks.iter().enumerate() {
        let chunk = Chunk {
            stream: *stream,
            first_ns: i as u64,
            last_ns: i as u64,
            bytes,
            len: bytes.len() as u64,
        };
        if decoder.feed(&chunk, shared, out).is_err() {
            failed = true;
            break;
        }
    }
    decoder.close(fixture.chunks.len() as u64, shared, out);
    let exchanges = out.len() as u64;
    black_box(&mut *out).clear();
    Tally {
        exchanges,
        errors: u64::from(failed),
    }
}

fn bench(protocol: &Protocol, fixtures: &[Fixture], options: &Options) {
    let name = protocol.fixtures;
    let mut out = Vec::new();
    let mut shared = Shared::default();
    // Untimed check pass: say which fixtures a decoder rejects, since their cost is partial.
    for f in fixtures {
        let t = replay(protocol, f, &mut shared, &mut out);
        if t.errors > 0 {
            eprintln!(
                "[decode_bench] warning: {name}/{}: the decoder gave up",
                f.name
            );
        }
    }
    let bytes: u64 = fixtures.iter().map(fixture_bytes).sum();
    // Run 0 warms up and is not reported.
    for run in 0..=options.runs {
        let mut tally = Tally::default();
        let started = Instant::now();
        for _ in 0..options.iterations {
            for f in fixtures {
                let t = replay(protocol, black_box(f), &mut shared, &mut out);
                tally.exchanges += t.exchanges;
                tally.errors += t.errors;
            }
        }
        let ns = started.elapsed().as_nanos();
        if run == 0 {
            continue;
        }
        println!(
            "protocol={name} run={run} fixtures={} replays={} exchanges={} bytes={} errors={} ns={ns}",
            fixtures.len(),
            options.iterations * fixtures.len() as u64,
            tally.exchanges,
            bytes * options.iterations,
            tally.errors,
        );
    }
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("decode_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    for protocol in &options.protocols {
        let dir = options.fixtures.join(protocol);
        let fixtures = match fixture::load_dir(&dir) {
            Ok(f) if !f.is_empty() => f,
            Ok(_) => {
                eprintln!("decode_bench: no fixtures in {}", dir.display());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("decode_bench: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!(
            "[decode_bench] {protocol}: {} fixtures, {} chunks, {} bytes; {} runs of {} iterations",
            fixtures.len(),
            fixtures.iter().map(|f| f.chunks.len()).sum::<usize>(),
            fixtures.iter().map(fixture_bytes).sum::<u64>(),
            options.runs,
            options.iterations
        );
        let entry = REGISTRY
            .iter()
            .find(|p| p.fixtures == protocol)
            .expect("checked in parse_args");
        bench(entry, &fixtures, &options);
    }
    ExitCode::SUCCESS
}
