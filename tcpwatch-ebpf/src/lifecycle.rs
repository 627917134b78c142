//! The connection lifecycle: `sock:inet_sock_set_state` and
//! `tcp:tcp_destroy_sock`, and the owner of every socket.
//!
//! `inet_sock_set_state` often runs in softirq, where the on-CPU task is not
//! the socket's owner. The owner is therefore bound only at transitions that
//! the kernel makes in the owner's own syscall (connect, listen, close,
//! shutdown), inherited by accepted sockets from their listener, and carried
//! forward in `SOCKS` for every later event.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::{RawTracePointContext, TracePointContext},
};
use tcpwatch_common::{
    event_flag, hist, kind, owner_source, tcp_state::*, transition_index, Event, KernelOffsets,
    ListenerKey, SockOwner, TpLayout, COMM_LEN, DEFAULT_MAX_LISTENERS, DEFAULT_MAX_SOCKS,
    DURATION_UNKNOWN, HISTOGRAMS_LEN, HIST_BOUNDS_NS, HIST_SLOTS, IPPROTO_TCP,
    OFFSETS_SOCK_ENDPOINTS, OFFSETS_SOCK_STATE, OFFSETS_TASK_FLAGS, PF_EXITING, TRANSITIONS_LEN,
};

use crate::emit::{
    bump_in, emit, field, kernel_offsets, layout_of, now_ns, read_endpoints, read_kernel,
    read_sock_endpoints, skb_netns, sock_local_port, sock_netns, Record, Res,
};

/// Socket address -> owner and time of its last transition. Entries go at
/// `tcp_destroy_sock`; the LRU bounds sockets whose destruction was missed.
#[map]
pub static SOCKS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(DEFAULT_MAX_SOCKS, 0);

/// State transitions by `transition_index(old, new)`.
#[map]
pub static TRANSITIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRANSITIONS_LEN, 0);

/// Duration histograms by `tcpwatch_common::hist`, read at scrape time.
#[map]
pub static HISTOGRAMS: PerCpuArray<u64> = PerCpuArray::with_max_entries(HISTOGRAMS_LEN, 0);

/// Counts `ns` in its bucket of histogram `which` and adds it to the sum.
#[inline(always)]
fn observe(which: u32, ns: u64) {
    let mut bucket = HIST_BOUNDS_NS.len() as u32;
    for (i, bound) in HIST_BOUNDS_NS.iter().enumerate() {
        if ns <= *bound {
            bucket = i as u32;
            break;
        }
    }
    let base = which * HIST_SLOTS;
    bump_in(&HISTOGRAMS, base + bucket);
    if let Some(sum) = HISTOGRAMS.get_ptr_mut(base + HIST_SLOTS - 1) {
        // SAFETY: this CPU's slot of a live map value.
        unsafe { *sum += ns };
    }
}

/// The durations a transition completes, aggregated here rather than sent.
#[inline(always)]
fn observe_durations(old: u8, new: u8, in_old_ns: u64, born_ns: u64, now: u64) {
    if in_old_ns != DURATION_UNKNOWN && old != new {
        match old {
            SYN_SENT if new == ESTABLISHED => observe(hist::HANDSHAKE, in_old_ns),
            CLOSE_WAIT => observe(hist::CLOSE_WAIT, in_old_ns),
            FIN_WAIT2 => observe(hist::FIN_WAIT2, in_old_ns),
            LAST_ACK => observe(hist::LAST_ACK, in_old_ns),
            _ => {}
        }
    }
    if new == CLOSE && old != LISTEN && born_ns != 0 && now >= born_ns {
        observe(hist::LIFETIME, now - born_ns);
    }
}

/// (netns, port) of a listening socket -> its owner, for accepted children.
#[map]
pub static LISTENERS: LruHashMap<ListenerKey, SockOwner> =
    LruHashMap::with_max_entries(DEFAULT_MAX_LISTENERS, 0);

/// Non-zero only in a benchmark experiment (`cargo xtask bench`): the
/// lifecycle programs return at once, so the run measures what attaching
/// to `inet_sock_set_state` and `tcp_destroy_sock` costs by itself, the
/// floor under anything tcpwatch does there. Set by userspace before load.
#[unsafe(no_mangle)]
pub static EMPTY_LIFECYCLE_PROGRAMS: u32 = 0;

