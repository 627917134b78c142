//! Loading and attaching the kernel programs.
use std::{
    fs,
    io::ErrorKind,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, ProgramFd, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use log::{debug, info, warn};
use tcpwatch_common::{
    counter, hist, owner_source, Layout, ListenerKey, SockOwner, COMM_LEN,
    GLOBAL_DROP_NOT_SPECIFIED, GLOBAL_EMPTY_LIFECYCLE_PROGRAMS, GLOBAL_LAYOUT, GLOBAL_WAKEUP_BYTES,
    HIST_SLOTS, MAP_COUNTERS, MAP_EVENTS, MAP_LISTENERS, MAP_SOCKS, OFFSETS_FILES,
    OFFSETS_SOCK_COMMON, OFFSETS_SOCK_ENDPOINTS,
};

use crate::{
    host::owners::Snapshot,
    kernel::btf::{self, Btf},
    kernel::event::KernelReasons,
    kernel::tracefs::{self, Format, LayoutError},
};

/// The eBPF object built by build.rs; empty when the eBPF toolchain was missing.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpwatch"));

/// Failures a user can act on, each worded as one sentence.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this tcpwatch binary was built without its eBPF programs; run `cargo xtask setup` and rebuild"
    )]
    NoObject,
    #[error(
        "tcpwatch needs root, or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN, to load its eBPF programs"
    )]
    NotPrivileged,
    #[error("tracefs is not mounted and mounting it on {path} failed: {source}")]
    Tracefs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("this kernel has no tracepoint {0}, which tcpwatch needs")]
    MissingTracepoint(&'static str),
    #[error("cannot read the format of tracepoint {name}: {source}")]
    ReadFormat {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("unexpected layout of tracepoint {name}: {source}")]
    Layout {
        name: &'static str,
        source: LayoutError,
    },
    #[error("this kernel does not support BPF (the bpf() system call is missing or disabled)")]
    NoBpf,
    #[error("the kernel refused tcpwatch's eBPF programs: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("could not attach to tracepoint {name}: {source}")]
    Attach {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF object lacks {0}")]
    Missing(&'static str),
    #[error("eBPF map error: {0}")]
    Map(#[from] aya::maps::MapError),
}

/// A tracepoint tcpwatch attaches to.
struct Hook {
    category: &'static str,
    name: &'static str,
    /// Program name in the object (the Rust function name).
    program: &'static str,
    /// The same hook as a raw tracepoint program, reading the socket
    /// itself: preferred where BTF gives the offsets (the kernel then skips
    /// filling a trace record on every hit, the classic tracepoint's own
    /// cost, and guards recursion per program rather than per CPU).
    raw: Option<&'static str>,
    required: bool,
}

const HOOKS: [Hook; 11] = [
    Hook {
        category: "sock",
        name: "inet_sock_set_state",
        program: "inet_sock_set_state",
        raw: Some("inet_sock_set_state_raw"),
        required: true,
    },
    Hook {
        category: "tcp",
        name: "tcp_destroy_sock",
        program: "tcp_destroy_sock",
        raw: Some("tcp_destroy_sock_raw"),
        required: false,
    },
    Hook {
        category: "tcp",
        name: "tcp_retransmit_skb",
        program: "tcp_retransmit_skb",
        raw: None,
        required: false,
    },
    Hook {
        category: "tcp",
        name: "tcp_retransmit_synack",
        program: "tcp_retransmit_synack",
        raw: None,
        required: false,
    },
    Hook {
        category: "tcp",
        name: "tcp_send_reset",
        program: "tcp_send_reset",
        raw: None,
        required: false,
    },
    Hook {
        category: "tcp",
        name: "tcp_receive_reset",
        program: "tcp_receive_reset",
        raw: None,
        required: false,
    },
    Hook {
        category: "syscalls",
        name: "sys_exit_accept4",
        program: "sys_exit_accept4",
        raw: None,
        required: false,
    },
    Hook {
        category: "syscalls",
        name: "sys_exit_accept",
        program: "sys_exit_accept",
        raw: None,
        required: false,
    },
    Hook {
        category: "sock",
        name: "sock_send_length",
        program: "sock_send_length",
        raw: None,
        required: false,
    },
    Hook {
        category: "sock",
        name: "sock_recv_length",
        program: "sock_recv_length",
        raw: None,
        required: false,
    },
    Hook {
        category: "skb",
        name: "kfree_skb",
        program: "kfree_skb",
        raw: None,
        required: false,
    },
];

/// Sizes of the kernel-side maps.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Ring buffer size in bytes (rounded up to a power of two pages).
    pub ring_bytes: u32,
    /// Turn on the kernel's run-time statistics of BPF programs while
    /// tcpwatch runs (BPF_ENABLE_STATS): each program's run count and time,
    /// for `tcpwatch_bpf_program_*`. Costs two clock reads per run.
    pub program_stats: bool,
    /// Sockets whose owner the kernel remembers.
    pub max_socks: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_bytes: tcpwatch_common::DEFAULT_RING_BYTES,
            max_socks: tcpwatch_common::DEFAULT_MAX_SOCKS,
            program_stats: false,
        }
    }
}

