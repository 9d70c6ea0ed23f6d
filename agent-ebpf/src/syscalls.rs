//! Per-cgroup, per-syscall statistics, aggregated in the kernel: call counts by latency bucket,
//! errors by errno class and the total duration, in a per-CPU hash that userspace reads every
//! few seconds. Nothing goes through the ring buffer.
//!
//! The entry hook stores the start time of a selected syscall per thread; the exit hook finds
//! it, computes the duration and adds one call to the (cgroup, syscall) entry of the current
//! CPU. The entry hook is either one program attached to `syscalls:sys_enter_<name>` of each
//! selected syscall ([`on_enter_event`]), so that other syscalls run no entry program at all,
//! or, where those events are missing, one program on `raw_syscalls:sys_enter` ([`on_enter`])
//! that every syscall runs. Syscalls outside the selection ([`SYSCALL_FILTER`]) cost the exit
//! hook (and that entry hook) one bit test. With the tp_btf and raw I/O hooks the exit side
//! runs inside the I/O exit program (`sys_exit` in `main.rs`), which already reads the syscall number:
//! one program run per exit instead of two (measured in BENCHMARKS.md). With the fexit I/O
//! hooks it runs in a `sys_exit` program of its own.
//!
//! Start times are written in place, never deleted at exit (a delete per syscall costs more than
//! the lookup); a thread's slot is freed when the thread exits (`sched_process_exit`).

use agent_ebpf::{
    errno_class, latency_bucket, syscall_errno, Counter, SyscallFilter, SyscallKey, SyscallStats,
    ERRNO_CLASSES, SYSCALL_NR_LIMIT,
};

// The error counters are indexed with a mask.
const _: () = assert!(ERRNO_CLASSES.is_power_of_two());
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    },
    macros::map,
    maps::{HashMap, PerCpuHashMap},
    programs::TracePointContext,
    EbpfContext,
};

use crate::common::{bump, config, BPF_NOEXIST};

/// The selected syscalls. Set by the loader (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static SYSCALL_FILTER: SyscallFilter = SyscallFilter {
    bits: [0; SYSCALL_NR_LIMIT / 64],
};

const EEXIST: i32 = 17;

/// The value a new statistics entry starts from.
static ZERO_STATS: SyscallStats = SyscallStats {
    sum_ns: 0,
    errors: [0; agent_ebpf::ERRNO_CLASSES],
    buckets: [0; agent_ebpf::LATENCY_BUCKETS],
};

/// When a thread entered its current selected syscall, and which one.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallStart {
    /// `CLOCK_MONOTONIC` ns at entry; 0 once the exit has consumed it.
    ts_ns: u64,
    nr: u64,
}

/// Start of the current selected syscall, by thread id. One slot per thread that made a selected
/// syscall, freed at thread exit; a full table is counted (`Counter::SyscallStartsFull`).
#[map]
static SYSCALL_STARTS: HashMap<u32, SyscallStart> = HashMap::with_max_entries(65536, 0);

/// The statistics, per CPU. The loader sizes it to `--syscalls-max-series` entries; calls of a
/// new (cgroup, syscall) pair beyond that are counted (`Counter::SyscallTableFull`).
#[map]
static SYSCALL_STATS: PerCpuHashMap<SyscallKey, SyscallStats> =
    PerCpuHashMap::with_max_entries(4096, 0);

/// Whether syscall `nr` is selected (numbers beyond the bitmap, such as x32's, are not).
#[inline(always)]
fn selected(nr: u64) -> bool {
    let Some(word) = SYSCALL_FILTER.bits.get((nr >> 6) as usize) else {
        return false;
    };
    // SAFETY: a plain global the loader may rewrite before load; read_volatile keeps the
    // compiler from constant-folding the all-zero default.
    let word = unsafe { core::ptr::read_volatile(word) };
    word & (1u64 << (nr & 63)) != 0
}

/// `raw_syscalls:sys_enter(regs, id)`, which every syscall runs: remember when a selected
/// syscall started.
#[inline(always)]
pub fn on_enter(nr: u64) {
    if selected(nr) {
        record_start(nr);
    }
}

