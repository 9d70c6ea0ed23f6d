//! `cargo xtask bench flows`: what does TCP flow tracking cost per connection and per MB?
//!
//! Two loopback workloads run inside this process (client and server threads): many short
//! connections (connect, 1 byte each way, close) and one bulk transfer. Each round runs both
//! under a fresh agent with `--flows=false` and with `--flows=true`, the order alternating
//! from round to round after a discarded warm-up, so the syscall capture (identical in both)
//! cancels out and the difference is the flow programs. The flow programs run inside the
//! workload's own syscalls and softirqs, so their cost shows in this process's CPU time
//! (user + system, from `getrusage`). Both agents run with `--bpf-stats`, which also gives
//! the flow programs' own run time directly (machine-wide: other traffic on the machine runs
//! them too).
//!
//! `--udp` measures `--udp-flows` instead: the same TCP workloads with flows on, without and
//! with the UDP programs (two cgroup_skb programs that run on every packet and leave at once
//! for TCP), so the difference is what UDP flow tracking costs the rest of the traffic.
//!
//! `--connect-hook` compares the two ways connects get their local address (for traces across
//! processes), flows off in both: `--connect-hook sock-ops` (a `sock_ops` program) against
//! `--connect-hook tracepoint` (`sock:inet_sock_set_state` plus kernel reads at `connect`'s
//! exit, the tier for kernels before 6.10).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{Agent, AgentOptions};

use crate::bench::{machine, other_agents, spread_cell, Cpu};
use crate::util::{bench_agent, build_agent};

/// The socket programs whose run time is reported: the flows' and the connect hooks'.
const FLOW_PROGRAMS: [&str; 8] = [
    "flow_sock_ops",
    "flow_sock_ops_connect",
    "connect_local",
    "connect_state",
    "flow_sock_create",
    "flow_receive_reset",
    "flow_udp_ingress",
    "flow_udp_egress",
];

/// Options of `cargo xtask bench flows`.
#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    /// Measured rounds (each runs both workloads with flows off and on).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Short connections per run of the connection workload.
    #[arg(long, default_value_t = 5_000)]
    connections: u64,
    /// MiB sent over one connection in the bulk workload.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Compare flows on without and with `--udp-flows` (instead of flows off and on).
    #[arg(long, conflicts_with = "connect_hook")]
    udp: bool,
    /// Compare `--connect-hook sock-ops` and `--connect-hook tracepoint`, flows off (instead
    /// of flows off and on).
    #[arg(long)]
    connect_hook: bool,
    /// CPU for the agent, or `none` (the workload threads are not pinned).
    #[arg(long, default_value = "0")]
    agent_cpu: Cpu,
    /// Use the existing agent binary instead of running `cargo build --release -p agent`
    /// (also implied by PERISCOPE_BIN).
    #[arg(long)]
    no_build: bool,
}

/// One workload run: wall time, this process's CPU time, and the flow programs' run time.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    wall: Duration,
    cpu: Duration,
    /// Run time and runs of the flow programs during the run (from `--bpf-stats`).
    bpf_ns: f64,
    bpf_runs: f64,
}

#[derive(Default)]
struct Mode {
    conns: Vec<Run>,
    bulk: Vec<Run>,
}

/// Runs the benchmark and prints a Markdown report.
pub fn flows(args: &FlowsArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.connections == 0 || args.mib == 0 {
        bail!("--rounds, --connections and --mib must be at least 1");
    }
    if !harness::is_root() {
        bail!("the agent loads eBPF programs: run as root (try `sudo -E cargo xtask bench flows`)");
    }
    let bin = bench_agent(args.no_build, || {
        crate::setup::setup()?;
        build_agent()
    })?;
    let others = other_agents();
    if !others.is_empty() {
        eprintln!("[bench] warning: other periscope processes are running: {others:?}");
    }
    let mut off = Mode::default();
    let mut on = Mode::default();
    for round in 0..=args.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for flows in order {
            let agent = Agent::start_with(AgentOptions {
                bin: Some(bin.clone()),
                args: agent_args(args, flows),
                cpu: args.agent_cpu.0,
                ..AgentOptions::default()
            })?;
            let conns = measured(&agent, || connections(args.connections))?;
            let bulk = measured(&agent, || bulk(args.mib))?;
            println!(
                "[bench] round {round}{} {}: {:.1} µs CPU/connection, {:.3} ms CPU/MiB; socket programs {:.0} ns/connection, {:.0} ns/MiB",
                if round == 0 { " (warm-up, discarded)" } else { "" },
                mode_name(args, flows),
                per(conns.cpu, args.connections) / 1e3,
                per(bulk.cpu, args.mib) / 1e6,
                conns.bpf_ns / args.connections as f64,
                bulk.bpf_ns / args.mib as f64,
            );
            if round > 0 {
                let mode = if flows { &mut on } else { &mut off };
                mode.conns.push(conns);
                mode.bulk.push(bulk);
            }
            drop(agent);
        }
    }
    println!("\n{}", report(args, &others, &off, &on));
    Ok(())
}

