//! The TIME_WAIT table: entries the model infers for the active closer
//! (`tcp_time_wait()` in net/ipv4/tcp_minisocks.c hands the 4-tuple to a
//! timewait socket that no state event shows), bounded by
//! tcp_max_tw_buckets per namespace as the kernel bounds it, and expired
//! after TIME_WAIT's 60 s.
use std::sync::Arc;

use super::*;

/// An entry of the TIME_WAIT table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWait {
    pub entered_ns: u64,
    pub pid: u32,
    pub comm: Arc<str>,
    pub cgroup: u64,
    /// Who opened the connection: `Passive` is the server-side case.
    pub opener: Opener,
    /// TIME_WAIT, or FIN_WAIT2 for an orphaned socket whose peer has not
    /// closed yet (the kernel keeps it in a timewait socket too, for
    /// tcp_fin_timeout). Inference cannot tell them apart; sock_diag can.
    pub substate: TcpState,
    /// A reconciliation saw it in the kernel's list in TIME_WAIT: it
    /// exists (an inferred one may not, when a reset aborted the close or
    /// the kernel kept FIN_WAIT2), so its early end means something.
    pub confirmed: bool,
}

/// Early TIME_WAIT deaths kept until the observer takes them.
pub(super) const MAX_EARLY_DEATHS: usize = 4096;

/// How much sooner than its 60 s a TIME_WAIT must vanish to count as an
/// early death: the dump's own duration, and the timer's jiffies, are
/// well within it.
pub(super) const EARLY_DEATH_MARGIN_NS: u64 = 5_000_000_000;

/// A TIME_WAIT socket the kernel no longer had, well before its timer,
/// with no new connection on its 4-tuple: killed, not expired or reused.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeWaitDeath {
    pub tuple: FourTuple,
    /// How long it had been in TIME_WAIT at most (at the dump's start).
    pub age_ns: u64,
    pub pid: u32,
    pub comm: Arc<str>,
    pub cgroup: u64,
    pub opener: Opener,
}

impl Model {
    /// TIME_WAIT entries the kernel dropped early, found by the
    /// reconciliations since the last call.
    pub fn take_time_wait_deaths(&mut self) -> Vec<TimeWaitDeath> {
        std::mem::take(&mut self.early_time_wait_deaths)
    }

    pub fn time_wait(&self) -> impl Iterator<Item = (&FourTuple, &TimeWait)> {
        self.time_wait.iter()
    }

    /// What the namespace's tcp_max_tw_buckets is; `None` forgets it.
    pub fn set_max_tw_buckets(&mut self, netns: NetnsId, max: Option<u64>) {
        match max {
            Some(max) => self.max_tw_buckets.insert(netns, max),
            None => self.max_tw_buckets.remove(&netns),
        };
    }

    /// True when the kernel would find no room for another timewait socket.
    pub(super) fn time_wait_full(&self, netns: NetnsId) -> bool {
        self.max_tw_buckets
            .get(&netns)
            .is_some_and(|max| self.time_wait_per_netns.get(&netns).copied().unwrap_or(0) >= *max)
    }

    pub(super) fn tw_insert(&mut self, tuple: FourTuple, tw: TimeWait) {
        if self.time_wait.insert(tuple, tw).is_none() {
            *self.time_wait_per_netns.entry(tuple.netns).or_default() += 1;
        }
    }

    /// A TIME_WAIT a new connection took over at `at_ns`: a dump that
    /// started before still lists it, and must not bring it back.
    pub(super) fn note_taken_over(&mut self, tuple: FourTuple, at_ns: u64) {
        self.recently_closed.push_back((tuple, at_ns));
        if self.recently_closed.len() > self.limits.max_connections {
            self.recently_closed.pop_front();
        }
    }

    pub(super) fn tw_remove(&mut self, tuple: &FourTuple) -> Option<TimeWait> {
        let removed = self.time_wait.remove(tuple)?;
        if let Some(n) = self.time_wait_per_netns.get_mut(&tuple.netns) {
            *n = n.saturating_sub(1);
        }
        Some(removed)
    }

    /// The TIME_WAIT entry of a 4-tuple, if the model holds one.
    pub fn time_wait_entry(&self, tuple: &FourTuple) -> Option<&TimeWait> {
        self.time_wait.get(tuple)
    }

    pub(super) fn enter_time_wait(&mut self, tuple: FourTuple, now: u64, c: &Connection) {
        self.tw_insert(
            tuple,
            TimeWait {
                entered_ns: now,
                pid: c.pid,
                comm: c.comm.clone(),
                cgroup: c.cgroup,
                opener: c.opener,
                substate: TcpState::TimeWait,
                confirmed: false,
            },
        );
        self.time_wait_order.push_back((tuple, now));
        self.evict_time_wait_past_cap();
    }

    /// Drops the oldest TIME_WAIT entries beyond `max_time_wait`.
    pub(super) fn evict_time_wait_past_cap(&mut self) {
        while self.time_wait.len() > self.limits.max_time_wait {
            let Some((victim, entered)) = self.time_wait_order.pop_front() else {
                break;
            };
            if self
                .time_wait
                .get(&victim)
                .is_some_and(|tw| tw.entered_ns == entered)
            {
                self.tw_remove(&victim);
                self.stats.time_wait_evicted += 1;
            }
        }
    }
}
