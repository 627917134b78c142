//! Detectors: turn the model's outcomes, raw events and periodic looks at
//! the model into findings. Pure, like the model: time comes from events
//! and from the `now` handed to [`Detectors::tick`].
//!
//! A finding is identified by its kind and its [`Subject`] (the process
//! and endpoint responsible). It is raised once, then updated as its evidence grows
//! (reported again at most every [`Thresholds::finding_interval`]), and
//! resolved when the condition is gone.
use crate::tcp::NetnsId;
use std::{collections::HashMap, net::IpAddr, time::Duration};

mod connect_errors;
mod connect_failed;
mod half_closed;
mod idle_keepalive;
mod listen_queue;
mod orphans;
mod peer_health;
mod peer_restarted;
mod port_exhaustion;
mod retransmits;
mod syn_flood;
mod time_wait_assassination;
mod time_wait_buildup;
mod time_wait_syn_reuse;
mod tw_reuse;

use crate::{
    findings::audit,
    findings::{Finding, FindingKind, Severity, Subject, Who},
    host::netns_state::NetnsState,
    kernel::event::{EventKind, TcpEvent, TcpState},
    model::{EndReason, FourTuple, Model, Outcome},
};

/// How long after a tw_reuse a reset counts as its consequence.
const REUSE_RESET_WINDOW_NS: u64 = 10_000_000_000;

/// When findings are raised. Defaults suit a busy server; every one can be
/// set on the command line.
///
/// The one shape of these settings: the configuration file's
/// `[thresholds]` table (durations written `30s`, `2m`), with the command
/// line's flags laid over it by `cli::DetectorArgs::overlay`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// CLOSE_WAIT older than this is a leak.
    #[serde(with = "crate::duration::human_duration")]
    pub close_wait_age: Duration,
    /// FIN_WAIT2 older than this is a stall.
    #[serde(with = "crate::duration::human_duration")]
    pub fin_wait2_age: Duration,
    /// TIME_WAIT sockets towards one remote endpoint, or on one local port
    /// of a server that closes first.
    pub time_wait_count: u64,
    /// Data retransmitted without progress for this long means the peer
    /// stopped answering.
    #[serde(with = "crate::duration::human_duration")]
    pub peer_unresponsive_after: Duration,
    /// A peer's zero window that lasts this long while data waits is a stall.
    #[serde(with = "crate::duration::human_duration")]
    pub zero_window_after: Duration,
    /// An ESTABLISHED connection without a keep-alive timer, idle this long
    /// (no data either way), is one whose peer could be gone unnoticed.
    #[serde(with = "crate::duration::human_duration")]
    pub idle_after: Duration,
    /// Share of the ephemeral port range that connections and TIME_WAIT
    /// towards one remote endpoint from one local address may take.
    pub port_use_fraction: f64,
    /// Minimum time between two reports of the same finding.
    #[serde(with = "crate::duration::human_duration")]
    pub finding_interval: Duration,
    /// An event-driven finding (a refused connect, a retransmitted SYN-ACK,
    /// a TIME_WAIT reuse...) with no new evidence for this long is resolved.
    #[serde(with = "crate::duration::human_duration")]
    pub resolve_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            close_wait_age: Duration::from_secs(60),
            fin_wait2_age: Duration::from_secs(60),
            time_wait_count: 1000,
            peer_unresponsive_after: Duration::from_secs(30),
            zero_window_after: Duration::from_secs(60),
            idle_after: Duration::from_secs(600),
            port_use_fraction: 0.5,
            finding_interval: Duration::from_secs(10),
            resolve_after: Duration::from_secs(300),
        }
    }
}

/// Whether a report opens, updates or closes a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Raised,
    Updated,
    Resolved,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Raised => "raised",
            Status::Updated => "updated",
            Status::Resolved => "resolved",
        }
    }
}

/// A finding as reported at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub status: Status,
    pub ts_ns: u64,
    pub netns: NetnsId,
    pub finding: Finding,
}

/// What keeps a finding open, and so what ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    /// Events (a refused connect, a retransmitted SYN-ACK, a reuse): open
    /// while new evidence comes within [`Thresholds::resolve_after`].
    Event,
    /// The periodic look at the model: open while each tick still sees it.
    Tick,
    /// A namespace's settings: open while each read of them still shows it.
    Settings,
}

#[derive(Debug)]
struct Open {
    finding: Finding,
    netns: NetnsId,
    /// The evidence's count now; `finding` is always built from it.
    count: u64,
    /// A second measure of the evidence, where a finding has one (0 else).
    detail: u64,
    reported_detail: u64,
    last_report_ns: u64,
    /// The count the last report showed: a difference is owed an update.
    reported_count: u64,
    /// The severity the last report showed: a change is owed an update too.
    reported_severity: Severity,
    /// When the evidence last grew (events) or was last seen (ticks, settings).
    last_evidence_ns: u64,
    /// Seen by the current tick (Tick) or settings read (Settings).
    seen: bool,
    driver: Driver,
}

impl Open {
    /// Its evidence grew, or its severity changed, since the last report.
    fn owes_update(&self) -> bool {
        self.count != self.reported_count
            || self.detail != self.reported_detail
            || self.finding.severity != self.reported_severity
    }

    /// The update report it is owed, noted as made at `now`.
    fn report_update(&mut self, now: u64) -> Report {
        self.last_report_ns = now;
        self.reported_count = self.count;
        self.reported_detail = self.detail;
        self.reported_severity = self.finding.severity;
        Report {
            status: Status::Updated,
            ts_ns: now,
            netns: self.netns,
            finding: self.finding.clone(),
        }
    }
}

/// Open findings kept at most; beyond, the one with the oldest evidence
/// is dropped and counted in [`Detectors::evicted`].
pub const MAX_OPEN_FINDINGS: usize = 10_000;

/// The detectors and their open findings.
#[derive(Debug, Default)]
pub struct Detectors {
    thresholds: Thresholds,
    open: HashMap<(FindingKind, Subject), Open>,
    /// TCPTimeWaitOverflow by namespace when first seen, to report its moves.
    overflow_baseline: HashMap<NetnsId, u64>,
    /// tcp_retries2 by network namespace (15, the kernel's default, elsewhere).
    retries2: HashMap<NetnsId, u64>,
    /// ip_local_port_range by network namespace (32768-60999 elsewhere).
    port_range: HashMap<NetnsId, (u32, u32)>,
    /// When each 4-tuple was last taken over from TIME_WAIT.
    recent_reuse: HashMap<FourTuple, u64>,
    /// Ports in use per (netns, local address, remote endpoint) at the last
    /// tick, for the rate towards exhaustion.
    port_use: HashMap<PortUseKey, (u64, u64)>,
    /// Resets on or soon after a tcp_tw_reuse, since start (every one, not
    /// only those reported).
    pub tw_reuse_resets: u64,
    /// Open findings dropped at [`MAX_OPEN_FINDINGS`], since start.
    pub evicted: u64,
    /// What the kernel said of the connections whose health is in doubt.
    health: peer_health::Health,
    /// Each namespace's listen overflow counters.
    listen: listen_queue::ListenState,
    /// Destinations whose connects lately found no local port.
    no_local_port: connect_failed::Failures,
    /// Connections without keep-alive and what the kernel said of them.
    idle: idle_keepalive::Idle,
    /// Each namespace's tcp_rfc1337 and TIME_WAIT counters.
    time_wait_guard: time_wait_assassination::TimeWaitGuards,
    /// The host's orphans and each namespace's aborts for want of memory.
    orphans: orphans::Orphans,
    /// Each namespace's SYN queue counters and settings, and SYN-ACK
    /// retransmits between reconciliations.
    syn: syn_flood::SynState,
    /// Owners can be confirmed with the kernel's socket list: a CLOSE_WAIT
    /// or FIN_WAIT2 is reported only once a reconciliation has looked at it
    /// in that state. Set by the observer while sock_diag answers.
    pub confirm_owners: bool,
    /// What owners' cgroups are, read from its cache (the observer
    /// resolves them as events come in): findings name the unit.
    pub units: crate::host::cgroup::Units,
}

/// A namespace's kernel counter, read at each reconciliation: its value
/// then, and what it moved since the reconciliation before.
#[derive(Clone, Copy, Debug, Default)]
struct Moved {
    last: u64,
    moved: u64,
}

impl Moved {
    /// The first reading: nothing moved before tcpwatch looked.
    fn first(value: u64) -> Self {
        Moved {
            last: value,
            moved: 0,
        }
    }

    fn read(&mut self, value: u64) {
        self.moved = value.saturating_sub(self.last);
        self.last = value;
    }
}

/// (netns, local address, remote address, remote port).
type PortUseKey = (NetnsId, IpAddr, IpAddr, u16);

