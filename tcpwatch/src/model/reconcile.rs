//! Reconciliation: the model checked against the kernel's socket list of
//! one namespace (sock_diag), records it no longer has dropped, records
//! whose events were lost corrected, sockets older than tcpwatch seeded.
use std::collections::HashMap;

use super::*;

/// A socket the kernel listed (sock_diag), with its owner where known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSocket {
    pub tuple: FourTuple,
    pub state: TcpState,
    pub pid: u32,
    pub comm: String,
    pub cgroup: u64,
    /// No process holds it (inode 0): a timewait socket, possibly in its
    /// FIN_WAIT2 substate.
    pub orphan: bool,
    /// Time left on a timewait socket's timer, as the kernel reports it.
    pub time_wait_left_ns: Option<u64>,
    /// The processes holding it now (`/proc/PID/fd`, as `ss -p`), lowest
    /// pid first, a few at most; and how many hold it in all.
    pub holders: Vec<Owner>,
    pub holder_count: u32,
    /// For a listener: its accept queue's length and limit.
    pub queue: u32,
    pub queue_limit: u32,
}

impl KernelSocket {
    /// Whom to name for a socket the model attributes to `current`: the
    /// current owner while it still holds the socket (it used it last as
    /// far as the kernel said), else the first holder. None when nobody is
    /// known to hold it.
    pub(super) fn owner_for(&self, current: u32) -> Option<(u32, &str, u64)> {
        if self.holders.is_empty() {
            return (self.pid != 0).then_some((self.pid, self.comm.as_str(), self.cgroup));
        }
        // More hold it than were kept: the current owner may be among
        // the others, so it is not renamed.
        if current != 0
            && self.holder_count as usize > self.holders.len()
            && !self.holders.iter().any(|h| h.pid == current)
        {
            return None;
        }
        self.holders
            .iter()
            .find(|h| h.pid == current)
            .or(self.holders.first())
            .map(|h| (h.pid, h.comm.as_str(), h.cgroup))
    }
}

/// What one reconciliation changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// TIME_WAIT sockets the kernel has that the model did not infer.
    pub time_wait_added: u64,
    /// TIME_WAIT entries the kernel no longer has (killed early by a reset
    /// or a reuse, or never created past tcp_max_tw_buckets).
    pub time_wait_removed: u64,
    /// Connections the kernel has that the model did not know.
    pub connections_added: u64,
    /// Connections the model kept that the kernel no longer has.
    pub connections_removed: u64,
    /// Connections whose state the kernel's list corrected.
    pub states_corrected: u64,
    /// Listeners the kernel has that the model did not know, and those it
    /// no longer has.
    pub listeners_added: u64,
    pub listeners_removed: u64,
    /// Connections and listeners whose owner no longer held them (fork,
    /// exec, a daemon's exit), now named after the process that does.
    pub owners_corrected: u64,
}

