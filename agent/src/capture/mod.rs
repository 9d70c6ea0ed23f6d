//! Loading, probing and attaching the kernel programs, and the typed view of their maps
//! (`ring`). The only module that talks to the kernel; the event loop that drains the ring
//! buffer is `crate::pipeline`.
//!
//! Every program and map is named through `agent_ebpf::names`, the table shared with the
//! kernel crate (checked against the embedded object by `names_tests`).
//!
//! Everything is attached through links owned by file descriptors, so when the agent exits,
//! however it exits, the kernel detaches every program.

use std::path::Path;

use agent_ebpf::names::{global, map, program};

use agent_ebpf::{
    Config, ConnectConfig, SyscallFilter, SyscallKey, SyscallStats, MAX_CAPTURE, SYSCALL_NR_LIMIT,
    SYSCALL_STATS_IN_IO_EXIT, SYSCALL_STATS_OFF, SYSCALL_STATS_SEPARATE,
};
use anyhow::{bail, Context};
use aya::maps::{MapData, PerCpuHashMap};
use aya::programs::{BtfTracePoint, CgroupAttachMode, FExit, RawTracePoint, SockOps, TracePoint};
use aya::Btf;
use aya::{Ebpf, EbpfLoader};

mod btf;
pub mod elf;
pub mod flows;
pub mod preflight;
pub mod ring;
pub mod tls;

pub use ring::Maps;

#[cfg(test)]
mod names_tests;

/// The kernel object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Classic tracepoints: (program, category, name).
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    (program::SYS_ENTER_CLOSE, "syscalls", "sys_enter_close"),
    (program::SYS_ENTER_DUP3, "syscalls", "sys_enter_dup3"),
    (program::PROCESS_EXEC, "sched", "sched_process_exec"),
    (program::TASK_NEWTASK, "task", "task_newtask"),
    (program::PROCESS_EXIT, "sched", "sched_process_exit"),
];

/// How the syscall exit hook is attached. Both run the same code and produce the same
/// events; they differ in how registers are read and in what the kernel must offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookMode {
    /// The cheapest the kernel accepts: fexit, else BTF tracepoints, else raw tracepoints.
    Auto,
    /// `fexit` on each hooked syscall's function (`__x64_sys_read`, ...): no other syscall runs
    /// BPF code. Needs BTF and BPF trampolines (not every kernel or host allows them).
    Fexit,
    /// `tp_btf/sys_exit`: registers are plain loads. Needs kernel BTF.
    Btf,
    /// `raw_tracepoint/sys_exit`: registers read through a helper. Any kernel ≥ 5.8.
    Raw,
}

impl HookMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HookMode::Auto => "auto",
            HookMode::Fexit => "fexit",
            HookMode::Btf => "tp_btf",
            HookMode::Raw => "raw_tracepoint",
        }
    }
}

/// Capture settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Payload prefix copied per syscall (≤ `MAX_CAPTURE`).
    pub capture_bytes: u32,
    /// Ring-buffer size in bytes (a power of two, at least one page).
    pub ringbuf_bytes: u32,
    pub hooks: HookMode,
    /// Prefer the exit programs that frame PostgreSQL, Kafka and HTTP/1.x messages (`--framing`).
    pub framing: bool,
    /// Turn on the kernel's per-program run-time statistics.
    pub bpf_stats: bool,
    /// Per-syscall statistics; `None` attaches no syscall statistics program at all.
    pub syscalls: Option<SyscallSettings>,
    /// UDP bytes per flow (`--udp-flows`): two per-packet cgroup_skb programs.
    pub udp_flows: bool,
    /// How connects learn their socket's own address (`--connect-hook`).
    pub connect_hook: ConnectHook,
    /// Load the TLS uprobes (`--tls`); `capture::tls` attaches them to files.
    pub tls: bool,
}

/// How an `Open` event from `connect` gets the connecting socket's own address, which is what
/// links a server span on this node to the client span that called it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConnectHook {
    /// `sock-ops` where the kernel accepts it (6.10+), else `tracepoint`, else none.
    Auto,
    /// A `sock_ops` program at `TCP_CONNECT_CB` names the connecting thread. Stable contexts
    /// only; needs `bpf_get_current_pid_tgid` in `sock_ops` (Linux 6.10+) and cgroup v2.
    SockOps,
    /// `sock:inet_sock_set_state` keeps the thread's socket when `connect` moves it to
    /// SYN-SENT, and the `connect` exit reads the picked port and address from it (`struct
    /// sock_common`, offsets from the kernel's BTF). Needs kernel BTF.
    Tracepoint,
    /// None: traces do not cross from a client to a server on this node.
    Off,
}

impl ConnectHook {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectHook::Auto => "auto",
            ConnectHook::SockOps => "sock_ops",
            ConnectHook::Tracepoint => "tracepoint",
            ConnectHook::Off => "none",
        }
    }

    fn allows(self, tier: ConnectHook) -> bool {
        self == tier || self == ConnectHook::Auto
    }
}

