//! TCP flows aggregated in the kernel: connections, failures, bytes, retransmits and RTT per
//! (process, peer address, server port, role).
//!
//! Attribution is the hard part: a passive open, a retransmit or a reset runs in softirq
//! context, where the current task is whoever happened to be interrupted. So the owner is
//! recorded once, where it is certain: `cgroup/sock_create` runs in the task calling
//! `socket(2)` and stores (tgid, cgroup id, comm) in the socket's local storage. The storage
//! map has `BPF_F_CLONE`, so a socket accepted from a listener starts with a copy of the
//! listener's owner. Everything after that is read from the stable `bpf_sock_ops` context
//! (never a kernel struct): the `sock_ops` program enables state and RTT callbacks on each
//! connection and folds deltas of `bytes_acked`, `bytes_received` and `total_retrans` into the
//! flow, so long-lived connections report bytes while they run, not only when they close.
//!
//! The kernel's byte counters count sequence space: a SYN and a FIN each add one. The SYN is
//! taken out with a baseline read when the connection is established; a FIN is taken out when
//! the state says it was sent-and-acknowledged or received (a FIN that arrives in FIN_WAIT2 is
//! seen by a header callback switched on only once the socket starts closing, so established
//! connections pay no per-packet cost). Reported values only ever grow, so an early
//! subtraction costs nothing but a short delay.

use core::ffi::c_void;
use core::intrinsics::{atomic_xadd, AtomicOrdering};
use core::mem::MaybeUninit;

use agent_ebpf::{
    FlowConfig, FlowKey, FlowSockState, FlowStats, COMM_LEN, FLOW_COUNTERS_LEN, FLOW_RTT_BUCKETS,
    FLOW_SOCK_IGNORED, ROLE_CLIENT, ROLE_SERVER, ROLE_UDP,
};
use aya_ebpf::{
    bindings::{
        bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, bpf_sock, bpf_sock_ops, BPF_F_CLONE,
        BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG,
        BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_sk_fullsock, bpf_sk_storage_get,
            bpf_sock_ops_cb_flags_set,
        },
    },
    macros::{btf_map, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{SkBuffContext, SockContext, SockOpsContext, TracePointContext},
};

use crate::common::{current_comm, store, zeroed_in, BPF_NOEXIST};

/// Set by the loader (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static FLOW_CONFIG: FlowConfig = FlowConfig {
    self_tgid: 0,
    reset_cookie_offset: 64,
    udp: 0,
};

/// `FLOW_CONFIG` as the loader set it.
#[inline(always)]
fn config() -> FlowConfig {
    // SAFETY: a plain global the loader may rewrite before load; read_volatile keeps the
    // compiler from folding its initial value into the code (a direct read was folded: the
    // agent's own sockets were compared with tgid 0, the reset cookie read at offset 64).
    unsafe { core::ptr::read_volatile(&FLOW_CONFIG) }
}

/// Flows. Userspace removes the ones of exited processes with no open connection.
#[map]
static FLOWS: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(16384, 0);

/// Sockets that received a reset, by socket cookie, until their close callback reads it.
#[map]
static RESETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// Per-CPU counters of things that could not be recorded (`FLOW_COUNTER_NAMES`).
#[map]
static FLOW_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FLOW_COUNTERS_LEN, 0);

const COUNTER_TABLE_FULL: u32 = 0;
const COUNTER_STORAGE_FAILED: u32 = 1;

type SockState = FlowSockState;

/// Callbacks of an established connection. Bytes must be reported while a connection lives,
/// not only when it closes, and no single callback sees both directions: an RTT sample
/// (`RTT_CB`, after an incoming ACK was processed) follows every change of `bytes_acked`, and
/// the header-length callback of each outgoing segment (no option space is ever reserved, so
/// nothing is written) follows every change of `bytes_received`, because received data is
/// acknowledged. The state callback sees the end.
const LIVE_FLAGS: u32 =
    BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;

