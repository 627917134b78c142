//! `orphan_overflow`: more orphaned sockets than `tcp_max_orphans` allows,
//! and the resets the kernel sends instead of FINs because of it.
//!
//! A socket closed by its application while data or its FIN is still
//! unacknowledged (FIN_WAIT1, CLOSING, LAST_ACK) is an orphan: the kernel
//! finishes it alone. The host-wide count is bounded by `tcp_max_orphans`
//! (and by `tcp_mem`); past it, `tcp_close()` and the retransmit timers
//! (`tcp_check_oom()`, `tcp_out_of_resources()` in net/ipv4/) abort
//! orphans with a reset instead of finishing them, count TcpExt
//! `TCPAbortOnMemory` in the socket's namespace (reset reason
//! `TCP_ABORT_ON_MEMORY`) and log "too many orphaned sockets". The peer
//! then sees a reset where it expected the end of the data.
use crate::tcp::NetnsId;
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use super::{Detectors, Driver, Moved, Report, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    host::netns_state::NetnsState,
    host::sock_diag::DiagSocket,
    kernel::event::TcpState,
    model::Model,
};

/// Share of tcp_max_orphans at which the orphan count alone is reported.
const PRESSURE: f64 = 0.8;
/// Share under which that report ends: a count hovering at the line does
/// not raise and resolve it at every other read.
const PRESSURE_OVER: f64 = 0.7;

#[derive(Debug, Default)]
pub(super) struct Orphans {
    /// `tcp_max_orphans` (global; read in the initial namespace).
    max: Option<u64>,
    /// The host's orphan count at the last look.
    count: Option<u64>,
    /// The namespace whose settings carry `tcp_max_orphans`: the host's.
    host_netns: Option<NetnsId>,
    /// TCPAbortOnMemory by namespace: (last value, moved since the look before).
    aborts: HashMap<NetnsId, Moved>,
}

impl Orphans {
    pub(super) fn forget_namespaces_except(&mut self, alive: &[NetnsId]) {
        self.aborts.retain(|n, _| alive.contains(n));
    }
}

fn pressure(netns: NetnsId) -> Subject {
    Subject::Orphans {
        netns,
        aborted: false,
    }
}

impl Detectors {
    /// A namespace's orphan settings and counters, read at a reconciliation.
    pub(super) fn note_orphans(&mut self, netns: NetnsId, state: &NetnsState) {
        let o = &mut self.orphans;
        if let Some(max) = state.uint("tcp_max_orphans") {
            o.max = Some(max);
            o.host_netns = Some(netns);
        }
        if state.orphans.is_some() {
            o.count = state.orphans;
        }
        let aborts = state.counter("TCPAbortOnMemory");
        o.aborts
            .entry(netns)
            .or_insert(Moved::first(aborts))
            .read(aborts);
        // The pressure finding is a condition of these settings and counts:
        // it stays open while each read still shows it (this read is
        // followed by `on_orphans`, which updates it).
        if self.orphans_near_limit(netns) {
            let key = (FindingKind::OrphanOverflow, pressure(netns));
            if let Some(open) = self.open.get_mut(&key) {
                open.seen = true;
            }
        }
    }

    fn orphans_near_limit(&self, netns: NetnsId) -> bool {
        let o = &self.orphans;
        let open = self
            .open
            .contains_key(&(FindingKind::OrphanOverflow, pressure(netns)));
        let share = if open { PRESSURE_OVER } else { PRESSURE };
        o.host_netns == Some(netns)
            && matches!((o.count, o.max), (Some(c), Some(m)) if m > 0 && c as f64 >= m as f64 * share)
    }

