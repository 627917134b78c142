//! `syn_flood`: a listener's SYN queue filled with half-open connections,
//! and the kernel fell back to syncookies or dropped SYNs.
//!
//! A SYN to a listener becomes a request socket (a half-open connection,
//! listed as SYN_RECV) in the listener's SYN queue until the client's ACK
//! completes the handshake; the SYN-ACK is resent `tcp_synack_retries`
//! times meanwhile. `tcp_conn_request()` (net/ipv4/tcp_input.c) calls the
//! queue full when it holds more request sockets than the listener's
//! backlog (`inet_csk_reqsk_queue_is_full()` in
//! include/net/inet_connection_sock.h), and `tcp_syn_flood_action()` then
//! decides by `tcp_syncookies`: a stateless syncookie (TcpExt
//! `TCPReqQFullDoCookies`, then `SyncookiesSent`) or a drop
//! (`TCPReqQFullDrop`). With
//! `tcp_syncookies=2` every SYN gets a cookie; with 0, SYNs from peers not
//! proven alive are also refused once the queue holds three quarters of
//! `tcp_max_syn_backlog`. ACKs that carry a valid cookie count
//! `SyncookiesRecv`, invalid ones `SyncookiesFailed`, the latter only
//! within two minutes of an overflow (`tcp_synq_no_recent_overflow()`,
//! `cookie_v4_check()` in net/ipv4/syncookies.c).
//!
//! The counters are per namespace; each reconciliation reads them and
//! lists the request sockets, which name the listener.
use crate::tcp::NetnsId;
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use super::{endpoint, Detectors, Driver, Open, Report, Status, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    host::netns_state::NetnsState,
    host::sock_diag::DiagSocket,
    kernel::event::{TcpEvent, TcpState},
    model::{half_open_by_listener, Model},
};

/// Half-open connections that make a SYN queue worth reporting before it
/// overflows, whatever its limit: a listener with a backlog of 4 and three
/// slow clients is no flood.
const MIN_HALF_OPEN: u32 = 16;

/// With `tcp_syncookies=2` every SYN is answered with a cookie, so the
/// counters move with every connection; a flood shows as cookies nobody
/// answers. At least this many unanswered, and most of those sent.
const MIN_UNANSWERED_COOKIES: u64 = 64;

/// SYN-ACK retransmits counted per (namespace, port) between two
/// reconciliations, at most.
const MAX_COUNTED_PORTS: usize = 4096;

/// A namespace's SYN queue counters (TcpExt), or what they moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynCounters {
    pub cookies_sent: u64,
    pub cookies_recv: u64,
    pub cookies_failed: u64,
    /// SYNs dropped at a full SYN queue (no cookies).
    pub queue_full_drop: u64,
    /// SYNs at a full SYN queue (every SYN with tcp_syncookies=2) answered
    /// with a cookie.
    pub queue_full_cookies: u64,
}

impl SynCounters {
    fn read(state: &NetnsState) -> Self {
        let read = |name: &str| state.counter(name);
        SynCounters {
            cookies_sent: read("SyncookiesSent"),
            cookies_recv: read("SyncookiesRecv"),
            cookies_failed: read("SyncookiesFailed"),
            queue_full_drop: read("TCPReqQFullDrop"),
            queue_full_cookies: read("TCPReqQFullDoCookies"),
        }
    }

    fn zip(self, other: Self, f: impl Fn(u64, u64) -> u64) -> Self {
        SynCounters {
            cookies_sent: f(self.cookies_sent, other.cookies_sent),
            cookies_recv: f(self.cookies_recv, other.cookies_recv),
            cookies_failed: f(self.cookies_failed, other.cookies_failed),
            queue_full_drop: f(self.queue_full_drop, other.queue_full_drop),
            queue_full_cookies: f(self.queue_full_cookies, other.queue_full_cookies),
        }
    }

    fn total(&self) -> u64 {
        self.cookies_sent
            .saturating_add(self.cookies_recv)
            .saturating_add(self.cookies_failed)
            .saturating_add(self.queue_full_drop)
            .saturating_add(self.queue_full_cookies)
    }

    /// SYNs that found the SYN queue full: dropped or answered with a cookie.
    fn queue_full(&self) -> u64 {
        self.queue_full_drop.saturating_add(self.queue_full_cookies)
    }
}

/// The settings that decide what a full SYN queue does, under `net.ipv4.`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynSettings {
    pub syncookies: Option<u8>,
    pub max_syn_backlog: Option<u32>,
    pub synack_retries: Option<u32>,
}

impl SynSettings {
    fn read(state: &NetnsState) -> Self {
        SynSettings {
            syncookies: state.uint("tcp_syncookies"),
            max_syn_backlog: state.uint("tcp_max_syn_backlog"),
            synack_retries: state.uint("tcp_synack_retries"),
        }
    }

