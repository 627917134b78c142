//! Attribution at accept(): `syscalls:sys_exit_accept4` and
//! `syscalls:sys_exit_accept`.
//!
//! A connection is born in softirq as a child of its listener and inherits
//! the listener's owner. In pre-fork servers another process (a worker)
//! accepts it; the exit of accept() runs in that process and returns the new
//! fd, which leads to the socket through task->files->fdt->fd[fd]->
//! private_data->sk.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use tcpwatch_common::{owner_source, OFFSETS_FILES};

use crate::{
    emit::{emit_owner, field, kernel_offsets, read_kernel, Res},
    lifecycle::SOCKS,
};

/// `syscalls:sys_exit_accept4` (include/trace/events/syscalls.h, the
/// SYSCALL_DEFINE4(accept4) exit in net/socket.c).
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = try_accept_exit(&ctx);
    0
}

/// `syscalls:sys_exit_accept` (as above, for accept()).
#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = try_accept_exit(&ctx);
    0
}

// Inlined: an outlined BPF subprogram may not return its Result through the
// caller's stack, which the verifier rejects.
#[inline(always)]
fn try_accept_exit(ctx: &TracePointContext) -> Res<()> {
    // SAFETY: LAYOUT is a plain static only written before load.
    let ret_offset = unsafe { core::ptr::read_volatile(&crate::emit::LAYOUT.accept_ret) };
    let fd: i64 = field(ctx, ret_offset)?;
    if fd < 0 {
        return Ok(());
    }
    let k = kernel_offsets();
    if k.valid & OFFSETS_FILES == 0 {
        return Ok(());
    }
    // SAFETY: a helper without arguments; the pointer is only read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read_kernel(task + u64::from(k.task_files)).ok_or(-14)?;
    let fdt: u64 = read_kernel(files + u64::from(k.files_fdt)).ok_or(-14)?;
    let max_fds: u32 = read_kernel(fdt + u64::from(k.fdtable_max_fds)).ok_or(-14)?;
    if fd as u64 >= u64::from(max_fds) {
        return Ok(());
    }
    let fd_array: u64 = read_kernel(fdt + u64::from(k.fdtable_fd)).ok_or(-14)?;
    let file: u64 = read_kernel(fd_array + fd as u64 * 8).ok_or(-14)?;
    let socket: u64 = read_kernel(file + u64::from(k.file_private_data)).ok_or(-14)?;
    let sk: u64 = read_kernel(socket + u64::from(k.socket_sk)).ok_or(-14)?;
    let Some(owner) = SOCKS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a live map value of this CPU's lookup, written in place and
    // copied once for the event.
    let changed = unsafe {
        let moved = (*owner).pid != pid;
        if moved || (*owner).source != owner_source::ACCEPT {
            (*owner).pid = pid;
            (*owner).comm = bpf_get_current_comm().unwrap_or((*owner).comm);
            (*owner).cgroup = bpf_get_current_cgroup_id();
            (*owner).source = owner_source::ACCEPT;
        }
        // Userspace needs to hear only of another process: a server that
        // accepts on its own listener sends nothing.
        moved.then(|| *owner)
    };
    // The connection's later events carry the acceptor; userspace learns
    // it now, not at the next state change.
    if let Some(owner) = changed {
        emit_owner(sk, &owner)?;
    }
    Ok(())
}
