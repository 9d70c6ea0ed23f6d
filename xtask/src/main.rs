//! `cargo xtask`: Periscope's developer tasks. See `cargo xtask --help`.

mod abuse;
mod bench;
mod bench_compare;
mod bench_decode;
mod bench_flows;
mod bench_framing;
mod bench_framing_http;
mod bench_framing_kafka;
mod bench_grpc;
mod bench_pgbench;
mod bench_scale;
mod bench_syscall;
mod bench_traces;
mod image;
mod run;
mod setup;
mod syscall_worker;
mod test;
mod util;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Periscope's developer tasks (run as root on Debian bookworm)"
)]
enum Cli {
    /// Install what building, running, testing and benchmarking need (idempotent, quick
    /// when everything is present).
    Setup,
    /// Set up, build the agent (release) and run it in standalone mode; arguments after
    /// `--` go to the agent (it serves /metrics on 0.0.0.0:9464 by default).
    Run {
        /// Arguments for the agent.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, run every test (unit + end-to-end) and a short fuzz run per target.
    Test(test::TestArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(Bench),
    /// Endurance and abuse scenarios with a bounded duration (soak, overload, cardinality,
    /// faults, all): each prints a Markdown report and fails when a check fails.
    Abuse(abuse::AbuseArgs),
    /// Build the agent as a static musl binary and write its container image as an OCI
    /// archive (`target/periscope-image.oci.tar`), without any container daemon.
    Image(image::ImageArgs),
    /// Run the kernel-level capture tests inside other kernels (Debian 6.1 and 6.12 cloud
    /// kernels by default) under QEMU, and report per kernel and per test.
    Vm(vm::VmArgs),
    /// One timed syscall loop, printed as `key=value` pairs; `cargo xtask bench syscall` runs
    /// it in a pinned child process.
    #[command(hide = true)]
    BenchWorker {
        #[arg(value_enum)]
        workload: syscall_worker::Workload,
        iterations: u64,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// nginx under wrk, alternating rounds without and with the agent.
    Http(bench::HttpArgs),
    /// gRPC unary calls from a grpcio client to a grpcio server (one HTTP/2 connection),
    /// without and with the agent.
    Grpc(bench_grpc::GrpcArgs),
    /// What the kernel hooks add to each syscall: pipe, getppid and loopback HTTP loops,
    /// alternating no agent, `--syscall-hooks btf` and `raw`, each with and without syscall
    /// statistics (entry hook per selected syscall or on every syscall).
    Syscall(bench_syscall::SyscallArgs),
    /// pgbench (TPC-B) against PostgreSQL in each query mode (simple, extended, prepared),
    /// alternating rounds without and with the agent.
    Pgbench(bench_pgbench::PgbenchArgs),
    /// Decode cost per exchange of each protocol decoder, replaying the recorded fixtures
    /// (no agent, no root).
    Decode(bench_decode::DecodeArgs),
    /// A Flask app under gunicorn and wrk: CPU per request with prometheus-flask-exporter,
    /// with OpenTelemetry tracing, uninstrumented with Periscope, and bare, alternating.
    Compare(bench_compare::CompareArgs),
    /// TCP flow tracking: CPU per short connection and per MiB on loopback, flows off and on,
    /// alternating.
    Flows(bench_flows::FlowsArgs),
    /// Span export: nginx under wrk with no agent, tracing off and tracing on (OTLP/gRPC to
    /// a local receiver), rotating; spans exported per second, dropped, CPU per span.
    Traces(bench_traces::TracesArgs),
    /// Large PostgreSQL result sets under pgbench: no agent, prefix capture
    /// (`--framing=false`) and in-kernel framing, alternating; CPU, BPF time and bytes copied
    /// per statement, and rows counted.
    Framing(bench_framing::FramingArgs),
    /// HTTP/1.1 pipelining with large bodies (nginx under wrk): no agent, prefix capture
    /// (`--framing=false`) and in-kernel framing, alternating; CPU, BPF time and bytes copied
    /// per request by body size, and requests counted.
    FramingHttp(bench_framing_http::FramingHttpArgs),
    /// Large Kafka Fetch responses between two Python peers: no agent, prefix capture
    /// (`--framing=false`) and in-kernel framing, alternating; CPU, BPF time and bytes copied
    /// per fetch by response size, and records counted.
    FramingKafka(bench_framing_kafka::FramingKafkaArgs),
    /// Many connections in many processes (each in a cgroup): the agent's RSS and CPU at set-up,
    /// idle and active, requests counted.
    Scale(bench_scale::ScaleArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse() {
        Cli::Setup => setup::setup(),
        Cli::Run { args } => run::run(&args),
        Cli::Test(args) => test::test(&args),
        Cli::Abuse(args) => abuse::abuse(&args),
        Cli::Bench(Bench::Http(args)) => bench::http(&args),
        Cli::Bench(Bench::Grpc(args)) => bench_grpc::grpc(&args),
        Cli::Bench(Bench::Syscall(args)) => bench_syscall::syscall(&args),
        Cli::Bench(Bench::Pgbench(args)) => bench_pgbench::pgbench(&args),
        Cli::Bench(Bench::Decode(args)) => bench_decode::decode(&args),
        Cli::Bench(Bench::Compare(args)) => bench_compare::compare(&args),
        Cli::Bench(Bench::Flows(args)) => bench_flows::flows(&args),
        Cli::Bench(Bench::Traces(args)) => bench_traces::traces(&args),
        Cli::Bench(Bench::Framing(args)) => bench_framing::framing(&args),
        Cli::Bench(Bench::FramingHttp(args)) => bench_framing_http::framing_http(&args),
        Cli::Bench(Bench::FramingKafka(args)) => bench_framing_kafka::framing_kafka(&args),
        Cli::Bench(Bench::Scale(args)) => bench_scale::scale(&args),
        Cli::Image(args) => image::image(&args),
        Cli::Vm(args) => vm::vm(&args),
        Cli::BenchWorker {
            workload,
            iterations,
        } => syscall_worker::worker(workload, iterations),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the context chain on one line, and never a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_passes_everything_after_the_subcommand_to_the_agent() {
        for argv in [
            &["xtask", "run", "--", "--metrics-addr", "127.0.0.1:1", "-v"][..],
            &["xtask", "run", "--metrics-addr", "127.0.0.1:1", "-v"][..],
        ] {
            match Cli::try_parse_from(argv).unwrap() {
                Cli::Run { args } => assert_eq!(args, ["--metrics-addr", "127.0.0.1:1", "-v"]),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        assert!(matches!(
            Cli::try_parse_from(["xtask", "test", "--fuzz-seconds", "0"]).unwrap(),
            Cli::Test(test::TestArgs {
                fuzz_seconds: 0,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["xtask", "bench", "http", "--agent-cpu", "x"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "bench", "syscall", "--cpu", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["xtask", "abuse", "soak", "--minutes", "1", "--no-build"]).is_ok()
        );
        assert!(Cli::try_parse_from(["xtask", "abuse", "all", "--minutes", "2"]).is_ok());
        assert!(
            Cli::try_parse_from(["xtask", "abuse", "overload", "--ringbuf-bytes", "x"]).is_err()
        );
        assert!(Cli::try_parse_from([
            "xtask",
            "bench",
            "traces",
            "--seconds",
            "3",
            "--receiver-cpu",
            "0",
            "--",
            "-v"
        ])
        .is_ok());
        match Cli::try_parse_from(["xtask", "vm", "--kernel", "6.1", "--kernel", "6.12"]).unwrap() {
            Cli::Vm(args) => assert_eq!((args.kernels.len(), args.timeout), (2, 240)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Cli::try_parse_from(["xtask", "bench-worker", "tcp-http", "8"]).unwrap(),
            Cli::BenchWorker {
                workload: syscall_worker::Workload::TcpHttp,
                iterations: 8
            }
        ));
    }
}
