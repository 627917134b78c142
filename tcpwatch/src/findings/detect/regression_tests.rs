//! Cases where syn_flood or orphan_overflow once named the wrong process or
//! listener, or flapped while the condition it reports held.
use super::syn_flood::{assess, ListenerSyn, SynCounters, SynSettings};
use super::*;
use crate::findings::FindingKind;
use crate::{
    host::sock_diag::DiagSocket,
    kernel::event::OwnerSource,
    model::{KernelSocket, Limits},
};
use TcpState::*;

const S: u64 = 1_000_000_000;

fn st(ts: u64, sk: u64, old: TcpState, new: TcpState, sport: u16) -> TcpEvent {
    TcpEvent {
        ts_ns: ts,
        skaddr: sk,
        pid: 7,
        comm: "app".into(),
        owner: OwnerSource::Connect,
        netns: NetnsId(1),
        saddr: "10.0.0.1".parse().unwrap(),
        sport,
        daddr: "10.0.0.2".parse().unwrap(),
        dport: 443,
        old_state: Some(old),
        new_state: Some(new),
        ..TcpEvent::blank()
    }
}

fn kinds(r: &[Report]) -> Vec<(FindingKind, Status)> {
    r.iter().map(|r| (r.finding.kind, r.status)).collect()
}

fn listener(port: u16, half_open: u32, backlog: u32, synack_retransmits: u64) -> ListenerSyn {
    ListenerSyn {
        addr: "10.0.0.2".parse().unwrap(),
        port,
        half_open,
        backlog,
        synack_retransmits,
    }
}

/// Cookies were sent: some listener's SYN queue overflowed. Port 8080
/// (backlog 16) holds 17 request sockets, past its limit: that is the one
/// whose SYNs got cookies. Port 443 (backlog 4096) is a busy, healthy
/// service with 50 half-open connections of ordinary clients (1% of its
/// queue, a few lossy ones among them). The namespace's counters do not
/// say which listener overflowed, and syn_flood names the one with the
/// most half-open connections in absolute terms: the healthy one.
#[test]
fn syn_flood_names_the_listener_whose_queue_is_full() {
    let moved = SynCounters {
        cookies_sent: 500,
        queue_full_cookies: 500,
        ..Default::default()
    };
    let settings = SynSettings {
        syncookies: Some(1),
        max_syn_backlog: Some(4096),
        synack_retries: Some(5),
    };
    let listeners = [listener(443, 50, 4096, 3), listener(8080, 17, 16, 2)];
    let v = assess(&listeners, &moved, &settings);
    let overflowed: Vec<Option<u16>> = v
        .iter()
        .filter(|v| v.counters != SynCounters::default())
        .map(|v| v.listener.as_ref().map(|l| l.port))
        .collect();
    assert_eq!(
        overflowed,
        [Some(8080)],
        "the listener past its SYN queue limit overflowed, not the one at 1% of it: {v:#?}"
    );
}

fn diag(state: TcpState, port: u16, remote_port: u16, send_queue: u32) -> DiagSocket {
    DiagSocket {
        state,
        local: "10.0.0.2".parse().unwrap(),
        local_port: port,
        remote: "198.51.100.7".parse().unwrap(),
        remote_port,
        inode: 0,
        time_wait_left_ms: None,
        timer: None,
        recv_queue: 0,
        send_queue,
    }
}

/// A listener whose SYN queue stays at 60 of 64 half-open connections for
/// ten minutes (the "filling" case of syn_flood, no counter moving: e.g. a
/// TCP_DEFER_ACCEPT listener whose acknowledged request sockets wait for
/// data and resend no SYN-ACK). The condition holds at every
/// reconciliation, yet the finding is event-driven with a constant count:
/// it resolves after --resolve-after and is raised again at the next look,
/// every five minutes.
#[test]
fn a_syn_queue_that_stays_full_is_not_resolved_and_raised_again() {
    let m = Model::new(Limits::default());
    let mut d = Detectors::new(Thresholds::default());
    let mut state = NetnsState::default();
    state.sysctls.insert("tcp_syncookies".into(), "1".into());
    state
        .sysctls
        .insert("tcp_max_syn_backlog".into(), "4096".into());
    let mut sockets = vec![diag(Listen, 80, 0, 64)];
    sockets.extend((0..60).map(|i| diag(SynRecv, 80, 4000 + i, 0)));
    let mut reports = Vec::new();
    for step in 0..=70u64 {
        let now = step * 10 * S;
        reports.extend(d.on_netns(NetnsId(1), &state, now));
        reports.extend(d.on_syn_queues(NetnsId(1), &sockets, &m, now));
        reports.extend(d.tick(now, &m));
    }
    let syn: Vec<(FindingKind, Status)> = kinds(&reports)
        .into_iter()
        .filter(|(k, _)| *k == FindingKind::SynFlood)
        .collect();
    assert_eq!(
        syn,
        [(FindingKind::SynFlood, Status::Raised)],
        "one condition, held throughout: raised once and never resolved"
    );
}