/// The loaded and attached programs with their maps.
pub struct Probe {
    /// Dropping it detaches the programs.
    pub ebpf: Ebpf,
    pub events: RingBuf<MapData>,
    pub counters: CounterReader,
    pub reasons: KernelReasons,
    /// The tracepoints attached, each marked ` (raw)` when its raw
    /// tracepoint program runs.
    pub attached: Vec<String>,
    /// Owners of the sockets that existed when tcpwatch started.
    pub snapshot: Snapshot,
    /// What the owners' cgroups are (units, containers), learnt since.
    pub units: crate::host::cgroup::Units,
}

/// Reads the kernel-side counters.
pub struct CounterReader {
    map: PerCpuArray<MapData, u64>,
    transitions: PerCpuArray<MapData, u64>,
    retransmits: PerCpuArray<MapData, u64>,
    resets: PerCpuArray<MapData, u64>,
    histograms: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    ring_bytes: u32,
    /// The attached programs by name in the object, for their run statistics.
    programs: Vec<(&'static str, aya::programs::ProgramFd)>,
    /// Holds the kernel's run-time statistics on while it is open.
    _stats: Option<std::os::fd::OwnedFd>,
}

/// One program's run statistics (`bpf_prog_info`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Runs counted while the kernel's statistics were on.
    pub runs: u64,
    /// Their total run time in nanoseconds.
    pub run_ns: u64,
    /// Runs the kernel skipped (recursion protection), 5.12+.
    pub recursion_misses: u64,
}

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub ringbuf_full: u64,
    pub retransmit_not_sent: u64,
    pub read_failed: u64,
    pub emitted: u64,
    /// Program runs the kernel skipped because another BPF program was
    /// already running on that CPU (an interrupt nested inside it): events
    /// that never reached tcpwatch's programs at all.
    pub recursion_misses: u64,
    /// The most unread bytes the ring buffer held since the last
    /// [`CounterReader::reset_ring_peak`], and its size.
    pub ring_peak_bytes: u64,
    pub ring_bytes: u64,
    /// Drops counted by reason but not sent as events (a CPU's budget of
    /// drop events was spent).
    pub drop_events_limited: u64,
}

impl CounterReader {
    /// Starts a new window for the ring buffer's peak fill.
    pub fn reset_ring_peak(&mut self) -> std::io::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zeros =
            aya::maps::PerCpuValues::try_from(vec![0u64; cpus]).map_err(std::io::Error::other)?;
        self.map
            .set(counter::RING_PEAK_BYTES, zeros, 0)
            .map_err(std::io::Error::other)
    }

    pub fn read(&self) -> Result<Counters, aya::maps::MapError> {
        let sum = |index: u32| -> Result<u64, aya::maps::MapError> {
            Ok(self.map.get(&index, 0)?.iter().sum())
        };
        Ok(Counters {
            ringbuf_full: sum(counter::RINGBUF_FULL)?,
            retransmit_not_sent: sum(counter::RETRANSMIT_NOT_SENT)?,
            read_failed: sum(counter::READ_FAILED)?,
            emitted: sum(counter::EMITTED)?,
            drop_events_limited: sum(counter::DROP_EVENTS_LIMITED)?,
            ring_peak_bytes: self
                .map
                .get(&counter::RING_PEAK_BYTES, 0)?
                .iter()
                .copied()
                .max()
                .unwrap_or(0),
            ring_bytes: u64::from(self.ring_bytes),
            recursion_misses: self
                .programs
                .iter()
                .map(|(_, p)| program_stats(p.as_fd()).map_or(0, |s| s.recursion_misses))
                .sum(),
        })
    }

    /// Each attached program's run statistics, by its name in the object.
    pub fn programs(&self) -> Vec<(&'static str, ProgramStats)> {
        self.programs
            .iter()
            .filter_map(|(name, fd)| program_stats(fd.as_fd()).ok().map(|s| (*name, s)))
            .collect()
    }
}

