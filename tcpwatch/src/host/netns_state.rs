//! What tcpwatch reads from one network namespace besides its sockets: the
//! TCP sysctls that decide the kernel's behaviour at the edges, the TcpExt
//! counters, the host's orphan count and the TIME_WAIT count.
use std::collections::BTreeMap;

/// The settings read, under `net.ipv4.`.
/// `tcp_max_orphans` is global: only the initial namespace shows it.
pub const SYSCTLS: [&str; 17] = [
    "tcp_max_orphans",
    "tcp_tw_reuse",
    "tcp_tw_reuse_delay",
    "tcp_timestamps",
    "tcp_max_tw_buckets",
    "tcp_rfc1337",
    "tcp_fin_timeout",
    "tcp_orphan_retries",
    "tcp_syn_retries",
    "tcp_synack_retries",
    "tcp_syncookies",
    "tcp_max_syn_backlog",
    "ip_local_port_range",
    "tcp_keepalive_time",
    "tcp_keepalive_intvl",
    "tcp_keepalive_probes",
    "tcp_retries2",
];

/// TcpExt counters shown with the audit (/proc/net/netstat) and counted in
/// the metrics. [`parse_netstat`] keeps every TcpExt counter; the detectors
/// read others by name too.
pub const TCPEXT: [&str; 15] = [
    "TW",
    "TWRecycled",
    "TWKilled",
    "TCPTimeWaitOverflow",
    "ListenOverflows",
    "ListenDrops",
    "TCPAbortOnTimeout",
    "TCPAbortOnData",
    "TCPAbortOnMemory",
    "PAWSEstab",
    "SyncookiesSent",
    "SyncookiesRecv",
    "SyncookiesFailed",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
];

/// What was read from one network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetnsState {
    /// Raw values by name (without `net.ipv4.`); absent when the kernel has none.
    pub sysctls: BTreeMap<String, String>,
    /// TcpExt counters by name.
    pub tcpext: BTreeMap<String, u64>,
    /// Sockets in TIME_WAIT now.
    pub time_wait: u64,
    /// Orphaned TCP sockets of the whole host (`/proc/net/sockstat`: the
    /// kernel's count is global, `tcp_orphan_count`).
    pub orphans: Option<u64>,
}

/// The `orphan` count of `/proc/net/sockstat`'s `TCP:` line.
pub fn parse_sockstat_orphans(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "orphan")
        .and_then(|w| w[1].parse().ok())
}

impl NetnsState {
    /// tcp_max_tw_buckets, where the kernel has it.
    pub fn max_tw_buckets(&self) -> Option<u64> {
        self.uint("tcp_max_tw_buckets")
    }

    /// A setting that cannot be negative, in the type that holds it.
    pub fn uint<T: TryFrom<i64>>(&self, name: &str) -> Option<T> {
        self.int(name).and_then(|n| T::try_from(n).ok())
    }

    /// A TcpExt counter, 0 where the kernel has none.
    pub fn counter(&self, name: &str) -> u64 {
        self.tcpext.get(name).copied().unwrap_or(0)
    }

    /// A numeric setting (its first field), where the kernel has it.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.sysctls
            .get(name)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// `ip_local_port_range` as (low, high).
    pub fn port_range(&self) -> Option<(u32, u32)> {
        let mut it = self.sysctls.get("ip_local_port_range")?.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }
}

/// Parses `/proc/net/netstat`: pairs of `Prefix: names` and `Prefix: values`
/// lines; returns the `TcpExt` counters.
pub fn parse_netstat(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some(names), Some(values)) = (
            names.strip_prefix("TcpExt:"),
            values.strip_prefix("TcpExt:"),
        ) else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = value.parse() {
                out.insert(name.to_owned(), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_orphan_count_of_sockstat() {
        let text =
            "sockets: used 5\nTCP: inuse 3 orphan 17 tw 2 alloc 9 mem 4\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_sockstat_orphans(text), Some(17));
        assert_eq!(parse_sockstat_orphans("UDP: inuse 0\n"), None);
    }

    #[test]
    fn parses_tcpext_from_netstat() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed TW TWRecycled TCPTimeWaitOverflow TCPReqQFullDoCookies TCPReqQFullDrop\nTcpExt: 4772 2 1 19 3 0 4772 0\nIpExt: InNoRoutes\nIpExt: 0\n";
        let c = parse_netstat(text);
        assert_eq!(
            (c["TW"], c["TWRecycled"], c["TCPTimeWaitOverflow"]),
            (19, 3, 0)
        );
        // The SYN queue's counters, which syn_flood reads by name.
        assert_eq!(
            (
                c["SyncookiesSent"],
                c["SyncookiesRecv"],
                c["SyncookiesFailed"],
                c["TCPReqQFullDoCookies"],
                c["TCPReqQFullDrop"]
            ),
            (4772, 2, 1, 4772, 0)
        );
        assert!(!c.contains_key("InNoRoutes"));
        assert!(parse_netstat("garbage").is_empty());
    }
}
