//! One connection's record and what the model says about it: who opened
//! and closed it, how it ended, its retransmits, and the outcomes the model
//! hands the detectors.
use std::{net::IpAddr, num::NonZeroU64, sync::Arc};

use serde::Serialize;

use super::*;

/// Who opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Opener {
    /// This host called connect().
    Active,
    /// This host accepted it.
    Passive,
    /// Opened before tcpwatch saw it.
    Unknown,
}

/// Who closed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Closer {
    /// This host sent the first FIN (it keeps the TIME_WAIT).
    Active,
    /// The peer sent the first FIN.
    Passive,
    /// Both FINs crossed (`CLOSING`).
    Simultaneous,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// FIN handshake completed.
    NormalClose,
    /// The peer reset it.
    ResetReceived,
    /// This host reset it (abortive close, or data after close).
    ResetSent,
    /// SYNs went unanswered until tcp_syn_retries ran out.
    ConnectTimeout,
    /// The SYN was answered by a reset.
    ConnectRefused,
    /// Data went unacknowledged until tcp_retries2 (or keep-alive) gave up.
    RetransmitTimeout,
    /// Closed with no sign of why (for example a SYN_RECV child dropped).
    Aborted,
    /// A normal close that skipped TIME_WAIT: the namespace already held
    /// tcp_max_tw_buckets timewait sockets (TcpExt TCPTimeWaitOverflow).
    TimeWaitOverflow,
    /// connect() failed before a SYN left: no free local port for the
    /// destination (EADDRNOTAVAIL). `tcp_v4_connect()` enters SYN_SENT,
    /// `inet_hash_connect()` finds no port, and the socket goes back to
    /// CLOSE with local port 0, without a retransmit or a reset.
    NoLocalPort,
    /// The kernel closed it because the last process holding it exited or
    /// died (`do_exit()` closes its files), not because it called close():
    /// a FIN, or a reset when unread data was pending.
    OwnerExited,
    /// The peer answered with a reset after data went unanswered: it had
    /// lost the connection (rebooted, or crashed and came back).
    PeerReset,
}

impl Opener {
    /// The name used in JSON and on screen.
    pub fn name(self) -> &'static str {
        match self {
            Opener::Active => "active",
            Opener::Passive => "passive",
            Opener::Unknown => "unknown",
        }
    }
}

impl Closer {
    /// The name used in JSON and on screen.
    pub fn name(self) -> &'static str {
        match self {
            Closer::Active => "active",
            Closer::Passive => "passive",
            Closer::Simultaneous => "simultaneous",
        }
    }
}

impl EndReason {
    /// Every end reason.
    pub const ALL: [EndReason; 11] = [
        EndReason::NormalClose,
        EndReason::ResetReceived,
        EndReason::ResetSent,
        EndReason::ConnectTimeout,
        EndReason::ConnectRefused,
        EndReason::RetransmitTimeout,
        EndReason::Aborted,
        EndReason::TimeWaitOverflow,
        EndReason::NoLocalPort,
        EndReason::OwnerExited,
        EndReason::PeerReset,
    ];

    /// A close, reset or abort the kernel made because the connection's
    /// owner exited holding it is that, whatever it sent; the other
    /// reasons (the peer's reset, retransmits given up) say more.
    pub(super) fn or_owner_exited(self, c: &Connection) -> EndReason {
        match self {
            EndReason::NormalClose | EndReason::ResetSent | EndReason::Aborted
                if c.closed_by_exit =>
            {
                EndReason::OwnerExited
            }
            end => end,
        }
    }

    /// The stable name used in JSON, on screen and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            EndReason::NormalClose => "normal_close",
            EndReason::ResetReceived => "reset_received",
            EndReason::ResetSent => "reset_sent",
            EndReason::ConnectTimeout => "connect_timeout",
            EndReason::ConnectRefused => "connect_refused",
            EndReason::RetransmitTimeout => "retransmit_timeout",
            EndReason::Aborted => "aborted",
            EndReason::TimeWaitOverflow => "time_wait_overflow",
            EndReason::NoLocalPort => "no_local_port",
            EndReason::OwnerExited => "owner_exited",
            EndReason::PeerReset => "peer_reset",
        }
    }
}

/// Retransmissions of one connection by phase of its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Retransmits {
    pub syn: u16,
    pub synack: u16,
    pub data: u16,
    pub fin: u16,
}

/// A 4-tuple in a network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FourTuple {
    pub netns: NetnsId,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
}

impl FourTuple {
    pub fn of(ev: &TcpEvent) -> Self {
        FourTuple {
            netns: ev.netns,
            local: ev.saddr,
            local_port: ev.sport,
            remote: ev.daddr,
            remote_port: ev.dport,
        }
    }
}

/// Interned command names: records of one process share one copy.
#[derive(Debug, Default)]
pub(super) struct Comms(std::collections::HashSet<Arc<str>>);

