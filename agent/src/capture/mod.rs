//! Loading, attaching and reading the kernel programs. The only module that talks to the kernel.
//!
//! Everything is attached through tracepoints (perf-event links owned by file descriptors), so
//! when the agent exits, however it exits, the kernel detaches every program.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_ebpf::{
    Config, ConnInfo, EventHeader, EventKind, SockKey, SyscallFilter, SyscallKey, SyscallStats,
    COUNTERS_LEN, COUNTER_NAMES, DRAIN_MAX_INTERVAL_MS, DRAIN_MIN_INTERVAL_MS, DRAIN_TARGET_FILL,
    HEADER_LEN, MAX_CAPTURE, ORIGIN_PROC, SYSCALL_NR_LIMIT, SYSCALL_STATS_IN_IO_EXIT,
    SYSCALL_STATS_OFF, SYSCALL_STATS_SEPARATE,
};
use anyhow::{bail, Context};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{BtfTracePoint, CgroupAttachMode, FExit, RawTracePoint, SockOps, TracePoint};
use aya::Btf;
use aya::{Ebpf, EbpfLoader};

use crate::conn::{listeners, KernelAction, Tracker};
use crate::export::labels::{MetricLabel, ReasonLabel};
use crate::export::prometheus::{DeltaCounter, Metrics, MetricsSink, SelfMetrics};
use crate::export::Fanout;

pub mod flows;
pub mod preflight;

/// The kernel object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Classic tracepoints: (program, category, name).
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_enter_close", "syscalls", "sys_enter_close"),
    ("task_newtask", "task", "task_newtask"),
    ("process_exit", "sched", "sched_process_exit"),
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
    /// Turn on the kernel's per-program run-time statistics.
    pub bpf_stats: bool,
    /// Per-syscall statistics; `None` attaches no syscall statistics program at all.
    pub syscalls: Option<SyscallSettings>,
    /// UDP bytes per flow (`--udp-flows`): two per-packet cgroup_skb programs.
    pub udp_flows: bool,
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
    /// `tcp:tcp_receive_reset` carries a socket cookie (see `flows::flow_config`).
    reset_cookie: bool,
    /// `--udp-flows`: `start_flows` attaches the UDP byte counters too.
    udp_flows: bool,
    /// How the syscall statistics programs are attached, if they are.
    pub syscall_stats: Option<String>,
}

/// The maps the reader needs, taken out of the `Ebpf` object.
pub struct Maps {
    events: RingBuf<MapData>,
    /// The ring buffer's size in bytes.
    ring_bytes: u64,
    conns: BpfHashMap<MapData, SockKey, ConnInfo>,
    muted: BpfHashMap<MapData, u64, u8>,
    sock_types: BpfHashMap<MapData, SockKey, u32>,
    counters: PerCpuArray<MapData, u64>,
}

