//! `tcpwatch trace`: a live, filtered stream of TCP lifecycle events.
use crate::tcp::NetnsId;
use std::{
    io::{self, BufWriter, IsTerminal, Write},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use log::warn;
use tokio::signal::unix::{signal, SignalKind};

use aya::maps::{MapData, RingBuf};

use super::DetectorArgs;
use crate::{
    findings::detect::{Detectors, Report},
    host::clock::{monotonic_ns, WallClock},
    kernel::event::{decode, TcpState, LISTEN_OVERFLOW},
    kernel::loader::{self, Counters, LoadOptions},
    model::{Limits, Model, Outcome},
    present::filter::Filter,
    present::output::{Renderer, Style},
    session::observer::{Dumps, Observer},
    session::{self, Session, Sink, Ticked},
};

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// One JSON object per line instead of aligned columns.
    #[arg(long)]
    pub json: bool,

    /// Only connections with this local or remote port (repeatable).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// Only connections with this local port (repeatable).
    #[arg(long = "lport", value_name = "PORT")]
    pub local_ports: Vec<u16>,

    /// Only connections with this remote port (repeatable).
    #[arg(long = "rport", value_name = "PORT")]
    pub remote_ports: Vec<u16>,

    /// Only connections owned by this process id (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Only connections owned by a process with exactly this command name (repeatable).
    #[arg(long = "comm", value_name = "COMM")]
    pub comms: Vec<String>,

    /// Only connections owned by a process in this systemd unit or slice
    /// (`nginx.service`, `nginx`, `user-1000.slice`) or container (its id,
    /// 12 digits or all 64, or `docker:ID`) (repeatable).
    #[arg(long = "unit", value_name = "NAME")]
    pub units: Vec<String>,

    /// Only this network namespace, by inode number as in `ls -L -i /proc/PID/ns/net` (repeatable).
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<NetnsId>,

    /// Only events entering, leaving or seen in this state, e.g. SYN_SENT or close-wait (repeatable).
    #[arg(long = "state", value_name = "STATE")]
    pub states: Vec<TcpState>,

    /// Only IPv4 connections.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6 connections.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Also print one line per finished connection: who opened and closed
    /// it, how it ended, its lifetime and the time spent in each state.
    #[arg(long)]
    pub lifecycle: bool,

    /// Hide the per-event lines: only findings, and with --lifecycle one
    /// line per finished connection (like tcplife).
    #[arg(long)]
    pub no_events: bool,

    /// Do not print findings (TIME_WAIT and CLOSE_WAIT buildup, refused and
    /// timed-out connects, tw_reuse, SYN-ACK and FIN retransmits).
    #[arg(long)]
    pub no_findings: bool,

    #[command(flatten)]
    pub detect: DetectorArgs,

    /// Colour the output: auto (when stdout is a terminal), always or never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Size of the kernel-to-user ring buffer in KiB (a power of two; more absorbs longer bursts).
    #[arg(long, value_name = "KIB", default_value_t = tcpwatch_common::DEFAULT_RING_BYTES / 1024,
          value_parser = parse_ring_kib)]
    pub ring_kib: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let kib: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of KiB"))?;
    crate::serve::config::check_ring_kib(kib)
}

impl TraceArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            ports: self.ports.clone(),
            local_ports: self.local_ports.clone(),
            remote_ports: self.remote_ports.clone(),
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            units: self.units.clone(),
            netns: self.netns.clone(),
            states: self.states.clone(),
            family: if self.ipv4 {
                Some(4)
            } else if self.ipv6 {
                Some(6)
            } else {
                None
            },
        }
    }
}

pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    super::block_on(trace(args))
}

async fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let loader::Probe {
        ebpf: _attached_while_in_scope,
        events,
        counters,
        reasons,
        attached,
        snapshot,
        units,
    } = loader::load(LoadOptions {
        ring_bytes: args.ring_kib * 1024,
        ..Default::default()
    })?;
    let listen_overflow = reasons.drop_number(LISTEN_OVERFLOW);
    let stdout = io::stdout();
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let style = if args.json {
        Style::Json
    } else {
        Style::Human { color }
    };
    let mut pipeline = Pipeline {
        renderer: Renderer::new(style, WallClock::now(), reasons)
            .with_own_netns(crate::host::netns::current().unwrap_or_default())
            .with_units(units.clone()),
        filter: args.filter(),
        only_netns: args.netns.clone(),
        observer: Observer::new(
            Model::new(Limits::default()).with_listen_overflow_reason(listen_overflow),
            (!args.no_findings).then(|| Detectors::new(args.detect.thresholds())),
            snapshot,
        )
        .with_units(units),
        lifecycle: args.lifecycle,
        events: !args.no_events,
        tally: Tally::default(),
        out: BufWriter::with_capacity(1 << 16, stdout.lock()),
    };
    // Before announcing that tracing started: a signal sent after it must be handled.
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    pipeline.header()?;
    // Connections and TIME_WAIT sockets older than tcpwatch.
    if let Some(dumps) = session::dump_once(&args.netns, pipeline.observer.units()).await {
        pipeline.apply_dumps(dumps)?;
    }
    eprintln!(
        "tcpwatch: tracing TCP on {} tracepoints ({}); Ctrl-C to stop",
        attached.len(),
        attached.join(", ")
    );

    let reported = counters.read().unwrap_or_default();
    let mut session = Session::new(
        events,
        pipeline.observer.units().clone(),
        &args.netns,
        Duration::from_secs(1),
        args.detect.reconcile_every(),
    )
    .context("cannot poll the ring buffer")?
    .with_ring_full(reported.ringbuf_full);
    let mut sink = TraceSink {
        reported,
        counters,
        pipeline,
    };
    let stop = async {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    };
    let outcome = session.run(&mut sink, stop).await;
    let TraceSink {
        mut pipeline,
        counters,
        ..
    } = sink;
    let flushed = outcome
        .and_then(|()| pipeline.drain(session.ring()))
        .and_then(|()| pipeline.finish());
    match flushed {
        Ok(()) => {}
        // A closed pipe (`| head`) is a normal way to stop.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e).context("cannot write events"),
    }
    pipeline.tally.reconcile = pipeline.observer.model.stats();
    report(
        &pipeline.tally,
        &counters.read().unwrap_or_default(),
        attached.len(),
    );
    Ok(())
}

