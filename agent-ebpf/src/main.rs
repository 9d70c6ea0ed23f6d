//! Entry points of Periscope's kernel programs: thin wrappers over `io.rs`.
//!
//! On the host this file compiles to an empty binary so that `cargo build --workspace` works;
//! the real object is built for `bpfel-unknown-none` by the agent's build script.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod io;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        macros::{btf_tracepoint, raw_tracepoint, tracepoint},
        programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
    };

    use crate::io::{self, BtfRegs, ProbedRegs};

    // Two variants of the same syscall exit hook; the loader picks one at start-up. BTF
    // tracepoints read registers with plain loads; raw tracepoints (no BTF needed) through a
    // helper.

    /// Every syscall exit (BTF variant).
    #[btf_tracepoint(function = "sys_exit")]
    pub fn sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
        let regs: *const u8 = ctx.arg(0);
        io::sys_exit(&BtfRegs(regs), ctx.arg(1));
        0
    }

    /// Every syscall exit (raw variant).
    #[raw_tracepoint(tracepoint = "sys_exit")]
    pub fn sys_exit_raw(ctx: RawTracePointContext) -> i32 {
        let regs: u64 = ctx.arg(0);
        io::sys_exit(&ProbedRegs(regs as *const u8), ctx.arg(1));
        0
    }

    #[tracepoint]
    pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
        io::sys_enter_close(&ctx)
    }

    #[tracepoint]
    pub fn task_newtask(ctx: TracePointContext) -> u32 {
        io::task_newtask(&ctx)
    }

    #[tracepoint]
    pub fn process_exit(ctx: TracePointContext) -> u32 {
        io::process_exit(&ctx)
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic, so this is never reached.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
