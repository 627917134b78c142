//! The ABI shared by tcpwatch's eBPF programs and its userspace.
//!
//! Everything here crosses the kernel/user boundary, so every type is
//! `#[repr(C)]`, has no implicit padding and has its size pinned by a
//! `const` assertion. Enumerations travel as plain integers and are decoded
//! in userspace.
#![no_std]

/// Name of the ring buffer map that carries [`Event`]s to userspace.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-CPU array of [`counter`] values.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the map from socket address to [`SockOwner`].
pub const MAP_SOCKS: &str = "SOCKS";
/// Name of the map from [`ListenerKey`] to the listener's [`SockOwner`].
pub const MAP_LISTENERS: &str = "LISTENERS";
/// Name of the per-CPU array counting state transitions, indexed by
/// `old * 16 + new` (see [`transition_index`]).
pub const MAP_TRANSITIONS: &str = "TRANSITIONS";
/// Name of the per-CPU array counting retransmits by [`phase`].
pub const MAP_RETRANSMITS: &str = "RETRANSMITS";
/// Name of the per-CPU array counting resets: sent by reason (index
/// `reason & 63`), received at [`RESETS_RECEIVED_INDEX`].
pub const MAP_RESETS: &str = "RESETS";
/// Name of the per-CPU array of duration histograms (see [`hist`]).
pub const MAP_HISTOGRAMS: &str = "HISTOGRAMS";
/// Name of the per-CPU array counting TCP segments dropped for a known
/// socket, by drop reason (`enum skb_drop_reason`, index `reason & 255`).
pub const MAP_DROPS: &str = "DROPS";
/// Entries of the drops map: the kernel's drop reasons number about 130.
pub const DROPS_LEN: u32 = 256;
/// Drop events one CPU may send per [`DROP_WINDOW_NS`]; beyond, drops are
/// only counted (in the drops map and [`counter::DROP_EVENTS_LIMITED`]), so
/// a flood of drops cannot crowd the ring buffer.
pub const DROP_EVENTS_PER_WINDOW: u64 = 64;
/// Length of a drop-event window.
pub const DROP_WINDOW_NS: u64 = 100_000_000;
/// Entries of the transitions map.
pub const TRANSITIONS_LEN: u32 = 256;
/// Entries of the resets map.
pub const RESETS_LEN: u32 = 65;
/// Index of received resets in the resets map.
pub const RESETS_RECEIVED_INDEX: u32 = 64;

/// Index of a transition in the transitions map.
pub const fn transition_index(old: u8, new: u8) -> u32 {
    ((old as u32 & 15) << 4) | (new as u32 & 15)
}

