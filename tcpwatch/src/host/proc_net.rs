//! `/proc/net/tcp` and `/proc/net/tcp6`: the kernel's socket list read the
//! slow way, for what sock_diag cannot give (the sockets of a namespace
//! tcpwatch does not enter, at start-up) and where sock_diag is unavailable.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    host::sock_diag::{DiagSocket, KernelTimer},
    tcp::TcpState,
};

/// The kernel's number for LISTEN (`include/net/tcp_states.h`).
pub const LISTEN: u8 = 10;

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpRow {
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// Kernel state number (10 is LISTEN).
    pub state: u8,
    pub inode: u64,
    /// `tx_queue` and `rx_queue` (for a listener: 0 and its accept queue).
    pub tx_queue: u32,
    pub rx_queue: u32,
    /// `tr`: 0 none, 1 retransmit, 2 keep-alive, 3 TIME_WAIT, 4 zero-window
    /// probe; `tm->when` in clock ticks (USER_HZ, 1/100 s); `retrnsmt`.
    pub timer: u8,
    pub timer_ticks: u32,
    pub retransmits: u32,
}

fn parse_addr(hex: &str, v6: bool) -> Option<IpAddr> {
    // The kernel prints each 32-bit word of the address in host byte order.
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    if v6 {
        if hex.len() != 32 {
            return None;
        }
        let mut octets = [0u8; 16];
        for i in 0..4 {
            octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        Some(IpAddr::V6(Ipv6Addr::from(octets)))
    } else {
        if hex.len() != 8 {
            return None;
        }
        Some(IpAddr::V4(Ipv4Addr::from(word(0)?)))
    }
}

fn parse_endpoint(field: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (addr, port) = field.split_once(':')?;
    Some((parse_addr(addr, v6)?, u16::from_str_radix(port, 16).ok()?))
}

/// Parses the text of `/proc/net/tcp` (`v6` false) or `/proc/net/tcp6`;
/// malformed rows are skipped.
pub fn parse_tcp_table(text: &str, v6: bool) -> Vec<TcpRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, local_port) = parse_endpoint(f.get(1)?, v6)?;
            let (remote, remote_port) = parse_endpoint(f.get(2)?, v6)?;
            let hex_pair = |field: &str| -> Option<(u32, u32)> {
                let (a, b) = field.split_once(':')?;
                Some((
                    u32::from_str_radix(a, 16).ok()?,
                    u32::from_str_radix(b, 16).ok()?,
                ))
            };
            let (tx_queue, rx_queue) = hex_pair(f.get(4)?)?;
            let (timer, timer_ticks) = hex_pair(f.get(5)?)?;
            Some(TcpRow {
                local,
                local_port,
                remote,
                remote_port,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
                tx_queue,
                rx_queue,
                timer: u8::try_from(timer).ok()?,
                timer_ticks,
                retransmits: u32::from_str_radix(f.get(6)?, 16).ok()?,
            })
        })
        .collect()
}

impl DiagSocket {
    /// A row of `/proc/net/tcp{,6}`: the same facts, read the slow way,
    /// where sock_diag is unavailable (no `tcpi_*` and no listener limits).
    pub fn from_proc_row(row: &TcpRow) -> Option<DiagSocket> {
        let state = TcpState::try_from(row.state).ok()?;
        let ms = row.timer_ticks.saturating_mul(10);
        Some(DiagSocket {
            state,
            local: row.local,
            local_port: row.local_port,
            remote: row.remote,
            remote_port: row.remote_port,
            inode: u32::try_from(row.inode).unwrap_or(0),
            time_wait_left_ms: (row.timer == 3).then_some(ms),
            timer: match row.timer {
                1 => Some(KernelTimer::Retransmit {
                    expires_ms: ms,
                    retransmits: u8::try_from(row.retransmits).unwrap_or(u8::MAX),
                }),
                2 => Some(KernelTimer::KeepAlive { expires_ms: ms }),
                4 => Some(KernelTimer::ZeroWindowProbe { expires_ms: ms }),
                _ => None,
            },
            recv_queue: row.rx_queue,
            send_queue: row.tx_queue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1162 1 00000000ae8823d9 100 0 0 10 0
   1: 0100007F:1F90 0100007F:9F1E 01 00000000:00000000 00:00000000 00000000  1000        0 4711 1 000000008c1aea40 20 4 30 10 -1
   2: garbage
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn parses_ipv4_rows() {
        let rows = parse_tcp_table(TCP, false);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].local, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(
            (rows[0].local_port, rows[0].state, rows[0].inode),
            (2024, LISTEN, 1162)
        );
        assert_eq!(rows[1].local, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            (rows[1].local_port, rows[1].remote_port, rows[1].state),
            (8080, 40734, 1)
        );
        assert_eq!(rows[1].inode, 4711);
    }

    #[test]
    fn parses_ipv6_rows() {
        let rows = parse_tcp_table(TCP6, true);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].local, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!((rows[0].local_port, rows[0].inode), (22, 2222));
    }

    #[test]
    fn queues_timers_and_retransmits_of_a_row() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 0100007F:9F1E 01 00000A00:00000003 01:0000012C 00000004  1000        0 4711 1 0 20 4 30 10 -1\n";
        let rows = parse_tcp_table(text, false);
        let r = &rows[0];
        assert_eq!((r.tx_queue, r.rx_queue), (0xa00, 3));
        assert_eq!((r.timer, r.timer_ticks, r.retransmits), (1, 300, 4));
        let d = DiagSocket::from_proc_row(r).unwrap();
        assert_eq!(
            d.timer,
            Some(KernelTimer::Retransmit {
                expires_ms: 3000,
                retransmits: 4
            })
        );
        assert_eq!((d.send_queue, d.recv_queue, d.inode), (0xa00, 3, 4711));
    }

    #[test]
    fn rejects_malformed_addresses() {
        assert_eq!(parse_addr("0100007", false), None);
        assert_eq!(parse_addr("zz00007F", false), None);
        assert_eq!(parse_endpoint("0100007F", false), None);
    }
}