#[inline(always)]
fn empty() -> bool {
    // SAFETY: a read-only global, set before load.
    unsafe { core::ptr::read_volatile(&EMPTY_LIFECYCLE_PROGRAMS) != 0 }
}

/// `sock:inet_sock_set_state` (include/trace/events/sock.h), fired by
/// `inet_sk_state_store()`/`tcp_set_state()` in net/ipv4/tcp.c for every
/// TCP state change except into TIME_WAIT, which `tcp_time_wait()` in
/// net/ipv4/tcp_minisocks.c hands to a separate timewait socket.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if empty() {
        return 0;
    }
    let _ = try_inet_sock_set_state(&ctx);
    0
}

/// Transitions the kernel only makes inside the owner's syscall.
#[inline(always)]
fn bound_in_process_context(old: u8, new: u8) -> Option<u8> {
    match (old, new) {
        (CLOSE, SYN_SENT) => Some(owner_source::CONNECT),
        (CLOSE, LISTEN) => Some(owner_source::LISTEN),
        // tcp_close_state(), called from tcp_close() and tcp_shutdown() only.
        (ESTABLISHED, FIN_WAIT1) | (SYN_RECV, FIN_WAIT1) | (CLOSE_WAIT, LAST_ACK) => {
            Some(owner_source::CLOSE)
        }
        _ => None,
    }
}

/// Whether a transition that ends or starts to end a connection ran in a
/// task that is exiting. A process that dies or exits holding a socket has
/// it closed by `do_exit()` -> `exit_files()` (kernel/exit.c), whose final
/// `fput()` runs `tcp_close()` from the exiting task's own task work; an
/// explicit close() runs in a live task. Only closing transitions are
/// checked: one read of `current->flags`, and, where BTF gives it, of
/// `sk->sk_lock.owned`: `tcp_close()` holds the socket's lock, while
/// softirq work on a socket (a reset, a timer) never runs under it, so a
/// transition made in softirq while some unrelated task happens to be
/// exiting on that CPU is not mistaken for one.
#[inline(always)]
fn closed_by_exiting_task(sk: u64, old: u8, new: u8) -> bool {
    let closing = matches!(
        (old, new),
        (
            ESTABLISHED | SYN_RECV | SYN_SENT | CLOSE_WAIT,
            FIN_WAIT1 | LAST_ACK | CLOSE
        )
    );
    if !closing {
        return false;
    }
    let k = kernel_offsets();
    if k.valid & OFFSETS_TASK_FLAGS == 0 {
        return false;
    }
    // SAFETY: a helper without arguments; the pointer is only read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let exiting =
        read_kernel::<u32>(task + u64::from(k.task_flags)).is_some_and(|f| f & PF_EXITING != 0);
    if !exiting || k.valid & OFFSETS_SOCK_STATE == 0 {
        return exiting;
    }
    read_kernel::<i32>(sk + u64::from(k.sock_lock_owned)).is_some_and(|owned| owned != 0)
}

#[inline(always)]
fn current_owner(netns: u32, born_ns: u64, now: u64, source: u8) -> SockOwner {
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    SockOwner {
        last_change_ns: now,
        born_ns,
        netns,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        source,
        state: 0,
        _pad: [0; 6],
        comm,
        // SAFETY: a helper without arguments: the current task's cgroup v2 id.
        cgroup: unsafe { bpf_get_current_cgroup_id() },
    }
}

/// `inet_sock_set_state` as a raw tracepoint: the same transition, from
/// its `TP_PROTO` arguments (`sk`, `oldstate`, `newstate`) instead of the
/// record the kernel fills for classic tracepoints on every hit. The rest
/// is read from the socket at offsets userspace found in BTF. Attached
/// instead of the classic program where those offsets are known.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> i32 {
    if empty() {
        return 0;
    }
    let _ = try_inet_sock_set_state_raw(&ctx);
    0
}

fn try_inet_sock_set_state_raw(ctx: &RawTracePointContext) -> Res<()> {
    let k = kernel_offsets();
    if k.valid & OFFSETS_SOCK_ENDPOINTS == 0 {
        return Ok(());
    }
    let sk: u64 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    let protocol: u16 = read_kernel(sk + u64::from(k.sock_protocol)).ok_or(-14)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    on_transition(sk, old as u8, new as u8, &FromSock { k })
}