/// Names the unit or container of the process a finding names, from the
/// cgroup id its [`Who`] carries.
fn name_workload(units: &crate::host::cgroup::Units, f: Finding) -> Finding {
    // Only a finding that names a process names its workload.
    let id = if f.who.pid.is_some() { f.who.cgroup } else { 0 };
    let workload = units.get(id);
    f.in_workload(workload)
}

impl Who {
    /// The process holding the listener that serves `addr:port`, as the
    /// model knows it (checked against `/proc` by the reconciliation that
    /// listed the listener), and how a sentence names it.
    fn listener(model: &Model, netns: NetnsId, addr: IpAddr, port: u16) -> (Who, String) {
        let owner = model
            .listeners_serving(netns, addr, port)
            .into_iter()
            .next()
            .filter(|l| l.pid != 0);
        let who = Who {
            pid: owner.map(|l| l.pid),
            comm: owner.map(|l| l.comm.to_string()),
            laddr: Some(addr),
            lport: Some(port),
            cgroup: owner.map_or(0, |l| l.cgroup),
            ..Default::default()
        };
        let named = owner.map_or_else(
            || "the listener".to_owned(),
            |l| format!("{} (pid {})", l.comm, l.pid),
        );
        (who, named)
    }
}

fn secs(ns: u64) -> f64 {
    (ns as f64 / 1e9 * 10.0).round() / 10.0
}

use crate::tcp::endpoint;

impl Detectors {
    pub fn new(thresholds: Thresholds) -> Self {
        Detectors {
            thresholds,
            open: HashMap::new(),
            overflow_baseline: HashMap::new(),
            retries2: HashMap::new(),
            port_range: HashMap::new(),
            recent_reuse: HashMap::new(),
            port_use: HashMap::new(),
            tw_reuse_resets: 0,
            evicted: 0,
            health: Default::default(),
            listen: Default::default(),
            no_local_port: Default::default(),
            idle: Default::default(),
            time_wait_guard: Default::default(),
            orphans: Default::default(),
            syn: Default::default(),
            confirm_owners: false,
            units: Default::default(),
        }
    }

    /// Tells the detectors a namespace's tcp_retries2, which decides when
    /// the kernel gives up on an unresponsive peer.
    pub fn set_retries2(&mut self, netns: NetnsId, retries2: u64) {
        self.retries2.insert(netns, retries2);
    }

    /// A namespace's settings and counters, read periodically: its
    /// tcp_retries2, TCPTimeWaitOverflow moving since tcpwatch started, and
    /// the audit's warnings (its informational notes are for `audit`).
    pub fn on_netns(&mut self, netns: NetnsId, state: &NetnsState, now: u64) -> Vec<Report> {
        let mut out = Vec::new();
        for open in self.open.values_mut() {
            if open.driver == Driver::Settings && open.netns == netns {
                open.seen = false;
            }
        }
        if let Some(r) = state.uint("tcp_retries2") {
            self.set_retries2(netns, r);
        }
        if let Some(range) = state.port_range() {
            self.port_range.insert(netns, range);
        }
        self.note_keepalive(netns, state);
        self.note_time_wait_guard(netns, state);
        self.note_orphans(netns, state);
        self.note_listen_counters(netns, state);
        self.note_syn_counters(netns, state);
        let overflow = state
            .tcpext
            .get("TCPTimeWaitOverflow")
            .copied()
            .unwrap_or(0);
        let baseline = *self.overflow_baseline.entry(netns).or_insert(overflow);
        let mut moved = state.clone();
        moved.tcpext.insert(
            "TCPTimeWaitOverflow".into(),
            overflow.saturating_sub(baseline),
        );
        for finding in audit::evaluate(&moved) {
            if finding.severity < Severity::Warning && finding.kind != FindingKind::TimeWaitOverflow
            {
                continue;
            }
            let subject = Subject::Setting {
                netns,
                name: finding
                    .evidence
                    .get("setting")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
            };
            let count = finding
                .evidence
                .get("TCPTimeWaitOverflow")
                .or_else(|| finding.evidence.get("time_wait"))
                .and_then(|v| v.as_u64())
                .unwrap_or(1);
            let kind = finding.kind;
            // Overflows are events counted by the kernel: they end when the
            // counter stops moving. A risky setting ends when it is changed.
            let driver = if kind == FindingKind::TimeWaitOverflow {
                Driver::Event
            } else {
                Driver::Settings
            };
            self.observe(&mut out, kind, subject, now, count, driver, |_| finding);
        }
        self.resolve(&mut out, now, |o| {
            o.driver == Driver::Settings && o.netns == netns && !o.seen
        });
        out
    }

