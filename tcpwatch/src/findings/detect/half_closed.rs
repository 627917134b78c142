//! `close_wait_leak` and `fin_wait2_stall`: sockets left half closed.
//!
//! CLOSE_WAIT that lingers means the peer closed and the application
//! never called close() (`tcp_fin()` in net/ipv4/tcp_input.c moves the
//! socket there and nothing but close() moves it on). FIN_WAIT2 that
//! lingers means this side closed and the peer never did; an orphan's
//! FIN_WAIT2 ends after tcp_fin_timeout, a socket still held by its
//! process waits for as long as the peer does.

use crate::tcp::NetnsId;
use std::{collections::BTreeMap, net::IpAddr};

use super::{secs, Detectors, Driver, Report, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    kernel::event::TcpState,
    model::Model,
};

/// (kind, netns, pid, local port) of sockets waiting in one state.
type WaitKey = (FindingKind, NetnsId, u32, u16);
/// Count, oldest age, comm, local address of such a group, whether
/// some ages are only lower bounds (sockets older than tcpwatch), the most
/// holders of one, and the owner's cgroup.
type Group = (u64, u64, String, IpAddr, bool, u16, u64);

impl Detectors {
    /// CLOSE_WAIT and FIN_WAIT2 past their thresholds, by owner and local port.
    pub(super) fn half_closed(&mut self, out: &mut Vec<Report>, now: u64, model: &Model) {
        let t = self.thresholds;
        // CLOSE_WAIT and FIN_WAIT2 by owner and local port.
        let mut waiting: BTreeMap<WaitKey, Group> = BTreeMap::new();
        for c in model.connections() {
            let (kind, limit) = match c.state {
                TcpState::CloseWait => (FindingKind::CloseWaitLeak, t.close_wait_age),
                TcpState::FinWait2 => (FindingKind::FinWait2Stall, t.fin_wait2_age),
                _ => continue,
            };
            let age = now.saturating_sub(c.state_since_ns);
            if age < limit.as_nanos() as u64 {
                continue;
            }
            // Who holds it is confirmed by the kernel's list (and /proc)
            // at each reconciliation: a leak is reported once one has
            // looked at the socket in this state, so a socket handed to a
            // forked handler is never blamed on the process that accepted it.
            if self.confirm_owners
                && model
                    .reconciled_at(c.tuple.netns)
                    .is_none_or(|at| at <= c.state_since_ns)
            {
                continue;
            }
            let entry = waiting
                .entry((kind, c.tuple.netns, c.pid, c.tuple.local_port))
                .or_insert((0, 0, c.comm.to_string(), c.tuple.local, false, 0, c.cgroup));
            entry.0 += 1;
            entry.1 = entry.1.max(age);
            entry.4 |= !c.state_age_known;
            entry.5 = entry.5.max(c.holders);
        }
        for (
            (kind, netns, pid, lport),
            (count, oldest, comm, laddr, lower_bound, holders, cgroup),
        ) in waiting
        {
            let at_least = if lower_bound { "at least " } else { "" };
            let subject = Subject::ProcessPort {
                netns,
                pid,
                port: lport,
            };
            let who = Who {
                pid: Some(pid),
                comm: Some(comm.clone()),
                laddr: Some(laddr),
                lport: Some(lport),
                holders: Some(holders),
                cgroup,
                ..Default::default()
            };
            let oldest_s = secs(oldest);
            self.observe(out, kind, subject, now, count, Driver::Tick, |count| {
                let f = if kind == FindingKind::CloseWaitLeak {
                    Finding::new(
                        kind,
                        Severity::Warning,
                        format!("{comm} (pid {pid}) holds {count} connections on local port {lport} in CLOSE_WAIT, the oldest for {at_least}{oldest_s} s: it is not calling close()"),
                    )
                    .remedy(
                        "The peer closed its side and the kernel waits for this process to close() the \
                         socket; nothing in TCP ends CLOSE_WAIT. Find where the application drops the \
                         connection without closing it (error paths, pools that never evict).",
                    )
                } else {
                    Finding::new(
                        kind,
                        Severity::Warning,
                        format!("{comm} (pid {pid}) has {count} half-closed connections on local port {lport} stuck in FIN_WAIT2, the oldest for {at_least}{oldest_s} s"),
                    )
                    .remedy(
                        "This side shut down writing and the peer never closes its side; tcp_fin_timeout \
                         limits only orphaned sockets, so a process that still holds the socket waits \
                         forever: close it, or fix the peer.",
                    )
                };
                who.apply(f.evidence("count", count).evidence("age_seconds", oldest_s))
            });
        }
    }
}
