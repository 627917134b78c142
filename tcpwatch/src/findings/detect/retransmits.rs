//! `synack_retransmit` and `fin_retransmit`: handshakes whose final ACK
//! never comes (`tcp:tcp_retransmit_synack`; the kernel retries
//! tcp_synack_retries times, `inet_rtx_syn_ack()` in
//! net/ipv4/inet_connection_sock.c) and closes the peer never acknowledges
//! (a FIN retransmitted in FIN_WAIT1, LAST_ACK or CLOSING; an orphan
//! retries tcp_orphan_retries times, `tcp_orphan_retries()` in
//! net/ipv4/tcp_timer.c).
use super::{endpoint, Detectors, Driver, Report, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    kernel::event::TcpEvent,
};

impl Detectors {
    /// A listener retransmitted a SYN-ACK (outside a SYN flood of it).
    pub(super) fn on_synack_retransmit(&mut self, ev: &TcpEvent, out: &mut Vec<Report>) {
        let now = ev.ts_ns;
        let subject = Subject::ProcessPort {
            netns: ev.netns,
            pid: ev.pid,
            port: ev.sport,
        };
        let count = self.bump(FindingKind::SynackRetransmit, &subject);
        let who = Who {
            pid: Some(ev.pid),
            comm: Some(ev.comm.clone()),
            lport: Some(ev.sport),
            cgroup: ev.cgroup,
            ..Default::default()
        };
        let listener = endpoint(ev.saddr, ev.sport);
        self.observe(out, FindingKind::SynackRetransmit, subject, now, count, Driver::Event, |count| {
            who.apply(
                Finding::new(
                    FindingKind::SynackRetransmit,
                    Severity::Warning,
                    format!("listener {listener} retransmitted {count} SYN-ACKs: handshakes are not completing"),
                )
                .evidence("count", count)
                .remedy(
                    "The client's final ACK is lost, or half-open connections from a SYN flood \
                     wait in the SYN queue; the kernel retries tcp_synack_retries times (63 s \
                     by default). Check the path for loss, and tcp_syncookies under floods.",
                ),
            )
        });
    }

    /// A FIN (or data after it) retransmitted while closing.
    pub(super) fn on_fin_retransmit(&mut self, ev: &TcpEvent, out: &mut Vec<Report>) {
        let now = ev.ts_ns;
        let subject = Subject::ProcessPeer {
            netns: ev.netns,
            pid: ev.pid,
            addr: ev.daddr,
            port: ev.dport,
        };
        let count = self.bump(FindingKind::FinRetransmit, &subject);
        let who = Who {
            pid: Some(ev.pid),
            comm: Some(ev.comm.clone()),
            raddr: Some(ev.daddr),
            rport: Some(ev.dport),
            cgroup: ev.cgroup,
            ..Default::default()
        };
        let peer = endpoint(ev.daddr, ev.dport);
        self.observe(out, FindingKind::FinRetransmit, subject, now, count, Driver::Event, |count| {
            who.apply(
                Finding::new(
                    FindingKind::FinRetransmit,
                    Severity::Info,
                    format!("{count} FIN retransmits towards {peer}: the peer does not acknowledge the close"),
                )
                .evidence("count", count)
                .remedy(
                    "A FIN goes unacknowledged when the peer is gone or the path drops it; \
                     an orphaned socket retries tcp_orphan_retries times (0 means 8, about 100 s) \
                     in FIN_WAIT1, LAST_ACK or CLOSING before the kernel gives up.",
                ),
            )
        });
    }
}
