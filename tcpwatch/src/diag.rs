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
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
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
                        });
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(DiagError::Kernel(e.code.map_or(0, |c| c.get())));
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
