//! Review of c178230..HEAD (branch review2): failing tests for what the
//! refactors changed.
use std::time::Duration;

use super::*;
use crate::{
    host::sock_diag::{DiagSocket, TcpHealth},
    kernel::event::OwnerSource,
    model::Limits,
    present::filter::Filter,
};
use TcpState::*;

const S: u64 = 1_000_000_000;

/// A connection accepted on 10.0.0.1:8080 by pid 7 (`app`).
fn accepted(ts: u64, old: TcpState, new: TcpState) -> TcpEvent {
    TcpEvent {
        ts_ns: ts,
        skaddr: 0xa000,
        pid: 7,
        comm: "app".into(),
        owner: OwnerSource::Listener,
        netns: NetnsId(1),
        saddr: "10.0.0.1".parse().unwrap(),
        sport: 8080,
        daddr: "10.0.0.2".parse().unwrap(),
        dport: 40000,
        old_state: Some(old),
        new_state: Some(new),
        ..TcpEvent::blank()
    }
}

/// d4d2804 moved pid, comm and endpoints out of the evidence into the
/// typed `Who`, and `Filter::matches_finding` now reads only `Who`. The
/// idle_without_keepalive detector puts its service port in the evidence
/// (`lport` or `rport`, idle_keepalive.rs) and not in its `Who`, so
/// `trace --port 8080` / `--lport 8080` no longer show the finding about
/// connections idle on local port 8080 (before d4d2804 the filter read
/// `lport` from the evidence and matched it).
#[test]
fn review2_port_filters_match_an_idle_without_keepalive_finding_on_its_port() {
    let mut m = Model::new(Limits::default());
    let mut d = Detectors::new(Thresholds {
        idle_after: Duration::from_secs(5),
        ..Default::default()
    });
    for ev in [
        accepted(0, Listen, SynRecv),
        accepted(1, SynRecv, Established),
    ] {
        let outcomes = m.apply(&ev);
        d.on_event(&ev, &outcomes, &m);
    }
    let tuple = m.connections().next().unwrap().tuple;
    // The kernel lists it ESTABLISHED with no timer (no keep-alive).
    let listed = DiagSocket {
        state: Established,
        local: tuple.local,
        local_port: 8080,
        remote: tuple.remote,
        remote_port: 40000,
        inode: 5,
        time_wait_left_ms: None,
        timer: None,
        recv_queue: 0,
        send_queue: 0,
    };
    d.on_kernel_sockets(NetnsId(1), &[listed], S);
    assert_eq!(d.wanted_idle(&m, 10 * S), [tuple]);
    let idle = TcpHealth {
        last_data_sent_ms: 9_000,
        last_data_recv_ms: 9_000,
        ..Default::default()
    };
    d.set_idle([(tuple, Some(idle))], 10 * S);
    let r = d.tick(10 * S, &m);
    let f = &r
        .iter()
        .find(|r| r.finding.kind == FindingKind::IdleWithoutKeepalive)
        .unwrap_or_else(|| panic!("no idle_without_keepalive: {r:?}"))
        .finding;
    // The finding is about local port 8080, as every renderer shows it.
    assert_eq!(f.rendered_evidence()["lport"], 8080, "{f:?}");
    let by_port = Filter {
        ports: vec![8080],
        ..Default::default()
    };
    let by_lport = Filter {
        local_ports: vec![8080],
        ..Default::default()
    };
    assert!(
        by_port.matches_finding(f, NetnsId(1)),
        "--port 8080 hides the idle_without_keepalive finding on local port 8080: {f:?}"
    );
    assert!(
        by_lport.matches_finding(f, NetnsId(1)),
        "--lport 8080 hides the idle_without_keepalive finding on local port 8080: {f:?}"
    );
    // Another port still excludes it.
    assert!(!Filter {
        ports: vec![443],
        ..Default::default()
    }
    .matches_finding(f, NetnsId(1)));
}