    /// How many request sockets a listener with this backlog holds before
    /// SYNs from unproven peers go without one. The queue is full past the
    /// backlog (`inet_csk_reqsk_queue_is_full()` tests `>`); without cookies
    /// `tcp_conn_request()` also refuses them once `tcp_max_syn_backlog`
    /// has less than a quarter left.
    pub fn syn_queue_limit(&self, backlog: u32) -> u32 {
        match (self.syncookies, self.max_syn_backlog) {
            (Some(0), Some(max)) => backlog.min(max - (max >> 2)),
            _ => backlog,
        }
    }
}

/// Each namespace's counters at the last look, and what moved since the
/// last evaluation.
#[derive(Clone, Copy, Debug, Default)]
struct NetnsSyn {
    last: SynCounters,
    /// Added up until an evaluation uses it, so a dump skipped (older than
    /// one already applied) loses nothing.
    moved: SynCounters,
    settings: SynSettings,
}

/// What the SYN flood detector keeps between reconciliations.
#[derive(Debug, Default)]
pub(super) struct SynState {
    netns: HashMap<NetnsId, NetnsSyn>,
    /// SYN-ACK retransmits by (namespace, local port) since that
    /// namespace's last evaluation.
    synack_retransmits: HashMap<(NetnsId, u16), u64>,
    /// The open syn_flood finding of each (namespace, port), by key: its
    /// SYN-ACK retransmits are its evidence, not a synack_retransmit.
    flooded: HashMap<(NetnsId, u16), Subject>,
}

impl SynState {
    pub(super) fn forget_namespaces_except(&mut self, alive: &[NetnsId]) {
        self.netns.retain(|n, _| alive.contains(n));
        self.synack_retransmits
            .retain(|(n, _), _| alive.contains(n));
        self.flooded.retain(|(n, _), _| alive.contains(n));
    }
}

/// One listener (or SO_REUSEPORT group) as a reconciliation saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSyn {
    pub addr: IpAddr,
    pub port: u16,
    pub half_open: u32,
    /// The backlog, `min(listen() backlog, net.core.somaxconn)`
    /// (`idiag_wqueue`; 0 when unknown, from /proc), summed over a group.
    pub backlog: u32,
    /// SYN-ACK retransmits on its port since the last reconciliation.
    pub synack_retransmits: u64,
}

/// The listeners of a socket list with their half-open connections.
pub fn listeners_of(sockets: &[DiagSocket], retransmits: &HashMap<u16, u64>) -> Vec<ListenerSyn> {
    let mut backlog: HashMap<(IpAddr, u16), u32> = HashMap::new();
    for s in sockets.iter().filter(|s| s.state == TcpState::Listen) {
        let b = backlog.entry((s.local, s.local_port)).or_default();
        *b = b.saturating_add(s.send_queue);
    }
    let half_open = half_open_by_listener(
        backlog.keys().copied(),
        sockets
            .iter()
            .filter(|s| s.state == TcpState::SynRecv)
            .map(|s| (s.local, s.local_port)),
    );
    // A port's retransmits go to one of its listeners: the one with the
    // most half-open connections.
    let mut ports: HashSet<u16> = HashSet::new();
    let mut out: Vec<ListenerSyn> = half_open
        .into_iter()
        .map(|((addr, port), half_open)| ListenerSyn {
            addr,
            port,
            half_open,
            backlog: backlog.get(&(addr, port)).copied().unwrap_or(0),
            synack_retransmits: 0,
        })
        .collect();
    out.sort_by(|a, b| {
        b.half_open
            .cmp(&a.half_open)
            .then(a.port.cmp(&b.port))
            .then(a.addr.cmp(&b.addr))
    });
    for l in &mut out {
        if ports.insert(l.port) {
            l.synack_retransmits = retransmits.get(&l.port).copied().unwrap_or(0);
        }
    }
    out
}

/// A listener to report, with what of the namespace's counters is its.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// None when the counters moved and no listener had a half-open
    /// connection or a SYN-ACK retransmit to show for it (the flood
    /// ended before the look, or `tcp_syncookies=2` keeps no request
    /// sockets): the finding is the namespace's.
    pub listener: Option<ListenerSyn>,
    pub counters: SynCounters,
}

/// Whether the counters that moved say the SYN queue overflowed or cookies
/// are being refused: with `tcp_syncookies` 0 or 1 a cookie is only ever
/// sent at a full queue; with 2 every SYN gets one, and only cookies that
/// nobody answers tell a flood from traffic. `SyncookiesRecv` alone is
/// clients getting through, never a cause.
pub fn overflowed(moved: &SynCounters, syncookies: Option<u8>) -> bool {
    if moved.queue_full_drop > 0 {
        return true;
    }
    if syncookies == Some(2) {
        let unanswered = moved.cookies_sent.saturating_sub(moved.cookies_recv);
        return unanswered >= MIN_UNANSWERED_COOKIES && unanswered * 2 >= moved.cookies_sent;
    }
    moved.cookies_sent > 0 || moved.queue_full_cookies > 0 || moved.cookies_failed > 0
}

