//! The kernel's own list of TCP sockets, through NETLINK_SOCK_DIAG (what
//! `ss` reads): ground truth for the model, and the only place TIME_WAIT
//! sockets can be seen. A netlink socket lists the sockets of the network
//! namespace it was created in; `netns::in_netns` runs a dump in
//! another one.
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, SocketId, SocketIdBuffer, StateFlags, Timer},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::tcp::TcpState;

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
inet_diag and tcp_diag modules are not loaded: tcpwatch reads /proc/net/tcp instead, which is \
slower on hosts with many sockets, gives no listener queue limits, and cannot confirm a peer's \
health (peer_unresponsive and zero_window_stall are not raised), while events, counters, \
settings and the other findings keep working";

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
    /// The pending retransmit, zero-window probe or keep-alive timer.
    pub timer: Option<KernelTimer>,
    /// Receive and send queues (`idiag_rqueue`, `idiag_wqueue`); for a
    /// listener, the accept queue's length and its limit.
    pub recv_queue: u32,
    pub send_queue: u32,
}

/// A socket's pending timer as sock_diag reports it (`idiag_timer`,
/// `idiag_expires`, `idiag_retrans`: `inet_sk_diag_fill()` in
/// net/ipv4/inet_diag.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelTimer {
    /// Retransmission timer; `retransmits` is `icsk_retransmits`, the RTO
    /// timeouts since data was last acknowledged.
    Retransmit {
        expires_ms: u32,
        retransmits: u8,
    },
    /// The persist timer: the peer advertised a zero window and the kernel
    /// probes it (`ICSK_TIME_PROBE0`).
    ZeroWindowProbe {
        expires_ms: u32,
    },
    KeepAlive {
        expires_ms: u32,
    },
}

impl KernelTimer {
    fn of(timer: &Option<Timer>) -> Option<KernelTimer> {
        let ms = |d: &std::time::Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        match timer {
            Some(Timer::Retransmit(d, retransmits)) => Some(KernelTimer::Retransmit {
                expires_ms: ms(d),
                retransmits: *retransmits,
            }),
            Some(Timer::Probe(d)) => Some(KernelTimer::ZeroWindowProbe { expires_ms: ms(d) }),
            Some(Timer::KeepAlive(d)) => Some(KernelTimer::KeepAlive { expires_ms: ms(d) }),
            Some(Timer::TimeWait) | None => None,
        }
    }
}

/// What the kernel knows of one connection's progress: its `tcp_info`
/// (INET_DIAG_INFO) and pending timer. The evidence a finding about a
/// peer's health is checked against before it accuses the peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpHealth {
    pub timer: Option<KernelTimer>,
    /// `tcpi_retransmits`: RTO timeouts since the last acknowledgement.
    pub retransmits: u8,
    /// `tcpi_probes`: zero-window (or keep-alive) probes unanswered.
    pub probes: u8,
    /// `tcpi_backoff`: how many times the RTO was doubled.
    pub backoff: u8,
    /// The current retransmission timeout, backoff included.
    pub rto_us: u32,
    /// Segments sent and not acknowledged.
    pub unacked: u32,
    pub last_data_sent_ms: u32,
    /// Time since data last came from the peer.
    pub last_data_recv_ms: u32,
    /// Time since an ACK last came from the peer.
    pub last_ack_recv_ms: u32,
    /// Bytes the peer acknowledged (4.2+).
    pub bytes_acked: Option<u64>,
    /// The peer's receive window (5.4+).
    pub snd_wnd: Option<u32>,
    /// Bytes written and not yet acknowledged (`idiag_wqueue`).
    pub send_queue: u32,
}