impl Comms {
    /// The shared copy of `comm`.
    pub(super) fn share(&mut self, comm: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(comm) {
            return shared.clone();
        }
        // Bounded: forgetting the set only costs later records a new copy.
        if self.0.len() >= 4096 {
            self.0.clear();
        }
        let shared: Arc<str> = Arc::from(comm);
        self.0.insert(shared.clone());
        shared
    }
}

/// A birth time in nanoseconds, kept in a non-zero integer (plus one) so
/// that `Option<Birth>` takes 8 bytes of the record instead of 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Birth(NonZeroU64);

impl Birth {
    pub fn at(ns: u64) -> Option<Birth> {
        NonZeroU64::new(ns.wrapping_add(1)).map(Birth)
    }

    pub fn ns(self) -> u64 {
        self.0.get() - 1
    }
}

/// One connection's record.
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    pub skaddr: u64,
    pub tuple: FourTuple,
    pub pid: u32,
    /// Shared by every record of the same command name (interned).
    pub comm: Arc<str>,
    /// The owner's cgroup v2 id (0 when unknown): its unit or container.
    pub cgroup: u64,
    pub opener: Opener,
    pub closer: Option<Closer>,
    /// Monotonic birth time; `None` when born before tcpwatch saw it.
    pub born_ns: Option<Birth>,
    pub state: TcpState,
    pub state_since_ns: u64,
    /// False for connections found in a sock_diag dump in a state entered
    /// before tcpwatch saw them: `state_since_ns` is then a lower bound.
    pub state_age_known: bool,
    /// Events were lost while it was alive: its state may be stale until
    /// the next reconciliation checks it against the kernel's list.
    pub uncertain: bool,
    /// Seconds spent in each state, indexed by [`state_index`] (only states
    /// the record was seen to enter and leave). `f32` keeps microseconds on
    /// loopback and hours of CLOSE_WAIT in half the room of nanoseconds.
    pub time_in_state: [f32; 12],
    pub retransmits: Retransmits,
    /// Resets on this connection (saturating: one ends it, more are rare).
    pub resets_sent: u8,
    pub resets_received: u8,
    /// The current run of data retransmits with growing backoff: what a
    /// peer that stopped answering looks like.
    /// Boxed: rare, and the record stays small without it.
    pub rtx_run: Option<Box<RetransmitRun>>,
    /// Which insertion of its socket address this record is: eviction
    /// skips birth-order entries left by an earlier record at the address.
    pub insert_seq: u32,
    /// Processes holding the socket at the last reconciliation (0 until
    /// one has looked).
    pub holders: u16,
    /// The owner was confirmed after the kernel bound it (from `/proc` at a
    /// reconciliation, or an owner event): a later event replaying the
    /// kernel's older binding does not undo it.
    pub owner_confirmed: bool,
    /// The kernel closed it for a process that exited holding it.
    pub closed_by_exit: bool,
    /// For a received reset: whether the kernel had data in flight then.
    pub reset_outstanding: Option<bool>,
    /// For a received reset: seconds the peer had been silent before it
    /// (0 when the kernel could not tell: no timestamps on the connection).
    pub reset_silence_s: u16,
    /// For a received reset: it carried a TCP timestamp (a live stack's).
    pub reset_timestamped: bool,
    /// Segments the kernel dropped for it (drop events, 6.12+; at most
    /// [`tcpwatch_common::DROP_EVENTS_PER_WINDOW`] a CPU sends per 100 ms,
    /// so a lower bound under a flood) and the last drop's reason number.
    pub drops: u16,
    pub last_drop_reason: u16,
}

impl Connection {
    /// A record entering `state` at `since_ns`, with nothing yet counted:
    /// the one place a record is built (births, sockets older than
    /// tcpwatch, sockets seeded from the kernel's list differ only in what
    /// they lay over it).
    pub(super) fn new(
        skaddr: u64,
        tuple: FourTuple,
        (pid, comm, cgroup): (u32, Arc<str>, u64),
        opener: Opener,
        state: TcpState,
        since_ns: u64,
    ) -> Connection {
        Connection {
            skaddr,
            tuple,
            pid,
            comm,
            cgroup,
            opener,
            closer: None,
            born_ns: None,
            state,
            state_since_ns: since_ns,
            state_age_known: true,
            uncertain: false,
            time_in_state: [0.0; 12],
            retransmits: Retransmits::default(),
            resets_sent: 0,
            resets_received: 0,
            rtx_run: None,
            insert_seq: 0,
            holders: 0,
            owner_confirmed: false,
            closed_by_exit: false,
            reset_outstanding: None,
            reset_silence_s: 0,
            reset_timestamped: false,
            drops: 0,
            last_drop_reason: 0,
        }
    }
}

