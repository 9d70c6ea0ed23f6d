//! Entry points of Periscope's kernel programs: thin wrappers over `io.rs` (with `io/tls.rs`),
//! `syscalls.rs` and `flows.rs`.
//!
//! Module graph, in one direction only: `common.rs` (configuration, counters, clock, syscall
//! registers) is used by `io.rs`, `syscalls.rs` and `flows.rs`, which import nothing from each
//! other. Where one program runs two bodies, this file calls them in turn: the I/O exit hook
//! runs the syscall statistics' exit side first (`sys_exit` below), and `process_exit` frees
//! the exiting thread's statistics slot before the I/O side reports the exit. Program names
//! are the `fn` identifiers here; userspace finds them through `agent_ebpf::names`.
//!
//! On the host this file compiles to an empty binary so that `cargo build --workspace` works;
//! the real object is built for `bpfel-unknown-none` by the agent's build script.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds on shared map values (flows.rs): the BPF target has no AtomicU64.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod common;
#[cfg(target_arch = "bpf")]
mod flows;
#[cfg(target_arch = "bpf")]
mod io;
#[cfg(target_arch = "bpf")]
mod syscalls;

#[cfg(target_arch = "bpf")]
mod programs {
    use agent_ebpf::{
        Syscall, DIR_EGRESS, DIR_INGRESS, SYSCALL_STATS_IN_IO_EXIT, SYSCALL_STATS_OFF,
    };
    use aya_ebpf::{
        helpers::bpf_get_current_pid_tgid,
        macros::{btf_tracepoint, fexit, raw_tracepoint, tracepoint},
        programs::{BtfTracePointContext, FExitContext, RawTracePointContext, TracePointContext},
    };

    use crate::common::{config, syscall_nr, BtfRegs, ProbedRegs, Regs};
    use crate::io::{self, Buffer};
    use crate::syscalls;

    /// One syscall exit (tp_btf and raw variants): the syscall's arguments are still in `regs`.
    #[inline(always)]
    fn sys_exit<R: Regs, const FRAMED: bool>(regs: &R, ret: i64) {
        let nr = syscall_nr(regs);
        // Statistics first, so that the capture work is not part of the measured duration.
        // The loader sets this once; with a read-only global the verifier drops the dead branch.
        if config().syscall_stats == SYSCALL_STATS_IN_IO_EXIT {
            syscalls::on_exit(nr, ret);
        }
        io::on_exit::<R, FRAMED>(regs, nr, ret);
    }

    // Variants of the same syscall exit handling; the loader picks one at start-up. BTF
    // tracepoints read registers with plain loads; raw tracepoints (no BTF needed) through a
    // helper. The `frame_*` ones also walk the messages of framed connections (io/framing.rs)
    // and need `bpf_loop` (5.17+); the `sys_exit_*` ones capture a prefix only.

    /// Every syscall exit (BTF variant, framing).
    #[btf_tracepoint(function = "sys_exit")]
    pub fn frame_exit_btf(ctx: BtfTracePointContext) -> i32 {
        let regs: *const u8 = ctx.arg(0);
        sys_exit::<_, true>(&BtfRegs(regs), ctx.arg(1));
        0
    }

    /// Every syscall exit (raw variant, framing).
    #[raw_tracepoint(tracepoint = "sys_exit")]
    pub fn frame_exit_raw(ctx: RawTracePointContext) -> i32 {
        let regs: u64 = ctx.arg(0);
        sys_exit::<_, true>(&ProbedRegs(regs as *const u8), ctx.arg(1));
        0
    }