/// The ring buffer as a tokio reactor source, readable when events wait.
/// Needs a running tokio runtime.
pub fn async_ring(
    events: RingBuf<MapData>,
) -> std::io::Result<tokio::io::unix::AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the RingBuf owns its map's fd, which stays open and unchanged
    // until the AsyncFd (and the RingBuf inside it) is dropped.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)
}

/// The longest a record waits in the ring buffer before the consumer looks.
pub const MAX_DRAIN_DELAY: Duration = Duration::from_millis(50);

/// Unread bytes that make the kernel wake the consumer: an eighth of the
/// ring. Below it records wait for the next poll (at most
/// [`MAX_DRAIN_DELAY`]), so a busy host costs a wake-up per few thousand
/// records instead of one per record, with room left for a burst.
pub fn wakeup_bytes(ring_bytes: u32) -> u64 {
    u64::from(ring_bytes / 8).max(1)
}

/// Waits until the kernel wakes the consumer or [`MAX_DRAIN_DELAY`] has
/// passed, and returns the ring buffer to drain (possibly empty).
pub async fn readable(
    ring: &mut tokio::io::unix::AsyncFd<RingBuf<MapData>>,
) -> std::io::Result<&mut RingBuf<MapData>> {
    // Readiness is cleared before draining, so records that arrive while the
    // caller drains wake the next wait.
    if let Ok(guard) = tokio::time::timeout(MAX_DRAIN_DELAY, ring.readable_mut()).await {
        guard?.clear_ready();
    }
    Ok(ring.get_mut())
}

/// Totals the kernel aggregates in its own maps, with no event per count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelTotals {
    /// (old state, new state, count), non-zero only.
    pub transitions: Vec<(u8, u8, u64)>,
    /// By `tcpwatch_common::phase`.
    pub retransmits: [u64; 4],
    /// (reason, count), non-zero only.
    pub resets_sent: Vec<(u16, u64)>,
    pub resets_received: u64,
    /// By `tcpwatch_common::hist`: per-bucket counts, the overflow bucket,
    /// then the sum in nanoseconds (see `tcpwatch_common::HIST_SLOTS`).
    pub histograms: [[u64; HIST_SLOTS as usize]; hist::COUNT as usize],
    /// TCP segments dropped for a known socket: (reason, count), non-zero only.
    pub drops: Vec<(u16, u64)>,
}

