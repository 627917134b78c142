//! What every program shares: the ring buffer, the loss counters, the
//! layout global and readers of tracepoint fields at discovered offsets.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::map,
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tcpwatch_common::{
    counter, Event, KernelOffsets, Layout, TpLayout, AF_INET, AF_INET6, DEFAULT_RING_BYTES,
    FIELD_ABSENT, OFFSETS_SKB, OFFSETS_SOCK, RECORD_BYTES, SOCK_HEAD_BYTES,
};

/// Events for userspace; its size is set again by the loader.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per-CPU counters indexed by `tcpwatch_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Filled by userspace before load; all fields absent makes every program a no-op.
#[unsafe(no_mangle)]
pub static LAYOUT: Layout = Layout::absent();

/// Error type of the `try_` functions: the helper's errno, already counted.
pub type Res<T> = Result<T, i32>;

#[inline(always)]
pub fn bump(index: u32) {
    bump_in(&COUNTERS, index);
}

/// Adds one to slot `index` of a per-CPU counter array: aggregation in the
/// kernel, read by userspace at scrape time, with no event per increment.
#[inline(always)]
pub fn bump_in(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's slot of a live map value.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Unread bytes that make a submit wake the consumer; 0 wakes it for every
/// record. Set by userspace before load: waking a consumer costs a context
/// switch, so under load records are taken in batches by its periodic poll.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: u64 = 0;

/// Reads the layout of one tracepoint; volatile so the compiler cannot fold
/// the all-absent initial value into the program.
#[inline(always)]
pub fn layout_of(pick: fn(&'static Layout) -> &'static TpLayout) -> TpLayout {
    // SAFETY: LAYOUT is a plain static that is only written before load.
    unsafe { core::ptr::read_volatile(pick(&LAYOUT)) }
}

#[inline(always)]
pub fn kernel_offsets() -> KernelOffsets {
    // SAFETY: as in `layout_of`.
    unsafe { core::ptr::read_volatile(&LAYOUT.kernel) }
}

/// The first [`RECORD_BYTES`] bytes of a tracepoint record, copied with one
/// helper call: one `bpf_probe_read_kernel` instead of one per field.
/// Aligned like the record, so naturally aligned fields load in one
/// instruction rather than byte by byte.
#[repr(C, align(8))]
pub struct Record([u8; RECORD_BYTES]);

impl Record {
    #[inline(always)]
    pub fn read(ctx: &TracePointContext) -> Res<Record> {
        use aya_ebpf::EbpfContext as _;
        let mut rec = Record([0; RECORD_BYTES]);
        // SAFETY: bpf_probe_read_kernel checks the address. Records sit at
        // the start of a per-CPU buffer of several KiB (perf_trace_buf), so
        // reading past a shorter record stays inside it; userspace only
        // hands out offsets within RECORD_BYTES.
        unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut rec.0) }
            .inspect_err(|_| bump(counter::READ_FAILED))?;
        Ok(rec)
    }

    /// The field at `offset`, or an error when it is absent or out of range.
    #[inline(always)]
    pub fn get<T: Copy>(&self, offset: u16) -> Res<T> {
        let at = offset as usize;
        if offset == FIELD_ABSENT || at > RECORD_BYTES - core::mem::size_of::<T>() {
            return Err(-2);
        }
        let ptr = self.0.as_ptr().wrapping_add(at) as *const T;
        // SAFETY: `at + size_of::<T>()` is within the array, checked above;
        // the alignment is checked before the aligned read.
        Ok(unsafe {
            if at % core::mem::align_of::<T>() == 0 {
                core::ptr::read(ptr)
            } else {
                core::ptr::read_unaligned(ptr)
            }
        })
    }

    #[inline(always)]
    fn bytes(&self, offset: u16, dst: &mut [u8]) -> Res<()> {
        let at = offset as usize;
        match self.0.get(at..at + dst.len()) {
            Some(src) if offset != FIELD_ABSENT => {
                dst.copy_from_slice(src);
                Ok(())
            }
            _ => Err(-2),
        }
    }
}