    /// Resolves every open finding that `over` says is over.
    fn resolve(&mut self, out: &mut Vec<Report>, now: u64, over: impl Fn(&Open) -> bool) {
        let gone: Vec<(FindingKind, Subject)> = self
            .open
            .iter()
            .filter(|(_, o)| over(o))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            let Some(o) = self.open.remove(&key) else {
                continue;
            };
            // The overflows it reported are history once it is resolved.
            if o.finding.kind == FindingKind::TimeWaitOverflow {
                *self.overflow_baseline.entry(o.netns).or_insert(0) += o.count;
            }
            out.push(Report {
                status: Status::Resolved,
                ts_ns: now,
                netns: o.netns,
                finding: o.finding,
            });
        }
    }

    /// Namespaces that no longer exist: their findings are resolved and what
    /// was learnt of them forgotten, so a new namespace that gets a deleted
    /// one's inode starts clean.
    /// The condition behind an open event-driven finding was seen again,
    /// though its count did not move: it is not over.
    fn still_seen(&mut self, kind: FindingKind, subject: &Subject, now: u64) {
        if let Some(open) = self.open.get_mut(&(kind, subject.clone())) {
            open.last_evidence_ns = now;
        }
    }

    /// Reports every open finding whose evidence grew or whose severity
    /// changed since its last report, whatever the interval.
    pub fn owed_updates(&mut self, now: u64) -> Vec<Report> {
        let mut out = Vec::new();
        for open in self.open.values_mut().filter(|o| o.owes_update()) {
            out.push(open.report_update(now));
        }
        out.sort_by_key(|r| (r.finding.kind, r.netns));
        out
    }

    pub fn forget_namespaces_except(&mut self, alive: &[NetnsId], now: u64) -> Vec<Report> {
        let mut out = Vec::new();
        self.resolve(&mut out, now, |o| !alive.contains(&o.netns));
        self.overflow_baseline.retain(|n, _| alive.contains(n));
        self.retries2.retain(|n, _| alive.contains(n));
        self.port_range.retain(|n, _| alive.contains(n));
        self.recent_reuse.retain(|t, _| alive.contains(&t.netns));
        self.port_use.retain(|k, _| alive.contains(&k.0));
        self.health.forget_namespaces_except(alive);
        self.listen.forget_netns(|n| !alive.contains(&n));
        self.no_local_port.retain(|k, _| alive.contains(&k.0));
        self.idle.forget_namespaces_except(alive);
        self.time_wait_guard.retain(|n, _| alive.contains(n));
        self.orphans.forget_namespaces_except(alive);
        self.syn.forget_namespaces_except(alive);
        out
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// Replaces the thresholds, keeping open findings (a reload).
    pub fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.thresholds = thresholds;
    }

    /// Open findings, for snapshots.
    pub fn open_findings(&self) -> impl Iterator<Item = (&Finding, NetnsId)> {
        self.open.values().map(|o| (&o.finding, o.netns))
    }

    /// Raises or updates the finding `(kind, subject)` whose evidence now counts
    /// `count`, built by `make` (called only when it will be reported).
    #[allow(clippy::too_many_arguments)]
    fn observe(
        &mut self,
        out: &mut Vec<Report>,
        kind: FindingKind,
        subject: Subject,
        now: u64,
        count: u64,
        driver: Driver,
        make: impl FnOnce(u64) -> Finding,
    ) {
        self.observe_detailed(out, kind, subject, now, (count, 0), driver, make);
    }

    /// [`Self::observe`] for a finding whose report has a second measure
    /// besides its count (`detail`: the latest connect that timed out
    /// behind a full accept queue): a change of either is owed an update,
    /// but only the count is evidence that keeps an event-driven finding open.
    #[allow(clippy::too_many_arguments)]
    fn observe_detailed(
        &mut self,
        out: &mut Vec<Report>,
        kind: FindingKind,
        subject: Subject,
        now: u64,
        (count, detail): (u64, u64),
        driver: Driver,
        make: impl FnOnce(u64) -> Finding,
    ) {
        let every = self.thresholds.finding_interval.as_nanos() as u64;
        let units = self.units.clone();
        let make = |count| name_workload(&units, make(count));
        let netns = subject.netns();
        match self.open.get_mut(&(kind, subject.clone())) {
            None => {
                if self.open.len() >= MAX_OPEN_FINDINGS {
                    self.evict_oldest();
                }
                let finding = make(count);
                let reported_severity = finding.severity;
                out.push(Report {
                    status: Status::Raised,
                    ts_ns: now,
                    netns,
                    finding: finding.clone(),
                });
                self.open.insert(
                    (kind, subject),
                    Open {
                        finding,
                        netns,
                        count,
                        detail,
                        reported_detail: detail,
                        last_report_ns: now,
                        reported_count: count,
                        reported_severity,
                        last_evidence_ns: now,
                        seen: true,
                        driver,
                    },
                );
            }
            Some(open) => {
                open.seen = true;
                // The finding always shows the evidence as it is now (ages
                // move every tick), even while its report waits for the
                // interval: a burst is reported with its final count by the
                // next tick, not frozen at its first event.
                if driver != Driver::Event || count != open.count {
                    open.last_evidence_ns = now;
                    open.finding = make(count);
                } else if detail != open.detail {
                    // Shown, and owed an update, but no evidence that
                    // keeps the finding open.
                    open.finding = make(count);
                }
                open.count = count;
                open.detail = detail;
                if open.owes_update() && now.saturating_sub(open.last_report_ns) >= every {
                    out.push(open.report_update(now));
                }
            }
        }
    }

    /// Drops the open finding whose evidence is oldest, to stay within
    /// [`MAX_OPEN_FINDINGS`].
    fn evict_oldest(&mut self) {
        let oldest = self
            .open
            .iter()
            .min_by_key(|(_, o)| o.last_evidence_ns)
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            self.open.remove(&key);
            self.evicted += 1;
        }
    }

    /// Counts one more occurrence of an event-driven finding.
    fn bump(&mut self, kind: FindingKind, subject: &Subject) -> u64 {
        self.open
            .get(&(kind, subject.clone()))
            .map_or(1, |o| o.count + 1)
    }

    /// Findings revealed by one event and what the model made of it.
    pub fn on_event(&mut self, ev: &TcpEvent, outcomes: &[Outcome], model: &Model) -> Vec<Report> {
        let mut out = Vec::new();
        let now = ev.ts_ns;
        if ev.kind == EventKind::Retransmit {
            self.note_retransmit(ev);
        }
        match ev.kind {
            // A reset sent from SYN_SENT on a 4-tuple still in TIME_WAIT: the
            // old peer answered the reused SYN with a challenge ACK.
            EventKind::ResetSent if ev.old_state == Some(TcpState::SynSent) => {
                let tuple = FourTuple {
                    netns: ev.netns,
                    local: ev.saddr,
                    local_port: ev.sport,
                    remote: ev.daddr,
                    remote_port: ev.dport,
                };
                // The 4-tuple is still in the table when the SYN_SENT event
                // had no port yet, or was just reused with a bound port.
                let since = model
                    .time_wait_entry(&tuple)
                    .map(|tw| tw.entered_ns)
                    .or_else(|| self.reused_recently(&tuple, now));
                if let Some(since) = since {
                    self.reuse_reset(
                        &mut out,
                        tuple,
                        (ev.pid, &ev.comm, ev.cgroup),
                        now,
                        now.saturating_sub(since),
                        "sent a reset from SYN_SENT",
                    );
                }
            }
            // During a syn_flood of its listener, the flood's evidence.
            EventKind::SynackRetransmit if self.note_synack_retransmit(ev) => {}
            EventKind::SynackRetransmit => self.on_synack_retransmit(ev, &mut out),
            EventKind::Retransmit
                if matches!(
                    ev.new_state,
                    Some(TcpState::FinWait1 | TcpState::LastAck | TcpState::Closing)
                ) =>
            {
                self.on_fin_retransmit(ev, &mut out)
            }
            _ => {}
        }
        for outcome in outcomes {
            self.on_outcome(outcome, now, &mut out);
        }
        out
    }

    fn on_outcome(&mut self, outcome: &Outcome, now: u64, out: &mut Vec<Report>) {
        match outcome {
            Outcome::Finished(f) if f.end == EndReason::NoLocalPort => {
                self.on_connect_failed(f, now, out);
            }
            Outcome::Finished(f)
                if f.end == EndReason::PeerReset
                    && self.reused_recently(&f.connection.tuple, now).is_none() =>
            {
                self.on_peer_reset(f, now, out);
            }
            Outcome::Finished(f)
                if matches!(f.end, EndReason::ConnectRefused | EndReason::ConnectTimeout) =>
            {
                self.on_connect_error(f, now, out);
            }
            Outcome::Finished(f)
                if matches!(
                    f.end,
                    EndReason::ResetReceived | EndReason::ResetSent | EndReason::PeerReset
                ) && self.reused_recently(&f.connection.tuple, now).is_some() =>
            {
                self.on_reuse_reset(f, now, out)
            }
            Outcome::TimeWaitReused {
                tuple,
                age_ns,
                pid,
                comm,
                cgroup,
            } => self.on_time_wait_reused(*tuple, *age_ns, (*pid, comm, *cgroup), now, out),
            Outcome::TimeWaitSynReused { tuple, age_ns } => {
                self.on_time_wait_syn_reused(*tuple, *age_ns, now, out)
            }
            _ => {}
        }
    }

    /// Namespaces with CLOSE_WAIT or FIN_WAIT2 sockets past their threshold
    /// that no reconciliation has looked at in that state: their owners
    /// are to be confirmed before the next tick reports them.
    pub fn unconfirmed_waits(&self, model: &Model, now: u64) -> Vec<NetnsId> {
        let t = self.thresholds;
        let mut namespaces: Vec<NetnsId> = model
            .connections()
            .filter(|c| {
                let limit = match c.state {
                    TcpState::CloseWait => t.close_wait_age,
                    TcpState::FinWait2 => t.fin_wait2_age,
                    _ => return false,
                };
                now.saturating_sub(c.state_since_ns) >= limit.as_nanos() as u64
                    && model
                        .reconciled_at(c.tuple.netns)
                        .is_none_or(|at| at <= c.state_since_ns)
            })
            .map(|c| c.tuple.netns)
            .collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        namespaces
    }

    /// Periodic look at the model: buildup, leaks and stalls; resolves
    /// tick-driven findings whose condition is gone.
    pub fn tick(&mut self, now: u64, model: &Model) -> Vec<Report> {
        let mut out = Vec::new();
        for open in self.open.values_mut() {
            if open.driver == Driver::Tick {
                open.seen = false;
            }
        }
        let t = self.thresholds;

        self.half_closed(&mut out, now, model);
        self.time_wait_buildup(&mut out, now, model);
        self.peer_unresponsive(&mut out, now, model);
        self.zero_window_stall(&mut out, now, model);
        self.idle_without_keepalive(&mut out, now, model);
        self.recent_reuse
            .retain(|_, t| now.saturating_sub(*t) <= REUSE_RESET_WINDOW_NS);
        self.port_exhaustion_risk(&mut out, now, model);

        // Whatever a tick no longer sees is over, and so is an event-driven
        // finding without new evidence for `resolve_after`.
        let quiet = t.resolve_after.as_nanos() as u64;
        self.resolve(&mut out, now, |o| match o.driver {
            Driver::Tick => !o.seen,
            Driver::Event => now.saturating_sub(o.last_evidence_ns) >= quiet,
            Driver::Settings => false,
        });

        // Evidence that grew since its last report (a burst between two
        // reports) is reported once the interval allows.
        let every = t.finding_interval.as_nanos() as u64;
        for open in self.open.values_mut() {
            if open.owes_update() && now.saturating_sub(open.last_report_ns) >= every {
                out.push(open.report_update(now));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel::event::OwnerSource, model::Limits};
    use TcpState::*;

    const S: u64 = 1_000_000_000;

    fn st(ts: u64, sk: u64, old: TcpState, new: TcpState, sport: u16, dport: u16) -> TcpEvent {
        TcpEvent {
            ts_ns: ts,
            skaddr: sk,
            pid: 7,
            comm: "app".into(),
            owner: OwnerSource::Connect,
            netns: NetnsId(1),
            saddr: "10.0.0.1".parse().unwrap(),
            sport,
            daddr: "10.0.0.2".parse().unwrap(),
            dport,
            old_state: Some(old),
            new_state: Some(new),
            ..TcpEvent::blank()
        }
    }

    fn feed(m: &mut Model, d: &mut Detectors, evs: &[TcpEvent]) -> Vec<Report> {
        evs.iter()
            .flat_map(|e| {
                let outcomes = m.apply(e);
                d.on_event(e, &outcomes, m)
            })
            .collect()
    }

    fn kinds(r: &[Report]) -> Vec<(FindingKind, Status)> {
        r.iter().map(|r| (r.finding.kind, r.status)).collect()
    }

    #[test]
    fn a_connect_without_a_free_port_is_connect_failed_and_ports_exhausted() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds::default());
        // 10 connections hold ports 1..=10 of a 20-port range towards :80.
        d.port_range.insert(NetnsId(1), (1, 20));
        let mut evs = Vec::new();
        for i in 0..10u64 {
            evs.push(st(0, 0x100 + i * 64, Close, SynSent, 0, 80));
            evs.push(st(
                1,
                0x100 + i * 64,
                SynSent,
                Established,
                1 + i as u16,
                80,
            ));
        }
        assert!(feed(&mut m, &mut d, &evs).is_empty());
        let r = d.tick(2 * S, &m);
        // Half the range: at the default 0.5, a warning.
        assert_eq!(
            kinds(&r),
            [(FindingKind::PortExhaustionRisk, Status::Raised)]
        );
        assert_eq!(r[0].finding.severity, Severity::Warning);
        let r = feed(
            &mut m,
            &mut d,
            &[
                st(3 * S, 0x9000, Close, SynSent, 0, 80),
                st(3 * S, 0x9000, SynSent, Close, 0, 80),
            ],
        );
        assert_eq!(kinds(&r), [(FindingKind::ConnectFailed, Status::Raised)]);
        let f = &r[0].finding;
        assert_eq!(
            (
                f.rendered_evidence()["pid"].as_u64(),
                f.rendered_evidence()["comm"].as_str()
            ),
            (Some(7), Some("app"))
        );
        assert_eq!(f.rendered_evidence()["rport"].as_u64(), Some(80));
        assert!(f.summary.contains("EADDRNOTAVAIL"), "{}", f.summary);
        // The destination's port finding now says exhausted, critically.
        let r = d.tick(20 * S, &m);
        let port = r
            .iter()
            .find(|r| r.finding.kind == FindingKind::PortExhaustionRisk)
            .expect("port_exhaustion_risk updated");
        assert_eq!(port.finding.severity, Severity::Critical);
        assert_eq!(port.finding.evidence["exhausted"].as_bool(), Some(true));
        // No more failures: resolved after resolve_after.
        let r = d.tick(400 * S, &m);
        assert!(
            kinds(&r).contains(&(FindingKind::ConnectFailed, Status::Resolved)),
            "{:?}",
            kinds(&r)
        );
    }

    #[test]
    fn a_reset_after_unanswered_retransmits_is_peer_restarted() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds::default());
        let rtx = |ts| TcpEvent {
            kind: EventKind::Retransmit,
            ..st(ts, 0x100, Established, Established, 40000, 6379)
        };
        let reset = TcpEvent {
            kind: EventKind::ResetReceived,
            ..st(9 * S, 0x100, Established, Established, 40000, 6379)
        };
        let r = feed(
            &mut m,
            &mut d,
            &[
                st(0, 0x100, Close, SynSent, 0, 6379),
                st(1, 0x100, SynSent, Established, 40000, 6379),
                rtx(S),
                rtx(2 * S),
                rtx(4 * S),
                reset,
                st(9 * S, 0x100, Established, Close, 40000, 6379),
            ],
        );
        assert_eq!(kinds(&r), [(FindingKind::PeerRestarted, Status::Raised)]);
        let f = &r[0].finding;
        assert_eq!(f.evidence["retransmits"].as_u64(), Some(3));
        assert_eq!(f.rendered_evidence()["pid"].as_u64(), Some(7));
        assert_eq!(f.rendered_evidence()["rport"].as_u64(), Some(6379));
        // An ordinary reset, no retransmits before it: no finding.
        let reset = TcpEvent {
            kind: EventKind::ResetReceived,
            ..st(20 * S, 0x200, Established, Established, 40001, 6379)
        };
        let r = feed(
            &mut m,
            &mut d,
            &[
                st(10 * S, 0x200, Close, SynSent, 0, 6379),
                st(10 * S, 0x200, SynSent, Established, 40001, 6379),
                reset,
                st(20 * S, 0x200, Established, Close, 40001, 6379),
            ],
        );
        assert!(r.is_empty(), "{:?}", kinds(&r));
    }

    #[test]
    fn orphans_near_the_limit_and_aborts_for_want_of_memory() {
        let m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds::default());
        let host = |orphans: u64| {
            let mut s = NetnsState::default();
            s.sysctls.insert("tcp_max_orphans".into(), "10".into());
            s.orphans = Some(orphans);
            s
        };
        let guest = |aborts: u64| {
            let mut s = NetnsState {
                orphans: Some(9),
                ..Default::default()
            };
            s.tcpext.insert("TCPAbortOnMemory".into(), aborts);
            s
        };
        assert!(d.on_netns(NetnsId(1), &host(9), S).is_empty());
        let r = d.on_orphans(NetnsId(1), &[], &m, S);
        assert_eq!(kinds(&r), [(FindingKind::OrphanOverflow, Status::Raised)]);
        assert_eq!(r[0].finding.severity, Severity::Warning);
        assert_eq!(r[0].finding.evidence["tcp_max_orphans"].as_u64(), Some(10));
        // Still near the limit at the next read: stays open, quietly.
        assert!(d.on_netns(NetnsId(1), &host(9), 2 * S).is_empty());
        assert!(d.on_orphans(NetnsId(1), &[], &m, 2 * S).is_empty());
        // Another namespace: its aborts move from a baseline of 3 to 8.
        assert!(d.on_netns(NetnsId(2), &guest(3), 2 * S).is_empty());
        assert!(d.on_orphans(NetnsId(2), &[], &m, 2 * S).is_empty());
        d.on_netns(NetnsId(2), &guest(8), 3 * S);
        let r = d.on_orphans(NetnsId(2), &[], &m, 3 * S);
        assert_eq!(kinds(&r), [(FindingKind::OrphanOverflow, Status::Raised)]);
        assert_eq!(r[0].finding.severity, Severity::Critical);
        assert_eq!(r[0].finding.evidence["count"].as_u64(), Some(5));
        // The host's orphans drop: the pressure finding ends.
        let r = d.on_netns(NetnsId(1), &host(2), 4 * S);
        assert_eq!(kinds(&r), [(FindingKind::OrphanOverflow, Status::Resolved)]);
    }

    #[test]
    fn findings_name_the_unit_or_container_of_the_process_first() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds::default());
        d.units.learn(77, "/system.slice/nginx.service");
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        d.units
            .learn(78, &format!("/system.slice/docker-{id}.scope"));
        let in_cgroup = |e: TcpEvent, cgroup: u64, port: u16| TcpEvent {
            cgroup,
            sport: port,
            ..e
        };
        let mut evs = Vec::new();
        for (i, (cgroup, port)) in [(77, 8080), (78, 9090), (0, 7070)].into_iter().enumerate() {
            let sk = 0x1000 + i as u64 * 64;
            for (t, old, new) in [
                (0, Listen, SynRecv),
                (1, SynRecv, Established),
                (2, Established, CloseWait),
            ] {
                evs.push(in_cgroup(st(t, sk, old, new, port, 50000), cgroup, port));
            }
        }
        feed(&mut m, &mut d, &evs);
        let r = d.tick(63 * S, &m);
        let by_port = |port: u64| {
            r.iter()
                .map(|r| &r.finding)
                .find(|f| f.rendered_evidence()["lport"].as_u64() == Some(port))
                .unwrap_or_else(|| panic!("no finding on {port}: {r:?}"))
        };
        let nginx = by_port(8080);
        assert!(
            nginx
                .summary
                .starts_with("nginx.service: app (pid 7) holds 1 connections"),
            "{}",
            nginx.summary
        );
        assert_eq!(nginx.evidence["unit"], "nginx.service");
        assert!(!nginx.evidence.contains_key("container"));
        assert!(
            !nginx.rendered_evidence().contains_key("cgroup"),
            "the id stays inside"
        );
        let docker = by_port(9090);
        assert!(
            docker
                .summary
                .starts_with("docker:0123456789ab: app (pid 7)"),
            "{}",
            docker.summary
        );
        assert_eq!(
            docker.evidence["container"],
            serde_json::json!({"runtime": "docker", "id": "0123456789ab"})
        );
        assert!(!docker.evidence.contains_key("unit"));
        let unknown = by_port(7070);
        assert!(
            unknown.summary.starts_with("app (pid 7)"),
            "{}",
            unknown.summary
        );
        assert!(unknown.workload.is_none() && !unknown.evidence.contains_key("unit"));
    }

    #[test]
    fn close_wait_leak_is_raised_updated_and_resolved() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds {
            finding_interval: Duration::from_secs(10),
            ..Default::default()
        });
        let mut evs = Vec::new();
        for i in 0..3u64 {
            let sk = 0x1000 + i * 64;
            evs.push(st(0, sk, Listen, SynRecv, 8080, 50000 + i as u16));
            evs.push(st(1, sk, SynRecv, Established, 8080, 50000 + i as u16));
            evs.push(st(
                2 + i * S,
                sk,
                Established,
                CloseWait,
                8080,
                50000 + i as u16,
            ));
        }
        assert!(feed(&mut m, &mut d, &evs).is_empty());
        assert!(d.tick(59 * S, &m).is_empty(), "younger than the threshold");
        let r = d.tick(63 * S, &m);
        assert_eq!(kinds(&r), [(FindingKind::CloseWaitLeak, Status::Raised)]);
        let f = &r[0].finding;
        assert_eq!(
            (
                f.evidence["count"].as_u64(),
                f.rendered_evidence()["pid"].as_u64(),
                f.rendered_evidence()["lport"].as_u64()
            ),
            (Some(3), Some(7), Some(8080))
        );
        assert_eq!(f.evidence["age_seconds"].as_f64(), Some(63.0));
        assert!(f.summary.contains("not calling close()"), "{}", f.summary);
        // The same condition is not repeated...
        assert!(d.tick(64 * S, &m).is_empty());
        // ...one socket is closed: an update, once the interval has passed.
        feed(
            &mut m,
            &mut d,
            &[st(65 * S, 0x1000, CloseWait, LastAck, 8080, 50000)],
        );
        assert!(d.tick(66 * S, &m).is_empty());
        assert_eq!(
            kinds(&d.tick(75 * S, &m)),
            [(FindingKind::CloseWaitLeak, Status::Updated)]
        );
        // All closed: resolved.
        feed(
            &mut m,
            &mut d,
            &[
                st(76 * S, 0x1040, CloseWait, LastAck, 8080, 50001),
                st(76 * S, 0x1080, CloseWait, LastAck, 8080, 50002),
            ],
        );
        assert_eq!(
            kinds(&d.tick(77 * S, &m)),
            [(FindingKind::CloseWaitLeak, Status::Resolved)]
        );
    }

    #[test]
    fn server_side_time_wait_buildup() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds {
            time_wait_count: 3,
            ..Default::default()
        });
        let mut evs = Vec::new();
        for i in 0..3u64 {
            let (sk, port) = (0x2000 + i * 64, 51000 + i as u16);
            for (old, new) in [
                (Listen, SynRecv),
                (SynRecv, Established),
                (Established, FinWait1),
                (FinWait1, FinWait2),
                (FinWait2, Close),
            ] {
                evs.push(st(i, sk, old, new, 80, port));
            }
        }
        feed(&mut m, &mut d, &evs);
        let r = d.tick(S, &m);
        assert_eq!(kinds(&r), [(FindingKind::TimeWaitBuildup, Status::Raised)]);
        assert!(
            r[0].finding.summary.contains("this server closes first"),
            "{}",
            r[0].finding.summary
        );
        assert_eq!(r[0].finding.rendered_evidence()["lport"], 80);
        // TIME_WAIT drains after 60 s: resolved.
        m.expire(61 * S);
        assert_eq!(
            kinds(&d.tick(61 * S, &m)),
            [(FindingKind::TimeWaitBuildup, Status::Resolved)]
        );
    }

    #[test]
    fn refused_connects_are_one_finding_with_a_count() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds::default());
        let mut reports = Vec::new();
        for i in 0..3u64 {
            let sk = 0x3000 + i * 64;
            let mut rst = st(i * S + 1, sk, SynSent, SynSent, 40000, 9);
            rst.kind = EventKind::ResetReceived;
            reports.extend(feed(
                &mut m,
                &mut d,
                &[
                    st(i * S, sk, Close, SynSent, 0, 9),
                    rst,
                    st(i * S + 2, sk, SynSent, Close, 40000, 9),
                ],
            ));
        }
        // Raised once; the count moves without a new report inside the interval.
        assert_eq!(
            kinds(&reports),
            [(FindingKind::ConnectRefused, Status::Raised)]
        );
        assert_eq!(reports[0].finding.rendered_evidence()["rport"], 9);
        let mut rst = st(20 * S + 1, 0x4000, SynSent, SynSent, 40000, 9);
        rst.kind = EventKind::ResetReceived;
        let later = feed(
            &mut m,
            &mut d,
            &[
                st(20 * S, 0x4000, Close, SynSent, 0, 9),
                rst,
                st(20 * S + 2, 0x4000, SynSent, Close, 40000, 9),
            ],
        );
        assert_eq!(
            kinds(&later),
            [(FindingKind::ConnectRefused, Status::Updated)]
        );
        assert_eq!(later[0].finding.evidence["count"], 4);
    }

    #[test]
    fn peer_unresponsive_after_a_run_of_backoff() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds {
            peer_unresponsive_after: Duration::from_secs(2),
            ..Default::default()
        });
        d.set_retries2(NetnsId(1), 4);
        let mut evs = vec![
            st(0, 0x8000, Close, SynSent, 0, 443),
            st(1, 0x8000, SynSent, Established, 40000, 443),
        ];
        for ms in [1000u64, 1200, 1600, 2400, 4000] {
            let mut e = st(ms * 1_000_000, 0x8000, Established, Established, 40000, 443);
            e.kind = EventKind::Retransmit;
            evs.push(e);
        }
        feed(&mut m, &mut d, &evs);
        let tuple = m.connections().next().unwrap().tuple;
        assert_eq!(d.wanted_health(&m), [tuple]);
        // What the kernel says at 2.5 s and at 4.1 s: five RTO timeouts,
        // nothing acknowledged since the data was sent at 1 s minus the
        // first RTO; the next expiry 3.2 s away with the RTO at 3.2 s.
        let kernel = |silent_ms: u32| crate::host::sock_diag::TcpHealth {
            timer: Some(crate::host::sock_diag::KernelTimer::Retransmit {
                expires_ms: 3200,
                retransmits: 5,
            }),
            retransmits: 5,
            backoff: 4,
            rto_us: 3_200_000,
            unacked: 2,
            last_data_sent_ms: silent_ms,
            last_ack_recv_ms: silent_ms,
            ..Default::default()
        };
        d.set_health([(tuple, Some(kernel(1700)))], 2_500_000_000);
        assert!(d.tick(2_500_000_000, &m).is_empty(), "not yet 2 s of stall");
        d.set_health([(tuple, Some(kernel(3300)))], 4_100_000_000);
        let r = d.tick(4_100_000_000, &m);
        assert_eq!(kinds(&r), [(FindingKind::PeerUnresponsive, Status::Raised)]);
        let f = &r[0].finding;
        // tcp_retries2=4: a budget of 6.2 s from the first retransmit (at
        // 0.8 s); stalled 3.3 s, the next expiry at +3.2 s is past it.
        assert_eq!(
            (
                f.evidence["count"].as_u64(),
                f.evidence["seconds_left"].as_f64()
            ),
            (Some(5), Some(3.2))
        );
        assert_eq!(f.rendered_evidence()["rport"], 443);
        // The connection ends (retransmit timeout): resolved.
        feed(
            &mut m,
            &mut d,
            &[st(6_200_000_000, 0x8000, Established, Close, 40000, 443)],
        );
        d.set_health([(tuple, None)], 6_300_000_000);
        assert_eq!(
            kinds(&d.tick(6_300_000_000, &m)),
            [(FindingKind::PeerUnresponsive, Status::Resolved)]
        );
    }

    /// A bulk transfer through a bottleneck retransmits what the queue
    /// dropped, with gaps that grow, but its ACKs keep coming: the kernel
    /// says so and no peer is accused; when the ACKs stop, it is raised,
    /// and resolved once they come back.
    #[test]
    fn retransmits_with_acks_flowing_are_no_unresponsive_peer() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds {
            peer_unresponsive_after: Duration::from_secs(2),
            ..Default::default()
        });
        let mut evs = vec![
            st(0, 0x9000, Close, SynSent, 0, 443),
            st(1, 0x9000, SynSent, Established, 40000, 443),
        ];
        for ms in [1000u64, 1300, 1900, 3100, 5500] {
            let mut e = st(ms * 1_000_000, 0x9000, Established, Established, 40000, 443);
            e.kind = EventKind::Retransmit;
            evs.push(e);
        }
        feed(&mut m, &mut d, &evs);
        let tuple = m.connections().next().unwrap().tuple;
        let flowing = crate::host::sock_diag::TcpHealth {
            retransmits: 1,
            unacked: 40,
            rto_us: 1_000_000,
            last_ack_recv_ms: 30,
            last_data_sent_ms: 10,
            ..Default::default()
        };
        for s in 6..30u64 {
            d.set_health([(tuple, Some(flowing))], s * S);
            assert!(d.tick(s * S, &m).is_empty(), "false alarm at {s} s");
        }
        let dead = crate::host::sock_diag::TcpHealth {
            last_ack_recv_ms: 4_000,
            last_data_sent_ms: 4_000,
            retransmits: 3,
            ..flowing
        };
        d.set_health([(tuple, Some(dead))], 31 * S);
        assert_eq!(
            kinds(&d.tick(31 * S, &m)),
            [(FindingKind::PeerUnresponsive, Status::Raised)]
        );
        d.set_health([(tuple, Some(flowing))], 32 * S);
        assert_eq!(
            kinds(&d.tick(32 * S, &m)),
            [(FindingKind::PeerUnresponsive, Status::Resolved)]
        );
    }

    #[test]
    fn zero_window_stall_from_the_persist_timer() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds {
            zero_window_after: Duration::from_secs(5),
            ..Default::default()
        });
        feed(
            &mut m,
            &mut d,
            &[
                st(0, 0xa000, Listen, SynRecv, 443, 40000),
                st(1, 0xa000, SynRecv, Established, 443, 40000),
            ],
        );
        let c = m.connections().next().unwrap();
        let listed = crate::host::sock_diag::DiagSocket {
            state: Established,
            local: c.tuple.local,
            local_port: 443,
            remote: c.tuple.remote,
            remote_port: 40000,
            inode: 5,
            time_wait_left_ms: None,
            timer: Some(crate::host::sock_diag::KernelTimer::ZeroWindowProbe { expires_ms: 800 }),
            recv_queue: 0,
            send_queue: 65_536,
        };
        let tuple = c.tuple;
        d.on_kernel_sockets(NetnsId(1), &[listed], S);
        assert_eq!(d.wanted_health(&m), [tuple]);
        let shut = crate::host::sock_diag::TcpHealth {
            timer: Some(crate::host::sock_diag::KernelTimer::ZeroWindowProbe { expires_ms: 800 }),
            snd_wnd: Some(0),
            send_queue: 65_536,
            ..Default::default()
        };
        d.set_health([(tuple, Some(shut))], 2 * S);
        assert!(d.tick(2 * S, &m).is_empty(), "not yet 5 s");
        d.set_health([(tuple, Some(shut))], 6 * S);
        let r = d.tick(6 * S, &m);
        assert_eq!(kinds(&r), [(FindingKind::ZeroWindowStall, Status::Raised)]);
        assert_eq!(r[0].finding.evidence["bytes_waiting"], 65_536);
        assert_eq!(r[0].finding.rendered_evidence()["pid"], 7);
        // The peer stops answering the probes: updated with their count.
        let unanswered = crate::host::sock_diag::TcpHealth { probes: 3, ..shut };
        d.set_health([(tuple, Some(unanswered))], 20 * S);
        let r = d.tick(20 * S, &m);
        assert_eq!(kinds(&r), [(FindingKind::ZeroWindowStall, Status::Updated)]);
        assert_eq!(r[0].finding.evidence["probes"], 3);
        // The window opens: resolved.
        let open = crate::host::sock_diag::TcpHealth {
            timer: None,
            snd_wnd: Some(65_536),
            ..shut
        };
        d.set_health([(tuple, Some(open))], 21 * S);
        assert_eq!(
            kinds(&d.tick(21 * S, &m)),
            [(FindingKind::ZeroWindowStall, Status::Resolved)]
        );
    }

    #[test]
    fn namespace_counters_and_settings() {
        let mut d = Detectors::new(Thresholds::default());
        let mut state = NetnsState::default();
        state.sysctls.insert("tcp_retries2".into(), "5".into());
        state.sysctls.insert("tcp_rfc1337".into(), "0".into());
        state.tcpext.insert("TCPTimeWaitOverflow".into(), 40);
        // Overflows before tcpwatch started are history; info notes are not repeated here.
        assert!(d.on_netns(NetnsId(9), &state, 0).is_empty());
        assert_eq!(d.retries2.get(&NetnsId(9)), Some(&5));
        state.tcpext.insert("TCPTimeWaitOverflow".into(), 43);
        let r = d.on_netns(NetnsId(9), &state, S);
        assert_eq!(kinds(&r), [(FindingKind::TimeWaitOverflow, Status::Raised)]);
        assert_eq!(r[0].finding.evidence["TCPTimeWaitOverflow"], 3);
        state.sysctls.insert("tcp_syncookies".into(), "0".into());
        let r = d.on_netns(NetnsId(9), &state, 2 * S);
        assert_eq!(kinds(&r), [(FindingKind::SysctlRisk, Status::Raised)]);
    }

    #[test]
    fn port_exhaustion_with_the_time_left_at_the_current_rate() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds::default());
        let mut state = NetnsState::default();
        state
            .sysctls
            .insert("ip_local_port_range".into(), "40000 40019".into());
        d.on_netns(NetnsId(1), &state, 0);
        let close = |m: &mut Model, d: &mut Detectors, i: u64| {
            let (sk, port) = (0x9000 + i * 64, 40000 + i as u16);
            let steps = [
                (Close, SynSent),
                (SynSent, Established),
                (Established, FinWait1),
                (FinWait1, FinWait2),
                (FinWait2, Close),
            ];
            let evs: Vec<_> = steps
                .into_iter()
                .map(|(o, n)| {
                    st(
                        i * S,
                        sk,
                        o,
                        n,
                        if (o, n) == (Close, SynSent) { 0 } else { port },
                        80,
                    )
                })
                .collect();
            feed(m, d, &evs);
        };
        for i in 0..8 {
            close(&mut m, &mut d, i);
        }
        assert!(d.tick(8 * S, &m).is_empty(), "8 of 20 ports: below half");
        for i in 8..12 {
            close(&mut m, &mut d, i);
        }
        let r = d.tick(12 * S, &m);
        assert_eq!(
            kinds(&r),
            [(FindingKind::PortExhaustionRisk, Status::Raised)]
        );
        let f = &r[0].finding;
        assert_eq!(
            (f.evidence["count"].as_u64(), f.evidence["ports"].as_u64()),
            (Some(12), Some(20))
        );
        // 4 ports in 4 s: the 8 left last 8 s.
        assert_eq!(f.evidence["seconds_to_exhaustion"].as_f64(), Some(8.0));
        assert_eq!(f.rendered_evidence()["rport"], 80);
    }

    #[test]
    fn resets_after_tw_reuse() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds::default());
        let evs = [
            st(0, 0xa000, Close, SynSent, 0, 80),
            st(1, 0xa000, SynSent, Established, 41000, 80),
            st(2, 0xa000, Established, FinWait1, 41000, 80),
            st(3, 0xa000, FinWait1, FinWait2, 41000, 80),
            st(4, 0xa000, FinWait2, Close, 41000, 80),
        ];
        feed(&mut m, &mut d, &evs);
        // The reused SYN meets the old peer in LAST_ACK: a reset from SYN_SENT.
        let mut rst = st(S, 0xa040, SynSent, SynSent, 41000, 80);
        rst.kind = EventKind::ResetSent;
        let r = feed(&mut m, &mut d, &[st(S, 0xa040, Close, SynSent, 0, 80), rst]);
        assert_eq!(kinds(&r), [(FindingKind::TwReuseReset, Status::Raised)]);
        // A reused connection reset soon after: the same finding, updated.
        let mut got = st(30 * S, 0xa040, Established, Established, 41000, 80);
        got.kind = EventKind::ResetReceived;
        let r = feed(
            &mut m,
            &mut d,
            &[
                st(29 * S, 0xa040, SynSent, Established, 41000, 80),
                got,
                st(30 * S, 0xa040, Established, Close, 41000, 80),
            ],
        );
        assert_eq!(
            kinds(&r),
            [
                (FindingKind::TwReuse, Status::Raised),
                (FindingKind::TwReuseReset, Status::Updated)
            ]
        );
    }

    #[test]
    fn synack_and_fin_retransmits() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds::default());
        let mut synack = st(0, 0x5000, SynRecv, SynRecv, 443, 40000);
        synack.kind = EventKind::SynackRetransmit;
        let mut fin = st(0, 0x6000, FinWait1, FinWait1, 40001, 443);
        fin.kind = EventKind::Retransmit;
        let mut data = st(0, 0x7000, Established, Established, 40002, 443);
        data.kind = EventKind::Retransmit;
        let r = feed(&mut m, &mut d, &[synack, fin, data]);
        assert_eq!(
            kinds(&r),
            [
                (FindingKind::SynackRetransmit, Status::Raised),
                (FindingKind::FinRetransmit, Status::Raised)
            ]
        );
    }

    /// One refused connect from `sk` at `ts` towards port 9.
    fn refused(ts: u64, sk: u64) -> Vec<TcpEvent> {
        let mut rst = st(ts + 1, sk, SynSent, SynSent, 40000, 9);
        rst.kind = EventKind::ResetReceived;
        vec![
            st(ts, sk, Close, SynSent, 0, 9),
            rst,
            st(ts + 2, sk, SynSent, Close, 40000, 9),
        ]
    }

    #[test]
    fn event_driven_findings_resolve_after_a_quiet_period() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds {
            resolve_after: Duration::from_secs(5),
            ..Thresholds::default()
        });
        let r = feed(&mut m, &mut d, &refused(0, 0x3000));
        assert_eq!(kinds(&r), [(FindingKind::ConnectRefused, Status::Raised)]);
        // New evidence at 3 s keeps it open past 5 s from the first.
        feed(&mut m, &mut d, &refused(3 * S, 0x3040));
        assert!(d.tick(6 * S, &m).is_empty());
        assert_eq!(d.open_findings().count(), 1);
        let r = d.tick(8 * S + 2, &m);
        assert_eq!(kinds(&r), [(FindingKind::ConnectRefused, Status::Resolved)]);
        assert_eq!(d.open_findings().count(), 0);
        // A later refusal is a new finding, counted from one.
        let r = feed(&mut m, &mut d, &refused(20 * S, 0x3080));
        assert_eq!(kinds(&r), [(FindingKind::ConnectRefused, Status::Raised)]);
        assert_eq!(r[0].finding.evidence["count"], 1);
    }

    #[test]
    fn a_burst_inside_one_interval_is_reported_with_its_final_count() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds::default());
        let mut reports = Vec::new();
        // 2,000 refusals within one second: one report at the first.
        for i in 0..2000u64 {
            reports.extend(feed(
                &mut m,
                &mut d,
                &refused(i * 400_000, 0x10_000 + i * 64),
            ));
        }
        assert_eq!(
            kinds(&reports),
            [(FindingKind::ConnectRefused, Status::Raised)]
        );
        // What is open shows the truth at once...
        let (open, _) = d.open_findings().next().expect("open");
        assert_eq!(open.evidence["count"], 2000);
        // ...and the next tick past the interval reports it.
        assert!(d.tick(5 * S, &m).is_empty());
        let r = d.tick(11 * S, &m);
        assert_eq!(kinds(&r), [(FindingKind::ConnectRefused, Status::Updated)]);
        assert_eq!(r[0].finding.evidence["count"], 2000);
        // Nothing new, nothing more to report.
        assert!(d.tick(30 * S, &m).is_empty());
    }

    #[test]
    fn a_fixed_setting_and_a_deleted_namespace_end_their_findings() {
        let mut d = Detectors::new(Thresholds::default());
        let mut risky = NetnsState::default();
        risky.sysctls.insert("tcp_syncookies".into(), "0".into());
        let r = d.on_netns(NetnsId(9), &risky, S);
        assert_eq!(kinds(&r), [(FindingKind::SysctlRisk, Status::Raised)]);
        // Still risky: still open, nothing new.
        assert!(d.on_netns(NetnsId(9), &risky, 2 * S).is_empty());
        // Fixed: resolved at the next read of the settings.
        let mut fixed = risky.clone();
        fixed.sysctls.insert("tcp_syncookies".into(), "1".into());
        let r = d.on_netns(NetnsId(9), &fixed, 3 * S);
        assert_eq!(kinds(&r), [(FindingKind::SysctlRisk, Status::Resolved)]);

        // Another namespace's finding ends with the namespace; its
        // settings are forgotten, so a namespace that gets the inode
        // again starts clean.
        d.on_netns(NetnsId(12), &risky, 4 * S);
        d.set_retries2(NetnsId(12), 3);
        assert!(d
            .forget_namespaces_except(&[NetnsId(9), NetnsId(12)], 5 * S)
            .is_empty());
        let r = d.forget_namespaces_except(&[NetnsId(9)], 6 * S);
        assert_eq!(kinds(&r), [(FindingKind::SysctlRisk, Status::Resolved)]);
        assert_eq!(r[0].netns, NetnsId(12));
        assert!(!d.retries2.contains_key(&NetnsId(12)));
        assert_eq!(d.open_findings().count(), 0);
    }

    #[test]
    fn time_wait_overflows_end_when_the_counter_stops_moving() {
        let mut d = Detectors::new(Thresholds {
            resolve_after: Duration::from_secs(5),
            ..Thresholds::default()
        });
        let mut state = NetnsState::default();
        state.tcpext.insert("TCPTimeWaitOverflow".into(), 10);
        assert!(d.on_netns(NetnsId(9), &state, 0).is_empty());
        state.tcpext.insert("TCPTimeWaitOverflow".into(), 14);
        let r = d.on_netns(NetnsId(9), &state, S);
        assert_eq!(kinds(&r), [(FindingKind::TimeWaitOverflow, Status::Raised)]);
        let m = Model::new(Limits::default());
        // The counter stays at 14: resolved after the quiet period, and not
        // raised again by the same 4 overflows.
        d.on_netns(NetnsId(9), &state, 3 * S);
        let r = d.tick(7 * S, &m);
        assert_eq!(
            kinds(&r),
            [(FindingKind::TimeWaitOverflow, Status::Resolved)]
        );
        assert!(d.on_netns(NetnsId(9), &state, 8 * S).is_empty());
        state.tcpext.insert("TCPTimeWaitOverflow".into(), 15);
        let r = d.on_netns(NetnsId(9), &state, 9 * S);
        assert_eq!(kinds(&r), [(FindingKind::TimeWaitOverflow, Status::Raised)]);
        assert_eq!(r[0].finding.evidence["TCPTimeWaitOverflow"], 1);
    }

    #[test]
    fn the_open_set_is_bounded_and_evictions_counted() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds::default());
        // Each refusal from a different pid is a finding of its own.
        for i in 0..(MAX_OPEN_FINDINGS as u64 + 5) {
            let mut evs = refused(i * 1000, 0x100_000 + i * 64);
            for e in &mut evs {
                e.pid = 1000 + i as u32;
            }
            feed(&mut m, &mut d, &evs);
        }
        assert_eq!(d.open_findings().count(), MAX_OPEN_FINDINGS);
        assert_eq!(d.evicted, 5);
        // The oldest went first.
        assert!(d
            .open_findings()
            .all(|(f, _)| f.rendered_evidence()["pid"].as_u64() >= Some(1005)));
    }

    /// A CLOSE_WAIT socket two processes hold (a forked child that kept
    /// the descriptor): the finding names the owner and says two hold it;
    /// it waits for a reconciliation to have looked at it in CLOSE_WAIT.
    #[test]
    fn close_wait_findings_wait_for_a_look_and_count_holders() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds {
            close_wait_age: Duration::from_secs(1),
            ..Default::default()
        });
        d.confirm_owners = true;
        feed(
            &mut m,
            &mut d,
            &[
                st(0, 0xb000, Listen, SynRecv, 8080, 40000),
                st(1, 0xb000, SynRecv, Established, 8080, 40000),
                st(S, 0xb000, Established, CloseWait, 8080, 40000),
            ],
        );
        let tuple = m.connections().next().unwrap().tuple;
        // A look before the socket reached CLOSE_WAIT does not vouch for it.
        m.reconcile(NetnsId(1), &[], S / 2, S / 2);
        assert!(
            d.tick(3 * S, &m).is_empty(),
            "not looked at in CLOSE_WAIT yet"
        );
        let listed = crate::model::KernelSocket {
            tuple,
            state: CloseWait,
            pid: 7,
            comm: "app".into(),
            cgroup: 0,
            orphan: false,
            time_wait_left_ns: None,
            holders: [7, 9]
                .map(|pid| crate::host::owners::Owner {
                    pid,
                    comm: "app".into(),
                    cgroup: 0,
                })
                .to_vec(),
            holder_count: 2,
            queue: 0,
            queue_limit: 0,
        };
        m.reconcile(NetnsId(1), &[listed], 3 * S, 3 * S);
        let r = d.tick(4 * S, &m);
        assert_eq!(kinds(&r), [(FindingKind::CloseWaitLeak, Status::Raised)]);
        assert_eq!(r[0].finding.rendered_evidence()["pid"], 7);
        assert_eq!(r[0].finding.rendered_evidence()["holders"], 2);
    }
}

