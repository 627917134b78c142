//! `connect_refused` and `connect_timeout`: outgoing connects that a reset
//! answered (`tcp_reset()` in SYN_SENT, net/ipv4/tcp_input.c) or that ran
//! out of SYN retransmits (`tcp_write_timeout()` after tcp_syn_retries,
//! net/ipv4/tcp_timer.c), by process and destination.
use super::{endpoint, secs, Detectors, Driver, Report, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    model::{EndReason, Finished},
};

impl Detectors {
    /// A connect refused or timed out.
    pub(super) fn on_connect_error(&mut self, f: &Finished, now: u64, out: &mut Vec<Report>) {
        let c = &f.connection;
        let t = &c.tuple;
        let refused = f.end == EndReason::ConnectRefused;
        if !refused {
            self.note_connect_timeout(c, now);
        }
        let kind = if refused {
            FindingKind::ConnectRefused
        } else {
            FindingKind::ConnectTimeout
        };
        let subject = Subject::ProcessPeer {
            netns: t.netns,
            pid: c.pid,
            addr: t.remote,
            port: t.remote_port,
        };
        let count = self.bump(kind, &subject);
        let who = Who {
            pid: Some(c.pid),
            comm: Some(c.comm.to_string()),
            raddr: Some(t.remote),
            rport: Some(t.remote_port),
            cgroup: c.cgroup,
            ..Default::default()
        };
        let peer = endpoint(t.remote, t.remote_port);
        let syn_retransmits = c.retransmits.syn;
        let waited = secs(f.lifetime_ns().unwrap_or(0));
        let comm = c.comm.clone();
        self.observe(out, kind, subject, now, count, Driver::Event, |count| {
            let finding = if refused {
                Finding::new(
                    kind,
                    Severity::Warning,
                    format!("{comm} had {count} connects to {peer} refused: a reset answered the SYN"),
                )
                .remedy(
                    "Nothing listens on that address and port (or a firewall rejects with a reset): \
                     check the upstream's configuration and health, and the client's target.",
                )
            } else {
                Finding::new(
                    kind,
                    Severity::Warning,
                    format!(
                        "{comm} had {count} connects to {peer} time out after {syn_retransmits} SYN retransmits and {waited} s"
                    ),
                )
                .evidence("syn_retransmits", syn_retransmits)
                .evidence("age_seconds", waited)
                .remedy(
                    "SYNs to that endpoint are dropped (a firewall, a dead host, or a full accept \
                     queue); the kernel retries for as long as tcp_syn_retries allows (127 s by \
                     default): give the client a connect timeout, and check the path.",
                )
            };
            who.apply(finding.evidence("count", count))
        });
    }
}