impl Reconciled {
    /// Each kind with its count, named as the metrics label them.
    pub fn by_kind(&self) -> [(&'static str, u64); 8] {
        [
            ("time_wait_added", self.time_wait_added),
            ("time_wait_removed", self.time_wait_removed),
            ("added", self.connections_added),
            ("removed", self.connections_removed),
            ("state", self.states_corrected),
            ("listener_added", self.listeners_added),
            ("listener_removed", self.listeners_removed),
            ("owner", self.owners_corrected),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_kind().iter().map(|(_, n)| n).sum()
    }
}

impl std::ops::AddAssign for Reconciled {
    fn add_assign(&mut self, o: Reconciled) {
        self.time_wait_added += o.time_wait_added;
        self.time_wait_removed += o.time_wait_removed;
        self.connections_added += o.connections_added;
        self.connections_removed += o.connections_removed;
        self.states_corrected += o.states_corrected;
        self.listeners_added += o.listeners_added;
        self.listeners_removed += o.listeners_removed;
        self.owners_corrected += o.owners_corrected;
    }
}

/// The kernel's list of one namespace, as reconciliation reads it.
struct KernelView<'a> {
    /// Local ports with a listener: a connection on one was accepted.
    listening: std::collections::HashSet<u16>,
    /// Timewait sockets: TIME_WAIT, and orphans in FIN_WAIT2, with the time
    /// left on their timer.
    time_wait: HashMap<FourTuple, (TcpState, Option<u64>)>,
    /// Full sockets of live connections.
    live: HashMap<FourTuple, &'a KernelSocket>,
}

impl<'a> KernelView<'a> {
    fn of(sockets: &'a [KernelSocket]) -> Self {
        let listening: std::collections::HashSet<u16> = sockets
            .iter()
            .filter(|s| s.state == TcpState::Listen)
            .map(|s| s.tuple.local_port)
            .collect();
        // Timewait sockets: TIME_WAIT, and orphans in FIN_WAIT2.
        let orphan_fin_wait2 = |s: &&KernelSocket| s.state == TcpState::FinWait2 && s.orphan;
        let kernel_tw: HashMap<FourTuple, (TcpState, Option<u64>)> = sockets
            .iter()
            .filter(|s| s.state == TcpState::TimeWait || orphan_fin_wait2(s))
            .map(|s| (s.tuple, (s.state, s.time_wait_left_ns)))
            .collect();
        let kernel_live: HashMap<FourTuple, &KernelSocket> = sockets
            .iter()
            .filter(|s| {
                !matches!(
                    s.state,
                    TcpState::TimeWait | TcpState::Listen | TcpState::Close
                ) && !orphan_fin_wait2(s)
            })
            .map(|s| (s.tuple, s))
            .collect();
        KernelView {
            listening,
            time_wait: kernel_tw,
            live: kernel_live,
        }
    }
}

impl Model {
    /// Events were lost: every live record may have missed transitions.
    /// Marks them until a reconciliation checks them; returns how many.
    pub fn mark_uncertain(&mut self) -> usize {
        let mut marked = 0;
        for c in self.connections.values_mut() {
            c.uncertain = true;
            marked += 1;
        }
        marked
    }

    /// Drops everything about namespaces not in `listed` (they are gone,
    /// and their sockets with them); returns how many entries went.
    /// Namespaces whose records changed at or after `since_ns` (a
    /// connection's transition, a listener, a TIME_WAIT entered): they
    /// exist, even if a dump that started before listed none of them.
    pub fn namespaces_active_since(&self, since_ns: u64) -> Vec<NetnsId> {
        let mut active: Vec<NetnsId> = self
            .connections
            .values()
            .filter(|c| c.state_since_ns >= since_ns)
            .map(|c| c.tuple.netns)
            .chain(
                self.listeners
                    .values()
                    .filter(|l| l.since_ns >= since_ns)
                    .map(|l| l.tuple.netns),
            )
            .chain(
                self.time_wait
                    .iter()
                    .filter(|(_, tw)| tw.entered_ns >= since_ns)
                    .map(|(t, _)| t.netns),
            )
            .collect();
        active.sort_unstable();
        active.dedup();
        active
    }

    pub fn forget_namespaces_except(&mut self, listed: &[NetnsId]) -> u64 {
        // A set: every record is looked up, and a host may have thousands.
        let listed: std::collections::HashSet<NetnsId> = listed.iter().copied().collect();
        let gone = |netns: NetnsId| !listed.contains(&netns);
        let connections: Vec<u64> = self
            .connections
            .values()
            .filter(|c| gone(c.tuple.netns))
            .map(|c| c.skaddr)
            .collect();
        let time_wait: Vec<FourTuple> = self
            .time_wait
            .keys()
            .filter(|t| gone(t.netns))
            .copied()
            .collect();
        let mut removed = (connections.len() + time_wait.len()) as u64;
        for addr in connections {
            self.connections.remove(&addr);
        }
        for t in time_wait {
            self.tw_remove(&t);
        }
        let before = self.seeded.len();
        self.seeded.retain(|t, _| !gone(t.netns));
        removed += (before - self.seeded.len()) as u64;
        self.time_wait_per_netns.retain(|ns, _| !gone(*ns));
        self.max_tw_buckets.retain(|ns, _| !gone(*ns));
        self.reconciled_netns.retain(|ns, _| !gone(*ns));
        let before = self.listeners.len();
        self.listeners.retain(|_, l| !gone(l.tuple.netns));
        removed += (before - self.listeners.len()) as u64;
        self.stats.namespace_gone += removed;
        removed
    }