impl CounterReader {
    fn sum(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
        map.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Reads the aggregated totals (cheap: a few hundred map lookups).
    pub fn totals(&self) -> KernelTotals {
        let mut t = KernelTotals::default();
        for index in 0..tcpwatch_common::TRANSITIONS_LEN {
            let n = Self::sum(&self.transitions, index);
            if n > 0 {
                t.transitions
                    .push(((index >> 4) as u8, (index & 15) as u8, n));
            }
        }
        for (i, slot) in t.retransmits.iter_mut().enumerate() {
            *slot = Self::sum(&self.retransmits, i as u32);
        }
        for reason in 0..tcpwatch_common::RESETS_RECEIVED_INDEX {
            let n = Self::sum(&self.resets, reason);
            if n > 0 {
                t.resets_sent.push((reason as u16, n));
            }
        }
        t.resets_received = Self::sum(&self.resets, tcpwatch_common::RESETS_RECEIVED_INDEX);
        for reason in 0..tcpwatch_common::DROPS_LEN {
            let n = Self::sum(&self.drops, reason);
            if n > 0 {
                t.drops.push((reason as u16, n));
            }
        }
        for (h, slots) in t.histograms.iter_mut().enumerate() {
            for (i, slot) in slots.iter_mut().enumerate() {
                *slot = Self::sum(&self.histograms, h as u32 * HIST_SLOTS + i as u32);
            }
        }
        t
    }
}

/// A program's `bpf_prog_info` run count, run time and recursion misses
/// (the latter Linux 5.12+), which aya does not all expose: read with
/// BPF_OBJ_GET_INFO_BY_FD.
fn program_stats(fd: BorrowedFd<'_>) -> std::io::Result<ProgramStats> {
    use aya_obj::generated::{bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, bpf_prog_info};
    // The `info` member of union bpf_attr (include/uapi/linux/bpf.h).
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is a plain C struct for which all zeroes is valid.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: &mut info as *mut bpf_prog_info as u64,
    };
    // SAFETY: attr points at a live InfoAttr; the kernel writes at most
    // info_len bytes into `info`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ProgramStats {
        runs: info.run_cnt,
        run_ns: info.run_time_ns,
        recursion_misses: info.recursion_misses,
    })
}

/// Turns on the kernel's run-time statistics of BPF programs for as long
/// as the returned descriptor is open (BPF_ENABLE_STATS with
/// BPF_STATS_RUN_TIME, Linux 5.8+; needs CAP_SYS_ADMIN), as bpftop does:
/// nothing is left changed when tcpwatch exits.
fn enable_program_stats() -> std::io::Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| e.io_error)
}

fn check_privileges() -> Result<(), LoadError> {
    if crate::kernel::privilege::can_load_programs() {
        Ok(())
    } else {
        Err(LoadError::NotPrivileged)
    }
}

/// Finds the tracefs `events` directory, mounting tracefs where it is missing.
pub fn tracefs_events() -> Result<PathBuf, LoadError> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let events = Path::new(dir).join("events");
        if events.join("sock").is_dir() || events.join("tcp").is_dir() {
            return Ok(events);
        }
    }
    let target = PathBuf::from("/sys/kernel/tracing");
    rustix::mount::mount(
        "nodev",
        &target,
        "tracefs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(|e| LoadError::Tracefs {
        path: target.clone(),
        source: e.into(),
    })?;
    warn!("mounted tracefs on {}", target.display());
    Ok(target.join("events"))
}

