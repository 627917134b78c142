//! The kernel's own counts as Prometheus counters: state transitions,
//! retransmits by phase, resets by direction and reason, drops by reason.
//! The programs aggregate them in per-CPU maps since load, so they are
//! reported as they are at each scrape (a collector), with no event per
//! count and no deltas kept in userspace.
use std::sync::{Arc, Mutex};

use prometheus::{
    core::{Collector, Desc},
    proto::{Counter, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::{
    kernel::event::{KernelReasons, TcpState},
    kernel::loader::KernelTotals,
};

/// Retransmit phases, in `tcpwatch_common::phase` order.
const PHASES: [&str; 4] = ["syn", "synack", "data", "fin"];

/// The latest totals, set before each scrape, and the four families' descriptions.
#[derive(Clone)]
pub(super) struct KernelCounts {
    latest: Arc<Mutex<(KernelTotals, KernelReasons)>>,
    descs: Arc<Vec<Desc>>,
}

/// (name, help, label names) of each family.
const FAMILIES: [(&str, &str, &[&str]); 4] = [
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
    pub(super) fn set(&self, totals: &KernelTotals, reasons: &KernelReasons) {
        if let Ok(mut latest) = self.latest.lock() {
            *latest = (totals.clone(), reasons.clone());
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

fn counter(labels: &[(&str, &str)], value: u64) -> Metric {
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
    c.set_value(value as f64);
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
        let (totals, reasons) = &*latest;
        let transitions = totals
            .transitions
            .iter()
            .filter_map(|&(old, new, n)| {
                let (old, new) = (TcpState::try_from(old).ok()?, TcpState::try_from(new).ok()?);
                Some(counter(&[("from", old.name()), ("to", new.name())], n))
            })
            .collect();
        // Every phase, from zero: rate() sees the first one.
        let retransmits = PHASES
            .iter()
            .zip(totals.retransmits)
            .map(|(phase, n)| counter(&[("phase", phase)], n))
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
                    n,
                )
            })
            .collect();
        resets.push(counter(
            &[("direction", "received"), ("reason", "")],
            totals.resets_received,
        ));
        let drops = totals
            .drops
            .iter()
            .map(|&(reason, n)| counter(&[("reason", &reasons.drop_name(reason))], n))
            .collect();
        vec![
            family(0, transitions),
            family(1, retransmits),
            family(2, resets),
            family(3, drops),
        ]
    }
}
