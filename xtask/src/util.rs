//! Running commands: streamed (the child writes straight to our terminal) or probed quietly.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// The workspace root; every command runs from there unless it says otherwise.
pub fn root() -> PathBuf {
    harness::workspace_root()
}

/// A command that runs in the workspace root.
pub fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.current_dir(root());
    c
}

/// Runs `cmd` with inherited stdio, echoing it first; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    println!("$ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs `program args…` silently; `Some(stdout)` if it exits 0, `None` otherwise (including
/// when the program does not exist).
pub fn probe(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `program arg arg…` with the environment overrides first, for echoing.
pub fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v?.to_str()?)))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains([' ', '"', '\'', '$']) {
            format!("'{}'", a.replace('\'', r"'\''"))
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// `cargo build --release -p agent`, streamed.
pub fn build_agent() -> anyhow::Result<()> {
    run(cmd("cargo").args(["build", "--release", "-p", "agent"]))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set (as in a shared checkout with a
/// target directory per worktree), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => root().join("target"),
    }
}

/// Where `cargo build --release -p agent` puts the agent.
pub fn release_agent() -> PathBuf {
    target_dir().join("release/periscope")
}

/// The agent binary a benchmark runs: `$PERISCOPE_BIN` as given; else the release build in
/// [`target_dir`] (which honours `CARGO_TARGET_DIR`), made by `build` first unless `no_build`.
pub fn bench_agent(
    no_build: bool,
    build: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    match std::env::var_os("PERISCOPE_BIN") {
        Some(bin) if !bin.is_empty() => Ok(PathBuf::from(bin)),
        _ => {
            if !no_build {
                build()?;
            }
            Ok(release_agent())
        }
    }
}
