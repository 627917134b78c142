//! The observing core shared by `trace` and `top`: decoded events go
//! through attribution of old sockets, the connection model and the
//! detectors; ticks age the model; reconciliation checks it against the
//! kernel's socket list. No output here: callers render what comes back.
use std::collections::HashMap;

use crate::{
    clock::monotonic_ns,
    detect::{Detectors, Report},
    diag,
    event::{TcpEvent, TcpState},
    model::{FourTuple, KernelSocket, Model, Outcome},
    netns,
    snapshot::Snapshot,
};

/// How often one exited owner may make tcpwatch look at its namespace again.
const RECHECK_EXITED_NS: u64 = 10_000_000_000;

/// What one event led to.
pub struct Observed {
    pub event: TcpEvent,
    pub outcomes: Vec<Outcome>,
    pub reports: Vec<Report>,
}

pub struct Observer {
    pub model: Model,
    /// None when findings are not wanted.
    pub detectors: Option<Detectors>,
    snapshot: Snapshot,
    /// Whether the kernel's socket list answered the last reconciliation;
    /// None before the first.
    pub sock_diag_available: Option<bool>,
    /// How to enter each namespace seen by the last reconciliation, for
    /// the health checks between reconciliations.
    namespaces: HashMap<u32, netns::Target>,
    /// Each namespace's settings and counters from the last reconciliation.
    pub netns_states: HashMap<u32, crate::audit::NetnsState>,
    /// Owners found exited and looked up again, and when: each is looked
    /// up at most every [`RECHECK_EXITED_NS`] (a socket nobody holds keeps
    /// its last owner).
    exited_rechecked: HashMap<u32, u64>,
}

impl Observer {
    pub fn new(model: Model, detectors: Option<Detectors>, snapshot: Snapshot) -> Self {
        Observer {
            model,
            detectors,
            snapshot,
            sock_diag_available: None,
            namespaces: HashMap::new(),
            netns_states: HashMap::new(),
            exited_rechecked: Default::default(),
        }
    }

    pub fn record(&mut self, mut event: TcpEvent) -> Observed {
        self.snapshot.attribute(&mut event);
        self.attribute_to_listener(&mut event);
        let outcomes = self.model.apply(&event);
        let reports = match self.detectors.as_mut() {
            Some(d) => d.on_event(&event, &outcomes, &self.model),
            None => Vec::new(),
        };
        Observed {
            event,
            outcomes,
            reports,
        }
    }

    /// Never name a process that has exited: the owners of what findings are
    /// made of (CLOSE_WAIT and FIN_WAIT2 sockets, connections retransmitting,
    /// listeners) are checked to be alive, and the namespaces of those that
    /// are not are reconciled now, which names the processes holding the
    /// sockets instead.
    fn recheck_exited_owners(&mut self, now: u64) {
        if self.detectors.is_none() || self.sock_diag_available != Some(true) {
            return;
        }
        self.exited_rechecked
            .retain(|_, at| now.saturating_sub(*at) < RECHECK_EXITED_NS);
        let mut owners: HashMap<u32, u32> = HashMap::new();
        for c in self.model.connections().filter(|c| {
            matches!(c.state, TcpState::CloseWait | TcpState::FinWait2) || c.rtx_run.is_some()
        }) {
            owners.entry(c.pid).or_insert(c.tuple.netns);
        }
        for l in self.model.listeners() {
            owners.entry(l.pid).or_insert(l.tuple.netns);
        }
        let exited: Vec<(u32, u32)> = owners
            .into_iter()
            .filter(|(pid, _)| *pid != 0 && !self.exited_rechecked.contains_key(pid))
            .filter(|(pid, _)| !crate::snapshot::alive(*pid))
            .collect();
        self.exited_rechecked
            .extend(exited.iter().map(|(pid, _)| (*pid, now)));
        let mut namespaces: Vec<u32> = exited.into_iter().map(|(_, netns)| netns).collect();
        if namespaces.is_empty() {
            return;
        }
        namespaces.sort_unstable();
        namespaces.dedup();
        self.reconcile(&namespaces);
    }

    /// CLOSE_WAIT and FIN_WAIT2 sockets that just crossed their threshold
    /// and that no reconciliation has seen in that state: their namespaces
    /// are reconciled now (at most once a second each), so the leak is
    /// reported on time and named after the process that holds it.
    fn confirm_owners_of_waits(&mut self, now: u64) {
        if self.sock_diag_available != Some(true) {
            return;
        }
        let Some(d) = self.detectors.as_ref() else {
            return;
        };
        let mut namespaces = d.unconfirmed_waits(&self.model, now);
        namespaces.retain(|n| {
            self.model
                .reconciled_at(*n)
                .is_none_or(|at| now.saturating_sub(at) >= 1_000_000_000)
        });
        if !namespaces.is_empty() {
            self.reconcile(&namespaces);
        }
    }

