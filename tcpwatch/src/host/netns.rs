//! Reading a network namespace's view of /proc from inside it.
use crate::tcp::NetnsId;
use std::{
    fs::{self, File},
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::PathBuf,
};

use crate::{
    host::{
        netns_state::{self, NetnsState},
        proc_net,
        sock_diag::{self, DiagSocket},
    },
    tcp::TcpState,
};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {what} in the network namespace: {source}")]
    Read {
        what: String,
        source: std::io::Error,
    },
}

/// Which network namespace: this process's, or one named by a path
/// (`/run/netns/NAME`, `/proc/PID/ns/net`) or a process id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Current,
    Path(PathBuf),
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty network namespace".into());
        }
        Ok(match s.parse::<u32>() {
            Ok(pid) => Target::Path(PathBuf::from(format!("/proc/{pid}/ns/net"))),
            Err(_) if s.contains('/') => Target::Path(PathBuf::from(s)),
            // `ip netns` names.
            Err(_) => Target::Path(PathBuf::from("/run/netns").join(s)),
        })
    }
}

impl Target {
    fn path(&self) -> PathBuf {
        match self {
            Target::Current => PathBuf::from("/proc/self/ns/net"),
            Target::Path(p) => p.clone(),
        }
    }
}

/// The network namespace tcpwatch runs in.
pub fn current() -> std::io::Result<NetnsId> {
    fs::metadata(Target::Current.path()).and_then(|m| namespace_of(m.ino()))
}

fn namespace_of(inode: u64) -> std::io::Result<NetnsId> {
    NetnsId::from_inode(inode)
        .ok_or_else(|| std::io::Error::other(format!("inode {inode} is no network namespace's")))
}

/// Runs `f` inside the network namespace `target`, on a thread of its own
/// (setns() changes only the calling thread's namespace; /proc/thread-self
/// and new sockets follow it). Returns the namespace's inode with the result.
pub fn in_netns<T: Send>(
    target: &Target,
    f: impl FnOnce() -> Result<T, NetnsError> + Send,
) -> Result<(NetnsId, T), NetnsError> {
    let path = target.path();
    let file = File::open(&path).map_err(|source| NetnsError::Open {
        path: path.clone(),
        source,
    })?;
    let inode = file
        .metadata()
        .and_then(|m| namespace_of(m.ino()))
        .map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
    let enter = !matches!(target, Target::Current);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if enter {
                    // setns() moves only this thread, which ends with the scope.
                    rustix::thread::move_into_link_name_space(
                        file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(|e| NetnsError::Enter {
                        path: path.clone(),
                        source: e.into(),
                    })?;
                }
                f().map(|value| (inode, value))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetnsError::Read {
                    what: "namespace".into(),
                    source: std::io::Error::other("reader thread panicked"),
                })
            })
    })
}

/// The namespace's inode, sysctls, TcpExt counters and TIME_WAIT count.
pub fn read_state(target: &Target) -> Result<(NetnsId, NetnsState), NetnsError> {
    in_netns(target, || {
        let mut state = read_here()?;
        // A socket list refused (a policy denying sock_diag) costs the
        // count its exactness, not the audit: /proc has the same sockets.
        let sockets = sockets_here().map_or_else(|_| proc_sockets(), |(sockets, _)| sockets);
        state.time_wait = time_wait_count(sockets.as_deref());
        Ok(state)
    })
}

/// Every network namespace in use: those named by `ip netns` and those of
/// running processes, once each, by inode.
pub fn all() -> Vec<(NetnsId, Target)> {
    let mut seen = std::collections::BTreeMap::new();
    let named = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path());
    let of_processes = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path().join("ns/net"));
    for path in named.chain(of_processes) {
        if let Some(netns) = fs::metadata(&path)
            .ok()
            .and_then(|meta| NetnsId::from_inode(meta.ino()))
        {
            seen.entry(netns).or_insert(Target::Path(path));
        }
    }
    seen.into_iter().collect()
}

fn read_here() -> Result<NetnsState, NetnsError> {
    let mut state = NetnsState::default();
    for name in netns_state::SYSCTLS {
        // A setting this kernel lacks is simply absent from the audit.
        if let Ok(value) = fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")) {
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            state.sysctls.insert(name.to_owned(), value);
        }
    }
    let netstat =
        fs::read_to_string("/proc/thread-self/net/netstat").map_err(|source| NetnsError::Read {
            what: "/proc/net/netstat".into(),
            source,
        })?;
    state.tcpext = netns_state::parse_netstat(&netstat);
    state.orphans = fs::read_to_string("/proc/thread-self/net/sockstat")
        .ok()
        .and_then(|text| netns_state::parse_sockstat_orphans(&text));
    Ok(state)
}