/// Reads one field straight from the record, for programs that need only one.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, offset: u16) -> Res<T> {
    if offset == FIELD_ABSENT {
        return Err(-2);
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad offset only fails the read.
    unsafe { ctx.read_at::<T>(offset as usize) }.inspect_err(|_| bump(counter::READ_FAILED))
}

/// Fills family, ports and addresses of `ev` from the record; `sk` is the
/// record's socket, read for its family where the record has none.
#[inline(always)]
pub fn read_endpoints(rec: &Record, tp: &TpLayout, sk: u64, ev: &mut Event) -> Res<()> {
    if tp.sockaddr != 0 {
        // struct sockaddr_in / sockaddr_in6: family, then the port in network order.
        let family: u16 = rec.get(tp.saddr)?;
        ev.family = family;
        ev.sport = u16::from_be(rec.get(tp.saddr + 2)?);
        ev.dport = u16::from_be(rec.get(tp.daddr + 2)?);
        if family == AF_INET {
            rec.bytes(tp.saddr + 4, &mut ev.saddr[..4])?;
            rec.bytes(tp.daddr + 4, &mut ev.daddr[..4])?;
        } else if family == AF_INET6 {
            rec.bytes(tp.saddr + 8, &mut ev.saddr)?;
            rec.bytes(tp.daddr + 8, &mut ev.daddr)?;
        }
        return Ok(());
    }
    let family: u16 = if tp.family != FIELD_ABSENT {
        rec.get(tp.family)?
    } else {
        family_without_field(rec, tp, sk)?
    };
    ev.family = family;
    ev.sport = rec.get(tp.sport)?;
    ev.dport = rec.get(tp.dport)?;
    if family == AF_INET6 {
        rec.bytes(tp.saddr_v6, &mut ev.saddr)?;
        rec.bytes(tp.daddr_v6, &mut ev.daddr)?;
    } else {
        rec.bytes(tp.saddr, &mut ev.saddr[..4])?;
        rec.bytes(tp.daddr, &mut ev.daddr[..4])?;
    }
    Ok(())
}

/// The family of a record from a kernel whose `tcp:*` tracepoints have no
/// `family` field (before 5.12's "tcp: add the family field", so 5.10).
/// `TP_STORE_ADDRS` (include/trace/events/tcp.h) fills the IPv6 arrays from
/// `sk->sk_family`: the socket's own family is the exact answer. Without a
/// socket (a reset answering a segment for no socket) the IPv6 array tells:
/// the macro stores IPv4 addresses as v4-mapped (`::ffff:a.b.c.d`).
#[inline(always)]
fn family_without_field(rec: &Record, tp: &TpLayout, sk: u64) -> Res<u16> {
    let k = kernel_offsets();
    if sk != 0 && k.valid & OFFSETS_SOCK != 0 {
        if let Some(family) = read_kernel::<u16>(sk + k.sock_family as u64) {
            return Ok(family);
        }
    }
    let mut v6 = [0u8; 16];
    rec.bytes(tp.saddr_v6, &mut v6)?;
    let mapped = v6[..10].iter().all(|b| *b == 0) && v6[10] == 0xff && v6[11] == 0xff;
    Ok(if mapped { AF_INET } else { AF_INET6 })
}

/// A few bytes of a socket read with one helper call: `struct sock_common`
/// from `skc_daddr` (the remote address and port, the family), or `struct
/// inet_sock` from `inet_saddr` (the local address and port). Userspace
/// vouches that every field lies within (`OFFSETS_SOCK_ENDPOINTS`).
#[repr(C, align(8))]
pub struct SockHead([u8; SOCK_HEAD_BYTES]);

impl SockHead {
    #[inline(always)]
    pub fn read(at: u64) -> Res<SockHead> {
        let mut head = SockHead([0; SOCK_HEAD_BYTES]);
        // SAFETY: bpf_probe_read_kernel checks the address.
        unsafe { bpf_probe_read_kernel_buf(at as *const u8, &mut head.0) }
            .inspect_err(|_| bump(counter::READ_FAILED))?;
        Ok(head)
    }

