//! Prometheus metrics of the daemon: counters and histograms fed by events
//! and model outcomes, gauges refreshed from the model at scrape time.
//! Every label is bounded: kernel states and reasons are fixed sets,
//! endpoints and processes are the top N with the rest in `other`.
use crate::tcp::NetnsId;
use std::collections::BTreeMap;

use prometheus::{
    proto::{self, Bucket, LabelPair, Metric, MetricFamily, MetricType},
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tcpwatch_common::{hist, HIST_BOUNDS_NS, HIST_SLOTS};

use crate::findings::FindingKind;
use crate::{
    findings::detect::Detectors,
    host::netns_state::NetnsState,
    kernel::event::{EventKind, TcpEvent, TcpState},
    kernel::loader::KernelTotals,
    model::{EndReason, Model, Opener, Outcome},
    present::summary::Summary,
};

/// Sysctls exported as numbers.
const SYSCTLS: [&str; 9] = [
    "tcp_tw_reuse",
    "tcp_max_tw_buckets",
    "tcp_fin_timeout",
    "tcp_syn_retries",
    "tcp_retries2",
    "tcp_rfc1337",
    "tcp_syncookies",
    "tcp_max_syn_backlog",
    "tcp_synack_retries",
];

mod kernel_counts;
pub use kernel_counts::KernelReading;

pub struct Metrics {
    registry: Registry,
    /// Transitions, retransmits, resets and drops as the kernel counts them.
    kernel: kernel_counts::KernelCounts,
    opened: IntCounterVec,
    closed: IntCounterVec,
    connect_failures: IntCounterVec,
    tw_reuse: IntCounter,
    tw_reuse_resets: IntCounter,
    ports_in_use: IntGaugeVec,
    findings_reported: IntCounterVec,
    sockets: IntGaugeVec,
    netns_sockets: IntGaugeVec,
    time_wait: IntGaugeVec,
    close_wait: IntGaugeVec,
    close_wait_oldest: prometheus::GaugeVec,
    listen_queue: IntGaugeVec,
    listen_queue_limit: IntGaugeVec,
    listen_half_open: IntGaugeVec,
    /// Listeners shown by name in the queue metrics (the daemon's top_n).
    pub top_n_listeners: usize,
    findings_open: IntGaugeVec,
    tcpext: IntCounterVec,
    sysctl: IntGaugeVec,
    port_range: IntGaugeVec,
    events_received: IntCounter,
    malformed: IntCounter,
    model_connections: IntGauge,
    model_time_wait: IntGauge,
    findings_evicted: IntCounter,
    /// 1 when the kernel's socket list answered the last reconciliation.
    pub sock_diag_available: IntGauge,
    evictions: IntCounterVec,
    reconcile_corrections: IntCounterVec,
    reconcile_seeded: IntCounterVec,
    scrape_seconds: prometheus::Gauge,
    ring_peak_fill: prometheus::Gauge,
    /// Last values of cumulative sources, to add only what is new.
    /// Per namespace: the last reading of each TcpExt counter, and the
    /// increments counted since start (to rank namespaces for the top N).
    last_tcpext:
        std::collections::HashMap<NetnsId, ([u64; crate::host::netns_state::TCPEXT.len()], u64)>,
    /// Namespaces with series of their own in `tcpext` (the top N).
    tcpext_labelled: std::collections::HashSet<NetnsId>,
    last_evicted: (u64, u64),
    /// Corrections and seeding already counted, and namespace records dropped.
    last_corrections: (crate::model::Reconciled, crate::model::Reconciled, u64),
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let c = |name, help, labels: &[&str]| counter_vec(&r, name, help, labels);
        let kernel = kernel_counts::KernelCounts::new()?;
        r.register(Box::new(kernel.clone()))?;
        let opened = c(
            "tcpwatch_connections_opened_total",
            "Connections born, by who opened them.",
            &["opener"],
        )?;
        let closed = c(
            "tcpwatch_connections_closed_total",
            "Connections ended, by who opened them and how they ended.",
            &["opener", "end"],
        )?;
        let connect_failures = c(
            "tcpwatch_connect_failures_total",
            "Outgoing connects that failed, by reason: connect_refused (a reset answered the SYN), connect_timeout (SYNs unanswered), no_local_port (EADDRNOTAVAIL, no packet sent).",
            &["reason"],
        )?;
        // Every reason starts at zero: a counter born at its first
        // increment hides that increment from rate() and increase().
        for end in [
            EndReason::ConnectRefused,
            EndReason::ConnectTimeout,
            EndReason::NoLocalPort,
        ] {
            connect_failures.with_label_values(&[end.name()]);
        }
        for opener in [Opener::Active, Opener::Passive, Opener::Unknown] {
            for end in EndReason::ALL {
                closed.with_label_values(&[opener.name(), end.name()]);
            }
        }
        let findings_reported = c(
            "tcpwatch_findings_reported_total",
            "Findings raised, updated and resolved.",
            &["kind", "status"],
        )?;
        for kind in FindingKind::ALL {
            for status in ["raised", "updated", "resolved"] {
                findings_reported.with_label_values(&[kind.name(), status]);
            }
        }
        let tcpext = c(
            "tcpwatch_tcpext_total",
            "TcpExt counters (TW, TWRecycled, ListenOverflows, SyncookiesSent, ...) by network namespace (inode; the top N by activity, then other), counted from tcpwatch's start.",
            &["netns", "counter"],
        )?;
        let evictions = c(
            "tcpwatch_model_evictions_total",
            "Model entries evicted to stay within the memory bounds.",
            &["table"],
        )?;
        let g = |name, help, labels: &[&str]| gauge_vec(&r, name, help, labels);
        let sockets = g(
            "tcpwatch_sockets",
            "TCP sockets by state, TIME_WAIT included, as the model knows them.",
            &["state"],
        )?;
        let ports_in_use = g(
            "tcpwatch_ephemeral_ports_in_use",
            "Local ports this host holds as a client (connections plus TIME_WAIT) towards each remote endpoint (top N, then other).",
            &["endpoint"],
        )?;
        let netns_sockets = g(
            "tcpwatch_netns_sockets",
            "TCP sockets by network namespace (inode; top N, then other) and state, when netns_labels is on.",
            &["netns", "state"],
        )?;
        let time_wait = g("tcpwatch_time_wait_sockets", "TIME_WAIT sockets by remote endpoint (top N, then other; server :PORT when this host closes first).", &["endpoint"])?;
        let close_wait = g(
            "tcpwatch_close_wait_sockets",
            "CLOSE_WAIT sockets by process, local port and the process's unit or container (top N, then other).",
            &["comm", "port", "unit"],
        )?;
        let findings_open = g(
            "tcpwatch_findings_open",
            "Findings open now.",
            &["kind", "severity"],
        )?;
        let sysctl = g(
            "tcpwatch_sysctl",
            "TCP sysctls of tcpwatch's network namespace.",
            &["name"],
        )?;
        let port_range = g(
            "tcpwatch_ephemeral_ports",
            "ip_local_port_range of tcpwatch's network namespace.",
            &["bound"],
        )?;
        let close_wait_oldest = prometheus::GaugeVec::new(
            Opts::new("tcpwatch_close_wait_oldest_seconds", "Age of the oldest CLOSE_WAIT socket by process, local port and unit (a lower bound for sockets older than tcpwatch)."),
            &["comm", "port", "unit"],
        )?;
        r.register(Box::new(close_wait_oldest.clone()))?;
        let listen_queue = g(
            "tcpwatch_listen_queue_length",
            "Connections waiting in a listener's accept queue at the last reconciliation, by namespace and listener (the top N fullest, then other).",
            &["netns", "listener"],
        )?;
        let listen_queue_limit = g(
            "tcpwatch_listen_queue_limit",
            "A listener's accept queue limit, min(backlog, net.core.somaxconn), by namespace and listener (as tcpwatch_listen_queue_length).",
            &["netns", "listener"],
        )?;
        let listen_half_open = g(
            "tcpwatch_listen_half_open",
            "Half-open connections (request sockets in SYN_RECV) in a listener's SYN queue at the last reconciliation, by namespace and listener (as tcpwatch_listen_queue_length; the SYN queue's limit is tcpwatch_listen_queue_limit).",
            &["netns", "listener"],
        )?;
        let one = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let tw_reuse = one(
            "tcpwatch_tw_reuse_total",
            "New connections that took a 4-tuple still in TIME_WAIT.",
        )?;
        let tw_reuse_resets = one(
            "tcpwatch_tw_reuse_resets_total",
            "Resets on a connection that reused a TIME_WAIT 4-tuple, from SYN_SENT or soon after.",
        )?;
        let findings_evicted = one(
            "tcpwatch_findings_evicted_total",
            "Open findings dropped because more than 10000 were open at once.",
        )?;
        let events_received = one(
            "tcpwatch_events_received_total",
            "Events received from the kernel.",
        )?;
        let malformed = one(
            "tcpwatch_events_malformed_total",
            "Events that could not be decoded and were skipped.",
        )?;
        let reconcile_corrections = c(
            "tcpwatch_reconcile_corrections_total",
            "Corrections of the model made by comparing it with sock_diag, by kind: TIME_WAIT entries added or removed, connections added or removed, states corrected (after lost events), records of vanished namespaces dropped.",
            &["kind"],
        )?;
        let reconcile_seeded = c(
            "tcpwatch_reconcile_seeded_total",
            "What the first look at each namespace's socket list learnt (sockets older than tcpwatch), by kind.",
            &["kind"],
        )?;
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let model_connections = gauge(
            "tcpwatch_model_connections",
            "Connection records the model holds.",
        )?;
        let model_time_wait = gauge(
            "tcpwatch_model_time_wait_entries",
            "TIME_WAIT entries the model holds.",
        )?;
        let sock_diag_available = gauge(
            "tcpwatch_sock_diag_available",
            "1 when the kernel's socket list (sock_diag, the inet_diag and tcp_diag modules) answered the last reconciliation, 0 when it did not: TIME_WAIT sockets and connections older than tcpwatch are then unseen.",
        )?;
        let scrape_seconds = prometheus::Gauge::new(
            "tcpwatch_scrape_duration_seconds",
            "Time the previous scrape took to prepare.",
        )?;
        r.register(Box::new(scrape_seconds.clone()))?;
        let ring_peak_fill = prometheus::Gauge::new(
            "tcpwatch_ring_buffer_peak_fill_ratio",
            "Most of the ring buffer that held unread events since the previous scrape (1 means events were being lost).",
        )?;
        r.register(Box::new(ring_peak_fill.clone()))?;
        let build = IntGaugeVec::new(
            Opts::new("tcpwatch_build_info", "tcpwatch's version."),
            &["version"],
        )?;
        r.register(Box::new(build.clone()))?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Ok(Metrics {
            registry: r,
            kernel,
            opened,
            closed,
            connect_failures,
            tw_reuse,
            tw_reuse_resets,
            ports_in_use,
            findings_reported,
            sockets,
            netns_sockets,
            time_wait,
            close_wait,
            close_wait_oldest,
            listen_queue,
            listen_queue_limit,
            listen_half_open,
            top_n_listeners: 10,
            findings_open,
            tcpext,
            sysctl,
            port_range,
            events_received,
            malformed,
            model_connections,
            model_time_wait,
            findings_evicted,
            sock_diag_available,
            evictions,
            reconcile_corrections,
            reconcile_seeded,
            scrape_seconds,
            ring_peak_fill,
            last_tcpext: Default::default(),
            tcpext_labelled: Default::default(),
            last_evicted: (0, 0),
            last_corrections: Default::default(),
        })
    }

    pub fn malformed(&self) {
        self.malformed.inc();
    }

    /// Counts one event.
    /// Counts what needs the event itself (births, durations); plain
    /// counts come from the kernel's maps in [`Metrics::render`].
    pub fn on_event(&self, ev: &TcpEvent) {
        self.events_received.inc();
        if ev.kind != EventKind::State {
            return;
        }
        let (Some(old), Some(new)) = (ev.old_state, ev.new_state) else {
            return;
        };
        match (old, new) {
            (TcpState::Close, TcpState::SynSent) => {
                self.opened.with_label_values(&["active"]).inc()
            }
            (TcpState::Listen, TcpState::SynRecv) => {
                self.opened.with_label_values(&["passive"]).inc()
            }
            _ => {}
        }
    }

    pub fn on_outcome(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Finished(f) => {
                self.closed
                    .with_label_values(&[f.connection.opener.name(), f.end.name()])
                    .inc();
                if matches!(
                    f.end,
                    EndReason::ConnectRefused | EndReason::ConnectTimeout | EndReason::NoLocalPort
                ) {
                    self.connect_failures
                        .with_label_values(&[f.end.name()])
                        .inc();
                }
            }
            Outcome::TimeWaitReused { .. } => self.tw_reuse.inc(),
            Outcome::TimeWaitSynReused { .. } => {}
        }
    }

    pub fn on_report(&self, kind: FindingKind, status: &str) {
        self.findings_reported
            .with_label_values(&[kind.name(), status])
            .inc();
    }

    /// Counts the TcpExt counters of every namespace read by the last
    /// reconciliation: each increment goes to its namespace's series when
    /// that namespace is among the `top_n` busiest, to `other` otherwise,
    /// so the label set stays bounded and every counter only grows. Counted
    /// from deltas, not reported absolute like the kernel's own counts: a
    /// namespace's counts move to `other` when it leaves the top N, and
    /// `other` must never go down.
    pub fn count_tcpext(
        &mut self,
        namespaces: &std::collections::HashMap<NetnsId, NetnsState>,
        top_n: usize,
    ) {
        use crate::host::netns_state::TCPEXT;
        let mut moved: Vec<(NetnsId, [u64; TCPEXT.len()])> = Vec::new();
        for (netns, state) in namespaces {
            let now: [u64; TCPEXT.len()] =
                std::array::from_fn(|i| state.tcpext.get(TCPEXT[i]).copied().unwrap_or(0));
            // The first reading sets the baseline: counts from before
            // tcpwatch started (or saw the namespace) are not counted.
            let (last, total) = self.last_tcpext.entry(*netns).or_insert((now, 0));
            let delta: [u64; TCPEXT.len()] =
                std::array::from_fn(|i| now[i].saturating_sub(last[i]));
            *total += delta.iter().sum::<u64>();
            *last = now;
            moved.push((*netns, delta));
        }
        // Namespaces gone are forgotten.
        self.last_tcpext.retain(|n, _| namespaces.contains_key(n));
        let mut busiest: Vec<(u64, NetnsId)> = self
            .last_tcpext
            .iter()
            .filter(|(_, (_, total))| *total > 0)
            .map(|(n, (_, total))| (*total, *n))
            .collect();
        busiest.sort_unstable_by(|a, b| b.cmp(a));
        let top: std::collections::HashSet<NetnsId> =
            busiest.iter().take(top_n).map(|(_, n)| *n).collect();
        // A namespace that is gone or left the top N loses its series (its
        // later counts go to `other`): the series stay bounded.
        for netns in self.tcpext_labelled.difference(&top) {
            for name in TCPEXT {
                let _ = self
                    .tcpext
                    .remove_label_values(&[netns.to_string().as_str(), name]);
            }
        }
        self.tcpext_labelled.clone_from(&top);
        for (netns, delta) in moved {
            let label = if top.contains(&netns) {
                netns.to_string()
            } else {
                "other".to_owned()
            };
            for (name, d) in TCPEXT.iter().zip(delta) {
                if d > 0 {
                    self.tcpext
                        .with_label_values(&[label.as_str(), name])
                        .inc_by(d);
                }
            }
        }
    }

    /// Refreshes what is read rather than counted, then encodes everything.
    #[allow(clippy::too_many_arguments)]
    pub fn render(
        &mut self,
        kernel: KernelReading,
        summary: &Summary,
        model: &Model,
        detectors: Option<&Detectors>,
        own_netns: Option<&NetnsState>,
    ) -> String {
        let started = std::time::Instant::now();
        let counters = kernel.counters;
        let histograms = kernel_histograms(&kernel.totals);
        self.kernel.set(kernel);
        self.sockets.reset();
        for (state, n) in &summary.by_state {
            self.sockets
                .with_label_values(&[state.name()])
                .set(*n as i64);
        }
        self.ports_in_use.reset();
        for (endpoint, n) in &summary.ports_in_use {
            self.ports_in_use
                .with_label_values(&[endpoint.as_str()])
                .set(*n as i64);
        }
        if let Some(d) = detectors {
            let counted = self.tw_reuse_resets.get();
            self.tw_reuse_resets
                .inc_by(d.tw_reuse_resets.saturating_sub(counted));
            let counted = self.findings_evicted.get();
            self.findings_evicted
                .inc_by(d.evicted.saturating_sub(counted));
        }
        self.netns_sockets.reset();
        for (netns, state, n) in &summary.by_netns {
            self.netns_sockets
                .with_label_values(&[netns.as_str(), state.name()])
                .set(*n as i64);
        }
        self.time_wait.reset();
        for (endpoint, n) in &summary.time_wait {
            self.time_wait
                .with_label_values(&[endpoint.as_str()])
                .set(*n as i64);
        }
        self.close_wait.reset();
        self.close_wait_oldest.reset();
        // Rows are per process; the labels are not (two workers of one
        // program on one port share them), so counts add up and the oldest
        // is the oldest of all.
        let mut by_label: BTreeMap<(&str, String, &str), (u64, f64)> = BTreeMap::new();
        for row in &summary.close_wait {
            let port = if row.local_port == 0 {
                String::new()
            } else {
                row.local_port.to_string()
            };
            let entry = by_label
                .entry((row.comm.as_str(), port, row.unit.as_str()))
                .or_insert((0, 0.0));
            entry.0 += row.count;
            entry.1 = entry.1.max(row.oldest_seconds);
        }
        for ((comm, port, unit), (count, oldest)) in &by_label {
            self.close_wait
                .with_label_values(&[comm, port.as_str(), unit])
                .set(*count as i64);
            self.close_wait_oldest
                .with_label_values(&[comm, port.as_str(), unit])
                .set(*oldest);
        }
        self.listen_queue.reset();
        self.listen_queue_limit.reset();
        self.listen_half_open.reset();
        for row in listen_queues(model, self.top_n_listeners) {
            let labels = [row.netns.as_str(), row.listener.as_str()];
            self.listen_queue
                .with_label_values(&labels)
                .set(i64::from(row.queue));
            self.listen_queue_limit
                .with_label_values(&labels)
                .set(i64::from(row.limit));
            self.listen_half_open
                .with_label_values(&labels)
                .set(i64::from(row.half_open));
        }
        self.findings_open.reset();
        for (f, _) in detectors.into_iter().flat_map(|d| d.open_findings()) {
            self.findings_open
                .with_label_values(&[f.kind.name(), f.severity.name()])
                .inc();
        }
        let grow = |c: &IntCounter, before: u64, now: u64| c.inc_by(now.saturating_sub(before));
        if counters.ring_bytes > 0 {
            self.ring_peak_fill
                .set(counters.ring_peak_bytes as f64 / counters.ring_bytes as f64);
        }
        let stats = model.stats();
        grow(
            &self.evictions.with_label_values(&["connections"]),
            self.last_evicted.0,
            stats.connections_evicted,
        );
        grow(
            &self.evictions.with_label_values(&["time_wait"]),
            self.last_evicted.1,
            stats.time_wait_evicted,
        );
        self.last_evicted = (stats.connections_evicted, stats.time_wait_evicted);
        let (corrected, seeded, gone) = self.last_corrections;
        for ((kind, now), (_, before)) in stats
            .corrections
            .by_kind()
            .into_iter()
            .zip(corrected.by_kind())
        {
            grow(
                &self.reconcile_corrections.with_label_values(&[kind]),
                before,
                now,
            );
        }
        grow(
            &self
                .reconcile_corrections
                .with_label_values(&["namespace_gone"]),
            gone,
            stats.namespace_gone,
        );
        for ((kind, now), (_, before)) in stats.seeded.by_kind().into_iter().zip(seeded.by_kind()) {
            grow(
                &self.reconcile_seeded.with_label_values(&[kind]),
                before,
                now,
            );
        }
        self.last_corrections = (stats.corrections, stats.seeded, stats.namespace_gone);
        self.model_connections
            .set(model.connections().count() as i64);
        self.model_time_wait.set(model.time_wait().count() as i64);
        if let Some(state) = own_netns {
            for name in SYSCTLS {
                if let Some(v) = state.sysctls.get(name).and_then(|v| v.parse::<i64>().ok()) {
                    self.sysctl.with_label_values(&[name]).set(v);
                }
            }
            if let Some((low, high)) = state.port_range() {
                self.port_range
                    .with_label_values(&["low"])
                    .set(i64::from(low));
                self.port_range
                    .with_label_values(&["high"])
                    .set(i64::from(high));
            }
        }
        let mut out = Vec::new();
        let mut families = self.registry.gather();
        families.extend(histograms);
        let encoded = TextEncoder::new().encode(&families, &mut out);
        self.scrape_seconds.set(started.elapsed().as_secs_f64());
        match encoded {
            Ok(()) => String::from_utf8(out).unwrap_or_default(),
            Err(e) => format!("# encoding failed: {e}\n"),
        }
    }
}