/// Kernel side of the per-syscall statistics.
#[derive(Clone, Debug)]
pub struct SyscallSettings {
    /// The syscalls to count (at least one).
    pub filter: SyscallFilter,
    /// Size of the (cgroup, syscall) table: the series cap.
    pub max_series: u32,
    /// Keep the exit side in a program of its own even when the I/O exit hook could do it
    /// (for measuring the difference; `--syscalls-separate-exit`).
    pub separate_exit: bool,
    /// Where the entry hook goes (`--syscalls-entry`, hidden: for measuring the difference).
    pub entry: SyscallEntry,
}

/// Where the syscall statistics' entry hook is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SyscallEntry {
    /// Per-syscall tracepoints when every selected syscall has one, else `raw_syscalls`.
    #[default]
    Auto,
    /// One program on `syscalls:sys_enter_<name>` of each selected syscall: unselected
    /// syscalls run no entry program. Fails if a selected syscall has no such event.
    PerSyscall,
    /// One program on `raw_syscalls:sys_enter` (tp_btf or raw tracepoint), which every syscall
    /// runs only to test whether it is selected.
    RawSyscalls,
}

/// The entry hook chosen for a selection on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
enum EntryPlan {
    /// `syscalls:<event>` for each selected syscall; `__syscall_nr` is at `nr_offset`. With
    /// `required` (`--syscalls-entry per-syscall`) a failure to attach them is an error, else
    /// the `raw_syscalls` hook takes over.
    PerSyscall {
        events: Vec<String>,
        nr_offset: u32,
        required: bool,
    },
    /// `raw_syscalls:sys_enter`, and why not the per-syscall events (`None`: asked for).
    RawSyscalls { why: Option<String> },
}

/// Chooses the entry hook for `settings`: per-syscall tracepoints if each selected syscall
/// has one with a `__syscall_nr` field at the same offset, else (with `auto`) the
/// `raw_syscalls:sys_enter` hook, with an info line naming what was missing.
fn plan_entry(tracefs: &str, settings: &SyscallSettings) -> anyhow::Result<EntryPlan> {
    if settings.entry == SyscallEntry::RawSyscalls {
        return Ok(EntryPlan::RawSyscalls { why: None });
    }
    let dir = Path::new(tracefs).join("events/syscalls");
    let mut events = Vec::new();
    let mut missing = Vec::new();
    let mut offsets = std::collections::BTreeSet::new();
    for nr in (0..SYSCALL_NR_LIMIT as u32).filter(|nr| settings.filter.contains(u64::from(*nr))) {
        let field = crate::syscalls::enter_event(nr).and_then(|event| {
            let format = std::fs::read_to_string(dir.join(&event).join("format")).ok()?;
            Some((event, tracepoint_field(&format, "__syscall_nr", 4)?))
        });
        match field {
            Some((event, offset)) => {
                events.push(event);
                offsets.insert(offset);
            }
            None => missing.push(crate::syscalls::syscall_name(nr)),
        }
    }
    let why = match (missing.is_empty(), offsets.len()) {
        (true, 1) => {
            let nr_offset = offsets.into_iter().next().unwrap_or_default();
            return Ok(EntryPlan::PerSyscall {
                events,
                nr_offset,
                required: settings.entry == SyscallEntry::PerSyscall,
            });
        }
        (true, _) => "their `__syscall_nr` fields are at different offsets".to_owned(),
        (false, _) => format!(
            "no {}/sys_enter_* event with a `__syscall_nr` field for {}",
            dir.display(),
            missing.join(", ")
        ),
    };
    if settings.entry == SyscallEntry::PerSyscall {
        bail!("--syscalls-entry per-syscall: {why}");
    }
    Ok(EntryPlan::RawSyscalls { why: Some(why) })
}

/// The per-thread start-time table's size when syscall statistics are off (it must exist).
const UNUSED_MAP_ENTRIES: u32 = 1;

/// Loaded and attached kernel programs. Dropping it detaches everything.
pub struct Capture {
    ebpf: Ebpf,
    /// Keeps the kernel's per-program run-time statistics on while held (`--bpf-stats`).
    _stats: Option<std::os::fd::OwnedFd>,
    /// The mechanism the syscall hooks ended up on (`Btf` or `Raw`).
    pub hooks: HookMode,
    /// The I/O hooks frame PostgreSQL, Kafka and HTTP/1.x messages (`--framing` and `bpf_loop`).
    pub framing: bool,
    /// `tcp:tcp_receive_reset` carries a socket cookie (see `flows::flow_config`).
    reset_cookie: bool,
    /// `--udp-flows`: `start_flows` attaches the UDP byte counters too.
    udp_flows: bool,
    /// How the syscall statistics programs are attached, if they are.
    pub syscall_stats: Option<String>,
    /// `--connect-hook` as asked, and where `ConnectConfig` could not be filled, why.
    connect_asked: ConnectHook,
    connect_config_error: Option<String>,
    /// The tier connects got their local address from (`SockOps`, `Tracepoint` or `Off`),
    /// once `start_flows` or `start_connect_local` decided.
    pub connect_hook: ConnectHook,
    /// The TLS uprobes are loaded (`--tls`, and the kernel accepted them).
    pub tls: bool,
}

