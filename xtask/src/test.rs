//! `cargo xtask test`: everything CI runs, in order, stopping at the first failure.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::util::{build_agent, cmd, release_agent, root, run};

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Seconds of fuzzing per fuzz target (0 skips fuzzing).
    #[arg(long, default_value_t = 30)]
    pub fuzz_seconds: u64,
    /// Skip the kernel matrices (`cargo xtask vm`: the capture tests in the Debian 6.1 and
    /// 6.12 x86_64 kernels and the 6.1 arm64 kernel under QEMU).
    #[arg(long)]
    pub no_vm: bool,
}

enum Outcome {
    Passed,
    Failed(anyhow::Error),
    Skipped(&'static str),
}

struct Stage {
    name: String,
    outcome: Outcome,
    seconds: f64,
}

#[derive(Default)]
struct Stages {
    stages: Vec<Stage>,
    failed: bool,
}

impl Stages {
    /// Runs `body` as stage `name`, unless an earlier stage failed.
    fn run(&mut self, name: String, body: impl FnOnce() -> anyhow::Result<()>) {
        if self.failed {
            return self.skip(name, "an earlier stage failed");
        }
        println!("\n==> {name}");
        let started = Instant::now();
        let outcome = match body() {
            Ok(()) => Outcome::Passed,
            Err(e) => {
                eprintln!("==> {name} FAILED: {e:#}");
                self.failed = true;
                Outcome::Failed(e)
            }
        };
        self.stages.push(Stage {
            name,
            outcome,
            seconds: started.elapsed().as_secs_f64(),
        });
    }

    fn skip(&mut self, name: String, why: &'static str) {
        self.stages.push(Stage {
            name,
            outcome: Outcome::Skipped(why),
            seconds: 0.0,
        });
    }