/// Retransmit phases, indexes of the retransmits map.
pub mod phase {
    pub const SYN: u32 = 0;
    pub const SYNACK: u32 = 1;
    pub const DATA: u32 = 2;
    pub const FIN: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Name of the global holding the [`Layout`] discovered at start-up.
pub const GLOBAL_LAYOUT: &str = "LAYOUT";

/// Name of the global holding how many unread bytes in the ring buffer
/// wake the consumer; below it, records wait for the consumer's next poll.
pub const GLOBAL_WAKEUP_BYTES: &str = "WAKEUP_BYTES";

/// Name of the global holding the number the running kernel gives the drop
/// reason `NOT_SPECIFIED` (`u32::MAX` when unknown). Frees that no one
/// annotated with a reason are not drops anyone can act on: a TIME_WAIT
/// socket frees the peer's last FIN that way on every close (6.12, 7.2).
pub const GLOBAL_DROP_NOT_SPECIFIED: &str = "DROP_NOT_SPECIFIED";

/// Name of the global that empties the lifecycle programs, for the
/// benchmark's measure of the floor attaching alone costs (0 otherwise).
pub const GLOBAL_EMPTY_LIFECYCLE_PROGRAMS: &str = "EMPTY_LIFECYCLE_PROGRAMS";

/// Default ring buffer size in bytes (a power of two and a multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 1 << 22;
/// Default number of sockets whose owner the kernel side remembers.
pub const DEFAULT_MAX_SOCKS: u32 = 1 << 16;
/// Default number of listening ports whose owner the kernel side remembers.
pub const DEFAULT_MAX_LISTENERS: u32 = 1 << 12;

/// Indexes into the per-CPU counters map.
pub mod counter {
    /// Events dropped because the ring buffer had no room.
    pub const RINGBUF_FULL: u32 = 0;
    /// `tcp_retransmit_skb` hits that the kernel reported as not sent (`err != 0`).
    pub const RETRANSMIT_NOT_SENT: u32 = 1;
    /// Reads of tracepoint records or kernel memory that failed.
    pub const READ_FAILED: u32 = 2;
    /// Events emitted into the ring buffer.
    pub const EMITTED: u32 = 3;
    /// Not a count: the most unread bytes this CPU saw in the ring buffer
    /// when it submitted, until userspace resets it.
    pub const RING_PEAK_BYTES: u32 = 4;
    /// Drops counted in the drops map but not sent as events, beyond a
    /// CPU's [`DROP_EVENTS_PER_WINDOW`](super::DROP_EVENTS_PER_WINDOW).
    pub const DROP_EVENTS_LIMITED: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

/// What an [`Event`] reports; carried as `Event::kind`.
pub mod kind {
    /// A `sock:inet_sock_set_state` transition.
    pub const STATE: u8 = 1;
    /// A retransmitted segment (`tcp:tcp_retransmit_skb`, sent).
    pub const RETRANSMIT: u8 = 2;
    /// A retransmitted SYN-ACK (`tcp:tcp_retransmit_synack`).
    pub const SYNACK_RETRANSMIT: u8 = 3;
    /// A reset sent (`tcp:tcp_send_reset`).
    pub const RESET_SENT: u8 = 4;
    /// A reset received (`tcp:tcp_receive_reset`).
    pub const RESET_RECEIVED: u8 = 5;
    /// Another process took the socket (it accepted it, or sent or
    /// received on it): the event carries the new owner, no endpoints.
    pub const OWNER: u8 = 6;
    /// A TCP segment the kernel dropped for a known socket
    /// (`skb:kfree_skb` with `rx_sk`): `Event::reason` is the drop reason
    /// (`enum skb_drop_reason`), the endpoints and state are the socket's
    /// (a listener, a request or TIME_WAIT socket, or a connection).
    pub const DROP: u8 = 7;
}

/// How the owner in an [`Event`] was learnt; carried in `Event::owner_source`.
pub mod owner_source {
    /// No owner known (a reset for no socket, or a socket born before tracing).
    pub const NONE: u8 = 0;
    /// Bound in `connect()` (`CLOSE -> SYN_SENT`).
    pub const CONNECT: u8 = 1;
    /// Bound in `listen()` (`CLOSE -> LISTEN`).
    pub const LISTEN: u8 = 2;
    /// Inherited from the listener that accepted the connection.
    pub const LISTENER: u8 = 3;
    /// Bound in `close()` or `shutdown()` by the process that closed it.
    pub const CLOSE: u8 = 4;
    /// Found by userspace at start-up in `/proc` (sockets older than tcpwatch).
    pub const STARTUP: u8 = 5;
    /// Bound in `accept()` by the process that accepted the connection.
    pub const ACCEPT: u8 = 6;
    /// Bound when a process sent or received on the socket (it holds it).
    pub const IO: u8 = 7;
}

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
/// Address families as the kernel numbers them.
pub const AF_INET6: u16 = 10;
/// TCP's protocol number, as `inet_sock_set_state` reports it.
pub const IPPROTO_TCP: u16 = 6;

/// Kernel TCP states (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;

/// Marks a duration as unknown (the socket's previous transition was not seen).
pub const DURATION_UNKNOWN: u64 = u64::MAX;

/// One event sent from the kernel to userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC in nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the `struct sock` (0 when there is none).
    pub skaddr: u64,
    /// Nanoseconds since the socket's previous transition, or [`DURATION_UNKNOWN`].
    pub old_state_ns: u64,
    /// Network namespace inode number (0 when unknown).
    pub netns: u32,
    /// Owning process (thread group id), 0 when unknown.
    pub pid: u32,
    /// One of [`kind`].
    pub kind: u8,
    /// One of [`owner_source`].
    pub owner_source: u8,
    /// State before a transition; the socket's state for retransmits and resets.
    pub old_state: u8,
    /// State after a transition (equal to `old_state` for other kinds).
    pub new_state: u8,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// Reset reason (`enum sk_rst_reason`) for sent resets, else 0.
    pub reason: u16,
    /// Local address: IPv4 in the first four bytes, or IPv6.
    pub saddr: [u8; 16],
    /// Remote address: IPv4 in the first four bytes, or IPv6.
    pub daddr: [u8; 16],
    /// Owning task's command name, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// [`event_flag`] bits.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// The owner's cgroup v2 id (`bpf_get_current_cgroup_id()` where the
    /// owner was bound: the inode number of its directory under the
    /// cgroup2 mount), 0 when unknown.
    pub cgroup: u64,
}

/// Bytes of an [`Event`] in the ring buffer.
pub const EVENT_BYTES: usize = 104;

const _: () = assert!(core::mem::size_of::<Event>() == EVENT_BYTES);

impl Event {
    /// An all-zero event.
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            skaddr: 0,
            old_state_ns: DURATION_UNKNOWN,
            netns: 0,
            pid: 0,
            kind: 0,
            owner_source: 0,
            old_state: 0,
            new_state: 0,
            family: 0,
            sport: 0,
            dport: 0,
            reason: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; COMM_LEN],
            flags: 0,
            _pad: [0; 3],
            cgroup: 0,
        }
    }
}