fn read_format(events: &Path, hook: &Hook) -> Result<Option<Format>, LoadError> {
    let path = events.join(hook.category).join(hook.name).join("format");
    match fs::read_to_string(&path) {
        Ok(text) => Format::parse(&text)
            .map(Some)
            .map_err(|source| LoadError::Layout {
                name: hook.name,
                source,
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if hook.required {
                Err(LoadError::MissingTracepoint(hook.name))
            } else {
                // Expected on older kernels (README, Supported kernels, says
                // what each lacks): not worth a warning at every start.
                info!(
                    "this kernel has no tracepoint {}:{}; skipping it",
                    hook.category, hook.name
                );
                Ok(None)
            }
        }
        Err(source) => Err(LoadError::ReadFormat {
            name: hook.name,
            source,
        }),
    }
}

/// What start-up learnt about the running kernel.
pub struct Discovery {
    pub layout: Layout,
    pub reasons: KernelReasons,
    /// `category:name` of the tracepoints this kernel has.
    pub tracepoints: Vec<String>,
    hooks: Vec<&'static Hook>,
}

/// Reads every hook's format from tracefs `events` and the kernel's BTF, and
/// fills the layout the programs get.
pub fn discover(events: &Path) -> Result<Discovery, LoadError> {
    let mut layout = Layout::absent();
    let mut reasons = KernelReasons::default();
    let mut drop_names = None;
    let mut present = Vec::new();
    for hook in &HOOKS {
        let Some(format) = read_format(events, hook)? else {
            continue;
        };
        let wrap = |source| LoadError::Layout {
            name: hook.name,
            source,
        };
        match hook.name {
            "inet_sock_set_state" => {
                layout.set_state = tracefs::set_state(&format).map_err(wrap)?
            }
            "tcp_destroy_sock" => layout.destroy_sock = tracefs::event_sk(&format).map_err(wrap)?,
            "tcp_retransmit_skb" => {
                layout.retransmit_skb = tracefs::retransmit_skb(&format).map_err(wrap)?
            }
            "tcp_retransmit_synack" => {
                layout.retransmit_synack = tracefs::retransmit_synack(&format).map_err(wrap)?
            }
            "tcp_send_reset" => {
                layout.send_reset = tracefs::send_reset(&format).map_err(wrap)?;
                reasons = KernelReasons::new(format.symbols("reason"));
            }
            "tcp_receive_reset" => {
                layout.receive_reset = tracefs::event_sk(&format).map_err(wrap)?
            }
            "sys_exit_accept4" | "sys_exit_accept" => {
                layout.accept_ret = tracefs::syscall_ret(&format).map_err(wrap)?
            }
            "sock_send_length" | "sock_recv_length" => {
                layout.sock_io = tracefs::sock_io(&format).map_err(wrap)?
            }
            "kfree_skb" => match tracefs::kfree_skb(&format).map_err(wrap)? {
                Some(l) => {
                    layout.kfree_skb = l;
                    drop_names = Some(format.symbols("reason"));
                }
                None => {
                    warn!("this kernel's skb:kfree_skb does not name the socket a segment was dropped for (rx_sk, Linux 6.12+): TCP drops are not counted by reason");
                    continue;
                }
            },
            _ => continue,
        }
        present.push(hook);
    }
    match fs::read("/sys/kernel/btf/vmlinux")
        .map_err(|e| e.to_string())
        .and_then(|data| Btf::parse(&data).map_err(|e| e.to_string()))
        .and_then(|btf| btf::kernel_offsets(&btf).map_err(|e| e.to_string()))
    {
        Ok(offsets) => layout.kernel = offsets,
        Err(e) => warn!("network namespace ids unavailable (kernel BTF: {e}); reporting netns 0"),
    }
    if layout.kernel.valid & OFFSETS_FILES == 0 {
        // Without the fd -> socket path the accept hooks can do nothing.
        present.retain(|h| h.category != "syscalls");
    }
    // The drop program reads the socket's endpoints from `struct sock_common`.
    let drops_readable = OFFSETS_SOCK_COMMON | OFFSETS_SOCK_ENDPOINTS;
    if layout.kernel.valid & drops_readable != drops_readable {
        if drop_names.is_some() {
            info!("kernel BTF lacks the socket offsets drop events need: TCP drops are not counted by reason");
        }
        drop_names = None;
        present.retain(|h| h.category != "skb");
    }
    // A developer's knob, for measuring what an optional hook costs
    // (`cargo xtask bench`): names of tracepoints to leave alone, or
    // `optional` for every one tcpwatch can run without.
    if let Ok(skip) = std::env::var("TCPWATCH_SKIP_HOOKS") {
        present.retain(|h| {
            h.required
                || !skip
                    .split(',')
                    .any(|name| name.trim() == "optional" || name.trim() == h.name)
        });
    }
    if present.iter().any(|h| h.category == "skb") {
        if let Some(names) = drop_names {
            reasons = reasons.with_drops(names);
        }
    }
    let tracepoints = present
        .iter()
        .map(|h| format!("{}:{}", h.category, h.name))
        .collect();
    Ok(Discovery {
        layout,
        reasons,
        tracepoints,
        hooks: present,
    })
}

fn raise_memlock() {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let unlimited = Rlimit {
        current: None,
        maximum: None,
    };
    if let Err(e) = setrlimit(Resource::Memlock, unlimited) {
        // Kernels from 5.11 account BPF memory to the cgroup instead.
        debug!("could not raise RLIMIT_MEMLOCK: {e}");
    }
}

/// Loads and attaches `hook`'s classic tracepoint program; returns a copy of
/// its descriptor for run statistics (or why there is none).
fn attach_classic(
    ebpf: &mut Ebpf,
    hook: &Hook,
) -> Result<Result<ProgramFd, ProgramError>, LoadError> {
    let wrap = |source| LoadError::Attach {
        name: hook.name,
        source,
    };
    let program: &mut TracePoint = ebpf
        .program_mut(hook.program)
        .ok_or(LoadError::Missing(hook.program))?
        .try_into()
        .map_err(wrap)?;
    program.load().map_err(wrap)?;
    program.attach(hook.category, hook.name).map_err(wrap)?;
    Ok(program
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into)))
}