/// `syscalls:sys_enter_<name>`, attached only to the selected syscalls: remember when this one
/// started. The record holds the syscall number (`__syscall_nr`, an int) at the offset the
/// loader read from the event's format.
#[inline(always)]
pub fn on_enter_event(ctx: &TracePointContext) -> u32 {
    let offset = config().syscall_nr_offset as usize;
    let nr = if offset == 8 {
        // The offset on every kernel we know: a plain context load, no helper call.
        // SAFETY: offset 8 of a syscall enter record is `__syscall_nr` (checked by the loader
        // in the format); the verifier checks context loads at constant offsets.
        unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(8) as *const i32) }
    } else {
        // SAFETY: the offset comes from this event's format file; a bad read returns an error.
        match unsafe { ctx.read_at::<i32>(offset) } {
            Ok(nr) => nr,
            Err(_) => return 0,
        }
    };
    if nr >= 0 {
        record_start(nr as u64);
    }
    0
}

/// Stores the start of syscall `nr` in the current thread's slot.
#[inline(always)]
fn record_start(nr: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == config().self_tgid {
        return;
    }
    let tid = pid_tgid as u32;
    // SAFETY: no preconditions.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    match SYSCALL_STARTS.get_ptr_mut(tid) {
        // SAFETY: only this thread writes its own slot while it runs (the exit hook of the same
        // thread, or its removal at thread exit, cannot run concurrently with this entry).
        Some(slot) => unsafe {
            (*slot).ts_ns = ts_ns;
            (*slot).nr = nr;
        },
        None => {
            if SYSCALL_STARTS
                .insert(tid, SyscallStart { ts_ns, nr }, 0)
                .is_err()
            {
                bump(Counter::SyscallStartsFull);
            }
        }
    }
}

/// `sys_exit(regs, ret)` of syscall `nr`: add the call to its cgroup's statistics.
#[inline(always)]
pub fn on_exit(nr: u64, ret: i64) {
    if !selected(nr) {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(slot) = SYSCALL_STARTS.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: this thread's own slot (see `record_start`).
    let start = unsafe { *slot };
    // A start of another syscall, or one already consumed, is not this call's: the syscall was
    // entered before the hooks were attached, or its entry could not be recorded.
    if start.nr != nr || start.ts_ns == 0 {
        return;
    }
    // SAFETY: as above.
    unsafe { (*slot).ts_ns = 0 };
    // SAFETY: no preconditions.
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.ts_ns);
    let key = SyscallKey {
        // SAFETY: no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        nr: nr as u32,
        _pad: 0,
    };
    let bucket = latency_bucket(ns);
    let class = syscall_errno(ret).map(errno_class);
    if let Some(stats) = SYSCALL_STATS.get_ptr_mut(&key) {
        // SAFETY: this CPU's copy of the value; only this program writes it, and a program does
        // not nest with itself on one CPU.
        add(unsafe { &mut *stats }, ns, bucket, class);
        return;
    }
    // A new entry starts from a zeroed value in read-only data rather than one built on the
    // stack: zeroing 152 stack bytes is a byte loop the verifier walks once per path, which put
    // the framing exit program (that runs this first) over the verifier's million instructions.
    match SYSCALL_STATS.insert(&key, &ZERO_STATS, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU created the entry first: count into this CPU's (zeroed) copy.
        Err(e) if e == -EEXIST => {}
        Err(_) => {
            bump(Counter::SyscallTableFull);
            return;
        }
    }
    if let Some(stats) = SYSCALL_STATS.get_ptr_mut(&key) {
        // SAFETY: as above.
        add(unsafe { &mut *stats }, ns, bucket, class);
    }
}

#[inline(always)]
fn add(stats: &mut SyscallStats, ns: u64, bucket: usize, class: Option<usize>) {
    stats.sum_ns = stats.sum_ns.wrapping_add(ns);
    if let Some(count) = stats.buckets.get_mut(bucket) {
        *count = count.wrapping_add(1);
    }
    if let Some(class) = class {
        // The mask restates class < ERRNO_CLASSES where the verifier needs it: Linux 6.1 loses
        // the bound of a value spilled across the map lookup. The volatile read keeps the
        // compiler, which knows the bound, from dropping the mask.
        // SAFETY: a read of a local.
        let index = unsafe { core::ptr::read_volatile(&class) } & (ERRNO_CLASSES - 1);
        if let Some(errors) = stats.errors.get_mut(index) {
            *errors = errors.wrapping_add(1);
        }
    }
}

/// A thread exited: free its start-time slot.
#[inline(always)]
pub fn forget_thread(tid: u32) {
    let _ = SYSCALL_STARTS.remove(tid);
}
