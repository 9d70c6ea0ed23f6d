//! Two network namespaces joined by a veth pair, for tests that need real packets between
//! distinct addresses (and packet drops) without touching the host's network.
//!
//! Names and addresses derive from the test process's pid and a counter, so concurrent test
//! runs on one machine never share a namespace or a flow label. Dropping the pair deletes both
//! namespaces, which removes the veth devices and any firewall rules in them.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

/// A client namespace and a server namespace, `10.a.b.1/30` and `10.a.b.2/30` on a veth pair.
#[derive(Debug)]
pub struct NetnsPair {
    /// Namespace of the client end.
    pub client_ns: String,
    /// Namespace of the server end.
    pub server_ns: String,
    /// The client's address (inside `client_ns` only).
    pub client_ip: String,
    /// The server's address (inside `server_ns` only).
    pub server_ip: String,
}

impl NetnsPair {
    /// Creates both namespaces, the veth pair and the addresses, with loopback up in each.
    pub fn new() -> anyhow::Result<NetnsPair> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{n}", pid);
        // 10.<pid bits 8..16>.<pid bits 0..8 + counter>.0/30.
        let subnet = format!("10.{}.{}", (pid >> 8) & 0xff, pid.wrapping_add(n) & 0xff);
        let pair = NetnsPair {
            client_ns: format!("psc-c-{tag}"),
            server_ns: format!("psc-s-{tag}"),
            client_ip: format!("{subnet}.1"),
            server_ip: format!("{subnet}.2"),
        };
        let veth_c = format!("pc{tag}");
        let veth_s = format!("ps{tag}");
        run(&["ip", "netns", "add", &pair.client_ns])?;
        run(&["ip", "netns", "add", &pair.server_ns])?;
        run(&[
            "ip",
            "link",
            "add",
            &veth_c,
            "netns",
            &pair.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            &veth_s,
            "netns",
            &pair.server_ns,
        ])?;
        for (ns, dev, ip) in [
            (&pair.client_ns, &veth_c, &pair.client_ip),
            (&pair.server_ns, &veth_s, &pair.server_ip),
        ] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/30"),
                "dev",
                dev,
            ])?;
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// A command run inside namespace `ns` (`ip netns exec <ns> <program> <args>`).
    pub fn command(ns: &str, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]).args(args);
        cmd
    }

    /// Runs a command inside `ns` and fails with its stderr if it fails.
    pub fn exec(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let output = NetnsPair::command(ns, program, args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} in {ns}"))?;
        check(&format!("{program} {args:?} in {ns}"), output)
    }

    /// The namespace's `Tcp: RetransSegs` counter (`/proc/net/snmp` is per namespace).
    pub fn retrans_segs(ns: &str) -> anyhow::Result<u64> {
        let snmp = NetnsPair::exec(ns, "cat", &["/proc/net/snmp"])?;
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
            bail!("no Tcp lines in /proc/net/snmp of {ns}");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "RetransSegs")
            .and_then(|(_, value)| value.parse().ok())
            .with_context(|| format!("no RetransSegs in /proc/net/snmp of {ns}"))
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn run(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {args:?}"))?;
    check(&format!("{args:?}"), output)
}

fn check(what: &str, output: Output) -> anyhow::Result<String> {
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
