//! Decoding of the raw events the kernel programs send.
use crate::tcp::NetnsId;
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub use crate::tcp::TcpState;
use tcpwatch_common::{kind, owner_source, Event, AF_INET, AF_INET6, DURATION_UNKNOWN};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event")]
    Truncated(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("unknown TCP state {0}")]
    UnknownState(u8),
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
    #[error("unknown owner source {0}")]
    UnknownOwnerSource(u8),
}

/// What an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    State,
    Retransmit,
    SynackRetransmit,
    ResetSent,
    ResetReceived,
    /// Another process took the socket (accept, send, receive): no
    /// endpoints, the new owner only.
    Owner,
    /// The kernel dropped a segment for the socket; `reason` is the drop
    /// reason's number on this kernel (see [`KernelReasons::drop_name`]).
    Drop,
}

impl EventKind {
    /// The stable name used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Retransmit => "retransmit",
            EventKind::SynackRetransmit => "synack_retransmit",
            EventKind::ResetSent => "reset_sent",
            EventKind::ResetReceived => "reset_received",
            EventKind::Owner => "owner",
            EventKind::Drop => "drop",
        }
    }
}

impl TryFrom<u8> for EventKind {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            kind::STATE => EventKind::State,
            kind::RETRANSMIT => EventKind::Retransmit,
            kind::SYNACK_RETRANSMIT => EventKind::SynackRetransmit,
            kind::RESET_SENT => EventKind::ResetSent,
            kind::RESET_RECEIVED => EventKind::ResetReceived,
            kind::OWNER => EventKind::Owner,
            kind::DROP => EventKind::Drop,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// How the event's owner was learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerSource {
    Unknown,
    Connect,
    Listen,
    Listener,
    Close,
    Startup,
    Accept,
    Io,
}

impl OwnerSource {
    pub fn name(self) -> &'static str {
        match self {
            OwnerSource::Unknown => "unknown",
            OwnerSource::Connect => "connect",
            OwnerSource::Listen => "listen",
            OwnerSource::Listener => "listener",
            OwnerSource::Close => "close",
            OwnerSource::Startup => "startup",
            OwnerSource::Accept => "accept",
            OwnerSource::Io => "io",
        }
    }
}

impl TryFrom<u8> for OwnerSource {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            owner_source::NONE => OwnerSource::Unknown,
            owner_source::CONNECT => OwnerSource::Connect,
            owner_source::LISTEN => OwnerSource::Listen,
            owner_source::LISTENER => OwnerSource::Listener,
            owner_source::CLOSE => OwnerSource::Close,
            owner_source::STARTUP => OwnerSource::Startup,
            owner_source::ACCEPT => OwnerSource::Accept,
            owner_source::IO => OwnerSource::Io,
            other => return Err(DecodeError::UnknownOwnerSource(other)),
        })
    }
}

/// A decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub skaddr: u64,
    pub kind: EventKind,
    pub pid: u32,
    pub comm: String,
    pub owner: OwnerSource,
    pub netns: NetnsId,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// State before a transition, or the socket's state for other kinds
    /// (`None` when the kernel did not say).
    pub old_state: Option<TcpState>,
    pub new_state: Option<TcpState>,
    /// Nanoseconds spent in `old_state`, when the previous transition was seen.
    pub old_state_ns: Option<u64>,
    /// `enum sk_rst_reason` of a sent reset; `enum skb_drop_reason` of a drop.
    pub reason: u16,
    /// A closing transition made in an exiting task: the process died or
    /// exited holding the socket, and the kernel closed it (not close()).
    pub owner_exiting: bool,
    /// For a received reset: whether data was in flight, unacknowledged,
    /// when it came (`None` where the kernel's offsets are unknown).
    pub outstanding: Option<bool>,
    /// For a received reset: seconds since the peer was last heard (its
    /// last timestamped segment); `None` without timestamps or offsets.
    pub silence_s: Option<u16>,
    /// For a received reset: it carried a TCP timestamp, so a live stack
    /// that knows the connection sent it (never a host that lost it).
    pub reset_timestamped: bool,
    /// The owner's cgroup v2 id, taken by the kernel where it bound the
    /// owner (0 when unknown).
    pub cgroup: u64,
    /// What that cgroup is (a unit, a container), filled in by the
    /// observer; None when unknown.
    pub workload: Option<std::sync::Arc<crate::host::cgroup::Workload>>,
}

impl TcpEvent {
    /// A state event with nothing known: no socket, owner, endpoints or
    /// states. Tests and the fuzzer build their events from it with struct
    /// update syntax (`TcpEvent { kind, pid, ..TcpEvent::blank() }`), so a
    /// field added to events needs no edit of each.
    pub fn blank() -> TcpEvent {
        TcpEvent {
            ts_ns: 0,
            skaddr: 0,
            kind: EventKind::State,
            pid: 0,
            comm: String::new(),
            owner: OwnerSource::Unknown,
            netns: NetnsId(0),
            saddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            sport: 0,
            daddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dport: 0,
            old_state: None,
            new_state: None,
            old_state_ns: None,
            reason: 0,
            owner_exiting: false,
            outstanding: None,
            silence_s: None,
            reset_timestamped: false,
            cgroup: 0,
            workload: None,
        }
    }