    #[inline(always)]
    pub fn get<T: Copy>(&self, at: u32) -> Res<T> {
        let at = at as usize;
        if at > SOCK_HEAD_BYTES - core::mem::size_of::<T>() {
            return Err(-2);
        }
        // SAFETY: within the array, checked above; unaligned read.
        Ok(unsafe { core::ptr::read_unaligned(self.0.as_ptr().wrapping_add(at) as *const T) })
    }
}

/// Fills family, ports and addresses of `ev` from the socket itself, as
/// `TP_fast_assign` of `inet_sock_set_state` does (include/trace/events/
/// sock.h): for raw tracepoints, which get only the socket pointer.
#[inline(always)]
pub fn read_sock_endpoints(sk: u64, k: &KernelOffsets, ev: &mut Event) -> Res<()> {
    let remote = SockHead::read(sk + u64::from(k.sock_daddr))?;
    let local = SockHead::read(sk + u64::from(k.inet_saddr))?;
    let family: u16 = remote.get(k.sock_family.wrapping_sub(k.sock_daddr))?;
    ev.family = family;
    ev.sport = u16::from_be(local.get(k.inet_sport.wrapping_sub(k.inet_saddr))?);
    ev.dport = u16::from_be(remote.get(k.sock_dport.wrapping_sub(k.sock_daddr))?);
    if family == AF_INET6 {
        ev.saddr = read_kernel(sk + u64::from(k.sock_v6_rcv_saddr)).ok_or(-14)?;
        ev.daddr = read_kernel(sk + u64::from(k.sock_v6_daddr)).ok_or(-14)?;
    } else {
        let saddr: [u8; 4] = local.get(0)?;
        let daddr: [u8; 4] = remote.get(0)?;
        ev.saddr[..4].copy_from_slice(&saddr);
        ev.daddr[..4].copy_from_slice(&daddr);
    }
    Ok(())
}

/// Fills family, ports and addresses of `ev` from `struct sock_common`
/// alone (`head` read from `skc_daddr`): what every kind of socket a
/// segment can find has, full, request or TIME_WAIT (`struct
/// inet_timewait_sock` has no `inet_sport`; `skc_num` is the local port
/// while the socket is hashed). Needs `OFFSETS_SOCK_COMMON`.
#[inline(always)]
pub fn read_common_endpoints(
    sk: u64,
    head: &SockHead,
    k: &KernelOffsets,
    ev: &mut Event,
) -> Res<()> {
    let family: u16 = head.get(k.sock_family.wrapping_sub(k.sock_daddr))?;
    ev.family = family;
    ev.sport = head.get(k.sock_num.wrapping_sub(k.sock_daddr))?;
    ev.dport = u16::from_be(head.get(k.sock_dport.wrapping_sub(k.sock_daddr))?);
    if family == AF_INET6 {
        ev.saddr = read_kernel(sk + u64::from(k.sock_v6_rcv_saddr)).ok_or(-14)?;
        ev.daddr = read_kernel(sk + u64::from(k.sock_v6_daddr)).ok_or(-14)?;
    } else {
        let saddr: [u8; 4] = head.get(k.sock_rcv_saddr.wrapping_sub(k.sock_daddr))?;
        let daddr: [u8; 4] = head.get(0)?;
        ev.saddr[..4].copy_from_slice(&saddr);
        ev.daddr[..4].copy_from_slice(&daddr);
    }
    Ok(())
}

/// The local port of a socket (`inet_sport`), host order.
#[inline(always)]
pub fn sock_local_port(sk: u64, k: &KernelOffsets) -> Res<u16> {
    read_kernel::<u16>(sk + u64::from(k.inet_sport))
        .map(u16::from_be)
        .ok_or(-14)
}

#[inline(always)]
pub fn read_kernel<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one fails the read.
    match unsafe { bpf_probe_read_kernel(addr as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            bump(counter::READ_FAILED);
            None
        }
    }
}

