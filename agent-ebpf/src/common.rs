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

// Moving memory without `memcpy`/`memset`. LLVM turns a struct copy, a `Default` value or a
// run of stores to neighbouring fields into a call to `memcpy`, `memmove` or `memset`, which
// on BPF are subprograms that move ONE BYTE per iteration (about five instructions a byte).
// The framing walk's state copies alone cost ~400 ns per framed syscall that way (half of what
// framing added to a small HTTP exchange). Volatile stores of whole words cannot be merged
// back into such a call. A unit test (`capture::names_tests`) keeps them out of the object.

/// Stores `value` at `dst` so that the compiler cannot merge it with neighbouring stores.
#[inline(always)]
pub fn store<T>(dst: &mut T, value: T) {
    // SAFETY: `dst` is a valid, aligned, exclusive reference.
    unsafe { core::ptr::write_volatile(dst, value) }
}

/// `*dst = *src` for a plain-data value of whole 8-byte words, a word at a time.
#[inline(always)]
pub fn copy_words<T: Copy>(dst: &mut T, src: &T) {
    const { assert!(core::mem::size_of::<T>() % 8 == 0 && core::mem::align_of::<T>() >= 8) };
    let d = dst as *mut T as *mut u64;
    let s = src as *const T as *const u64;
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: both point at size_of::<T>() bytes aligned to 8 (checked above).
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// A `T` of all zeros in `slot`, written word by word (`T::default()` became a `memset`
/// call). Use it where it is: moving the value out lets LLVM, which knows it is zeros, build
/// the copy with a `memset` again.
#[inline(always)]
pub fn zeroed_in<T: Copy>(slot: &mut core::mem::MaybeUninit<T>) -> &mut T {
    // SAFETY: all zeros is a valid `T` (the callers' plain-data structs), and every byte is
    // written before it is read.
    unsafe {
        zero_words(slot.as_mut_ptr());
        slot.assume_init_mut()
    }
}

/// The current task's `comm`, written straight into `dst` (zeros when the helper fails).
/// aya's `bpf_get_current_comm` returns a zero-initialised array: a `memset` call and a copy.
#[inline(always)]
pub fn current_comm(dst: &mut [u8; 16]) {
    // SAFETY: `dst` is 16 writable bytes; the helper zeroes them on failure.
    unsafe { aya_ebpf::helpers::generated::bpf_get_current_comm(dst.as_mut_ptr() as *mut _, 16) };
}

/// Zeroes `size_of::<T>()` bytes at `dst` (whole 8-byte words), a word at a time.
///
/// # Safety
/// `dst` points at writable memory for a `T`, and the all-zero bytes are a valid `T` (the
/// `#[repr(C)]` plain-data structs of `agent_ebpf`).
#[inline(always)]
pub unsafe fn zero_words<T>(dst: *mut T) {
    const { assert!(core::mem::size_of::<T>() % 8 == 0 && core::mem::align_of::<T>() >= 8) };
    let d = dst as *mut u64;
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: the caller's `dst` points at size_of::<T>() writable bytes aligned to 8.
        unsafe { core::ptr::write_volatile(d.add(i), 0) };
        i += 1;
    }
}
