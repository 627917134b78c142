//! `port_exhaustion_risk`: the ephemeral ports from one local address to
//! one destination running out. Every open outgoing connection and every
//! TIME_WAIT of this host as the active closer holds one port of
//! ip_local_port_range for that destination (`__inet_hash_connect()` in
//! net/ipv4/inet_hashtables.c); when none is left, connect() fails with
//! EADDRNOTAVAIL.

use std::collections::HashMap;

use super::{endpoint, Detectors, Driver, PortUseKey, Report, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    model::{Model, Opener},
};

impl Detectors {
    /// Ports in use towards each destination against the range, and how
    /// fast they are being taken.
    pub(super) fn port_exhaustion_risk(&mut self, out: &mut Vec<Report>, now: u64, model: &Model) {
        let t = self.thresholds;
        // Ephemeral ports towards one remote endpoint from one local address:
        // open outgoing connections plus the active closer's TIME_WAIT.
        let mut in_use: HashMap<PortUseKey, (u64, u32, String, u64)> = HashMap::new();
        let outgoing = model
            .connections()
            .filter(|c| c.opener != Opener::Passive && c.tuple.local_port != 0)
            .map(|c| (c.tuple, c.pid, c.comm.clone(), c.cgroup))
            .chain(
                model
                    .time_wait()
                    .filter(|(_, tw)| tw.opener != Opener::Passive)
                    .map(|(t, tw)| (*t, tw.pid, tw.comm.clone(), tw.cgroup)),
            );
        for (tuple, pid, comm, cgroup) in outgoing {
            let e = in_use
                .entry((tuple.netns, tuple.local, tuple.remote, tuple.remote_port))
                .or_insert((0, pid, comm.to_string(), cgroup));
            e.0 += 1;
        }
        let mut previous = std::mem::take(&mut self.port_use);
        for (key, (count, pid, comm, cgroup)) in in_use {
            let (netns, laddr, raddr, rport) = key;
            let (low, high) = self
                .port_range
                .get(&netns)
                .copied()
                .unwrap_or((32768, 60999));
            let ports = u64::from((high + 1).saturating_sub(low)).max(1);
            let fraction = count as f64 / ports as f64;
            // Ports taken per second since the last tick.
            let rate = previous.remove(&key).and_then(|(before, at)| {
                let dt = now.saturating_sub(at) as f64 / 1e9;
                (dt > 0.0 && count > before).then(|| (count - before) as f64 / dt)
            });
            self.port_use.insert(key, (count, now));
            let exhausted = self.ports_exhausted(netns, raddr, rport, now);
            if fraction < t.port_use_fraction && !exhausted {
                continue;
            }
            let severity = if fraction >= 0.9 || exhausted {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let exhausted_in =
                rate.map(|r| (ports.saturating_sub(count) as f64 / r * 10.0).round() / 10.0);
            let who = Who {
                pid: (pid != 0).then_some(pid),
                comm: (!comm.is_empty()).then(|| comm.clone()),
                laddr: Some(laddr),
                raddr: Some(raddr),
                rport: Some(rport),
                cgroup,
                ..Default::default()
            };
            let peer = endpoint(raddr, rport);
            let subject = Subject::Route {
                netns,
                from: laddr,
                addr: raddr,
                port: rport,
            };
            self.observe(out, FindingKind::PortExhaustionRisk, subject, now, count, Driver::Tick, |count| {
                let when = match exhausted_in {
                    _ if exhausted => "; exhausted: connects found no free port (connect_failed)".to_owned(),
                    Some(s) => format!("; at the current rate the rest lasts {s} s"),
                    None => String::new(),
                };
                who.apply(
                    Finding::new(
                        FindingKind::PortExhaustionRisk,
                        severity,
                        format!(
                            "{count} of {ports} ephemeral ports from {laddr} to {peer} are taken by connections and TIME_WAIT ({:.0}%){when}",
                            fraction * 100.0
                        ),
                    )
                    .evidence("count", count)
                    .evidence("ports", ports)
                    .evidence("fraction", (fraction * 1000.0).round() / 1000.0)
                    .evidence("seconds_to_exhaustion", exhausted_in)
                    .evidence("exhausted", exhausted)
                    .remedy(
                        "Each connection this host closes first holds its port for 60 s of TIME_WAIT; when \
                         the range is used up, connect() fails with EADDRNOTAVAIL. Reuse connections \
                         (keep-alive, pools), spread over more local addresses, or widen \
                         net.ipv4.ip_local_port_range.",
                    ),
                )
            });
        }
    }
}
