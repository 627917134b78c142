//! `accept_queue_overflow`: a listener whose accept queue overflowed.
//!
//! A connection that completed its handshake waits in the listener's
//! accept queue until the application calls accept(). The queue holds
//! `min(backlog, net.core.somaxconn)` connections; when it is full the
//! kernel drops SYNs (`tcp_conn_request()`) and the handshake's final ACK
//! (`tcp_v4_syn_recv_sock()`, net/ipv4/; or, with
//! `tcp_abort_on_overflow=1`, resets the client) and counts TcpExt
//! `ListenOverflows` and `ListenDrops`. sock_diag shows each listener's
//! queue (`idiag_rqueue`) and its limit (`idiag_wqueue`); each
//! reconciliation reads both, and the namespace's counters. From 6.15 the
//! kernel also names the listener of each dropped final ACK (drop reason
//! `TCP_LISTEN_OVERFLOW`, counted per listener by the model): proof for
//! that listener even when its queue has drained by the time tcpwatch looks.
//! Clients whose connects to the listener then timed out are named too.
use crate::tcp::NetnsId;
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use super::{endpoint, Detectors, Driver, Moved, Report, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    host::netns_state::NetnsState,
    host::sock_diag::DiagSocket,
    kernel::event::TcpState,
    model::{Connection, Model},
};

/// A namespace's listen counters at the last look.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ListenCounters {
    overflows: Moved,
    drops: Moved,
}

/// What the detector keeps between reconciliations, bounded: namespaces
/// (forgotten with the namespace), listeners (forgotten when a
/// reconciliation no longer lists them) and destinations of timed-out
/// connects (at most [`MAX_TIMEOUT_DESTINATIONS`], for [`TIMEOUT_WINDOW_NS`]).
#[derive(Debug, Default)]
pub(super) struct ListenState {
    counters: HashMap<NetnsId, ListenCounters>,
    /// Overflow drops the model had counted for each listener at the last look.
    overflow_drops: HashMap<ListenerKey, u32>,
    timed_out: HashMap<Destination, TimedOut>,
}

impl ListenState {
    pub(super) fn forget_netns(&mut self, gone: impl Fn(NetnsId) -> bool) {
        self.counters.retain(|netns, _| !gone(*netns));
        self.overflow_drops.retain(|k, _| !gone(k.netns));
        self.timed_out.retain(|d, _| !gone(d.netns));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ListenerKey {
    netns: NetnsId,
    addr: IpAddr,
    port: u16,
}

/// Where timed-out connects went: the client's namespace and destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Destination {
    netns: NetnsId,
    addr: IpAddr,
    port: u16,
}

/// Connects to one destination that timed out lately, and who made them.
#[derive(Clone, Debug, Default)]
struct TimedOut {
    /// Times of the timeouts in the window, oldest first (the latest
    /// [`MAX_TIMEOUTS`]: beyond, the count is a lower bound).
    at_ns: VecDeque<u64>,
    /// Up to [`NAMED_CLIENTS`] processes, the latest last.
    clients: Vec<(u32, Arc<str>)>,
}

/// How long a timed-out connect counts against a listener.
const TIMEOUT_WINDOW_NS: u64 = 300_000_000_000;
/// Destinations remembered at once (the oldest forgotten beyond).
const MAX_TIMEOUT_DESTINATIONS: usize = 1024;
/// Timeouts remembered per destination: with [`MAX_TIMEOUT_DESTINATIONS`],
/// at most 2 MiB of timestamps.
const MAX_TIMEOUTS: usize = 256;
/// Client processes named per listener.
const NAMED_CLIENTS: usize = 3;

impl Destination {
    /// Whether connects to here were for `listener`: to its own address, or
    /// over loopback inside its namespace to a loopback or wildcard one. A
    /// wildcard listener's other addresses are not known here, so a connect
    /// to one of them is not counted; nor is a connect from another
    /// namespace that has a listener of its own on that address and port
    /// (isolated networks reuse addresses): it went there.
    fn reaches(&self, listener: &ListenerKey, model: &Model) -> bool {
        if self.port != listener.port {
            return false;
        }
        if self.addr.is_loopback() {
            self.netns == listener.netns
                && (listener.addr == self.addr || listener.addr.is_unspecified())
        } else {
            !listener.addr.is_unspecified()
                && listener.addr == self.addr
                && (self.netns == listener.netns
                    || model
                        .listeners_serving(self.netns, self.addr, self.port)
                        .is_empty())
        }
    }
}

impl Detectors {
    /// The namespace's `ListenOverflows` and `ListenDrops`, read at a
    /// reconciliation: what moved since the previous one.
    pub(super) fn note_listen_counters(&mut self, netns: NetnsId, state: &NetnsState) {
        let (overflows, drops) = (
            state.counter("ListenOverflows"),
            state.counter("ListenDrops"),
        );
        let entry = self.listen.counters.entry(netns).or_insert(ListenCounters {
            overflows: Moved::first(overflows),
            drops: Moved::first(drops),
        });
        entry.overflows.read(overflows);
        entry.drops.read(drops);
    }