impl Capture {
    /// Loads the programs and attaches every hook.
    pub fn start(settings: &Settings, tracefs: &str) -> anyhow::Result<(Capture, Maps)> {
        if !cfg!(target_arch = "x86_64") {
            bail!("Periscope's syscall hooks read x86_64 registers; this architecture is not supported yet");
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
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .override_global("FLOW_CONFIG", &flow_config, true)
            .override_global("SYSCALL_FILTER", &filter, true)
            .map_max_entries("EVENTS", settings.ringbuf_bytes)
            .map_max_entries("SYSCALL_STATS", stats_entries)
            .map_max_entries("SYSCALL_STARTS", starts_entries)
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
        let hooks = attach_syscall_hooks(&mut ebpf, settings.hooks)?;
        let syscall_stats = match entry {
            Some(entry) => Some(attach_syscall_stats(
                &mut ebpf,
                hooks,
                syscall_stats,
                entry,
            )?),
            None => None,
        };
        let maps = Maps {
            events: RingBuf::try_from(take(&mut ebpf, "EVENTS")?)?,
            ring_bytes: u64::from(settings.ringbuf_bytes),
            conns: BpfHashMap::try_from(take(&mut ebpf, "CONNS")?)?,
            muted: BpfHashMap::try_from(take(&mut ebpf, "MUTED")?)?,
            sock_types: BpfHashMap::try_from(take(&mut ebpf, "SOCK_TYPES")?)?,
            counters: PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)?,
        };
        log::info!(
            "capture: syscall hooks on {}, capture {} B per syscall, ring buffer {} KiB; syscall statistics {}",
            hooks.as_str(),
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
                reset_cookie: flow_config.reset_cookie_offset != 0,
                udp_flows: settings.udp_flows,
                syscall_stats,
            },
            maps,
        ))
    }

    /// Gives `Open` events from `connect` the socket's local address, so that traces cross from
    /// a client to a server on this node: with flows, `start_flows` does it in the flows'
    /// `sock_ops` program; without, this attaches a `sock_ops` program of its own. Kernels
    /// before 6.10 refuse it (no `bpf_get_current_pid_tgid` in `sock_ops`): logged, not fatal.
    pub fn start_connect_local(&mut self) {
        let attached = (|| -> anyhow::Result<()> {
            let root = flows::cgroup2_root().context("no cgroup v2 hierarchy is mounted")?;
            let cgroup = std::fs::File::open(&root)
                .with_context(|| format!("opening the cgroup v2 root {}", root.display()))?;
            let ops: &mut SockOps = program_of(&mut self.ebpf, "connect_local")?.try_into()?;
            ops.load()
                .context("the kernel rejected program connect_local")?;
            ops.attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| format!("attaching connect_local to {}", root.display()))?;
            Ok(())
        })();
        log_local_addresses(attached);
    }

    /// The kernel's per-(cgroup, syscall) statistics table, for the syscall poller; `None` when
    /// syscall statistics are off or the table was already taken.
    pub fn take_syscall_table(
        &mut self,
    ) -> anyhow::Result<Option<PerCpuHashMap<MapData, SyscallKey, SyscallStats>>> {
        if self.syscall_stats.is_none() {
            return Ok(None);
        }
        match self.ebpf.take_map("SYSCALL_STATS") {
            Some(map) => Ok(Some(PerCpuHashMap::try_from(map)?)),
            None => Ok(None),
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
/// Says whether client connections carry their local address (see `start_connect_local`).
fn log_local_addresses(attached: anyhow::Result<()>) {
    match attached {
        Ok(()) => log::info!("capture: connects report their local address"),
        Err(e) => log::info!(
            "capture: connects carry no local address, so traces do not cross from a client \
             to a server on this node ({e:#})"
        ),
    }
}

fn attach_syscall_hooks(ebpf: &mut Ebpf, mode: HookMode) -> anyhow::Result<HookMode> {
    if matches!(mode, HookMode::Auto | HookMode::Fexit) {
        match attach_fexit_hooks(ebpf) {
            Ok(()) => return Ok(HookMode::Fexit),
            Err(e) if mode == HookMode::Auto => {
                log::info!("fexit unavailable ({e:#}); trying BTF tracepoints");
            }
            Err(e) => return Err(e.context("--syscall-hooks fexit")),
        }
    }
    if matches!(mode, HookMode::Auto | HookMode::Btf) {
        match attach_btf_hooks(ebpf) {
            Ok(()) => return Ok(HookMode::Btf),
            Err(e) if mode == HookMode::Auto => {
                log::info!("BTF tracepoints unavailable ({e:#}); using raw tracepoints");
            }
            Err(e) => return Err(e.context("--syscall-hooks btf")),
        }
    }
    let tp: &mut RawTracePoint = program_of(ebpf, "sys_exit_raw")?.try_into()?;
    tp.load()
        .context("the kernel rejected program sys_exit_raw")?;
    tp.attach("sys_exit")
        .context("attaching sys_exit_raw to raw tracepoint sys_exit")?;
    Ok(HookMode::Raw)
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
    let tp: &mut TracePoint = program_of(ebpf, "sys_enter_stats_tp")?.try_into()?;
    tp.load()
        .context("the kernel rejected program sys_enter_stats_tp")?;
    let mut links = Vec::new();
    for event in events {
        match tp.attach("syscalls", event) {
            Ok(link) => links.push(link),
            Err(e) => {
                for link in links {
                    let _ = tp.detach(link);
                }
                let _ = tp.unload();
                return Err(anyhow::Error::new(e)
                    .context(format!("attaching sys_enter_stats_tp to syscalls:{event}")));
            }
        }
    }
    Ok(())
}

/// Attaches the statistics programs on `raw_syscalls` tracepoints (`"sys_enter"`,
/// `"sys_exit"`), as BTF tracepoints unless the I/O hooks are raw (or, with fexit I/O hooks,
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
            let program = format!("{tracepoint}_stats_btf");
            let tp: &mut BtfTracePoint = program_of(ebpf, &program)?.try_into()?;
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
        let program = format!("{tracepoint}_stats_raw");
        let tp: &mut RawTracePoint = program_of(ebpf, &program)?.try_into()?;
        tp.load()
            .with_context(|| format!("the kernel rejected program {program}"))?;
        tp.attach(tracepoint)
            .with_context(|| format!("attaching {program} to raw tracepoint {tracepoint}"))?;
    }
    Ok(HookMode::Raw.as_str())
}