    /// Every syscall exit (BTF variant, prefix only).
    #[btf_tracepoint(function = "sys_exit")]
    pub fn sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
        let regs: *const u8 = ctx.arg(0);
        sys_exit::<_, false>(&BtfRegs(regs), ctx.arg(1));
        0
    }

    /// Every syscall exit (raw variant, prefix only).
    #[raw_tracepoint(tracepoint = "sys_exit")]
    pub fn sys_exit_raw(ctx: RawTracePointContext) -> i32 {
        let regs: u64 = ctx.arg(0);
        sys_exit::<_, false>(&ProbedRegs(regs as *const u8), ctx.arg(1));
        0
    }

    // The fexit variant: one program per hooked syscall function, so that no other syscall runs
    // any BPF code. The functions named here are x86_64's, but only the section name carries
    // them: the loader attaches each program to its architecture's function (`capture::FEXIT`,
    // `__arm64_sys_read` on arm64). Each receives the syscall's saved registers (BTF-typed) and its return value.
    macro_rules! fexit_io {
        ($name:ident, $function:literal, $syscall:ident, $direction:ident, $buffer:ident) => {
            #[fexit(function = $function)]
            pub fn $name(ctx: FExitContext) -> i32 {
                let regs: *const u8 = ctx.arg(0);
                // Framing too: a kernel with trampolines but no `bpf_loop` (5.5–5.16) fails
                // to load these and falls back to the tracepoints.
                io::on_io::<_, true>(
                    &BtfRegs(regs),
                    ctx.arg(1),
                    Syscall::$syscall,
                    $direction,
                    Buffer::$buffer,
                );
                0
            }
        };
    }

    fexit_io!(fexit_read, "__x64_sys_read", Read, DIR_INGRESS, Flat);
    fexit_io!(
        fexit_recvfrom,
        "__x64_sys_recvfrom",
        Recvfrom,
        DIR_INGRESS,
        Flat
    );
    fexit_io!(fexit_readv, "__x64_sys_readv", Readv, DIR_INGRESS, Iovec);
    fexit_io!(
        fexit_recvmsg,
        "__x64_sys_recvmsg",
        Recvmsg,
        DIR_INGRESS,
        Msghdr
    );
    fexit_io!(fexit_write, "__x64_sys_write", Write, DIR_EGRESS, Flat);
    fexit_io!(fexit_sendto, "__x64_sys_sendto", Sendto, DIR_EGRESS, Flat);
    fexit_io!(fexit_writev, "__x64_sys_writev", Writev, DIR_EGRESS, Iovec);
    fexit_io!(
        fexit_sendmsg,
        "__x64_sys_sendmsg",
        Sendmsg,
        DIR_EGRESS,
        Msghdr
    );
    fexit_io!(
        fexit_sendfile,
        "__x64_sys_sendfile64",
        Sendfile,
        DIR_EGRESS,
        None
    );

    #[fexit(function = "__x64_sys_accept")]
    pub fn fexit_accept(ctx: FExitContext) -> i32 {
        let regs: *const u8 = ctx.arg(0);
        io::on_accept(&BtfRegs(regs), ctx.arg(1));
        0
    }

    #[fexit(function = "__x64_sys_accept4")]
    pub fn fexit_accept4(ctx: FExitContext) -> i32 {
        let regs: *const u8 = ctx.arg(0);
        io::on_accept(&BtfRegs(regs), ctx.arg(1));
        0
    }

    #[fexit(function = "__x64_sys_connect")]
    pub fn fexit_connect(ctx: FExitContext) -> i32 {
        let regs: *const u8 = ctx.arg(0);
        io::on_connect(&BtfRegs(regs), ctx.arg(1));
        0
    }

    #[fexit(function = "__x64_sys_socket")]
    pub fn fexit_socket(ctx: FExitContext) -> i32 {
        let regs: *const u8 = ctx.arg(0);
        io::on_socket(&BtfRegs(regs), ctx.arg(1));
        0
    }

    // Syscall statistics: the entry hook on every syscall, in both variants (the syscall number
    // is an argument, no register read), or on each selected syscall's own tracepoint; and an
    // exit hook of its own for when the I/O hooks are fexit programs.

    /// Every syscall entry (BTF variant).
    #[btf_tracepoint(function = "sys_enter")]
    pub fn sys_enter_stats_btf(ctx: BtfTracePointContext) -> i32 {
        let nr: u64 = ctx.arg(1);
        syscalls::on_enter(nr);
        0
    }

    /// Every syscall entry (raw variant).
    #[raw_tracepoint(tracepoint = "sys_enter")]
    pub fn sys_enter_stats_raw(ctx: RawTracePointContext) -> i32 {
        let nr: u64 = ctx.arg(1);
        syscalls::on_enter(nr);
        0
    }

    /// The entry of one selected syscall: attached to `syscalls:sys_enter_<name>` of each
    /// selected syscall, so that unselected syscalls run no entry program.
    #[tracepoint]
    pub fn sys_enter_stats_tp(ctx: TracePointContext) -> u32 {
        syscalls::on_enter_event(&ctx)
    }

    /// Every syscall exit, statistics only (BTF variant).
    #[btf_tracepoint(function = "sys_exit")]
    pub fn sys_exit_stats_btf(ctx: BtfTracePointContext) -> i32 {
        let regs: *const u8 = ctx.arg(0);
        syscalls::on_exit(syscall_nr(&BtfRegs(regs)), ctx.arg(1));
        0
    }

    /// Every syscall exit, statistics only (raw variant).
    #[raw_tracepoint(tracepoint = "sys_exit")]
    pub fn sys_exit_stats_raw(ctx: RawTracePointContext) -> i32 {
        let regs: u64 = ctx.arg(0);
        syscalls::on_exit(syscall_nr(&ProbedRegs(regs as *const u8)), ctx.arg(1));
        0
    }

    #[tracepoint]
    pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
        io::sys_enter_close(&ctx)
    }

    #[tracepoint]
    pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
        io::sys_enter_dup(&ctx)
    }

    #[tracepoint]
    pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
        io::sys_enter_dup(&ctx)
    }

    #[tracepoint]
    pub fn sys_enter_close_range(ctx: TracePointContext) -> u32 {
        io::sys_enter_close_range(&ctx)
    }

    #[tracepoint]
    pub fn process_exec(ctx: TracePointContext) -> u32 {
        io::process_exec(&ctx)
    }

    #[tracepoint]
    pub fn task_newtask(ctx: TracePointContext) -> u32 {
        io::task_newtask(&ctx)
    }

    #[tracepoint]
    pub fn process_exit(_ctx: TracePointContext) -> u32 {
        let pid_tgid = bpf_get_current_pid_tgid();
        if config().syscall_stats != SYSCALL_STATS_OFF {
            // Every thread's exit passes here: free its syscall start-time slot.
            syscalls::forget_thread(pid_tgid as u32);
        }
        io::process_exit(pid_tgid)
    }

    /// The local address of each connecting socket, for `Open` events (see `io::connect_local`).
    #[aya_ebpf::macros::sock_ops]
    pub fn connect_local(ctx: aya_ebpf::programs::SockOpsContext) -> u32 {
        io::connect_local(&ctx);
        1
    }

    /// The connecting thread's socket, where `connect_local` cannot run (see
    /// `io::connect_state`).
    #[tracepoint]
    pub fn connect_state(ctx: TracePointContext) -> u32 {
        io::connect_state(&ctx)
    }

    /// TCP flows: records the owner of each new TCP socket (see `flows.rs`).
    #[aya_ebpf::macros::cgroup_sock(sock_create)]
    pub fn flow_sock_create(ctx: aya_ebpf::programs::SockContext) -> i32 {
        crate::flows::sock_create(&ctx);
        1 // allow the socket
    }

    /// TCP flows: connection lifecycle, bytes, retransmits and RTT.
    #[aya_ebpf::macros::sock_ops]
    pub fn flow_sock_ops(ctx: aya_ebpf::programs::SockOpsContext) -> u32 {
        crate::flows::sock_ops(&ctx);
        1
    }

    /// `flow_sock_ops` and `connect_local` in one program: flows switch on per-segment
    /// callbacks, and every `sock_ops` program attached runs on each of them, so two programs
    /// would cost two runs per segment.
    #[aya_ebpf::macros::sock_ops]
    pub fn flow_sock_ops_connect(ctx: aya_ebpf::programs::SockOpsContext) -> u32 {
        io::connect_local(&ctx);
        crate::flows::sock_ops(&ctx);
        1
    }

    /// UDP flows (`--udp-flows`): payload bytes received. Always lets the packet through.
    #[aya_ebpf::macros::cgroup_skb(ingress)]
    pub fn flow_udp_ingress(ctx: aya_ebpf::programs::SkBuffContext) -> i32 {
        crate::flows::udp_skb(&ctx, false);
        1
    }

    /// UDP flows (`--udp-flows`): payload bytes sent. Always lets the packet through.
    #[aya_ebpf::macros::cgroup_skb(egress)]
    pub fn flow_udp_egress(ctx: aya_ebpf::programs::SkBuffContext) -> i32 {
        crate::flows::udp_skb(&ctx, true);
        1
    }

    // TLS plaintext (io/tls.rs): uprobes at the entry of the library's read and write
    // functions, one uretprobe at their return.

    #[aya_ebpf::macros::uprobe]
    pub fn ssl_read_enter(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
        io::tls::enter(&ctx, DIR_INGRESS, false);
        0
    }

    #[aya_ebpf::macros::uprobe]
    pub fn ssl_read_ex_enter(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
        io::tls::enter(&ctx, DIR_INGRESS, true);
        0
    }

    #[aya_ebpf::macros::uprobe]
    pub fn ssl_write_enter(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
        io::tls::enter(&ctx, DIR_EGRESS, false);
        0
    }

    #[aya_ebpf::macros::uprobe]
    pub fn ssl_write_ex_enter(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
        io::tls::enter(&ctx, DIR_EGRESS, true);
        0
    }

    #[aya_ebpf::macros::uretprobe]
    pub fn ssl_return(ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
        io::tls::leave(&ctx);
        0
    }

    /// TCP flows: which closing sockets were reset.
    #[tracepoint]
    pub fn flow_receive_reset(ctx: TracePointContext) -> u32 {
        crate::flows::receive_reset(&ctx)
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