    /// Events the kernel attributed to a listener's owner (a SYN-ACK
    /// retransmit, a connection born before anyone accepted it) name the
    /// process that holds the listener now: the kernel learnt the owner at
    /// listen(), and a daemon that forked and let its launcher exit, or a
    /// listener passed on with exec, has another one since.
    fn attribute_to_listener(&self, event: &mut TcpEvent) {
        use crate::event::{EventKind, OwnerSource};
        let from_listener = event.kind == EventKind::SynackRetransmit
            || event.kind == EventKind::State
                && event.owner == OwnerSource::Listener
                && event.old_state == Some(crate::event::TcpState::Listen);
        if !from_listener {
            return;
        }
        if let Some(l) = self.model.listener_on(event.netns, event.sport) {
            if l.pid != event.pid {
                event.pid = l.pid;
                event.comm = l.comm.to_string();
            }
        }
    }

    /// Ages the model and looks for buildups, leaks and stalls; the
    /// connections whose health is in doubt are checked with the kernel
    /// first (a few exact sock_diag lookups).
    pub fn tick(&mut self, now: u64) -> (Vec<Outcome>, Vec<Report>) {
        let outcomes = self.model.expire(now);
        self.recheck_exited_owners(now);
        self.confirm_owners_of_waits(now);
        let reports = match self.detectors.as_mut() {
            Some(d) => {
                let wanted = d.wanted_health(&self.model);
                if !wanted.is_empty() && self.sock_diag_available != Some(false) {
                    d.set_health(inspect(&self.namespaces, &wanted), now);
                }
                d.tick(now, &self.model)
            }
            None => Vec::new(),
        };
        (outcomes, reports)
    }

    /// At exit: closes still waiting for a possible reset are decided now.
    pub fn finish(&mut self) -> Vec<Outcome> {
        self.model.expire(u64::MAX)
    }

    /// Checks the model against sock_diag in every namespace (or those in
    /// `only`) and reads each namespace's settings and counters.
    pub fn reconcile(&mut self, only: &[u32]) -> Vec<Report> {
        self.apply_dumps(dump_namespaces(only))
    }

    /// Corrects the model with dumps taken by [`dump_namespaces`], which
    /// need not hold the observer while they run.
    pub fn apply_dumps(&mut self, dumps: Dumps) -> Vec<Report> {
        let mut reports = Vec::new();
        if let Some(listed) = &dumps.listed {
            // Namespaces that no longer exist took their sockets with them,
            // and their findings are over.
            self.model.forget_namespaces_except(listed);
            self.namespaces.retain(|inode, _| listed.contains(inode));
            self.netns_states.retain(|inode, _| listed.contains(inode));
            if let Some(d) = self.detectors.as_mut() {
                let start = dumps.namespaces.first().map_or(0, |n| n.start_ns);
                reports.extend(d.forget_namespaces_except(listed, start));
            }
        }
        if !dumps.namespaces.is_empty() {
            let available = dumps.namespaces.iter().all(|n| n.contents.1.is_some());
            match (self.sock_diag_available, available) {
                (Some(false), false) | (Some(true), true) | (None, true) => {}
                (_, false) => log::warn!("{}", diag::UNAVAILABLE),
                (Some(false), true) => {
                    log::info!("the kernel's socket list (sock_diag) answers again")
                }
            }
            self.sock_diag_available = Some(available);
        }
        for dump in dumps.namespaces {
            let netns = dump.netns;
            self.namespaces.insert(netns, dump.target);
            let (state, sockets) = dump.contents;
            self.model.set_max_tw_buckets(netns, state.max_tw_buckets());
            self.netns_states.insert(netns, state.clone());
            if let Some(d) = self.detectors.as_mut() {
                reports.extend(d.on_netns(netns, &state, dump.start_ns));
            }
            let Some(sockets) = sockets else {
                continue;
            };
            // A dump older than one already applied (a reconciliation that
            // overtook this one) would undo what the newer one learnt.
            if self
                .model
                .reconciled_at(netns)
                .is_some_and(|at| at > dump.start_ns)
            {
                continue;
            }
            if let Some(d) = self.detectors.as_mut() {
                d.on_kernel_sockets(netns, &sockets, dump.start_ns);
            }
            let sockets: Vec<KernelSocket> = sockets
                .into_iter()
                .map(|s| {
                    let (holders, holder_count) = dumps.holders.of(u64::from(s.inode));
                    let owner = holders.first();
                    KernelSocket {
                        tuple: FourTuple {
                            netns,
                            local: s.local,
                            local_port: s.local_port,
                            remote: s.remote,
                            remote_port: s.remote_port,
                        },
                        state: s.state,
                        orphan: s.inode == 0,
                        time_wait_left_ns: s.time_wait_left_ms.map(|ms| u64::from(ms) * 1_000_000),
                        pid: owner.map_or(0, |o| o.pid),
                        comm: owner.map(|o| o.comm.clone()).unwrap_or_default(),
                        holders: holders.iter().map(|o| (o.pid, o.comm.clone())).collect(),
                        holder_count,
                    }
                })
                .collect();
            self.model
                .reconcile(netns, &sockets, dump.start_ns, monotonic_ns());
        }
        reports
    }
}

/// One namespace's settings, counters and sockets, dumped from `start_ns`.
pub struct NetnsDump {
    pub netns: u32,
    /// How it was entered.
    pub target: netns::Target,
    pub start_ns: u64,
    pub contents: netns::Observed,
}

