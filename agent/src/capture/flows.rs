//! Loading and attaching the TCP flow programs (`agent-ebpf/src/flows.rs`).
//!
//! `cgroup/sock_create` and `sock_ops` attach to the cgroup v2 root through BPF links, so they
//! see every socket of every container, coexist with other tools' cgroup programs (a link is
//! always multi-attach; the kernel rejects the explicit `BPF_F_ALLOW_MULTI` flag on one, hence
//! `CgroupAttachMode::Single`, which sends no flag), and are detached when the agent exits.

use std::path::{Path, PathBuf};

use std::collections::{HashMap, HashSet};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use agent_ebpf::names::{map, program};
use agent_ebpf::{FlowConfig, FlowKey, FlowSockState, FlowStats, COMM_LEN, FLOW_SOCK_IGNORED};
use anyhow::Context;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, SkStorage};
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, SockOps, TracePoint,
};

use super::{program_of, take, tracepoint_field, Capture};
use crate::conn::listeners::numeric_name;

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
pub fn flow_config(tracefs: &str, udp: bool) -> FlowConfig {
    let format = Path::new(tracefs).join("events/tcp/tcp_receive_reset/format");
    let offset = std::fs::read_to_string(format)
        .ok()
        .and_then(|f| tracepoint_field(&f, "sock_cookie", 8))
        .unwrap_or(0);
    FlowConfig {
        self_tgid: std::process::id(),
        reset_cookie_offset: offset,
        udp: udp as u32,
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
        let create_name = program::FLOW_SOCK_CREATE;
        let create: &mut CgroupSock = program_of(ebpf, create_name)?.try_into()?;
        create
            .load()
            .with_context(|| format!("the kernel rejected program {create_name}"))?;
        create
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {create_name} to {}", root.display()))?;
        // The variant that also reports connects' local addresses needs Linux 6.10+.
        let with_connect = if self.connect_asked.allows(super::ConnectHook::SockOps) {
            load_sock_ops(ebpf, program::FLOW_SOCK_OPS_CONNECT)
        } else {
            Err(anyhow::anyhow!("not asked for"))
        };
        let name = if with_connect.is_ok() {
            program::FLOW_SOCK_OPS_CONNECT
        } else {
            load_sock_ops(ebpf, program::FLOW_SOCK_OPS)?;
            program::FLOW_SOCK_OPS
        };
        let ops: &mut SockOps = program_of(ebpf, name)?.try_into()?;
        ops.attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", root.display()))?;
        self.settle_connect_hook(with_connect)?;
        let ebpf = &mut self.ebpf;
        if self.udp_flows {
            // Attached last, after `sock_create` records UDP owners: per-packet hooks, so only
            // with `--udp-flows`.
            for (name, kind) in [
                (program::FLOW_UDP_INGRESS, CgroupSkbAttachType::Ingress),
                (program::FLOW_UDP_EGRESS, CgroupSkbAttachType::Egress),
            ] {
                let skb: &mut CgroupSkb = program_of(ebpf, name)?.try_into()?;
                skb.load()
                    .with_context(|| format!("the kernel rejected program {name}"))?;
                skb.attach(&cgroup, kind, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching {name} to {}", root.display()))?;
            }
            log::info!("flows: UDP bytes counted (cgroup_skb ingress and egress)");
        }
        if reset_cookie {
            let name = program::FLOW_RECEIVE_RESET;
            let tp: &mut TracePoint = program_of(ebpf, name)?.try_into()?;
            tp.load()
                .with_context(|| format!("the kernel rejected program {name}"))?;
            tp.attach("tcp", "tcp_receive_reset")
                .with_context(|| format!("attaching {name} to tcp:tcp_receive_reset"))?;
        } else {
            log::warn!(
                "tcp:tcp_receive_reset has no sock_cookie: refused connects count as timeouts"
            );
        }
        log::info!(
            "flows: sock_ops and sock_create attached to {}",
            root.display()
        );
        let adopted = adopt_listeners(ebpf, &root)?;
        log::info!("flows: {adopted} listening sockets from before start-up given their owner");
        Ok(FlowMaps {
            flows: BpfHashMap::try_from(take(ebpf, map::FLOWS)?)?,
            counters: PerCpuArray::try_from(take(ebpf, map::FLOW_COUNTERS)?)?,
        })
    }
}

fn load_sock_ops(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<()> {
    let ops: &mut SockOps = program_of(ebpf, name)?.try_into()?;
    ops.load()
        .with_context(|| format!("the kernel rejected program {name}"))
}

/// Records the owner of every listening TCP socket that existed before the programs were
/// attached (`cgroup/sock_create` never saw them), so that the connections they accept are
/// attributed to their process instead of to no one. The socket is reached through a duplicate
/// of its file descriptor (`pidfd_getfd`), the only way to name another process's socket to
/// the socket-storage map. Best effort: a process that exits meanwhile is skipped.
fn adopt_listeners(ebpf: &mut aya::Ebpf, cgroup_root: &Path) -> anyhow::Result<usize> {
    let map = ebpf
        .map_mut(map::SOCKS)
        .with_context(|| format!("map {} missing from the object", map::SOCKS))?;
    let mut socks: SkStorage<&mut MapData, FlowSockState> = SkStorage::try_from(map)?;
    let proc_root = Path::new("/proc");
    let me = std::process::id();
    let mut pids: Vec<u32> = std::fs::read_dir(proc_root)
        .context("listing /proc")?
        .flatten()
        .filter_map(|e| numeric_name(&e))
        .collect();
    // The lowest pid first: of the processes sharing a listener (a pre-fork server), the
    // parent is named.
    pids.sort_unstable();
    // Listener inodes per network namespace, read once per namespace.
    let mut listeners_of_netns: HashMap<u64, HashSet<u64>> = HashMap::new();
    let mut done: HashSet<u64> = HashSet::new();
    for pid in pids {
        let Ok(netns) = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino()) else {
            continue;
        };
        let listeners = listeners_of_netns.entry(netns).or_insert_with(|| {
            crate::conn::listeners::listening_sockets(proc_root, pid)
                .into_iter()
                .map(|e| e.inode)
                .collect()
        });
        if listeners.is_empty() {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut owner: Option<FlowSockState> = None;
        for entry in fds.flatten() {
            let Some(fd) = numeric_name::<i32>(&entry) else {
                continue;
            };
            let Some(inode) = std::fs::read_link(entry.path()).ok().and_then(|l| {
                l.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            }) else {
                continue;
            };
            if !listeners.contains(&inode) || done.contains(&inode) {
                continue;
            }
            let Some(socket) = duplicate_fd(pid, fd) else {
                continue;
            };
            let mut state = *owner.get_or_insert_with(|| owner_of(pid, cgroup_root));
            if pid == me {
                // The metrics endpoint predates the programs: its scrapes are not counted.
                state.flags = FLOW_SOCK_IGNORED;
            }
            match socks.insert(&socket, state, 0) {
                Ok(()) => {
                    done.insert(inode);
                }
                Err(e) => log::debug!("flows: cannot record the owner of {pid}'s fd {fd}: {e}"),
            }
        }
    }
    Ok(done.len())
}

/// A duplicate of another process's file descriptor, or `None` if it is gone.
fn duplicate_fd(pid: u32, fd: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return None;
    }
    // SAFETY: `pidfd` was just returned to us and is owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes a pidfd, a target fd and flags, returning a new fd or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    // SAFETY: on success the new fd is ours alone.
    (dup >= 0).then(|| unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

/// What `cgroup/sock_create` would have recorded for a socket created by `pid`.
fn owner_of(pid: u32, cgroup_root: &Path) -> FlowSockState {
    let mut comm = [0u8; COMM_LEN];
    if let Ok(name) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        let name = name.trim_end().as_bytes();
        let n = name.len().min(COMM_LEN - 1);
        comm[..n].copy_from_slice(&name[..n]);
    }
    // The cgroup v2 id is the inode number of the cgroup's directory.
    let cgroup_id = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| {
            let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
            let dir = cgroup_root.join(path.trim_start_matches('/'));
            std::fs::metadata(dir).ok().map(|m| m.ino())
        })
        .unwrap_or(0);
    FlowSockState {
        cgroup_id,
        tgid: pid,
        comm,
        ..FlowSockState::default()
    }
}
