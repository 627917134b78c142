//! End reasons peer_reset and owner_exited and the TIME_WAIT early deaths
//! behind time_wait_assassinated, in cases the model once got wrong. Each
//! test states what the kernel did.
use super::*;
use crate::kernel::event::{EventKind, OwnerSource, TcpEvent, TcpState::*};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
const SK: u64 = 0xffff_8880_0000_2000;

fn ev(ts_ns: u64, kind: EventKind, old: TcpState, new: TcpState) -> TcpEvent {
    TcpEvent {
        ts_ns,
        skaddr: SK,
        kind,
        pid: 42,
        comm: "client".into(),
        owner: OwnerSource::Connect,
        netns: NetnsId(7),
        saddr: "10.0.0.1".parse().unwrap(),
        sport: if (old, new) == (Close, SynSent) {
            0
        } else {
            40000
        },
        daddr: "10.0.0.2".parse().unwrap(),
        dport: 80,
        old_state: Some(old),
        new_state: Some(new),
        ..TcpEvent::blank()
    }
}

fn st(ts_ns: u64, old: TcpState, new: TcpState) -> TcpEvent {
    ev(ts_ns, EventKind::State, old, new)
}

fn rtx(ts_ns: u64) -> TcpEvent {
    ev(ts_ns, EventKind::Retransmit, Established, Established)
}

fn run(m: &mut Model, evs: &[TcpEvent]) -> Vec<Outcome> {
    evs.iter().flat_map(|e| m.apply(e)).collect()
}

fn ends(out: &[Outcome]) -> Vec<EndReason> {
    out.iter()
        .filter_map(|o| match o {
            Outcome::Finished(f) => Some(f.end),
            _ => None,
        })
        .collect()
}

/// One segment lost and retransmitted once (then acknowledged: the peer
/// answers), and three seconds later the peer application aborts the
/// connection (SO_LINGER 0, or close() with unread data): an ordinary
/// reset from a live peer. A single retransmit is no "run of data
/// retransmits with backoff" (README), yet the model ends it as
/// peer_reset, which raises peer_restarted.
#[test]
fn one_retransmit_then_a_peer_abort_is_no_peer_reset() {
    let mut m = Model::default();
    let out = run(
        &mut m,
        &[
            st(0, Close, SynSent),
            st(MS, SynSent, Established),
            rtx(1_000 * MS),
            ev(
                4_000 * MS,
                EventKind::ResetReceived,
                Established,
                Established,
            ),
            st(4_000 * MS, Established, Close),
        ],
    );
    assert_eq!(ends(&out), [EndReason::ResetReceived]);
}

/// A burst of segments lost at once and fast-retransmitted within a
/// millisecond (gaps of ~0 "do not shrink", so the model counts a run of
/// three), then a peer abort two seconds later: no restart either.
#[test]
fn a_fast_retransmit_burst_then_a_peer_abort_is_no_peer_reset() {
    let mut m = Model::default();
    let out = run(
        &mut m,
        &[
            st(0, Close, SynSent),
            st(MS, SynSent, Established),
            rtx(1_000 * MS),
            rtx(1_000 * MS + 10_000),
            rtx(1_000 * MS + 20_000),
            ev(
                3_000 * MS,
                EventKind::ResetReceived,
                Established,
                Established,
            ),
            st(3_000 * MS, Established, Close),
        ],
    );
    assert_eq!(ends(&out), [EndReason::ResetReceived]);
}

/// An orphan: close() with nothing unread, the peer ACKs the FIN, and the
/// kernel hands the socket to a timewait socket in its FIN_WAIT2 substate
/// (trace: FIN_WAIT1 -> FIN_WAIT2 -> CLOSE within microseconds). The peer
/// then sends more data: the FIN_WAIT2 timewait answers with a reset and
/// is dropped at once (tcp_timewait_state_process() -> TCP_TW_RST), whatever
/// tcp_rfc1337 says. The kernel never listed a TIME_WAIT for the 4-tuple;
/// the next reconciliation must not call it an early TIME_WAIT death
/// (time_wait_assassinated: "a reset reached them while tcp_rfc1337=0").
#[test]
fn an_orphan_fin_wait2_killed_by_late_data_is_no_time_wait_death() {
    let mut m = Model::default();
    // The namespace was looked at before.
    m.reconcile(NetnsId(7), &[], 0, 0);
    run(
        &mut m,
        &[
            st(100 * MS, Close, SynSent),
            st(101 * MS, SynSent, Established),
            st(200 * MS, Established, FinWait1),
            st(200 * MS + 20_000, FinWait1, FinWait2),
            st(200 * MS + 30_000, FinWait2, Close),
        ],
    );
    // 50 ms later the late data killed it; the next dump lists nothing.
    m.reconcile(NetnsId(7), &[], S, S);
    let deaths = m.take_time_wait_deaths();
    assert!(
        deaths.is_empty(),
        "the kernel never listed this 4-tuple in TIME_WAIT: {deaths:?}"
    );
}

/// An orphan in FIN_WAIT1 whose peer goes on sending: the segment that
/// acknowledges the FIN also carries data, so tcp_rcv_state_process()
/// moves the socket to FIN_WAIT2 and, since it is orphaned and data came
/// after close(), calls tcp_done() (FIN_WAIT2 -> CLOSE, no timewait
/// socket) and returns 1, for which tcp_v4_do_rcv() sends a reset
/// (TcpExt TCPAbortOnData). The trace shows the CLOSE first and the sent
/// reset right after; the model has already ended it as a normal close
/// with a TIME_WAIT that never exists (and later reports it killed early).
#[test]
fn fin_wait2_close_followed_by_a_sent_reset_is_no_time_wait() {
    let mut m = Model::default();
    let out = run(
        &mut m,
        &[
            st(0, Close, SynSent),
            st(MS, SynSent, Established),
            st(10 * MS, Established, FinWait1),
            st(10 * MS + 20_000, FinWait1, FinWait2),
            st(10 * MS + 21_000, FinWait2, Close),
            ev(10 * MS + 22_000, EventKind::ResetSent, Close, Close),
        ],
    );
    let mut out = out;
    out.extend(m.expire(20 * S));
    assert_ne!(ends(&out), [EndReason::NormalClose]);
    assert_eq!(m.time_wait().count(), 0, "no timewait socket was made");
}
