//! Findings about a peer's health, confirmed with the kernel before they
//! accuse anyone: `peer_unresponsive` (data retransmitted with backoff,
//! nothing acknowledged) and `zero_window_stall` (the peer keeps its
//! receive window shut while data waits).
//!
//! Events only hint: a run of retransmits, or a zero-window probe timer or
//! pending RTO retransmits seen in a reconciliation. The detector asks for
//! those connections' `tcp_info` ([`Detectors::wanted_health`]; the observer
//! reads it through sock_diag and hands it back with
//! [`Detectors::set_health`]) and raises only when the kernel agrees. A
//! bottleneck that drops segments retransmits too, but its ACKs keep coming:
//! `tcpi_last_ack_recv` tells the two apart, which events cannot.
use crate::tcp::NetnsId;
use std::collections::{HashMap, HashSet};

use super::{endpoint, secs, Detectors, Driver, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    host::sock_diag::{DiagSocket, KernelTimer, TcpHealth},
    kernel::event::TcpState,
    model::{Connection, FourTuple, Model},
};

/// Connections checked with the kernel in one tick, at most.
pub const MAX_INSPECTED: usize = 256;

/// The kernel's longest retransmission timeout (TCP_RTO_MAX).
const RTO_MAX_NS: u64 = 120_000_000_000;

/// What the kernel said, and which connections it hinted at.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// The last answer for each connection inspected.
    answers: HashMap<FourTuple, TcpHealth>,
    /// Connections seen with a zero window (persist timer), since when.
    zero_window_since: HashMap<FourTuple, u64>,
    /// Connections a reconciliation listed with RTO retransmits pending.
    retransmitting: HashMap<FourTuple, u64>,
    /// Connections with a health finding open: always looked at first.
    open: HashSet<FourTuple>,
    /// When the kernel last said a connection's retransmits were over (an
    /// ACK came): its run of retransmits is wanted again only once it
    /// retransmits after that.
    recovered_at: HashMap<FourTuple, u64>,
    /// The first data retransmit seen since the kernel last said the
    /// connection recovered: when its current stall began.
    first_retransmit: HashMap<FourTuple, u64>,
}

impl Health {
    /// Forgets what was learnt of namespaces that no longer exist.
    pub(super) fn forget_namespaces_except(&mut self, alive: &[NetnsId]) {
        self.answers.retain(|t, _| alive.contains(&t.netns));
        self.zero_window_since
            .retain(|t, _| alive.contains(&t.netns));
        self.retransmitting.retain(|t, _| alive.contains(&t.netns));
        self.open.retain(|t| alive.contains(&t.netns));
        self.recovered_at.retain(|t, _| alive.contains(&t.netns));
        self.first_retransmit
            .retain(|t, _| alive.contains(&t.netns));
    }
}

fn live_state(state: TcpState) -> bool {
    matches!(
        state,
        TcpState::Established
            | TcpState::CloseWait
            | TcpState::FinWait1
            | TcpState::LastAck
            | TcpState::Closing
    )
}

impl Detectors {
    /// The connections whose `tcp_info` the next tick needs: those with a
    /// run of retransmits, those a reconciliation saw retransmitting or
    /// behind a zero window, and those with a health finding open.
    /// Sorted; at most [`MAX_INSPECTED`], open findings first, then what
    /// the kernel hinted at, then runs of retransmits the kernel has not
    /// said are over.
    pub fn wanted_health(&self, model: &Model) -> Vec<FourTuple> {
        let h = &self.health;
        let runs = model
            .connections()
            .filter(|c| live_state(c.state))
            .filter(|c| {
                c.rtx_run.as_deref().is_some_and(|run| {
                    run.count >= 2
                        && h.recovered_at
                            .get(&c.tuple)
                            .is_none_or(|at| run.last_ns > *at)
                })
            })
            .map(|c| c.tuple);
        let mut seen = HashSet::new();
        let mut wanted: Vec<FourTuple> = h
            .open
            .iter()
            .chain(h.retransmitting.keys())
            .chain(h.zero_window_since.keys())
            .copied()
            .chain(runs)
            .filter(|t| seen.insert(*t))
            .take(MAX_INSPECTED)
            .collect();
        wanted.sort();
        wanted
    }

    /// A data retransmit: the first since the last recovery dates the stall.
    pub(super) fn note_retransmit(&mut self, ev: &crate::kernel::event::TcpEvent) {
        if !ev.new_state.is_some_and(live_state) {
            return;
        }
        let tuple = FourTuple::of(ev);
        let first = &mut self.health.first_retransmit;
        // Bounded: past the cap, only connections the model still has stay.
        if first.len() >= 4 * MAX_INSPECTED && !first.contains_key(&tuple) {
            return;
        }
        first.entry(tuple).or_insert(ev.ts_ns);
    }