/// The duration histograms the kernel aggregates (handshake, lifetime, time
/// in CLOSE_WAIT, FIN_WAIT2 and LAST_ACK), as Prometheus histograms.
fn kernel_histograms(totals: &KernelTotals) -> Vec<MetricFamily> {
    let one = |which: u32, labels: &[(&str, &str)]| {
        let slots = &totals.histograms[which as usize];
        let mut cumulative = 0;
        let buckets = HIST_BOUNDS_NS
            .iter()
            .zip(slots)
            .map(|(bound, n)| {
                cumulative += n;
                let mut b = Bucket::default();
                b.set_upper_bound(*bound as f64 / 1e9);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut h = proto::Histogram::default();
        h.set_bucket(buckets);
        // The overflow bucket counts too; +Inf is implied by the count.
        h.set_sample_count(cumulative + slots[HIST_BOUNDS_NS.len()]);
        h.set_sample_sum(slots[HIST_SLOTS as usize - 1] as f64 / 1e9);
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(name, value)| {
                    let mut l = LabelPair::default();
                    l.set_name((*name).to_owned());
                    l.set_value((*value).to_owned());
                    l
                })
                .collect(),
        );
        m.set_histogram(h);
        m
    };
    let family = |name: &str, help: &str, metrics: Vec<Metric>| {
        let mut f = MetricFamily::default();
        f.set_name(name.to_owned());
        f.set_help(help.to_owned());
        f.set_field_type(MetricType::HISTOGRAM);
        f.set_metric(metrics);
        f
    };
    vec![
        family(
            "tcpwatch_handshake_seconds",
            "Time from SYN_SENT to ESTABLISHED of outgoing connections (aggregated in the kernel).",
            vec![one(hist::HANDSHAKE, &[])],
        ),
        family(
            "tcpwatch_connection_lifetime_seconds",
            "Lifetime of connections born since tcpwatch started, birth to CLOSE (aggregated in the kernel).",
            vec![one(hist::LIFETIME, &[])],
        ),
        family(
            "tcpwatch_state_duration_seconds",
            "Time spent in CLOSE_WAIT, FIN_WAIT2 and LAST_ACK (aggregated in the kernel).",
            vec![
                one(hist::CLOSE_WAIT, &[("state", "CLOSE_WAIT")]),
                one(hist::FIN_WAIT2, &[("state", "FIN_WAIT2")]),
                one(hist::LAST_ACK, &[("state", "LAST_ACK")]),
            ],
        ),
    ]
}

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One listener's queues as the metrics show them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ListenRow {
    netns: String,
    listener: String,
    queue: u32,
    limit: u32,
    half_open: u32,
}