    /// A connect that timed out: held against the listener it was meant
    /// for, should one be seen overflowing.
    pub(super) fn note_connect_timeout(&mut self, c: &Connection, now: u64) {
        let t = &c.tuple;
        let dest = Destination {
            netns: t.netns,
            addr: t.remote,
            port: t.remote_port,
        };
        let timed_out = &mut self.listen.timed_out;
        if !timed_out.contains_key(&dest) && timed_out.len() >= MAX_TIMEOUT_DESTINATIONS {
            let oldest = timed_out
                .iter()
                .min_by_key(|(_, t)| t.at_ns.back().copied().unwrap_or(0))
                .map(|(d, _)| *d);
            if let Some(oldest) = oldest {
                timed_out.remove(&oldest);
            }
        }
        let entry = timed_out.entry(dest).or_default();
        if entry.at_ns.len() >= MAX_TIMEOUTS {
            entry.at_ns.pop_front();
        }
        entry.at_ns.push_back(now);
        if c.pid != 0 {
            entry.clients.retain(|(pid, _)| *pid != c.pid);
            if entry.clients.len() >= NAMED_CLIENTS {
                entry.clients.remove(0);
            }
            entry.clients.push((c.pid, c.comm.clone()));
        }
    }

    /// Connects to `listener` that timed out within the window, when the
    /// latest of them did (0: none), and the processes that made the latest.
    fn timed_out_towards(
        &mut self,
        listener: &ListenerKey,
        model: &Model,
        now: u64,
    ) -> (u64, u64, Vec<String>) {
        let since = now.saturating_sub(TIMEOUT_WINDOW_NS);
        self.listen.timed_out.retain(|_, t| {
            t.at_ns.retain(|at| *at >= since);
            !t.at_ns.is_empty()
        });
        let (mut count, mut latest) = (0, 0);
        let mut clients = Vec::new();
        for (_, t) in self
            .listen
            .timed_out
            .iter()
            .filter(|(d, _)| d.reaches(listener, model))
        {
            count += t.at_ns.len() as u64;
            latest = latest.max(t.at_ns.back().copied().unwrap_or(0));
            for (pid, comm) in &t.clients {
                if clients.len() < NAMED_CLIENTS {
                    clients.push(format!("{comm} (pid {pid})"));
                }
            }
        }
        (count, latest, clients)
    }

