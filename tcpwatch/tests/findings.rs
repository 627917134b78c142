//! One privileged scenario per finding kind not covered in trace.rs, each in
//! its own network namespace, with real sockets and `tcpwatch trace --json`.
mod common;

use std::{thread, time::Duration};

use common::*;
use serde_json::Value;

/// Not a test: the entry point of peer processes (see `common::Peer`).
#[test]
fn peer_main() {
    if let Ok(comm) = std::env::var(PEER_ENV) {
        peer_loop(&comm);
    }
}

fn raised<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    findings(lines, kind)
        .into_iter()
        .filter(|f| f["status"] == "raised")
        .collect()
}

/// SYNs dropped by a firewall with tcp_syn_retries lowered: connect_timeout.
#[test]
fn connect_timeout_against_dropped_syns() {
    if !privileged_or_skip("connect_timeout_against_dropped_syns") {
        return;
    }
    let ns = Netns::new("cto");
    ns.sysctl("net.ipv4.tcp_syn_retries", "1");
    ns.nft(&drop_rules(&["tcp dport 9999 tcp flags syn drop"]));
    let tracer = Tracer::start(&ns, &["--no-events"]);
    let mut client = ns.peer("tw-client");
    assert_eq!(client.cmd("connect 127.0.0.1 9999"), "err TimedOut");
    let (lines, _) = tracer.stop();
    let f = raised(&lines, "connect_timeout");
    assert_eq!(f.len(), 1, "{lines:#?}");
    assert_eq!(
        (f[0]["pid"].as_u64(), f[0]["rport"].as_u64()),
        (Some(client.pid.into()), Some(9999))
    );
    assert!(
        f[0]["age_seconds"]
            .as_f64()
            .is_some_and(|s| (2.5..5.0).contains(&s)),
        "{}",
        f[0]
    );
}

/// The final ACK of handshakes is dropped: the listener retransmits SYN-ACKs.
#[test]
fn synack_retransmit_finding() {
    if !privileged_or_skip("synack_retransmit_finding") {
        return;
    }
    let ns = Netns::new("sak");
    let tracer = Tracer::start(&ns, &["--no-events"]);
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    ns.nft(&drop_rules(&[&format!(
        "tcp dport {port} tcp flags & (syn|fin|rst|ack) == ack drop"
    )]));
    client.ok(&format!("connect 127.0.0.1 {port}"));
    thread::sleep(Duration::from_millis(1500));
    let (lines, _) = tracer.stop();
    let f = raised(&lines, "synack_retransmit");
    assert_eq!(f.len(), 1, "{lines:#?}");
    assert_eq!(
        (f[0]["pid"].as_u64(), f[0]["lport"].as_u64()),
        (Some(server.pid.into()), Some(port.into()))
    );
}

/// The server closes first and the client comes back from the same port: the
/// new SYN takes over the server's TIME_WAIT.
#[test]
fn time_wait_syn_reuse_finding() {
    if !privileged_or_skip("time_wait_syn_reuse_finding") {
        return;
    }
    let ns = Netns::new("tsr");
    let tracer = Tracer::start(&ns, &["--no-events"]);
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let source: u16 = 42345;
    client.ok(&format!("connect_from {source} 127.0.0.1 {port}"));
    server.ok("accept");
    server.ok("close");
    client.ok("read_eof");
    client.ok("close");
    assert_eq!(
        ns.sockets("time-wait", &["sport", "=", &format!(":{port}")]),
        1
    );
    thread::sleep(Duration::from_millis(1100));
    client.ok(&format!("connect_from {source} 127.0.0.1 {port}"));
    server.ok("accept");
    let (lines, _) = tracer.stop();
    let f = raised(&lines, "time_wait_syn_reuse");
    assert_eq!(f.len(), 1, "{lines:#?}");
    assert_eq!(
        (f[0]["lport"].as_u64(), f[0]["rport"].as_u64()),
        (Some(port.into()), Some(source.into()))
    );
}

/// A half-close the peer never answers: FIN_WAIT2 held by a live process.
#[test]
fn fin_wait2_stall_finding() {
    if !privileged_or_skip("fin_wait2_stall_finding") {
        return;
    }
    let ns = Netns::new("fw2");
    let tracer = Tracer::start(&ns, &["--no-events", "--fin-wait2-age", "1s"]);
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let client_port: u16 = client
        .ok(&format!("connect 127.0.0.1 {port}"))
        .parse()
        .unwrap();
    server.ok("accept");
    client.ok("shutdown_wr");
    // The server's ACK of the FIN may be delayed.
    assert!(
        wait_until(Duration::from_secs(2), || ns.sockets("fin-wait-2", &[])
            == 1),
        "ground truth"
    );
    thread::sleep(Duration::from_millis(2500));
    let (lines, _) = tracer.stop();
    let f = raised(&lines, "fin_wait2_stall");
    assert_eq!(f.len(), 1, "{lines:#?}");
    assert_eq!(
        (
            f[0]["pid"].as_u64(),
            f[0]["lport"].as_u64(),
            f[0]["count"].as_u64()
        ),
        (Some(client.pid.into()), Some(client_port.into()), Some(1))
    );
}