impl Capture {
    /// Loads the programs and attaches every hook.
    pub fn start(settings: &Settings, tracefs: &str) -> anyhow::Result<(Capture, Maps)> {
        if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            bail!("Periscope's syscall hooks read x86_64 or arm64 registers; this architecture is not supported yet");
        }
        if OBJECT.is_empty() {
            bail!("this binary was built with AYA_BUILD_SKIP=1 and holds no kernel programs; rebuild it with `cargo xtask run`");
        }
        if settings.capture_bytes as usize > MAX_CAPTURE || settings.capture_bytes == 0 {
            bail!(
                "--capture-bytes {}: must be between 1 and {MAX_CAPTURE}",
                settings.capture_bytes
            );
        }
        let newtask = Path::new(tracefs).join("events/task/task_newtask/format");
        let format = std::fs::read_to_string(&newtask)
            .with_context(|| format!("reading {}", newtask.display()))?;
        let (Some(pid_offset), Some(flags_offset)) = (
            tracepoint_field(&format, "pid", 4),
            tracepoint_field(&format, "clone_flags", 8),
        ) else {
            bail!(
                "{}: no `pid` (4 bytes) and `clone_flags` (8 bytes) fields",
                newtask.display()
            );
        };
        let syscall_stats = match &settings.syscalls {
            None => SYSCALL_STATS_OFF,
            Some(s) if s.filter.is_empty() => bail!("syscall statistics need at least one syscall"),
            Some(s) if s.max_series == 0 => bail!("--syscalls-max-series must be at least 1"),
            Some(s) if s.separate_exit => SYSCALL_STATS_SEPARATE,
            // Also with fexit I/O hooks: then no I/O exit program runs, and the statistics get
            // exit programs of their own, which do not read this setting.
            Some(_) => SYSCALL_STATS_IN_IO_EXIT,
        };
        let entry = match &settings.syscalls {
            Some(s) => Some(plan_entry(tracefs, s)?),
            None => None,
        };
        let config = Config {
            self_tgid: std::process::id(),
            capture_bytes: settings.capture_bytes,
            newtask_pid_offset: pid_offset,
            newtask_flags_offset: flags_offset,
            syscall_stats,
            syscall_nr_offset: match &entry {
                Some(EntryPlan::PerSyscall { nr_offset, .. }) => *nr_offset,
                _ => 8,
            },
            tls: u32::from(settings.tls),
        };
        let filter = settings
            .syscalls
            .as_ref()
            .map(|s| s.filter)
            .unwrap_or_default();
        let (stats_entries, starts_entries) = match &settings.syscalls {
            Some(s) => (s.max_series, SYSCALL_STARTS_ENTRIES),
            None => (UNUSED_MAP_ENTRIES, UNUSED_MAP_ENTRIES),
        };
        let flow_config = flows::flow_config(tracefs, settings.udp_flows);
        let (connect_config, connect_config_error) = match connect_config(tracefs) {
            Ok(c) => (c, None),
            Err(e) => (ConnectConfig::default(), Some(format!("{e:#}"))),
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(global::CONFIG, &config, true)
            .override_global(global::FLOW_CONFIG, &flow_config, true)
            .override_global(global::CONNECT_CONFIG, &connect_config, true)
            .override_global(global::SYSCALL_FILTER, &filter, true)
            .map_max_entries(map::EVENTS, settings.ringbuf_bytes)
            .map_max_entries(map::SYSCALL_STATS, stats_entries)
            .map_max_entries(map::SYSCALL_STARTS, starts_entries)
            .load(OBJECT)
            .context("loading the kernel programs failed (the kernel's verifier log follows)")?;
        for (program, category, name) in TRACEPOINTS {
            let tp: &mut TracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing from the object"))?
                .try_into()?;
            tp.load()
                .with_context(|| format!("the kernel rejected program {program}"))?;
            tp.attach(category, name)
                .with_context(|| format!("attaching {program} to tracepoint {category}:{name}"))?;
        }
        // arm64 has no `dup2` (only `dup3`): the generic syscall table left it out.
        if cfg!(target_arch = "x86_64") {
            let name = program::SYS_ENTER_DUP2;
            let tp: &mut TracePoint = program_of(&mut ebpf, name)?.try_into()?;
            tp.load()
                .with_context(|| format!("the kernel rejected program {name}"))?;
            tp.attach("syscalls", "sys_enter_dup2")
                .context("attaching to syscalls:sys_enter_dup2")?;
        }
        // `close_range(2)` came with Linux 5.9: without it there is nothing to follow.
        let close_range = (|| -> anyhow::Result<()> {
            let name = program::SYS_ENTER_CLOSE_RANGE;
            let tp: &mut TracePoint = program_of(&mut ebpf, name)?.try_into()?;
            tp.load()
                .with_context(|| format!("the kernel rejected program {name}"))?;
            tp.attach("syscalls", "sys_enter_close_range")
                .context("attaching to syscalls:sys_enter_close_range")?;
            Ok(())
        })();
        if let Err(e) = close_range {
            log::info!("capture: close_range(2) is not followed ({e:#})");
        }
        let (hooks, framing) = attach_syscall_hooks(&mut ebpf, settings.hooks, settings.framing)?;
        let syscall_stats = match entry {
            Some(entry) => Some(attach_syscall_stats(
                &mut ebpf,
                hooks,
                syscall_stats,
                entry,
            )?),
            None => None,
        };
        let tls = settings.tls && {
            match load_tls(&mut ebpf) {
                Ok(()) => true,
                Err(e) => {
                    log::warn!(
                        "tls: the TLS uprobes cannot be loaded, TLS traffic is not decoded: {e:#}"
                    );
                    false
                }
            }
        };
        let maps = Maps::take(&mut ebpf, settings.ringbuf_bytes)?;
        log::info!(
            "capture: syscall hooks on {}, {}, capture {} B per message; ring buffer {} KiB; syscall statistics {}",
            hooks.as_str(),
            if framing { "PostgreSQL, Kafka, HTTP/1.x and HTTP/2 framed in the kernel" } else { "prefix capture only" },
            settings.capture_bytes,
            settings.ringbuf_bytes / 1024,
            syscall_stats.as_deref().unwrap_or("off")
        );
        let stats = if settings.bpf_stats {
            Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context(
                "--bpf-stats: the kernel refused BPF_ENABLE_STATS (needs Linux 5.8 and CAP_SYS_ADMIN)",
            )?)
        } else {
            None
        };
        Ok((
            Capture {
                ebpf,
                _stats: stats,
                hooks,
                framing,
                reset_cookie: flow_config.reset_cookie_offset != 0,
                udp_flows: settings.udp_flows,
                syscall_stats,
                connect_asked: settings.connect_hook,
                connect_config_error,
                connect_hook: ConnectHook::Off,
                tls,
            },
            maps,
        ))
    }

    /// Gives `Open` events from `connect` the socket's local address, so that traces cross from
    /// a client to a server on this node: with flows, `start_flows` does it in the flows'
    /// `sock_ops` program; without, this attaches a `sock_ops` program of its own, or the
    /// tracepoint tier where the kernel refuses it (see `ConnectHook`). With `--connect-hook
    /// auto` a kernel that allows neither is logged, not fatal; an explicit tier must work.
    pub fn start_connect_local(&mut self) -> anyhow::Result<()> {
        if self.connect_hook != ConnectHook::Off {
            return Ok(()); // `start_flows` settled it before failing later
        }
        let sock_ops = if self.connect_asked.allows(ConnectHook::SockOps) {
            (|| -> anyhow::Result<()> {
                let root = flows::cgroup2_root().context("no cgroup v2 hierarchy is mounted")?;
                let cgroup = std::fs::File::open(&root)
                    .with_context(|| format!("opening the cgroup v2 root {}", root.display()))?;
                let name = program::CONNECT_LOCAL;
                let ops: &mut SockOps = program_of(&mut self.ebpf, name)?.try_into()?;
                ops.load()
                    .with_context(|| format!("the kernel rejected program {name}"))?;
                ops.attach(&cgroup, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching {name} to {}", root.display()))?;
                Ok(())
            })()
        } else {
            Err(anyhow::anyhow!("not asked for"))
        };
        self.settle_connect_hook(sock_ops)
    }

    /// After the `sock_ops` tier was tried (`sock_ops`): attaches the tracepoint tier if that
    /// failed and it is allowed, records and logs the outcome.
    fn settle_connect_hook(&mut self, sock_ops: anyhow::Result<()>) -> anyhow::Result<()> {
        let asked = self.connect_asked;
        let outcome = match sock_ops {
            Ok(()) => Ok(ConnectHook::SockOps),
            Err(_) if asked == ConnectHook::Off => Err(anyhow::anyhow!("--connect-hook off")),
            Err(e) if asked == ConnectHook::SockOps => Err(e.context("--connect-hook sock-ops")),
            Err(e) => match self.attach_connect_state() {
                Ok(()) => {
                    if asked == ConnectHook::Auto {
                        log::info!("capture: the sock_ops connect hook is unavailable ({e:#}); using the tracepoint tier");
                    }
                    Ok(ConnectHook::Tracepoint)
                }
                Err(t) if asked == ConnectHook::Tracepoint => {
                    return Err(t.context("--connect-hook tracepoint"))
                }
                Err(t) => Err(anyhow::anyhow!("sock_ops: {e:#}; tracepoint: {t:#}")),
            },
        };
        match outcome {
            Ok(tier) => {
                self.connect_hook = tier;
                log::info!(
                    "capture: connects report their local address ({} tier)",
                    tier.as_str()
                );
            }
            Err(e) => {
                self.connect_hook = ConnectHook::Off;
                if asked == ConnectHook::SockOps {
                    return Err(e);
                }
                log::info!(
                    "capture: connects carry no local address, so traces do not cross from a \
                     client to a server on this node ({e:#})"
                );
            }
        }
        Ok(())
    }

    /// The tracepoint tier: `connect_state` on `sock:inet_sock_set_state`.
    fn attach_connect_state(&mut self) -> anyhow::Result<()> {
        if let Some(why) = &self.connect_config_error {
            bail!("{why}");
        }
        let name = program::CONNECT_STATE;
        let tp: &mut TracePoint = program_of(&mut self.ebpf, name)?.try_into()?;
        tp.load()
            .with_context(|| format!("the kernel rejected program {name}"))?;
        tp.attach("sock", "inet_sock_set_state")
            .with_context(|| format!("attaching {name} to tracepoint sock:inet_sock_set_state"))?;
        Ok(())
    }

    /// The kernel's per-(cgroup, syscall) statistics table, for the syscall poller; `None` when
    /// syscall statistics are off or the table was already taken.
    pub fn take_syscall_table(
        &mut self,
    ) -> anyhow::Result<Option<PerCpuHashMap<MapData, SyscallKey, SyscallStats>>> {
        if self.syscall_stats.is_none() {
            return Ok(None);
        }
        match self.ebpf.take_map(map::SYSCALL_STATS) {
            Some(map) => Ok(Some(PerCpuHashMap::try_from(map)?)),
            None => Ok(None),
        }
    }

    /// Puts the TLS uprobes on `path`'s `SSL_read`/`SSL_write` (required) and `SSL_read_ex`/
    /// `SSL_write_ex` (where the library has them), entry and return; all or nothing.
    pub fn probe_tls_file(&mut self, path: &Path) -> Result<tls::Probed, tls::ProbeError> {
        use aya::programs::{uprobe::UProbeScope, UProbe};
        // Resolved once, with bounded reads (the file may be hostile): aya would map the file
        // once per attach.
        let names: Vec<&str> = TLS_SYMBOLS.iter().map(|(symbol, ..)| *symbol).collect();
        let offsets = elf::function_offsets(path, &names)?;
        let mut probed = tls::Probed { links: Vec::new() };
        for ((symbol, enter, required), offset) in TLS_SYMBOLS.iter().zip(offsets) {
            let Some(offset) = offset else {
                if *required {
                    self.release_tls_file(probed);
                    return Err(tls::ProbeError::NoSymbols(format!("no {symbol}")));
                }
                log::debug!("tls: {} has no {symbol}", path.display());
                continue;
            };
            for name in [*enter, program::SSL_RETURN] {
                let result = program_of(&mut self.ebpf, name)
                    .and_then(|p| Ok(<&mut UProbe>::try_from(p)?))
                    .and_then(|p| Ok(p.attach(offset, path, UProbeScope::AllProcesses)?));
                match result {
                    Ok(link) => probed.links.push((name, link)),
                    Err(e) => {
                        self.release_tls_file(probed);
                        return Err(tls::ProbeError::Attach(format!("{symbol}: {e:#}")));
                    }
                }
            }
        }
        Ok(probed)
    }

    /// Takes the TLS uprobes off a file.
    pub fn release_tls_file(&mut self, probed: tls::Probed) {
        for (name, link) in probed.links {
            if let Ok(p) = program_of(&mut self.ebpf, name) {
                if let Ok(p) = <&mut aya::programs::UProbe>::try_from(p) {
                    let _ = p.detach(link);
                }
            }
        }
    }

    /// Number of loaded programs (for the start-up log and tests).
    pub fn program_count(&self) -> usize {
        self.ebpf.programs().count()
    }

    /// (kernel id, name) of every program loaded into the kernel.
    pub fn loaded_program_ids(&self) -> Vec<(u32, String)> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| program.info().ok().map(|i| (i.id(), name.to_owned())))
            .collect()
    }
}