/// (program, kernel function) of the fexit variant.
const FEXIT: &[(&str, &str)] = &[
    ("fexit_read", "__x64_sys_read"),
    ("fexit_recvfrom", "__x64_sys_recvfrom"),
    ("fexit_readv", "__x64_sys_readv"),
    ("fexit_recvmsg", "__x64_sys_recvmsg"),
    ("fexit_write", "__x64_sys_write"),
    ("fexit_sendto", "__x64_sys_sendto"),
    ("fexit_writev", "__x64_sys_writev"),
    ("fexit_sendmsg", "__x64_sys_sendmsg"),
    ("fexit_sendfile", "__x64_sys_sendfile64"),
    ("fexit_accept", "__x64_sys_accept"),
    ("fexit_accept4", "__x64_sys_accept4"),
    ("fexit_connect", "__x64_sys_connect"),
    ("fexit_socket", "__x64_sys_socket"),
];

/// Attaches every fexit program, or none: a kernel that refuses one (no trampolines, a
/// lockdown, EPERM as on the development VM) gets everything detached again.
fn attach_fexit_hooks(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
    let mut attached = Vec::new();
    for (program, function) in FEXIT {
        let fexit: &mut FExit = program_of(ebpf, program)?.try_into()?;
        let result = fexit
            .load(function, &btf)
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

fn attach_btf_hooks(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
    let tp: &mut BtfTracePoint = program_of(ebpf, "sys_exit_btf")?.try_into()?;
    tp.load("sys_exit", &btf).context("loading sys_exit_btf")?;
    tp.attach().context("attaching sys_exit_btf")?;
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

/// Reads events until the task is dropped.
pub struct Reader {
    maps: Maps,
    /// Programs whose run time is exported (with `--bpf-stats`).
    programs: Vec<(u32, String)>,
    tracker: Tracker,
    sink: Fanout,
    lost: Vec<DeltaCounter>,
    actions: Vec<KernelAction>,
}

impl Reader {
    pub fn new(maps: Maps, metrics: Arc<Metrics>) -> Reader {
        Reader {
            maps,
            programs: Vec::new(),
            tracker: Tracker::new(Path::new("/proc")),
            sink: Fanout {
                metrics: MetricsSink::new(metrics),
                spans: None,
            },
            lost: (0..COUNTERS_LEN).map(|_| DeltaCounter::default()).collect(),
            actions: Vec::new(),
        }
    }

    /// Decodes only these protocols.
    pub fn set_protocols(&mut self, protocols: crate::conn::decoder::Protocols) {
        self.tracker.set_protocols(protocols);
    }

    /// Names processes' pods and connections' peers through the cluster view from now on.
    pub fn set_cluster(&mut self, cluster: Arc<dyn crate::metadata::ClusterView>) {
        self.tracker.set_cluster(cluster.clone());
        self.sink.metrics.set_cluster(cluster);
    }

    /// Sends every exchange to this span sink too (OTLP tracing on).
    pub fn set_span_sink(&mut self, spans: crate::export::otlp::SpanSink) {
        self.sink.spans = Some(spans);
    }

    /// Exports the run time of these kernel programs every second.
    pub fn watch_programs(&mut self, programs: Vec<(u32, String)>) {
        self.programs = programs;
    }

    /// Registers sockets that were open before start-up so their traffic is decoded too.
    pub fn adopt_existing_sockets(&mut self) -> usize {
        let mut adopted = 0;
        let mut next_id: u64 = 1 << 63;
        for found in listeners::discover_established(Path::new("/proc")) {
            let key = SockKey {
                tgid: found.tgid,
                fd: found.fd,
            };
            let info = ConnInfo {
                conn_id: next_id,
                origin: ORIGIN_PROC,
                _pad: [0; 7],
            };
            // BPF_NOEXIST: the kernel may already track it if it was opened while attaching.
            if self.maps.conns.insert(key, info, 1).is_ok() {
                self.tracker.adopt(next_id, &found, &mut self.sink);
                next_id += 1;
                adopted += 1;
            }
        }
        adopted
    }

    /// The read loop: drains the ring buffer whenever it is readable, and every second folds the
    /// kernel's per-CPU counters into the self-metrics.
    pub async fn run(self) -> anyhow::Result<()> {
        let Reader {
            maps,
            programs,
            mut tracker,
            mut sink,
            lost,
            mut actions,
        } = self;
        let Maps {
            mut events,
            ring_bytes,
            mut conns,
            mut muted,
            mut sock_types,
            counters,
        } = maps;
        // The kernel never wakes us (see agent-ebpf): drain on a timer paced by the rate
        // events arrive at.
        let mut next_drain = Duration::from_millis(DRAIN_MIN_INTERVAL_MS);
        let mut last_drain = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(next_drain) => {
                    let mut drained: u64 = 0;
                    while let Some(item) = events.next() {
                        handle_record(&item, &mut tracker, &mut sink, &mut actions);
                        drained += item.len() as u64 + RINGBUF_RECORD_HEADER;
                    }
                    apply(&mut actions, &mut conns, &mut muted);
                    let now = Instant::now();
                    next_drain =
                        next_drain_in(ring_bytes, drained, now - last_drain, next_drain);
                    last_drain = now;
                }
                _ = tick.tick() => {
                    ticks += 1;
                    fold_counters(&counters, &lost, &sink.metrics.metrics.self_metrics);
                    if !programs.is_empty() {
                        fold_program_stats(&programs, &sink.metrics.metrics);
                    }
                    if ticks.is_multiple_of(5) {
                        tracker.expire_closed(monotonic_ns(), CLOSE_LOST_IDLE_NS, &mut sink);
                    }
                    if ticks.is_multiple_of(30) {
                        tracker.expire_dead(&mut sink, &mut actions);
                        apply(&mut actions, &mut conns, &mut muted);
                        forget_dead(&mut conns);
                        forget_dead(&mut sock_types);
                    }
                }
            }
        }
    }
}

/// What a ring-buffer record occupies besides its data (the kernel's `BPF_RINGBUF_HDR_SZ`).
const RINGBUF_RECORD_HEADER: u64 = 8;

/// How long to wait before the next drain, after `drained` bytes arrived in `elapsed`: until
/// the ring would be `1 / DRAIN_TARGET_FILL` full at that rate, within the bounds; when nothing
/// arrived, twice the last wait up to the maximum.
fn next_drain_in(ring_bytes: u64, drained: u64, elapsed: Duration, last: Duration) -> Duration {
    let min = Duration::from_millis(DRAIN_MIN_INTERVAL_MS);
    let max = Duration::from_millis(DRAIN_MAX_INTERVAL_MS);
    if drained == 0 {
        return (last * 2).clamp(min, max);
    }
    let target = (ring_bytes / DRAIN_TARGET_FILL) as f64;
    Duration::from_secs_f64(elapsed.as_secs_f64() * target / drained as f64).clamp(min, max)
}

/// How long a connection must have been idle before `/proc` is asked whether its descriptor
/// still holds a socket (long enough for a close event still in the ring buffer to arrive).
const CLOSE_LOST_IDLE_NS: u64 = 5_000_000_000;

/// `CLOCK_MONOTONIC` now, in ns: the clock of the kernel's event timestamps.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC is always available.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn handle_record(
    record: &[u8],
    tracker: &mut Tracker,
    sink: &mut Fanout,
    actions: &mut Vec<KernelAction>,
) {
    let metrics = &sink.metrics.metrics.self_metrics;
    if record.len() < HEADER_LEN {
        metrics.malformed_events.inc();
        return;
    }
    // SAFETY: the record holds at least HEADER_LEN bytes written by the kernel as an
    // EventHeader; read_unaligned copes with any alignment.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let Some(payload) = record.get(HEADER_LEN..HEADER_LEN + header.cap_len as usize) else {
        metrics.malformed_events.inc();
        return;
    };
    let by_kind = &metrics.events_by_kind;
    match EventKind::from_u8(header.kind) {
        Some(EventKind::Data) => {
            by_kind.data.inc();
            metrics.captured_bytes.inc_by(payload.len() as u64);
            if (payload.len() as i64) < header.ret_len {
                metrics.truncated_captures.inc();
            }
        }
        Some(EventKind::Open) => {
            by_kind.open.inc();
        }
        Some(EventKind::Close) => {
            by_kind.close.inc();
        }
        Some(EventKind::ProcessExit) => {
            by_kind.process_exit.inc();
        }
        None => {
            metrics.malformed_events.inc();
            return;
        }
    }
    tracker.on_event(&header, payload, sink, actions);
}