/// Bits of [`Event::flags`].
pub mod event_flag {
    /// The transition ran in a task that is exiting (`PF_EXITING`): a close
    /// the kernel made for a process that died or exited holding the socket
    /// (its files are closed by `do_exit()` -> `exit_files()`), not a close()
    /// the application called.
    pub const OWNER_EXITING: u8 = 1;
    /// A received reset's event says whether data was outstanding
    /// (`DATA_OUTSTANDING`); without it the kernel's offsets were unknown.
    pub const OUTSTANDING_KNOWN: u8 = 2;
    /// Segments sent and not acknowledged when the reset came
    /// (`tcp_sock.packets_out` > 0).
    pub const DATA_OUTSTANDING: u8 = 4;
    /// A received reset's `Event::reason` holds the seconds since the peer
    /// was last heard (`tcp_sock.rx_opt.ts_recent_stamp`: the last segment
    /// with a timestamp it sent in the window), capped at `u16::MAX`.
    pub const SILENCE_KNOWN: u8 = 8;
    /// A received reset carried a TCP timestamp on a connection that uses
    /// them: a live stack that knows the connection sent it
    /// (`tcp_send_active_reset()` builds it like any segment of the
    /// connection), never a host without the socket (`tcp_v4_send_reset()`
    /// and `tcp_v6_send_reset()` add no timestamp).
    pub const RESET_TIMESTAMPED: u8 = 16;
}

/// Durations the kernel aggregates into histograms, with no event each.
/// Histogram `h` occupies slots `h * HIST_SLOTS ..` of the histograms map:
/// one count per bucket of [`HIST_BOUNDS_NS`] (not cumulative), one for
/// longer durations, then the sum of all durations in nanoseconds.
pub mod hist {
    /// SYN_SENT to ESTABLISHED of outgoing connections.
    pub const HANDSHAKE: u32 = 0;
    /// Birth (SYN_SENT or SYN_RECV) to CLOSE.
    pub const LIFETIME: u32 = 1;
    /// Time spent in CLOSE_WAIT, FIN_WAIT2 and LAST_ACK.
    pub const CLOSE_WAIT: u32 = 2;
    pub const FIN_WAIT2: u32 = 3;
    pub const LAST_ACK: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Upper bounds of the histogram buckets in nanoseconds: loopback
/// handshakes take microseconds, leaked CLOSE_WAITs hours.
pub const HIST_BOUNDS_NS: [u64; 14] = [
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    30_000_000_000,
    120_000_000_000,
    600_000_000_000,
    3_600_000_000_000,
];
/// Slots of one histogram: the buckets, the overflow bucket, the sum.
pub const HIST_SLOTS: u32 = HIST_BOUNDS_NS.len() as u32 + 2;
/// Entries of the histograms map.
pub const HISTOGRAMS_LEN: u32 = hist::COUNT * HIST_SLOTS;

/// What the kernel side remembers about a socket's owner.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOwner {
    /// Time of the socket's last transition (`bpf_ktime_get_ns`), 0 when unknown.
    pub last_change_ns: u64,
    /// Time of the socket's birth transition, 0 when it was born before
    /// tcpwatch started.
    pub born_ns: u64,
    /// Network namespace inode number.
    pub netns: u32,
    /// Thread group id of the owner.
    pub pid: u32,
    /// One of [`owner_source`].
    pub source: u8,
    /// The socket's state after its last transition.
    pub state: u8,
    pub _pad: [u8; 6],
    /// Owner's command name.
    pub comm: [u8; COMM_LEN],
    /// Owner's cgroup v2 id, taken where the owner was bound; 0 when unknown.
    pub cgroup: u64,
}

