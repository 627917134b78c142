//! What every program shares: the ring buffer, the loss counters, the
//! layout global and readers of tracepoint fields at discovered offsets.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::map,
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tcpwatch_common::{
    counter, Event, KernelOffsets, Layout, TpLayout, AF_INET, AF_INET6, DEFAULT_RING_BYTES,
    FIELD_ABSENT, OFFSETS_SKB, OFFSETS_SOCK,
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

/// Reads a field of the tracepoint record.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, offset: u16) -> Res<T> {
    if offset == FIELD_ABSENT {
        return Err(-2);
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad offset only fails the read.
    unsafe { ctx.read_at::<T>(offset as usize) }.inspect_err(|_| bump(counter::READ_FAILED))
}

#[inline(always)]
fn field_bytes(ctx: &TracePointContext, offset: u16, dst: &mut [u8]) -> Res<()> {
    if offset == FIELD_ABSENT {
        return Err(-2);
    }
    let src = (ctx.as_ptr_u64() + offset as u64) as *const u8;
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel_buf(src, dst) }.inspect_err(|_| bump(counter::READ_FAILED))
}

trait CtxAddr {
    fn as_ptr_u64(&self) -> u64;
}

impl CtxAddr for TracePointContext {
    #[inline(always)]
    fn as_ptr_u64(&self) -> u64 {
        use aya_ebpf::EbpfContext as _;
        self.as_ptr() as u64
    }
}

/// Fills family, ports and addresses of `ev` from the record.
#[inline(always)]
pub fn read_endpoints(ctx: &TracePointContext, tp: &TpLayout, ev: &mut Event) -> Res<()> {
    if tp.sockaddr != 0 {
        // struct sockaddr_in / sockaddr_in6: family, then the port in network order.
        let family: u16 = field(ctx, tp.saddr)?;
        ev.family = family;
        ev.sport = u16::from_be(field(ctx, tp.saddr + 2)?);
        ev.dport = u16::from_be(field(ctx, tp.daddr + 2)?);
        if family == AF_INET {
            field_bytes(ctx, tp.saddr + 4, &mut ev.saddr[..4])?;
            field_bytes(ctx, tp.daddr + 4, &mut ev.daddr[..4])?;
        } else if family == AF_INET6 {
            field_bytes(ctx, tp.saddr + 8, &mut ev.saddr)?;
            field_bytes(ctx, tp.daddr + 8, &mut ev.daddr)?;
        }
        return Ok(());
    }
    let family: u16 = field(ctx, tp.family)?;
    ev.family = family;
    ev.sport = field(ctx, tp.sport)?;
    ev.dport = field(ctx, tp.dport)?;
    if family == AF_INET6 {
        field_bytes(ctx, tp.saddr_v6, &mut ev.saddr)?;
        field_bytes(ctx, tp.daddr_v6, &mut ev.daddr)?;
    } else {
        field_bytes(ctx, tp.saddr, &mut ev.saddr[..4])?;
        field_bytes(ctx, tp.daddr, &mut ev.daddr[..4])?;
    }
    Ok(())
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

/// Reserves an event in the ring buffer and lets `fill` write it; a full
/// ring buffer is counted, never silent. `fill` returning an error discards.
#[inline(always)]
pub fn emit(fill: impl FnOnce(&mut Event) -> Res<()>) -> Res<()> {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(counter::RINGBUF_FULL);
        return Err(-28);
    };
    let ev = entry.write(Event::zeroed());
    match fill(ev) {
        Ok(()) => {
            entry.submit(0);
            bump(counter::EMITTED);
            Ok(())
        }
        Err(e) => {
            entry.discard(0);
            Err(e)
        }
    }
}