    /// The kernel's answers for the connections asked about: their health,
    /// or None for a connection the kernel no longer has. Connections not
    /// answered keep their previous answer until they are no longer wanted.
    pub fn set_health(
        &mut self,
        answers: impl IntoIterator<Item = (FourTuple, Option<TcpHealth>)>,
        now: u64,
    ) {
        for (tuple, answer) in answers {
            match answer {
                Some(h) => {
                    let shut = matches!(h.timer, Some(KernelTimer::ZeroWindowProbe { .. }))
                        || h.snd_wnd == Some(0) && h.send_queue > 0;
                    if shut {
                        self.health.zero_window_since.entry(tuple).or_insert(now);
                    } else {
                        self.health.zero_window_since.remove(&tuple);
                    }
                    if h.retransmits == 0 {
                        self.health.retransmitting.remove(&tuple);
                        self.health.recovered_at.insert(tuple, now);
                        self.health.first_retransmit.remove(&tuple);
                    } else {
                        self.health.recovered_at.remove(&tuple);
                    }
                    self.health.answers.insert(tuple, h);
                }
                None => {
                    self.health.answers.remove(&tuple);
                    self.health.zero_window_since.remove(&tuple);
                    self.health.retransmitting.remove(&tuple);
                    self.health.recovered_at.remove(&tuple);
                    self.health.first_retransmit.remove(&tuple);
                }
            }
        }
    }

    /// What a reconciliation listed in `netns`: connections with a pending
    /// zero-window probe or RTO retransmits become candidates; the others
    /// of that namespace stop being ones.
    pub fn on_kernel_sockets(&mut self, netns: NetnsId, sockets: &[DiagSocket], now: u64) {
        self.note_idle_candidates(netns, sockets);
        let h = &mut self.health;
        let mut zero = HashMap::new();
        let mut retransmitting = HashMap::new();
        for s in sockets.iter().filter(|s| live_state(s.state)) {
            let tuple = FourTuple {
                netns,
                local: s.local,
                local_port: s.local_port,
                remote: s.remote,
                remote_port: s.remote_port,
            };
            match s.timer {
                Some(KernelTimer::ZeroWindowProbe { .. }) => {
                    let since = h.zero_window_since.get(&tuple).copied().unwrap_or(now);
                    zero.insert(tuple, since);
                }
                Some(KernelTimer::Retransmit { retransmits, .. }) if retransmits > 0 => {
                    let since = h.retransmitting.get(&tuple).copied().unwrap_or(now);
                    retransmitting.insert(tuple, since);
                }
                _ => {}
            }
        }
        h.zero_window_since.retain(|t, _| t.netns != netns);
        h.retransmitting.retain(|t, _| t.netns != netns);
        h.answers.retain(|t, _| {
            t.netns != netns || zero.contains_key(t) || retransmitting.contains_key(t)
        });
        // Bounded like everything else: a host with thousands of stalled
        // connections is reported on the first of them.
        h.zero_window_since
            .extend(zero.into_iter().take(MAX_INSPECTED));
        h.retransmitting
            .extend(retransmitting.into_iter().take(MAX_INSPECTED));
    }

    /// Forgets the answers of connections no longer wanted, and what is
    /// remembered of connections that are gone.
    fn prune_health(&mut self, wanted: &[FourTuple], model: &Model) {
        self.health
            .answers
            .retain(|t, _| wanted.binary_search(t).is_ok());
        let h = &mut self.health;
        if h.recovered_at.len() > MAX_INSPECTED || h.first_retransmit.len() >= 2 * MAX_INSPECTED {
            let live: HashSet<FourTuple> = model.connections().map(|c| c.tuple).collect();
            h.recovered_at.retain(|t, _| live.contains(t));
            h.first_retransmit.retain(|t, _| live.contains(t));
        }
    }

