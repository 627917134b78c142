//! `time_wait_syn_reuse`: new SYNs that took over a 4-tuple this server
//! still held in TIME_WAIT. `tcp_timewait_state_process()`
//! (net/ipv4/tcp_minisocks.c) accepts such a SYN when its sequence number
//! or timestamp is newer than the old connection's: clients come back from
//! the same ports to a server that closes first.
use super::{secs, Detectors, Driver, Report, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    model::FourTuple,
};

impl Detectors {
    /// A SYN that took over a local TIME_WAIT 4-tuple.
    pub(super) fn on_time_wait_syn_reused(
        &mut self,
        tuple: FourTuple,
        age_ns: u64,
        now: u64,
        out: &mut Vec<Report>,
    ) {
        let subject = Subject::LocalPort {
            netns: tuple.netns,
            port: tuple.local_port,
        };
        let count = self.bump(FindingKind::TimeWaitSynReuse, &subject);
        let who = Who {
            lport: Some(tuple.local_port),
            raddr: Some(tuple.remote),
            rport: Some(tuple.remote_port),
            ..Default::default()
        };
        let age = secs(age_ns);
        let port = tuple.local_port;
        self.observe(out, FindingKind::TimeWaitSynReuse, subject, now, count, Driver::Event, |count| {
            who.apply(
                Finding::new(
                    FindingKind::TimeWaitSynReuse,
                    Severity::Info,
                    format!("{count} new SYNs on local port {port} took over 4-tuples in TIME_WAIT (latest after {age} s)"),
                )
                .evidence("count", count)
                .evidence("age_seconds", age)
                .remedy(
                    "This server closes first and clients come back from the same ports; the kernel \
                     accepts such a SYN when its sequence number or timestamp is newer. Let clients \
                     close first, or keep connections alive.",
                ),
            )
        });
    }
}