/// Loads and attaches the raw tracepoint program `program` on tracepoint
/// `name`; a failure leaves the classic program to be attached instead.
fn attach_raw(
    ebpf: &mut Ebpf,
    program: &'static str,
    name: &str,
) -> Result<ProgramFd, ProgramError> {
    let Some(p) = ebpf.program_mut(program) else {
        return Err(ProgramError::UnexpectedProgramType);
    };
    let p: &mut RawTracePoint = p.try_into()?;
    p.load()?;
    p.attach(name)?;
    Ok(p.fd()?.try_clone()?)
}

/// Loads the programs, hands them the discovered layout and attaches them.
pub fn load(options: LoadOptions) -> Result<Probe, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    check_privileges()?;
    raise_memlock();
    let events = tracefs_events()?;
    let Discovery {
        layout,
        reasons,
        hooks,
        ..
    } = discover(&events)?;

    // A developer's knob (`cargo xtask bench`): the floor under tcpwatch's
    // cost, its lifecycle programs attached but returning at once.
    let empty_lifecycle = u32::from(std::env::var_os("TCPWATCH_BENCH_EMPTY_LIFECYCLE").is_some());
    if empty_lifecycle != 0 {
        warn!("benchmark experiment: the lifecycle programs do nothing; nothing is observed");
    }
    let mut ebpf = EbpfLoader::new()
        .override_global(GLOBAL_LAYOUT, &layout, true)
        .override_global(GLOBAL_EMPTY_LIFECYCLE_PROGRAMS, &empty_lifecycle, true)
        .override_global(GLOBAL_WAKEUP_BYTES, &wakeup_bytes(options.ring_bytes), true)
        .override_global(
            GLOBAL_DROP_NOT_SPECIFIED,
            &reasons
                .drop_number("NOT_SPECIFIED")
                .map_or(u32::MAX, u32::from),
            true,
        )
        .map_max_entries(MAP_EVENTS, options.ring_bytes)
        .map_max_entries(MAP_SOCKS, options.max_socks)
        .load(OBJECT)
        .map_err(|e| match &e {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::ENOSYS) =>
            {
                LoadError::NoBpf
            }
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.kind() == ErrorKind::PermissionDenied =>
            {
                LoadError::NotPrivileged
            }
            _ => LoadError::Load(e),
        })?;

    let mut attached = Vec::new();
    let mut programs = Vec::new();
    // A developer's knob, for measuring the raw tracepoints' gain
    // (`cargo xtask bench`) and testing the fallback.
    let prefer_raw = layout.kernel.valid & OFFSETS_SOCK_ENDPOINTS != 0
        && std::env::var_os("TCPWATCH_CLASSIC_TRACEPOINTS").is_none();
    for hook in hooks {
        let raw = match hook.raw.filter(|_| prefer_raw) {
            Some(raw) => {
                match attach_raw(&mut ebpf, raw, hook.name) {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        warn!("cannot attach {} as a raw tracepoint ({e}); using the classic tracepoint", hook.name);
                        None
                    }
                }
            }
            None => None,
        };
        let (program, fd) = match (raw, hook.raw) {
            (Some(fd), Some(name)) => {
                debug!("{} attached as a raw tracepoint", hook.name);
                (name, Ok(fd))
            }
            _ => (hook.program, attach_classic(&mut ebpf, hook)?),
        };
        attached.push(if program == hook.program {
            hook.name.to_owned()
        } else {
            format!("{} (raw)", hook.name)
        });
        if let Ok(fd) = fd {
            match program_stats(fd.as_fd()) {
                Ok(_) => programs.push((program, fd)),
                Err(e) => warn!(
                    "cannot read run statistics of {}: {e}; missed events go uncounted",
                    hook.name
                ),
            }
        }
    }

    // After attaching, so no socket falls between the snapshot and the programs.
    let units = crate::host::cgroup::Units::system();
    let snapshot = crate::host::owners::take(&units);
    seed_listeners(&mut ebpf, &snapshot)?;

    let events = RingBuf::try_from(
        ebpf.take_map(MAP_EVENTS)
            .ok_or(LoadError::Missing(MAP_EVENTS))?,
    )?;
    let counters = PerCpuArray::try_from(
        ebpf.take_map(MAP_COUNTERS)
            .ok_or(LoadError::Missing(MAP_COUNTERS))?,
    )?;
    let mut per_cpu = |name: &'static str| -> Result<PerCpuArray<MapData, u64>, LoadError> {
        Ok(PerCpuArray::try_from(
            ebpf.take_map(name).ok_or(LoadError::Missing(name))?,
        )?)
    };
    let transitions = per_cpu(tcpwatch_common::MAP_TRANSITIONS)?;
    let retransmits = per_cpu(tcpwatch_common::MAP_RETRANSMITS)?;
    let resets = per_cpu(tcpwatch_common::MAP_RESETS)?;
    let histograms = per_cpu(tcpwatch_common::MAP_HISTOGRAMS)?;
    let drops = per_cpu(tcpwatch_common::MAP_DROPS)?;
    let stats = if options.program_stats {
        enable_program_stats()
            .inspect_err(|e| warn!("cannot turn on the kernel's BPF run statistics ({e}); tcpwatch_bpf_program_* stay at 0"))
            .ok()
    } else {
        None
    };
    // Loading modules needs CAP_SYS_MODULE, which is about to go.
    if let Err(why) = crate::host::sock_diag::ensure_loaded() {
        debug!("sock_diag modules not loaded: {why}");
    }
    // Loaded, attached, seeded: from here on tcpwatch needs far less.
    match crate::kernel::privilege::drop_after_attach() {
        Ok(left) => info!(
            "capabilities after attach: {}",
            crate::kernel::privilege::names(left).join(", ")
        ),
        Err(e) => warn!("{e}; keeping the privileges tcpwatch started with"),
    }
    Ok(Probe {
        ebpf,
        events,
        counters: CounterReader {
            map: counters,
            transitions,
            retransmits,
            resets,
            histograms,
            drops,
            ring_bytes: options.ring_bytes,
            programs,
            _stats: stats,
        },
        reasons,
        attached,
        snapshot,
        units,
    })
}