/// Regressions found in review: each failed before its fix.
#[cfg(test)]
mod regressions {
    use super::*;
    use crate::{
        host::sock_diag::{DiagSocket, KernelTimer, TcpHealth},
        kernel::event::OwnerSource,
        model::Limits,
    };
    use TcpState::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn ev(ts: u64, sk: u64, kind: EventKind, old: TcpState, new: TcpState, sport: u16) -> TcpEvent {
        TcpEvent {
            ts_ns: ts,
            skaddr: sk,
            kind,
            pid: 7,
            comm: "app".into(),
            owner: OwnerSource::Connect,
            netns: NetnsId(1),
            saddr: "10.0.0.1".parse().unwrap(),
            sport,
            daddr: "10.0.0.2".parse().unwrap(),
            dport: 443,
            old_state: Some(old),
            new_state: Some(new),
            ..TcpEvent::blank()
        }
    }

    /// An established connection at `sk` from local port `sport`, with
    /// data retransmits at `rtx_ms` (milliseconds).
    fn connection(
        m: &mut Model,
        d: &mut Detectors,
        sk: u64,
        sport: u16,
        rtx_ms: &[u64],
    ) -> FourTuple {
        let mut evs = vec![
            ev(0, sk, EventKind::State, Close, SynSent, 0),
            ev(MS, sk, EventKind::State, SynSent, Established, sport),
        ];
        for ms in rtx_ms {
            evs.push(ev(
                ms * MS,
                sk,
                EventKind::Retransmit,
                Established,
                Established,
                sport,
            ));
        }
        for e in &evs {
            let outcomes = m.apply(e);
            d.on_event(e, &outcomes, m);
        }
        m.connections().find(|c| c.skaddr == sk).unwrap().tuple
    }

