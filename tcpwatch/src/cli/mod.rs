//! The command line: one module per subcommand.
use clap::{Parser, Subcommand};

pub mod audit;
pub mod trace;

/// Observe the Linux kernel's TCP connection lifecycle with eBPF.
#[derive(Debug, Parser)]
#[command(
    name = "tcpwatch",
    version,
    long_version = concat!(env!("CARGO_PKG_VERSION"), " (eBPF programs ", env!("TCPWATCH_EBPF_STATUS"), ")"),
    about,
    propagate_version = true
)]
pub struct Cli {
    /// More log output on stderr (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every TCP state change, retransmit and reset as it happens.
    Trace(trace::TraceArgs),
    /// Audit a network namespace's TCP sysctls and TcpExt counters.
    Audit(audit::AuditArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Trace(args) => trace::run(args),
        Command::Audit(args) => audit::run(args),
    }
}