    /// Data unacknowledged and retransmitted with backoff for longer than
    /// `peer_unresponsive_after`, the kernel agreeing that no ACK came.
    pub(super) fn peer_unresponsive(
        &mut self,
        out: &mut Vec<super::Report>,
        now: u64,
        model: &Model,
    ) {
        let wanted = self.wanted_health(model);
        self.prune_health(&wanted, model);
        // Rebuilt by this tick: what it reports stays open.
        self.health.open.clear();
        let after_ms = self.thresholds.peer_unresponsive_after.as_millis() as u64;
        let by_tuple: HashMap<FourTuple, &Connection> =
            model.connections().map(|c| (c.tuple, c)).collect();
        let mut stalled = Vec::new();
        for (tuple, h) in &self.health.answers {
            // The kernel's own view: RTO timeouts since the last ACK, data
            // outstanding, and no ACK for the whole threshold.
            if h.retransmits == 0 || h.unacked == 0 || u64::from(h.last_ack_recv_ms) < after_ms {
                continue;
            }
            let Some(c) = by_tuple.get(tuple) else {
                continue;
            };
            if !live_state(c.state) {
                continue;
            }
            // The stall began at the first retransmit since the kernel last
            // said the connection recovered, and never before the last ACK
            // (an idle connection has had none for as long as it idled).
            // Without a retransmit seen (a stall older than tcpwatch's
            // look), when new data last went out after the last ACK.
            let last_ack = now.saturating_sub(u64::from(h.last_ack_recv_ms) * 1_000_000);
            let start = match self.health.first_retransmit.get(tuple) {
                Some(first) => (*first).max(last_ack),
                None => now.saturating_sub(
                    u64::from(h.last_ack_recv_ms.min(h.last_data_sent_ms)) * 1_000_000,
                ),
            };
            // An idle connection has had no ACK for as long as it was idle:
            // what counts is how long the retransmissions have lasted.
            if now.saturating_sub(start) < after_ms * 1_000_000 {
                continue;
            }
            stalled.push((
                *tuple,
                (c.pid, c.comm.to_string(), c.cgroup),
                c.holders,
                *h,
                start,
            ));
        }
        self.health.open.extend(stalled.iter().map(|s| s.0));
        for (tuple, (pid, comm, cgroup), holders, h, start) in stalled {
            let retries2 = self.retries2.get(&tuple.netns).copied().unwrap_or(15);
            let stalled_for = now.saturating_sub(start);
            let next_ns = match h.timer {
                Some(KernelTimer::Retransmit { expires_ms, .. }) => {
                    u64::from(expires_ms) * 1_000_000
                }
                _ => u64::from(h.rto_us) * 1_000,
            };
            let left = secs(predicted_abort_ns(
                stalled_for,
                next_ns,
                u64::from(h.rto_us) * 1_000,
                retries2,
            ));
            let stalled_s = secs(stalled_for);
            let silent_s = secs(u64::from(h.last_ack_recv_ms) * 1_000_000);
            let subject = Subject::Connection {
                netns: tuple.netns,
                local: tuple.local,
                local_port: tuple.local_port,
                remote: tuple.remote,
                remote_port: tuple.remote_port,
            };
            let who = Who {
                pid: Some(pid),
                comm: Some(comm.clone()),
                laddr: Some(tuple.local),
                lport: Some(tuple.local_port),
                raddr: Some(tuple.remote),
                rport: Some(tuple.remote_port),
                holders: Some(holders),
                cgroup,
            };
            let peer = endpoint(tuple.remote, tuple.remote_port);
            let count = u64::from(h.retransmits);
            self.observe(out, FindingKind::PeerUnresponsive, subject, now, count, Driver::Tick, |count| {
                who.apply(
                    Finding::new(
                        FindingKind::PeerUnresponsive,
                        Severity::Warning,
                        format!("{comm} (pid {pid}) has retransmitted data to {peer} {count} times over {stalled_s} s without an answer (the kernel has had no ACK for {silent_s} s); the kernel gives up in about {left} s"),
                    )
                    .evidence("count", count)
                    .evidence("age_seconds", stalled_s)
                    .evidence("seconds_since_ack", silent_s)
                    .evidence("seconds_left", left)
                    .evidence("rto_seconds", h.rto_us as f64 / 1e6)
                    .evidence("unacked_segments", h.unacked)
                    .evidence("tcp_retries2", retries2)
                    .remedy(
                        "The peer host crashed, lost power or its network, or a firewall drops its packets: \
                         TCP cannot tell, and retransmits with backoff until tcp_retries2 runs out. \
                         Set TCP_USER_TIMEOUT (or lower net.ipv4.tcp_retries2) where a dead peer must \
                         be noticed sooner, and check the peer.",
                    ),
                )
            });
        }
    }