/// orphan_overflow's pressure names "the process with the most connections
/// still being finished" (README): those in FIN_WAIT1, CLOSING or LAST_ACK.
/// Here the only one is a connection its process half-closed with
/// shutdown(SHUT_WR) and still holds (the kernel's list shows it with an
/// inode and a holder): no orphan at all. The finding names it anyway,
/// since the model counts states, not orphans.
#[test]
fn orphan_overflow_names_no_process_for_a_half_closed_socket_it_holds() {
    let mut m = Model::new(Limits::default());
    let mut d = Detectors::new(Thresholds::default());
    for e in [
        st(0, 0x100, Close, SynSent, 0),
        st(1, 0x100, SynSent, Established, 40000),
        st(2, 0x100, Established, FinWait1, 40000),
    ] {
        m.apply(&e);
    }
    let c = m.connections().next().unwrap().clone();
    let held = KernelSocket {
        tuple: c.tuple,
        state: FinWait1,
        pid: 7,
        comm: "app".into(),
        orphan: false,
        time_wait_left_ns: None,
        holders: vec![crate::host::owners::Owner {
            pid: 7,
            comm: "app".into(),
            cgroup: 0,
        }],
        cgroup: 0,
        holder_count: 1,
        queue: 0,
        queue_limit: 0,
    };
    m.reconcile(NetnsId(1), &[held], S, S);
    let mut host = NetnsState::default();
    host.sysctls.insert("tcp_max_orphans".into(), "10".into());
    host.orphans = Some(9);
    d.on_netns(NetnsId(1), &host, 2 * S);
    let listed = |inode: u32| DiagSocket {
        state: FinWait1,
        local: c.tuple.local,
        local_port: c.tuple.local_port,
        remote: c.tuple.remote,
        remote_port: c.tuple.remote_port,
        inode,
        time_wait_left_ms: None,
        timer: None,
        recv_queue: 0,
        send_queue: 0,
    };
    let r = d.on_orphans(NetnsId(1), &[listed(77)], &m, 2 * S);
    assert_eq!(kinds(&r), [(FindingKind::OrphanOverflow, Status::Raised)]);
    let f = &r[0].finding;
    assert!(
        f.rendered_evidence().get("pid").is_none_or(|p| p.is_null()),
        "pid 7 holds its socket, it is no orphan's closer: {}",
        f.summary
    );
    // Once closed (listed without an inode), its closer is named.
    let mut d = Detectors::new(Thresholds::default());
    d.on_netns(NetnsId(1), &host, 2 * S);
    let r = d.on_orphans(NetnsId(1), &[listed(0)], &m, 2 * S);
    assert_eq!(
        r[0].finding.rendered_evidence()["pid"].as_u64(),
        Some(7),
        "{}",
        r[0].finding.summary
    );
}

/// The host's orphan count hovers at the 80% line (8, 7, 8, 7, ... of a
/// tcp_max_orphans of 10), read every 10 s: the pressure finding is raised
/// and resolved at every other read, with no hysteresis.
#[test]
fn orphan_pressure_around_the_threshold_does_not_flap() {
    let m = Model::new(Limits::default());
    let mut d = Detectors::new(Thresholds::default());
    let host = |orphans: u64| {
        let mut s = NetnsState::default();
        s.sysctls.insert("tcp_max_orphans".into(), "10".into());
        s.orphans = Some(orphans);
        s
    };
    let mut reports = Vec::new();
    for step in 0..10u64 {
        let now = step * 10 * S;
        reports.extend(d.on_netns(NetnsId(1), &host(if step % 2 == 0 { 8 } else { 7 }), now));
        reports.extend(d.on_orphans(NetnsId(1), &[], &m, now));
    }
    let raised = reports
        .iter()
        .filter(|r| r.finding.kind == FindingKind::OrphanOverflow && r.status == Status::Raised)
        .count();
    assert_eq!(raised, 1, "{:?}", kinds(&reports));
}
