//! Aggregates of the model for screens and scrapes: sockets by state,
//! TIME_WAIT by remote endpoint and CLOSE_WAIT by process, each bounded to
//! the top N with the rest folded into one `other` row. Pure.
use crate::tcp::NetnsId;
use std::collections::HashMap;

use crate::{
    kernel::event::TcpState,
    model::{Model, Opener, LIFECYCLE_ORDER},
    tcp::endpoint,
};

/// One CLOSE_WAIT group: a process and a local port.
#[derive(Clone, Debug, PartialEq)]
pub struct CloseWaitRow {
    pub pid: u32,
    pub comm: String,
    /// The process's cgroup v2 id (0 when unknown).
    pub cgroup: u64,
    /// Its unit or container ([`crate::host::cgroup::Workload::label`]), empty
    /// when unknown; filled in by [`Summary::name_units`].
    pub unit: String,
    pub local_port: u16,
    pub count: u64,
    pub oldest_seconds: f64,
    /// Some ages are lower bounds (sockets older than tcpwatch).
    pub at_least: bool,
}

/// A label and a count; the label `other` folds everything past the top N.
pub type Row = (String, u64);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Sockets by state, TIME_WAIT included, in lifecycle order; states
    /// with no socket are left out.
    pub by_state: Vec<(TcpState, u64)>,
    /// TIME_WAIT towards each remote endpoint (this host as client), or on
    /// each local port (`server :PORT`, this host as a server closing first).
    pub time_wait: Vec<Row>,
    pub close_wait: Vec<CloseWaitRow>,
    /// Local ports this host holds as a client (connections it opened and
    /// their TIME_WAIT) towards each remote endpoint.
    pub ports_in_use: Vec<Row>,
    /// Sockets by namespace and state ([`by_netns`]), when asked for.
    pub by_netns: Vec<(String, TcpState, u64)>,
}

/// The label of the folded rows.
pub const OTHER: &str = "other";

fn top_n(mut rows: Vec<Row>, n: usize) -> Vec<Row> {
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if rows.len() > n {
        let rest: u64 = rows[n..].iter().map(|r| r.1).sum();
        rows.truncate(n);
        rows.push((OTHER.to_owned(), rest));
    }
    rows
}

/// Summarizes the model at `now` for the namespaces in `netns` (all when empty).
pub fn summarize(model: &Model, now: u64, netns: &[NetnsId], top: usize) -> Summary {
    let wanted = |ns: NetnsId| netns.is_empty() || netns.contains(&ns);
    let mut states: HashMap<TcpState, u64> = HashMap::new();
    let mut close_wait: HashMap<(u32, u16), CloseWaitRow> = HashMap::new();
    let mut ports: HashMap<String, u64> = HashMap::new();
    for c in model.connections().filter(|c| wanted(c.tuple.netns)) {
        *states.entry(c.state).or_default() += 1;
        if c.opener == Opener::Active {
            *ports
                .entry(endpoint(c.tuple.remote, c.tuple.remote_port))
                .or_default() += 1;
        }
        if c.state == TcpState::CloseWait {
            let age = now.saturating_sub(c.state_since_ns) as f64 / 1e9;
            let row = close_wait
                .entry((c.pid, c.tuple.local_port))
                .or_insert_with(|| CloseWaitRow {
                    pid: c.pid,
                    comm: c.comm.to_string(),
                    cgroup: c.cgroup,
                    unit: String::new(),
                    local_port: c.tuple.local_port,
                    count: 0,
                    oldest_seconds: 0.0,
                    at_least: false,
                });
            row.count += 1;
            row.oldest_seconds = row.oldest_seconds.max((age * 10.0).round() / 10.0);
            row.at_least |= !c.state_age_known;
        }
    }
    let listening = model.listeners().filter(|l| wanted(l.tuple.netns)).count() as u64;
    if listening > 0 {
        *states.entry(TcpState::Listen).or_default() += listening;
    }
    let mut tw: HashMap<String, u64> = HashMap::new();
    for (t, entry) in model.time_wait().filter(|(t, _)| wanted(t.netns)) {
        *states.entry(entry.substate).or_default() += 1;
        // An orphan in FIN_WAIT2 holds its port as much as a TIME_WAIT.
        if entry.opener != Opener::Passive {
            *ports.entry(endpoint(t.remote, t.remote_port)).or_default() += 1;
        }
        if entry.substate != TcpState::TimeWait {
            continue;
        }
        let label = if entry.opener == Opener::Passive {
            format!("server :{}", t.local_port)
        } else {
            endpoint(t.remote, t.remote_port)
        };
        *tw.entry(label).or_default() += 1;
    }
    let by_state = LIFECYCLE_ORDER
        .iter()
        .chain(&[TcpState::Listen])
        .filter_map(|s| states.get(s).map(|n| (*s, *n)))
        .collect();
    let mut close_wait: Vec<CloseWaitRow> = close_wait.into_values().collect();
    close_wait.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(b.oldest_seconds.total_cmp(&a.oldest_seconds))
    });
    if close_wait.len() > top {
        let rest = close_wait.split_off(top);
        close_wait.push(CloseWaitRow {
            pid: 0,
            comm: OTHER.to_owned(),
            cgroup: 0,
            unit: String::new(),
            local_port: 0,
            count: rest.iter().map(|r| r.count).sum(),
            oldest_seconds: rest.iter().map(|r| r.oldest_seconds).fold(0.0, f64::max),
            at_least: rest.iter().any(|r| r.at_least),
        });
    }
    Summary {
        by_state,
        time_wait: top_n(tw.into_iter().collect(), top),
        close_wait,
        ports_in_use: top_n(ports.into_iter().collect(), top),
        by_netns: Vec::new(),
    }
}

