//! `time_wait_buildup`: TIME_WAIT piling up on one local endpoint (this
//! host is a server that closes first) or towards one remote endpoint
//! (a client that opens and closes faster than TIME_WAIT's 60 s drain).
//! The active closer holds TIME_WAIT (`tcp_time_wait()` in
//! net/ipv4/tcp_minisocks.c), pinning its 4-tuple.

use crate::tcp::NetnsId;
use std::{collections::BTreeMap, net::IpAddr};

use super::{endpoint, Detectors, Driver, Report, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    kernel::event::TcpState,
    model::{Model, Opener},
};

/// (netns, server side, address, port) of a TIME_WAIT group.
type TimeWaitKey = (NetnsId, bool, IpAddr, u16);

impl Detectors {
    /// TIME_WAIT counted by local endpoint (server side) or remote endpoint.
    pub(super) fn time_wait_buildup(&mut self, out: &mut Vec<Report>, now: u64, model: &Model) {
        let t = self.thresholds;
        // TIME_WAIT towards one remote endpoint (this host as client), or on
        // one local port (this host as a server that closes first).
        let mut tw: BTreeMap<TimeWaitKey, (u64, u32, String, u64)> = BTreeMap::new();
        for (tuple, entry) in model
            .time_wait()
            .filter(|(_, e)| e.substate == TcpState::TimeWait)
        {
            let server = entry.opener == Opener::Passive;
            let key = if server {
                (tuple.netns, true, tuple.local, tuple.local_port)
            } else {
                (tuple.netns, false, tuple.remote, tuple.remote_port)
            };
            let e = tw
                .entry(key)
                .or_insert((0, entry.pid, entry.comm.to_string(), entry.cgroup));
            e.0 += 1;
        }
        for ((netns, server, addr, port), (count, pid, comm, cgroup)) in tw {
            if count < t.time_wait_count {
                continue;
            }
            let subject = Subject::TimeWaitGroup {
                netns,
                local: server,
                addr,
                port,
            };
            let ep = endpoint(addr, port);
            let who = if server {
                Who {
                    pid: Some(pid),
                    comm: Some(comm.clone()),
                    laddr: Some(addr),
                    lport: Some(port),
                    cgroup,
                    ..Default::default()
                }
            } else {
                Who {
                    pid: Some(pid),
                    comm: Some(comm.clone()),
                    raddr: Some(addr),
                    rport: Some(port),
                    cgroup,
                    ..Default::default()
                }
            };
            self.observe(out, FindingKind::TimeWaitBuildup, subject, now, count, Driver::Tick, |count| {
                let f = if server {
                    Finding::new(
                        FindingKind::TimeWaitBuildup,
                        Severity::Warning,
                        format!("{count} connections accepted on {ep} are in TIME_WAIT here: this server closes first"),
                    )
                    .remedy(
                        "The side that closes first keeps TIME_WAIT for 60 s. A server that closes first \
                         usually has HTTP keep-alive off, a short keep-alive timeout or a keep-alive \
                         request limit: let clients close, or keep connections open longer.",
                    )
                } else {
                    Finding::new(
                        FindingKind::TimeWaitBuildup,
                        Severity::Warning,
                        format!("{count} connections to {ep} are in TIME_WAIT, each pinning an ephemeral port for 60 s"),
                    )
                    .remedy(
                        "This host opens and closes connections to that endpoint faster than TIME_WAIT \
                         drains: pool and reuse connections (keep-alive); tcp_tw_reuse only hides it.",
                    )
                };
                who.apply(f.evidence("count", count))
            });
        }
    }
}
