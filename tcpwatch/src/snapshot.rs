//! Owners of the sockets that existed before tcpwatch started.
//!
//! The kernel programs learn a socket's owner when it connects, listens or
//! closes; sockets older than tcpwatch have none of those moments ahead of
//! them except the close. At start-up, tcpwatch therefore maps socket inodes
//! to processes through `/proc/PID/fd` and sockets to endpoints through each
//! namespace's `/proc/PID/net/tcp{,6}`, as `ss -p` does. Listeners seed the
//! kernel's listener map (so new connections they accept are attributed);
//! the other sockets are looked up by endpoint when an event has no owner.
use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
};

use crate::{
    cgroup::Units,
    event::{OwnerSource, TcpEvent},
};

/// A process that holds a socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    /// Its cgroup v2 id, read from `/proc/PID/cgroup` (0 when unknown).
    pub cgroup: u64,
}

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

const LISTEN: u8 = 10;

/// Endpoints of a connection in a namespace: (netns, local, lport, remote, rport).
pub type Tuple = (u32, IpAddr, u16, IpAddr, u16);

/// Who owned which socket when tcpwatch started.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every socket with an owner, listeners included (remote `0.0.0.0:0` or `[::]:0`).
    pub connections: HashMap<Tuple, Owner>,
    /// (netns, port, owner) of every listening socket.
    pub listeners: Vec<(u32, u16, Owner)>,
}

impl Snapshot {
    /// Fills in the owner of an event about a socket the kernel side did not
    /// know, when the socket existed at start-up.
    pub fn attribute(&self, ev: &mut TcpEvent) {
        if ev.pid != 0 || ev.skaddr == 0 {
            return;
        }
        let tuple = (ev.netns, ev.saddr, ev.sport, ev.daddr, ev.dport);
        if let Some(owner) = self.connections.get(&tuple) {
            ev.pid = owner.pid;
            ev.comm.clone_from(&owner.comm);
            ev.cgroup = owner.cgroup;
            ev.owner = OwnerSource::Startup;
        }
    }
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

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Who holds each socket now: the processes with a descriptor of its inode
/// in `/proc/PID/fd`, what `ss -p` shows. A socket passed on by fork (and
/// exec) is held by whoever still has it open, not by who opened it.
#[derive(Clone, Debug, Default)]
pub struct Holders {
    /// By socket inode: up to [`HOLDERS_KEPT`] holders, lowest pid first,
    /// and how many processes hold it in all.
    by_inode: HashMap<u64, (Vec<Owner>, u32)>,
    /// One process per network namespace, to read that namespace's tables.
    namespaces: HashMap<u32, u32>,
}

/// Holders remembered per socket (the count goes on).
pub const HOLDERS_KEPT: usize = 64;

impl Holders {
    /// Scans `/proc`, and learns each holder's cgroup through `units`.
    /// Processes that vanish or cannot be read are skipped: the scan is
    /// best effort, by nature racy.
    pub fn scan(units: &Units) -> Holders {
        let mut holders = Holders::default();
        let Ok(procs) = fs::read_dir("/proc") else {
            return holders;
        };
        let mut pids: Vec<u32> = procs
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        for pid in pids {
            let Ok(netns) = fs::metadata(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            holders.namespaces.entry(netns.ino() as u32).or_insert(pid);
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            let mut comm: Option<String> = None;
            let mut cgroup: Option<u64> = None;
            let mut seen_here = std::collections::HashSet::new();
            for fd in fds.filter_map(Result::ok) {
                let Ok(link) = fs::read_link(fd.path()) else {
                    continue;
                };
                let Some(inode) = link.to_str().and_then(socket_inode) else {
                    continue;
                };
                // Two descriptors of one socket in one process are one holder.
                if !seen_here.insert(inode) {
                    continue;
                }
                let comm = comm
                    .get_or_insert_with(|| {
                        fs::read_to_string(format!("/proc/{pid}/comm"))
                            .map(|c| c.trim_end().to_owned())
                            .unwrap_or_default()
                    })
                    .clone();
                let cgroup = *cgroup.get_or_insert_with(|| units.of_pid(pid));
                let (kept, count) = holders.by_inode.entry(inode).or_default();
                *count += 1;
                if kept.len() < HOLDERS_KEPT {
                    kept.push(Owner { pid, comm, cgroup });
                }
            }
        }
        holders
    }

    /// The processes holding socket `inode` (lowest pid first, at most
    /// [`HOLDERS_KEPT`]) and how many hold it in all.
    pub fn of(&self, inode: u64) -> (&[Owner], u32) {
        self.by_inode
            .get(&inode)
            .map_or((&[], 0), |(kept, count)| (kept.as_slice(), *count))
    }
}

/// Whether process `pid` is alive (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Takes the snapshot from `/proc`. Processes that vanish or cannot be read
/// are skipped: the snapshot is best effort, by nature racy.
pub fn take(units: &Units) -> Snapshot {
    let holders = Holders::scan(units);
    // The lowest pid wins a shared socket: the parent of a pre-fork server.
    let owners: HashMap<u64, Owner> = holders
        .by_inode
        .iter()
        .filter_map(|(inode, (kept, _))| Some((*inode, kept.first()?.clone())))
        .collect();
    let namespaces = &holders.namespaces;
    let mut snapshot = Snapshot::default();
    for (&netns, &pid) in namespaces {
        for (file, v6) in [("tcp", false), ("tcp6", true)] {
            let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
                continue;
            };
            for row in parse_tcp_table(&text, v6) {
                let Some(owner) = owners.get(&row.inode) else {
                    continue;
                };
                if row.state == LISTEN {
                    snapshot
                        .listeners
                        .push((netns, row.local_port, owner.clone()));
                }
                let tuple = (
                    netns,
                    row.local,
                    row.local_port,
                    row.remote,
                    row.remote_port,
                );
                snapshot.connections.insert(tuple, owner.clone());
            }
        }
    }
    snapshot
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
        let d = crate::diag::DiagSocket::from_proc_row(r).unwrap();
        assert_eq!(
            d.timer,
            Some(crate::diag::KernelTimer::Retransmit {
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
        assert_eq!(socket_inode("socket:[42]"), Some(42));
        assert_eq!(socket_inode("pipe:[42]"), None);
    }

    #[test]
    fn snapshot_finds_this_process_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let snap = take(&Units::default());
        let me = std::process::id();
        assert!(
            snap.listeners
                .iter()
                .any(|(_, p, o)| *p == port && o.pid == me),
            "port {port} of pid {me} in {:?}",
            snap.listeners
        );
    }
}
