//! The kernel's own list of TCP sockets, through NETLINK_SOCK_DIAG (what
//! `ss` reads): ground truth for the model, and the only place TIME_WAIT
//! sockets can be seen. A netlink socket lists the sockets of the network
//! namespace it was created in; [`crate::netns::in_netns`] runs a dump in
//! another one.
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, SocketIdBuffer, StateFlags, Timer},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::event::TcpState;

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("cannot open a sock_diag netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("sock_diag request failed: {0}")]
    Io(std::io::Error),
    #[error("malformed sock_diag reply: {0}")]
    Decode(String),
    #[error("the kernel refused the sock_diag dump (error {0})")]
    Kernel(i32),
    /// ENOENT: no handler for TCP is registered, because the `inet_diag`
    /// and `tcp_diag` modules are not loaded (`sock_diag_lock_handler()` in
    /// net/core/sock_diag.c, `inet_diag_lock_handler()` in
    /// net/ipv4/inet_diag.c).
    #[error("{UNAVAILABLE}")]
    Unavailable,
}

/// What is missing and what stops working without it, in one sentence.
pub const UNAVAILABLE: &str = "the kernel's socket list (sock_diag) is unavailable because the \
inet_diag and tcp_diag modules are not loaded: TIME_WAIT sockets and connections older than \
tcpwatch go unseen and the model is not repaired after lost events, while events, counters, \
settings and findings from events keep working";

/// Loads `inet_diag` and `tcp_diag` when the kernel has no sock_diag handler
/// for TCP; needs CAP_SYS_MODULE, so it runs before tcpwatch gives up its
/// privileges. Ok when sock_diag answers (now or already), else why not.
pub fn ensure_loaded() -> Result<(), String> {
    match dump_tcp() {
        Err(DiagError::Unavailable) => {}
        _ => return Ok(()),
    }
    for module in ["inet_diag", "tcp_diag"] {
        match std::process::Command::new("modprobe")
            .args(["-q", module])
            .status()
        {
            Ok(status) if status.success() => {}
            Ok(status) => return Err(format!("modprobe {module} failed ({status})")),
            Err(e) => return Err(format!("cannot run modprobe {module}: {e}")),
        }
    }
    match dump_tcp() {
        Err(DiagError::Unavailable) => {
            Err("the modules loaded but sock_diag still has no TCP handler".into())
        }
        _ => Ok(()),
    }
}

/// One socket as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub state: TcpState,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// Socket inode (0 for TIME_WAIT and request sockets).
    pub inode: u32,
    /// Time left on a timewait socket's timer (TIME_WAIT, or FIN_WAIT2 of
    /// an orphan), in milliseconds.
    pub time_wait_left_ms: Option<u32>,
}

/// The `idiag_expires` of a timewait socket's reply. The crate decodes its
/// timer as `Timer::TimeWait` without the time the kernel fills in
/// (`inet_twsk_diag_fill()` in net/ipv4/inet_diag.c), so it is read at its
/// place in `struct inet_diag_msg`: after the netlink header, four bytes of
/// family, state, timer and retransmits, and the socket id.
fn time_wait_left_ms(message: &[u8]) -> Option<u32> {
    const NETLINK_HEADER_LEN: usize = 16;
    let at = NETLINK_HEADER_LEN + 4 + std::mem::size_of::<SocketIdBuffer>();
    let raw = message.get(at..at + 4)?;
    Some(u32::from_ne_bytes(raw.try_into().ok()?))
}

/// Every TCP socket (IPv4 and IPv6) of the caller's network namespace.
pub fn dump_tcp() -> Result<Vec<DiagSocket>, DiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(DiagError::Socket)?;
    socket.bind_auto().map_err(DiagError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(DiagError::Socket)?;
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump_family(&mut socket, family, &mut out)?;
    }
    Ok(out)
}

fn dump_family(
    socket: &mut Socket,
    family: u8,
    out: &mut Vec<DiagSocket>,
) -> Result<(), DiagError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0).map_err(DiagError::Io)?;

    let mut receive = vec![0u8; 1 << 16];
    loop {
        let size = socket
            .recv(&mut &mut receive[..], 0)
            .map_err(DiagError::Io)?;
        let mut offset = 0;
        while offset < size {
            let bytes = &receive[offset..size];
            let message = <NetlinkMessage<SockDiagMessage>>::deserialize(bytes)
                .map_err(|e| DiagError::Decode(e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let h = &response.header;
                    // States the kernel does not name are skipped.
                    if let Ok(state) = TcpState::try_from(h.state) {
                        out.push(DiagSocket {
                            state,
                            local: h.socket_id.source_address,
                            local_port: h.socket_id.source_port,
                            remote: h.socket_id.destination_address,
                            remote_port: h.socket_id.destination_port,
                            inode: h.inode,
                            time_wait_left_ms: match h.timer {
                                Some(Timer::TimeWait) => time_wait_left_ms(bytes),
                                _ => None,
                            },
                        });
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(match e.code.map_or(0, |c| c.get()) {
                        code if code == -libc::ENOENT => DiagError::Unavailable,
                        code => DiagError::Kernel(code),
                    });
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_sock_diag::inet::{InetResponse, InetResponseHeader};

    /// The offset agrees with the crate's own encoding of `idiag_expires`
    /// (a retransmit timer keeps its time there, which TIME_WAIT's loses).
    #[test]
    fn reads_expires_where_the_crate_writes_it() {
        let header = InetResponseHeader {
            family: AF_INET,
            state: 1,
            timer: Some(Timer::Retransmit(
                std::time::Duration::from_millis(41_234),
                2,
            )),
            socket_id: SocketId::new_v4(),
            recv_queue: 0,
            send_queue: 0,
            uid: 0,
            inode: 7,
        };
        let mut message = NetlinkMessage::new(
            NetlinkHeader::default(),
            SockDiagMessage::InetResponse(Box::new(InetResponse {
                header,
                nlas: Default::default(),
            }))
            .into(),
        );
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        assert_eq!(time_wait_left_ms(&bytes), Some(41_234));
        assert_eq!(time_wait_left_ms(&bytes[..60]), None);
    }
}