/// The connection reached ESTABLISHED (it counts as opened, and must count as closed).
const STATE_ESTABLISHED: u8 = 1;
/// Its close was counted.
const STATE_DONE: u8 = 2;
/// A FIN from the peer was seen by the header callback.
const STATE_FIN_RX: u8 = 4;
/// Created by the agent itself: never counted.
const STATE_IGNORED: u8 = FLOW_SOCK_IGNORED;

/// The socket storage map, declared by hand because aya's `SkStorage` has no `BPF_F_CLONE`.
/// The layout is the libbpf BTF map convention: every field is a pointer whose pointee type
/// encodes one attribute.
#[repr(C)]
pub struct SockStorage {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const SockState,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize],
}

// SAFETY: the fields are placeholders the loader reads from BTF; nothing dereferences them.
unsafe impl Sync for SockStorage {}

#[btf_map]
static SOCKS: SockStorage = SockStorage {
    r#type: core::ptr::null(),
    key: core::ptr::null(),
    value: core::ptr::null(),
    max_entries: core::ptr::null(),
    map_flags: core::ptr::null(),
};

fn socks() -> *mut c_void {
    core::ptr::from_ref(&SOCKS).cast_mut().cast()
}

// `bpf_sock_ops.op` values and TCP states (include/uapi/linux/bpf.h, include/net/tcp_states.h).
const OP_TCP_CONNECT_CB: u32 = 3;
const OP_ACTIVE_ESTABLISHED_CB: u32 = 4;
const OP_PASSIVE_ESTABLISHED_CB: u32 = 5;
const OP_STATE_CB: u32 = 10;
const OP_RTT_CB: u32 = 12;
const OP_PARSE_HDR_OPT_CB: u32 = 13;
const OP_HDR_OPT_LEN_CB: u32 = 14;

const TCP_SYN_SENT: u32 = 2;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_FIN_WAIT2: u32 = 5;
const TCP_TIME_WAIT: u32 = 6;
const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

const TCPHDR_FIN: u32 = 0x01;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