/// The peer's packets are dropped after the client closes: its FIN is
/// retransmitted in FIN_WAIT1.
#[test]
fn fin_retransmit_finding() {
    if !privileged_or_skip("fin_retransmit_finding") {
        return;
    }
    let ns = Netns::new("fin");
    let tracer = Tracer::start(&ns, &["--no-events"]);
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    client.ok(&format!("connect 127.0.0.1 {port}"));
    server.ok("accept");
    ns.nft(&drop_rules(&[&format!("tcp sport {port} drop")]));
    client.ok("close");
    thread::sleep(Duration::from_millis(1500));
    let (lines, _) = tracer.stop();
    let f = raised(&lines, "fin_retransmit");
    assert_eq!(f.len(), 1, "{lines:#?}");
    assert_eq!(
        (f[0]["pid"].as_u64(), f[0]["rport"].as_u64()),
        (Some(client.pid.into()), Some(port.into()))
    );
}

/// tcp_max_tw_buckets=1: further closes skip TIME_WAIT and TcpExt
/// TCPTimeWaitOverflow moves.
#[test]
fn time_wait_overflow_finding() {
    if !privileged_or_skip("time_wait_overflow_finding") {
        return;
    }
    let ns = Netns::new("two");
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "1");
    let tracer = Tracer::start(
        &ns,
        &["--no-events", "--lifecycle", "--reconcile-interval", "1s"],
    );
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    for _ in 0..3 {
        client_closes_first(&mut client, &mut server, "127.0.0.1", port);
    }
    assert_eq!(ns.sockets("time-wait", &[]), 1, "ground truth: one bucket");
    thread::sleep(Duration::from_millis(2500));
    let (lines, _) = tracer.stop();
    let f = raised(&lines, "time_wait_overflow");
    assert_eq!(f.len(), 1, "{lines:#?}");
    assert_eq!(f[0]["TCPTimeWaitOverflow"], 2);
    assert_eq!(f[0]["netns"], ns.inode);
    // Per connection: the client's first close took the bucket, the next
    // two skipped TIME_WAIT, as the kernel counted.
    let client_ends: Vec<&str> = lines
        .iter()
        .filter(|l| l["kind"] == "lifecycle" && l["dport"] == port)
        .filter_map(|l| l["end"].as_str())
        .collect();
    assert_eq!(
        client_ends,
        ["normal_close", "time_wait_overflow", "time_wait_overflow"],
        "{lines:#?}"
    );
}

/// Risky settings of a namespace are reported by trace too (warnings only).
#[test]
fn sysctl_risk_finding() {
    if !privileged_or_skip("sysctl_risk_finding") {
        return;
    }
    let ns = Netns::new("sys");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    ns.sysctl("net.ipv4.tcp_timestamps", "0");
    let tracer = Tracer::start(&ns, &["--no-events"]);
    thread::sleep(Duration::from_millis(300));
    let (lines, _) = tracer.stop();
    let f = raised(&lines, "sysctl_risk");
    assert_eq!(f.len(), 1, "warnings only, once: {lines:#?}");
    assert_eq!(f[0]["setting"], "net.ipv4.tcp_tw_reuse");
    assert_eq!(f[0]["severity"], "warning");
}

/// tcp_tw_reuse meets a peer still in LAST_ACK because the final ACK of the
/// old connection was lost: the old peer answers the reused SYN with a
/// challenge ACK, this side resets from SYN_SENT and connects at its next
/// SYN. tw_reuse, then tw_reuse_reset, both naming the client.
#[test]
fn tw_reuse_reset_when_the_final_ack_was_lost() {
    if !privileged_or_skip("tw_reuse_reset_when_the_final_ack_was_lost") {
        return;
    }
    let ns = Netns::new("twrr");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    let tracer = Tracer::start(&ns, &["--no-events"]);
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let source: u16 = 41235;
    client.ok(&format!("connect_from {source} 127.0.0.1 {port}"));
    server.ok("accept");
    client.ok("close");
    server.ok("read_eof");
    // The client's ACK of the server's FIN never arrives.
    ns.nft(&drop_rules(&[&format!(
        "tcp sport {source} tcp flags == ack drop"
    )]));
    server.ok("close");
    // Past tcp_tw_reuse_delay (1 s); the server's FIN retransmits (after
    // about 0.2, 0.6, 1.4 and 3 s) keep it in LAST_ACK.
    thread::sleep(Duration::from_millis(1600));
    assert_eq!(ns.sockets("time-wait", &[]), 1);
    assert_eq!(ns.sockets("last-ack", &[]), 1);
    ns.exec(&["nft", "delete", "table", "inet", "tw"]);
    client.ok(&format!("connect_from {source} 127.0.0.1 {port}"));
    let (lines, _) = tracer.stop();

    assert_eq!(raised(&lines, "tw_reuse").len(), 1, "{lines:#?}");
    let f = raised(&lines, "tw_reuse_reset");
    assert_eq!(f.len(), 1, "{lines:#?}");
    assert_eq!(
        (
            f[0]["pid"].as_u64(),
            f[0]["lport"].as_u64(),
            f[0]["rport"].as_u64()
        ),
        (
            Some(client.pid.into()),
            Some(source.into()),
            Some(port.into())
        )
    );
    assert!(
        f[0]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("sent a reset from SYN_SENT")),
        "{}",
        f[0]
    );
    let netstat = ns.exec(&["cat", "/proc/net/netstat"]);
    let recycled = tcpwatch::audit::parse_netstat(&netstat)
        .get("TWRecycled")
        .copied();
    assert_eq!(recycled, Some(1), "the kernel counted the reuse too");
}
