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

/// Runs setup, the release build of the agent, the workspace's tests (unit and end-to-end,
/// one test thread because end-to-end tests share the kernel) and a short fuzz run per target.
pub fn test(args: &TestArgs) -> anyhow::Result<()> {
    let mut stages = Stages::default();
    stages.run("setup".into(), crate::setup::setup);
    stages.run("build agent (release)".into(), build_agent);
    stages.run("cargo test --workspace --release".into(), || {
        run(cmd("cargo").env("PERISCOPE_BIN", release_agent()).args([
            "test",
            "--workspace",
            "--release",
            "--",
            "--test-threads=1",
        ]))
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
            run(cmd("cargo")
                .current_dir(&fuzz_dir)
                .env("AYA_BUILD_SKIP", "1")
                .args(["+nightly", "fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={}", args.fuzz_seconds)))
        });
    }
    stages.summary()
}

/// The fuzz targets: `fuzz/fuzz_targets/*.rs` file stems, sorted; none if there is no fuzz/.
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
