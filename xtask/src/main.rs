//! Project automation for keybridge: `cargo xtask deps | test | bench | demo | man | fuzz | soak`.
//!
//! * `deps`  installs the Debian packages and the Python venv the tests need.
//! * `test`  runs deps, rustfmt, clippy and the whole test suite, failing fast.
//! * `bench` runs the benchmarks.
//! * `demo`  builds the release binaries and runs the demo.
//! * `man`   writes the man pages of both binaries (`target/man`).
//! * `fuzz`  runs every libFuzzer target of `fuzz/` for a while.
//! * `soak`  drives the daemon with many clients for N minutes, then checks
//!   signatures, the audit log, memory and descriptors.
//!
//! Everything is driven through [`std::process::Command`]; each command is
//! echoed before it runs.

mod demo;
mod deps;
mod fuzz;
mod man;
mod soak;
mod tasks;
mod util;

use clap::{Parser, Subcommand};

/// Command line of `cargo xtask`.
#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "keybridge project automation"
)]
struct Cli {
    /// The task to run.
    #[command(subcommand)]
    task: Task,
}

/// The tasks `cargo xtask` knows.
#[derive(Subcommand)]
enum Task {
    /// Install the system packages and the Python venv the tests need
    /// (idempotent; installs only what is missing).
    Deps,
    /// Run deps, `cargo fmt --check`, clippy and all tests, stopping at the
    /// first failure.
    Test {
        /// Extra arguments for the test runner (`cargo nextest run` if
        /// installed, else `cargo test`), given after `--`.
        #[arg(last = true, value_name = "RUNNER_ARGS")]
        args: Vec<String>,
    },
    /// Build and run the benchmarks (`cargo bench --workspace`).
    Bench {
        /// Extra arguments for `cargo bench`, given after `--`.
        #[arg(last = true, value_name = "BENCH_ARGS")]
        args: Vec<String>,
    },
    /// Build the release binaries and run the end-to-end demo.
    Demo,
    /// Write the roff man pages of `keybridge` and `keybridge-device` and
    /// of every subcommand, and list them.
    Man {
        /// The folder to write them into (default: target/man).
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
    /// Run every fuzz target of fuzz/ (cargo-fuzz on stable, `-s none`)
    /// for N seconds each; a crash fails it.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Drive the daemon (debug build, test hooks) with many clients at
    /// once for N minutes, then check every signature, the audit log, its
    /// memory and descriptors (`target/soak/report.json`).
    Soak {
        /// Minutes of load.
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Deps => deps::deps().map(|_| ()),
        Task::Test { args } => tasks::test(&args),
        Task::Bench { args } => tasks::bench(&args),
        Task::Demo => tasks::demo(),
        Task::Man { out } => man::man(out),
        Task::Fuzz { seconds } => fuzz::fuzz(seconds),
        Task::Soak { minutes } => soak::soak(minutes),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn runner_args_after_double_dash_pass_through() {
        let cli = Cli::parse_from(["xtask", "test", "--", "filter", "--", "--nocapture"]);
        let Task::Test { args } = cli.task else {
            panic!("expected the test task");
        };
        assert_eq!(args, ["filter", "--", "--nocapture"]);
    }

    #[test]
    fn runner_args_need_double_dash() {
        assert!(Cli::try_parse_from(["xtask", "bench", "--quick"]).is_err());
    }
}
