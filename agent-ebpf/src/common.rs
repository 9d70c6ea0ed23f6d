//! Helpers every program body shares: the loader-set configuration, the per-CPU counters of
//! things that could not be delivered, the clock, and reading a syscall's saved registers.
//!
//! This module imports nothing from the other kernel modules, and `io`, `syscalls` and `flows`
//! import nothing from each other: only `main.rs` combines their entry points (see there), so
//! the helper modules form no cycle.

use agent_ebpf::{Config, Counter, COUNTERS_LEN, MAX_CAPTURE, SYSCALL_STATS_OFF};
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_ktime_get_ns},
    macros::map,
    maps::PerCpuArray,
};

/// Set by the loader (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    self_tgid: 0,
    capture_bytes: MAX_CAPTURE as u32,
    newtask_pid_offset: 8,
    newtask_flags_offset: 32,
    syscall_stats: SYSCALL_STATS_OFF,
    syscall_nr_offset: 8,
    tls: 0,
};

/// Things that could not be delivered, per CPU, indexed by `Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// `BPF_NOEXIST`: a map insert that fails when the key exists.
pub const BPF_NOEXIST: u64 = 1;

/// Syscall numbers of the syscalls Periscope hooks, per architecture: x86_64's own table
/// (`arch/x86/entry/syscalls/syscall_64.tbl`) and arm64's, the generic one
/// (`include/uapi/asm-generic/unistd.h`). The object is built for one architecture
/// (`bpf_target_arch`, set by aya-build from the agent's target).
#[cfg(not(bpf_target_arch = "aarch64"))]
pub mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const SOCKET: u64 = 41;
    pub const CONNECT: u64 = 42;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const ACCEPT4: u64 = 288;
}

#[cfg(bpf_target_arch = "aarch64")]
pub mod nr {
    pub const READ: u64 = 63;
    pub const WRITE: u64 = 64;
    pub const READV: u64 = 65;
    pub const WRITEV: u64 = 66;
    pub const SENDFILE: u64 = 71;
    pub const SOCKET: u64 = 198;
    pub const CONNECT: u64 = 203;
    pub const ACCEPT: u64 = 202;
    pub const SENDTO: u64 = 206;
    pub const RECVFROM: u64 = 207;
    pub const SENDMSG: u64 = 211;
    pub const RECVMSG: u64 = 212;
    pub const ACCEPT4: u64 = 242;
}

/// Reads the saved user registers of the current syscall.
pub trait Regs {
    fn load(&self, offset: usize) -> u64;
    #[cfg_attr(not(bpf_target_arch = "aarch64"), allow(dead_code))]
    fn load_u32(&self, offset: usize) -> u32;
}

/// Registers behind a BTF-typed pointer (`tp_btf`): plain loads the verifier checks.
pub struct BtfRegs(pub *const u8);

impl Regs for BtfRegs {
    #[inline(always)]
    fn load(&self, offset: usize) -> u64 {
        // SAFETY: the pointer is the kernel's `struct pt_regs *` typed by BTF; the verifier only
        // accepts loads at offsets of real fields and guards them against faults.
        unsafe { core::ptr::read_volatile(self.0.add(offset) as *const u64) }
    }

    #[inline(always)]
    fn load_u32(&self, offset: usize) -> u32 {
        // SAFETY: as above, for a 4-byte field.
        unsafe { core::ptr::read_volatile(self.0.add(offset) as *const u32) }
    }
}

/// Registers read through `bpf_probe_read_kernel` (raw tracepoints, no BTF needed).
pub struct ProbedRegs(pub *const u8);

impl Regs for ProbedRegs {
    #[inline(always)]
    fn load(&self, offset: usize) -> u64 {
        // SAFETY: the helper checks the address and returns an error instead of faulting.
        unsafe { bpf_probe_read_kernel(self.0.add(offset) as *const u64) }.unwrap_or(0)
    }

    #[inline(always)]
    fn load_u32(&self, offset: usize) -> u32 {
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel(self.0.add(offset) as *const u32) }.unwrap_or(0)
    }
}

/// Offsets in x86_64 `struct pt_regs` (part of the syscall ABI): the six argument registers
/// (di, si, dx, r10, r8, r9) and `orig_ax`, which holds the syscall number.
#[cfg(not(bpf_target_arch = "aarch64"))]
const ARG_OFFSETS: [usize; 6] = [112, 104, 96, 56, 72, 64];
#[cfg(not(bpf_target_arch = "aarch64"))]
const SYSCALL_NR_OFFSET: usize = 120;

/// Offsets in arm64 `struct pt_regs`: `regs[0..6]` carry the arguments, but `regs[0]` holds
/// the return value once the syscall has returned, so the first argument is read from
/// `orig_x0` (272), which the entry code saves. The number is `syscallno` (280), an `s32`.
#[cfg(bpf_target_arch = "aarch64")]
const ARG_OFFSETS: [usize; 6] = [272, 8, 16, 24, 32, 40];
#[cfg(bpf_target_arch = "aarch64")]
const SYSCALL_NR_OFFSET: usize = 280;

/// Argument `index` (0-based) of the current syscall.
#[inline(always)]
pub fn arg<R: Regs>(regs: &R, index: usize) -> u64 {
    match ARG_OFFSETS.get(index) {
        Some(offset) => regs.load(*offset),
        None => 0,
    }
}

/// The syscall number of the current syscall (x86_64 `orig_ax`, arm64 `syscallno`).
#[inline(always)]
pub fn syscall_nr<R: Regs>(regs: &R) -> u64 {
    #[cfg(not(bpf_target_arch = "aarch64"))]
    return regs.load(SYSCALL_NR_OFFSET);
    // An `s32` followed by another field: a 4-byte load (the verifier checks BTF loads against
    // the field's size). No syscall (-1) becomes 0xffff_ffff, which matches no hook.
    #[cfg(bpf_target_arch = "aarch64")]
    return u64::from(regs.load_u32(SYSCALL_NR_OFFSET));
}

#[inline(always)]
pub fn config() -> Config {
    // SAFETY: CONFIG is a plain global the loader may rewrite before load; read_volatile keeps
    // the compiler from constant-folding the default.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// `CLOCK_MONOTONIC` now, in ns (`bpf_ktime_get_ns`).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn tgid_of(pid_tgid: u64) -> u32 {
    (pid_tgid >> 32) as u32
}