/// Consecutive data retransmits whose gaps do not shrink (exponential
/// backoff): nothing was acknowledged in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitRun {
    pub start_ns: u64,
    pub last_ns: u64,
    pub last_gap_ns: u64,
    pub count: u32,
}

/// Seconds of silence before a reset that tell a peer that lost the
/// connection from one that aborts it while talking.
pub const PEER_SILENCE_MIN_S: u16 = 5;

/// TCP_RTO_MIN (include/net/tcp.h): 200 ms.
pub(super) const TCP_RTO_MIN_NS: u64 = 200_000_000;

/// Longest gap between two retransmits of one run: TCP_RTO_MAX plus slack.
pub(super) const RUN_MAX_GAP_NS: u64 = 130_000_000_000;

/// A reset received while a run of data retransmits was going unanswered
/// (within the wait for the next retransmit): the peer was silent, then
/// answered with a reset, the answer of a host that no longer knows the
/// connection (`tcp_v4_send_reset()` for a segment with no socket). Where
/// the kernel said whether data was still in flight when the reset came,
/// that decides (a live peer that aborts after its ACKs caught up is not
/// one); elsewhere the run must show RTO backoff: two retransmits or more,
/// the last gap at least the kernel's minimum RTO (fast retransmits come
/// within a round trip and say nothing of the peer's state). A reset that
/// carried a TCP timestamp came from a stack that has the connection
/// (a live peer aborting), whatever came before.
pub(super) fn answered_unanswered_data(c: &Connection, now: u64) -> bool {
    !c.reset_timestamped
        && c.rtx_run.as_deref().is_some_and(|run| {
            let window = (2 * run.last_gap_ns).clamp(5_000_000_000, RUN_MAX_GAP_NS);
            let recent = now.saturating_sub(run.last_ns) <= window;
            let backoff = run.count >= 2 && run.last_gap_ns >= TCP_RTO_MIN_NS;
            recent
                && match c.reset_outstanding {
                    Some(outstanding) => outstanding,
                    None => backoff,
                }
        })
}

/// A reset in answer to data sent on an established connection after the
/// peer had been silent: the first write after a quiet spell reached a
/// host that no longer knows the connection (it rebooted, or its process
/// and socket are gone without a FIN or a reset reaching us), which
/// answered at once, so there was no retransmit to see. The kernel said
/// data was in flight and how long the peer had been quiet (its last
/// timestamped segment); a live peer that aborts in the middle of an
/// exchange has been heard within a round trip, and one that closed
/// normally sent a FIN first (the connection would not be ESTABLISHED).
pub(super) fn answered_after_silence(c: &Connection, state: TcpState) -> bool {
    !c.reset_timestamped
        && state == TcpState::Established
        && c.reset_outstanding == Some(true)
        && c.reset_silence_s >= PEER_SILENCE_MIN_S
}

impl RetransmitRun {
    /// The run after one more retransmit at `ts`: continued while the gaps
    /// keep growing (a shrinking gap means the backoff was reset by an ACK).
    pub(super) fn next(run: Option<RetransmitRun>, ts: u64) -> RetransmitRun {
        match run {
            Some(r) => {
                let gap = ts.saturating_sub(r.last_ns);
                if gap <= RUN_MAX_GAP_NS && gap * 5 >= r.last_gap_ns * 4 {
                    RetransmitRun {
                        last_ns: ts,
                        last_gap_ns: gap,
                        count: r.count + 1,
                        ..r
                    }
                } else {
                    RetransmitRun {
                        start_ns: ts,
                        last_ns: ts,
                        last_gap_ns: 0,
                        count: 1,
                    }
                }
            }
            None => RetransmitRun {
                start_ns: ts,
                last_ns: ts,
                last_gap_ns: 0,
                count: 1,
            },
        }
    }
}

/// What a finished connection looked like, for `--lifecycle` and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub connection: Connection,
    pub end_ns: u64,
    pub end: EndReason,
    /// Whether the connection went on in a TIME_WAIT socket.
    pub time_wait: bool,
}

impl Finished {
    /// Lifetime from birth to close, when the birth was seen.
    pub fn lifetime_ns(&self) -> Option<u64> {
        self.connection
            .born_ns
            .map(|b| self.end_ns.saturating_sub(b.ns()))
    }
}

/// What applying an event produced.
// Short-lived and usually empty: boxing the large variant would cost an
// allocation per finished connection for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A connection's record closed.
    Finished(Finished),
    /// A new outgoing connection took a 4-tuple still in TIME_WAIT
    /// (tcp_tw_reuse), `age_ns` after it entered TIME_WAIT.
    TimeWaitReused {
        tuple: FourTuple,
        age_ns: u64,
        pid: u32,
        comm: String,
        cgroup: u64,
    },
    /// A new incoming SYN took over a 4-tuple in TIME_WAIT on this host.
    TimeWaitSynReused { tuple: FourTuple, age_ns: u64 },
}
