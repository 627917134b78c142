//! Retransmissions: `tcp:tcp_retransmit_skb` and `tcp:tcp_retransmit_synack`.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tcpwatch_common::{counter, kind, tcp_state::SYN_RECV, FIELD_ABSENT};

use crate::{
    emit::{bump, field, layout_of, read_endpoints, Res},
    lifecycle::emit_for_socket,
};

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
    if tp.err != FIELD_ABSENT {
        let err: i32 = field(ctx, tp.err)?;
        if err != 0 {
            bump(counter::RETRANSMIT_NOT_SENT);
            return Ok(());
        }
    }
    let sk: u64 = field(ctx, tp.skaddr)?;
    let state = field::<i32>(ctx, tp.state)? as u8;
    emit_for_socket(sk, 0, kind::RETRANSMIT, Some(state), 0, |ev| {
        read_endpoints(ctx, &tp, ev)
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
    let listener: u64 = field(ctx, tp.skaddr)?;
    emit_for_socket(
        listener,
        0,
        kind::SYNACK_RETRANSMIT,
        Some(SYN_RECV),
        0,
        |ev| read_endpoints(ctx, &tp, ev),
    )
}
