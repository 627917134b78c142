//! Attribution on use: `sock:sock_send_length` and `sock:sock_recv_length`
//! (include/trace/events/sock.h, fired from `sock_sendmsg()` and
//! `sock_recvmsg()` in net/socket.c since 6.2).
//!
//! Both run in the context of the process that sends or receives, which
//! therefore holds the socket: a handler forked after accept(), a program
//! it exec'd, a worker that inherited the connection. The owner the
//! programs remember becomes that process; the map is written only when the
//! owner changes, so a process that keeps using its own socket costs a
//! lookup and a comparison.
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use tcpwatch_common::owner_source;

use crate::{
    emit::{emit_owner, field, layout_of, Res},
    lifecycle::SOCKS,
};

const IPPROTO_TCP: u16 = 6;

/// `sock:sock_send_length`.
#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let _ = try_sock_io(&ctx);
    0
}

/// `sock:sock_recv_length`.
#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    let _ = try_sock_io(&ctx);
    0
}

#[inline(always)]
fn try_sock_io(ctx: &TracePointContext) -> Res<()> {
    let tp = layout_of(|l| &l.sock_io);
    let protocol: u16 = field(ctx, tp.protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = field(ctx, tp.skaddr)?;
    // Only sockets the programs already know (born or seen since attach).
    let Some(owner) = SOCKS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The comm too: a process that exec'd another program keeps its pid.
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: a live map value of this CPU's lookup, written in place and
    // copied once for the event.
    let changed = unsafe {
        if (*owner).pid != pid || (*owner).comm != comm {
            (*owner).pid = pid;
            (*owner).comm = comm;
            // Read only when the owner changes: the hook runs on every
            // send and receive.
            (*owner).cgroup = bpf_get_current_cgroup_id();
            (*owner).source = owner_source::IO;
            Some(*owner)
        } else {
            None
        }
    };
    if let Some(owner) = changed {
        emit_owner(sk, &owner)?;
    }
    Ok(())
}