    /// After a reconciliation of `netns`: resets instead of FINs in it, or
    /// (in the host's namespace) orphans near the limit, with the processes
    /// whose closed connections are still being finished.
    pub fn on_orphans(
        &mut self,
        netns: NetnsId,
        sockets: &[DiagSocket],
        model: &Model,
        now: u64,
    ) -> Vec<Report> {
        let mut out = Vec::new();
        let o = &self.orphans;
        let new_aborts = o.aborts.get(&netns).map_or(0, |a| a.moved);
        let near_limit = self.orphans_near_limit(netns);
        if new_aborts == 0 && !near_limit {
            return out;
        }
        let (count, max) = (o.count, o.max);
        // Who closed the connections the kernel is still finishing here:
        // orphans only (listed without an inode), not a half-close its
        // process still holds.
        let orphaned: HashSet<(IpAddr, u16, IpAddr, u16)> = sockets
            .iter()
            .filter(|s| {
                s.inode == 0
                    && matches!(
                        s.state,
                        TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck
                    )
            })
            .map(|s| (s.local, s.local_port, s.remote, s.remote_port))
            .collect();
        let mut closers: HashMap<(u32, String), (u64, u64)> = HashMap::new();
        for c in model.connections().filter(|c| c.tuple.netns == netns) {
            let t = &c.tuple;
            if c.pid != 0 && orphaned.contains(&(t.local, t.local_port, t.remote, t.remote_port)) {
                let e = closers
                    .entry((c.pid, c.comm.to_string()))
                    .or_insert((0, c.cgroup));
                e.0 += 1;
            }
        }
        let mut closers: Vec<((u32, String), (u64, u64))> = closers.into_iter().collect();
        closers.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        let top = closers
            .first()
            .cloned()
            .map(|(owner, (n, cgroup))| (owner, n, cgroup));
        let who = Who {
            pid: top.as_ref().map(|((pid, _), _, _)| *pid),
            comm: top.as_ref().map(|((_, comm), _, _)| comm.clone()),
            cgroup: top.as_ref().map_or(0, |(_, _, cgroup)| *cgroup),
            ..Default::default()
        };
        let by = match &top {
            Some(((pid, comm), n, _)) => {
                format!("; {n} of those still closing here were closed by {comm} (pid {pid})")
            }
            None => String::new(),
        };
        let limit = match (count, max) {
            (Some(c), Some(m)) => format!("{c} orphaned sockets on the host, tcp_max_orphans={m}"),
            (Some(c), None) => format!("{c} orphaned sockets on the host"),
            _ => "orphaned sockets over the limit".to_owned(),
        };
        let (severity, driver, subject, total) = if new_aborts > 0 {
            let subject = Subject::Orphans {
                netns,
                aborted: true,
            };
            let total = self
                .open
                .get(&(FindingKind::OrphanOverflow, subject.clone()))
                .map_or(0, |o| o.count)
                + new_aborts;
            (Severity::Critical, Driver::Event, subject, total)
        } else {
            (
                Severity::Warning,
                Driver::Settings,
                pressure(netns),
                count.unwrap_or(0),
            )
        };
        let summary = if new_aborts > 0 {
            format!("the kernel reset {total} connections instead of finishing them (too many orphaned sockets or TCP memory pressure: TCPAbortOnMemory); {limit}{by}")
        } else {
            format!("{limit}: {}% of the limit; past it the kernel resets closing connections instead of finishing them{by}", count.zip(max).map_or(0, |(c, m)| c * 100 / m.max(1)))
        };
        self.observe(
            &mut out,
            FindingKind::OrphanOverflow,
            subject,
            now,
            total,
            driver,
            |total| {
                who.apply(
                Finding::new(FindingKind::OrphanOverflow, severity, summary)
                    .evidence("count", total)
                    .evidence("orphans", count)
                    .evidence("tcp_max_orphans", max)
                    .evidence("TCPAbortOnMemory_last", new_aborts),
            )
            .remedy(
                "A connection closed while data or its FIN is unacknowledged becomes an orphan \
                 that the kernel finishes alone (FIN_WAIT1, CLOSING, LAST_ACK), retrying for \
                 tcp_orphan_retries. Past net.ipv4.tcp_max_orphans orphans (or under tcp_mem \
                 pressure) the kernel resets them instead: the peer loses the end of the data. \
                 Find why closes do not complete (peers that stopped reading, unreachable \
                 clients), lower tcp_orphan_retries so orphans give up sooner, and raise \
                 tcp_max_orphans only with the memory for it (up to about 64 KiB each).",
            )
            },
        );
        out
    }
}
