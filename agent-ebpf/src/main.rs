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
        macros::{raw_tracepoint, tracepoint},
        programs::{RawTracePointContext, TracePointContext},
    };

    use crate::io;

    /// Every syscall entry; dispatches on the syscall number.
    #[raw_tracepoint(tracepoint = "sys_enter")]
    pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
        io::sys_enter(&ctx)
    }

    /// Every syscall exit; dispatches on the syscall number.
    #[raw_tracepoint(tracepoint = "sys_exit")]
    pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
        io::sys_exit(&ctx)
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