fn count(index: u32) {
    if let Some(slot) = FLOW_COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU array slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn add(field: &mut u64, value: u64) {
    if value != 0 {
        // SAFETY: `field` points into a map value that lives as long as the map. An atomic add
        // (BPF_ATOMIC) is how concurrent CPUs update one flow without losing increments; the
        // BPF target offers it only through the intrinsic (core has no AtomicU64 for it).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, value) };
    }
}

/// `cgroup/sock_create`: remembers who created a TCP socket (and a UDP one with
/// `--udp-flows`).
pub fn sock_create(ctx: &SockContext) {
    // SAFETY: the context of a cgroup/sock program is a valid `bpf_sock`.
    let sk = unsafe { &*ctx.sock };
    let tcp = sk.type_ == SOCK_STREAM && sk.protocol == IPPROTO_TCP;
    let udp = sk.protocol == IPPROTO_UDP && config().udp != 0;
    if !tcp && !udp {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the helper takes the program's own socket and no initial value.
    let state = unsafe {
        bpf_sk_storage_get(
            socks(),
            ctx.sock.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    }
    .cast::<SockState>();
    if state.is_null() {
        count(COUNTER_STORAGE_FAILED);
        return;
    }
    // SAFETY: a non-null storage pointer is valid for the socket's lifetime.
    let state = unsafe { &mut *state };
    state.tgid = tgid;
    // SAFETY: no arguments; allowed in cgroup/sock programs.
    state.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    current_comm(&mut state.comm);
    if tgid == config().self_tgid {
        state.flags = STATE_IGNORED;
    }
}

/// `tcp:tcp_receive_reset`: marks the socket so its close is counted as refused or reset.
pub fn receive_reset(ctx: &TracePointContext) -> u32 {
    // SAFETY: the offset comes from the tracepoint's tracefs format, read at load time.
    let Ok(cookie) = (unsafe { ctx.read_at::<u64>(config().reset_cookie_offset as usize) }) else {
        return 0;
    };
    let _ = RESETS.insert(&cookie, &1, 0);
    0
}

/// The `sock_ops` program: every TCP socket in the machine's cgroups comes through here.
pub fn sock_ops(ctx: &SockOpsContext) {
    let op = ctx.op();
    match op {
        OP_TCP_CONNECT_CB
        | OP_ACTIVE_ESTABLISHED_CB
        | OP_PASSIVE_ESTABLISHED_CB
        | OP_STATE_CB
        | OP_RTT_CB
        | OP_PARSE_HDR_OPT_CB
        | OP_HDR_OPT_LEN_CB => {}
        _ => return,
    }
    // SAFETY: the context is a valid `bpf_sock_ops`; `sk` is checked for null below.
    let ops = unsafe { &*ctx.ops };
    let sk: *mut bpf_sock = unsafe { ops.__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    // A socket from before start-up has no owner yet: it gets an empty one (tgid 0).
    // SAFETY: `sk` is the context's non-null socket.
    let state = unsafe {
        bpf_sk_storage_get(
            socks(),
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    }
    .cast::<SockState>();
    if state.is_null() {
        count(COUNTER_STORAGE_FAILED);
        return;
    }
    // SAFETY: a non-null storage pointer is valid for the socket's lifetime.
    let state = unsafe { &mut *state };
    if state.flags & STATE_IGNORED != 0 {
        return;
    }
    // A socket may connect again after its connection ended (after a failed connect, or a
    // disconnect with AF_UNSPEC): only a new connect starts it over.
    if state.flags & STATE_DONE != 0 && op != OP_TCP_CONNECT_CB {
        return;
    }
    match op {
        OP_TCP_CONNECT_CB => {
            state.role = ROLE_CLIENT;
            state.flags = 0;
            // Only the end matters before establishment (a refused or timed-out connect).
            set_flags(ctx, ops, BPF_SOCK_OPS_STATE_CB_FLAG);
        }
        OP_ACTIVE_ESTABLISHED_CB | OP_PASSIVE_ESTABLISHED_CB => {
            state.role = if op == OP_ACTIVE_ESTABLISHED_CB {
                ROLE_CLIENT
            } else {
                ROLE_SERVER
            };
            // An accepted socket inherits the listener's storage: start its bookkeeping over.
            state.flags = STATE_ESTABLISHED;
            state.base_acked = ops.bytes_acked;
            state.base_received = ops.bytes_received;
            // `store`: plain stores here became a `memset` call.
            store(&mut state.sent, 0);
            store(&mut state.received, 0);
            // Retransmitted SYNs (or SYN-ACKs, which a child inherits) count too.
            state.retrans = 0;
            // Every outgoing segment from now on (see `LIVE_FLAGS`).
            set_flags(ctx, ops, LIVE_FLAGS);
            if let Some(flow) = flow_of(ops, state) {
                add(&mut flow.opened, 1);
                add(&mut flow.established, 1);
                fold(ops, state, flow, ops.state, ops.state);
            }
        }
        OP_RTT_CB | OP_HDR_OPT_LEN_CB => {
            // The hot path (every ACK and every outgoing segment): one storage lookup, and a
            // flow lookup only when a counter moved.
            if state.flags & STATE_ESTABLISHED != 0 {
                let moved = advance(ops, state, ops.state, ops.state);
                if moved.any() {
                    if let Some(flow) = flow_of(ops, state) {
                        moved.add_to(flow);
                    }
                }
            }
        }
        OP_PARSE_HDR_OPT_CB => {
            if ops.skb_tcp_flags & TCPHDR_FIN != 0 {
                state.flags |= STATE_FIN_RX;
            }
        }
        _ => {
            // SAFETY: args[0..2] of a state callback are the old and new TCP states.
            let (old, new) =
                unsafe { (ops.__bindgen_anon_1.args[0], ops.__bindgen_anon_1.args[1]) };
            state_change(ctx, ops, state, old, new);
        }
    }
}

fn set_flags(ctx: &SockOpsContext, ops: &bpf_sock_ops, flags: u32) {
    // SAFETY: the helper takes the program's own context.
    unsafe {
        bpf_sock_ops_cb_flags_set(ctx.ops, (ops.bpf_sock_ops_cb_flags | flags) as i32);
    }
}

fn state_change(
    ctx: &SockOpsContext,
    ops: &bpf_sock_ops,
    state: &mut SockState,
    old: u32,
    new: u32,
) {
    if new == TCP_FIN_WAIT1 {
        // From now on every incoming segment's flags are seen, to notice the peer's FIN even
        // when it arrives in FIN_WAIT2 (where no state change tells it apart from a timeout).
        set_flags(ctx, ops, BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG);
    }
    let established = state.flags & STATE_ESTABLISHED != 0;
    if new != TCP_CLOSE {
        if established {
            if let Some(flow) = flow_of(ops, state) {
                fold(ops, state, flow, old, new);
            }
        }
        return;
    }
    if !established && !(state.role == ROLE_CLIENT && old == TCP_SYN_SENT) {
        return;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: the value is a plain byte, copied out at once.
    let was_reset = unsafe { RESETS.get(&cookie) }.is_some();
    if was_reset {
        let _ = RESETS.remove(&cookie);
    }
    let Some(flow) = flow_of(ops, state) else {
        return;
    };
    state.flags |= STATE_DONE;
    if established {
        fold(ops, state, flow, old, new);
        add(&mut flow.closed, 1);
        add(&mut flow.established, u64::MAX);
        if was_reset {
            add(&mut flow.reset, 1);
        }
        let rtt_us = (ops.srtt_us >> 3) as u64;
        add(&mut flow.rtt[rtt_bucket(rtt_us)], 1);
        add(&mut flow.rtt_sum_us, rtt_us);
    } else {
        let retrans = ops.total_retrans as u64;
        add(&mut flow.retransmits, retrans.saturating_sub(state.retrans));
        if was_reset {
            add(&mut flow.refused, 1);
        } else {
            add(&mut flow.timed_out, 1);
        }
    }
}

/// `floor(log2(us))`, clamped to the histogram.
fn rtt_bucket(us: u64) -> usize {
    // A bounded loop: BPF has no count-leading-zeros instruction.
    let mut bucket = 0;
    while bucket + 1 < FLOW_RTT_BUCKETS && us >> (bucket + 1) != 0 {
        bucket += 1;
    }
    bucket
}

/// Increases of a socket's counters since they were last added to its flow.
struct Moved {
    sent: u64,
    received: u64,
    retrans: u64,
}

impl Moved {
    fn any(&self) -> bool {
        self.sent | self.received | self.retrans != 0
    }

    fn add_to(&self, flow: &mut FlowStats) {
        add(&mut flow.bytes_sent, self.sent);
        add(&mut flow.bytes_received, self.received);
        add(&mut flow.retransmits, self.retrans);
    }
}

/// Adds what changed since the last fold to `flow`.
fn fold(ops: &bpf_sock_ops, state: &mut SockState, flow: &mut FlowStats, old: u32, new: u32) {
    advance(ops, state, old, new).add_to(flow);
}

/// What changed since the last fold, marked as reported. `old`/`new` are the states around
/// this callback (equal outside state changes): the FIN accounting depends on which one the
/// counters already reflect.
fn advance(ops: &bpf_sock_ops, state: &mut SockState, old: u32, new: u32) -> Moved {
    // After a transition to CLOSE the counters still describe the old state.
    let st = if new == TCP_CLOSE { old } else { new };
    // Our FIN is in `bytes_acked` once it was sent and everything up to it was acknowledged.
    let fin_sent = matches!(
        st,
        TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING | TCP_LAST_ACK | TCP_TIME_WAIT
    );
    let fin_acked = (fin_sent && ops.snd_una == ops.snd_nxt) as u64;
    let fin_received = (state.flags & STATE_FIN_RX != 0
        || matches!(
            st,
            TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING | TCP_TIME_WAIT
        )) as u64;
    let sent = ops
        .bytes_acked
        .saturating_sub(state.base_acked)
        .saturating_sub(fin_acked);
    let received = ops
        .bytes_received
        .saturating_sub(state.base_received)
        .saturating_sub(fin_received);
    let retrans = ops.total_retrans as u64;
    // Each delta computed before the struct is built: a `Moved` of zeros filled in afterwards
    // was a `memset` call on every ACK.
    let moved = Moved {
        sent: sent.saturating_sub(state.sent),
        received: received.saturating_sub(state.received),
        retrans: retrans.saturating_sub(state.retrans),
    };
    state.sent = state.sent.max(sent);
    state.received = state.received.max(received);
    state.retrans = state.retrans.max(retrans);
    moved
}

/// The flow of this socket, created on first use.
fn flow_of(ops: &bpf_sock_ops, state: &SockState) -> Option<&'static mut FlowStats> {
    // Zeroed word by word: `peer: [0; 16]` became a `memset` call.
    let mut slot = MaybeUninit::uninit();
    let key: &mut FlowKey = zeroed_in(&mut slot);
    key.cgroup_id = state.cgroup_id;
    key.tgid = state.tgid;
    key.role = state.role;
    key.ip_version = 4;
    if state.role == ROLE_SERVER {
        // `local_port` is in host order.
        key.server_port = ops.local_port as u16;
    } else {
        // `bpf_sock_ops.remote_port` is the network-order port shifted into the upper 16 bits
        // (the kernel's ctx rewrite shifts `skc_dport` left by 16 on little-endian hosts).
        key.server_port = u16::from_be((ops.remote_port >> 16) as u16);
    }
    if ops.family == AF_INET {
        key.peer[..4].copy_from_slice(&ops.remote_ip4.to_ne_bytes());
    } else if ops.family == AF_INET6 {
        key.ip_version = 6;
        let ip = ops.remote_ip6;
        // An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) is reported as IPv4.
        if ip[0] == 0 && ip[1] == 0 && ip[2] == u32::from_be(0x0000_ffff) {
            key.ip_version = 4;
            key.peer[..4].copy_from_slice(&ip[3].to_ne_bytes());
        } else {
            key.peer[..4].copy_from_slice(&ip[0].to_ne_bytes());
            key.peer[4..8].copy_from_slice(&ip[1].to_ne_bytes());
            key.peer[8..12].copy_from_slice(&ip[2].to_ne_bytes());
            key.peer[12..].copy_from_slice(&ip[3].to_ne_bytes());
        }
    } else {
        return None;
    }
    flow_at(key, &state.comm)
}

/// The flow of `key`, created (named by `comm`) on first use.
fn flow_at(key: &FlowKey, comm: &[u8; COMM_LEN]) -> Option<&'static mut FlowStats> {
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a hash map value stays valid while the program runs (RCU).
        return Some(unsafe { &mut *flow });
    }
    // Zeroed word by word, in place: `..FlowStats::default()` became a `memset` call.
    let mut slot = MaybeUninit::uninit();
    let fresh: &mut FlowStats = zeroed_in(&mut slot);
    fresh.comm = *comm;
    // Another CPU may insert the same flow at the same moment: NOEXIST, then look it up.
    let _ = FLOWS.insert(key, fresh, BPF_NOEXIST);
    match FLOWS.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(flow) => Some(unsafe { &mut *flow }),
        None => {
            count(COUNTER_TABLE_FULL);
            None
        }
    }
}

/// `cgroup_skb/ingress` and `cgroup_skb/egress` (`--udp-flows`): UDP payload bytes per flow.
///
/// Both hooks run for every packet of every socket (TCP too), so anything that is not a UDP
/// full socket leaves at once. The packet starts at its IP header in both directions; egress
/// runs before IP fragmentation and ingress after reassembly (in the socket's receive path),
/// so one call is one whole datagram. Counted: `skb->len` minus the IP header and the 8-byte
/// UDP header, i.e. the UDP payload (a GSO super-packet on egress counts all its segments'
/// payload). IPv6 datagrams behind extension headers are not counted.
///
/// The owner comes from `SOCKS` (`sock_create` records UDP sockets with `--udp-flows`);
/// a socket from before start-up is counted under tgid 0. The role is decided by the
/// socket's first datagram: sent first is a `client` (server port = the remote port), received
/// first is a `server` (server port = its local port).
pub fn udp_skb(ctx: &SkBuffContext, egress: bool) {
    // SAFETY: the context of a cgroup_skb program is a valid `__sk_buff`; `sk` is checked.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    // SAFETY: `sk` is the context's non-null socket.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return;
    }
    // SAFETY: a non-null result of `bpf_sk_fullsock` is a readable full socket.
    if unsafe { (*sk).protocol } != IPPROTO_UDP {
        return;
    }
    // SAFETY: `sk` is a full socket; no initial value.
    let state = unsafe {
        bpf_sk_storage_get(
            socks(),
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    }
    .cast::<SockState>();
    if state.is_null() {
        count(COUNTER_STORAGE_FAILED);
        return;
    }
    // SAFETY: a non-null storage pointer is valid for the socket's lifetime.
    let state = unsafe { &mut *state };
    if state.flags & STATE_IGNORED != 0 {
        return;
    }
    // Zeroed word by word: `peer: [0; 16]` became a `memset` call.
    let mut slot = MaybeUninit::uninit();
    let key: &mut FlowKey = zeroed_in(&mut slot);
    key.cgroup_id = state.cgroup_id;
    key.tgid = state.tgid;
    key.ip_version = 4;
    let Ok(first) = ctx.load::<u8>(0) else {
        return;
    };
    let header = match first >> 4 {
        4 => {
            let (Ok(frag), Ok(proto)) = (ctx.load::<u16>(6), ctx.load::<u8>(9)) else {
                return;
            };
            // A non-first fragment carries no UDP header (never seen at these hooks).
            if proto as u32 != IPPROTO_UDP || u16::from_be(frag) & 0x1fff != 0 {
                return;
            }
            let Ok(peer) = ctx.load::<[u8; 4]>(if egress { 16 } else { 12 }) else {
                return;
            };
            key.peer[..4].copy_from_slice(&peer);
            ((first & 0x0f) as u32) * 4
        }
        6 => {
            let Ok(next) = ctx.load::<u8>(6) else {
                return;
            };
            if next as u32 != IPPROTO_UDP {
                return;
            }
            let Ok(peer) = ctx.load::<[u8; 16]>(if egress { 24 } else { 8 }) else {
                return;
            };
            key.ip_version = 6;
            key.peer = peer;
            40
        }
        _ => return,
    };
    let Ok(ports) = ctx.load::<[u8; 4]>(header as usize) else {
        return;
    };
    let source = u16::from_be_bytes([ports[0], ports[1]]);
    let dest = u16::from_be_bytes([ports[2], ports[3]]);
    let (local, remote) = if egress {
        (source, dest)
    } else {
        (dest, source)
    };
    if state.role == 0 {
        state.role = if egress { ROLE_CLIENT } else { ROLE_SERVER };
    }
    key.role = state.role | ROLE_UDP;
    key.server_port = if state.role == ROLE_SERVER {
        local
    } else {
        remote
    };
    let payload = (ctx.len() as u64).saturating_sub(header as u64 + 8);
    if payload == 0 {
        // Nothing to count: no flow entry for it either.
        return;
    }
    if let Some(flow) = flow_at(key, &state.comm) {
        if egress {
            add(&mut flow.bytes_sent, payload);
        } else {
            add(&mut flow.bytes_received, payload);
        }
    }
}