/// Attaches the syscall exit hook with the chosen (or best available) mechanism.
/// Where the tracepoint tier of `ConnectHook` reads: the `sock:inet_sock_set_state` record's
/// fields from tracefs, and `struct sock_common`'s from the kernel's BTF.
fn connect_config(tracefs: &str) -> anyhow::Result<ConnectConfig> {
    let path = Path::new(tracefs).join("events/sock/inet_sock_set_state/format");
    let format =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let field = |name: &str, size: u32| {
        tracepoint_field(&format, name, size)
            .with_context(|| format!("{}: no `{name}` field of {size} bytes", path.display()))
    };
    let btf = btf::Btf::from_sys_fs()?;
    let sock = |member: &str| -> anyhow::Result<u32> {
        // `struct sock` starts with its `sock_common`, but check rather than assume.
        Ok(btf.member_offset("sock", "__sk_common")? + btf.member_offset("sock_common", member)?)
    };
    Ok(ConnectConfig {
        state_skaddr_offset: field("skaddr", 8)?,
        state_newstate_offset: field("newstate", 4)?,
        state_protocol_offset: field("protocol", 2)?,
        sk_family_offset: sock("skc_family")?,
        sk_dport_offset: sock("skc_dport")?,
        sk_num_offset: sock("skc_num")?,
        sk_rcv_saddr_offset: sock("skc_rcv_saddr")?,
        sk_v6_rcv_saddr_offset: sock("skc_v6_rcv_saddr")?,
    })
}

