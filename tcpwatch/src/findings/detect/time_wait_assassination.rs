//! `time_wait_assassinated`: TIME_WAIT sockets killed before their 60 s.
//!
//! TIME_WAIT keeps the 4-tuple of a connection this host closed first, so
//! that delayed segments of the old connection die with it and a lost
//! final ACK can be sent again. A reset that reaches a TIME_WAIT socket
//! with the expected sequence number kills it at once unless
//! `tcp_rfc1337=1` (`tcp_timewait_state_process()` in
//! net/ipv4/tcp_minisocks.c: "This is TIME_WAIT assassination, in two
//! flavors"): a stray ACK makes the socket answer with an ACK, the peer
//! (which has no connection any more) answers that with a reset, and the
//! protection is gone. The kernel counts nothing for it; the reconciliation
//! sees the socket missing from its list long before its timer, with no
//! new connection on its 4-tuple (the model's [`TimeWaitDeath`]).
use crate::tcp::NetnsId;
use std::collections::HashMap;

use super::{endpoint, secs, Detectors, Driver, Moved, Report, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    host::netns_state::NetnsState,
    model::TimeWaitDeath,
};

/// A namespace's TIME_WAIT-related counters and setting at the last look.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct TimeWaitGuard {
    rfc1337: bool,
    /// TCPTimeWaitOverflow: when it moved, TIME_WAIT sockets the model
    /// inferred may never have existed.
    overflows: Moved,
    /// Segments rejected by PAWS.
    paws: Moved,
}

pub(super) type TimeWaitGuards = HashMap<NetnsId, TimeWaitGuard>;

impl Detectors {
    /// A namespace's tcp_rfc1337 and counters, read at a reconciliation.
    pub(super) fn note_time_wait_guard(&mut self, netns: NetnsId, state: &NetnsState) {
        let overflows = state.counter("TCPTimeWaitOverflow");
        // PAWSEstab counts PAWS rejects of TIME_WAIT sockets too;
        // PAWSTimewait (6.15+) only those.
        let paws = state.counter("PAWSEstab") + state.counter("PAWSTimewait");
        let entry = self.time_wait_guard.entry(netns).or_insert(TimeWaitGuard {
            overflows: Moved::first(overflows),
            paws: Moved::first(paws),
            ..Default::default()
        });
        entry.overflows.read(overflows);
        entry.paws.read(paws);
        entry.rfc1337 = state.int("tcp_rfc1337").is_some_and(|v| v != 0);
    }

    /// TIME_WAIT sockets the last reconciliations found gone early, grouped
    /// by the process that closed them and the peer.
    pub fn on_time_wait_deaths(&mut self, deaths: &[TimeWaitDeath], now: u64) -> Vec<Report> {
        let mut out = Vec::new();
        for d in deaths {
            let t = &d.tuple;
            let guard = self
                .time_wait_guard
                .get(&t.netns)
                .copied()
                .unwrap_or_default();
            // With tcp_rfc1337=1 a reset cannot kill it; past
            // tcp_max_tw_buckets it may never have existed.
            if guard.rfc1337 || guard.overflows.moved > 0 {
                continue;
            }
            let subject = Subject::ProcessPeer {
                netns: t.netns,
                pid: d.pid,
                addr: t.remote,
                port: t.remote_port,
            };
            let count = self.bump(FindingKind::TimeWaitAssassinated, &subject);
            let who = Who {
                pid: (d.pid != 0).then_some(d.pid),
                comm: (d.pid != 0).then(|| d.comm.to_string()),
                laddr: Some(t.local),
                lport: Some(t.local_port),
                raddr: Some(t.remote),
                rport: Some(t.remote_port),
                cgroup: d.cgroup,
                ..Default::default()
            };
            let named = if d.pid == 0 {
                "TIME_WAIT sockets".to_owned()
            } else {
                format!("TIME_WAIT sockets closed by {} (pid {})", d.comm, d.pid)
            };
            let peer = endpoint(t.remote, t.remote_port);
            let age = secs(d.age_ns);
            let paws = guard.paws.moved;
            self.observe(&mut out, FindingKind::TimeWaitAssassinated, subject, now, count, Driver::Event, |count| {
                who.apply(
                    Finding::new(
                        FindingKind::TimeWaitAssassinated,
                        Severity::Warning,
                        format!(
                            "{count} {named} towards {peer} vanished early (the latest after {age} s of 60): a reset reached them while tcp_rfc1337=0 (TIME_WAIT assassination), unless someone destroyed them (ss -K)"
                        ),
                    )
                    .evidence("count", count)
                    .evidence("age_seconds", age)
                    .evidence("tcp_rfc1337", 0)
                    .evidence("paws_rejected", paws),
                )
                .remedy(
                    "TIME_WAIT protects a new connection on the same 4-tuple from the old one's \
                     delayed segments, and lets a lost final ACK be sent again. A stray segment \
                     makes the TIME_WAIT socket answer with an ACK; the peer, which no longer has \
                     the connection, answers with a reset, and with net.ipv4.tcp_rfc1337=0 the \
                     kernel accepts it and drops the TIME_WAIT at once (RFC 1337). Set \
                     tcp_rfc1337=1 to ignore resets in TIME_WAIT, and look for what sends the \
                     stray segments (a middlebox, a peer's late retransmits). A TIME_WAIT can also be \
                     destroyed on purpose (`ss -K`, SOCK_DESTROY): tcp_rfc1337 does not stop that.",
                )
            });
        }
        out
    }
}