/// Where a transition's endpoints are read.
trait Endpoints {
    /// The socket's local port, host order.
    fn local_port(&self, sk: u64) -> Res<u16>;
    fn fill(&self, sk: u64, ev: &mut Event) -> Res<()>;
}

/// From a classic tracepoint's record.
struct FromRecord<'a> {
    rec: &'a Record,
    tp: &'a TpLayout,
}

impl Endpoints for FromRecord<'_> {
    #[inline(always)]
    fn local_port(&self, _sk: u64) -> Res<u16> {
        self.rec.get(self.tp.sport)
    }

    #[inline(always)]
    fn fill(&self, sk: u64, ev: &mut Event) -> Res<()> {
        read_endpoints(self.rec, self.tp, sk, ev)
    }
}

/// From the socket itself.
struct FromSock {
    k: KernelOffsets,
}

impl Endpoints for FromSock {
    #[inline(always)]
    fn local_port(&self, sk: u64) -> Res<u16> {
        sock_local_port(sk, &self.k)
    }

    #[inline(always)]
    fn fill(&self, sk: u64, ev: &mut Event) -> Res<()> {
        read_sock_endpoints(sk, &self.k, ev)
    }
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Res<()> {
    let tp = layout_of(|l| &l.set_state);
    let rec = Record::read(ctx)?;
    let protocol: u16 = rec.get(tp.protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = rec.get(tp.skaddr)?;
    let old = rec.get::<i32>(tp.state)? as u8;
    let new = rec.get::<i32>(tp.new_state)? as u8;
    on_transition(sk, old, new, &FromRecord { rec: &rec, tp: &tp })
}

/// One state transition of TCP socket `sk`, whichever program saw it.
#[inline(always)]
fn on_transition(sk: u64, old: u8, new: u8, src: &impl Endpoints) -> Res<()> {
    bump_in(&TRANSITIONS, transition_index(old, new));
    let now = now_ns();

    // A birth starts a new socket even if a stale entry (a freed socket at
    // the same address whose destruction was missed) is still in the map.
    let birth = matches!(
        (old, new),
        (CLOSE, SYN_SENT) | (CLOSE, LISTEN) | (LISTEN, SYN_RECV)
    );
    let known = if birth { None } else { SOCKS.get_ptr_mut(&sk) };
    let (mut owner, old_state_ns) = match known {
        Some(ptr) => {
            // SAFETY: a pointer to a live map value, read once.
            let prev = unsafe { *ptr };
            let since = if prev.last_change_ns != 0 && now >= prev.last_change_ns {
                now - prev.last_change_ns
            } else {
                DURATION_UNKNOWN
            };
            (prev, since)
        }
        None => (new_socket_owner(src, sk, old, new)?, DURATION_UNKNOWN),
    };

    let exiting = closed_by_exiting_task(sk, old, new);
    // A close made by an exiting task under the socket's lock (checked
    // where BTF gives the lock's offset) ran in the process that held the
    // socket, even where the transition can also happen in softirq (an
    // abortive close, `ESTABLISHED -> CLOSE`): a handler killed with
    // unread data is named, not the parent it was forked from.
    let exiting_owner = exiting && kernel_offsets().valid & OFFSETS_SOCK_STATE != 0;
    let bound = bound_in_process_context(old, new).or(exiting_owner.then_some(owner_source::CLOSE));
    if let Some(source) = bound {
        let candidate = current_owner(owner.netns, owner.born_ns, now, source);
        // pid 0 is the idle task: the transition ran outside any process
        // after all, so keep the owner already known.
        if candidate.pid != 0 {
            owner = candidate;
        }
    }
    if birth {
        owner.born_ns = now;
    }
    observe_durations(old, new, old_state_ns, owner.born_ns, now);
    owner.last_change_ns = now;
    owner.state = new;

    if new == LISTEN || old == LISTEN && new == CLOSE {
        let sport = src.local_port(sk)?;
        let key = ListenerKey {
            netns: owner.netns,
            port: sport,
            _pad: 0,
        };
        if new == LISTEN {
            let _ = LISTENERS.insert(&key, &owner, 0);
        } else {
            let _ = LISTENERS.remove(&key);
        }
    }
    match known {
        // SAFETY: the same live map value; updating in place spares a hash insert.
        Some(ptr) => unsafe { *ptr = owner },
        None => {
            let _ = SOCKS.insert(&sk, &owner, 0);
        }
    }

    let flags = if exiting {
        event_flag::OWNER_EXITING
    } else {
        0
    };
    emit(|ev| {
        ev.ts_ns = now;
        ev.skaddr = sk;
        ev.kind = kind::STATE;
        ev.flags = flags;
        ev.old_state = old;
        ev.new_state = new;
        ev.old_state_ns = old_state_ns;
        ev.netns = owner.netns;
        ev.pid = owner.pid;
        ev.owner_source = owner.source;
        ev.comm = owner.comm;
        ev.cgroup = owner.cgroup;
        src.fill(sk, ev)
    })
}

/// The owner of a socket seen for the first time: a listener's child
/// inherits the listener's owner; anything else starts unknown.
#[inline(always)]
fn new_socket_owner(src: &impl Endpoints, sk: u64, old: u8, new: u8) -> Res<SockOwner> {
    let netns = sock_netns(sk);
    let mut fresh = SockOwner {
        last_change_ns: 0,
        born_ns: 0,
        netns,
        pid: 0,
        source: owner_source::NONE,
        state: 0,
        _pad: [0; 6],
        comm: [0; COMM_LEN],
        cgroup: 0,
    };
    if old == LISTEN && new == SYN_RECV {
        // Created in softirq, owned by whoever listens on its local port
        // until a close() says otherwise.
        let sport = src.local_port(sk)?;
        let key = ListenerKey {
            netns,
            port: sport,
            _pad: 0,
        };
        // SAFETY: read once from a live map value.
        if let Some(listener) = unsafe { LISTENERS.get(&key) } {
            fresh = *listener;
            fresh.netns = netns;
            fresh.source = owner_source::LISTENER;
        }
    }
    Ok(fresh)
}

/// `tcp:tcp_destroy_sock` (include/trace/events/tcp.h), fired by
/// `tcp_v4_destroy_sock()` in net/ipv4/tcp_ipv4.c when the full socket is
/// freed: the socket address may be reused from here on.
#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    if empty() {
        return 0;
    }
    let _ = try_tcp_destroy_sock(&ctx);
    0
}