/// Listeners' accept and SYN queues, the fullest first (by the larger share
/// of the limit, which both queues share, then length): the top `n` by
/// namespace and `addr:port`, the rest summed into one `other` row.
fn listen_queues(model: &Model, n: usize) -> Vec<ListenRow> {
    let mut rows: Vec<(NetnsId, String, u32, u32, u32)> = model
        .listeners()
        .map(|l| {
            (
                l.tuple.netns,
                crate::tcp::endpoint(l.tuple.local, l.tuple.local_port),
                l.queue,
                l.queue_limit,
                l.half_open,
            )
        })
        .collect();
    let fill =
        |r: &(NetnsId, String, u32, u32, u32)| f64::from(r.2.max(r.4)) / f64::from(r.3.max(1));
    rows.sort_by(|a, b| {
        fill(b)
            .total_cmp(&fill(a))
            .then(b.2.max(b.4).cmp(&a.2.max(a.4)))
            .then_with(|| (a.0, &a.1).cmp(&(b.0, &b.1)))
    });
    let rest = if rows.len() > n {
        rows.split_off(n)
    } else {
        Vec::new()
    };
    let mut out: Vec<ListenRow> = rows
        .into_iter()
        .map(|(netns, listener, queue, limit, half_open)| ListenRow {
            netns: netns.to_string(),
            listener,
            queue,
            limit,
            half_open,
        })
        .collect();
    if !rest.is_empty() {
        let add = |f: fn(&(NetnsId, String, u32, u32, u32)) -> u32| {
            rest.iter().fold(0u32, |sum, r| sum.saturating_add(f(r)))
        };
        out.push(ListenRow {
            netns: crate::present::summary::OTHER.to_owned(),
            listener: crate::present::summary::OTHER.to_owned(),
            queue: add(|r| r.2),
            limit: add(|r| r.3),
            half_open: add(|r| r.4),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{event::KernelReasons, loader::Counters};
    use crate::{kernel::event::OwnerSource, model::Limits, present::summary::summarize};

    fn ev(kind: EventKind, old: TcpState, new: TcpState, ms: Option<u64>) -> TcpEvent {
        TcpEvent {
            skaddr: 1,
            kind,
            pid: 1,
            comm: "x".into(),
            owner: OwnerSource::Connect,
            netns: NetnsId(1),
            saddr: "127.0.0.1".parse().unwrap(),
            sport: 1,
            daddr: "127.0.0.1".parse().unwrap(),
            dport: 2,
            old_state: Some(old),
            new_state: Some(new),
            old_state_ns: ms.map(|m| m * 1_000_000),
            reason: 1,
            ..TcpEvent::blank()
        }
    }

    #[test]
    fn counts_and_renders_with_bounded_labels() {
        let mut m = Metrics::new().unwrap();
        let reasons = KernelReasons::new([(1, "NO_SOCKET".to_owned())].into())
            .with_drops([(32, "TCP_ZEROWINDOW".to_owned())].into());
        m.on_event(&ev(
            EventKind::State,
            TcpState::Close,
            TcpState::SynSent,
            None,
        ));
        m.on_event(&ev(
            EventKind::State,
            TcpState::SynSent,
            TcpState::Established,
            Some(2),
        ));
        m.on_event(&ev(
            EventKind::Retransmit,
            TcpState::SynSent,
            TcpState::SynSent,
            None,
        ));
        m.on_event(&ev(
            EventKind::ResetSent,
            TcpState::Close,
            TcpState::Close,
            None,
        ));
        m.on_event(&ev(
            EventKind::State,
            TcpState::CloseWait,
            TcpState::LastAck,
            Some(1500),
        ));
        let model = Model::new(Limits::default());
        let counters = Counters {
            ringbuf_full: 3,
            ring_peak_bytes: 1024,
            ring_bytes: 4096,
            ..Default::default()
        };
        // What the kernel's maps counted.
        let mut totals = KernelTotals {
            transitions: vec![(2, 1, 1)],
            retransmits: [1, 0, 0, 0],
            resets_sent: vec![(1, 1)],
            resets_received: 0,
            histograms: Default::default(),
            drops: vec![(32, 2)],
        };
        // A 2 ms handshake and 1.5 s in CLOSE_WAIT.
        totals.histograms[hist::HANDSHAKE as usize][3] = 1;
        totals.histograms[hist::HANDSHAKE as usize][HIST_SLOTS as usize - 1] = 2_000_000;
        totals.histograms[hist::CLOSE_WAIT as usize][9] = 1;
        let summary = summarize(&model, 0, &[], 10);
        let text = m.render(
            KernelReading {
                totals: totals.clone(),
                reasons: reasons.clone(),
                counters,
                programs: vec![(
                    "inet_sock_set_state_raw",
                    crate::kernel::loader::ProgramStats {
                        runs: 10,
                        run_ns: 3_600,
                        recursion_misses: 0,
                    },
                )],
            },
            &summary,
            &model,
            None,
            None,
        );
        for line in [
            "tcpwatch_bpf_program_runs_total{program=\"inet_sock_set_state_raw\"} 10",
            "tcpwatch_bpf_program_run_seconds_total{program=\"inet_sock_set_state_raw\"} 0.0000036",
            "tcpwatch_events_lost_total{cause=\"bpf_recursion\"} 0",
            "tcpwatch_drop_events_limited_total 0",
            "tcpwatch_state_transitions_total{from=\"SYN_SENT\",to=\"ESTABLISHED\"} 1",
            "tcpwatch_connections_opened_total{opener=\"active\"} 1",
            "tcpwatch_retransmits_total{phase=\"syn\"} 1",
            "tcpwatch_resets_total{direction=\"sent\",reason=\"NO_SOCKET\"} 1",
            "tcpwatch_handshake_seconds_count 1",
            "tcpwatch_handshake_seconds_sum 0.002",
            "tcpwatch_handshake_seconds_bucket{le=\"0.001\"} 0",
            "tcpwatch_handshake_seconds_bucket{le=\"0.005\"} 1",
            "tcpwatch_handshake_seconds_bucket{le=\"+Inf\"} 1",
            "tcpwatch_state_duration_seconds_count{state=\"CLOSE_WAIT\"} 1",
            "tcpwatch_events_received_total 5",
            "tcpwatch_events_lost_total{cause=\"ringbuf_full\"} 3",
            "tcpwatch_ring_buffer_peak_fill_ratio 0.25",
            "tcpwatch_build_info{version=",
            "tcpwatch_connect_failures_total{reason=\"connect_timeout\"} 0",
            // Fixed label sets start at zero, so rate() sees the first one.
            "tcpwatch_findings_reported_total{kind=\"syn_flood\",status=\"raised\"} 0",
            "tcpwatch_connections_closed_total{end=\"owner_exited\",opener=\"passive\"} 0",
            "tcpwatch_retransmits_total{phase=\"fin\"} 0",
            // Drops by the kernel's own name for the reason.
            "tcpwatch_drops_total{reason=\"TCP_ZEROWINDOW\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // Counters read from cumulative sources are not double counted.
        totals.transitions = vec![(2, 1, 4)];
        totals.drops = vec![(32, 3)];
        let text = m.render(
            KernelReading {
                totals: totals.clone(),
                reasons: reasons.clone(),
                counters,
                programs: Vec::new(),
            },
            &summary,
            &model,
            None,
            None,
        );
        assert!(
            text.contains("tcpwatch_events_lost_total{cause=\"ringbuf_full\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "tcpwatch_state_transitions_total{from=\"SYN_SENT\",to=\"ESTABLISHED\"} 4"
            ),
            "{text}"
        );
        assert!(
            text.contains("tcpwatch_resets_total{direction=\"sent\",reason=\"NO_SOCKET\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tcpwatch_drops_total{reason=\"TCP_ZEROWINDOW\"} 3"),
            "{text}"
        );
        // Every metric carries the prefix.
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("tcpwatch_"), "{line}");
        }
    }

    #[test]
    fn close_wait_of_two_workers_with_one_comm_on_one_port_adds_up() {
        let mut m = Metrics::new().unwrap();
        let model = Model::new(Limits::default());
        let mut summary = summarize(&model, 0, &[], 10);
        let row = |pid, count, oldest_seconds, unit: &str| crate::present::summary::CloseWaitRow {
            pid,
            comm: "nginx".into(),
            cgroup: 0,
            unit: unit.into(),
            local_port: 8080,
            count,
            oldest_seconds,
            at_least: false,
        };
        summary.close_wait = vec![
            row(11, 5, 70.0, "nginx.service"),
            row(12, 3, 90.0, "nginx.service"),
            // Another unit's nginx is another series; an unknown unit is empty.
            row(13, 1, 10.0, "docker:0123456789ab"),
            row(14, 2, 20.0, ""),
        ];
        let text = m.render(KernelReading::default(), &summary, &model, None, None);
        for line in [
            "tcpwatch_close_wait_sockets{comm=\"nginx\",port=\"8080\",unit=\"nginx.service\"} 8\n",
            "tcpwatch_close_wait_oldest_seconds{comm=\"nginx\",port=\"8080\",unit=\"nginx.service\"} 90\n",
            "tcpwatch_close_wait_sockets{comm=\"nginx\",port=\"8080\",unit=\"docker:0123456789ab\"} 1\n",
            "tcpwatch_close_wait_sockets{comm=\"nginx\",port=\"8080\",unit=\"\"} 2\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn tcpext_by_namespace_top_n_then_other() {
        let mut m = Metrics::new().unwrap();
        let state = |overflows: u64, tw: u64| {
            let mut s = NetnsState::default();
            s.tcpext.insert("ListenOverflows".into(), overflows);
            s.tcpext.insert("TW".into(), tw);
            s
        };
        let mut namespaces = std::collections::HashMap::new();
        namespaces.insert(NetnsId(11), state(100, 50));
        namespaces.insert(NetnsId(22), state(0, 0));
        // The first reading is the baseline.
        m.count_tcpext(&namespaces, 1);
        namespaces.insert(NetnsId(11), state(428, 50));
        namespaces.insert(NetnsId(22), state(0, 3));
        m.count_tcpext(&namespaces, 1);
        let text = render_plain(&mut m);
        assert!(
            text.contains("tcpwatch_tcpext_total{counter=\"ListenOverflows\",netns=\"11\"} 328\n"),
            "{text}"
        );
        assert!(
            text.contains("tcpwatch_tcpext_total{counter=\"TW\",netns=\"other\"} 3\n"),
            "{text}"
        );
        // A namespace that disappears is forgotten.
        namespaces.remove(&NetnsId(22));
        m.count_tcpext(&namespaces, 1);
        assert!(!m.last_tcpext.contains_key(&NetnsId(22)));
    }

    #[test]
    fn listen_queues_fullest_first_then_other() {
        use crate::model::{FourTuple, KernelSocket};
        let mut model = Model::new(Limits::default());
        let socket = |state: TcpState, port: u16, queue: u32, limit: u32| KernelSocket {
            tuple: FourTuple {
                netns: NetnsId(7),
                local: "127.0.0.1".parse().unwrap(),
                local_port: port,
                remote: "0.0.0.0".parse().unwrap(),
                remote_port: if state == TcpState::Listen {
                    0
                } else {
                    40000 + queue as u16
                },
            },
            state,
            pid: 0,
            comm: String::new(),
            cgroup: 0,
            orphan: false,
            time_wait_left_ns: None,
            holders: Vec::new(),
            holder_count: 0,
            queue: if state == TcpState::Listen { queue } else { 0 },
            queue_limit: limit,
        };
        let listener = |port, queue, limit| socket(TcpState::Listen, port, queue, limit);
        model.reconcile(
            NetnsId(7),
            &[
                listener(80, 2, 1),
                listener(81, 0, 128),
                listener(82, 64, 128),
                listener(83, 0, 128),
                // Three half-open connections of 83 and one of 81.
                socket(TcpState::SynRecv, 83, 1, 0),
                socket(TcpState::SynRecv, 83, 2, 0),
                socket(TcpState::SynRecv, 83, 3, 0),
                socket(TcpState::SynRecv, 81, 4, 0),
            ],
            1,
            1,
        );
        let rows = listen_queues(&model, 2);
        let row = |netns: &str, listener: &str, queue, limit, half_open| ListenRow {
            netns: netns.to_owned(),
            listener: listener.to_owned(),
            queue,
            limit,
            half_open,
        };
        assert_eq!(
            rows,
            [
                row("7", "127.0.0.1:80", 2, 1, 0),
                row("7", "127.0.0.1:82", 64, 128, 0),
                row("other", "other", 0, 256, 4),
            ]
        );
        // The SYN queue ranks too.
        let rows = listen_queues(&model, 3);
        assert_eq!(rows[2], row("7", "127.0.0.1:83", 0, 128, 3));
        let mut m = Metrics::new().unwrap();
        m.top_n_listeners = 2;
        let summary = summarize(&model, 0, &[], 10);
        let text = m.render(KernelReading::default(), &summary, &model, None, None);
        assert!(
            text.contains(
                "tcpwatch_listen_queue_length{listener=\"127.0.0.1:80\",netns=\"7\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("tcpwatch_listen_queue_limit{listener=\"other\",netns=\"other\"} 256\n")
        );
        assert!(
            text.contains("tcpwatch_listen_half_open{listener=\"other\",netns=\"other\"} 4\n"),
            "{text}"
        );
    }

    fn render_plain(m: &mut Metrics) -> String {
        let model = Model::new(Limits::default());
        let summary = summarize(&model, 0, &[], 10);
        m.render(KernelReading::default(), &summary, &model, None, None)
    }
}

/// Regressions found in review: each failed before its fix.
#[cfg(test)]
mod regressions {
    use super::*;
    use prometheus::core::Collector;

    /// Namespaces come and go (a pod each): each busy one gets a series
    /// `tcpwatch_tcpext_total{netns="<inode>",...}` while among the top N,
    /// and keeps it after it is gone or has left the top N: the series of
    /// every namespace ever in the top N stay, frozen, for the life of the
    /// daemon (`last_tcpext` forgets the namespace; the counter vec does not).
    #[test]
    fn tcpext_series_of_vanished_namespaces_are_dropped() {
        let mut m = Metrics::new().unwrap();
        let top_n = 10;
        for netns in 1..=200u32 {
            let mut state = NetnsState::default();
            state.tcpext.insert("TW".into(), 0);
            let mut namespaces = std::collections::HashMap::new();
            namespaces.insert(NetnsId(netns), state.clone());
            m.count_tcpext(&namespaces, top_n);
            state.tcpext.insert("TW".into(), 100);
            namespaces.insert(NetnsId(netns), state);
            m.count_tcpext(&namespaces, top_n);
        }
        // All of them are gone now.
        m.count_tcpext(&std::collections::HashMap::new(), top_n);
        let series: usize = m
            .tcpext
            .collect()
            .iter()
            .map(|f| f.get_metric().len())
            .sum();
        assert!(
            series <= top_n + 1,
            "{series} tcpwatch_tcpext_total series for 0 live namespaces (top N = {top_n})"
        );
    }
}
