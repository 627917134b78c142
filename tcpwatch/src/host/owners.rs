//! Owners of the sockets that existed before tcpwatch started.
//!
//! The kernel programs learn a socket's owner when it connects, listens or
//! closes; sockets older than tcpwatch have none of those moments ahead of
//! them except the close. At start-up, tcpwatch therefore maps socket inodes
//! to processes through `/proc/PID/fd` and sockets to endpoints through each
//! namespace's `/proc/PID/net/tcp{,6}`, as `ss -p` does. Listeners seed the
//! kernel's listener map (so new connections they accept are attributed);
//! the other sockets are looked up by endpoint when an event has no owner.
use crate::tcp::NetnsId;
use std::{collections::HashMap, fs, net::IpAddr, os::unix::fs::MetadataExt};

use crate::host::{
    cgroup::Units,
    proc_net::{parse_tcp_table, LISTEN},
};

/// A process that holds a socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    /// Its cgroup v2 id, read from `/proc/PID/cgroup` (0 when unknown).
    pub cgroup: u64,
}

/// Endpoints of a connection in a namespace: (netns, local, lport, remote, rport).
pub type Tuple = (NetnsId, IpAddr, u16, IpAddr, u16);

/// Who owned which socket when tcpwatch started.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every socket with an owner, listeners included (remote `0.0.0.0:0` or `[::]:0`).
    pub connections: HashMap<Tuple, Owner>,
    /// (netns, port, owner) of every listening socket.
    pub listeners: Vec<(NetnsId, u16, Owner)>,
}

impl Snapshot {
    /// Who held the connection with these endpoints at start-up: the
    /// owner of an event about a socket the kernel side did not know.
    pub fn owner_at(&self, tuple: &Tuple) -> Option<&Owner> {
        self.connections.get(tuple)
    }
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
    namespaces: HashMap<NetnsId, u32>,
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
            if let Some(netns) = NetnsId::from_inode(netns.ino()) {
                holders.namespaces.entry(netns).or_insert(pid);
            }
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

    #[test]
    fn rejects_malformed_addresses() {
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
