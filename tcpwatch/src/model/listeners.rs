//! Listening sockets: learnt from `listen()` transitions and the kernel's
//! list, with their accept and SYN queues as the last reconciliation saw
//! them.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use super::*;

/// A listening socket: learnt from `listen()` (CLOSE -> LISTEN, in process
/// context) or from the kernel's socket list.
#[derive(Clone, Debug, PartialEq)]
pub struct Listener {
    pub tuple: FourTuple,
    pub pid: u32,
    pub comm: Arc<str>,
    pub cgroup: u64,
    pub since_ns: u64,
    /// Its accept queue's length and limit at the last reconciliation.
    pub queue: u32,
    pub queue_limit: u32,
    /// Half-open connections in its SYN queue at the last reconciliation
    /// (request sockets: see [`half_open_by_listener`]). The SYN queue's
    /// limit is the accept queue's (`inet_csk_reqsk_queue_is_full()`).
    pub half_open: u32,
    /// Segments the kernel dropped for this listener since tcpwatch saw it
    /// (drop events: 6.12+), and of those the handshakes' last ACKs that
    /// met a full accept queue (`TCP_LISTEN_OVERFLOW`, 6.15+).
    pub drops: u32,
    pub overflow_drops: u32,
}

/// Half-open connections per listener: the kernel lists each request
/// socket (a SYN answered, its ACK awaited) as SYN_RECV with the address
/// and port the SYN was sent to (`inet_req_diag_fill()` in
/// net/ipv4/inet_diag.c; /proc/net/tcp likewise), not the listener's own
/// address. Each goes to the listener bound to that address, else to a
/// wildcard listener of the port (of its family first: a dual-stack `::`
/// listener takes IPv4 SYNs too, whose request sockets are IPv4). Listeners
/// sharing an address and port (SO_REUSEPORT) share one count, since a
/// request socket does not say which of them holds it.
pub fn half_open_by_listener(
    listeners: impl IntoIterator<Item = (IpAddr, u16)>,
    half_open: impl IntoIterator<Item = (IpAddr, u16)>,
) -> HashMap<(IpAddr, u16), u32> {
    let mut out: HashMap<(IpAddr, u16), u32> = listeners.into_iter().map(|l| (l, 0)).collect();
    for (addr, port) in half_open {
        let mapped = match addr {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        };
        let same_family_any = if addr.is_ipv4() {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        };
        let candidates = [
            Some(addr),
            mapped,
            Some(same_family_any),
            Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
        ];
        if let Some(n) = candidates
            .into_iter()
            .flatten()
            .find(|a| out.contains_key(&(*a, port)))
            .and_then(|a| out.get_mut(&(a, port)))
        {
            *n = n.saturating_add(1);
        }
    }
    out
}

/// Keys of listeners learnt from the kernel's list: below any kernel
/// address, so they never collide with a socket address.
pub(super) const SEEDED_LISTENER_KEYS: u64 = 1 << 40;

impl Model {
    /// Listening sockets.
    pub fn listeners(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.values()
    }

    /// The listeners that serve connections to `addr:port` in `netns`:
    /// those bound to that address, else those bound to the wildcard.
    pub fn listeners_serving(&self, netns: NetnsId, addr: IpAddr, port: u16) -> Vec<&Listener> {
        let on_port = || {
            self.listeners
                .values()
                .filter(move |l| l.tuple.netns == netns && l.tuple.local_port == port && l.pid != 0)
        };
        let exact: Vec<&Listener> = on_port().filter(|l| l.tuple.local == addr).collect();
        if !exact.is_empty() {
            return exact;
        }
        on_port()
            .filter(|l| l.tuple.local.is_unspecified())
            .collect()
    }

    /// The listener at socket address `skaddr`, when the model learnt it
    /// from its `listen()`.
    pub fn listener_at(&self, skaddr: u64) -> Option<&Listener> {
        self.listeners.get(&skaddr).filter(|l| l.pid != 0)
    }