/// The dumps of one reconciliation.
pub struct Dumps {
    pub namespaces: Vec<NetnsDump>,
    /// Every namespace that exists: the model forgets the others.
    pub listed: Option<Vec<u32>>,
    /// Who holds each socket, scanned right after the dumps.
    pub holders: crate::snapshot::Holders,
}

/// Dumps every namespace (or those in `only`). Blocking: sock_diag and
/// /proc reads, a few milliseconds per thousand sockets.
pub fn dump_namespaces(only: &[u32]) -> Dumps {
    let mut dumps = Vec::new();
    let all = netns::all();
    // Every namespace is listed even when only some are dumped: what is
    // not listed is gone, and so are its sockets and findings.
    let listed = Some(all.iter().map(|(inode, _)| *inode).collect());
    for (inode, target) in all {
        if !only.is_empty() && !only.contains(&inode) {
            continue;
        }
        let start_ns = monotonic_ns();
        match netns::observe(&target) {
            Ok((inode, contents)) => dumps.push(NetnsDump {
                netns: inode as u32,
                target,
                start_ns,
                contents,
            }),
            // A namespace can vanish between listing and dumping.
            Err(e) => log::debug!("cannot reconcile network namespace {inode}: {e}"),
        }
    }
    Dumps {
        namespaces: dumps,
        listed,
        holders: crate::snapshot::Holders::scan(),
    }
}

/// The kernel's view of each connection in `wanted`, namespace by
/// namespace: Some(health), None for a connection the kernel no longer
/// has. A namespace that cannot be entered answers nothing (its
/// connections keep their previous answer).
fn inspect(
    namespaces: &HashMap<u32, netns::Target>,
    wanted: &[FourTuple],
) -> Vec<(FourTuple, Option<diag::TcpHealth>)> {
    let mut by_netns: HashMap<u32, Vec<FourTuple>> = HashMap::new();
    for t in wanted {
        by_netns.entry(t.netns).or_default().push(*t);
    }
    let own = netns::current_inode().ok().map(|i| i as u32);
    let mut answers = Vec::new();
    for (inode, tuples) in by_netns {
        let target = if Some(inode) == own {
            netns::Target::Current
        } else if let Some(target) = namespaces.get(&inode) {
            target.clone()
        } else {
            continue;
        };
        let looked_up = netns::in_netns(&target, || {
            Ok(tuples
                .iter()
                .filter_map(|t| {
                    diag::inspect(t.local, t.local_port, t.remote, t.remote_port)
                        .ok()
                        .map(|h| (*t, h))
                })
                .collect::<Vec<_>>())
        });
        match looked_up {
            // The inode may have been reused by another namespace since.
            Ok((entered, found)) if entered as u32 == inode => answers.extend(found),
            Ok(_) => {}
            Err(e) => log::debug!("cannot check connections in namespace {inode}: {e}"),
        }
    }
    answers
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{audit::NetnsState, detect::Thresholds, event::TcpState, model::Limits};

    fn dump(netns: u32, sockets: Option<Vec<diag::DiagSocket>>) -> Dumps {
        let mut state = NetnsState::default();
        // A risky setting, so the sysctl detector has something to say.
        state.sysctls.insert("tcp_syncookies".into(), "0".into());
        Dumps {
            namespaces: vec![NetnsDump {
                netns,
                target: netns::Target::Current,
                start_ns: 1,
                contents: (state, sockets),
            }],
            listed: Some(vec![netns]),
            holders: Default::default(),
        }
    }

    fn time_wait_socket(port: u16) -> diag::DiagSocket {
        diag::DiagSocket {
            state: TcpState::TimeWait,
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: port,
            remote: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: 80,
            inode: 0,
            time_wait_left_ms: Some(30_000),
            timer: None,
            recv_queue: 0,
            send_queue: 0,
        }
    }

    #[test]
    fn without_sock_diag_settings_still_count_and_the_model_is_left_alone() {
        let mut observer = Observer::new(
            Model::new(Limits::default()),
            Some(Detectors::new(Thresholds::default())),
            Snapshot::default(),
        );
        let reports = observer.apply_dumps(dump(7, None));
        assert_eq!(observer.sock_diag_available, Some(false));
        // The sysctl findings come from /proc, not from sock_diag.
        assert!(
            reports
                .iter()
                .any(|r| r.finding.kind == crate::finding::kind::SYSCTL_RISK),
            "sysctl findings stop without sock_diag"
        );
        assert_eq!(observer.model.time_wait().count(), 0);

        // Once the modules are loaded, the next reconciliation learns the kernel's list.
        observer.apply_dumps(dump(7, Some(vec![time_wait_socket(40_000)])));
        assert_eq!(observer.sock_diag_available, Some(true));
        assert_eq!(observer.model.time_wait().count(), 1);

        // And losing it again leaves what the model knows in place.
        observer.apply_dumps(dump(7, None));
        assert_eq!(observer.sock_diag_available, Some(false));
        assert_eq!(observer.model.time_wait().count(), 1);
    }
}