fn apply(
    actions: &mut Vec<KernelAction>,
    conns: &mut BpfHashMap<MapData, SockKey, ConnInfo>,
    muted: &mut BpfHashMap<MapData, u64, u8>,
) {
    for action in actions.drain(..) {
        match action {
            KernelAction::Mute { conn_id } => {
                if let Err(e) = muted.insert(conn_id, 1, 0) {
                    log::debug!("cannot mute connection {conn_id}: {e}");
                }
            }
            KernelAction::Forget { tgid, fd, conn_id } => {
                let key = SockKey { tgid, fd };
                // Only the socket we knew: the fd may already belong to a new connection.
                if conns.get(&key, 0).is_ok_and(|info| info.conn_id == conn_id) {
                    let _ = conns.remove(&key);
                }
                let _ = muted.remove(&conn_id);
            }
        }
    }
}

/// Folds the kernel's per-program run counts and times into the self-metrics.
fn fold_program_stats(programs: &[(u32, String)], metrics: &Metrics) {
    for info in aya::programs::loaded_programs().flatten() {
        let Some((_, name)) = programs.iter().find(|(id, _)| *id == info.id()) else {
            continue;
        };
        metrics.set_program_stats(name, info.run_count(), info.run_time().as_nanos() as u64);
    }
}