    /// Prints one line per stage; fails if any stage failed.
    fn summary(self) -> anyhow::Result<()> {
        println!("\n==> summary");
        let mut failures = 0;
        for s in &self.stages {
            let (word, detail) = match &s.outcome {
                Outcome::Passed => ("ok", String::new()),
                Outcome::Failed(e) => {
                    failures += 1;
                    ("FAILED", format!(": {e:#}"))
                }
                Outcome::Skipped(why) => ("skipped", format!(" ({why})")),
            };
            println!("  {word:<8} {:<40} {:>7.1} s{detail}", s.name, s.seconds);
        }
        // Deliberately not phrased "N passed, N failed": CI would read that as a test count.
        if failures > 0 {
            bail!("{failures} of {} stages failed", self.stages.len());
        }
        println!("xtask test: every stage succeeded");
        Ok(())
    }
}

/// Runs the lint gates, setup, the release build of the agent, the workspace's tests (unit and
/// end-to-end, one test thread because end-to-end tests share the kernel) and a short fuzz run
/// per target.
pub fn test(args: &TestArgs) -> anyhow::Result<()> {
    let mut stages = Stages::default();
    stages.run("lint".into(), lint);
    stages.run("setup".into(), crate::setup::setup);
    stages.run("build agent (release)".into(), build_agent);
    let mut counts = TestCounts::default();
    stages.run("cargo test --workspace --release".into(), || {
        counts = run_counting(cmd("cargo").env("PERISCOPE_BIN", release_agent()).args([
            "test",
            "--workspace",
            "--release",
            "--no-fail-fast",
            "--",
            "--test-threads=1",
        ]))?;
        if counts.failed > 0 {
            bail!("{} tests failed", counts.failed);
        }
        Ok(())
    });
    let fuzz_dir = root().join("fuzz");
    let targets = fuzz_targets(&fuzz_dir)?;
    if targets.is_empty() {
        stages.skip("fuzz".into(), "no fuzz/fuzz_targets/*.rs");
    }
    for target in &targets {
        let name = format!("fuzz {target} ({} s)", args.fuzz_seconds);
        if args.fuzz_seconds == 0 {
            stages.skip(name, "--fuzz-seconds 0");
            continue;
        }
        stages.run(name, || {
            let corpus = fuzz_dir.join("corpus").join(target);
            let seeds = seed_corpus(target, &corpus)?;
            println!("fuzz {target}: {seeds} seeds from the recorded fixtures");
            run(cmd("cargo")
                .current_dir(&fuzz_dir)
                .env("AYA_BUILD_SKIP", "1")
                .args(["+nightly", "fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={}", args.fuzz_seconds))
                .args(fuzz_limits(target)))
        });
    }
    if args.no_vm {
        stages.skip("kernel matrices (cargo xtask vm)".into(), "--no-vm");
    } else {
        stages.run("kernel matrix x86_64 (cargo xtask vm)".into(), || {
            crate::vm::vm(&crate::vm::VmArgs {
                kernels: vec!["6.1".into(), "6.12".into()],
                arches: vec![crate::vm::Arch::X86_64],
                timeout: 240,
            })
        });
        // One arm64 kernel, the oldest: each arm64 guest takes about 3 minutes under TCG.
        stages.run("kernel matrix arm64 (cargo xtask vm)".into(), || {
            crate::vm::vm(&crate::vm::VmArgs {
                kernels: vec!["6.1".into()],
                arches: vec![crate::vm::Arch::Aarch64],
                timeout: 240,
            })
        });
    }
    let outcome = stages.summary();
    // The one closing line CI reads as the test count, over every cargo test binary.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    outcome
}

/// The lint gates: formatting, then clippy with warnings as errors over every target.
///
/// Clippy runs with `AYA_BUILD_SKIP=1`: the kernel programs are `#[cfg(target_arch = "bpf")]`,
/// so a host clippy never lints them either way, and building the kernel object for clippy's
/// (debug) profile would compile it a second time besides the release build's.
fn lint() -> anyhow::Result<()> {
    run(cmd("cargo").args(["fmt", "--all", "--", "--check"]))?;
    run(cmd("cargo").env("AYA_BUILD_SKIP", "1").args([
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Totals of cargo test's `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl TestCounts {
    /// Adds one `test result: ok. 12 passed; 0 failed; 1 ignored; ...` line; other lines are
    /// ignored.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cmd` streaming its stdout through (stderr is inherited) and totals its test results.
fn run_counting(cmd: &mut std::process::Command) -> anyhow::Result<TestCounts> {
    use std::io::{BufRead, BufReader};
    println!("$ {}", crate::util::display(cmd));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", crate::util::display(cmd)))?;
    let mut counts = TestCounts::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.unwrap_or_default();
            println!("{line}");
            counts.add_line(&line);
        }
    }
    let status = child.wait()?;
    if !status.success() && counts.failed == 0 {
        bail!("`{}` failed ({status})", crate::util::display(cmd));
    }
    Ok(counts)
}

/// The fuzz targets: `fuzz/fuzz_targets/*.rs` file stems, sorted; none if there is no fuzz/.
/// libFuzzer limits for `target`: a per-input timeout (a slow input fails the run: that is how
/// a quadratic path is found), a memory limit, and inputs long enough for both to bite. Text
/// parsers (SQL, routes) get long inputs: a quadratic path shows only on those.
fn fuzz_limits(target: &str) -> Vec<String> {
    let max_len = match target {
        "sql" | "route" => 65_536,
        "traceparent" => 1_024,
        _ => 16_384,
    };
    vec![
        "-timeout=10".into(),
        "-rss_limit_mb=1024".into(),
        format!("-max_len={max_len}"),
    ]
}

/// Writes one seed per recorded fixture of the decoder `target` fuzzes into `corpus`, in the
/// fuzz input format (`fuzz/src/lib.rs`: a control byte whose bit 0 is the stream, no gap, a
/// length byte, then up to 255 bytes; longer chunks become several records). Returns how many.
fn seed_corpus(target: &str, corpus: &Path) -> anyhow::Result<usize> {
    if target == "elf" {
        return seed_elf(corpus);
    }
    let fixtures = root().join("agent/tests/fixtures").join(target);
    if !fixtures.is_dir() {
        return Ok(0);
    }
    std::fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let mut seeds = 0;
    for entry in std::fs::read_dir(&fixtures)?.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let mut seed = Vec::new();
        for (stream, bytes) in fixture_chunks(&text) {
            for piece in bytes.chunks(255) {
                seed.push(u8::from(stream == "response"));
                seed.push(piece.len() as u8);
                seed.extend_from_slice(piece);
            }
        }
        let name = path.file_stem().and_then(|n| n.to_str()).unwrap_or("seed");
        std::fs::write(corpus.join(format!("fixture_{name}")), seed)?;
        seeds += 1;
    }
    Ok(seeds)
}

/// The ELF reader's seed: a 2 KiB shared library defining three of the TLS functions, built
/// with gcc (no seed when gcc is missing: the fuzzer then starts from nothing).
fn seed_elf(corpus: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let source = corpus.join("seed.c.txt");
    std::fs::write(
        &source,
        "int SSL_read(void *s, void *b, int n) { return n; }\n\
         int SSL_write(void *s, const void *b, int n) { return n; }\n\
         int SSL_read_ex(void *s, void *b, unsigned long n, unsigned long *r) { *r = n; return 1; }\n",
    )?;
    let built = std::process::Command::new("gcc")
        .args(["-x", "c", "-shared", "-nostdlib", "-fPIC", "-O1"])
        .args(["-Wl,-z,max-page-size=16", "-Wl,-z,noseparate-code", "-o"])
        .arg(corpus.join("seed_libssl"))
        .arg(&source)
        .status()
        .is_ok_and(|s| s.success());
    std::fs::remove_file(&source)?;
    Ok(usize::from(built))
}

/// The `(stream, bytes)` chunks of a fixture file: one `{"stream": …, "hex": …}` object per
/// line (the fixed shape `agent/src/protocol/fixture.rs` reads).
fn fixture_chunks(text: &str) -> Vec<(String, Vec<u8>)> {
    let field = |line: &str, key: &str| -> Option<String> {
        let rest = &line[line.find(&format!("\"{key}\": \""))? + key.len() + 5..];
        Some(rest[..rest.find('"')?].to_owned())
    };
    text.lines()
        .filter_map(|line| {
            let stream = field(line, "stream")?;
            let hex = field(line, "hex")?;
            let bytes = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect();
            Some((stream, bytes))
        })
        .collect()
}

fn fuzz_targets(fuzz_dir: &Path) -> anyhow::Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut targets: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    targets.sort();
    Ok(targets)
}

#[cfg(test)]
mod seed_tests {
    #[test]
    fn fixture_chunks_are_read_in_order() {
        let text = "{\"scenario\": \"x\", \"chunks\": [\n\
                    {\"stream\": \"request\", \"hex\": \"4745540a\"},\n\
                    {\"stream\": \"response\", \"hex\": \"00ff\"}\n]}";
        assert_eq!(
            super::fixture_chunks(text),
            [
                ("request".to_owned(), b"GET\n".to_vec()),
                ("response".to_owned(), vec![0, 0xff])
            ]
        );
    }
}

#[cfg(test)]
mod count_tests {
    use super::TestCounts;

    #[test]
    fn totals_result_lines() {
        let mut c = TestCounts::default();
        c.add_line("test result: ok. 76 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.05s");
        c.add_line("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured");
        c.add_line("running 13 tests");
        assert_eq!(
            c,
            TestCounts {
                passed: 79,
                failed: 2,
                ignored: 1
            }
        );
    }
}