/// The agent's arguments for the first (`false`) or second (`true`) column.
fn agent_args(args: &FlowsArgs, second: bool) -> Vec<String> {
    let mut a = vec!["--bpf-stats".to_owned()];
    if args.udp {
        a.push("--flows=true".into());
        if second {
            a.push("--udp-flows".into());
        }
    } else if args.connect_hook {
        a.push("--flows=false".into());
        a.push("--connect-hook".into());
        a.push(if second { "tracepoint" } else { "sock-ops" }.into());
    } else {
        a.push(format!("--flows={second}"));
    }
    a
}

/// What the first (`false`) or second (`true`) column measures.
fn mode_name(args: &FlowsArgs, second: bool) -> &'static str {
    match (args.udp, args.connect_hook, second) {
        (true, _, false) => "flows on, UDP off",
        (true, _, true) => "flows on, `--udp-flows`",
        (_, true, false) => "`--connect-hook sock-ops`",
        (_, true, true) => "`--connect-hook tracepoint`",
        (_, _, false) => "flows off",
        (_, _, true) => "flows on",
    }
}

/// ns per unit.
fn per(d: Duration, n: u64) -> f64 {
    d.as_nanos() as f64 / n as f64
}

/// Runs `workload`, measuring wall time, CPU time and the flow programs' run time.
fn measured(agent: &Agent, workload: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Run> {
    let (ns0, runs0) = flow_program_stats(agent);
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    workload()?;
    let wall = t0.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    // The agent folds program statistics once a second.
    std::thread::sleep(Duration::from_millis(1100));
    let (ns1, runs1) = flow_program_stats(agent);
    Ok(Run {
        wall,
        cpu,
        bpf_ns: ns1 - ns0,
        bpf_runs: runs1 - runs0,
    })
}

/// (run time in ns, runs) of the flow programs so far.
fn flow_program_stats(agent: &Agent) -> (f64, f64) {
    let Ok(metrics) = agent.try_metrics() else {
        return (0.0, 0.0);
    };
    FLOW_PROGRAMS
        .iter()
        .fold((0.0, 0.0), |(ns, runs), program| {
            let labels = [("program", *program)];
            (
                ns + metrics.sum("periscope_bpf_program_run_time_seconds_total", &labels) * 1e9,
                runs + metrics.sum("periscope_bpf_program_runs_total", &labels),
            )
        })
}

/// This process's user + system CPU time (all threads).
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given and touches nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// `n` short connections on loopback: connect, one byte each way, close.
fn connections(n: u64) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let mut byte = [0u8; 1];
        for _ in 0..n {
            let (mut conn, _) = listener.accept()?;
            conn.read_exact(&mut byte)?;
            conn.write_all(&byte)?;
        }
        Ok(())
    });
    let mut byte = [7u8; 1];
    for _ in 0..n {
        let mut conn = TcpStream::connect(addr)?;
        conn.write_all(&byte)?;
        conn.read_exact(&mut byte)?;
    }
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    Ok(())
}

/// `mib` MiB over one loopback connection in 64 KiB writes.
fn bulk(mib: u64) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let total = mib << 20;
    let server = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got += n as u64;
        }
    });
    let mut conn = TcpStream::connect(addr)?;
    let chunk = vec![1u8; 1 << 16];
    for _ in 0..total / chunk.len() as u64 {
        conn.write_all(&chunk)?;
    }
    drop(conn);
    let got = server
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    if got != total {
        bail!("the bulk server read {got} of {total} bytes");
    }
    Ok(())
}