    /// The listeners a reconciliation listed in `netns`. One is reported
    /// when the kernel dropped its handshakes for a full accept queue
    /// (`TCP_LISTEN_OVERFLOW` drops for it since the last look), or when
    /// its queue is full while the namespace's overflow counters moved;
    /// with its owner as the model knows it (the holder of the listener,
    /// checked against `/proc` by the same reconciliation). An open one is
    /// brought up to date as clients' connects to it time out.
    pub fn on_listen_queues(
        &mut self,
        netns: NetnsId,
        sockets: &[DiagSocket],
        model: &Model,
        now: u64,
    ) -> Vec<Report> {
        let mut out = Vec::new();
        let Some(counters) = self.listen.counters.get(&netns).copied() else {
            return out;
        };
        let listed: Vec<&DiagSocket> = sockets
            .iter()
            .filter(|s| s.state == TcpState::Listen)
            .collect();
        // What each listed listener's overflow drops moved since the last look.
        let mut drops_now = HashMap::new();
        for l in model.listeners().filter(|l| l.tuple.netns == netns) {
            let key = ListenerKey {
                netns,
                addr: l.tuple.local,
                port: l.tuple.local_port,
            };
            *drops_now.entry(key).or_insert(0u32) += l.overflow_drops;
        }
        let before = std::mem::take(&mut self.listen.overflow_drops);
        self.listen.overflow_drops.extend(
            before
                .iter()
                .filter(|(k, _)| k.netns != netns)
                .map(|(k, v)| (*k, *v)),
        );
        for s in &listed {
            let key = ListenerKey {
                netns,
                addr: s.local,
                port: s.local_port,
            };
            let dropped = drops_now.get(&key).copied().unwrap_or(0);
            let dropped_since = dropped.saturating_sub(before.get(&key).copied().unwrap_or(0));
            self.listen.overflow_drops.insert(key, dropped);

            let (queue, limit) = (s.recv_queue, s.send_queue);
            // The kernel's test is `sk_ack_backlog > sk_max_ack_backlog`
            // (sk_acceptq_is_full()): at the limit, the next one overflows.
            let full = limit > 0 && queue >= limit;
            let namespace_moved = counters.overflows.moved > 0 || counters.drops.moved > 0;
            let subject = Subject::Listener {
                netns,
                addr: s.local,
                port: s.local_port,
            };
            let open = self
                .open
                .get(&(FindingKind::AcceptQueueOverflow, subject.clone()));
            let previous = open.map(|o| o.count);
            let shown_timeout = open.map_or(0, |o| o.detail);
            let new_overflows = if full && namespace_moved {
                counters.overflows.moved.max(u64::from(dropped_since))
            } else {
                u64::from(dropped_since)
            };
            if new_overflows == 0 && previous.is_none() {
                continue;
            }
            let count = previous.unwrap_or(0) + new_overflows;
            let (timed_out, latest_timeout, clients) = self.timed_out_towards(&key, model, now);
            // Never back: timeouts leaving the window are no news.
            let latest_timeout = latest_timeout.max(shown_timeout);
            let (who, named) = Who::listener(model, netns, s.local, s.local_port);
            let drops = counters.drops.moved;
            let listener = endpoint(s.local, s.local_port);
            let state = if full {
                format!("has {queue} connections waiting in a full accept queue (limit {limit})")
            } else {
                format!("had a full accept queue (limit {limit}; {queue} waiting now)")
            };
            let per_listener = if dropped > 0 {
                format!(
                    "; the kernel dropped the final ACK of {dropped} handshakes to it for want of room"
                )
            } else {
                String::new()
            };
            let clients_said = match (timed_out, clients.is_empty()) {
                (0, _) => String::new(),
                (n, true) => format!("; {n} connects to it timed out"),
                (n, false) => format!("; {n} connects to it timed out, by {}", clients.join(", ")),
            };
            self.observe_detailed(
                &mut out,
                FindingKind::AcceptQueueOverflow,
                subject,
                now,
                // A newer timeout is worth an update, not new evidence of
                // an overflow; timeouts ageing out of the window are neither.
                (count, latest_timeout),
                Driver::Event,
                |count| {
                    who.apply(
                        Finding::new(
                            FindingKind::AcceptQueueOverflow,
                            Severity::Warning,
                            format!(
                                "{named} on {listener} {state}; {count} handshakes overflowed it since{per_listener}{clients_said}"
                            ),
                        )
                        .evidence("count", count)
                        .evidence("ListenOverflows", count)
                        .evidence("ListenDrops_last", drops)
                        .evidence("overflow_drops", dropped)
                        .evidence("queue", queue)
                        .evidence("queue_limit", limit)
                        .evidence("clients_timed_out", timed_out)
                        .evidence("clients", &clients),
                    )
                    .remedy(
                        "Connections finished their handshake faster than the application accept()s them. \
                         The limit is min(the listen() backlog, net.core.somaxconn); beyond it the kernel \
                         drops new SYNs and the client's final ACK (the client then retransmits, or its \
                         connect times out after tcp_syn_retries) or, with net.ipv4.tcp_abort_on_overflow=1, \
                         resets it. Accept faster (more workers, a shorter critical path in the accept \
                         loop) or raise the backlog and somaxconn.",
                    )
                },
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::event::{EventKind, OwnerSource, TcpEvent},
        model::{Finished, Outcome},
    };

    /// A connect from `sport` in namespace `netns` to `to:port` that timed
    /// out after one SYN retransmit, as the model ends it.
    fn timed_out(netns: NetnsId, sport: u16, to: &str, port: u16, pid: u32) -> Finished {
        let ev = |ts: u64, kind: EventKind, old: TcpState, new: TcpState| TcpEvent {
            ts_ns: ts,
            skaddr: 0x1000 + u64::from(sport),
            kind,
            pid,
            comm: "client".into(),
            owner: OwnerSource::Connect,
            netns,
            saddr: "127.0.0.1".parse().unwrap(),
            sport,
            daddr: to.parse().unwrap(),
            dport: port,
            old_state: Some(old),
            new_state: Some(new),
            ..TcpEvent::blank()
        };
        let mut model = Model::default();
        let mut out = Vec::new();
        for e in [
            ev(0, EventKind::State, TcpState::Close, TcpState::SynSent),
            ev(
                1_000_000_000,
                EventKind::Retransmit,
                TcpState::SynSent,
                TcpState::SynSent,
            ),
            ev(
                3_000_000_000,
                EventKind::State,
                TcpState::SynSent,
                TcpState::Close,
            ),
        ] {
            out.extend(model.apply(&e));
        }
        match out.pop() {
            Some(Outcome::Finished(f)) => {
                assert_eq!(f.end, crate::model::EndReason::ConnectTimeout);
                f
            }
            other => panic!("{other:?}"),
        }
    }

    fn listener(netns: NetnsId, addr: &str, port: u16) -> ListenerKey {
        ListenerKey {
            netns,
            addr: addr.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn timed_out_connects_count_against_the_listener_they_were_for() {
        let mut d = Detectors::new(Default::default());
        d.note_connect_timeout(
            &timed_out(NetnsId(1), 40000, "127.0.0.1", 80, 10).connection,
            5,
        );
        d.note_connect_timeout(
            &timed_out(NetnsId(1), 40001, "127.0.0.1", 80, 11).connection,
            6,
        );
        // Another namespace's loopback is another listener.
        d.note_connect_timeout(
            &timed_out(NetnsId(2), 40002, "127.0.0.1", 80, 12).connection,
            7,
        );
        // Another port.
        d.note_connect_timeout(
            &timed_out(NetnsId(1), 40003, "127.0.0.1", 81, 13).connection,
            8,
        );
        // A remote host's port 80 is not a local wildcard listener's.
        d.note_connect_timeout(
            &timed_out(NetnsId(1), 40004, "192.0.2.9", 80, 14).connection,
            9,
        );
        let model = Model::default();
        let (count, latest, clients) =
            d.timed_out_towards(&listener(NetnsId(1), "0.0.0.0", 80), &model, 10);
        assert_eq!(latest, 6);
        assert_eq!(count, 2);
        assert_eq!(clients, ["client (pid 10)", "client (pid 11)"]);
        assert_eq!(
            d.timed_out_towards(&listener(NetnsId(1), "127.0.0.1", 80), &model, 10)
                .0,
            2
        );
        // The listener on that remote address is found by its address,
        // from any namespace (a client elsewhere connecting to it).
        assert_eq!(
            d.timed_out_towards(&listener(NetnsId(3), "192.0.2.9", 80), &model, 10)
                .0,
            1
        );
        // Five minutes on, they no longer count, and are forgotten.
        let later = 10 + TIMEOUT_WINDOW_NS;
        assert_eq!(
            d.timed_out_towards(&listener(NetnsId(1), "0.0.0.0", 80), &model, later)
                .0,
            0
        );
        assert!(d.listen.timed_out.is_empty());
    }

    #[test]
    fn timed_out_connects_are_bounded() {
        let mut d = Detectors::new(Default::default());
        let one = timed_out(NetnsId(1), 40000, "127.0.0.1", 80, 10);
        for i in 0..(2 * MAX_TIMEOUTS as u64) {
            d.note_connect_timeout(&one.connection, i);
        }
        for port in 0..(2 * MAX_TIMEOUT_DESTINATIONS) as u16 {
            let f = timed_out(NetnsId(1), 40000, "127.0.0.1", 1000 + port, 10);
            d.note_connect_timeout(&f.connection, 1_000_000 + u64::from(port));
        }
        assert_eq!(d.listen.timed_out.len(), MAX_TIMEOUT_DESTINATIONS);
        assert!(d
            .listen
            .timed_out
            .values()
            .all(|t| t.at_ns.len() <= MAX_TIMEOUTS && t.clients.len() <= NAMED_CLIENTS));
        // The oldest destination went first.
        assert!(!d.listen.timed_out.keys().any(|k| k.port == 80));
    }
}
