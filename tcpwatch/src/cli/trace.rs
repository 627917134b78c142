//! `tcpwatch trace`: a live, filtered stream of TCP lifecycle events.
use std::{
    io::{self, BufWriter, IsTerminal, Write},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use log::warn;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    clock::{monotonic_ns, WallClock},
    event::{decode, TcpState},
    filter::Filter,
    loader::{self, Counters, LoadOptions},
    model::{Limits, Model, Outcome},
    output::{Renderer, Style},
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

    /// Only this network namespace, by inode number as in `ls -L -i /proc/PID/ns/net` (repeatable).
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<u32>,

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

    /// Hide the per-event lines (with --lifecycle: one line per connection, like tcplife).
    #[arg(long, requires = "lifecycle")]
    pub no_events: bool,

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
    if !(4..=1 << 20).contains(&kib) || !kib.is_power_of_two() {
        return Err(format!(
            "{kib} KiB is not a power of two between 4 and 1048576"
        ));
    }
    Ok(kib)
}

impl TraceArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            ports: self.ports.clone(),
            local_ports: self.local_ports.clone(),
            remote_ports: self.remote_ports.clone(),
            pids: self.pids.clone(),
            comms: self.comms.clone(),
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

/// Counts kept by the consumer of the ring buffer.
#[derive(Default)]
struct Tally {
    received: u64,
    shown: u64,
    lifecycle: u64,
    malformed: u64,
}

pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(trace(args))
}

async fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let loader::Probe {
        ebpf: _attached_while_in_scope,
        events,
        counters: counters_map,
        reasons,
        attached,
        snapshot,
    } = loader::load(LoadOptions {
        ring_bytes: args.ring_kib * 1024,
        ..Default::default()
    })?;
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
    let renderer = Renderer::new(style, WallClock::now(), reasons);
    let filter = args.filter();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    if let Some(header) = renderer.header() {
        writeln!(out, "{header}")?;
        out.flush()?;
    }
    eprintln!(
        "tcpwatch: tracing TCP on {} tracepoints ({}); Ctrl-C to stop",
        attached.len(),
        attached.join(", ")
    );
    let attached = attached.len();
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut tally = Tally::default();
    let mut reported = counters_map.read().unwrap_or_default();
    // SAFETY: the RingBuf owns its map's fd, which stays open and unchanged
    // until the AsyncFd (and the RingBuf inside it) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(io::Error::from)
        .context("cannot poll the ring buffer")?;

    let mut model = args.lifecycle.then(|| Model::new(Limits::default()));
    let show_events = !args.no_events;
    let lifecycle_lines = std::cell::Cell::new(0u64);
    let finish = |outcomes: Vec<Outcome>, out: &mut BufWriter<_>| -> io::Result<()> {
        for outcome in outcomes {
            if let Outcome::Finished(f) = outcome {
                if filter.matches_connection(&f.connection) {
                    lifecycle_lines.set(lifecycle_lines.get() + 1);
                    renderer.write_lifecycle(out, &f)?;
                }
            }
        }
        Ok(())
    };
    let drain = |ring: &mut AsyncFd<_>,
                 out: &mut BufWriter<_>,
                 tally: &mut Tally,
                 model: &mut Option<Model>|
     -> io::Result<()> {
        let ring: &mut aya::maps::RingBuf<aya::maps::MapData> = ring.get_mut();
        while let Some(item) = ring.next() {
            tally.received += 1;
            match decode(&item).map(|mut ev| {
                snapshot.attribute(&mut ev);
                ev
            }) {
                Ok(ev) => {
                    if let Some(model) = model.as_mut() {
                        finish(model.apply(&ev), out)?;
                    }
                    if show_events && filter.matches(&ev) {
                        tally.shown += 1;
                        renderer.write(out, &ev)?;
                    }
                }
                Err(e) => {
                    tally.malformed += 1;
                    if tally.malformed == 1 {
                        warn!("skipping malformed event: {e}");
                    }
                }
            }
        }
        out.flush()
    };

    let outcome: io::Result<()> = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("cannot poll the ring buffer")?;
                guard.clear_ready();
                drop(guard);
                if let Err(e) = drain(&mut ring, &mut out, &mut tally, &mut model) { break Err(e) }
            }
            _ = ticker.tick() => {
                if let Some(model) = model.as_mut() {
                    let expired = model.expire(monotonic_ns());
                    if let Err(e) = finish(expired, &mut out).and_then(|()| out.flush()) { break Err(e) }
                }
                let now = counters_map.read().unwrap_or_default();
                if now.ringbuf_full > reported.ringbuf_full {
                    eprintln!(
                        "tcpwatch: {} events lost (ring buffer full); try a larger --ring-kib",
                        now.ringbuf_full - reported.ringbuf_full
                    );
                }
                if now.recursion_misses > reported.recursion_misses {
                    eprintln!(
                        "tcpwatch: {} events missed (the kernel skipped tcpwatch's programs while another BPF program ran on the same CPU)",
                        now.recursion_misses - reported.recursion_misses
                    );
                }
                reported = now;
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    let flushed = outcome
        .and_then(|()| drain(&mut ring, &mut out, &mut tally, &mut model))
        .and_then(|()| match model.as_mut() {
            // Closes still waiting for a possible reset are decided now.
            Some(m) => finish(m.expire(u64::MAX), &mut out).and_then(|()| out.flush()),
            None => Ok(()),
        });
    match flushed {
        Ok(()) => {}
        // A closed pipe (`| head`) is a normal way to stop.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e).context("cannot write events"),
    }
    let counters = counters_map.read().unwrap_or_default();
    tally.lifecycle = lifecycle_lines.get();
    report(&tally, &counters, attached);
    Ok(())
}

fn report(tally: &Tally, counters: &Counters, attached: usize) {
    let mut line = format!(
        "tcpwatch: {} events received, {} shown from {attached} tracepoints",
        tally.received, tally.shown
    );
    if tally.lifecycle > 0 {
        line.push_str(&format!(", {} finished connections shown", tally.lifecycle));
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
        assert_eq!(f.netns, vec![4026531840]);
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