/// Returns the mechanism and whether the I/O hooks frame messages (`io/framing.rs`).
fn attach_syscall_hooks(
    ebpf: &mut Ebpf,
    mode: HookMode,
    framing: bool,
) -> anyhow::Result<(HookMode, bool)> {
    if matches!(mode, HookMode::Auto | HookMode::Fexit) && framing {
        // The fexit programs always frame: without `bpf_loop` they fail and tracepoints follow.
        match attach_fexit_hooks(ebpf) {
            Ok(()) => return Ok((HookMode::Fexit, true)),
            Err(e) if mode == HookMode::Auto => {
                log::info!("fexit unavailable ({e:#}); trying BTF tracepoints");
            }
            Err(e) => return Err(e.context("--syscall-hooks fexit")),
        }
    }
    if matches!(mode, HookMode::Auto | HookMode::Btf) {
        match attach_btf_hooks(ebpf, framing) {
            Ok(framed) => return Ok((HookMode::Btf, framed)),
            Err(e) if mode == HookMode::Auto => {
                log::info!("BTF tracepoints unavailable ({e:#}); using raw tracepoints");
            }
            Err(e) => return Err(e.context("--syscall-hooks btf")),
        }
    }
    let load = |ebpf: &mut Ebpf, name: &str| -> anyhow::Result<()> {
        let tp: &mut RawTracePoint = program_of(ebpf, name)?.try_into()?;
        tp.load()
            .with_context(|| format!("the kernel rejected program {name}"))
    };
    let (name, framed) = framed_or_prefix(
        ebpf,
        framing,
        program::FRAME_EXIT_RAW,
        program::SYS_EXIT_RAW,
        load,
    )?;
    let tp: &mut RawTracePoint = program_of(ebpf, name)?.try_into()?;
    tp.attach("sys_exit")
        .with_context(|| format!("attaching {name} to raw tracepoint sys_exit"))?;
    Ok((HookMode::Raw, framed))
}