    fn dead(silent_ms: u32) -> TcpHealth {
        TcpHealth {
            timer: Some(KernelTimer::Retransmit {
                expires_ms: 3200,
                retransmits: 5,
            }),
            retransmits: 5,
            rto_us: 3_200_000,
            unacked: 2,
            last_data_sent_ms: 500,
            last_ack_recv_ms: silent_ms,
            ..Default::default()
        }
    }

    /// An idle connection (no ACK for 10 minutes because nothing was sent)
    /// retransmits twice in 0.6 s. With the default 30 s threshold,
    /// peer_unresponsive is raised at once, its own evidence saying the
    /// stall is 1 s old: the threshold is compared with tcpi_last_ack_recv
    /// (the idle time), not with how long the retransmissions have lasted.
    #[test]
    fn an_idle_connection_is_not_unresponsive_after_one_second_of_retransmits() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds::default());
        let tuple = connection(&mut m, &mut d, 0x8000, 40_000, &[600_000, 600_200, 600_600]);
        let kernel = TcpHealth {
            timer: Some(KernelTimer::Retransmit {
                expires_ms: 800,
                retransmits: 2,
            }),
            retransmits: 2,
            backoff: 2,
            rto_us: 800_000,
            unacked: 1,
            last_data_sent_ms: 400,
            last_ack_recv_ms: 601_000,
            ..Default::default()
        };
        d.set_health([(tuple, Some(kernel))], 601 * S);
        let r = d.tick(601 * S, &m);
        assert!(
            r.iter()
                .all(|r| r.finding.kind != FindingKind::PeerUnresponsive),
            "raised after a 1 s stall with a 30 s threshold: {:?}",
            r.iter().map(|r| &r.finding.summary).collect::<Vec<_>>()
        );
    }

    /// What a reconciliation learnt about a namespace's sockets (a pending
    /// zero-window probe) outlives the namespace: forget_namespaces_except
    /// forgets retries2, port ranges... but not the health candidates, and
    /// the observer can no longer look them up (it cannot enter a namespace
    /// that is gone, so no answer ever removes them). Each vanished
    /// namespace leaves its entries behind, and they keep taking the
    /// MAX_INSPECTED slots of every tick.
    #[test]
    fn health_candidates_of_a_vanished_namespace_are_forgotten() {
        let m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds::default());
        for netns in 1..=300u32 {
            let s = DiagSocket {
                state: Established,
                local: "10.0.0.1".parse().unwrap(),
                local_port: 443,
                remote: "10.0.0.2".parse().unwrap(),
                remote_port: 40_000,
                inode: 5,
                time_wait_left_ms: None,
                timer: Some(KernelTimer::ZeroWindowProbe { expires_ms: 800 }),
                recv_queue: 0,
                send_queue: 65_536,
            };
            d.on_kernel_sockets(NetnsId(netns), &[s], u64::from(netns) * S);
            // The namespace is deleted before the next reconciliation.
            d.forget_namespaces_except(&[], u64::from(netns) * S + 1);
        }
        let wanted = d.wanted_health(&m);
        assert!(
            wanted.is_empty(),
            "{} connections of deleted namespaces are still to be inspected",
            wanted.len()
        );
    }

    /// A connection with an open peer_unresponsive (the kernel still says
    /// nothing is acknowledged) is dropped from the inspected set once more
    /// than MAX_INSPECTED other connections have had two retransmits at
    /// some point (rtx_run is never cleared, and wanted_health truncates a
    /// list sorted by 4-tuple): its answer is pruned and the finding is
    /// resolved although the peer is as dead as before.
    #[test]
    fn an_open_peer_unresponsive_is_not_resolved_while_the_kernel_says_stalled() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds {
            peer_unresponsive_after: std::time::Duration::from_secs(2),
            ..Default::default()
        });
        let stalled = connection(
            &mut m,
            &mut d,
            0x10_0000,
            60_000,
            &[1000, 1200, 1600, 2400, 4000],
        );
        d.set_health([(stalled, Some(dead(4_000)))], 5 * S);
        assert_eq!(
            kinds(&d.tick(5 * S, &m)),
            [(FindingKind::PeerUnresponsive, Status::Raised)]
        );
        // Busy, healthy connections that each lost two segments once (a
        // burst of loss, recovered: their ACKs flow).
        for i in 0..300u64 {
            connection(
                &mut m,
                &mut d,
                0x20_0000 + i * 64,
                40_000 + i as u16,
                &[5100, 5300],
            );
        }
        let healthy = TcpHealth {
            retransmits: 0,
            unacked: 10,
            rto_us: 200_000,
            last_ack_recv_ms: 5,
            last_data_sent_ms: 5,
            ..Default::default()
        };
        // What the observer does each tick: look up what is wanted.
        for s in 6..10u64 {
            let wanted = d.wanted_health(&m);
            d.set_health(
                wanted.iter().map(|t| {
                    let h = if *t == stalled {
                        dead(4_000 + (s as u32 - 5) * 1000)
                    } else {
                        healthy
                    };
                    (*t, Some(h))
                }),
                s * S,
            );
            let r = d.tick(s * S, &m);
            assert!(
                !kinds(&r).contains(&(FindingKind::PeerUnresponsive, Status::Resolved)),
                "resolved at {s} s while the kernel still has no ACK (inspected: {})",
                wanted.contains(&stalled)
            );
        }
    }

    /// A connection stalls, is reported, recovers (resolved). 16 s later
    /// it stalls again: the first retransmit of the new stall continues the
    /// model's rtx_run of the old one (the gap did not shrink; rtx_run is
    /// never reset when the kernel says the data was acknowledged), so the
    /// re-raised finding dates the stall from the first outage: age 19 s
    /// and an abort predicted 19 s too early, for a stall 0.3 s old.
    #[test]
    fn a_second_stall_is_dated_from_its_own_first_retransmit() {
        let mut m = Model::new(Limits::default());
        let mut d = Detectors::new(Thresholds {
            peer_unresponsive_after: std::time::Duration::from_secs(2),
            ..Default::default()
        });
        let tuple = connection(
            &mut m,
            &mut d,
            0x8000,
            40_000,
            &[1000, 1200, 1600, 2400, 4000],
        );
        d.set_health([(tuple, Some(dead(4_000)))], 5 * S);
        assert_eq!(
            kinds(&d.tick(5 * S, &m)),
            [(FindingKind::PeerUnresponsive, Status::Raised)]
        );
        let recovered = TcpHealth {
            retransmits: 0,
            unacked: 0,
            rto_us: 200_000,
            last_ack_recv_ms: 10,
            last_data_sent_ms: 10,
            ..Default::default()
        };
        d.set_health([(tuple, Some(recovered))], 6 * S);
        assert_eq!(
            kinds(&d.tick(6 * S, &m)),
            [(FindingKind::PeerUnresponsive, Status::Resolved)]
        );
        // The second stall: data sent at 19.8 s, retransmitted at 20.0 s.
        let e = ev(
            20 * S,
            0x8000,
            EventKind::Retransmit,
            Established,
            Established,
            40_000,
        );
        let outcomes = m.apply(&e);
        d.on_event(&e, &outcomes, &m);
        let again = TcpHealth {
            timer: Some(KernelTimer::Retransmit {
                expires_ms: 400,
                retransmits: 1,
            }),
            retransmits: 1,
            rto_us: 400_000,
            unacked: 1,
            last_ack_recv_ms: 14_000,
            last_data_sent_ms: 300,
            ..Default::default()
        };
        d.set_health([(tuple, Some(again))], 20 * S + 300 * MS);
        let r = d.tick(20 * S + 300 * MS, &m);
        for r in r
            .iter()
            .filter(|r| r.finding.kind == FindingKind::PeerUnresponsive)
        {
            let age = r.finding.evidence["age_seconds"].as_f64().unwrap();
            assert!(
                age <= 1.0,
                "the second stall (0.3 s old) is dated {age} s: {}",
                r.finding.summary
            );
        }
    }

    fn kinds(r: &[Report]) -> Vec<(FindingKind, Status)> {
        r.iter().map(|r| (r.finding.kind, r.status)).collect()
    }
}

#[cfg(test)]
mod regression_tests;
#[cfg(test)]
mod review2_tests;
#[cfg(test)]
mod review_tests;
