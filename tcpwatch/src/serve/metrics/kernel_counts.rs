//! The kernel's own counts as Prometheus counters: state transitions,
//! retransmits by phase, resets by direction and reason, drops by reason,
//! events lost, and the programs' own run counts and times. The programs
//! aggregate them in per-CPU maps since load (the run statistics are the
//! kernel's, per program), so they are reported as they are at each scrape
//! (a collector), with no event per count and no deltas kept in userspace.
use std::sync::{Arc, Mutex};

use prometheus::{
    core::{Collector, Desc},
    proto::{Counter, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::kernel::{
    event::{KernelReasons, TcpState},
    loader::{Counters, KernelTotals, ProgramStats},
};

/// Retransmit phases, in `tcpwatch_common::phase` order.
const PHASES: [&str; 4] = ["syn", "synack", "data", "fin"];

/// What the kernel counted so far, read before each scrape.
#[derive(Clone, Debug, Default)]
pub struct KernelReading {
    pub totals: KernelTotals,
    pub reasons: KernelReasons,
    pub counters: Counters,
    /// Each attached program's run statistics, by its name in the object.
    pub programs: Vec<(&'static str, ProgramStats)>,
}

/// The latest reading, set before each scrape, and the families' descriptions.
#[derive(Clone)]
pub(super) struct KernelCounts {
    latest: Arc<Mutex<KernelReading>>,
    descs: Arc<Vec<Desc>>,
}

/// (name, help, label names) of each family.
const FAMILIES: [(&str, &str, &[&str]); 8] = [
    (
        "tcpwatch_state_transitions_total",
        "TCP state changes seen by inet_sock_set_state.",
        &["from", "to"],
    ),
    (
        "tcpwatch_retransmits_total",
        "Segments retransmitted on the wire, by phase.",
        &["phase"],
    ),
    (
        "tcpwatch_resets_total",
        "Resets sent (by kernel reason) and received.",
        &["direction", "reason"],
    ),
    (
        "tcpwatch_drops_total",
        "TCP segments the kernel dropped for a known socket (a connection, a listener, a request or TIME_WAIT socket), by the kernel's drop reason (skb:kfree_skb with rx_sk, Linux 6.12+; absent on older kernels).",
        &["reason"],
    ),
    (
        "tcpwatch_events_lost_total",
        "Events lost: ring buffer full, or programs skipped by the kernel.",
        &["cause"],
    ),
    (
        "tcpwatch_drop_events_limited_total",
        "Drops counted in tcpwatch_drops_total but not sent as events to userspace (each CPU sends at most 64 per 100 ms): per-connection drop counts are lower bounds while this grows.",
        &[],
    ),
    (
        "tcpwatch_bpf_program_runs_total",
        "Runs of each of tcpwatch's kernel programs (by its name in the object; `_raw` ones are raw tracepoints), from the kernel's BPF statistics while tcpwatch runs.",
        &["program"],
    ),
    (
        "tcpwatch_bpf_program_run_seconds_total",
        "Time spent in each of tcpwatch's kernel programs, from the kernel's BPF statistics while tcpwatch runs: tcpwatch's own cost on the hot path.",
        &["program"],
    ),
];

impl KernelCounts {
    pub(super) fn new() -> prometheus::Result<Self> {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, labels)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                    Default::default(),
                )
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(KernelCounts {
            latest: Arc::new(Mutex::new(Default::default())),
            descs: Arc::new(descs),
        })
    }

    /// What the kernel counted so far; reported by the next scrape.
    pub(super) fn set(&self, reading: KernelReading) {
        if let Ok(mut latest) = self.latest.lock() {
            *latest = reading;
        }
    }
}

fn family(index: usize, metrics: Vec<Metric>) -> MetricFamily {
    let (name, help, _) = FAMILIES[index];
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(MetricType::COUNTER);
    f.set_metric(metrics);
    f
}

fn counter(labels: &[(&str, &str)], value: impl Into<f64>) -> Metric {
    let pairs = labels
        .iter()
        .map(|(name, value)| {
            let mut p = LabelPair::default();
            p.set_name((*name).to_owned());
            p.set_value((*value).to_owned());
            p
        })
        .collect();
    let mut m = Metric::from_label(pairs);
    let mut c = Counter::default();
    c.set_value(value.into());
    m.set_counter(c);
    m
}

impl Collector for KernelCounts {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(latest) = self.latest.lock() else {
            return Vec::new();
        };
        let KernelReading {
            totals,
            reasons,
            counters,
            programs,
        } = &*latest;
        let transitions = totals
            .transitions
            .iter()
            .filter_map(|&(old, new, n)| {
                let (old, new) = (TcpState::try_from(old).ok()?, TcpState::try_from(new).ok()?);
                Some(counter(
                    &[("from", old.name()), ("to", new.name())],
                    n as f64,
                ))
            })
            .collect();
        // Every phase, from zero: rate() sees the first one.
        let retransmits = PHASES
            .iter()
            .zip(totals.retransmits)
            .map(|(phase, n)| counter(&[("phase", phase)], n as f64))
            .collect();
        let mut resets: Vec<Metric> = totals
            .resets_sent
            .iter()
            .map(|&(reason, n)| {
                counter(
                    &[
                        ("direction", "sent"),
                        ("reason", &reasons.reset_name(reason)),
                    ],
                    n as f64,
                )
            })
            .collect();
        resets.push(counter(
            &[("direction", "received"), ("reason", "")],
            totals.resets_received as f64,
        ));
        let drops = totals
            .drops
            .iter()
            .map(|&(reason, n)| counter(&[("reason", &reasons.drop_name(reason))], n as f64))
            .collect();
        let lost = vec![
            counter(&[("cause", "ringbuf_full")], counters.ringbuf_full as f64),
            counter(
                &[("cause", "bpf_recursion")],
                counters.recursion_misses as f64,
            ),
        ];
        let limited = vec![counter(&[], counters.drop_events_limited as f64)];
        let runs = programs
            .iter()
            .map(|(name, s)| counter(&[("program", name)], s.runs as f64))
            .collect();
        let seconds = programs
            .iter()
            .map(|(name, s)| counter(&[("program", name)], s.run_ns as f64 / 1e9))
            .collect();
        vec![
            family(0, transitions),
            family(1, retransmits),
            family(2, resets),
            family(3, drops),
            family(4, lost),
            family(5, limited),
            family(6, runs),
            family(7, seconds),
        ]
    }
}