    /// Makes the model agree with the kernel's list of the sockets of
    /// `netns`, taken by a dump that started at `dump_start_ns`. Only what
    /// predates the dump is removed, so changes during it are not undone.
    pub fn reconcile(
        &mut self,
        netns: NetnsId,
        sockets: &[KernelSocket],
        dump_start_ns: u64,
        now_ns: u64,
    ) -> Reconciled {
        let mut r = Reconciled::default();
        let view = KernelView::of(sockets);
        self.reconcile_time_wait(netns, &view, dump_start_ns, now_ns, &mut r);
        let known = self.reconcile_connections(netns, &view, dump_start_ns, &mut r);
        self.seed_unknown(&view, &known, dump_start_ns, now_ns, &mut r);
        self.reconcile_listeners(netns, sockets, dump_start_ns, &mut r);
        if self.reconciled_netns.insert(netns, dump_start_ns).is_none() {
            self.stats.seeded += r;
        } else {
            self.stats.corrections += r;
        }
        r
    }

    /// The TIME_WAIT table against the kernel's timewait sockets: entries
    /// the kernel no longer has go (an early death when it killed one well
    /// before its timer), entries it has that the model lacks are added.
    fn reconcile_time_wait(
        &mut self,
        netns: NetnsId,
        view: &KernelView,
        dump_start_ns: u64,
        now_ns: u64,
        r: &mut Reconciled,
    ) {
        let stale_tw: Vec<FourTuple> = self
            .time_wait
            .iter()
            .filter(|(t, tw)| {
                t.netns == netns && tw.entered_ns < dump_start_ns && !view.time_wait.contains_key(t)
            })
            .map(|(t, _)| *t)
            .collect();
        // The first look at a namespace has no history to compare with.
        let seen_before = self.reconciled_netns.contains_key(&netns);
        for t in stale_tw {
            if let Some(tw) = self.tw_remove(&t) {
                let age_ns = dump_start_ns.saturating_sub(tw.entered_ns);
                // Taken over by a new connection whose events are still on
                // their way: a reuse, not a death.
                let reused = view.live.contains_key(&t);
                if seen_before
                    && tw.confirmed
                    && tw.substate == TcpState::TimeWait
                    && !reused
                    && age_ns + EARLY_DEATH_MARGIN_NS < TIME_WAIT_NS
                    && self.early_time_wait_deaths.len() < MAX_EARLY_DEATHS
                {
                    self.early_time_wait_deaths.push(TimeWaitDeath {
                        tuple: t,
                        age_ns,
                        pid: tw.pid,
                        comm: tw.comm.clone(),
                        cgroup: tw.cgroup,
                        opener: tw.opener,
                    });
                }
            }
            r.time_wait_removed += 1;
        }
        // TIME_WAITs a new connection took over after the dump started are
        // still in it, but over.
        let taken_during_dump: std::collections::HashSet<FourTuple> = self
            .recently_closed
            .iter()
            .filter(|(t, at)| *at >= dump_start_ns && t.netns == netns)
            .map(|(t, _)| *t)
            .collect();
        for (t, (substate, left_ns)) in &view.time_wait {
            if taken_during_dump.contains(t) {
                continue;
            }
            if let Some(entry) = self.time_wait.get_mut(t) {
                if entry.substate != *substate {
                    entry.substate = *substate;
                    r.time_wait_added += 1;
                }
                entry.confirmed |= *substate == TcpState::TimeWait;
            } else {
                let opener = if view.listening.contains(&t.local_port) {
                    Opener::Passive
                } else {
                    Opener::Active
                };
                // Its owner closed it. A TIME_WAIT's timer says how long ago
                // it started (or was last restarted by a retransmitted FIN);
                // an orphan's FIN_WAIT2 age is unknown.
                let entered_ns = match (substate, left_ns) {
                    (TcpState::TimeWait, Some(left)) if *left <= TIME_WAIT_NS => {
                        now_ns.saturating_sub(TIME_WAIT_NS - left)
                    }
                    _ => now_ns,
                };
                let comm = self.comms.share("");
                self.tw_insert(
                    *t,
                    TimeWait {
                        entered_ns,
                        pid: 0,
                        comm,
                        cgroup: 0,
                        opener,
                        substate: *substate,
                        confirmed: *substate == TcpState::TimeWait,
                    },
                );
                // Out of order in the expiry queue: it may outlive its timer
                // in the model until the next reconciliation removes it.
                self.time_wait_order.push_back((*t, entered_ns));
                r.time_wait_added += 1;
            }
        }
        self.evict_time_wait_past_cap();
    }