/// Tells the kernel side who owns the listeners that predate tcpwatch, so
/// the connections they accept are attributed from their first event. An
/// owner the programs bound themselves since attaching is kept.
fn seed_listeners(ebpf: &mut Ebpf, snapshot: &Snapshot) -> Result<(), LoadError> {
    let mut map: aya::maps::HashMap<_, ListenerKey, SockOwner> = aya::maps::HashMap::try_from(
        ebpf.map_mut(MAP_LISTENERS)
            .ok_or(LoadError::Missing(MAP_LISTENERS))?,
    )?;
    const BPF_NOEXIST: u64 = 1;
    for (netns, port, owner) in &snapshot.listeners {
        let mut comm = [0u8; COMM_LEN];
        let len = owner.comm.len().min(COMM_LEN - 1);
        comm[..len].copy_from_slice(&owner.comm.as_bytes()[..len]);
        let value = SockOwner {
            last_change_ns: 0,
            born_ns: 0,
            netns: netns.0,
            pid: owner.pid,
            source: owner_source::STARTUP,
            state: tcpwatch_common::tcp_state::LISTEN,
            _pad: [0; 6],
            comm,
            cgroup: owner.cgroup,
        };
        let key = ListenerKey {
            netns: netns.0,
            port: *port,
            _pad: 0,
        };
        // EEXIST means the programs already know a fresher owner.
        let _ = map.insert(key, value, BPF_NOEXIST);
    }
    Ok(())
}