/// Which listeners to report at one reconciliation: the one with the most
/// half-open connections (then SYN-ACK retransmits) when the namespace's
/// counters say the SYN queue overflowed, with those counters; and any
/// listener whose half-open connections fill three quarters of its SYN
/// queue limit, an overflow about to happen.
pub fn assess(
    listeners: &[ListenerSyn],
    moved: &SynCounters,
    settings: &SynSettings,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    let pressed = |l: &ListenerSyn| {
        let limit = settings.syn_queue_limit(l.backlog);
        limit > 0 && l.half_open >= MIN_HALF_OPEN && l.half_open * 4 >= limit * 3
    };
    let top = if overflowed(moved, settings.syncookies) {
        // The counters moved for a listener whose SYN queue was full: the
        // fullest against its own limit (one past it first), not the one
        // with the most half-open connections in a queue far from full.
        let fullness = |l: &ListenerSyn| {
            let limit = u64::from(settings.syn_queue_limit(l.backlog).max(1));
            let half_open = u64::from(l.half_open);
            (half_open >= limit, half_open * 1000 / limit)
        };
        let top = listeners
            .iter()
            .filter(|l| l.half_open > 0 || l.synack_retransmits > 0)
            .max_by(|a, b| {
                (fullness(a), a.half_open, a.synack_retransmits)
                    .cmp(&(fullness(b), b.half_open, b.synack_retransmits))
                    // The lowest port first among equals.
                    .then(b.port.cmp(&a.port))
            });
        out.push(Verdict {
            listener: top.cloned(),
            counters: *moved,
        });
        top
    } else {
        None
    };
    for l in listeners.iter().filter(|l| pressed(l) && top != Some(*l)) {
        out.push(Verdict {
            listener: Some(l.clone()),
            counters: SynCounters::default(),
        });
    }
    out
}

/// The evidence of one syn_flood finding: counters and retransmits added
/// up since it was raised, the queue as last seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// `comm (pid N)`, or `the listener` when its owner is unknown.
    pub named: String,
    /// `addr:port`; None for a namespace's finding.
    pub listener: Option<String>,
    pub half_open: u32,
    pub backlog: u32,
    pub limit: u32,
    pub counters: SynCounters,
    pub synack_retransmits: u64,
    pub settings: SynSettings,
}

impl Evidence {
    /// Dropped SYNs are lost connections; cookies still answer them.
    pub fn severity(&self) -> Severity {
        if self.counters.queue_full_drop > 0 || self.settings.syncookies == Some(0) {
            Severity::Critical
        } else {
            Severity::Warning
        }
    }