fn try_tcp_destroy_sock(ctx: &TracePointContext) -> Res<()> {
    let tp = layout_of(|l| &l.destroy_sock);
    let sk: u64 = field(ctx, tp.skaddr)?;
    let _ = SOCKS.remove(&sk);
    Ok(())
}

/// `tcp_destroy_sock` as a raw tracepoint (`TP_PROTO(struct sock *sk)`),
/// attached with [`inet_sock_set_state_raw`].
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_raw(ctx: RawTracePointContext) -> i32 {
    if empty() {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    let _ = SOCKS.remove(&sk);
    0
}

/// Emits an event about `sk` carrying its remembered owner, for events that
/// run in softirq; `state` of `None` takes the socket's remembered state.
/// Without a socket, the namespace comes from the segment `skb`, if any.
#[inline(always)]
pub fn emit_for_socket(
    sk: u64,
    skb: u64,
    event_kind: u8,
    state: Option<u8>,
    reason: u16,
    endpoints: impl FnOnce(&mut Event) -> Res<()>,
) -> Res<()> {
    let now = now_ns();
    // SAFETY: read once from a live map value.
    let owner = if sk == 0 {
        None
    } else {
        unsafe { SOCKS.get(&sk) }.copied()
    };
    emit(|ev| {
        ev.ts_ns = now;
        ev.skaddr = sk;
        ev.kind = event_kind;
        ev.reason = reason;
        let state = match owner {
            Some(o) => {
                ev.netns = o.netns;
                ev.pid = o.pid;
                ev.owner_source = o.source;
                ev.comm = o.comm;
                ev.cgroup = o.cgroup;
                state.unwrap_or(o.state)
            }
            None => {
                ev.netns = if sk != 0 {
                    sock_netns(sk)
                } else {
                    skb_netns(skb)
                };
                state.unwrap_or(0)
            }
        };
        ev.old_state = state;
        ev.new_state = state;
        endpoints(ev)
    })
}
