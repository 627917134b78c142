//! Which events `tcpwatch trace` shows.
use crate::tcp::NetnsId;
use crate::{
    findings::Finding,
    host::cgroup::Workload,
    kernel::event::{TcpEvent, TcpState},
    model::Connection,
};

/// An event passes when it matches every criterion that is set; within one
/// criterion any listed value will do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Local or remote port.
    pub ports: Vec<u16>,
    pub local_ports: Vec<u16>,
    pub remote_ports: Vec<u16>,
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// Systemd units, slices or containers of the owner ([`Workload::matches`]).
    pub units: Vec<String>,
    pub netns: Vec<NetnsId>,
    /// Matches a transition's old or new state, or the state a retransmit or reset was seen in.
    pub states: Vec<TcpState>,
    /// 4 or 6.
    pub family: Option<u8>,
}

fn any_or<T: PartialEq>(wanted: &[T], found: &[T]) -> bool {
    wanted.is_empty() || found.iter().any(|f| wanted.contains(f))
}

/// An owner whose unit is unknown matches no `--unit`.
fn unit_matches(wanted: &[String], workload: Option<&Workload>) -> bool {
    wanted.is_empty() || workload.is_some_and(|w| wanted.iter().any(|name| w.matches(name)))
}

impl Filter {
    pub fn matches(&self, ev: &TcpEvent) -> bool {
        let states: Vec<TcpState> = [ev.old_state, ev.new_state].into_iter().flatten().collect();
        self.matches_parts(
            ev.sport,
            ev.dport,
            (ev.pid, &ev.comm, ev.workload.as_deref()),
            ev.netns,
            &states,
            ev.family(),
        )
    }

    /// For a finished connection, whose owner's cgroup is `workload`: the
    /// state criterion matches the states it was seen to pass through.
    pub fn matches_connection(&self, c: &Connection, workload: Option<&Workload>) -> bool {
        let states: Vec<TcpState> = TcpState::ALL
            .iter()
            .zip(c.time_in_state)
            .filter(|(_, secs)| *secs > 0.0)
            .map(|(s, _)| *s)
            .chain([c.state])
            .collect();
        let family = if c.tuple.local.is_ipv4() { 4 } else { 6 };
        let t = &c.tuple;
        self.matches_parts(
            t.local_port,
            t.remote_port,
            (c.pid, &c.comm, workload),
            t.netns,
            &states,
            family,
        )
    }

    /// For a finding: criteria about what its evidence names; a criterion
    /// the evidence says nothing about excludes it (it is not about that).
    pub fn matches_finding(&self, f: &Finding, netns: NetnsId) -> bool {
        let (lport, rport, pid) = (f.who.lport, f.who.rport, f.who.pid);
        let ports: Vec<u16> = lport.into_iter().chain(rport).collect();
        let comm = f.who.comm.as_deref();
        any_or(&self.ports, &ports)
            && any_or(&self.local_ports, &lport.into_iter().collect::<Vec<_>>())
            && any_or(&self.remote_ports, &rport.into_iter().collect::<Vec<_>>())
            && any_or(&self.pids, &pid.into_iter().collect::<Vec<_>>())
            && (self.comms.is_empty() || comm.is_some_and(|c| self.comms.iter().any(|w| w == c)))
            && unit_matches(&self.units, f.workload.as_deref())
            && any_or(&self.netns, &[netns])
    }

