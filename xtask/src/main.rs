//! `cargo xtask`: set-up, build, run and test tasks for tcpwatch.
//!
//! Every task installs what it needs first, idempotently: a second run only
//! checks and is fast.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod hold;
mod probe;
mod setup;
mod soak;
mod tasks;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "tcpwatch's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing tcpwatch needs: rust-src, a bpf-linker
    /// built against this toolchain's LLVM, and Debian packages for the tests.
    Setup {
        /// Also install the Debian packages the privileged tests use.
        #[arg(long)]
        tests: bool,
    },
    /// Set up, then build tcpwatch (release) with its eBPF programs.
    Build,
    /// Set up, build and run tcpwatch with the given arguments (as root).
    Run {
        /// Arguments for tcpwatch, e.g. `trace --json`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure tcpwatch (root; prints Markdown): its overhead on a host
    /// churning connections next to no observer and libbpf-tools' tcpstates,
    /// CPU per event, what happens past capacity, accuracy against ss, and
    /// memory and scrape cost by tracked sockets.
    Bench {
        /// Seconds of churn per run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Runs per observer, interleaved.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Tracked sockets for the memory section, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        sizes: Vec<usize>,
        /// Only these sections (repeatable); all by default.
        #[arg(long, value_enum)]
        only: Vec<bench::Section>,
    },
    /// Opens N loopback connections and holds them until standard input
    /// closes (the memory benchmark's workload).
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        connections: usize,
    },
    /// The churn workload of `bench` (connect, 16 bytes, close, as fast as
    /// possible); prints connections per second.
    #[command(hide = true)]
    Churn {
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = bench::CLIENTS)]
        clients: usize,
        /// Clients close first (TIME_WAIT on the client side).
        #[arg(long)]
        client_closes: bool,
    },
    /// Run tcpwatch run for MINUTES under mixed churn (server and client
    /// closing first, idle pauses) and report its memory curve, losses, and
    /// its counts against ss at the end (root; prints Markdown).
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// Build a release tarball: binary, systemd unit, configuration and
    /// Prometheus files, laid out as they install (target/dist/).
    Dist,
    /// Set up everything and run the whole test suite, privileged tests included.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { tests } => setup::toolchain().and_then(|()| {
            if tests {
                setup::test_packages()
            } else {
                Ok(())
            }
        }),
        Task::Build => tasks::build().map(|_| ()),
        Task::Run { args } => tasks::run_tcpwatch(&args),
        Task::Bench {
            seconds,
            runs,
            sizes,
            only,
        } => setup::bench_packages().and_then(|()| bench::bench(seconds, runs, &sizes, &only)),
        Task::Hold { connections } => hold::hold(connections),
        Task::Churn {
            seconds,
            clients,
            client_closes,
        } => bench::churn(seconds, clients, client_closes).map(|rate| println!("{rate:.0}")),
        Task::Soak { minutes } => soak::soak(minutes),
        Task::Dist => tasks::dist().map(|path| println!("{}", path.display())),
        Task::Test { args } => tasks::test(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