/// A report row: name, what to compute per run, the runs off and on, decimals.
type Row<'a> = (
    &'a str,
    &'a dyn Fn(&Run) -> f64,
    &'a [Run],
    &'a [Run],
    usize,
);

fn report(args: &FlowsArgs, others: &[u32], off: &Mode, on: &Mode) -> String {
    let col = |runs: &[Run], f: &dyn Fn(&Run) -> f64, decimals| {
        spread_cell(&runs.iter().map(f).collect::<Vec<_>>(), decimals)
    };
    let n = args.connections;
    let mib = args.mib;
    let diff = |a: &[Run], b: &[Run], f: &dyn Fn(&Run) -> f64| {
        // Paired by round, so drift of the machine between rounds cancels.
        a.iter()
            .zip(b)
            .map(|(x, y)| f(y) - f(x))
            .collect::<Vec<_>>()
    };
    let conn_cpu = |r: &Run| per(r.cpu, n) / 1e3;
    let conn_wall = |r: &Run| per(r.wall, n) / 1e3;
    let bulk_cpu = |r: &Run| per(r.cpu, mib) / 1e6;
    let bulk_wall = |r: &Run| per(r.wall, mib) / 1e6;
    let conn_bpf = |r: &Run| r.bpf_ns / n as f64;
    let bulk_bpf = |r: &Run| r.bpf_ns / mib as f64;
    let conn_runs = |r: &Run| r.bpf_runs / n as f64;
    let bulk_runs = |r: &Run| r.bpf_runs / mib as f64;
    let mut out = String::new();
    out.push_str(&format!(
        "`{}` — {}; min / **median** / max of {} rounds, the two columns alternating.{}\n\n",
        format_args!(
            "cargo xtask bench flows --rounds {} --connections {n} --mib {mib} --agent-cpu {}{}",
            args.rounds,
            args.agent_cpu,
            if args.udp {
                " --udp"
            } else if args.connect_hook {
                " --connect-hook"
            } else {
                ""
            }
        ),
        machine(),
        args.rounds,
        if others.is_empty() {
            String::new()
        } else {
            format!(" Other Periscope processes were running ({others:?}).")
        }
    ));
    out.push_str(&format!(
        "| | {} | {} | second − first (paired) |\n|---|---|---|---|\n",
        mode_name(args, false),
        mode_name(args, true)
    ));
    let rows: [Row; 6] = [
        ("connection: CPU µs", &conn_cpu, &off.conns, &on.conns, 1),
        ("connection: wall µs", &conn_wall, &off.conns, &on.conns, 1),
        ("bulk: CPU ms per MiB", &bulk_cpu, &off.bulk, &on.bulk, 3),
        ("bulk: wall ms per MiB", &bulk_wall, &off.bulk, &on.bulk, 3),
        (
            "socket programs: ns per connection",
            &conn_bpf,
            &off.conns,
            &on.conns,
            0,
        ),
        (
            "socket programs: ns per MiB",
            &bulk_bpf,
            &off.bulk,
            &on.bulk,
            0,
        ),
    ];
    for (name, f, a, b, decimals) in rows {
        out.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            col(a, f, decimals),
            col(b, f, decimals),
            spread_cell(&diff(a, b, f), decimals)
        ));
    }
    let per_run = |r: &Run| {
        if r.bpf_runs > 0.0 {
            r.bpf_ns / r.bpf_runs
        } else {
            0.0
        }
    };
    out.push_str(&format!(
        "| socket programs: ns per run (connection / bulk runs) | – | {} / {} | |\n",
        col(&on.conns, &per_run, 0),
        col(&on.bulk, &per_run, 0)
    ));
    out.push_str(&format!(
        "| flow program runs per connection / per MiB | – | {} / {} | |\n",
        col(&on.conns, &conn_runs, 1),
        col(&on.bulk, &bulk_runs, 1)
    ));
    out.push_str(
        "\nProgram run times and counts are machine-wide (`--bpf-stats`): every TCP segment on the \
         machine runs `flow_sock_ops`, so other traffic during a run inflates both; ns per run is \
         the robust figure.\n",
    );
    out
}
