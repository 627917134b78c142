//! Review of the drops / accept-queue / peer-silence change: cases where
//! accept_queue_overflow stays open, or is re-reported, without any new
//! evidence of an overflow.
use super::*;
use crate::{host::sock_diag::DiagSocket, kernel::event::OwnerSource, model::Limits};
use TcpState::*;

const S: u64 = 1_000_000_000;
const LISTENER_SK: u64 = 0xffff_0000_0000_1000;

fn st(
    ts: u64,
    sk: u64,
    old: TcpState,
    new: TcpState,
    src: (&str, u16),
    dst: (&str, u16),
) -> TcpEvent {
    TcpEvent {
        ts_ns: ts,
        skaddr: sk,
        pid: 7,
        comm: "app".into(),
        owner: OwnerSource::Connect,
        netns: NetnsId(1),
        saddr: src.0.parse().unwrap(),
        sport: src.1,
        daddr: dst.0.parse().unwrap(),
        dport: dst.1,
        old_state: Some(old),
        new_state: Some(new),
        ..TcpEvent::blank()
    }
}

/// The listener 10.0.0.2:80 as sock_diag lists it, with its accept queue.
fn listed(queue: u32) -> Vec<DiagSocket> {
    vec![DiagSocket {
        state: Listen,
        local: "10.0.0.2".parse().unwrap(),
        local_port: 80,
        remote: "0.0.0.0".parse().unwrap(),
        remote_port: 0,
        inode: 1,
        time_wait_left_ms: None,
        timer: None,
        recv_queue: queue,
        send_queue: 4,
    }]
}

fn counters(overflows: u64) -> NetnsState {
    let mut state = NetnsState::default();
    state.tcpext.insert("ListenOverflows".into(), overflows);
    state.tcpext.insert("ListenDrops".into(), overflows);
    state
}

/// A connect from 10.0.0.1 to the listener whose SYNs went unanswered for
/// 3 s (a client behind a lossy path, a firewall dropping SYNs...).
fn connect_times_out(m: &mut Model, d: &mut Detectors, at: u64, i: u64) -> Vec<Report> {
    let sk = 0xffff_0000_1000_0000 + i * 0x1000;
    let port = 40_000 + i as u16;
    let mut out = Vec::new();
    for ev in [
        st(at, sk, Close, SynSent, ("10.0.0.1", port), ("10.0.0.2", 80)),
        st(
            at + 3 * S,
            sk,
            SynSent,
            Close,
            ("10.0.0.1", port),
            ("10.0.0.2", 80),
        ),
    ] {
        let outcomes = m.apply(&ev);
        out.extend(d.on_event(&ev, &outcomes, m));
    }
    out
}

fn overflow_reports(r: &[Report]) -> Vec<(u64, Status)> {
    r.iter()
        .filter(|r| r.finding.kind == FindingKind::AcceptQueueOverflow)
        .map(|r| (r.ts_ns / S, r.status))
        .collect()
}

/// One overflow at t=10 s, then the accept queue is empty and
/// ListenOverflows never moves again. One client, on a path that drops
/// its SYNs now and then, has a connect time out every 70 s (so 4 or 5 of
/// them fall in the 5-minute window at any time). Nothing
/// overflows any more: accept_queue_overflow is event-driven and must
/// resolve after --resolve-after (300 s) without new overflows. Each
/// unrelated timeout changes the "clients_timed_out" detail, which
/// observe_detailed takes as new evidence: the finding never resolves.
#[test]
fn accept_queue_overflow_resolves_though_unrelated_connects_keep_timing_out() {
    let mut m = Model::new(Limits::default());
    let mut d = Detectors::new(Thresholds::default());
    let mut reports = Vec::new();
    m.apply(&st(
        0,
        LISTENER_SK,
        Close,
        Listen,
        ("10.0.0.2", 80),
        ("0.0.0.0", 0),
    ));
    let mut i = 0;
    for step in 0..=180u64 {
        let now = step * 10 * S;
        // The overflow: 5 handshakes dropped between 0 s and 10 s.
        let overflows = if step >= 1 { 5 } else { 0 };
        let queue = if step == 1 { 4 } else { 0 };
        reports.extend(d.on_netns(NetnsId(1), &counters(overflows), now));
        reports.extend(d.on_listen_queues(NetnsId(1), &listed(queue), &m, now));
        reports.extend(d.tick(now, &m));
        if step >= 2 && step % 7 == 0 {
            i += 1;
            reports.extend(connect_times_out(&mut m, &mut d, now + S, i));
        }
    }
    let seen = overflow_reports(&reports);
    assert_eq!(seen.first(), Some(&(10, Status::Raised)), "{seen:?}");
    assert!(
        seen.iter()
            .any(|(at, s)| *s == Status::Resolved && *at <= 10 + 300 + 20),
        "no overflow after t=10 s, yet in 30 minutes accept_queue_overflow was never resolved: {seen:?}"
    );
}

