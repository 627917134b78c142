//! The command line: one module per subcommand.
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::findings::detect::Thresholds;

pub mod audit;
pub mod config;
pub mod docs;
pub mod logging;
pub mod run;
pub mod top;
pub mod trace;

pub use crate::duration::parse_duration;

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
    /// The daemon: models every connection and serves /metrics, /healthz
    /// and a JSON API (a systemd service and a Prometheus scrape target).
    Run(run::RunArgs),
    /// Print the effective configuration of `run` (file, defaults and flags).
    Config(run::RunArgs),
    /// A live view: sockets by state, TIME_WAIT by endpoint, CLOSE_WAIT by
    /// process, open findings.
    Top(top::TopArgs),
    /// Audit a network namespace's TCP sysctls and TcpExt counters.
    Audit(audit::AuditArgs),
    /// Print the shell completion script for SHELL (bash, zsh, fish, ...).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for tcpwatch and each of its commands into DIR.
    #[command(hide = true)]
    Manpages { dir: std::path::PathBuf },
}

/// The exit status of a configuration error (sysexits' EX_CONFIG): the unit
/// does not restart on it (`RestartPreventExitStatus=78`), since starting
/// again cannot help.
pub const EXIT_CONFIG: u8 = 78;

/// The exit status for an error: [`EXIT_CONFIG`] when a configuration file
/// (tcpwatch's own or the web configuration) is wrong, 1 otherwise.
pub fn exit_status(error: &anyhow::Error) -> u8 {
    let configuration = error.chain().any(|cause| {
        cause.is::<crate::serve::config::ConfigError>() || cause.is::<crate::serve::web::WebError>()
    });
    if configuration {
        EXIT_CONFIG
    } else {
        1
    }
}

/// When findings are raised, shared by the subcommands that raise them.
#[derive(Debug, Args)]
pub struct DetectorArgs {
    /// CLOSE_WAIT older than this is reported as a leak, e.g. 30s or 2m [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub close_wait_age: Option<Duration>,

    /// FIN_WAIT2 older than this is reported as a stall [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub fin_wait2_age: Option<Duration>,

    /// TIME_WAIT sockets towards one remote endpoint (or on one local port of
    /// a server that closes first) that make a buildup [default: 1000].
    #[arg(long, value_name = "COUNT", alias = "time-wait-threshold")]
    pub time_wait_count: Option<u64>,

    /// Data retransmitted without an answer for this long makes a
    /// peer_unresponsive finding (the kernel keeps trying until tcp_retries2)
    /// [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub peer_unresponsive_after: Option<Duration>,

    /// A peer's receive window that stays zero this long while data waits
    /// makes a zero_window_stall finding [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub zero_window_after: Option<Duration>,

    /// ESTABLISHED connections idle this long without a keep-alive timer
    /// make an idle_without_keepalive finding [default: 10m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_after: Option<Duration>,

    /// Share of the ephemeral port range that connections plus TIME_WAIT
    /// towards one remote endpoint may take before a port_exhaustion_risk
    /// [default: 0.5].
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction)]
    pub port_use_fraction: Option<f64>,

    /// Report a finding again at most this often while its evidence grows
    /// [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub finding_interval: Option<Duration>,

    /// Resolve an event-driven finding (connect_refused, synack_retransmit,
    /// tw_reuse, ...) after this long without new evidence [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub resolve_after: Option<Duration>,

    /// How often the model is checked against the kernel's socket list
    /// (sock_diag, as `ss`): TIME_WAIT sockets, and connections older than
    /// tcpwatch; 0s checks only at start [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub reconcile_interval: Option<Duration>,
}