    /// One sentence: who, the queue, what the kernel did about it, and
    /// whether cookies protect the listener.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        let mut s = match (&self.listener, self.half_open, self.limit) {
            (None, ..) => "a listener in this namespace had its SYN queue overflow".to_owned(),
            (Some(l), 0, _) => format!("{} on {l} had its SYN queue overflow", self.named),
            (Some(l), n, 0) => format!("{} on {l} has {n} half-open connections", self.named),
            (Some(l), n, limit) => format!(
                "{} on {l} has {n} half-open connections in a SYN queue of {limit}",
                self.named
            ),
        };
        if c.queue_full_drop > 0 {
            s.push_str(&format!(
                " and is losing SYNs: the kernel dropped {} at a full SYN queue since, and no cookies protect it{}",
                c.queue_full_drop,
                if self.settings.syncookies == Some(0) {
                    " (tcp_syncookies=0)"
                } else {
                    ""
                }
            ));
        } else if c.cookies_sent > 0 || c.queue_full_cookies > 0 {
            let sent = c.cookies_sent.max(c.queue_full_cookies);
            let always = if self.settings.syncookies == Some(2) {
                " (tcp_syncookies=2: every SYN gets one)"
            } else {
                ""
            };
            s.push_str(&format!(
                " and cookies are protecting it: the kernel answered {sent} SYNs with syncookies since{always}"
            ));
            if c.cookies_recv * 2 >= sent {
                s.push_str(&format!(
                    "; {} completed through their cookie: real clients outrunning the backlog, not spoofed ones",
                    c.cookies_recv
                ));
            } else {
                s.push_str(&format!(
                    "; {} never answered (spoofed or dead sources), {} completed",
                    sent - c.cookies_recv,
                    c.cookies_recv
                ));
            }
        } else if self.settings.syncookies == Some(0) {
            s.push_str(
                " and no cookies protect it (tcp_syncookies=0): once the queue is full, SYNs are dropped",
            );
        } else if self.half_open > 0 {
            s.push_str("; once the queue is full, syncookies will protect it");
        }
        if c.cookies_failed > 0 {
            s.push_str(&format!(
                "; {} ACKs carried no valid syncookie",
                c.cookies_failed
            ));
        }
        if self.synack_retransmits > 0 {
            s.push_str(&format!(
                "; {} SYN-ACKs retransmitted to half-open peers",
                self.synack_retransmits
            ));
        }
        s
    }

    /// What the kernel does, in its own terms, with this namespace's values.
    pub fn remedy(&self) -> String {
        let value = |v: Option<u32>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        let retries = self.settings.synack_retries;
        let held = retries.map_or_else(String::new, |r| {
            let ms = crate::findings::audit::model_timeout_ms(u64::from(r), 1000);
            format!(", about {} s", ms / 1000)
        });
        format!(
            "Each SYN becomes a request socket (a half-open connection, SYN_RECV) in the listener's SYN queue \
             until the client's ACK completes the handshake; the kernel resends the SYN-ACK tcp_synack_retries \
             times (here {}{held}), so a spoofed SYN holds its slot that long. The queue is full beyond the \
             listener's backlog, min(listen() backlog, net.core.somaxconn), and then tcp_syncookies (here {}) \
             decides: 1 answers with a syncookie that keeps no state, 2 always does, 0 drops the SYN; without \
             cookies tcp_max_syn_backlog (here {}) also keeps its last quarter for peers proven alive. A \
             connection made through a cookie loses the TCP options its SYN asked for (window scaling, SACK, \
             ECN) unless TCP timestamps are on to carry them. Keep tcp_syncookies=1, raise the backlog and \
             somaxconn if real clients overflow it, lower tcp_synack_retries to free half-open slots sooner, \
             and filter spoofed sources upstream.",
            value(retries),
            self.settings
                .syncookies
                .map_or_else(|| "?".to_owned(), |v| v.to_string()),
            value(self.settings.max_syn_backlog),
        )
    }

    fn finding(&self, who: Who, count: u64) -> Finding {
        let c = &self.counters;
        who.apply(
            Finding::new(FindingKind::SynFlood, self.severity(), self.summary())
                .evidence("count", count)
                .evidence("half_open", self.half_open)
                .evidence("backlog", self.backlog)
                .evidence("syn_queue_limit", self.limit)
                .evidence("SyncookiesSent", c.cookies_sent)
                .evidence("SyncookiesRecv", c.cookies_recv)
                .evidence("SyncookiesFailed", c.cookies_failed)
                .evidence("TCPReqQFullDrop", c.queue_full_drop)
                .evidence("TCPReqQFullDoCookies", c.queue_full_cookies)
                .evidence("synack_retransmits", self.synack_retransmits)
                .evidence("tcp_syncookies", self.settings.syncookies)
                .evidence("tcp_max_syn_backlog", self.settings.max_syn_backlog)
                .evidence("tcp_synack_retries", self.settings.synack_retries)
                .remedy(self.remedy()),
        )
    }

    /// What an open finding showed, to add the new counts to.
    fn of(finding: &Finding) -> (SynCounters, u64) {
        let get = |name: &str| {
            finding
                .evidence
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        (
            SynCounters {
                cookies_sent: get("SyncookiesSent"),
                cookies_recv: get("SyncookiesRecv"),
                cookies_failed: get("SyncookiesFailed"),
                queue_full_drop: get("TCPReqQFullDrop"),
                queue_full_cookies: get("TCPReqQFullDoCookies"),
            },
            get("synack_retransmits"),
        )
    }
}

impl Detectors {
    /// The namespace's SYN queue counters and settings, read at a
    /// reconciliation. The first look is the baseline.
    pub(super) fn note_syn_counters(&mut self, netns: NetnsId, state: &NetnsState) {
        let now = SynCounters::read(state);
        let entry = self.syn.netns.entry(netns).or_insert(NetnsSyn {
            last: now,
            ..Default::default()
        });
        let moved = now.zip(entry.last, u64::saturating_sub);
        entry.moved = entry.moved.zip(moved, u64::saturating_add);
        entry.last = now;
        entry.settings = SynSettings::read(state);
    }

    /// Counts a SYN-ACK retransmit for the next evaluation. True when a
    /// syn_flood is open for its listener: the retransmit is that flood's
    /// evidence (SYN-ACKs to spoofed sources are never answered), and no
    /// synack_retransmit is raised for it.
    pub(super) fn note_synack_retransmit(&mut self, ev: &TcpEvent) -> bool {
        let port = (ev.netns, ev.sport);
        let counts = &mut self.syn.synack_retransmits;
        if counts.len() < MAX_COUNTED_PORTS || counts.contains_key(&port) {
            *counts.entry(port).or_default() += 1;
        }
        match self.syn.flooded.get(&port) {
            Some(subject)
                if self
                    .open
                    .contains_key(&(FindingKind::SynFlood, subject.clone())) =>
            {
                true
            }
            Some(_) => {
                self.syn.flooded.remove(&port);
                false
            }
            None => false,
        }
    }