    /// 4 or 6.
    pub fn family(&self) -> u8 {
        if self.saddr.is_ipv4() {
            4
        } else {
            6
        }
    }
}

fn state_or_none(v: u8) -> Result<Option<TcpState>, DecodeError> {
    if v == 0 {
        Ok(None)
    } else {
        TcpState::try_from(v)
            .map(Some)
            .map_err(|e| DecodeError::UnknownState(e.0))
    }
}

fn comm_string(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<TcpEvent, DecodeError> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    // SAFETY: the length was checked, Event is plain old data (any bit
    // pattern is valid) and read_unaligned has no alignment requirement.
    let raw: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
    let kind = EventKind::try_from(raw.kind)?;
    let (saddr, daddr) = match raw.family {
        AF_INET => {
            let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            (v4(&raw.saddr), v4(&raw.daddr))
        }
        AF_INET6 => (
            IpAddr::V6(Ipv6Addr::from(raw.saddr)),
            IpAddr::V6(Ipv6Addr::from(raw.daddr)),
        ),
        other => return Err(DecodeError::UnknownFamily(other)),
    };
    Ok(TcpEvent {
        ts_ns: raw.ts_ns,
        skaddr: raw.skaddr,
        kind,
        pid: raw.pid,
        comm: comm_string(&raw.comm),
        owner: OwnerSource::try_from(raw.owner_source)?,
        netns: NetnsId(raw.netns),
        saddr,
        sport: raw.sport,
        daddr,
        dport: raw.dport,
        old_state: state_or_none(raw.old_state)?,
        new_state: state_or_none(raw.new_state)?,
        old_state_ns: (raw.old_state_ns != DURATION_UNKNOWN).then_some(raw.old_state_ns),
        // A received reset's `reason` carries the silence instead.
        reason: if kind == EventKind::ResetReceived {
            0
        } else {
            raw.reason
        },
        owner_exiting: raw.flags & tcpwatch_common::event_flag::OWNER_EXITING != 0,
        outstanding: (raw.flags & tcpwatch_common::event_flag::OUTSTANDING_KNOWN != 0)
            .then_some(raw.flags & tcpwatch_common::event_flag::DATA_OUTSTANDING != 0),
        silence_s: (raw.flags & tcpwatch_common::event_flag::SILENCE_KNOWN != 0)
            .then_some(raw.reason),
        reset_timestamped: raw.flags & tcpwatch_common::event_flag::RESET_TIMESTAMPED != 0,
        cgroup: raw.cgroup,
        workload: None,
    })
}

/// The drop reason of a handshake's last ACK that met a full accept queue
/// (`tcp_check_req()`, Linux 6.15+).
pub const LISTEN_OVERFLOW: &str = "TCP_LISTEN_OVERFLOW";

/// The running kernel's names for its reasons, read from tracepoint
/// formats (their numbers change between kernels): `enum sk_rst_reason`
/// from `tcp_send_reset` where it has them, and `enum skb_drop_reason` from
/// `skb:kfree_skb` where tcpwatch counts drops (6.12+, which names the
/// receiving socket).
#[derive(Clone, Debug, Default)]
pub struct KernelReasons {
    resets: BTreeMap<u32, String>,
    /// `None`: drops are not counted on this kernel.
    drops: Option<BTreeMap<u32, String>>,
}

impl KernelReasons {
    pub fn new(resets: BTreeMap<u32, String>) -> Self {
        Self {
            resets,
            drops: None,
        }
    }

    /// With the drop reasons of a kernel whose drops tcpwatch counts.
    pub fn with_drops(mut self, drops: BTreeMap<u32, String>) -> Self {
        self.drops = Some(drops);
        self
    }

    /// The reset reason's kernel name, or its number when the kernel did
    /// not name it. Kernels before 6.10 give no reason: 0 is then the
    /// kernel's own name for it (`SK_RST_REASON_NOT_SPECIFIED`).
    pub fn reset_name(&self, reason: u16) -> String {
        match self.resets.get(&u32::from(reason)) {
            Some(name) => name.clone(),
            None if reason == 0 => "NOT_SPECIFIED".to_owned(),
            None => reason.to_string(),
        }
    }

    /// Whether tcpwatch counts drops on this kernel.
    pub fn drops_counted(&self) -> bool {
        self.drops.is_some()
    }

    /// The drop reason's kernel name (`TCP_ZEROWINDOW`), or its number.
    pub fn drop_name(&self, reason: u16) -> String {
        self.drops
            .as_ref()
            .and_then(|names| names.get(&u32::from(reason)))
            .cloned()
            .unwrap_or_else(|| reason.to_string())
    }

