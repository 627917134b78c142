//! Retransmissions: `tcp:tcp_retransmit_skb` and `tcp:tcp_retransmit_synack`.
use aya_ebpf::{
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use tcpwatch_common::{
    counter, kind, phase,
    tcp_state::{CLOSING, FIN_WAIT1, LAST_ACK, SYN_RECV, SYN_SENT},
    FIELD_ABSENT,
};

use crate::{
    emit::{bump, bump_in, layout_of, read_endpoints, Record, Res},
    lifecycle::emit_for_socket,
};

/// Retransmits on the wire by phase (`tcpwatch_common::phase`).
#[map]
pub static RETRANSMITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(phase::COUNT, 0);

/// `tcp:tcp_retransmit_skb` (include/trace/events/tcp.h), fired by
/// `__tcp_retransmit_skb()` in net/ipv4/tcp_output.c. Since 6.17 it also
/// fires for retransmits that were not sent and says so in `err`; only
/// `err == 0` counts as a retransmit on the wire.
#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_retransmit_skb(&ctx);
    0
}

fn try_tcp_retransmit_skb(ctx: &TracePointContext) -> Res<()> {
    let tp = layout_of(|l| &l.retransmit_skb);
    let rec = Record::read(ctx)?;
    if tp.err != FIELD_ABSENT {
        let err: i32 = rec.get(tp.err)?;
        if err != 0 {
            bump(counter::RETRANSMIT_NOT_SENT);
            return Ok(());
        }
    }
    let sk: u64 = rec.get(tp.skaddr)?;
    let state = rec.get::<i32>(tp.state)? as u8;
    let which = match state {
        SYN_SENT => phase::SYN,
        FIN_WAIT1 | LAST_ACK | CLOSING => phase::FIN,
        _ => phase::DATA,
    };
    bump_in(&RETRANSMITS, which);
    emit_for_socket(sk, 0, kind::RETRANSMIT, Some(state), 0, |ev| {
        read_endpoints(&rec, &tp, sk, ev)
    })
}

/// `tcp:tcp_retransmit_synack` (include/trace/events/tcp.h), fired by
/// `tcp_rtx_synack()` in net/ipv4/tcp_output.c. `skaddr` is the listener;
/// the addresses are the request's.
#[tracepoint(category = "tcp", name = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_retransmit_synack(&ctx);
    0
}

fn try_tcp_retransmit_synack(ctx: &TracePointContext) -> Res<()> {
    let tp = layout_of(|l| &l.retransmit_synack);
    let rec = Record::read(ctx)?;
    let listener: u64 = rec.get(tp.skaddr)?;
    bump_in(&RETRANSMITS, phase::SYNACK);
    emit_for_socket(
        listener,
        0,
        kind::SYNACK_RETRANSMIT,
        Some(SYN_RECV),
        0,
        // The listener's family is the request's: TP_STORE_ADDRS reads it
        // from the listener on kernels without a `family` field.
        |ev| read_endpoints(&rec, &tp, listener, ev),
    )
}
