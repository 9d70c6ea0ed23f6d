//! `promtool check metrics`: Prometheus' own linter for exposition text.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// Pipes `text` into `promtool check metrics`. Ok when promtool accepts it; otherwise the
/// error carries promtool's complaints (parse errors and lint findings such as a counter
/// without `_total` or a metric without `# HELP`).
pub fn promtool_check_metrics(text: &str) -> anyhow::Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (package prometheus; `cargo xtask setup` installs it)")?;
    let mut stdin = child.stdin.take().context("promtool's stdin")?;
    // Written from a thread so a promtool that answers before reading everything cannot
    // deadlock us on a full pipe.
    let text = text.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let output = child.wait_with_output().context("waiting for promtool")?;
    // promtool may exit (e.g. on a parse error) before reading all input: a broken pipe
    // then says nothing that its output does not.
    let _ = writer.join();
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "promtool check metrics rejected the exposition ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