    /// The number this kernel gives the drop reason `name`.
    pub fn drop_number(&self, name: &str) -> Option<u16> {
        self.drops
            .as_ref()?
            .iter()
            .find(|(_, n)| *n == name)
            .and_then(|(number, _)| u16::try_from(*number).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpwatch_common::tcp_state;

    fn raw(kind: u8, family: u16) -> Event {
        let mut e = Event::zeroed();
        e.ts_ns = 42;
        e.kind = kind;
        e.family = family;
        e.old_state = tcp_state::SYN_SENT;
        e.new_state = tcp_state::ESTABLISHED;
        e.old_state_ns = 1_500_000;
        e.pid = 7;
        e.owner_source = owner_source::CONNECT;
        e.sport = 40000;
        e.dport = 80;
        e.comm[..4].copy_from_slice(b"curl");
        e
    }

    fn bytes(e: &Event) -> Vec<u8> {
        // SAFETY: Event is repr(C) plain old data without padding.
        unsafe {
            std::slice::from_raw_parts(
                (e as *const Event).cast::<u8>(),
                std::mem::size_of::<Event>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_an_ipv4_state_event() {
        let mut e = raw(kind::STATE, AF_INET);
        e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let ev = decode(&bytes(&e)).unwrap();
        assert_eq!(ev.kind, EventKind::State);
        assert_eq!(ev.saddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ev.daddr, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!((ev.sport, ev.dport, ev.pid), (40000, 80, 7));
        assert_eq!(ev.comm, "curl");
        assert_eq!(ev.family(), 4);
        assert_eq!(ev.old_state, Some(TcpState::SynSent));
        assert_eq!(ev.new_state, Some(TcpState::Established));
        assert_eq!(ev.old_state_ns, Some(1_500_000));
        assert_eq!(ev.owner, OwnerSource::Connect);
        assert_eq!((ev.cgroup, ev.workload.clone()), (0, None));
        e.cgroup = 4242;
        assert_eq!(decode(&bytes(&e)).unwrap().cgroup, 4242);
    }

    #[test]
    fn decodes_ipv6_and_unknown_durations() {
        let mut e = raw(kind::RESET_RECEIVED, AF_INET6);
        e.saddr = Ipv6Addr::LOCALHOST.octets();
        e.old_state_ns = DURATION_UNKNOWN;
        e.old_state = 0;
        e.new_state = 0;
        let ev = decode(&bytes(&e)).unwrap();
        assert_eq!(ev.saddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(ev.family(), 6);
        assert_eq!(ev.old_state_ns, None);
        assert_eq!(ev.old_state, None);
    }

    #[test]
    fn rejects_bad_records() {
        let e = raw(kind::STATE, AF_INET);
        let short = tcpwatch_common::EVENT_BYTES - 1;
        assert_eq!(
            decode(&bytes(&e)[..short]),
            Err(DecodeError::Truncated(short))
        );
        assert_eq!(decode(&[]), Err(DecodeError::Truncated(0)));
        assert_eq!(
            decode(&bytes(&raw(99, AF_INET))),
            Err(DecodeError::UnknownKind(99))
        );
        assert_eq!(
            decode(&bytes(&raw(kind::STATE, 1))),
            Err(DecodeError::UnknownFamily(1))
        );
        let mut bad_state = raw(kind::STATE, AF_INET);
        bad_state.new_state = 13;
        assert_eq!(
            decode(&bytes(&bad_state)),
            Err(DecodeError::UnknownState(13))
        );
        let mut bad_owner = raw(kind::STATE, AF_INET);
        bad_owner.owner_source = 9;
        assert_eq!(
            decode(&bytes(&bad_owner)),
            Err(DecodeError::UnknownOwnerSource(9))
        );
    }

    #[test]
    fn state_names_round_trip() {
        for (i, st) in TcpState::ALL.iter().enumerate() {
            assert_eq!(TcpState::try_from(i as u8 + 1), Ok(*st));
            assert_eq!(st.name().parse::<TcpState>(), Ok(*st));
        }
        assert_eq!("time-wait".parse::<TcpState>(), Ok(TcpState::TimeWait));
        assert_eq!(
            "TCP_CLOSE_WAIT".parse::<TcpState>(),
            Ok(TcpState::CloseWait)
        );
        assert!("bogus".parse::<TcpState>().is_err());
        assert_eq!(TcpState::try_from(0), Err(crate::tcp::UnknownState(0)));
    }

    #[test]
    fn reset_reasons_fall_back_to_numbers() {
        let reasons = KernelReasons::new([(9, "TCP_TIMEWAIT_SOCKET".to_owned())].into());
        assert_eq!(reasons.reset_name(9), "TCP_TIMEWAIT_SOCKET");
        assert_eq!(reasons.reset_name(77), "77");
    }
}
