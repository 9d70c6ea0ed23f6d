//! Loading and attaching the TCP flow programs (`agent-ebpf/src/flows.rs`).
//!
//! `cgroup/sock_create` and `sock_ops` attach to the cgroup v2 root through BPF links, so they
//! see every socket of every container, coexist with other tools' cgroup programs (a link is
//! always multi-attach; the kernel rejects the explicit `BPF_F_ALLOW_MULTI` flag on one, hence
//! `CgroupAttachMode::Single`, which sends no flag), and are detached when the agent exits.

use std::path::{Path, PathBuf};

use agent_ebpf::{FlowConfig, FlowKey, FlowStats};
use anyhow::Context;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::{CgroupAttachMode, CgroupSock, SockOps, TracePoint};

use super::{program_of, take, tracepoint_field, Capture};

/// The maps the flow poller reads.
pub struct FlowMaps {
    /// Per-flow cumulative counters.
    pub flows: BpfHashMap<MapData, FlowKey, FlowStats>,
    /// `FLOW_COUNTER_NAMES`, per CPU.
    pub counters: PerCpuArray<MapData, u64>,
}

/// The flow programs' load-time configuration: the agent's pid and where the socket cookie
/// sits in `tcp:tcp_receive_reset` (0 when the tracepoint lacks it; resets are then not told
/// apart and failed connects count as timeouts).
pub fn flow_config(tracefs: &str) -> FlowConfig {
    let format = Path::new(tracefs).join("events/tcp/tcp_receive_reset/format");
    let offset = std::fs::read_to_string(format)
        .ok()
        .and_then(|f| tracepoint_field(&f, "sock_cookie", 8))
        .unwrap_or(0);
    FlowConfig {
        self_tgid: std::process::id(),
        reset_cookie_offset: offset,
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(path))
    })
}

impl Capture {
    /// Loads and attaches the flow programs; returns the maps to poll.
    pub fn start_flows(&mut self) -> anyhow::Result<FlowMaps> {
        let reset_cookie = self.reset_cookie;
        let root = cgroup2_root().context(
            "TCP flows need a cgroup v2 hierarchy (none mounted); turn them off with --flows=false",
        )?;
        let cgroup = std::fs::File::open(&root)
            .with_context(|| format!("opening the cgroup v2 root {}", root.display()))?;
        let ebpf = &mut self.ebpf;
        let create: &mut CgroupSock = program_of(ebpf, "flow_sock_create")?.try_into()?;
        create
            .load()
            .context("the kernel rejected program flow_sock_create")?;
        create
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching flow_sock_create to {}", root.display()))?;
        let ops: &mut SockOps = program_of(ebpf, "flow_sock_ops")?.try_into()?;
        ops.load()
            .context("the kernel rejected program flow_sock_ops")?;
        ops.attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching flow_sock_ops to {}", root.display()))?;
        if reset_cookie {
            let tp: &mut TracePoint = program_of(ebpf, "flow_receive_reset")?.try_into()?;
            tp.load()
                .context("the kernel rejected program flow_receive_reset")?;
            tp.attach("tcp", "tcp_receive_reset")
                .context("attaching flow_receive_reset to tcp:tcp_receive_reset")?;
        } else {
            log::warn!(
                "tcp:tcp_receive_reset has no sock_cookie: refused connects count as timeouts"
            );
        }
        log::info!(
            "flows: sock_ops and sock_create attached to {}",
            root.display()
        );
        Ok(FlowMaps {
            flows: BpfHashMap::try_from(take(ebpf, "FLOWS")?)?,
            counters: PerCpuArray::try_from(take(ebpf, "FLOW_COUNTERS")?)?,
        })
    }
}
