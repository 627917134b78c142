//! `peer_restarted`: a reset that answered data the peer had left
//! unanswered. A host that rebooted, or whose TCP stack lost the
//! connection (a crash and restart, a failover to another machine behind
//! the same address), has no socket for the segments that reach it again
//! and answers each with a reset (`tcp_v4_send_reset()` for a segment that
//! matches no socket, net/ipv4/tcp_ipv4.c). The model ends such a
//! connection as [`EndReason::PeerReset`]: a reset received while a run of
//! data retransmits with backoff went unanswered (the peer was down when
//! written to), or one that answered data sent on an established
//! connection after the peer had been silent for a while (it was back by
//! the time of the write, so nothing was retransmitted).
use super::{endpoint, secs, Detectors, Driver, Report, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    model::{EndReason, Finished},
};

impl Detectors {
    /// A connection the peer reset after leaving its data unanswered.
    pub(super) fn on_peer_reset(&mut self, f: &Finished, now: u64, out: &mut Vec<Report>) {
        debug_assert_eq!(f.end, EndReason::PeerReset);
        let c = &f.connection;
        let t = &c.tuple;
        let subject = Subject::Peer {
            netns: t.netns,
            addr: t.remote,
            port: t.remote_port,
        };
        let count = self.bump(FindingKind::PeerRestarted, &subject);
        let (retransmits, silent_ns) = c.rtx_run.as_deref().map_or((0, 0), |run| {
            (run.count, f.end_ns.saturating_sub(run.start_ns))
        });
        // The kernel's own measure, from the peer's last segment, where it has one.
        let silent_ns = silent_ns.max(u64::from(c.reset_silence_s) * 1_000_000_000);
        let who = Who {
            pid: (c.pid != 0).then_some(c.pid),
            comm: (c.pid != 0).then(|| c.comm.to_string()),
            laddr: Some(t.local),
            lport: Some(t.local_port),
            raddr: Some(t.remote),
            rport: Some(t.remote_port),
            cgroup: c.cgroup,
            ..Default::default()
        };
        let named = if c.pid == 0 {
            "a connection".to_owned()
        } else {
            format!("a connection of {} (pid {})", c.comm, c.pid)
        };
        let peer = endpoint(t.remote, t.remote_port);
        let silent = secs(silent_ns);
        let how = if retransmits > 0 {
            format!("after leaving {retransmits} retransmits unanswered for {silent} s")
        } else {
            format!("at once, in answer to data sent after {silent} s of silence")
        };
        self.observe(out, FindingKind::PeerRestarted, subject, now, count, Driver::Event, |count| {
            who.apply(
                Finding::new(
                    FindingKind::PeerRestarted,
                    Severity::Warning,
                    format!(
                        "{peer} reset {named} {how}: the peer lost the connection (it restarted, or crashed and came back); {count} such resets from it"
                    ),
                )
                .evidence("count", count)
                .evidence("retransmits", retransmits)
                .evidence("silent_seconds", silent)
                .evidence("end", EndReason::PeerReset.name())
                .remedy(
                    "While the peer was down nothing answered, so the kernel retransmitted with \
                     growing backoff (if the application wrote then); once it was back, its stack \
                     had no such connection and answered the next segment with a reset. Whatever was in flight is lost: the application must \
                     reconnect and retry what was not confirmed. Check the peer's uptime and logs \
                     for the restart; keep-alive (or an application heartbeat) finds such peers \
                     sooner on idle connections.",
                ),
            )
        });
    }
}
