//! The vocabulary every layer shares: TCP states as the kernel names them,
//! network namespaces, and how an endpoint is written.
use std::{fmt, net::IpAddr, str::FromStr};

use serde::Serialize;

/// A network namespace, named by its inode number: what `/proc/PID/ns/net`
/// links to (`net:[4026531840]`), `ls -i /run/netns/NAME` prints, and the
/// programs read from `net->ns.inum` (an `unsigned int` in the kernel's
/// `struct ns_common`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NetnsId(pub u32);

impl NetnsId {
    /// The namespace of a `/proc/PID/ns/net` (or `/run/netns/NAME`) file's
    /// inode; None for a number the kernel never gives a namespace.
    pub fn from_inode(inode: u64) -> Option<NetnsId> {
        u32::try_from(inode).ok().map(NetnsId)
    }
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for NetnsId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse().map(NetnsId)
    }
}

/// A state number the kernel does not have (`include/net/tcp_states.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown TCP state {0}")]
pub struct UnknownState(pub u8);

/// `127.0.0.1:80` or `[::1]:80`.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Kernel TCP states, named as the kernel names them without `TCP_`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

impl TryFrom<u8> for TcpState {
    type Error = UnknownState;
    fn try_from(v: u8) -> Result<Self, UnknownState> {
        // The kernel numbers states from 1 in this order (include/net/tcp_states.h).
        match v {
            1..=12 => Ok(TcpState::ALL[usize::from(v - 1)]),
            _ => Err(UnknownState(v)),
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TcpState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let wanted = s.trim().to_ascii_uppercase().replace(['-', ' '], "_");
        let wanted = wanted.strip_prefix("TCP_").unwrap_or(&wanted);
        TcpState::ALL
            .into_iter()
            .find(|st| st.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<_> = TcpState::ALL.iter().map(|s| s.name()).collect();
                format!("unknown TCP state `{s}` (one of {})", names.join(", "))
            })
    }
}