/// Loads the framing variant of an exit program when asked and the kernel accepts it (it
/// needs `bpf_loop`, Linux 5.17+), else the prefix-only one. Returns the loaded program's name
/// and whether it frames.
fn framed_or_prefix(
    ebpf: &mut Ebpf,
    framing: bool,
    framed: &'static str,
    prefix: &'static str,
    load: impl Fn(&mut Ebpf, &str) -> anyhow::Result<()>,
) -> anyhow::Result<(&'static str, bool)> {
    if framing {
        match load(ebpf, framed) {
            Ok(()) => return Ok((framed, true)),
            Err(e) => log::warn!(
                "capture: message framing unavailable, falling back to prefix capture: counts \
                 of PostgreSQL, Kafka, HTTP/1.x and HTTP/2 exchanges whose syscalls carry several messages past \
                 the capture window are not exact ({e:#})"
            ),
        }
    }
    load(ebpf, prefix)?;
    Ok((prefix, false))
}

/// Per-thread syscall start times kept by the entry hook: one per thread that made a selected
/// syscall (freed at thread exit), so this bounds the threads measured at once.
const SYSCALL_STARTS_ENTRIES: u32 = 65536;

/// Attaches the syscall statistics programs: an entry hook (on each selected syscall's own
/// tracepoint, or on `raw_syscalls:sys_enter`), plus an exit hook of their own unless the I/O
/// exit program does that work (`SYSCALL_STATS_IN_IO_EXIT`). The `raw_syscalls` programs use
/// the same mechanism as the I/O hooks, or with fexit I/O hooks the best tracepoint the kernel
/// takes. Returns a description for logs and tests.
fn attach_syscall_stats(
    ebpf: &mut Ebpf,
    io_hooks: HookMode,
    mode: u32,
    entry: EntryPlan,
) -> anyhow::Result<String> {
    let separate = mode == SYSCALL_STATS_SEPARATE || io_hooks == HookMode::Fexit;
    // Ok(number of events), or Err(why not per-syscall; `None` when raw_syscalls was asked for).
    let per_syscall = match entry {
        EntryPlan::PerSyscall {
            events, required, ..
        } => match attach_per_syscall_entry(ebpf, &events) {
            Ok(()) => Ok(events.len()),
            Err(e) if required => return Err(e.context("--syscalls-entry per-syscall")),
            Err(e) => Err(Some(format!("{e:#}"))),
        },
        EntryPlan::RawSyscalls { why } => Err(why),
    };
    let mut programs = Vec::new();
    if per_syscall.is_err() {
        programs.push("sys_enter");
    }
    if separate {
        programs.push("sys_exit");
    }
    let on = attach_stats_tracepoints(ebpf, io_hooks, &programs)?;
    // The one line that says which entry hook syscalls pay for.
    let entry = match per_syscall {
        Ok(events) => {
            log::info!(
                "syscall statistics: entry hook on the syscalls:sys_enter_* events of the \
                 {events} selected syscalls; other syscalls run no entry program"
            );
            format!("syscalls:sys_enter_* ({events} events)")
        }
        Err(why) => {
            let because = why.map(|w| format!(" (per-syscall events unusable: {w})"));
            log::info!(
                "syscall statistics: entry hook on raw_syscalls:sys_enter ({on}), which every \
                 syscall runs{}",
                because.unwrap_or_default()
            );
            format!("raw_syscalls:sys_enter ({on})")
        }
    };
    let exit = if separate {
        format!("own exit hook ({on})")
    } else {
        format!("in the I/O exit hook ({})", io_hooks.as_str())
    };
    Ok(format!("entry on {entry}, exit {exit}"))
}

/// Attaches the program `sys_enter_stats_tp` to each of `events` (`syscalls:<event>`), or to
/// none: on an error the ones attached are detached and the program unloaded again.
fn attach_per_syscall_entry(ebpf: &mut Ebpf, events: &[String]) -> anyhow::Result<()> {
    let name = program::SYS_ENTER_STATS_TP;
    let tp: &mut TracePoint = program_of(ebpf, name)?.try_into()?;
    tp.load()
        .with_context(|| format!("the kernel rejected program {name}"))?;
    let mut links = Vec::new();
    for event in events {
        match tp.attach("syscalls", event) {
            Ok(link) => links.push(link),
            Err(e) => {
                for link in links {
                    let _ = tp.detach(link);
                }
                let _ = tp.unload();
                return Err(
                    anyhow::Error::new(e).context(format!("attaching {name} to syscalls:{event}"))
                );
            }
        }
    }
    Ok(())
}