const _: () = assert!(core::mem::size_of::<SockOwner>() == 56);

/// Key of the listener map: a listening port in a network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<ListenerKey>() == 8);

/// Bytes of a tracepoint record the programs copy and read fields from;
/// every field they use must end within it.
pub const RECORD_BYTES: usize = 96;

/// Byte offset of a field in a tracepoint record; [`FIELD_ABSENT`] when the
/// running kernel's tracepoint has no such field.
pub type FieldOffset = u16;
/// Marks an optional field the running kernel does not have.
pub const FIELD_ABSENT: FieldOffset = u16::MAX;

/// Where the fields the programs read sit in a tracepoint record.
///
/// Address fields point at the 4-byte IPv4 array and the 16-byte IPv6 array,
/// or, for tracepoints that carry `struct sockaddr_in6`-sized arrays
/// (`sockaddr` set), at the start of the sockaddr.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpLayout {
    pub skbaddr: FieldOffset,
    pub skaddr: FieldOffset,
    pub state: FieldOffset,
    pub new_state: FieldOffset,
    pub sport: FieldOffset,
    pub dport: FieldOffset,
    pub family: FieldOffset,
    pub protocol: FieldOffset,
    pub saddr: FieldOffset,
    pub daddr: FieldOffset,
    pub saddr_v6: FieldOffset,
    pub daddr_v6: FieldOffset,
    pub err: FieldOffset,
    pub reason: FieldOffset,
    /// 1 when `saddr`/`daddr` are sockaddrs holding family and port.
    pub sockaddr: u16,
}

const _: () = assert!(core::mem::size_of::<TpLayout>() == 30);

impl TpLayout {
    /// A layout with every field absent.
    pub const fn absent() -> Self {
        Self {
            skbaddr: FIELD_ABSENT,
            skaddr: FIELD_ABSENT,
            state: FIELD_ABSENT,
            new_state: FIELD_ABSENT,
            sport: FIELD_ABSENT,
            dport: FIELD_ABSENT,
            family: FIELD_ABSENT,
            protocol: FIELD_ABSENT,
            saddr: FIELD_ABSENT,
            daddr: FIELD_ABSENT,
            saddr_v6: FIELD_ABSENT,
            daddr_v6: FIELD_ABSENT,
            err: FIELD_ABSENT,
            reason: FIELD_ABSENT,
            sockaddr: 0,
        }
    }
}

