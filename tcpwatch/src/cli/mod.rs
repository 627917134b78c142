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

// Parsed once per run: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every TCP state change, retransmit and reset as it happens.
    Trace(trace::TraceArgs),
    /// Audit a network namespace's TCP sysctls and TcpExt counters.
    Audit(audit::AuditArgs),
}

/// Parses a duration written like `500ms`, `30s`, `2m` or `1h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 2m or 500ms"))?;
    let ms = match unit {
        "ms" => Some(value),
        "s" => value.checked_mul(1000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => return Err(format!("`{s}` has no unit: write it like 30s, 2m or 500ms")),
    }
    .ok_or_else(|| format!("`{s}` is too long"))?;
    Ok(std::time::Duration::from_millis(ms))
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Trace(args) => trace::run(args),
        Command::Audit(args) => audit::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "30", "s", "-1s", "1.5s", "3d", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
