//! `tw_reuse` and `tw_reuse_reset`: connections that skipped the rest of
//! TIME_WAIT (tcp_tw_reuse: `tcp_twsk_unique()` in net/ipv4/tcp_ipv4.c
//! hands an outgoing connect a 4-tuple still in TIME_WAIT when timestamps
//! allow it), and resets that met such a connection soon after: the two
//! risks of skipping TIME_WAIT.
use super::{endpoint, secs, Detectors, Driver, Report, Who, REUSE_RESET_WINDOW_NS};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    model::{EndReason, Finished, FourTuple},
};

impl Detectors {
    /// An outgoing connection took a 4-tuple from TIME_WAIT.
    pub(super) fn on_time_wait_reused(
        &mut self,
        tuple: FourTuple,
        age_ns: u64,
        (pid, comm, cgroup): (u32, &str, u64),
        now: u64,
        out: &mut Vec<Report>,
    ) {
        self.recent_reuse.insert(tuple, now);
        let subject = Subject::Peer {
            netns: tuple.netns,
            addr: tuple.remote,
            port: tuple.remote_port,
        };
        let count = self.bump(FindingKind::TwReuse, &subject);
        let who = Who {
            pid: Some(pid),
            comm: Some(comm.to_owned()),
            laddr: Some(tuple.local),
            lport: Some(tuple.local_port),
            raddr: Some(tuple.remote),
            rport: Some(tuple.remote_port),
            holders: None,
            cgroup,
        };
        let peer = endpoint(tuple.remote, tuple.remote_port);
        let age = secs(age_ns);
        self.observe(out, FindingKind::TwReuse, subject, now, count, Driver::Event, |count| {
            who.apply(
                Finding::new(
                    FindingKind::TwReuse,
                    Severity::Info,
                    format!("{count} new connections to {peer} reused a 4-tuple still in TIME_WAIT (latest after {age} s)"),
                )
                .evidence("count", count)
                .evidence("age_seconds", age)
                .remedy(
                    "tcp_tw_reuse let the kernel skip the rest of TIME_WAIT: a stale segment or reset \
                     of the old connection can hit the new one, and if the old final ACK was lost \
                     the peer answers the new SYN with a challenge ACK. Reuse connections instead.",
                ),
            )
        });
    }

    /// When `tuple` was taken over from TIME_WAIT, if that was within the
    /// window in which a reset is blamed on the reuse.
    pub(super) fn reused_recently(&self, tuple: &FourTuple, now: u64) -> Option<u64> {
        self.recent_reuse
            .get(tuple)
            .copied()
            .filter(|t| now.saturating_sub(*t) <= REUSE_RESET_WINDOW_NS)
    }

    /// A connection that skipped TIME_WAIT met the old connection's ghost.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reuse_reset(
        &mut self,
        out: &mut Vec<Report>,
        tuple: FourTuple,
        (pid, comm, cgroup): (u32, &str, u64),
        now: u64,
        since_ns: u64,
        what: &str,
    ) {
        self.tw_reuse_resets += 1;
        let subject = Subject::Peer {
            netns: tuple.netns,
            addr: tuple.remote,
            port: tuple.remote_port,
        };
        let count = self.bump(FindingKind::TwReuseReset, &subject);
        let who = Who {
            pid: Some(pid),
            comm: Some(comm.to_owned()),
            laddr: Some(tuple.local),
            lport: Some(tuple.local_port),
            raddr: Some(tuple.remote),
            rport: Some(tuple.remote_port),
            holders: None,
            cgroup,
        };
        let peer = endpoint(tuple.remote, tuple.remote_port);
        let age = secs(since_ns);
        self.observe(out, FindingKind::TwReuseReset, subject, now, count, Driver::Event, |count| {
            who.apply(
                Finding::new(
                    FindingKind::TwReuseReset,
                    Severity::Warning,
                    format!("a connection to {peer} that reused a TIME_WAIT 4-tuple {what} ({count} so far)"),
                )
                .evidence("count", count)
                .evidence("age_seconds", age)
                .remedy(
                    "The two risks of skipping TIME_WAIT: a stale segment or reset of the old \
                     connection, or a peer still in LAST_ACK (its final ACK was lost) answering the new \
                     SYN with a challenge ACK that this side resets. Set tcp_tw_reuse back to 2 (or 0) \
                     for this traffic and reuse connections instead.",
                ),
            )
        });
    }

    /// A connection that reused a TIME_WAIT 4-tuple was reset, or reset
    /// its peer, within the window after the reuse.
    pub(super) fn on_reuse_reset(&mut self, f: &Finished, now: u64, out: &mut Vec<Report>) {
        let c = &f.connection;
        let age = now.saturating_sub(self.reused_recently(&c.tuple, now).unwrap_or(now));
        let what = if f.end != EndReason::ResetSent {
            "was reset"
        } else {
            "sent a reset"
        };
        self.reuse_reset(out, c.tuple, (c.pid, &c.comm, c.cgroup), now, age, what);
    }
}
