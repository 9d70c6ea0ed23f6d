//! `cargo xtask`: Periscope's developer tasks. See `cargo xtask --help`.

mod bench;
mod run;
mod setup;
mod test;
mod util;

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
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// nginx under wrk, alternating rounds without and with the agent.
    Http(bench::HttpArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse() {
        Cli::Setup => setup::setup(),
        Cli::Run { args } => run::run(&args),
        Cli::Test(args) => test::test(&args),
        Cli::Bench(Bench::Http(args)) => bench::http(&args),
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
            Cli::Test(test::TestArgs { fuzz_seconds: 0 })
        ));
        assert!(Cli::try_parse_from(["xtask", "bench", "http", "--agent-cpu", "x"]).is_err());
    }
}
