//! `idle_without_keepalive` (info): ESTABLISHED connections that have
//! carried no data for a long time and have no keep-alive timer.
//!
//! TCP sends nothing on an idle connection. If the peer crashes, loses
//! power or its cable, or a NAT or firewall on the way forgets the flow,
//! nothing tells this side: the connection stays ESTABLISHED until the
//! application writes (then `tcp_retries2` decides, about 15 minutes) or,
//! with SO_KEEPALIVE, until `tcp_keepalive_time + tcp_keepalive_probes x
//! tcp_keepalive_intvl` (7200 + 9 x 75 s by default) of silence. Without
//! keep-alive, a reader that only waits never learns.
//!
//! The kernel's socket list tells whether the keep-alive timer is armed
//! (`idiag_timer` 2, `sk_timer` pending: `inet_sk_diag_fill()` in
//! net/ipv4/inet_diag.c); each reconciliation notes the ESTABLISHED
//! sockets with no timer at all. Those the model has known ESTABLISHED for
//! longer than the threshold are looked up one by one (`tcp_info`'s
//! `tcpi_last_data_sent` and `tcpi_last_data_recv`), a few per tick and
//! each at most every [`RECHECK_NS`]; the finding groups them by process
//! and service port, with their count and the longest idle time.
use crate::tcp::NetnsId;
use std::collections::{HashMap, HashSet};

use super::{secs, Detectors, Driver, Report, Who};
use crate::{
    findings::{Finding, FindingKind, Severity, Subject},
    host::netns_state::NetnsState,
    host::sock_diag::{DiagSocket, TcpHealth},
    kernel::event::TcpState,
    model::{Connection, FourTuple, Model, Opener},
};

/// ESTABLISHED sockets without a timer remembered, at most (all namespaces).
const MAX_TRACKED: usize = 65_536;
/// Connections looked up per tick, at most.
pub const MAX_IDLE_INSPECTED: usize = 64;
/// How long an answer stands before the connection is looked up again.
const RECHECK_NS: u64 = 30_000_000_000;

/// What is known of idle connections.
#[derive(Debug, Default)]
pub(super) struct Idle {
    /// ESTABLISHED sockets the last reconciliation of their namespace
    /// listed with no timer pending (no keep-alive, nothing in flight).
    no_timer: HashSet<FourTuple>,
    /// When each was last looked up, and how long it had been idle then.
    answers: HashMap<FourTuple, (u64, u64)>,
    /// Keep-alive settings by namespace: (time, interval, probes) in seconds.
    keepalive: HashMap<NetnsId, (u64, u64, u64)>,
}

impl Idle {
    pub(super) fn forget_namespaces_except(&mut self, alive: &[NetnsId]) {
        self.no_timer.retain(|t| alive.contains(&t.netns));
        self.answers.retain(|t, _| alive.contains(&t.netns));
        self.keepalive.retain(|n, _| alive.contains(n));
    }
}

/// (netns, pid, server side, service port) of a group of idle connections.
type IdleKey = (NetnsId, u32, bool, u16);
/// Count, longest idle time and comm of such a group.
type IdleGroup = (u64, u64, String, u64);

/// The port that names the service: a server's own, a client's peer's.
fn service_port(c: &Connection) -> (bool, u16) {
    match c.opener {
        Opener::Passive => (true, c.tuple.local_port),
        _ => (false, c.tuple.remote_port),
    }
}

impl Detectors {
    /// A namespace's keep-alive settings, for the finding's arithmetic.
    pub(super) fn note_keepalive(&mut self, netns: NetnsId, state: &NetnsState) {
        if let (Some(time), Some(intvl), Some(probes)) = (
            state.uint("tcp_keepalive_time"),
            state.uint("tcp_keepalive_intvl"),
            state.uint("tcp_keepalive_probes"),
        ) {
            self.idle.keepalive.insert(netns, (time, intvl, probes));
        }
    }

    /// What a reconciliation listed in `netns`: its ESTABLISHED sockets
    /// without a timer replace the namespace's previous ones.
    pub(super) fn note_idle_candidates(&mut self, netns: NetnsId, sockets: &[DiagSocket]) {
        let idle = &mut self.idle;
        idle.no_timer.retain(|t| t.netns != netns);
        let room = MAX_TRACKED.saturating_sub(idle.no_timer.len());
        idle.no_timer.extend(
            sockets
                .iter()
                .filter(|s| s.state == TcpState::Established && s.timer.is_none())
                .map(|s| FourTuple {
                    netns,
                    local: s.local,
                    local_port: s.local_port,
                    remote: s.remote,
                    remote_port: s.remote_port,
                })
                .take(room),
        );
        let no_timer = &idle.no_timer;
        idle.answers.retain(|t, _| no_timer.contains(t));
    }