/// Attaches the statistics programs on `raw_syscalls` tracepoints (`"sys_enter"`,
/// `"sys_exit"`, with the program named in [`stats_programs`]), as BTF tracepoints unless the I/O hooks are raw (or, with fexit I/O hooks,
/// the kernel refuses them), else as raw tracepoints. Returns the mechanism.
fn attach_stats_tracepoints(
    ebpf: &mut Ebpf,
    io_hooks: HookMode,
    tracepoints: &[&str],
) -> anyhow::Result<&'static str> {
    if tracepoints.is_empty() {
        return Ok(io_hooks.as_str());
    }
    let try_btf = |ebpf: &mut Ebpf| -> anyhow::Result<()> {
        let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
        for tracepoint in tracepoints {
            let (program, _) = stats_programs(tracepoint)?;
            let tp: &mut BtfTracePoint = program_of(ebpf, program)?.try_into()?;
            tp.load(tracepoint, &btf)
                .with_context(|| format!("loading {program}"))?;
            tp.attach()
                .with_context(|| format!("attaching {program}"))?;
        }
        Ok(())
    };
    if io_hooks != HookMode::Raw {
        match try_btf(ebpf) {
            Ok(()) => return Ok(HookMode::Btf.as_str()),
            Err(e) if io_hooks == HookMode::Fexit => {
                log::info!("syscall statistics: BTF tracepoints unavailable ({e:#}); using raw tracepoints");
            }
            Err(e) => return Err(e.context("syscall statistics")),
        }
    }
    for tracepoint in tracepoints {
        let (_, program) = stats_programs(tracepoint)?;
        let tp: &mut RawTracePoint = program_of(ebpf, program)?.try_into()?;
        tp.load()
            .with_context(|| format!("the kernel rejected program {program}"))?;
        tp.attach(tracepoint)
            .with_context(|| format!("attaching {program} to raw tracepoint {tracepoint}"))?;
    }
    Ok(HookMode::Raw.as_str())
}

/// (BTF variant, raw variant) of the statistics program on `raw_syscalls:<tracepoint>`.
fn stats_programs(tracepoint: &str) -> anyhow::Result<(&'static str, &'static str)> {
    match tracepoint {
        "sys_enter" => Ok((program::SYS_ENTER_STATS_BTF, program::SYS_ENTER_STATS_RAW)),
        "sys_exit" => Ok((program::SYS_EXIT_STATS_BTF, program::SYS_EXIT_STATS_RAW)),
        other => bail!("no syscall statistics program for raw_syscalls:{other}"),
    }
}

/// (program, syscall) of the fexit variant; the kernel function is [`SYSCALL_FUNCTION`] + the
/// syscall.
const FEXIT: &[(&str, &str)] = &[
    (program::FEXIT_READ, "read"),
    (program::FEXIT_RECVFROM, "recvfrom"),
    (program::FEXIT_READV, "readv"),
    (program::FEXIT_RECVMSG, "recvmsg"),
    (program::FEXIT_WRITE, "write"),
    (program::FEXIT_SENDTO, "sendto"),
    (program::FEXIT_WRITEV, "writev"),
    (program::FEXIT_SENDMSG, "sendmsg"),
    (program::FEXIT_SENDFILE, "sendfile64"),
    (program::FEXIT_ACCEPT, "accept"),
    (program::FEXIT_ACCEPT4, "accept4"),
    (program::FEXIT_CONNECT, "connect"),
    (program::FEXIT_SOCKET, "socket"),
];

/// How the kernel names a syscall's function on this architecture (`__x64_sys_read`).
const SYSCALL_FUNCTION: &str = if cfg!(target_arch = "aarch64") {
    "__arm64_sys_"
} else {
    "__x64_sys_"
};