/// `net->ns.inum`, or 0.
#[inline(always)]
fn net_inum(net: u64, k: &KernelOffsets) -> u32 {
    if net == 0 {
        return 0;
    }
    read_kernel::<u32>(net + k.net_inum as u64).unwrap_or(0)
}

/// The network namespace inode of a `struct sock`, or 0 when the offsets
/// could not be discovered.
#[inline(always)]
pub fn sock_netns(sk: u64) -> u32 {
    let k = kernel_offsets();
    if k.valid & OFFSETS_SOCK == 0 || sk == 0 {
        return 0;
    }
    let net = read_kernel::<u64>(sk + k.sock_net as u64).unwrap_or(0);
    net_inum(net, &k)
}

/// The network namespace of the device a `struct sk_buff` arrived on, for
/// events without a socket (a reset answering a segment for no socket).
#[inline(always)]
pub fn skb_netns(skb: u64) -> u32 {
    let k = kernel_offsets();
    if k.valid & (OFFSETS_SOCK | OFFSETS_SKB) != OFFSETS_SOCK | OFFSETS_SKB || skb == 0 {
        return 0;
    }
    let dev = read_kernel::<u64>(skb + k.skb_dev as u64).unwrap_or(0);
    if dev == 0 {
        return 0;
    }
    let net = read_kernel::<u64>(dev + k.netdev_net as u64).unwrap_or(0);
    net_inum(net, &k)
}

/// Tells userspace that `owner` now owns socket `sk`: sent only when the
/// owner changed, so a process that keeps using its socket sends nothing.
#[inline(always)]
pub fn emit_owner(sk: u64, owner: &tcpwatch_common::SockOwner) -> Res<()> {
    let now = now_ns();
    emit(|ev| {
        ev.ts_ns = now;
        ev.skaddr = sk;
        ev.kind = tcpwatch_common::kind::OWNER;
        ev.netns = owner.netns;
        ev.pid = owner.pid;
        ev.owner_source = owner.source;
        ev.comm = owner.comm;
        ev.cgroup = owner.cgroup;
        ev.old_state = owner.state;
        ev.new_state = owner.state;
        // No endpoints: userspace finds the connection by its address.
        ev.family = AF_INET;
        Ok(())
    })
}

/// Reserves an event in the ring buffer and lets `fill` write it; a full
/// ring buffer is counted, never silent. `fill` returning an error discards.
#[inline(always)]
pub fn emit(fill: impl FnOnce(&mut Event) -> Res<()>) -> Res<()> {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(counter::RINGBUF_FULL);
        return Err(-28);
    };
    // Zeroed in place, a word at a time: an `Event` built on the stack would
    // take 104 of the 512 bytes the verifier allows, and `write_bytes` becomes
    // a call to a byte-wise memset.
    let words = entry.as_mut_ptr() as *mut u64;
    for i in 0..core::mem::size_of::<Event>() / 8 {
        // SAFETY: the entry is `size_of::<Event>()` bytes of 8-aligned ring
        // memory that this program owns until submit or discard.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: all-zero is a valid Event (plain integers and arrays).
    let ev = unsafe { entry.assume_init_mut() };
    match fill(ev) {
        Ok(()) => {
            // SAFETY: as in `layout_of`.
            let wake_at = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
            let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
            if let Some(peak) = COUNTERS.get_ptr_mut(counter::RING_PEAK_BYTES) {
                // SAFETY: this CPU's slot of a live map value.
                unsafe { *peak = (*peak).max(unread) };
            }
            let flags = if wake_at == 0 {
                0
            } else if unread >= wake_at {
                BPF_RB_FORCE_WAKEUP as u64
            } else {
                BPF_RB_NO_WAKEUP as u64
            };
            entry.submit(flags);
            bump(counter::EMITTED);
            Ok(())
        }
        Err(e) => {
            entry.discard(0);
            Err(e)
        }
    }
}