/// Offsets into kernel structures, read from BTF at start-up.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock` -> `__sk_common.skc_net.net` (a `struct net *`).
    pub sock_net: u32,
    /// `struct net` -> `ns.inum`.
    pub net_inum: u32,
    /// `struct sock` -> `__sk_common.skc_family` (a `u16`), read where a
    /// tracepoint has no `family` field (5.10).
    pub sock_family: u32,
    /// `struct sk_buff` -> `dev` (a `struct net_device *`).
    pub skb_dev: u32,
    /// `struct net_device` -> `nd_net.net` (a `struct net *`).
    pub netdev_net: u32,
    /// `struct task_struct` -> `files`.
    pub task_files: u32,
    /// `struct files_struct` -> `fdt`.
    pub files_fdt: u32,
    /// `struct fdtable` -> `fd` (the `struct file **` array).
    pub fdtable_fd: u32,
    /// `struct fdtable` -> `max_fds`.
    pub fdtable_max_fds: u32,
    /// `struct file` -> `private_data` (the `struct socket *` of a socket).
    pub file_private_data: u32,
    /// `struct socket` -> `sk`.
    pub socket_sk: u32,
    /// `struct task_struct` -> `flags` (`PF_*` bits, a `u32`).
    pub task_flags: u32,
    /// `struct sock` -> `sk_protocol` (a `u16` since 5.6).
    pub sock_protocol: u32,
    /// `struct inet_sock` -> `inet_sport`: the local port, network order.
    /// Not `skc_num`: `inet_put_port()` zeroes that before a close's
    /// transition is traced; the tracepoint's record reads this one.
    pub inet_sport: u32,
    /// `struct sock` -> `__sk_common.skc_dport`: the remote port, network order.
    pub sock_dport: u32,
    /// `struct inet_sock` -> `inet_saddr` (IPv4, network order), as the
    /// tracepoint's record has it.
    pub inet_saddr: u32,
    /// `struct sock` -> `__sk_common.skc_daddr` (IPv4, network order).
    pub sock_daddr: u32,
    /// `struct sock` -> `__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub sock_v6_rcv_saddr: u32,
    /// `struct sock` -> `__sk_common.skc_v6_daddr` (16 bytes).
    pub sock_v6_daddr: u32,
    /// `struct sock` -> `sk_lock.owned`: non-zero while a process holds the
    /// socket's lock (in its own system call); softirq processing never
    /// changes the state of a socket a process owns.
    pub sock_lock_owned: u32,
    /// `struct tcp_sock` -> `packets_out`: segments in flight.
    pub tcp_packets_out: u32,
    /// `struct sock` -> `__sk_common.skc_rcv_saddr` (IPv4 local address,
    /// network order): in `struct sock_common`, so also valid for request
    /// and TIME_WAIT sockets, which have no `struct inet_sock`.
    pub sock_rcv_saddr: u32,
    /// `struct sock` -> `__sk_common.skc_num`: the local port, host order
    /// (valid while the socket is hashed, as it is when a segment finds it).
    pub sock_num: u32,
    /// `struct sock` -> `__sk_common.skc_state` (a `u8`).
    pub sock_state: u32,
    /// `struct tcp_sock` -> `rx_opt.ts_recent_stamp`: `ktime_get_seconds()`
    /// when the peer's last in-window timestamped segment arrived (an `int`).
    pub tcp_ts_recent_stamp: u32,
    /// Bit offsets in `struct tcp_sock` of `rx_opt.saw_tstamp` (the segment
    /// being processed carried a timestamp: `tcp_fast_parse_options()`
    /// sets it before a reset is acted on) and `rx_opt.tstamp_ok` (the
    /// connection uses timestamps).
    pub tcp_saw_tstamp_bit: u32,
    pub tcp_tstamp_ok_bit: u32,
    /// [`OFFSETS_SOCK`], [`OFFSETS_SKB`] and [`OFFSETS_FILES`] bits: which
    /// paths are valid. Whatever needs a missing path is reported as unknown.
    pub valid: u32,
}

impl KernelOffsets {
    /// No path known: every field the offsets would lead to is reported unknown.
    pub const fn unknown() -> Self {
        Self {
            sock_net: 0,
            net_inum: 0,
            sock_family: 0,
            skb_dev: 0,
            netdev_net: 0,
            task_files: 0,
            files_fdt: 0,
            fdtable_fd: 0,
            fdtable_max_fds: 0,
            file_private_data: 0,
            socket_sk: 0,
            task_flags: 0,
            sock_protocol: 0,
            inet_sport: 0,
            sock_dport: 0,
            inet_saddr: 0,
            sock_daddr: 0,
            sock_v6_rcv_saddr: 0,
            sock_v6_daddr: 0,
            sock_lock_owned: 0,
            tcp_packets_out: 0,
            sock_rcv_saddr: 0,
            sock_num: 0,
            sock_state: 0,
            tcp_ts_recent_stamp: 0,
            tcp_saw_tstamp_bit: 0,
            tcp_tstamp_ok_bit: 0,
            valid: 0,
        }
    }
}