    /// A zero window for longer than `zero_window_after` while data waits.
    pub(super) fn zero_window_stall(
        &mut self,
        out: &mut Vec<super::Report>,
        now: u64,
        model: &Model,
    ) {
        let after = self.thresholds.zero_window_after.as_nanos() as u64;
        let by_tuple: HashMap<FourTuple, &Connection> =
            model.connections().map(|c| (c.tuple, c)).collect();
        let mut stalled = Vec::new();
        for (tuple, since) in &self.health.zero_window_since {
            let Some(h) = self.health.answers.get(tuple) else {
                continue;
            };
            let Some(c) = by_tuple.get(tuple) else {
                continue;
            };
            if !matches!(
                c.state,
                TcpState::Established | TcpState::FinWait1 | TcpState::CloseWait
            ) || now.saturating_sub(*since) < after
            {
                continue;
            }
            stalled.push((
                *tuple,
                (c.pid, c.comm.to_string(), c.cgroup),
                c.state,
                c.holders,
                *h,
                *since,
            ));
        }
        self.health.open.extend(stalled.iter().map(|s| s.0));
        for (tuple, (pid, comm, cgroup), state, holders, h, since) in stalled {
            let retries2 = self.retries2.get(&tuple.netns).copied().unwrap_or(15);
            let age_s = secs(now.saturating_sub(since));
            let peer = endpoint(tuple.remote, tuple.remote_port);
            let subject = Subject::Connection {
                netns: tuple.netns,
                local: tuple.local,
                local_port: tuple.local_port,
                remote: tuple.remote,
                remote_port: tuple.remote_port,
            };
            let who = Who {
                pid: Some(pid),
                comm: Some(comm.clone()),
                laddr: Some(tuple.local),
                lport: Some(tuple.local_port),
                raddr: Some(tuple.remote),
                rport: Some(tuple.remote_port),
                holders: Some(holders),
                cgroup,
            };
            let probes = u64::from(h.probes);
            let waiting = h.send_queue;
            let answering = if probes == 0 {
                "the peer answers the window probes, so it is alive and not reading"
            } else {
                "window probes go unanswered"
            };
            self.observe(out, FindingKind::ZeroWindowStall, subject, now, probes, Driver::Tick, |probes| {
                who.apply(
                    Finding::new(
                        FindingKind::ZeroWindowStall,
                        Severity::Warning,
                        format!("{comm} (pid {pid}) has {waiting} bytes waiting for {peer} in {state}, whose receive window has been zero for {age_s} s; {answering} ({probes} unanswered)"),
                    )
                    .evidence("count", probes)
                    .evidence("probes", probes)
                    .evidence("age_seconds", age_s)
                    .evidence("bytes_waiting", waiting)
                    .evidence("state", state.name())
                    .evidence("tcp_retries2", retries2)
                    .remedy(
                        "The peer stopped reading: its application is stuck or too slow, or it vanished \
                         behind a full window. The kernel sends window probes with backoff; a peer that \
                         answers them keeps the connection (and a FIN_WAIT1 after close()) open forever, \
                         one that does not is dropped after tcp_retries2 unanswered probes \
                         (tcp_orphan_retries once the socket is closed). Find why the peer does not \
                         read; TCP_USER_TIMEOUT bounds the wait.",
                    ),
                )
            });
        }
    }
}

/// Nanoseconds from now until the kernel aborts a connection whose
/// retransmissions started `stalled_ns` ago, whose timer fires next in
/// `next_ns` with the current (backed-off) RTO `rto_ns`. The kernel's test
/// (`retransmits_timed_out()` in net/ipv4/tcp_timer.c) runs at each timer
/// expiry: give up once the time since the first retransmit reaches
/// `tcp_model_timeout(tcp_retries2, TCP_RTO_MIN)`; otherwise retransmit and
/// double the RTO (up to TCP_RTO_MAX). With a real RTO above 200 ms the
/// expiries come later than the model, which is why the model alone
/// misjudges: the abort is at the first expiry past the budget.
pub fn predicted_abort_ns(stalled_ns: u64, next_ns: u64, rto_ns: u64, retries2: u64) -> u64 {
    let budget = crate::findings::audit::model_timeout_ms(retries2, 200) * 1_000_000;
    let mut at = next_ns;
    let mut rto = rto_ns.max(1);
    // The RTO doubles up to its cap: a bounded number of steps.
    for _ in 0..128 {
        if stalled_ns + at >= budget {
            return at;
        }
        rto = (rto * 2).min(RTO_MAX_NS);
        at += rto;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_abort_comes_at_the_first_expiry_past_the_budget() {
        // tcp_retries2=5: a budget of 200 ms * 63 = 12.6 s. A 1 s RTO
        // (a slow path) fires at 1, 3, 7, 15 s after the first retransmit
        // (at 0): the kernel gives up at 15 s, not at 12.6 s.
        assert_eq!(predicted_abort_ns(0, S, S, 5), 15 * S);
        assert_eq!(predicted_abort_ns(S, 2 * S, 2 * S, 5), 14 * S);
        // With the minimum RTO the expiries meet the model: 12.6 s.
        let ms = 1_000_000;
        assert_eq!(
            predicted_abort_ns(200 * ms, 400 * ms, 400 * ms, 5),
            12_400 * ms
        );
        // Capped at TCP_RTO_MAX: tcp_retries2=15 gives 924.6 s.
        let left = predicted_abort_ns(0, 200 * ms, 200 * ms, 15);
        assert!((924 * S..=1045 * S).contains(&left), "{left}");
    }
}