/// Counts kept by the consumer of the ring buffer.
#[derive(Default)]
struct Tally {
    received: u64,
    shown: u64,
    lifecycle: u64,
    findings: u64,
    malformed: u64,
    reconcile: crate::model::ModelStats,
}

/// Everything between the ring buffer and stdout: decoding, attribution of
/// old sockets, the model, the detectors, filtering and rendering.
struct Pipeline<W: Write> {
    renderer: Renderer,
    /// `--netns`: the only namespaces observed (empty: all).
    only_netns: Vec<NetnsId>,
    filter: Filter,
    observer: Observer,
    lifecycle: bool,
    events: bool,
    tally: Tally,
    out: W,
}

impl<W: Write> Pipeline<W> {
    fn header(&mut self) -> io::Result<()> {
        if let Some(header) = self.renderer.header() {
            writeln!(self.out, "{header}")?;
        }
        self.out.flush()
    }

    /// Consumes every record the ring buffer holds.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        while let Some(item) = ring.next() {
            self.record(&item)?;
        }
        self.out.flush()
    }

    fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tally.received += 1;
        let ev = match decode(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                self.tally.malformed += 1;
                if self.tally.malformed == 1 {
                    warn!("skipping malformed event: {e}");
                }
                return Ok(());
            }
        };
        // `--netns`: other namespaces' sockets are neither shown nor
        // modelled (their owners, leaks and reconciliations are not ours).
        if !self.only_netns.is_empty()
            && ev.netns != NetnsId(0)
            && !self.only_netns.contains(&ev.netns)
        {
            return Ok(());
        }
        let observed = self.observer.record(ev);
        // An owner change is no TCP event: the lines that follow name the
        // new owner.
        let shown = observed.event.kind != crate::kernel::event::EventKind::Owner;
        if shown && self.events && self.filter.matches(&observed.event) {
            self.tally.shown += 1;
            self.renderer.write(&mut self.out, &observed.event)?;
        }
        self.outcomes(observed.outcomes)?;
        self.reports(observed.reports)
    }

    /// Timers and expiries; returns the namespaces whose owners the
    /// observer wants confirmed (the session dumps them, and what waited
    /// for them is reported once applied).
    fn tick(&mut self, now: u64) -> io::Result<Option<Vec<NetnsId>>> {
        let (outcomes, reports) = self.observer.tick(now);
        self.outcomes(outcomes)?;
        self.reports(reports)?;
        self.out.flush()?;
        Ok(self.observer.take_reconcile_request())
    }

    /// A dump of the kernel's list: corrections, then what they confirmed.
    fn apply_dumps(&mut self, dumps: Dumps) -> io::Result<()> {
        let reports = self.observer.apply_dumps(dumps);
        self.reports(reports)?;
        let (outcomes, reports) = self.observer.tick(monotonic_ns());
        self.outcomes(outcomes)?;
        self.reports(reports)?;
        self.out.flush()
    }

    fn finish(&mut self) -> io::Result<()> {
        let parked = self.observer.finish();
        self.outcomes(parked)?;
        let owed = self
            .observer
            .final_reports(crate::host::clock::monotonic_ns());
        self.reports(owed)?;
        self.out.flush()
    }

    fn outcomes(&mut self, outcomes: Vec<Outcome>) -> io::Result<()> {
        if !self.lifecycle {
            return Ok(());
        }
        for outcome in outcomes {
            if let Outcome::Finished(f) = outcome {
                let workload = self.observer.units().get(f.connection.cgroup);
                if self
                    .filter
                    .matches_connection(&f.connection, workload.as_deref())
                {
                    self.tally.lifecycle += 1;
                    self.renderer.write_lifecycle(&mut self.out, &f)?;
                }
            }
        }
        Ok(())
    }

    fn reports(&mut self, reports: Vec<Report>) -> io::Result<()> {
        for report in reports {
            if self.filter.matches_finding(&report.finding, report.netns) {
                self.tally.findings += 1;
                self.renderer.write_finding(&mut self.out, &report)?;
            }
        }
        Ok(())
    }
}