/// Attaches every fexit program, or none: a kernel that refuses one (no trampolines, a
/// lockdown, EPERM as on the development VM) gets everything detached again.
fn attach_fexit_hooks(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
    let mut attached = Vec::new();
    for (program, syscall) in FEXIT {
        let function = format!("{SYSCALL_FUNCTION}{syscall}");
        let fexit: &mut FExit = program_of(ebpf, program)?.try_into()?;
        let result = fexit
            .load(&function, &btf)
            .with_context(|| format!("loading {program} on {function}"))
            .and_then(|()| {
                fexit
                    .attach()
                    .with_context(|| format!("attaching {program} to {function}"))
            });
        match result {
            Ok(link) => attached.push((*program, link)),
            Err(e) => {
                for (program, link) in attached {
                    let fexit: &mut FExit = program_of(ebpf, program)?.try_into()?;
                    let _ = fexit.detach(link);
                }
                // Loaded but unattached programs would stay in the kernel until exit.
                for (program, _) in FEXIT {
                    let fexit: &mut FExit = program_of(ebpf, program)?.try_into()?;
                    let _ = fexit.unload();
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

fn attach_btf_hooks(ebpf: &mut Ebpf, framing: bool) -> anyhow::Result<bool> {
    let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
    let load = |ebpf: &mut Ebpf, name: &str| -> anyhow::Result<()> {
        let tp: &mut BtfTracePoint = program_of(ebpf, name)?.try_into()?;
        tp.load("sys_exit", &btf)
            .with_context(|| format!("loading {name}"))
    };
    let (name, framed) = framed_or_prefix(
        ebpf,
        framing,
        program::FRAME_EXIT_BTF,
        program::SYS_EXIT_BTF,
        load,
    )?;
    let tp: &mut BtfTracePoint = program_of(ebpf, name)?.try_into()?;
    tp.attach().with_context(|| format!("attaching {name}"))?;
    Ok(framed)
}

/// TLS library functions probed: (symbol, entry program, required).
const TLS_SYMBOLS: &[(&str, &str, bool)] = &[
    ("SSL_read", program::SSL_READ_ENTER, true),
    ("SSL_write", program::SSL_WRITE_ENTER, true),
    ("SSL_read_ex", program::SSL_READ_EX_ENTER, false),
    ("SSL_write_ex", program::SSL_WRITE_EX_ENTER, false),
];

/// Loads the TLS uprobes (attached to files later, by `capture::tls`).
fn load_tls(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let names = TLS_SYMBOLS
        .iter()
        .map(|(_, enter, _)| *enter)
        .chain([program::SSL_RETURN]);
    for name in names {
        let probe: &mut aya::programs::UProbe = program_of(ebpf, name)?.try_into()?;
        probe
            .load()
            .with_context(|| format!("the kernel rejected program {name}"))?;
    }
    Ok(())
}

fn program_of<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))
}

/// The offset of field `name` in a tracefs format description, if it has `size` bytes.
pub fn tracepoint_field(format: &str, name: &str, size: u32) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut decl = None;
        let mut offset = None;
        let mut field_size = None;
        for part in line.trim().split(';') {
            let part = part.trim();
            if let Some(d) = part.strip_prefix("field:") {
                decl = Some(d);
            } else if let Some(o) = part.strip_prefix("offset:") {
                offset = o.parse::<u32>().ok();
            } else if let Some(z) = part.strip_prefix("size:") {
                field_size = z.parse::<u32>().ok();
            }
        }
        let ident = decl?.rsplit([' ', '*']).next()?;
        (ident == name && field_size == Some(size)).then_some(offset?)
    })
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the object"))
}

#[cfg(test)]
mod tests {
    use super::{plan_entry, tracepoint_field, EntryPlan, SyscallEntry, SyscallSettings};

    #[test]
    fn reads_offsets_from_a_tracefs_format() {
        let format = "name: task_newtask\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;\n\tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;\n";
        assert_eq!(tracepoint_field(format, "pid", 4), Some(8));
        assert_eq!(tracepoint_field(format, "clone_flags", 8), Some(32));
        assert_eq!(tracepoint_field(format, "clone_flags", 4), None);
        assert_eq!(tracepoint_field(format, "missing", 4), None);
    }

    #[test]
    fn this_kernel_has_the_fields() {
        let Ok(format) =
            std::fs::read_to_string("/sys/kernel/tracing/events/task/task_newtask/format")
        else {
            return; // tracefs not mounted for this unit test run
        };
        assert!(tracepoint_field(&format, "pid", 4).is_some());
        assert!(tracepoint_field(&format, "clone_flags", 8).is_some());
    }

    /// A fake tracefs with a `sys_enter_<name>` format for each of `events`.
    fn fake_tracefs(name: &str, events: &[&str]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("periscope-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for event in events {
            let dir = root.join("events/syscalls").join(event);
            std::fs::create_dir_all(&dir).unwrap();
            let format = format!(
                "name: {event}\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n"
            );
            std::fs::write(dir.join("format"), format).unwrap();
        }
        root
    }

    fn settings(selection: &str, entry: SyscallEntry) -> SyscallSettings {
        SyscallSettings {
            filter: crate::syscalls::Selection::parse(selection)
                .unwrap()
                .filter(),
            max_series: 1,
            separate_exit: false,
            entry,
        }
    }

    #[test]
    fn the_entry_hook_is_per_syscall_only_if_every_selected_syscall_has_its_event() {
        let root = fake_tracefs("entry", &["sys_enter_getppid", "sys_enter_sendfile64"]);
        let tracefs = root.to_str().unwrap();
        let plan = plan_entry(tracefs, &settings("getppid,sendfile", SyscallEntry::Auto));
        assert_eq!(
            plan.unwrap(),
            EntryPlan::PerSyscall {
                events: vec!["sys_enter_sendfile64".into(), "sys_enter_getppid".into()],
                nr_offset: 8,
                required: false,
            }
        );
        // `getpid` has no event here: everything falls back, and the reason names it.
        let plan = plan_entry(tracefs, &settings("getppid,getpid", SyscallEntry::Auto)).unwrap();
        assert!(
            matches!(&plan, EntryPlan::RawSyscalls { why: Some(why) } if why.ends_with("for getpid")),
            "{plan:?}"
        );
        let err = plan_entry(tracefs, &settings("getpid", SyscallEntry::PerSyscall)).unwrap_err();
        assert!(err.to_string().contains("getpid"), "{err}");
        let plan = plan_entry(tracefs, &settings("getppid", SyscallEntry::RawSyscalls)).unwrap();
        assert_eq!(plan, EntryPlan::RawSyscalls { why: None });
        std::fs::remove_dir_all(&root).unwrap();
    }
}