/// The TCP sockets of a namespace (from sock_diag; from `/proc/net/tcp{,6}`
/// when the kernel has no sock_diag handler for TCP, with `false`) and its
/// settings and counters, read from inside it in one visit.
pub type Observed = (NetnsState, Option<Vec<DiagSocket>>, bool);

pub fn observe(target: &Target) -> Result<(NetnsId, Observed), NetnsError> {
    in_netns(target, || {
        let (sockets, sock_diag) = sockets_here()?;
        let mut state = read_here()?;
        state.time_wait = time_wait_count(sockets.as_deref());
        Ok((state, sockets, sock_diag))
    })
}

/// This thread's namespace's TCP sockets: from sock_diag (`true`), or from
/// `/proc/net/tcp{,6}` where the kernel has no sock_diag handler for TCP.
fn sockets_here() -> Result<(Option<Vec<DiagSocket>>, bool), NetnsError> {
    match sock_diag::dump_tcp() {
        Ok(sockets) => Ok((Some(sockets), true)),
        // The same list from /proc, where settings and counters are too.
        Err(sock_diag::DiagError::Unavailable) => Ok((proc_sockets(), false)),
        Err(e) => Err(NetnsError::Read {
            what: "sock_diag".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// The TIME_WAIT count from the same socket list the model is checked
/// against, so the two never disagree.
fn time_wait_count(sockets: Option<&[DiagSocket]>) -> u64 {
    sockets.map_or(0, |s| {
        s.iter().filter(|s| s.state == TcpState::TimeWait).count() as u64
    })
}

/// This thread's namespace's TCP sockets from `/proc/thread-self/net/tcp`
/// and `tcp6`; None when neither can be read.
fn proc_sockets() -> Option<Vec<DiagSocket>> {
    let mut out = Vec::new();
    let mut read_any = false;
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        if let Ok(text) = fs::read_to_string(format!("/proc/thread-self/net/{file}")) {
            read_any = true;
            out.extend(
                proc_net::parse_tcp_table(&text, v6)
                    .iter()
                    .filter_map(DiagSocket::from_proc_row),
            );
        }
    }
    read_any.then_some(out)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod review_tests {
    use super::*;

    /// Refuses this thread (and the threads it starts) NETLINK sockets with
    /// EACCES, as a seccomp or LSM policy that forbids sock_diag does.
    fn deny_netlink_sockets() {
        const LD_ABS_W: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
        const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
        const RET_K: u16 = 0x06; // BPF_RET | BPF_K
        const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
        const ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
        const REFUSE: u32 = 0x0005_0000 | libc::EACCES as u32; // SECCOMP_RET_ERRNO
        let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        let mut filter = [
            insn(LD_ABS_W, 0, 0, 4), // seccomp_data.arch
            insn(JEQ_K, 0, 5, AUDIT_ARCH_X86_64),
            insn(LD_ABS_W, 0, 0, 0), // seccomp_data.nr
            insn(JEQ_K, 0, 3, libc::SYS_socket as u32),
            insn(LD_ABS_W, 0, 0, 16), // seccomp_data.args[0], the domain
            insn(JEQ_K, 0, 1, libc::AF_NETLINK as u32),
            insn(RET_K, 0, 0, REFUSE),
            insn(RET_K, 0, 0, ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: prctl with integers and a filter program that outlives
        // the call; both apply to this thread only.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog
                ),
                0,
                "{}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// review: `tcpwatch audit` (read_state) read only /proc before
    /// 49d9a52. It now dumps sock_diag for the TIME_WAIT count and, when
    /// the dump is refused with anything but ENOENT (a seccomp or LSM
    /// policy, EACCES here), loses the whole audit: sysctls, TcpExt and
    /// findings, not just the count (/proc/net/tcp is only the fallback
    /// for ENOENT).
    #[test]
    fn review_audit_survives_a_refused_sock_diag() {
        let read = std::thread::spawn(|| {
            deny_netlink_sockets();
            read_state(&Target::Current)
        })
        .join()
        .expect("the reader thread ends");
        let (_, state) = read.unwrap_or_else(|e| panic!("the whole audit is lost: {e}"));
        assert!(
            state.sysctls.contains_key("tcp_max_tw_buckets"),
            "{state:?}"
        );
    }
}