/// `KernelOffsets::valid` bit for `sock_net`, `net_inum` and `sock_family`.
pub const OFFSETS_SOCK: u32 = 1;
/// `KernelOffsets::valid` bit for `skb_dev` and `netdev_net`.
pub const OFFSETS_SKB: u32 = 2;
/// `KernelOffsets::valid` bit for the task -> fd -> socket -> sock path.
pub const OFFSETS_FILES: u32 = 4;
/// `KernelOffsets::valid` bit for `task_flags`.
pub const OFFSETS_TASK_FLAGS: u32 = 8;

/// `KernelOffsets::valid` bit for `sock_lock_owned` and `tcp_packets_out`.
pub const OFFSETS_SOCK_STATE: u32 = 32;

/// Bytes of `struct sock_common` read at once from `skc_daddr`: the family
/// and the remote port must lie within (userspace checks); the same number
/// of `struct inet_sock` from `inet_saddr` holds `inet_sport`.
pub const SOCK_HEAD_BYTES: usize = 24;

/// `KernelOffsets::valid` bit for the socket's protocol, ports and
/// addresses: what the raw tracepoint programs read from the socket itself
/// instead of a tracepoint record.
pub const OFFSETS_SOCK_ENDPOINTS: u32 = 16;

/// `PF_EXITING` in include/linux/sched.h: set by `exit_signals()` at the
/// start of `do_exit()`, before the task's files are closed.
pub const PF_EXITING: u32 = 0x0000_0004;

/// `KernelOffsets::valid` bit for `sock_rcv_saddr`, `sock_num` and
/// `sock_state`, all within [`SOCK_HEAD_BYTES`] of `skc_daddr`: the
/// endpoints of any socket a segment can find (full, request, TIME_WAIT).
pub const OFFSETS_SOCK_COMMON: u32 = 64;
/// `KernelOffsets::valid` bit for `tcp_ts_recent_stamp`, `tcp_saw_tstamp_bit`
/// and `tcp_tstamp_ok_bit`.
pub const OFFSETS_TS_RECENT: u32 = 128;

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 112);

/// Everything the programs learn from userspace at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub set_state: TpLayout,
    pub retransmit_skb: TpLayout,
    pub retransmit_synack: TpLayout,
    pub send_reset: TpLayout,
    pub receive_reset: TpLayout,
    pub destroy_sock: TpLayout,
    /// `sock:sock_send_length` and `sock:sock_recv_length` (6.2+): the
    /// socket and its protocol, in process context.
    pub sock_io: TpLayout,
    /// `skb:kfree_skb`: `skaddr` is `rx_sk` (6.12+), `reason` the drop
    /// reason (6.0+); the program runs only where both exist.
    pub kfree_skb: TpLayout,
    /// Offset of `ret` in `syscalls:sys_exit_accept` and `sys_exit_accept4`.
    pub accept_ret: FieldOffset,
    pub _pad: [u16; 1],
    pub kernel: KernelOffsets,
}

const _: () = assert!(core::mem::size_of::<Layout>() == 8 * 30 + 4 + 112);

impl Layout {
    /// A layout that makes every program a no-op until userspace fills it.
    pub const fn absent() -> Self {
        Self {
            set_state: TpLayout::absent(),
            retransmit_skb: TpLayout::absent(),
            retransmit_synack: TpLayout::absent(),
            send_reset: TpLayout::absent(),
            receive_reset: TpLayout::absent(),
            destroy_sock: TpLayout::absent(),
            sock_io: TpLayout::absent(),
            kfree_skb: TpLayout::absent(),
            accept_ret: FIELD_ABSENT,
            _pad: [0; 1],
            kernel: KernelOffsets::unknown(),
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is repr(C), made of integers and byte arrays, with no
    // padding (sizes pinned above), so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::SockOwner {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::Layout {}
}