impl Summary {
    /// Names the unit or container of each CLOSE_WAIT row's process, from
    /// what `units` has learnt.
    pub fn name_units(&mut self, units: &crate::host::cgroup::Units) {
        for row in &mut self.close_wait {
            row.unit = units.get(row.cgroup).map(|w| w.label()).unwrap_or_default();
        }
    }
}

/// Sockets by network namespace and state, for the namespaces holding the
/// most sockets (the rest in `other`): label values stay bounded on hosts
/// with thousands of containers.
pub fn by_netns(model: &Model, top: usize) -> Vec<(String, TcpState, u64)> {
    let mut counts: HashMap<NetnsId, HashMap<TcpState, u64>> = HashMap::new();
    for c in model.connections() {
        *counts
            .entry(c.tuple.netns)
            .or_default()
            .entry(c.state)
            .or_default() += 1;
    }
    for l in model.listeners() {
        *counts
            .entry(l.tuple.netns)
            .or_default()
            .entry(TcpState::Listen)
            .or_default() += 1;
    }
    for (t, entry) in model.time_wait() {
        *counts
            .entry(t.netns)
            .or_default()
            .entry(entry.substate)
            .or_default() += 1;
    }
    let mut namespaces: Vec<(NetnsId, HashMap<TcpState, u64>)> = counts.into_iter().collect();
    namespaces.sort_by_key(|(ns, states)| (std::cmp::Reverse(states.values().sum::<u64>()), *ns));
    let mut other: HashMap<TcpState, u64> = HashMap::new();
    let mut rows = Vec::new();
    for (i, (ns, states)) in namespaces.into_iter().enumerate() {
        if i < top {
            rows.extend(states.into_iter().map(|(s, n)| (ns.to_string(), s, n)));
        } else {
            for (s, n) in states {
                *other.entry(s).or_default() += n;
            }
        }
    }
    rows.extend(other.into_iter().map(|(s, n)| (OTHER.to_owned(), s, n)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::{OwnerSource, TcpEvent};
    use TcpState::*;

    const S: u64 = 1_000_000_000;

    fn st(
        ts: u64,
        sk: u64,
        old: TcpState,
        new: TcpState,
        sport: u16,
        dport: u16,
        netns: NetnsId,
    ) -> TcpEvent {
        TcpEvent {
            ts_ns: ts,
            skaddr: sk,
            pid: 5,
            comm: "srv".into(),
            owner: OwnerSource::Listener,
            netns,
            saddr: "10.0.0.1".parse().unwrap(),
            sport,
            daddr: "10.0.0.9".parse().unwrap(),
            dport,
            old_state: Some(old),
            new_state: Some(new),
            ..TcpEvent::blank()
        }
    }

    #[test]
    fn counts_states_time_wait_and_close_wait() {
        let mut m = Model::default();
        // Two CLOSE_WAIT on the server's port 80.
        for i in 0..2u64 {
            let sk = 0x100 + i * 64;
            for (o, n) in [
                (Listen, SynRecv),
                (SynRecv, Established),
                (Established, CloseWait),
            ] {
                m.apply(&st(i * S, sk, o, n, 80, 50000 + i as u16, NetnsId(1)));
            }
        }
        // Three client connections to three endpoints, closed first: TIME_WAIT.
        for i in 0..3u64 {
            let sk = 0x1000 + i * 64;
            for (o, n) in [
                (Close, SynSent),
                (SynSent, Established),
                (Established, FinWait1),
                (FinWait1, FinWait2),
                (FinWait2, Close),
            ] {
                m.apply(&st(
                    0,
                    sk,
                    o,
                    n,
                    40000 + i as u16,
                    8000 + i as u16,
                    NetnsId(1),
                ));
            }
        }
        // Another namespace's connection.
        m.apply(&st(0, 0x9000, Close, SynSent, 0, 443, NetnsId(2)));

        let s = summarize(&m, 10 * S, &[NetnsId(1)], 2);
        assert_eq!(s.by_state, [(TimeWait, 3), (CloseWait, 2)]);
        assert_eq!(
            s.time_wait,
            [
                ("10.0.0.9:8000".to_owned(), 1),
                ("10.0.0.9:8001".to_owned(), 1),
                (OTHER.to_owned(), 1)
            ]
        );
        // The client side: one port towards each of the three endpoints.
        assert_eq!(
            s.ports_in_use,
            [
                ("10.0.0.9:8000".to_owned(), 1),
                ("10.0.0.9:8001".to_owned(), 1),
                (OTHER.to_owned(), 1)
            ]
        );
        assert_eq!(s.close_wait.len(), 1);
        let row = &s.close_wait[0];
        assert_eq!(
            (
                row.pid,
                row.local_port,
                row.count,
                row.oldest_seconds,
                row.at_least
            ),
            (5, 80, 2, 10.0, false)
        );
        assert_eq!(
            summarize(&m, 10 * S, &[], 10).by_state,
            [(SynSent, 1), (TimeWait, 3), (CloseWait, 2)]
        );
        // By namespace: the busiest first, the rest folded.
        let mut rows = by_netns(&m, 1);
        rows.sort();
        assert_eq!(
            rows,
            [
                ("1".to_owned(), TimeWait, 3),
                ("1".to_owned(), CloseWait, 2),
                (OTHER.to_owned(), SynSent, 1)
            ]
        );
    }
}