/// Reads the fields of `struct tcp_info` (include/uapi/linux/tcp.h) that
/// exist in `raw`: the struct only grows, so older kernels send a prefix.
pub fn parse_tcp_info(raw: &[u8]) -> Option<TcpHealth> {
    let u8_at = |at: usize| raw.get(at).copied();
    let u32_at = |at: usize| {
        raw.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let u64_at = |at: usize| {
        raw.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    Some(TcpHealth {
        timer: None,
        retransmits: u8_at(2)?,
        probes: u8_at(3)?,
        backoff: u8_at(4)?,
        rto_us: u32_at(8)?,
        unacked: u32_at(24)?,
        last_data_sent_ms: u32_at(44)?,
        last_data_recv_ms: u32_at(52)?,
        last_ack_recv_ms: u32_at(56)?,
        bytes_acked: u64_at(120),
        snd_wnd: u32_at(228),
        send_queue: 0,
    })
}

/// The kernel's view of one connection of the caller's network namespace,
/// or None when the kernel has no such socket (closed since).
pub fn inspect(
    local: IpAddr,
    local_port: u16,
    remote: IpAddr,
    remote_port: u16,
) -> Result<Option<TcpHealth>, DiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(DiagError::Socket)?;
    socket.bind_auto().map_err(DiagError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(DiagError::Socket)?;
    let mut socket_id = if local.is_ipv4() {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    socket_id.source_address = local;
    socket_id.source_port = local_port;
    socket_id.destination_address = remote;
    socket_id.destination_port = remote_port;
    // INET_DIAG_NOCOOKIE: find the socket by its 4-tuple alone.
    socket_id.cookie = [0xff; 8];
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0).map_err(DiagError::Io)?;
    let mut receive = vec![0u8; 1 << 14];
    let size = socket
        .recv(&mut &mut receive[..], 0)
        .map_err(DiagError::Io)?;
    let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&receive[..size])
        .map_err(|e| DiagError::Decode(e.to_string()))?;
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
            let info = response.nlas.iter().find_map(|nla| match nla {
                Nla::TcpInfo(raw) => parse_tcp_info(raw),
                _ => None,
            });
            Ok(info.map(|mut health| {
                health.timer = KernelTimer::of(&response.header.timer);
                health.send_queue = response.header.send_queue;
                health
            }))
        }
        NetlinkPayload::Error(e) => match e.code.map_or(0, |c| c.get()) {
            // No such socket: it closed since it was asked about.
            code if code == -libc::ENOENT => Ok(None),
            code => Err(DiagError::Kernel(code)),
        },
        _ => Err(DiagError::Decode(
            "unexpected reply to an exact lookup".into(),
        )),
    }
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
                            timer: KernelTimer::of(&h.timer),
                            recv_queue: h.recv_queue,
                            send_queue: h.send_queue,
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

    #[test]
    fn tcp_info_fields_at_their_uapi_offsets_and_short_structs() {
        let mut raw = vec![0u8; 232];
        raw[2] = 4; // retransmits
        raw[3] = 1; // probes
        raw[4] = 5; // backoff
        raw[8..12].copy_from_slice(&6_400_000u32.to_ne_bytes());
        raw[24..28].copy_from_slice(&3u32.to_ne_bytes());
        raw[56..60].copy_from_slice(&31_000u32.to_ne_bytes());
        raw[120..128].copy_from_slice(&1_000u64.to_ne_bytes());
        let h = parse_tcp_info(&raw).unwrap();
        assert_eq!((h.retransmits, h.probes, h.backoff), (4, 1, 5));
        assert_eq!(
            (h.rto_us, h.unacked, h.last_ack_recv_ms),
            (6_400_000, 3, 31_000)
        );
        assert_eq!((h.bytes_acked, h.snd_wnd), (Some(1_000), Some(0)));
        // A 4.x kernel's shorter struct: the fields it lacks are None.
        let old = parse_tcp_info(&raw[..104]).unwrap();
        assert_eq!((old.bytes_acked, old.snd_wnd), (None, None));
        assert!(parse_tcp_info(&raw[..40]).is_none());
    }

    /// An exact lookup of a live loopback connection, and of one that is gone.
    #[test]
    fn inspects_one_connection_by_its_four_tuple() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(&[7u8; 5000]).unwrap();
        let mut got = vec![0u8; 5000];
        server.read_exact(&mut got).unwrap();
        let (l, r) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        let h = match inspect(l.ip(), l.port(), r.ip(), r.port()) {
            Err(DiagError::Unavailable) if std::env::var_os("CI").is_none() => return,
            other => other.unwrap().expect("the connection is listed"),
        };
        assert_eq!(h.retransmits, 0);
        assert_eq!(h.bytes_acked, Some(5001), "5000 bytes and the SYN");
        assert!(h.last_ack_recv_ms < 60_000);
        drop((client, server));
        // The 4-tuple of a connection that never existed.
        assert_eq!(inspect(l.ip(), 1, r.ip(), 2).unwrap(), None);
    }
}