    /// The socket list a reconciliation took of `netns`: its listeners'
    /// half-open connections against their SYN queue, with the counters
    /// noted by [`Detectors::note_syn_counters`] and the SYN-ACK
    /// retransmits since the last one. Owners are the model's, checked by
    /// the same reconciliation.
    pub fn on_syn_queues(
        &mut self,
        netns: NetnsId,
        sockets: &[DiagSocket],
        model: &Model,
        now: u64,
    ) -> Vec<Report> {
        let mut out = Vec::new();
        let Some(ns) = self.syn.netns.get_mut(&netns) else {
            return out;
        };
        let (moved, settings) = (std::mem::take(&mut ns.moved), ns.settings);
        let mut retransmits: HashMap<u16, u64> = HashMap::new();
        self.syn.synack_retransmits.retain(|(n, port), count| {
            if *n == netns {
                retransmits.insert(*port, *count);
            }
            *n != netns
        });
        let open = &self.open;
        self.syn
            .flooded
            .retain(|_, subject| open.contains_key(&(FindingKind::SynFlood, subject.clone())));
        let listeners = listeners_of(sockets, &retransmits);
        for verdict in assess(&listeners, &moved, &settings) {
            let subject = match &verdict.listener {
                Some(l) => Subject::Listener {
                    netns,
                    addr: l.addr,
                    port: l.port,
                },
                None => Subject::Namespace { netns },
            };
            let (before, retransmits_before) = self
                .open
                .get(&(FindingKind::SynFlood, subject.clone()))
                .map_or_else(Default::default, |o| Evidence::of(&o.finding));
            let counters = before.zip(verdict.counters, u64::saturating_add);
            let l = verdict.listener.as_ref();
            let synack_retransmits = retransmits_before + l.map_or(0, |l| l.synack_retransmits);
            // The namespace's finding names no listener.
            let (who, named) = l.map_or_else(Default::default, |l| {
                Who::listener(model, netns, l.addr, l.port)
            });
            let backlog = l.map_or(0, |l| l.backlog);
            let evidence = Evidence {
                named,
                listener: l.map(|l| endpoint(l.addr, l.port)),
                half_open: l.map_or(0, |l| l.half_open),
                backlog,
                limit: settings.syn_queue_limit(backlog),
                counters,
                synack_retransmits,
                settings,
            };
            // Any new evidence keeps it open and is owed a report; the
            // count shown is the SYNs that found the queue full.
            let progress = counters.total().saturating_add(synack_retransmits);
            let was_open = self
                .open
                .contains_key(&(FindingKind::SynFlood, subject.clone()));
            self.observe(
                &mut out,
                FindingKind::SynFlood,
                subject.clone(),
                now,
                progress,
                Driver::Event,
                |_| evidence.finding(who, counters.queue_full()),
            );
            // A queue still seen filling is evidence that the condition
            // holds, though no counter moved (request sockets that wait,
            // as with TCP_DEFER_ACCEPT): it stays open rather than resolve
            // and be raised again.
            if evidence.half_open * 4 >= evidence.limit * 3 && evidence.limit > 0 {
                self.still_seen(FindingKind::SynFlood, &subject, now);
            }
            if let Some(l) = l {
                if !was_open {
                    self.supersede_synack_retransmits(&mut out, netns, l.port, now);
                }
                self.syn.flooded.insert((netns, l.port), subject);
            }
        }
        out
    }