/// The pipeline fed by the session, with the kernel's counters it reports
/// losses from.
struct TraceSink<W: Write> {
    pipeline: Pipeline<W>,
    counters: loader::CounterReader,
    /// The counters at the last tick.
    reported: Counters,
}

impl<W: Write> Sink for TraceSink<W> {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        self.pipeline.drain(ring)
    }

    fn dumped(&mut self, dumps: Dumps) -> io::Result<()> {
        self.pipeline.apply_dumps(dumps)
    }

    fn tick(&mut self, now: u64) -> io::Result<Ticked> {
        let read = self.counters.read().unwrap_or_default();
        report_losses(&self.reported, &read);
        self.reported = read;
        let reconcile = self.pipeline.tick(now)?;
        Ok(Ticked {
            reconcile,
            ring_full: read.ringbuf_full,
            ..Ticked::default()
        })
    }

    fn events_lost(&mut self, _now: u64) {
        self.pipeline.observer.model.mark_uncertain();
    }
}

fn report_losses(before: &Counters, now: &Counters) {
    if now.ringbuf_full > before.ringbuf_full {
        eprintln!(
            "tcpwatch: {} events lost (ring buffer full); try a larger --ring-kib",
            now.ringbuf_full - before.ringbuf_full
        );
    }
    if now.recursion_misses > before.recursion_misses {
        eprintln!(
            "tcpwatch: {} events missed (the kernel skipped tcpwatch's programs while another BPF program ran on the same CPU)",
            now.recursion_misses - before.recursion_misses
        );
    }
}

fn report(tally: &Tally, counters: &Counters, attached: usize) {
    let mut line = format!(
        "tcpwatch: {} events received, {} shown from {attached} tracepoints",
        tally.received, tally.shown
    );
    if tally.lifecycle > 0 {
        line.push_str(&format!(", {} finished connections shown", tally.lifecycle));
    }
    if tally.findings > 0 {
        line.push_str(&format!(", {} finding reports", tally.findings));
    }
    let seeded = tally.reconcile.seeded;
    if seeded.total() > 0 {
        line.push_str(&format!(
            "; the kernel's socket list (sock_diag) showed {} connections and {} TIME_WAIT sockets older than tcpwatch",
            seeded.connections_added, seeded.time_wait_added
        ));
    }
    let corrected = tally.reconcile.corrections;
    if corrected.total() > 0 {
        let kinds: Vec<String> = corrected
            .by_kind()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        line.push_str(&format!(
            "; sock_diag corrected the model {} times ({})",
            corrected.total(),
            kinds.join(", ")
        ));
    }
    if counters.ringbuf_full > 0 {
        line.push_str(&format!(
            "; {} events LOST (ring buffer full)",
            counters.ringbuf_full
        ));
    }
    if counters.recursion_misses > 0 {
        line.push_str(&format!(
            "; {} events MISSED (kernel skipped the programs: BPF recursion)",
            counters.recursion_misses
        ));
    }
    if tally.malformed > 0 {
        line.push_str(&format!("; {} malformed events skipped", tally.malformed));
    }
    if counters.read_failed > 0 {
        line.push_str(&format!("; {} kernel reads failed", counters.read_failed));
    }
    eprintln!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: TraceArgs,
    }

    #[test]
    fn flags_build_the_filter() {
        let w = Wrap::try_parse_from([
            "t",
            "--json",
            "-p",
            "80",
            "-p",
            "443",
            "--lport",
            "8080",
            "--rport",
            "5432",
            "--pid",
            "7",
            "--comm",
            "nginx",
            "--unit",
            "nginx.service",
            "--unit",
            "0123456789ab",
            "--netns",
            "4026531840",
            "--state",
            "close-wait",
            "-6",
        ])
        .unwrap();
        let f = w.args.filter();
        assert!(w.args.json);
        assert_eq!(f.ports, vec![80, 443]);
        assert_eq!(f.local_ports, vec![8080]);
        assert_eq!(f.remote_ports, vec![5432]);
        assert_eq!(f.pids, vec![7]);
        assert_eq!(f.comms, vec!["nginx".to_owned()]);
        assert_eq!(f.units, ["nginx.service", "0123456789ab"]);
        assert_eq!(f.netns, vec![NetnsId(4026531840)]);
        assert_eq!(f.states, vec![TcpState::CloseWait]);
        assert_eq!(f.family, Some(6));
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Wrap::try_parse_from(["t", "-p", "70000"]).is_err());
        assert!(Wrap::try_parse_from(["t", "--state", "BOGUS"]).is_err());
        assert!(Wrap::try_parse_from(["t", "-4", "-6"]).is_err());
        assert!(Wrap::try_parse_from(["t", "--ring-kib", "3000"]).is_err());
        assert!(Wrap::try_parse_from(["t", "--ring-kib", "2"]).is_err());
        assert_eq!(
            Wrap::try_parse_from(["t", "--ring-kib", "8192"])
                .unwrap()
                .args
                .ring_kib,
            8192
        );
    }
}