    /// `owner` is the pid, comm and cgroup of the owning process.
    fn matches_parts(
        &self,
        sport: u16,
        dport: u16,
        (pid, comm, workload): (u32, &str, Option<&Workload>),
        netns: NetnsId,
        states: &[TcpState],
        family: u8,
    ) -> bool {
        any_or(&self.ports, &[sport, dport])
            && any_or(&self.local_ports, &[sport])
            && any_or(&self.remote_ports, &[dport])
            && any_or(&self.pids, &[pid])
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == comm))
            && unit_matches(&self.units, workload)
            && any_or(&self.netns, &[netns])
            && any_or(&self.states, states)
            && self.family.is_none_or(|f| f == family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::OwnerSource;

    fn ev() -> TcpEvent {
        TcpEvent {
            ts_ns: 1,
            skaddr: 0xffff_0000,
            pid: 100,
            comm: "nginx".into(),
            owner: OwnerSource::Listener,
            netns: NetnsId(4026531840),
            saddr: "127.0.0.1".parse().unwrap(),
            sport: 80,
            daddr: "127.0.0.1".parse().unwrap(),
            dport: 51000,
            old_state: Some(TcpState::SynRecv),
            new_state: Some(TcpState::Established),
            old_state_ns: Some(10),
            ..TcpEvent::blank()
        }
    }

    #[test]
    fn empty_filter_passes_everything() {
        assert!(Filter::default().matches(&ev()));
    }

    #[test]
    fn each_criterion_narrows() {
        let e = ev();
        let f = |f: Filter| f.matches(&e);
        assert!(f(Filter {
            ports: vec![80],
            ..Default::default()
        }));
        assert!(f(Filter {
            ports: vec![51000],
            ..Default::default()
        }));
        assert!(!f(Filter {
            ports: vec![443],
            ..Default::default()
        }));
        assert!(f(Filter {
            local_ports: vec![80],
            ..Default::default()
        }));
        assert!(!f(Filter {
            local_ports: vec![51000],
            ..Default::default()
        }));
        assert!(f(Filter {
            remote_ports: vec![443, 51000],
            ..Default::default()
        }));
        assert!(!f(Filter {
            pids: vec![101],
            ..Default::default()
        }));
        assert!(f(Filter {
            comms: vec!["nginx".into()],
            ..Default::default()
        }));
        assert!(!f(Filter {
            comms: vec!["ngin".into()],
            ..Default::default()
        }));
        assert!(!f(Filter {
            netns: vec![NetnsId(1)],
            ..Default::default()
        }));
        // The unit is unknown: no --unit matches.
        assert!(!f(Filter {
            units: vec!["nginx.service".into()],
            ..Default::default()
        }));
        assert!(f(Filter {
            states: vec![TcpState::SynRecv],
            ..Default::default()
        }));
        assert!(f(Filter {
            states: vec![TcpState::Established],
            ..Default::default()
        }));
        assert!(!f(Filter {
            states: vec![TcpState::CloseWait],
            ..Default::default()
        }));
        assert!(f(Filter {
            family: Some(4),
            ..Default::default()
        }));
        assert!(!f(Filter {
            family: Some(6),
            ..Default::default()
        }));
        assert!(!f(Filter {
            ports: vec![80],
            pids: vec![1],
            ..Default::default()
        }));
    }

    #[test]
    fn the_unit_filter_matches_units_and_containers() {
        use std::sync::Arc;
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let mut nginx = ev();
        nginx.workload = crate::host::cgroup::classify("/system.slice/nginx.service").map(Arc::new);
        let mut docker = ev();
        docker.workload =
            crate::host::cgroup::classify(&format!("/system.slice/docker-{id}.scope"))
                .map(Arc::new);
        let units = |names: &[&str]| Filter {
            units: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        };
        assert!(units(&["nginx.service"]).matches(&nginx));
        assert!(units(&["other.service", "nginx"]).matches(&nginx));
        assert!(!units(&["docker:0123456789ab"]).matches(&nginx));
        assert!(units(&["docker:0123456789ab"]).matches(&docker));
        assert!(units(&["0123456789ab"]).matches(&docker));
        assert!(!units(&["nginx.service"]).matches(&docker));
        assert!(Filter::default().matches(&docker));

        // Findings by the unit their evidence names.
        let finding = |w: &TcpEvent| {
            let mut f = Finding::new(
                crate::findings::FindingKind::CloseWaitLeak,
                crate::findings::Severity::Warning,
                "x",
            );
            f.workload = w.workload.clone();
            f
        };
        assert!(units(&["nginx.service"]).matches_finding(&finding(&nginx), NetnsId(1)));
        assert!(!units(&["nginx.service"]).matches_finding(&finding(&docker), NetnsId(1)));
        assert!(!units(&["nginx.service"]).matches_finding(&finding(&ev()), NetnsId(1)));
    }
}