    /// Connections to look up in the next tick: without a timer at the
    /// last reconciliation, ESTABLISHED in the model for longer than the
    /// threshold (so possibly idle that long), not looked up lately.
    /// Sorted; at most [`MAX_IDLE_INSPECTED`], the longest unchecked first.
    pub fn wanted_idle(&self, model: &Model, now: u64) -> Vec<FourTuple> {
        // Every tick: no pass over the model while no socket is a candidate.
        if self.idle.no_timer.is_empty() {
            return Vec::new();
        }
        let after = self.thresholds.idle_after.as_nanos() as u64;
        let mut due: Vec<(u64, FourTuple)> = model
            .connections()
            .filter(|c| c.state == TcpState::Established)
            // Older than tcpwatch's first look: possibly idle for long.
            .filter(|c| !c.state_age_known || now.saturating_sub(c.state_since_ns) >= after)
            .filter(|c| self.idle.no_timer.contains(&c.tuple))
            .filter_map(|c| {
                let asked = self.idle.answers.get(&c.tuple).map_or(0, |a| a.0);
                (asked == 0 || now.saturating_sub(asked) >= RECHECK_NS).then_some((asked, c.tuple))
            })
            .collect();
        due.sort_unstable();
        let mut wanted: Vec<FourTuple> = due
            .into_iter()
            .take(MAX_IDLE_INSPECTED)
            .map(|(_, t)| t)
            .collect();
        wanted.sort();
        wanted
    }

    /// What the kernel said of the connections [`Self::wanted_idle`] named.
    pub fn set_idle(
        &mut self,
        answers: impl IntoIterator<Item = (FourTuple, Option<TcpHealth>)>,
        now: u64,
    ) {
        for (tuple, answer) in answers {
            match answer {
                // A keep-alive timer armed since (SO_KEEPALIVE set late),
                // or data in flight: not an idle connection without one.
                Some(h) if h.timer.is_none() => {
                    let idle_ms = h.last_data_sent_ms.min(h.last_data_recv_ms);
                    self.idle
                        .answers
                        .insert(tuple, (now.max(1), u64::from(idle_ms) * 1_000_000));
                }
                // Or gone: no longer a candidate either way.
                Some(_) | None => {
                    self.idle.no_timer.remove(&tuple);
                    self.idle.answers.remove(&tuple);
                }
            }
        }
    }

    /// Groups the connections idle past the threshold by process and
    /// service port, rebuilt each tick.
    pub(super) fn idle_without_keepalive(
        &mut self,
        out: &mut Vec<Report>,
        now: u64,
        model: &Model,
    ) {
        // Nothing looked up, nothing to report (what was open is resolved
        // for not being seen): no pass over the model.
        if self.idle.answers.is_empty() {
            return;
        }
        let after = self.thresholds.idle_after.as_nanos() as u64;
        let mut groups: HashMap<IdleKey, IdleGroup> = HashMap::new();
        for c in model.connections() {
            if c.state != TcpState::Established {
                continue;
            }
            let Some((asked, idle_then)) = self.idle.answers.get(&c.tuple).copied() else {
                continue;
            };
            let idle = idle_then + now.saturating_sub(asked);
            if idle < after {
                continue;
            }
            let (server, port) = service_port(c);
            let g = groups
                .entry((c.tuple.netns, c.pid, server, port))
                .or_insert((0, 0, c.comm.to_string(), c.cgroup));
            g.0 += 1;
            g.1 = g.1.max(idle);
        }
        for ((netns, pid, server, port), (count, longest, comm, cgroup)) in groups {
            let (time, intvl, probes) = self
                .idle
                .keepalive
                .get(&netns)
                .copied()
                .unwrap_or((7200, 75, 9));
            let detect_s = time + intvl * probes;
            let named = if pid == 0 {
                "connections".to_owned()
            } else {
                format!("{comm} (pid {pid}) has")
            };
            let role = if server { "on local port" } else { "to port" };
            let who = Who {
                pid: (pid != 0).then_some(pid),
                comm: (pid != 0).then(|| comm.clone()),
                lport: server.then_some(port),
                rport: (!server).then_some(port),
                cgroup,
                ..Default::default()
            };
            let longest_s = secs(longest);
            let subject = Subject::IdleGroup {
                netns,
                pid,
                local: server,
                port,
            };
            self.observe(out, FindingKind::IdleWithoutKeepalive, subject, now, count, Driver::Tick, |count| {
                who.apply(
                    Finding::new(
                        FindingKind::IdleWithoutKeepalive,
                        Severity::Info,
                        format!(
                            "{named} {count} ESTABLISHED connections {role} {port} idle for up to {longest_s} s without keep-alive: a peer that crashed or lost power or its path is invisible on them until the application writes"
                        ),
                    )
                    .evidence("count", count)
                    .evidence("longest_idle_seconds", longest_s)
                    .evidence("keepalive_detects_after_seconds", detect_s),
                )
                .remedy(format!(
                    "TCP sends nothing on an idle connection, so a vanished peer (a crash, a power \
                     loss, a pulled cable, a NAT or firewall that expired the flow) goes unnoticed \
                     until this side writes, and then only after tcp_retries2's retransmits. Turn \
                     on SO_KEEPALIVE (with TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT per socket, or \
                     this namespace's tcp_keepalive_time={time}, tcp_keepalive_intvl={intvl}, \
                     tcp_keepalive_probes={probes}: a dead peer found after {detect_s} s of \
                     silence), or an application-level heartbeat, or close idle connections."
                ))
            });
        }
    }
}