/// Removes kernel entries of processes that no longer exist (they exited without closing their
/// sockets), whatever userspace knew of them.
fn forget_dead<V: aya::Pod>(map: &mut BpfHashMap<MapData, SockKey, V>) {
    let dead: Vec<SockKey> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !Path::new(&format!("/proc/{}", k.tgid)).exists())
        .collect();
    for key in dead {
        let _ = map.remove(&key);
    }
}

fn fold_counters(
    counters: &PerCpuArray<MapData, u64>,
    lost: &[DeltaCounter],
    metrics: &SelfMetrics,
) {
    for (index, name) in COUNTER_NAMES.iter().enumerate() {
        let Ok(values) = counters.get(&(index as u32), 0) else {
            continue;
        };
        let total: u64 = values.iter().sum();
        if *name == "events_sent" {
            lost[index].advance(&metrics.kernel_events_sent, total);
        } else if *name == "syscall_table_full" {
            // Syscalls of (cgroup, syscall) pairs beyond --syscalls-max-series: the series cap.
            // Created at the first drop, as the other metrics' drop counts are.
            if total == 0 {
                continue;
            }
            let counter = metrics.series_dropped.get_or_create(&MetricLabel {
                metric: crate::syscalls::DURATION_METRIC.to_owned(),
            });
            lost[index].advance(&counter, total);
        } else {
            let counter = metrics.kernel_events_lost.get_or_create(&ReasonLabel {
                reason: (*name).to_owned(),
            });
            lost[index].advance(&counter, total);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{
        next_drain_in, plan_entry, tracepoint_field, EntryPlan, SyscallEntry, SyscallSettings,
    };

    #[test]
    fn drains_are_paced_so_the_ring_stays_an_eighth_full() {
        let ms = Duration::from_millis;
        let ring = 8 << 20;
        // 100 KiB in 10 ms: an eighth of 8 MiB takes 100 ms at that rate; capped at 50 ms.
        assert_eq!(next_drain_in(ring, 100 << 10, ms(10), ms(10)), ms(50));
        // 512 KiB in 20 ms: 1 MiB in 40 ms.
        assert_eq!(next_drain_in(ring, 512 << 10, ms(20), ms(20)), ms(40));
        // Faster than the ring can take at the minimum interval: the minimum.
        assert_eq!(next_drain_in(ring, 4 << 20, ms(5), ms(5)), ms(5));
        // A small ring is drained as often as allowed.
        assert_eq!(next_drain_in(64 << 10, 100 << 10, ms(50), ms(50)), ms(5));
        // Nothing arrived: back off to the maximum.
        assert_eq!(next_drain_in(ring, 0, ms(5), ms(5)), ms(10));
        assert_eq!(next_drain_in(ring, 0, ms(40), ms(40)), ms(50));
    }

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