    /// One pass over this namespace's records: those the kernel no longer
    /// has go; those marked uncertain (events were lost) take the kernel's
    /// state; owners are confirmed. Returns the 4-tuples the model knows.
    fn reconcile_connections(
        &mut self,
        netns: NetnsId,
        view: &KernelView,
        dump_start_ns: u64,
        r: &mut Reconciled,
    ) -> std::collections::HashSet<FourTuple> {
        // A record that is not uncertain and differs is only behind its
        // events still in the ring buffer: correcting it would race them.
        let mut known: std::collections::HashSet<FourTuple> = self
            .seeded
            .keys()
            .filter(|t| t.netns == netns)
            .copied()
            .collect();
        let mut gone = Vec::new();
        for c in self.connections.values_mut() {
            if c.tuple.netns != netns {
                continue;
            }
            known.insert(c.tuple);
            if c.state_since_ns >= dump_start_ns {
                continue;
            }
            match view.live.get(&c.tuple) {
                Some(k) => {
                    c.owner_confirmed |= take_owner(c, k, &mut self.comms, r);
                    if c.uncertain && k.state != c.state {
                        c.state = k.state;
                        // The kernel was read after the dump started: events
                        // from then on still apply.
                        c.state_since_ns = dump_start_ns;
                        c.state_age_known = false;
                        r.states_corrected += 1;
                    }
                    c.uncertain = false;
                }
                None if c.state != TcpState::SynSent => gone.push(c.skaddr),
                None => {}
            }
        }
        for addr in gone {
            self.connections.remove(&addr);
            r.connections_removed += 1;
        }
        for c in self.seeded.values_mut().filter(|c| c.tuple.netns == netns) {
            let Some(k) = view.live.get(&c.tuple) else {
                continue;
            };
            take_owner(c, k, &mut self.comms, r);
        }
        let gone_seeded: Vec<FourTuple> = self
            .seeded
            .keys()
            .filter(|t| t.netns == netns && !view.live.contains_key(t))
            .copied()
            .collect();
        for t in gone_seeded {
            self.seeded.remove(&t);
            r.connections_removed += 1;
        }
        known
    }

    /// Sockets the kernel has that the model does not know (older than
    /// tcpwatch, or their events lost) become seeded records, bounded by
    /// `max_connections`.
    fn seed_unknown(
        &mut self,
        view: &KernelView,
        known: &std::collections::HashSet<FourTuple>,
        dump_start_ns: u64,
        now_ns: u64,
        r: &mut Reconciled,
    ) {
        // Connections that ended after the dump started are in it, but
        // over: they must not come back as seeded records.
        let closed_during_dump: std::collections::HashSet<FourTuple> = self
            .recently_closed
            .iter()
            .filter(|(_, at)| *at >= dump_start_ns)
            .map(|(t, _)| *t)
            .collect();
        while self
            .recently_closed
            .front()
            .is_some_and(|(_, at)| *at < dump_start_ns)
        {
            self.recently_closed.pop_front();
        }
        for (&tuple, &k) in &view.live {
            if known.contains(&tuple)
                || closed_during_dump.contains(&tuple)
                || self.seeded.len() >= self.limits.max_connections
            {
                continue;
            }
            let opener = if view.listening.contains(&tuple.local_port) {
                Opener::Passive
            } else {
                Opener::Unknown
            };
            let (pid, comm, cgroup) = k.owner_for(0).unwrap_or((0, "", 0));
            let comm = self.comms.share(comm);
            self.seeded.insert(
                tuple,
                Connection {
                    closer: closer_of(TcpState::Established, k.state),
                    state_age_known: false,
                    ..Connection::new(0, tuple, (pid, comm, cgroup), opener, k.state, now_ns)
                },
            );
            r.connections_added += 1;
        }
    }
}

/// The owner and holder count the kernel's list (and `/proc`) give `c`'s
/// socket; true when an owner was found there.
fn take_owner(c: &mut Connection, k: &KernelSocket, comms: &mut Comms, r: &mut Reconciled) -> bool {
    c.holders = u16::try_from(k.holder_count).unwrap_or(u16::MAX);
    let Some((pid, comm, cgroup)) = k.owner_for(c.pid) else {
        return false;
    };
    if pid != c.pid || *c.comm != *comm {
        c.pid = pid;
        c.comm = comms.share(comm);
        r.owners_corrected += 1;
    }
    if cgroup != 0 {
        c.cgroup = cgroup;
    }
    true
}