/// An overflow at t=10 s during which two connects to the listener timed
/// out, then nothing at all: no overflow, no timeout. The only change
/// afterwards is the two timeouts ageing out of the 5-minute window: that
/// is no new evidence, yet it is reported as an update (clients_timed_out
/// falls to 0) and restarts the quiet period, so the finding lives about
/// twice --resolve-after.
#[test]
fn accept_queue_overflow_is_not_renewed_by_timeouts_ageing_out() {
    let mut m = Model::new(Limits::default());
    let mut d = Detectors::new(Thresholds::default());
    let mut reports = Vec::new();
    m.apply(&st(
        0,
        LISTENER_SK,
        Close,
        Listen,
        ("10.0.0.2", 80),
        ("0.0.0.0", 0),
    ));
    reports.extend(connect_times_out(&mut m, &mut d, 4 * S, 1));
    reports.extend(connect_times_out(&mut m, &mut d, 5 * S, 2));
    for step in 0..=120u64 {
        let now = step * 10 * S;
        let overflows = if step >= 1 { 5 } else { 0 };
        let queue = if step == 1 { 4 } else { 0 };
        reports.extend(d.on_netns(NetnsId(1), &counters(overflows), now));
        reports.extend(d.on_listen_queues(NetnsId(1), &listed(queue), &m, now));
        reports.extend(d.tick(now, &m));
    }
    let seen = overflow_reports(&reports);
    assert_eq!(seen.first(), Some(&(10, Status::Raised)), "{seen:?}");
    let updates: Vec<_> = seen.iter().filter(|(_, s)| *s == Status::Updated).collect();
    assert!(
        updates.is_empty(),
        "nothing happened after the overflow, yet it was updated: {seen:?}"
    );
    let resolved = seen.iter().find(|(_, s)| *s == Status::Resolved);
    assert!(
        resolved.is_some_and(|(at, _)| *at <= 10 + 300 + 20),
        "resolve_after is 300 s after the last evidence (t=10 s): {seen:?}"
    );
}

/// Two namespaces each have a listener on 10.0.0.2:80 (isolated networks
/// may reuse addresses). In namespace 2, a client's connect to 10.0.0.2:80
/// (its own namespace's address: it can only reach namespace 2's
/// listener) times out. Namespace 1's listener then overflows. Its
/// finding counts and names namespace 2's client: for an address that is
/// not loopback, `Destination::reaches` ignores the namespace altogether.
#[test]
fn accept_queue_overflow_names_no_client_of_another_namespaces_listener() {
    let mut m = Model::new(Limits::default());
    let mut d = Detectors::new(Thresholds::default());
    let mut reports = Vec::new();
    m.apply(&st(
        0,
        LISTENER_SK,
        Close,
        Listen,
        ("10.0.0.2", 80),
        ("0.0.0.0", 0),
    ));
    let mut other = st(
        0,
        LISTENER_SK + 0x1000,
        Close,
        Listen,
        ("10.0.0.2", 80),
        ("0.0.0.0", 0),
    );
    other.netns = NetnsId(2);
    other.pid = 8;
    m.apply(&other);
    // The client in namespace 2.
    let sk = 0xffff_0000_2000_0000;
    for (at, old, new) in [(2 * S, Close, SynSent), (5 * S, SynSent, Close)] {
        let mut ev = st(at, sk, old, new, ("10.0.0.2", 41_000), ("10.0.0.2", 80));
        ev.netns = NetnsId(2);
        ev.pid = 99;
        ev.comm = "ns2-client".into();
        let outcomes = m.apply(&ev);
        reports.extend(d.on_event(&ev, &outcomes, &m));
    }
    for step in 0..=2u64 {
        let now = step * 10 * S;
        let overflows = if step >= 1 { 5 } else { 0 };
        let queue = if step == 1 { 4 } else { 0 };
        reports.extend(d.on_netns(NetnsId(1), &counters(overflows), now));
        reports.extend(d.on_listen_queues(NetnsId(1), &listed(queue), &m, now));
    }
    let raised: Vec<&Report> = reports
        .iter()
        .filter(|r| r.finding.kind == FindingKind::AcceptQueueOverflow)
        .collect();
    assert!(!raised.is_empty(), "namespace 1's listener overflowed");
    for r in raised {
        let f = &r.finding;
        assert!(
            !f.summary.contains("ns2-client")
                && f.evidence.get("clients_timed_out").and_then(|v| v.as_u64()) == Some(0),
            "namespace 2's client never connected to namespace 1's listener: {} {:?}",
            f.summary,
            f.evidence
        );
    }
}
