//! `connect_failed`: connects that failed before a SYN left, because no
//! local port was free for the destination (EADDRNOTAVAIL).
//!
//! `tcp_v4_connect()` (net/ipv4/tcp_ipv4.c; `tcp_v6_connect()` alike)
//! enters SYN_SENT and then asks `inet_hash_connect()` for a local port;
//! when every port of `ip_local_port_range` is taken towards that
//! destination (by connections and TIME_WAIT), it moves the socket back to
//! CLOSE and connect() returns EADDRNOTAVAIL. No segment is sent, so no
//! retransmit or reset explains it: the model ends such a connection as
//! [`EndReason::NoLocalPort`]. The same destination's
//! `port_exhaustion_risk` then says the range is exhausted, not at risk.
use crate::tcp::NetnsId;
use std::{collections::HashMap, net::IpAddr};

use super::{endpoint, Detectors, Driver, Report, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    model::{EndReason, Finished},
};

/// Destinations remembered with their latest failure, at most.
const MAX_REMEMBERED: usize = 4096;

/// (netns, remote address, remote port) -> the latest failed connect.
pub(super) type Failures = HashMap<(NetnsId, IpAddr, u16), u64>;

impl Detectors {
    /// A connect that found no local port.
    pub(super) fn on_connect_failed(&mut self, f: &Finished, now: u64, out: &mut Vec<Report>) {
        debug_assert_eq!(f.end, EndReason::NoLocalPort);
        let c = &f.connection;
        let t = &c.tuple;
        let destination = (t.netns, t.remote, t.remote_port);
        if self.no_local_port.len() >= MAX_REMEMBERED
            && !self.no_local_port.contains_key(&destination)
        {
            let quiet = self.thresholds.resolve_after.as_nanos() as u64;
            self.no_local_port
                .retain(|_, at| now.saturating_sub(*at) < quiet);
        }
        if self.no_local_port.len() < MAX_REMEMBERED
            || self.no_local_port.contains_key(&destination)
        {
            self.no_local_port.insert(destination, now);
        }
        let subject = Subject::ProcessPeer {
            netns: t.netns,
            pid: c.pid,
            addr: t.remote,
            port: t.remote_port,
        };
        let count = self.bump(FindingKind::ConnectFailed, &subject);
        let who = Who {
            pid: (c.pid != 0).then_some(c.pid),
            comm: (c.pid != 0).then(|| c.comm.to_string()),
            raddr: Some(t.remote),
            rport: Some(t.remote_port),
            cgroup: c.cgroup,
            ..Default::default()
        };
        let named = if c.pid == 0 {
            "a process".to_owned()
        } else {
            format!("{} (pid {})", c.comm, c.pid)
        };
        let peer = endpoint(t.remote, t.remote_port);
        self.observe(out, FindingKind::ConnectFailed, subject, now, count, Driver::Event, |count| {
            who.apply(
                Finding::new(
                    FindingKind::ConnectFailed,
                    Severity::Critical,
                    format!(
                        "{named} had {count} connects to {peer} fail with EADDRNOTAVAIL: no local port was free, the ephemeral port range is exhausted"
                    ),
                )
                .evidence("count", count)
                .evidence("reason", EndReason::NoLocalPort.name())
                .remedy(
                    "Every port of net.ipv4.ip_local_port_range is taken towards this destination by \
                     open connections and by TIME_WAIT (60 s after each connection this host closed \
                     first), so connect() fails at once, without a packet. Reuse connections \
                     (keep-alive, pools), let the server close first, spread over more local or \
                     destination addresses, or widen ip_local_port_range; tcp_tw_reuse=1 lets new \
                     connections take over TIME_WAIT ports, with its own risks.",
                ),
            )
        });
    }

    /// Whether a connect towards the destination found no local port
    /// within the last `resolve_after`.
    pub(super) fn ports_exhausted(
        &self,
        netns: NetnsId,
        raddr: IpAddr,
        rport: u16,
        now: u64,
    ) -> bool {
        let quiet = self.thresholds.resolve_after.as_nanos() as u64;
        self.no_local_port
            .get(&(netns, raddr, rport))
            .is_some_and(|at| now.saturating_sub(*at) < quiet)
    }
}