    /// A syn_flood raised on a port ends the synack_retransmit findings of
    /// that port: their retransmits were the flood's half-open connections,
    /// which the syn_flood now counts. Resolved with `superseded_by`.
    fn supersede_synack_retransmits(
        &mut self,
        out: &mut Vec<Report>,
        netns: NetnsId,
        port: u16,
        now: u64,
    ) {
        let keys: Vec<(FindingKind, Subject)> = self
            .open
            .keys()
            .filter(|(kind, subject)| {
                *kind == FindingKind::SynackRetransmit
                    && matches!(*subject, Subject::ProcessPort { netns: n, port: p, .. } if n == netns && p == port)
            })
            .cloned()
            .collect();
        for key in keys {
            let Some(Open { finding, netns, .. }) = self.open.remove(&key) else {
                continue;
            };
            out.push(Report {
                status: Status::Resolved,
                ts_ns: now,
                netns,
                finding: finding.evidence("superseded_by", FindingKind::SynFlood),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(port: u16, half_open: u32, backlog: u32) -> ListenerSyn {
        ListenerSyn {
            addr: "10.0.0.2".parse().unwrap(),
            port,
            half_open,
            backlog,
            synack_retransmits: 0,
        }
    }

    fn cookies(syncookies: u8) -> SynSettings {
        SynSettings {
            syncookies: Some(syncookies),
            max_syn_backlog: Some(512),
            synack_retries: Some(5),
        }
    }

    fn diag(state: TcpState, local: &str, port: u16, send_queue: u32) -> DiagSocket {
        DiagSocket {
            state,
            local: local.parse().unwrap(),
            local_port: port,
            remote: "198.51.100.7".parse().unwrap(),
            remote_port: 4000,
            inode: 0,
            time_wait_left_ms: None,
            timer: None,
            recv_queue: 0,
            send_queue,
        }
    }

    /// Request sockets carry the address the SYN was sent to: a wildcard
    /// listener gets them, a listener bound to that address first, and a
    /// dual-stack `::` listener takes the IPv4 ones.
    #[test]
    fn half_open_connections_go_to_the_listener_that_serves_them() {
        use TcpState::*;
        let sockets = [
            diag(Listen, "0.0.0.0", 80, 128),
            diag(Listen, "10.0.0.2", 80, 64),
            diag(Listen, "::", 443, 32),
            diag(SynRecv, "10.0.0.2", 80, 0),
            diag(SynRecv, "10.0.0.3", 80, 0),
            diag(SynRecv, "10.0.0.3", 80, 0),
            diag(SynRecv, "10.0.0.2", 443, 0),
            diag(SynRecv, "2001:db8::1", 443, 0),
            // Nobody listens on 8080 any more.
            diag(SynRecv, "10.0.0.2", 8080, 0),
        ];
        let retransmits = HashMap::from([(80, 5), (443, 1)]);
        let l = listeners_of(&sockets, &retransmits);
        let row = |addr: &str, port: u16| {
            let addr: IpAddr = addr.parse().unwrap();
            l.iter()
                .find(|l| l.addr == addr && l.port == port)
                .map(|l| (l.half_open, l.backlog, l.synack_retransmits))
        };
        assert_eq!(row("0.0.0.0", 80), Some((2, 128, 5)), "{l:#?}");
        assert_eq!(
            row("10.0.0.2", 80),
            Some((1, 64, 0)),
            "one port's retransmits once"
        );
        assert_eq!(row("::", 443), Some((2, 32, 1)));
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn cookies_sent_name_the_listener_with_most_half_open() {
        let moved = SynCounters {
            cookies_sent: 4772,
            queue_full_cookies: 4772,
            ..Default::default()
        };
        let listeners = [
            listener(22, 1, 128),
            listener(80, 65, 64),
            listener(443, 0, 4096),
        ];
        let v = assess(&listeners, &moved, &cookies(1));
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].listener.as_ref().map(|l| l.port), Some(80));
        assert_eq!(v[0].counters, moved);
    }

    #[test]
    fn nothing_moved_and_a_quiet_queue_is_no_flood() {
        let listeners = [listener(80, 3, 4), listener(443, 10, 128)];
        assert!(assess(&listeners, &SynCounters::default(), &cookies(1)).is_empty());
        // Clients that completed through cookies are no cause on their own.
        let recv = SynCounters {
            cookies_recv: 30,
            ..Default::default()
        };
        assert!(assess(&listeners, &recv, &cookies(1)).is_empty());
    }

    /// Three quarters of the SYN queue, before any overflow; without cookies
    /// the limit is tcp_max_syn_backlog's three quarters when that is less.
    #[test]
    fn a_filling_queue_is_reported_before_it_overflows() {
        let quiet = SynCounters::default();
        let v = assess(&[listener(80, 48, 64)], &quiet, &cookies(1));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].counters, SynCounters::default());
        assert!(assess(&[listener(80, 47, 64)], &quiet, &cookies(1)).is_empty());
        // 512 - 128 = 384 request sockets without cookies, not 4096.
        assert_eq!(cookies(0).syn_queue_limit(4096), 384);
        assert_eq!(cookies(1).syn_queue_limit(4096), 4096);
        assert_eq!(
            assess(&[listener(80, 300, 4096)], &quiet, &cookies(0)).len(),
            1
        );
        // An unknown limit (/proc gives none) says nothing.
        assert!(assess(&[listener(80, 300, 0)], &quiet, &cookies(1)).is_empty());
    }

    /// With tcp_syncookies=2 every SYN gets a cookie: only cookies nobody
    /// answers are a flood.
    #[test]
    fn always_on_cookies_need_unanswered_ones() {
        let l = [listener(80, 0, 128)];
        let answered = SynCounters {
            cookies_sent: 1000,
            cookies_recv: 990,
            queue_full_cookies: 1000,
            ..Default::default()
        };
        assert!(assess(&l, &answered, &cookies(2)).is_empty());
        let flood = SynCounters {
            cookies_recv: 10,
            ..answered
        };
        let v = assess(&l, &flood, &cookies(2));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].listener, None, "no request socket names it");
    }

    #[test]
    fn severity_and_sentence_say_whether_cookies_protect() {
        let mut e = Evidence {
            named: "nginx (pid 42)".into(),
            listener: Some("10.0.0.2:80".into()),
            half_open: 65,
            backlog: 64,
            limit: 64,
            counters: SynCounters {
                cookies_sent: 4772,
                cookies_recv: 3,
                queue_full_cookies: 4772,
                ..Default::default()
            },
            synack_retransmits: 65,
            settings: cookies(1),
        };
        assert_eq!(e.severity(), Severity::Warning);
        let s = e.summary();
        assert!(
            s.starts_with(
                "nginx (pid 42) on 10.0.0.2:80 has 65 half-open connections in a SYN queue of 64 and cookies are protecting it"
            )
                && s.contains("4772 SYNs with syncookies")
                && s.contains("4769 never answered")
                && s.contains("65 SYN-ACKs retransmitted"),
            "{s}"
        );
        // Without a listener to name (tcp_syncookies=2 keeps no request
        // sockets), the namespace's; before any overflow, a warning ahead.
        let unnamed = Evidence {
            listener: None,
            half_open: 0,
            synack_retransmits: 0,
            ..e.clone()
        };
        assert!(
            unnamed.summary().starts_with(
                "a listener in this namespace had its SYN queue overflow and cookies are protecting it"
            ),
            "{}",
            unnamed.summary()
        );
        let filling = Evidence {
            counters: SynCounters::default(),
            synack_retransmits: 0,
            half_open: 50,
            ..e.clone()
        };
        assert_eq!(
            filling.summary(),
            "nginx (pid 42) on 10.0.0.2:80 has 50 half-open connections in a SYN queue of 64; once the queue is full, syncookies will protect it"
        );
        // Real clients that outran the backlog answer their cookies.
        e.counters.cookies_recv = 4700;
        assert!(
            e.summary().contains("real clients outrunning the backlog"),
            "{}",
            e.summary()
        );
        // Without cookies, SYNs are dropped.
        e.settings = cookies(0);
        e.counters = SynCounters {
            queue_full_drop: 900,
            ..Default::default()
        };
        assert_eq!(e.severity(), Severity::Critical);
        let s = e.summary();
        assert!(
            s.contains("is losing SYNs")
                && s.contains("dropped 900")
                && s.contains("no cookies protect it (tcp_syncookies=0)"),
            "{s}"
        );
        let r = e.remedy();
        for term in [
            "request socket",
            "SYN queue",
            "tcp_synack_retries times (here 5, about 63 s)",
            "tcp_syncookies (here 0)",
            "tcp_max_syn_backlog (here 512)",
            "window scaling",
            "timestamps",
        ] {
            assert!(r.contains(term), "{term} missing from: {r}");
        }
    }

    #[test]
    fn counters_are_read_by_their_tcpext_names_and_moves_add_up() {
        let mut d = Detectors::default();
        let mut state = NetnsState::default();
        state.sysctls.insert("tcp_syncookies".into(), "1".into());
        state.tcpext.insert("SyncookiesSent".into(), 100);
        d.note_syn_counters(NetnsId(7), &state);
        assert_eq!(
            d.syn.netns[&NetnsId(7)].moved,
            SynCounters::default(),
            "the first look is the baseline"
        );
        state.tcpext.insert("SyncookiesSent".into(), 150);
        state.tcpext.insert("TCPReqQFullDoCookies".into(), 60);
        d.note_syn_counters(NetnsId(7), &state);
        // A dump skipped in between: its moves wait for the next evaluation.
        state.tcpext.insert("SyncookiesSent".into(), 170);
        d.note_syn_counters(NetnsId(7), &state);
        let ns = d.syn.netns[&NetnsId(7)];
        assert_eq!(
            (ns.moved.cookies_sent, ns.moved.queue_full_cookies),
            (70, 60)
        );
        assert_eq!(ns.settings.syncookies, Some(1));
    }

    /// The whole life of one: a SYN-ACK retransmit raises synack_retransmit
    /// before any reconciliation; the next one sees cookies sent and the
    /// listener's SYN queue full, raises syn_flood naming the listener's
    /// owner, and resolves the synack_retransmit it supersedes; later
    /// retransmits are the flood's evidence; quiet for --resolve-after, it
    /// is resolved.
    #[test]
    fn a_flood_is_raised_supersedes_synack_retransmit_and_resolves() {
        use crate::{
            findings::detect::Thresholds,
            kernel::event::{EventKind, OwnerSource},
            model::{FourTuple, KernelSocket, Limits},
        };
        use std::time::Duration;
        const S: u64 = 1_000_000_000;
        let mut d = Detectors::new(Thresholds {
            resolve_after: Duration::from_secs(30),
            finding_interval: Duration::from_secs(1),
            ..Thresholds::default()
        });
        let mut model = Model::new(Limits::default());
        let addr: IpAddr = "10.0.0.2".parse().unwrap();
        let listen = KernelSocket {
            tuple: FourTuple {
                netns: NetnsId(7),
                local: addr,
                local_port: 80,
                remote: "0.0.0.0".parse().unwrap(),
                remote_port: 0,
            },
            state: TcpState::Listen,
            pid: 42,
            comm: "nginx".into(),
            cgroup: 0,
            orphan: false,
            time_wait_left_ns: None,
            holders: Vec::new(),
            holder_count: 0,
            queue: 0,
            queue_limit: 64,
        };
        model.reconcile(NetnsId(7), &[listen], 1, 1);
        let mut sockets = vec![diag(TcpState::Listen, "10.0.0.2", 80, 64)];
        sockets.extend((0..65).map(|_| diag(TcpState::SynRecv, "10.0.0.2", 80, 0)));
        let mut state = NetnsState::default();
        state.sysctls.insert("tcp_syncookies".into(), "1".into());
        state
            .sysctls
            .insert("tcp_synack_retries".into(), "5".into());
        let mut set = |sent: u64| {
            state.tcpext.insert("SyncookiesSent".into(), sent);
            state.tcpext.insert("TCPReqQFullDoCookies".into(), sent);
            state.clone()
        };
        assert!(d.on_netns(NetnsId(7), &set(10), 0).is_empty());
        assert!(d
            .on_syn_queues(NetnsId(7), &sockets[..1], &model, 0)
            .is_empty());
        let synack = TcpEvent {
            ts_ns: S,
            skaddr: 0x5000,
            kind: EventKind::SynackRetransmit,
            pid: 42,
            comm: "nginx".into(),
            owner: OwnerSource::Listener,
            netns: NetnsId(7),
            saddr: addr,
            sport: 80,
            daddr: "198.51.100.7".parse().unwrap(),
            dport: 4000,
            old_state: Some(TcpState::SynRecv),
            new_state: Some(TcpState::SynRecv),
            ..TcpEvent::blank()
        };
        let r = d.on_event(&synack, &[], &model);
        assert_eq!(r[0].finding.kind, FindingKind::SynackRetransmit);

        d.on_netns(NetnsId(7), &set(4782), 2 * S);
        let r = d.on_syn_queues(NetnsId(7), &sockets, &model, 2 * S);
        let statuses: Vec<_> = r.iter().map(|r| (r.finding.kind, r.status)).collect();
        assert_eq!(
            statuses,
            [
                (FindingKind::SynFlood, Status::Raised),
                (FindingKind::SynackRetransmit, Status::Resolved)
            ]
        );
        let f = &r[0].finding;
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(
            (
                &f.rendered_evidence()["pid"],
                &f.rendered_evidence()["comm"],
                &f.rendered_evidence()["lport"]
            ),
            (&42.into(), &"nginx".into(), &80.into())
        );
        assert_eq!(
            (
                &f.evidence["count"],
                &f.evidence["SyncookiesSent"],
                &f.evidence["half_open"]
            ),
            (&4772.into(), &4772.into(), &65.into())
        );
        assert_eq!(f.evidence["synack_retransmits"], 1);
        assert!(
            f.summary.contains("cookies are protecting it"),
            "{}",
            f.summary
        );
        assert_eq!(
            r[1].finding.evidence["superseded_by"],
            FindingKind::SynFlood.name()
        );

        // The flood's own retransmits raise nothing of their own.
        for i in 0..3 {
            let e = TcpEvent {
                ts_ns: 3 * S + i,
                ..synack.clone()
            };
            assert!(d.on_event(&e, &[], &model).is_empty());
        }
        d.on_netns(NetnsId(7), &set(5782), 4 * S);
        let r = d.on_syn_queues(NetnsId(7), &sockets, &model, 4 * S);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, Status::Updated);
        let f = &r[0].finding;
        assert_eq!(
            (&f.evidence["count"], &f.evidence["synack_retransmits"]),
            (&5772.into(), &4.into()),
            "counts add up over the finding's life"
        );

        // Over: no cookies, no half-open; resolved once quiet for 30 s.
        d.on_netns(NetnsId(7), &set(5782), 10 * S);
        assert!(d
            .on_syn_queues(NetnsId(7), &sockets[..1], &model, 10 * S)
            .is_empty());
        assert!(d.tick(20 * S, &model).is_empty());
        let r = d.tick(35 * S, &model);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].finding.kind, r[0].status),
            (FindingKind::SynFlood, Status::Resolved)
        );
        // A SYN-ACK retransmit after that is a synack_retransmit again.
        let r = d.on_event(
            &TcpEvent {
                ts_ns: 40 * S,
                ..synack
            },
            &[],
            &model,
        );
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].finding.kind, r[0].status),
            (FindingKind::SynackRetransmit, Status::Raised)
        );
    }
}
