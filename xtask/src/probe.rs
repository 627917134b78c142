//! What the benchmarks read about a running observer and a namespace: the
//! daemon's metrics over HTTP, a process's CPU time and memory from /proc,
//! and `ss` as ground truth.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// A loopback port free right now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The body of `GET path` from 127.0.0.1:`port`, and how long it took.
pub fn http_get(port: u16, path: &str) -> Result<(String, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let took = started.elapsed();
    match response.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok((body.to_owned(), took))
        }
        _ => bail!(
            "GET {path} failed: {}",
            response.lines().next().unwrap_or("")
        ),
    }
}

/// Waits until the daemon on `port` serves its metrics.
pub fn wait_for_metrics(port: u16, within: Duration) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < within {
        if http_get(port, "/metrics").is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("tcpwatch did not serve metrics on port {port} within {within:?}")
}

/// The sum of the samples of `series` (a name with an optional `{labels`
/// prefix) in an exposition.
pub fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(series)?;
            // `name{...} v` or `name v`; not a longer name sharing the prefix.
            if !rest.starts_with([' ', '{', '}', ',']) && !series.ends_with([',', '{']) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        // Plain addition from 0: an empty sum is 0, not -0.
        .fold(0.0, |a, b| a + b)
}

/// User plus system CPU seconds of a process so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name, which may hold spaces.
    let after = stat
        .rsplit_once(')')
        .map(|(_, a)| a)
        .context("malformed stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: f64 = fields
        .get(11..13)
        .context("short stat")?
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz.max(1.0))
}

/// Resident memory of a process in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

/// The inode of a named network namespace, as tcpwatch labels it.
pub fn netns_inode(name: &str) -> Result<u64> {
    Ok(std::fs::metadata(format!("/run/netns/{name}"))?.ino())
}

/// TCP sockets of a namespace by state, in tcpwatch's names, as `ss`
/// (sock_diag) lists them; listeners left out, as the model leaves them out.
pub fn ss_counts(netns: &str) -> Result<BTreeMap<String, u64>> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "ss", "-tanH"])
        .output()
        .context("cannot run ss")?;
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = match line.split_whitespace().next() {
            Some("ESTAB") => "ESTABLISHED",
            Some("SYN-SENT") => "SYN_SENT",
            Some("SYN-RECV") => "SYN_RECV",
            Some("FIN-WAIT-1") => "FIN_WAIT1",
            Some("FIN-WAIT-2") => "FIN_WAIT2",
            Some("TIME-WAIT") => "TIME_WAIT",
            Some("CLOSE-WAIT") => "CLOSE_WAIT",
            Some("LAST-ACK") => "LAST_ACK",
            Some("CLOSING") => "CLOSING",
            _ => continue,
        };
        *counts.entry(name.to_owned()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// tcpwatch's `tcpwatch_netns_sockets` of one namespace by state.
pub fn tcpwatch_counts(body: &str, inode: u64) -> BTreeMap<String, u64> {
    let prefix = format!("tcpwatch_netns_sockets{{netns=\"{inode}\",state=\"");
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (state, value) = rest.split_once("\"} ")?;
            Some((state.to_owned(), value.trim().parse::<f64>().ok()? as u64))
        })
        .filter(|(state, _)| state != "LISTEN")
        .collect()
}

/// The largest difference by state between two counts, and its state.
pub fn largest_difference(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> (u64, String) {
    a.keys()
        .chain(b.keys())
        .map(|k| {
            let x = a.get(k).copied().unwrap_or(0);
            let y = b.get(k).copied().unwrap_or(0);
            (x.abs_diff(y), k.clone())
        })
        .max()
        .unwrap_or((0, String::new()))
}

/// The daemon on `port` against `ss` for the namespace `netns` (inode
/// `inode`): the largest difference by state, that state, and how many
/// sockets `ss` listed.
pub fn disagreement(port: u16, inode: u64, netns: &str) -> Result<(u64, String, u64)> {
    let (body, _) = http_get(port, "/metrics")?;
    let ours = tcpwatch_counts(&body, inode);
    let truth = ss_counts(netns)?;
    let (diff, state) = largest_difference(&ours, &truth);
    Ok((diff, state, truth.values().sum()))
}

/// Compares every `every` until the daemon and `ss` agree: how long that
/// took, or the last difference and its state if not within `within`.
pub fn time_to_agree(
    port: u16,
    inode: u64,
    netns: &str,
    within: Duration,
    every: Duration,
) -> Result<std::result::Result<f64, (u64, String)>> {
    let started = Instant::now();
    loop {
        let (diff, state, _) = disagreement(port, inode, netns)?;
        if diff == 0 {
            return Ok(Ok(started.elapsed().as_secs_f64()));
        }
        if started.elapsed() >= within {
            return Ok(Err((diff, state)));
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_and_namespace_counts() {
        let body = "# HELP x\n\
            tcpwatch_events_received_total 12\n\
            tcpwatch_events_lost_total{cause=\"ringbuf_full\"} 3\n\
            tcpwatch_events_lost_total{cause=\"bpf_recursion\"} 1\n\
            tcpwatch_netns_sockets{netns=\"7\",state=\"TIME_WAIT\"} 5\n\
            tcpwatch_netns_sockets{netns=\"7\",state=\"LISTEN\"} 1\n\
            tcpwatch_netns_sockets{netns=\"8\",state=\"TIME_WAIT\"} 9\n";
        assert_eq!(sample(body, "tcpwatch_events_received_total"), 12.0);
        assert_eq!(sample(body, "tcpwatch_events_lost_total"), 4.0);
        assert_eq!(
            sample(body, "tcpwatch_events_lost_total{cause=\"ringbuf_full\""),
            3.0
        );
        assert_eq!(sample(body, "tcpwatch_events"), 0.0, "whole names only");
        let ours = tcpwatch_counts(body, 7);
        assert_eq!(ours, BTreeMap::from([("TIME_WAIT".to_owned(), 5)]));
        let ss = BTreeMap::from([("TIME_WAIT".to_owned(), 7), ("ESTABLISHED".to_owned(), 1)]);
        assert_eq!(largest_difference(&ours, &ss), (2, "TIME_WAIT".to_owned()));
    }

    #[test]
    fn reads_its_own_cpu_and_memory() {
        let me = std::process::id();
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        assert!(rss_bytes(me).unwrap() > 0);
    }
}
