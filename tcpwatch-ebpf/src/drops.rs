//! Drops: `skb:kfree_skb` for TCP segments dropped by a known socket.
use aya_ebpf::{
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use tcpwatch_common::{
    counter, kind, tcp_state, DROPS_LEN, DROP_EVENTS_PER_WINDOW, DROP_WINDOW_NS, IPPROTO_TCP,
    OFFSETS_SOCK_COMMON, OFFSETS_SOCK_ENDPOINTS,
};

use crate::{
    emit::{
        bump, bump_in, kernel_offsets, layout_of, now_ns, read_common_endpoints, read_kernel,
        read_sock_endpoints, Record, Res, SockHead,
    },
    lifecycle::emit_for_socket,
};

/// TCP segments dropped for a known socket, by reason (`reason & 255`):
/// aggregated here, read by userspace at scrape time.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROPS_LEN, 0);

/// This kernel's number for `SKB_DROP_REASON_NOT_SPECIFIED`, set by
/// userspace before load from the tracepoint's format.
#[unsafe(no_mangle)]
pub static DROP_NOT_SPECIFIED: u32 = u32::MAX;

/// Per CPU: the start of the current drop-event window and the events sent in it.
#[map]
static DROP_BUDGET: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// `skb:kfree_skb` (include/trace/events/skb.h), fired by
/// `sk_skb_reason_drop()` (net/core/skbuff.c) for every dropped buffer of
/// any protocol. Since 6.12 (`rx_sk`) it names the socket the segment was
/// for: `tcp_v4_rcv()`/`tcp_v6_rcv()` pass the connection, the listener
/// (a request whose handshake's last ACK met a full accept queue:
/// `TCP_LISTEN_OVERFLOW`, from `tcp_check_req()`) or the TIME_WAIT socket
/// (`TCP_RFC7323_TW_PAWS`). Drops without a socket, other protocols'
/// sockets and frees without a reason (`NOT_SPECIFIED`) cost one record
/// read and are left alone.
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = try_kfree_skb(&ctx);
    0
}

fn try_kfree_skb(ctx: &TracePointContext) -> Res<()> {
    let tp = layout_of(|l| &l.kfree_skb);
    let rec = Record::read(ctx)?;
    let sk: u64 = rec.get(tp.skaddr)?;
    if sk == 0 {
        return Ok(());
    }
    let reason: u32 = rec.get(tp.reason)?;
    // SAFETY: a plain static only written before load; volatile so the
    // compiler does not fold its initial value.
    if reason == unsafe { core::ptr::read_volatile(&DROP_NOT_SPECIFIED) } {
        return Ok(());
    }
    let k = kernel_offsets();
    let needed = OFFSETS_SOCK_COMMON | OFFSETS_SOCK_ENDPOINTS;
    if k.valid & needed != needed {
        return Ok(());
    }
    let head = SockHead::read(sk + u64::from(k.sock_daddr))?;
    let state: u8 = head.get(k.sock_state.wrapping_sub(k.sock_daddr))?;
    // Request and TIME_WAIT sockets are TCP's own minisocks (no
    // `sk_protocol` there); a full socket says what it is.
    let minisock = matches!(state, tcp_state::TIME_WAIT | tcp_state::NEW_SYN_RECV);
    let tcp = minisock || read_kernel::<u16>(sk + u64::from(k.sock_protocol)) == Some(IPPROTO_TCP);
    if !tcp {
        return Ok(());
    }
    bump_in(&DROPS, reason & (DROPS_LEN - 1));
    if !take_budget() {
        bump(counter::DROP_EVENTS_LIMITED);
        return Ok(());
    }
    emit_for_socket(sk, 0, kind::DROP, Some(state), reason as u16, |ev| {
        if minisock {
            read_common_endpoints(sk, &head, &k, ev)
        } else {
            // A full socket the drop closed (an abort on data) is already
            // unhashed, its `skc_num` zeroed: `inet_sport` keeps the port.
            read_sock_endpoints(sk, &k, ev)
        }
    })
}

/// One event from this CPU's budget for the current window.
#[inline(always)]
fn take_budget() -> bool {
    let Some(slot) = DROP_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    let now = now_ns();
    // SAFETY: this CPU's slot of a live map value; programs on one CPU do
    // not preempt each other on the same tracepoint.
    let budget = unsafe { &mut *slot };
    if now.wrapping_sub(budget[0]) >= DROP_WINDOW_NS {
        budget[0] = now;
        budget[1] = 0;
    }
    if budget[1] >= DROP_EVENTS_PER_WINDOW {
        return false;
    }
    budget[1] += 1;
    true
}