    /// Listeners: as many per address and port as the kernel lists. Those
    /// the kernel no longer has go (unless learnt after the dump started);
    /// those it has beyond the model's are added with their owner from
    /// `/proc` where known.
    pub(super) fn reconcile_listeners(
        &mut self,
        netns: NetnsId,
        sockets: &[KernelSocket],
        dump_start_ns: u64,
        r: &mut Reconciled,
    ) {
        let mut kernel: HashMap<FourTuple, Vec<&KernelSocket>> = HashMap::new();
        for s in sockets.iter().filter(|s| s.state == TcpState::Listen) {
            kernel.entry(s.tuple).or_default().push(s);
        }
        let half_open = half_open_by_listener(
            kernel.keys().map(|t| (t.local, t.local_port)),
            sockets
                .iter()
                .filter(|s| s.state == TcpState::SynRecv)
                .map(|s| (s.tuple.local, s.tuple.local_port)),
        );
        let half_open_of = |t: &FourTuple| {
            half_open
                .get(&(t.local, t.local_port))
                .copied()
                .unwrap_or(0)
        };
        let mut model: HashMap<FourTuple, Vec<(u64, u64)>> = HashMap::new();
        for (key, l) in self
            .listeners
            .iter()
            .filter(|(_, l)| l.tuple.netns == netns)
        {
            model.entry(l.tuple).or_default().push((l.since_ns, *key));
        }
        for (tuple, mut known) in model {
            let listed = kernel.get(&tuple).map_or(0, Vec::len);
            // Seeded ones first, then the oldest.
            known.sort_by_key(|(since, key)| (*key >= SEEDED_LISTENER_KEYS, *since));
            let extra = known.len().saturating_sub(listed);
            for (since, key) in known.into_iter().take(extra) {
                if since < dump_start_ns {
                    self.listeners.remove(&key);
                    r.listeners_removed += 1;
                }
            }
        }
        // A listener passed on by a daemonizing fork, or shared by a
        // pre-fork server's workers: named after a process that holds it.
        for l in self
            .listeners
            .values_mut()
            .filter(|l| l.tuple.netns == netns)
        {
            let Some(listed) = kernel.get(&l.tuple) else {
                continue;
            };
            // Several listeners on one address and port (SO_REUSEPORT):
            // each keeps its owner while that process holds one of them.
            let Some(k) = listed
                .iter()
                .find(|k| k.holders.iter().any(|h| h.pid == l.pid))
                .or(listed.first())
            else {
                continue;
            };
            if let Some((pid, comm, cgroup)) = k.owner_for(l.pid) {
                if pid != l.pid || *l.comm != *comm {
                    l.pid = pid;
                    l.comm = self.comms.share(comm);
                    r.owners_corrected += 1;
                }
                if cgroup != 0 {
                    l.cgroup = cgroup;
                }
            }
            (l.queue, l.queue_limit) = (k.queue, k.queue_limit);
            l.half_open = half_open_of(&l.tuple);
        }
        for (tuple, listed) in kernel {
            let known = self.listeners.values().filter(|l| l.tuple == tuple).count();
            for s in listed.into_iter().skip(known) {
                if self.listeners.len() >= self.limits.max_connections {
                    return;
                }
                self.next_seeded_listener = (self.next_seeded_listener + 1) % SEEDED_LISTENER_KEYS;
                let (pid, comm, cgroup) = s.owner_for(0).unwrap_or((0, "", 0));
                let comm = self.comms.share(comm);
                self.listeners.insert(
                    self.next_seeded_listener,
                    Listener {
                        tuple,
                        pid,
                        comm,
                        cgroup,
                        since_ns: dump_start_ns,
                        queue: s.queue,
                        queue_limit: s.queue_limit,
                        half_open: half_open_of(&tuple),
                        drops: 0,
                        overflow_drops: 0,
                    },
                );
                r.listeners_added += 1;
            }
        }
    }
}
