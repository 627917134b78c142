//! Resets: `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`.
use aya_ebpf::{
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use tcpwatch_common::{
    event_flag, kind, FIELD_ABSENT, OFFSETS_SOCK_STATE, OFFSETS_TS_RECENT, RESETS_LEN,
    RESETS_RECEIVED_INDEX,
};

use crate::{
    emit::{bump_in, kernel_offsets, layout_of, now_ns, read_endpoints, read_kernel, Record, Res},
    lifecycle::emit_for_socket,
};

/// Resets sent by reason (`reason & 63`) and received (at index 64).
#[map]
pub static RESETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RESETS_LEN, 0);

/// `tcp:tcp_send_reset` (include/trace/events/tcp.h), fired by
/// `tcp_v4_send_reset()`/`tcp_v6_send_reset()` for resets answering a
/// segment and by `tcp_send_active_reset()` for aborts. `skaddr` is NULL when
/// no socket matched; the addresses are then the segment's, reversed so the
/// local side comes first. Since 6.10 it carries an `enum sk_rst_reason`.
#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_send_reset(&ctx);
    0
}

fn try_tcp_send_reset(ctx: &TracePointContext) -> Res<()> {
    let tp = layout_of(|l| &l.send_reset);
    let rec = Record::read(ctx)?;
    let sk: u64 = rec.get(tp.skaddr)?;
    let skb: u64 = if sk == 0 {
        rec.get(tp.skbaddr).unwrap_or(0)
    } else {
        0
    };
    let state = if tp.state != FIELD_ABSENT {
        Some(rec.get::<i32>(tp.state)? as u8)
    } else {
        None
    };
    let reason = if tp.reason != FIELD_ABSENT {
        rec.get::<u32>(tp.reason)? as u16
    } else {
        0
    };
    bump_in(&RESETS, u32::from(reason) & 63);
    emit_for_socket(sk, skb, kind::RESET_SENT, state, reason, |ev| {
        read_endpoints(&rec, &tp, sk, ev)
    })
}

/// `tcp:tcp_receive_reset` (include/trace/events/tcp.h), fired by
/// `tcp_reset()` in net/ipv4/tcp_input.c before the socket is closed.
#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_receive_reset(&ctx);
    0
}

fn try_tcp_receive_reset(ctx: &TracePointContext) -> Res<()> {
    let tp = layout_of(|l| &l.receive_reset);
    let rec = Record::read(ctx)?;
    let sk: u64 = rec.get(tp.skaddr)?;
    bump_in(&RESETS, RESETS_RECEIVED_INDEX);
    // Whether the reset answered data in flight (a peer that lost the
    // connection) or came when all was acknowledged (`tcp_sock.packets_out`,
    // include/linux/tcp.h).
    let k = kernel_offsets();
    let mut flags = if k.valid & OFFSETS_SOCK_STATE != 0 && sk != 0 {
        match read_kernel::<u32>(sk + u64::from(k.tcp_packets_out)) {
            Some(0) => event_flag::OUTSTANDING_KNOWN,
            Some(_) => event_flag::OUTSTANDING_KNOWN | event_flag::DATA_OUTSTANDING,
            None => 0,
        }
    } else {
        0
    };
    // How long the peer had been silent: `tcp_store_ts_recent()`
    // (net/ipv4/tcp_input.c) stamps `ktime_get_seconds()`, the monotonic
    // clock in seconds, at each in-window segment carrying a timestamp; a
    // reset from a host that lost the connection carries none, so the stamp
    // is the last word of the peer's old incarnation. 0: no timestamps.
    let mut silence = 0u16;
    if k.valid & OFFSETS_TS_RECENT != 0 && sk != 0 {
        // An `int` (6.18), read as 32 bits: were it a `time64_t`, its low
        // half on a little-endian machine is the same number of seconds.
        if let Some(stamp) = read_kernel::<i32>(sk + u64::from(k.tcp_ts_recent_stamp)) {
            let stamp = i64::from(stamp);
            let now_s = (now_ns() / 1_000_000_000) as i64;
            if stamp > 0 && stamp <= now_s {
                silence = (now_s - stamp).min(i64::from(u16::MAX)) as u16;
                flags |= event_flag::SILENCE_KNOWN;
            }
        }
    }
    if k.valid & OFFSETS_TS_RECENT != 0 && sk != 0 && timestamped(sk, &k) {
        flags |= event_flag::RESET_TIMESTAMPED;
    }
    emit_for_socket(sk, 0, kind::RESET_RECEIVED, None, silence, |ev| {
        ev.flags = flags;
        read_endpoints(&rec, &tp, sk, ev)
    })
}

/// Whether the reset being processed carried a TCP timestamp on a
/// connection that uses them (`rx_opt.saw_tstamp` and `rx_opt.tstamp_ok`,
/// bitfields of `struct tcp_options_received`, include/linux/tcp.h).
#[inline(always)]
fn timestamped(sk: u64, k: &tcpwatch_common::KernelOffsets) -> bool {
    let bit = |at: u32| {
        read_kernel::<u8>(sk + u64::from(at / 8)).is_some_and(|byte| byte & (1 << (at % 8)) != 0)
    };
    bit(k.tcp_tstamp_ok_bit) && bit(k.tcp_saw_tstamp_bit)
}