impl DetectorArgs {
    /// Lays the thresholds given on the command line over `t` (the
    /// defaults, or a configuration file's values): the one place flags
    /// meet the other sources.
    pub fn overlay(&self, t: &mut Thresholds) {
        let set = |slot: &mut Duration, flag: Option<Duration>| {
            if let Some(v) = flag {
                *slot = v;
            }
        };
        set(&mut t.close_wait_age, self.close_wait_age);
        set(&mut t.fin_wait2_age, self.fin_wait2_age);
        set(&mut t.peer_unresponsive_after, self.peer_unresponsive_after);
        set(&mut t.zero_window_after, self.zero_window_after);
        set(&mut t.idle_after, self.idle_after);
        set(&mut t.finding_interval, self.finding_interval);
        set(&mut t.resolve_after, self.resolve_after);
        if let Some(v) = self.time_wait_count {
            t.time_wait_count = v;
        }
        if let Some(v) = self.port_use_fraction {
            t.port_use_fraction = v;
        }
    }

    /// The defaults with the flags laid over them.
    pub fn thresholds(&self) -> Thresholds {
        let mut t = Thresholds::default();
        self.overlay(&mut t);
        t
    }

    /// Puts the flags given over a configuration file's values.
    pub fn apply_to(&self, config: &mut crate::serve::config::Config) {
        self.overlay(&mut config.thresholds);
        if let Some(v) = self.reconcile_interval {
            config.reconcile_interval = crate::duration::HumanDuration(v);
        }
    }

    pub fn reconcile_every(&self) -> Duration {
        self.reconcile_interval
            .unwrap_or(crate::session::DEFAULT_RECONCILE_INTERVAL)
    }
}

pub fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!(
            "`{s}` is not a fraction between 0 (excluded) and 1, like 0.5"
        )),
    }
}

/// Runs `future` on a single-threaded tokio runtime: the event loop, the
/// HTTP server and the timers share one thread, leaving the other CPUs to
/// the host.
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Trace(args) => trace::run(args),
        Command::Run(args) => run::run(args),
        Command::Config(args) => config::run(args),
        Command::Top(args) => top::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Completions { shell } => Ok(docs::print_completions(shell)?),
        Command::Manpages { dir } => Ok(docs::write_man_pages(&dir)?),
    }
}

#[cfg(test)]
mod tests {
    use super::{exit_status, parse_duration, EXIT_CONFIG};
    use anyhow::Context as _;
    use std::time::Duration;

    #[test]
    fn configuration_errors_exit_78() {
        let bad = crate::serve::config::Config::parse("bogus = 1\n", "/etc/tcpwatch/tcpwatch.toml")
            .context("starting")
            .expect_err("unknown key");
        assert_eq!(exit_status(&bad), EXIT_CONFIG);
        let web = crate::serve::web::Web::parse("basic_auth_users:\n  p: plain\n", "web.yml")
            .map_err(anyhow::Error::from)
            .expect_err("not bcrypt");
        assert_eq!(exit_status(&web), EXIT_CONFIG);
        assert_eq!(exit_status(&anyhow::anyhow!("cannot listen")), 1);
    }

    #[test]
    fn flags_lay_over_the_file_in_one_place() {
        use clap::Parser as _;
        let cli = super::Cli::try_parse_from([
            "tcpwatch",
            "trace",
            "--time-wait-threshold",
            "7",
            "--finding-interval",
            "3s",
        ])
        .expect("the old flag name still parses");
        let super::Command::Trace(args) = cli.command else {
            panic!("trace");
        };
        let mut config = crate::serve::config::Config::parse(
            "[thresholds]\ntime_wait_count = 5\nclose_wait_age = \"2m\"\nfinding_interval = \"20s\"\n",
            "t.toml",
        )
        .expect("valid");
        args.detect.apply_to(&mut config);
        let t = config.thresholds;
        assert_eq!(
            (t.time_wait_count, t.close_wait_age, t.finding_interval),
            (7, Duration::from_secs(120), Duration::from_secs(3))
        );
        assert_eq!(
            args.detect.thresholds().close_wait_age,
            Duration::from_secs(60)
        );
    }

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
