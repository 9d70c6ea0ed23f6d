//! `cargo xtask run`: set up, build and become the agent.

use std::os::unix::process::CommandExt;

use crate::util::{build_agent, release_agent};

/// Runs setup and the release build, then `exec`s `target/release/periscope <args>`, so the
/// agent receives signals (Ctrl-C) directly and its exit code is ours.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    crate::setup::setup()?;
    build_agent()?;
    let bin = release_agent();
    println!("$ {} {}", bin.display(), args.join(" "));
    let err = std::process::Command::new(&bin).args(args).exec();
    Err(anyhow::Error::new(err).context(format!("executing {}", bin.display())))
}
