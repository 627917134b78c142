//! `accept_queue_overflow`: a listener whose accept queue is full while the
//! kernel counts overflows in its namespace.
//!
//! A connection that completed its handshake waits in the listener's
//! accept queue until the application calls accept(). The queue holds
//! `min(backlog, net.core.somaxconn)` connections; when it is full the
//! kernel drops the handshake's final ACK (or, with
//! `tcp_abort_on_overflow=1`, resets the client) and counts TcpExt
//! `ListenOverflows` and `ListenDrops` (`tcp_v4_syn_recv_sock()` and
//! `tcp_conn_request()` in net/ipv4/). sock_diag shows each listener's
//! queue (`idiag_rqueue`) and its limit (`idiag_wqueue`); each
//! reconciliation reads both, and the namespace's counters.
use std::collections::HashMap;

use super::{endpoint, kind, Detectors, Driver, Moved, Report, Who};
use crate::{
    audit::NetnsState,
    diag::DiagSocket,
    event::TcpState,
    finding::{Finding, Severity},
    model::Model,
};

/// A namespace's listen counters at the last look.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ListenCounters {
    overflows: Moved,
    drops: Moved,
}

/// Per namespace; forgotten with the namespace.
pub(super) type ListenState = HashMap<u32, ListenCounters>;

impl Detectors {
    /// The namespace's `ListenOverflows` and `ListenDrops`, read at a
    /// reconciliation: what moved since the previous one.
    pub(super) fn note_listen_counters(&mut self, netns: u32, state: &NetnsState) {
        let (overflows, drops) = (
            state.counter("ListenOverflows"),
            state.counter("ListenDrops"),
        );
        let entry = self.listen.entry(netns).or_insert(ListenCounters {
            overflows: Moved::first(overflows),
            drops: Moved::first(drops),
        });
        entry.overflows.read(overflows);
        entry.drops.read(drops);
    }

    /// The listeners a reconciliation listed in `netns`: those whose accept
    /// queue is full while the namespace's overflow counter moved are
    /// reported, with their owner as the model knows it (the holder of the
    /// listener, checked against `/proc` by the same reconciliation).
    pub fn on_listen_queues(
        &mut self,
        netns: u32,
        sockets: &[DiagSocket],
        model: &Model,
        now: u64,
    ) -> Vec<Report> {
        let mut out = Vec::new();
        let Some(counters) = self.listen.get(&netns).copied() else {
            return out;
        };
        if counters.overflows.moved == 0 && counters.drops.moved == 0 {
            return out;
        }
        for s in sockets.iter().filter(|s| s.state == TcpState::Listen) {
            let (queue, limit) = (s.recv_queue, s.send_queue);
            // The kernel's test is `sk_ack_backlog > sk_max_ack_backlog`
            // (sk_acceptq_is_full()): at the limit, the next one overflows.
            if limit == 0 || queue < limit {
                continue;
            }
            let (who, named) = Who::listener(model, netns, s.local, s.local_port);
            let key = format!("{netns}|{}|{}", s.local, s.local_port);
            let previous = self
                .open
                .get(&(kind::ACCEPT_QUEUE_OVERFLOW, key.clone()))
                .map_or(0, |o| o.count);
            let count = previous + counters.overflows.moved;
            let drops = counters.drops.moved;
            let listener = endpoint(s.local, s.local_port);
            self.observe(&mut out, kind::ACCEPT_QUEUE_OVERFLOW, key, netns, now, count, Driver::Event, |count| {
                who.apply(
                    Finding::new(
                        kind::ACCEPT_QUEUE_OVERFLOW,
                        Severity::Warning,
                        format!(
                            "{named} on {listener} has {queue} connections waiting in a full accept queue (limit {limit}); the kernel counted {count} overflows in this namespace since, dropping handshakes"
                        ),
                    )
                    .evidence("count", count)
                    .evidence("ListenOverflows", count)
                    .evidence("ListenDrops_last", drops)
                    .evidence("queue", queue)
                    .evidence("queue_limit", limit),
                )
                .remedy(
                    "Connections finished their handshake faster than the application accept()s them. \
                     The limit is min(the listen() backlog, net.core.somaxconn); beyond it the kernel \
                     drops the client's final ACK (the client then retransmits, or times out: \
                     connect_timeout) or, with net.ipv4.tcp_abort_on_overflow=1, resets it. Accept \
                     faster (more workers, a shorter critical path in the accept loop) or raise the \
                     backlog and somaxconn.",
                )
            });
        }
        out
    }
}
