//! One privileged scenario per finding kind not covered in trace.rs, each in
//! its own network namespace, with real sockets and `tcpwatch trace --json`.

use std::{thread, time::Duration};

use crate::common::*;
use serde_json::Value;

/// SYNs dropped by a firewall with tcp_syn_retries lowered: connect_timeout.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
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
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
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
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
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
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
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
    // Past the age, the next tick asks a reconciliation to confirm the
    // owner (a dump of every namespace and a scan of /proc): seconds on a
    // loaded machine.
    thread::sleep(Duration::from_millis(4000));
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
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
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
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
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
    // In the order the connections ended (a close into TIME_WAIT is
    // printed once the grace period for a reset has passed).
    let mut ended: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "lifecycle" && l["dport"] == port)
        .collect();
    ended.sort_by_key(|l| l["ts_ns"].as_u64());
    let client_ends: Vec<&str> = ended.iter().filter_map(|l| l["end"].as_str()).collect();
    assert_eq!(
        client_ends,
        ["normal_close", "time_wait_overflow", "time_wait_overflow"],
        "{lines:#?}"
    );
}

/// Risky settings of a namespace are reported by trace too (warnings only).
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
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
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
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
    let recycled = tcpwatch::host::netns_state::parse_netstat(&netstat)
        .get("TWRecycled")
        .copied();
    assert_eq!(recycled, Some(1), "the kernel counted the reuse too");
}

/// A server and a connected client in `ns` over `addr`.
fn pair(ns: &Netns, addr: &str) -> (Peer, Peer, u16, u16) {
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let port: u16 = server.ok(&format!("listen {addr} 16")).parse().unwrap();
    let client_port: u16 = client
        .ok(&format!("connect {addr} {port}"))
        .parse()
        .unwrap();
    assert_eq!(server.ok("accept").parse::<u16>().unwrap(), client_port);
    (server, client, port, client_port)
}

/// A healthy bulk transfer through a 1 mbit bottleneck (a tbf qdisc on the
/// sender's veth) for a minute, losing single segments at growing intervals
/// (2, 4, 8, 16 and 32 s in): each loss is retransmitted once and acknowledged,
/// and the ACKs never stop. A run of retransmits with growing gaps is what
/// a dead peer looks like from the events alone (and what tcpwatch used to
/// raise peer_unresponsive on); the kernel says the peer answers, so
/// nothing is raised.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn bulk_transfer_through_a_bottleneck_is_no_unresponsive_peer() {
    if !privileged_or_skip("bulk_transfer_through_a_bottleneck_is_no_unresponsive_peer") {
        return;
    }
    let sender = Netns::new("bks");
    let receiver = Netns::new("bkr");
    let octet = 1 + (sender.inode % 250);
    let (a, b) = (format!("10.231.{octet}.1"), format!("10.231.{octet}.2"));
    let run = |args: &[&str]| {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip runs");
        assert!(status.success(), "ip {args:?}");
    };
    run(&[
        "link",
        "add",
        "bkveth0",
        "netns",
        &sender.name,
        "type",
        "veth",
        "peer",
        "name",
        "bkveth1",
        "netns",
        &receiver.name,
    ]);
    sender.exec(&["ip", "addr", "add", &format!("{a}/24"), "dev", "bkveth0"]);
    receiver.exec(&["ip", "addr", "add", &format!("{b}/24"), "dev", "bkveth1"]);
    // One segment per packet, so a dropped packet is one lost segment.
    sender.exec(&["ip", "link", "set", "bkveth0", "gso_max_segs", "1"]);
    sender.exec(&["ip", "link", "set", "bkveth0", "up"]);
    receiver.exec(&["ip", "link", "set", "bkveth1", "up"]);
    sender.exec(&[
        "tc", "qdisc", "add", "dev", "bkveth0", "root", "tbf", "rate", "1mbit", "burst", "10kb",
        "limit", "2mb",
    ]);
    let tracer = Tracer::start(
        &sender,
        &[
            "--peer-unresponsive-after",
            "15s",
            "--reconcile-interval",
            "2s",
        ],
    );
    let mut server = receiver.peer("tw-server");
    let mut client = sender.peer("tw-client");
    let port: u16 = server.ok(&format!("listen {b} 4")).parse().unwrap();
    let client_port: u16 = client.ok(&format!("connect {b} {port}")).parse().unwrap();
    server.ok("accept");
    server.ok("drain");
    let started = std::time::Instant::now();
    client.send("stream 60");
    for at in [2u64, 4, 8, 16, 32] {
        thread::sleep(Duration::from_secs(at).saturating_sub(started.elapsed()));
        // The first data segment to arrive after this is lost, once (on
        // the receiver: a drop in the sender's own output path is an error
        // to TCP there, not a loss).
        receiver.nft(&format!(
            "table inet tw {{\n  chain in {{\n    type filter hook input priority 0;\n    \
             tcp dport {port} meta length > 1000 numgen inc mod 1000000000 0 drop\n  }}\n}}\n"
        ));
        thread::sleep(Duration::from_millis(500));
        receiver.exec(&["nft", "delete", "table", "inet", "tw"]);
    }
    let sent: u64 = client
        .reply()
        .strip_prefix("ok ")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let (lines, stderr) = tracer.stop();
    assert!(sent > 1_000_000, "a minute at 1 mbit: {sent} bytes");
    let retransmits: Vec<f64> = lines
        .iter()
        .filter(|e| e["kind"] == "retransmit" && e["sport"] == client_port)
        .filter_map(|e| e["ts_ns"].as_f64())
        .collect();
    let span = match (retransmits.first(), retransmits.last()) {
        (Some(first), Some(last)) => (last - first) / 1e9,
        _ => 0.0,
    };
    assert!(
        retransmits.len() >= 5 && span >= 25.0,
        "the losses were retransmitted over most of the minute (the situation under test): {} retransmits over {span:.1} s",
        retransmits.len()
    );
    assert!(
        findings(&lines, "peer_unresponsive").is_empty(),
        "a false alarm on a healthy transfer: {:#?}\n{stderr:?}",
        findings(&lines, "peer_unresponsive")
    );
}

/// The server's packets are dropped: the client's data goes unacknowledged,
/// peer_unresponsive is raised (the kernel agreeing) and resolved when the
/// drop is lifted. Then, dropped for good with tcp_retries2 lowered, the
/// predicted abort comes within one backoff step of the retransmit_timeout.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn unresponsive_peer_is_confirmed_resolved_and_its_abort_predicted() {
    if !privileged_or_skip("unresponsive_peer_is_confirmed_resolved_and_its_abort_predicted") {
        return;
    }
    let ns = Netns::new("unr");
    ns.sysctl("net.ipv4.tcp_retries2", "6");
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--lifecycle",
            "--peer-unresponsive-after",
            "2s",
            "--finding-interval",
            "1s",
            "--reconcile-interval",
            "1s",
        ],
    );
    // First: a drop that is lifted.
    let (_server, mut client, port, client_port) = pair(&ns, "127.0.0.1");
    ns.nft(&drop_rules(&[&format!("tcp sport {port} drop")]));
    client.ok("send hello");
    thread::sleep(Duration::from_secs(5));
    ns.exec(&["nft", "delete", "table", "inet", "tw"]);
    thread::sleep(Duration::from_secs(5));
    // Then: dropped for good.
    let (_server2, mut client2, port2, client2_port) = pair(&ns, "127.0.0.1");
    ns.nft(&drop_rules(&[&format!("tcp sport {port2} drop")]));
    client2.ok("send hello");
    let established = || ns.sockets("established", &["dport", "=", &format!(":{port2}")]);
    // tcp_retries2=6: 25.4 s of budget, the abort at the first expiry past it.
    assert!(
        wait_until(Duration::from_secs(60), || established() == 0),
        "the kernel aborts the connection"
    );
    thread::sleep(Duration::from_millis(1500));
    let (lines, stderr) = tracer.stop();

    let about = |lport: u16| -> Vec<&Value> {
        findings(&lines, "peer_unresponsive")
            .into_iter()
            .filter(|f| f["lport"] == lport)
            .collect()
    };
    let first = about(client_port);
    assert_eq!(first[0]["status"], "raised", "{lines:#?}\n{stderr:?}");
    assert_eq!(first[0]["pid"].as_u64(), Some(client.pid.into()));
    assert_eq!(first[0]["comm"], "tw-client");
    assert_eq!(
        first.last().map(|f| f["status"].clone()),
        Some("resolved".into()),
        "resolved once the ACKs came back: {first:#?}"
    );

    let second = about(client2_port);
    let raised = second
        .iter()
        .find(|f| f["status"] == "raised")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(raised["tcp_retries2"], 6);
    let ended = lines
        .iter()
        .find(|e| e["kind"] == "lifecycle" && e["sport"] == client2_port)
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(ended["end"], "retransmit_timeout");
    let end_ns = ended["ts_ns"].as_u64().expect("ts_ns");
    // Each report predicts the abort: the latest is the most informed.
    let last = second
        .iter()
        .rfind(|f| f["status"] != "resolved")
        .expect("a report");
    let predicted_ns =
        last["ts_ns"].as_u64().unwrap() as f64 + last["seconds_left"].as_f64().unwrap() * 1e9;
    let step = last["rto_seconds"].as_f64().unwrap() * 2.0 * 1e9;
    let off = (end_ns as f64 - predicted_ns).abs();
    assert!(
        off <= step.max(1e9),
        "predicted {:.1} s after the report, ended {:.1} s after it (one backoff step: {:.1} s): {last}",
        last["seconds_left"].as_f64().unwrap(),
        (end_ns as f64 - last["ts_ns"].as_f64().unwrap()) / 1e9,
        step / 1e9
    );
}

/// A reader that stops reading: its window shuts and the writer's data
/// waits (zero_window_stall, the peer answering the probes); then the
/// reader's packets are dropped and the probes go unanswered.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn zero_window_stall_when_the_reader_stops_and_vanishes() {
    if !privileged_or_skip("zero_window_stall_when_the_reader_stops_and_vanishes") {
        return;
    }
    let ns = Netns::new("zwin");
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--zero-window-after",
            "2s",
            "--finding-interval",
            "1s",
            "--reconcile-interval",
            "1s",
        ],
    );
    let (_server, mut client, port, client_port) = pair(&ns, "127.0.0.1");
    let filled: u64 = client.ok("fill").parse().unwrap();
    assert!(filled > 0);
    // A second writer closes with its data still queued: FIN_WAIT1, pinned
    // by the zero window (the orphan case of the teardown material).
    let (_server2, mut closer, _, closer_port) = pair(&ns, "127.0.0.1");
    closer.ok("fill");
    closer.ok("close");
    thread::sleep(Duration::from_secs(5));
    ns.nft(&drop_rules(&[&format!("tcp sport {port} drop")]));
    thread::sleep(Duration::from_secs(8));
    let (lines, stderr) = tracer.stop();
    let pinned = findings(&lines, "zero_window_stall")
        .into_iter()
        .find(|f| f["lport"] == closer_port && f["status"] == "raised")
        .unwrap_or_else(|| panic!("FIN_WAIT1 behind a zero window: {lines:#?}"));
    assert_eq!(pinned["state"], "FIN_WAIT1", "{pinned}");
    assert_eq!(pinned["pid"].as_u64(), Some(closer.pid.into()), "{pinned}");
    let stalls = findings(&lines, "zero_window_stall");
    let raised = stalls
        .iter()
        .find(|f| f["status"] == "raised" && f["lport"] == client_port)
        .unwrap_or_else(|| panic!("{lines:#?}\n{stderr:?}"));
    assert_eq!(raised["pid"].as_u64(), Some(client.pid.into()));
    assert_eq!(raised["lport"].as_u64(), Some(client_port.into()));
    assert_eq!(raised["rport"].as_u64(), Some(port.into()));
    assert_eq!(
        raised["probes"], 0,
        "the reader is alive and answers: {raised}"
    );
    assert!(
        raised["bytes_waiting"].as_u64().is_some_and(|b| b > 0),
        "{raised}"
    );
    assert!(
        stalls
            .iter()
            .filter(|f| f["lport"] == client_port)
            .any(|f| f["probes"].as_u64().is_some_and(|p| p > 0)),
        "probes unanswered once the reader vanished: {stalls:#?}"
    );
}

/// Event-driven findings end: a refused connect after `--resolve-after`,
/// a risky sysctl once fixed, and everything of a deleted namespace.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn findings_end_when_quiet_fixed_or_their_namespace_is_gone() {
    if !privileged_or_skip("findings_end_when_quiet_fixed_or_their_namespace_is_gone") {
        return;
    }
    let ns = Netns::new("end");
    let doomed = Netns::new("doom");
    ns.sysctl("net.ipv4.tcp_syncookies", "0");
    doomed.sysctl("net.ipv4.tcp_syncookies", "0");
    let doomed_inode = doomed.inode.to_string();
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--netns",
            &doomed_inode,
            "--resolve-after",
            "2s",
            "--reconcile-interval",
            "1s",
        ],
    );
    let mut client = ns.peer("tw-client");
    assert_eq!(client.cmd("connect 127.0.0.1 9"), "err ConnectionRefused");
    thread::sleep(Duration::from_secs(2));
    ns.sysctl("net.ipv4.tcp_syncookies", "1");
    drop(doomed);
    thread::sleep(Duration::from_secs(4));
    let (lines, stderr) = tracer.stop();
    let statuses = |kind: &str, netns: u64| -> Vec<String> {
        findings(&lines, kind)
            .into_iter()
            .filter(|f| f["netns"] == netns)
            .map(|f| f["status"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(
        statuses("connect_refused", ns.inode),
        ["raised", "resolved"],
        "{lines:#?}\n{stderr:?}"
    );
    assert_eq!(
        statuses("sysctl_risk", ns.inode),
        ["raised", "resolved"],
        "{lines:#?}"
    );
    assert_eq!(
        statuses("sysctl_risk", doomed_inode.parse().unwrap()),
        ["raised", "resolved"],
        "{lines:#?}"
    );
}

/// 2,000 SYNs take over server-side TIME_WAIT 4-tuples within a second:
/// the finding reports (nearly) all of them, not the first.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_burst_of_time_wait_takeovers_is_counted() {
    if !privileged_or_skip("a_burst_of_time_wait_takeovers_is_counted") {
        return;
    }
    let ns = Netns::new("twb");
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--finding-interval",
            "1s",
            "--ring-kib",
            "16384",
        ],
    );
    let mut peer = ns.peer("tw-burst");
    let n = 2000u64;
    let port: u16 = peer.ok(&format!("tw_burst {n} 20000")).parse().unwrap();
    // Every TIME_WAIT was taken over: none left on the server's port.
    assert_eq!(
        ns.sockets("time-wait", &["sport", "=", &format!(":{port}")]),
        0
    );
    thread::sleep(Duration::from_millis(2500));
    let (lines, stderr) = tracer.stop();
    let reports = findings(&lines, "time_wait_syn_reuse");
    let last = reports
        .iter()
        .rfind(|f| f["lport"] == port)
        .unwrap_or_else(|| panic!("{lines:#?}\n{stderr:?}"));
    let count = last["count"].as_u64().unwrap_or(0);
    assert!(
        count * 100 >= n * 95 && count <= n,
        "reported {count} takeovers of {n}: {reports:#?}"
    );
}

/// When tcpwatch starts, relative to the workload.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Start {
    Before,
    After,
}

fn attribution_tracer(ns: &Netns, extra: &[&str]) -> Tracer {
    let mut args = vec!["--close-wait-age", "1s", "--reconcile-interval", "1s"];
    args.extend_from_slice(extra);
    Tracer::start(ns, &args)
}

/// Fork after accept (inetd, `socat fork`, sshd): a parent accepts, forks
/// a handler per connection and closes its copy; the handlers leak
/// CLOSE_WAIT. The findings name the handlers (as `sleep` when they exec
/// it), never the parent, whether tcpwatch started before or after.
fn fork_after_accept(start: Start, exec: bool) {
    let ns = Netns::new(if exec { "fxe" } else { "fxa" });
    let early = (start == Start::Before).then(|| attribution_tracer(&ns, &["--no-events"]));
    let mut parent = ns.peer("tw-parent");
    let mut client = ns.peer("tw-client");
    let port: u16 = parent.ok("listen 127.0.0.1 16").parse().unwrap();
    let mut handlers = Vec::new();
    for _ in 0..3 {
        client.ok(&format!("connect 127.0.0.1 {port}"));
        client.ok("keep");
        let mode = if exec { "exec" } else { "keep" };
        handlers.push(
            parent
                .ok(&format!("fork_handler {mode}"))
                .parse::<u64>()
                .unwrap(),
        );
    }
    client.ok("close_kept");
    assert_eq!(
        ns.sockets("close-wait", &["sport", "=", &format!(":{port}")]),
        3
    );
    let tracer = early.unwrap_or_else(|| attribution_tracer(&ns, &["--no-events"]));
    thread::sleep(Duration::from_millis(3500));
    let (lines, stderr) = tracer.stop();
    let leaks = raised(&lines, "close_wait_leak");
    let mut named: Vec<u64> = leaks.iter().filter_map(|f| f["pid"].as_u64()).collect();
    named.sort_unstable();
    handlers.sort_unstable();
    assert_eq!(named, handlers, "{start:?}: {lines:#?}\n{stderr:?}");
    assert!(
        leaks
            .iter()
            .all(|f| f["pid"].as_u64() != Some(parent.pid.into())),
        "the parent holds none of them"
    );
    if exec {
        assert!(leaks.iter().all(|f| f["comm"] == "sleep"), "{leaks:#?}");
    }
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn fork_after_accept_names_the_handlers_tcpwatch_first() {
    if privileged_or_skip("fork_after_accept_names_the_handlers_tcpwatch_first") {
        fork_after_accept(Start::Before, false);
    }
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn fork_after_accept_names_the_handlers_tcpwatch_last() {
    if privileged_or_skip("fork_after_accept_names_the_handlers_tcpwatch_last") {
        fork_after_accept(Start::After, false);
    }
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn exec_after_fork_names_the_program_tcpwatch_first() {
    if privileged_or_skip("exec_after_fork_names_the_program_tcpwatch_first") {
        fork_after_accept(Start::Before, true);
    }
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn exec_after_fork_names_the_program_tcpwatch_last() {
    if privileged_or_skip("exec_after_fork_names_the_program_tcpwatch_last") {
        fork_after_accept(Start::After, true);
    }
}

/// A daemonizing server: the launcher that called listen() forks the daemon
/// and exits. SYN-ACK retransmits on the listener (final ACKs dropped) name
/// the live daemon, not the launcher.
fn daemonized_listener(start: Start) {
    let ns = Netns::new(if start == Start::Before { "dmb" } else { "dma" });
    let early = (start == Start::Before).then(|| attribution_tracer(&ns, &["--no-events"]));
    let mut server = ns.peer("tw-server");
    let reply = server.ok("daemonize tw-daemon");
    let words: Vec<u64> = reply
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [port, daemon, launcher] = words[..] else {
        panic!("daemonize replied {reply:?}");
    };
    let tracer = early.unwrap_or_else(|| attribution_tracer(&ns, &["--no-events"]));
    // Long enough for a look at who holds the listener.
    thread::sleep(Duration::from_millis(1500));
    ns.nft(&drop_rules(&[&format!(
        "tcp dport {port} tcp flags & (syn|fin|rst|ack) == ack drop"
    )]));
    let mut client = ns.peer("tw-client");
    client.ok(&format!("connect 127.0.0.1 {port}"));
    thread::sleep(Duration::from_millis(2500));
    let (lines, stderr) = tracer.stop();
    let f = raised(&lines, "synack_retransmit");
    assert_eq!(f.len(), 1, "{start:?}: {lines:#?}\n{stderr:?}");
    assert_eq!(
        (
            f[0]["pid"].as_u64(),
            f[0]["comm"].as_str(),
            f[0]["lport"].as_u64()
        ),
        (Some(daemon), Some("tw-daemon"), Some(port)),
        "not the launcher {launcher}: {}",
        f[0]
    );
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn daemonized_listener_names_the_daemon_tcpwatch_first() {
    if privileged_or_skip("daemonized_listener_names_the_daemon_tcpwatch_first") {
        daemonized_listener(Start::Before);
    }
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn daemonized_listener_names_the_daemon_tcpwatch_last() {
    if privileged_or_skip("daemonized_listener_names_the_daemon_tcpwatch_last") {
        daemonized_listener(Start::After);
    }
}

/// A pre-fork server: the master listens, two workers accept two
/// connections each and leak them. Each connection's events and the
/// findings name its worker, never the master.
fn pre_fork(start: Start) {
    let ns = Netns::new(if start == Start::Before { "pfb" } else { "pfa" });
    let early = (start == Start::Before).then(|| attribution_tracer(&ns, &[]));
    let mut master = ns.peer("tw-master");
    let mut client = ns.peer("tw-client");
    let port: u16 = master.ok("listen 127.0.0.1 16").parse().unwrap();
    let mut workers = Vec::new();
    let mut by_worker: Vec<(u64, Vec<u16>)> = Vec::new();
    for _ in 0..2 {
        master.send("fork_accept_leak 2");
        let mut ports = Vec::new();
        for _ in 0..2 {
            ports.push(
                client
                    .ok(&format!("connect 127.0.0.1 {port}"))
                    .parse::<u16>()
                    .unwrap(),
            );
            client.ok("keep");
        }
        let pid: u64 = master
            .reply()
            .strip_prefix("ok ")
            .and_then(|p| p.trim().parse().ok())
            .expect("the worker's pid");
        workers.push(pid);
        by_worker.push((pid, ports));
    }
    client.ok("close_kept");
    let tracer = early.unwrap_or_else(|| attribution_tracer(&ns, &[]));
    thread::sleep(Duration::from_millis(3500));
    let (lines, stderr) = tracer.stop();
    let leaks = raised(&lines, "close_wait_leak");
    let mut named: Vec<(u64, u64)> = leaks
        .iter()
        .filter_map(|f| Some((f["pid"].as_u64()?, f["count"].as_u64()?)))
        .collect();
    named.sort_unstable();
    let mut expected: Vec<(u64, u64)> = workers.iter().map(|w| (*w, 2)).collect();
    expected.sort_unstable();
    assert_eq!(named, expected, "{start:?}: {lines:#?}\n{stderr:?}");
    if start == Start::Before {
        // Every event after accept() names the worker that accepted.
        for (worker, ports) in &by_worker {
            for client_port in ports {
                let to_close_wait: Vec<&Value> = lines
                    .iter()
                    .filter(|e| {
                        e["kind"] == "state"
                            && e["new_state"] == "CLOSE_WAIT"
                            && e["sport"] == port
                            && e["dport"] == *client_port
                    })
                    .collect();
                assert_eq!(to_close_wait.len(), 1, "{lines:#?}");
                assert_eq!(
                    to_close_wait[0]["pid"].as_u64(),
                    Some(*worker),
                    "{}",
                    to_close_wait[0]
                );
            }
        }
    }
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn pre_fork_workers_are_named_tcpwatch_first() {
    if privileged_or_skip("pre_fork_workers_are_named_tcpwatch_first") {
        pre_fork(Start::Before);
    }
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn pre_fork_workers_are_named_tcpwatch_last() {
    if privileged_or_skip("pre_fork_workers_are_named_tcpwatch_last") {
        pre_fork(Start::After);
    }
}

/// A handler forked after accept that reads the request: from its first
/// read on (sock_recv_length, 6.2+), the connection's events name it, before
/// any look at /proc.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_handler_that_reads_is_named_from_its_first_read() {
    if !privileged_or_skip("a_handler_that_reads_is_named_from_its_first_read") {
        return;
    }
    let tracepoint = "/sys/kernel/tracing/events/sock/sock_recv_length";
    if !std::path::Path::new(tracepoint).exists() {
        eprintln!("skipped: this kernel has no sock:sock_recv_length (6.2+)");
        return;
    }
    let ns = Netns::new("hrd");
    // No reconciliation during the test: only the kernel programs attribute.
    let tracer = Tracer::start(&ns, &["--reconcile-interval", "0s"]);
    let mut parent = ns.peer("tw-parent");
    let mut client = ns.peer("tw-client");
    let port: u16 = parent.ok("listen 127.0.0.1 16").parse().unwrap();
    let client_port: u16 = client
        .ok(&format!("connect 127.0.0.1 {port}"))
        .parse()
        .unwrap();
    let handler: u64 = parent.ok("fork_handler read").parse().unwrap();
    client.ok("send hello");
    thread::sleep(Duration::from_millis(300));
    client.ok("close");
    thread::sleep(Duration::from_millis(500));
    let (lines, stderr) = tracer.stop();
    let to_close_wait: Vec<&Value> = lines
        .iter()
        .filter(|e| {
            e["kind"] == "state"
                && e["new_state"] == "CLOSE_WAIT"
                && e["sport"] == port
                && e["dport"] == client_port
        })
        .collect();
    assert_eq!(to_close_wait.len(), 1, "{lines:#?}\n{stderr:?}");
    assert_eq!(
        to_close_wait[0]["pid"].as_u64(),
        Some(handler),
        "{}",
        to_close_wait[0]
    );
    assert_eq!(to_close_wait[0]["owner"], "io", "{}", to_close_wait[0]);
}

/// A port range of two ports, both held by open connections: the next
/// connects fail with EADDRNOTAVAIL before any packet. connect_failed
/// names the client, its destination and as many failures as it made;
/// each failed connect ends as no_local_port.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn connect_failed_names_the_process_when_no_port_is_free() {
    if !privileged_or_skip("connect_failed_names_the_process_when_no_port_is_free") {
        return;
    }
    let ns = Netns::new("cfail");
    let tracer = Tracer::start(
        &ns,
        &["--no-events", "--lifecycle", "--reconcile-interval", "1s"],
    );
    let mut server = ns.peer("tw-server");
    // Bound from the default range, outside the narrow one set next.
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    ns.sysctl("net.ipv4.ip_local_port_range", "20000 20001");
    let mut client = ns.peer("tw-client");
    for _ in 0..2 {
        client.ok(&format!("connect 127.0.0.1 {port}"));
        client.ok("keep");
    }
    let failures = 3;
    for _ in 0..failures {
        let reply = client.cmd(&format!("connect 127.0.0.1 {port}"));
        assert!(
            reply.contains("AddrNotAvailable"),
            "the situation under test: {reply}"
        );
    }
    thread::sleep(Duration::from_millis(1500));
    let (lines, stderr) = tracer.stop();
    let raised = raised(&lines, "connect_failed");
    assert_eq!(raised.len(), 1, "{lines:#?}\n{stderr:?}");
    let f = raised[0];
    assert_eq!(
        (f["pid"].as_u64(), f["comm"].as_str(), f["rport"].as_u64()),
        (
            Some(client.pid.into()),
            Some("tw-client"),
            Some(port.into())
        ),
        "{f}"
    );
    let reported = findings(&lines, "connect_failed")
        .iter()
        .filter_map(|f| f["count"].as_u64())
        .max();
    assert_eq!(reported, Some(failures), "{lines:#?}");
    let ends: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "lifecycle" && l["end"] == "no_local_port")
        .collect();
    assert_eq!(ends.len(), failures as usize, "{lines:#?}");
    assert!(ends.iter().all(|l| l["comm"] == "tw-client"), "{ends:#?}");
    // Nothing else was mistaken for such a failure: the two connections
    // that got a port ended well or are still open.
    for other in ["connect_timeout", "connect_refused", "peer_restarted"] {
        assert!(findings(&lines, other).is_empty(), "{other}: {lines:#?}");
    }
    assert!(
        lines
            .iter()
            .filter(|l| l["kind"] == "lifecycle" && l["comm"] == "tw-client")
            .all(|l| l["end"] == "no_local_port"),
        "{lines:#?}"
    );
}

/// A server killed with `kill -9` while holding two connections, one with
/// unread data: the kernel closes both for it, the quiet one with a FIN
/// and the other with a reset. Both end as owner_exited; a connection the
/// server closed itself before ends as an ordinary close.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn owner_exited_is_told_apart_from_close() {
    if !privileged_or_skip("owner_exited_is_told_apart_from_close") {
        return;
    }
    let ns = Netns::new("oexit");
    // Orphaned FIN_WAIT2 sockets end after a second instead of a minute.
    ns.sysctl("net.ipv4.tcp_fin_timeout", "1");
    let tracer = Tracer::start(&ns, &["--no-events", "--lifecycle"]);
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let mut client = ns.peer("tw-client");
    // 1: closed by the server itself.
    client.ok(&format!("connect 127.0.0.1 {port}"));
    client.ok("keep");
    server.ok("accept");
    server.ok("close");
    // 2: held quietly; 3: held with unread data.
    client.ok(&format!("connect 127.0.0.1 {port}"));
    client.ok("keep");
    server.ok("accept");
    server.ok("keep");
    client.ok(&format!("connect 127.0.0.1 {port}"));
    server.ok("accept");
    client.ok("send unread");
    thread::sleep(Duration::from_millis(200));
    // SAFETY: a signal to the peer process this test started.
    assert_eq!(unsafe { libc::kill(server.pid as i32, libc::SIGKILL) }, 0);
    assert!(
        wait_until(Duration::from_secs(5), || {
            ns.sockets("all", &["sport", "=", &format!(":{port}")]) == 0
        }),
        "the server's sockets end"
    );
    thread::sleep(Duration::from_millis(300));
    let (lines, stderr) = tracer.stop();
    let mut server_ends: Vec<&str> = lines
        .iter()
        .filter(|l| l["kind"] == "lifecycle" && l["sport"] == port)
        .filter_map(|l| l["end"].as_str())
        .collect();
    server_ends.sort();
    assert_eq!(
        server_ends,
        ["normal_close", "owner_exited", "owner_exited"],
        "{lines:#?}\n{stderr:?}"
    );
    let exited: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "lifecycle" && l["end"] == "owner_exited")
        .collect();
    assert!(
        exited
            .iter()
            .all(|l| l["pid"].as_u64() == Some(server.pid.into()) && l["comm"] == "tw-server"),
        "{exited:#?}"
    );
}

/// A peer that loses its connection while unreachable: its segments are
/// dropped, the server is killed (its reset dropped too), so the client's
/// data goes unanswered; once the path is back, the host answers the
/// next retransmit with a reset. peer_restarted names the client and the
/// peer; the connection ends as peer_reset.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn peer_restarted_after_unanswered_retransmits() {
    if !privileged_or_skip("peer_restarted_after_unanswered_retransmits") {
        return;
    }
    let ns = Netns::new("prst");
    let tracer = Tracer::start(&ns, &["--no-events", "--lifecycle"]);
    let (server, mut client, port, client_port) =
        connected_peers(&ns, "tw-server", "tw-client", "127.0.0.1");
    client.ok("send before");
    // The server's host becomes unreachable: nothing reaches it, nothing
    // leaves it. Receive side: the client's segments count as sent.
    kill_server_unseen(&ns, &server, port);
    client.ok("send after");
    thread::sleep(Duration::from_millis(1700));
    restore_path(&ns);
    assert!(
        wait_until(Duration::from_secs(10), || {
            ns.sockets("all", &["sport", "=", &format!(":{client_port}")]) == 0
        }),
        "the client's connection is reset"
    );
    thread::sleep(Duration::from_millis(300));
    let (lines, stderr) = tracer.stop();
    let raised = raised(&lines, "peer_restarted");
    assert_eq!(raised.len(), 1, "{lines:#?}\n{stderr:?}");
    let f = raised[0];
    assert_eq!(
        (f["pid"].as_u64(), f["comm"].as_str(), f["rport"].as_u64()),
        (
            Some(client.pid.into()),
            Some("tw-client"),
            Some(port.into())
        ),
        "{f}"
    );
    assert!(f["retransmits"].as_u64().is_some_and(|n| n >= 2), "{f}");
    let end = lines
        .iter()
        .find(|l| l["kind"] == "lifecycle" && l["sport"] == client_port)
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(end["end"], "peer_reset", "{end}");
}

/// A peer that lost the connection while nothing was being said: the
/// server is killed with unread data while the path drops its reset, the
/// path comes back, and after a few seconds of silence the client writes.
/// The server's host answers at once with a reset (no socket), so nothing
/// is retransmitted: peer_restarted says so, with the silence the kernel
/// measured, and the connection ends as peer_reset.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs, iproute2 and nftables; `cargo xtask test` runs it"]
fn peer_restarted_after_a_silence() {
    if !privileged_or_skip("peer_restarted_after_a_silence") {
        return;
    }
    let ns = Netns::new("prsl");
    let tracer = Tracer::start(&ns, &["--no-events", "--lifecycle"]);
    let (server, mut client, port, client_port) =
        connected_peers(&ns, "tw-server", "tw-client", "127.0.0.1");
    client.ok("send before");
    thread::sleep(Duration::from_millis(200));
    kill_server_unseen(&ns, &server, port);
    restore_path(&ns);
    thread::sleep(Duration::from_millis(6500));
    client.ok("send after");
    assert!(
        wait_until(Duration::from_secs(5), || {
            ns.sockets("all", &["sport", "=", &format!(":{client_port}")]) == 0
        }),
        "the client's connection is reset"
    );
    thread::sleep(Duration::from_millis(300));
    let (lines, stderr) = tracer.stop();
    let raised = raised(&lines, "peer_restarted");
    assert_eq!(raised.len(), 1, "{lines:#?}\n{stderr:?}");
    let f = raised[0];
    assert_eq!(
        (
            f["pid"].as_u64(),
            f["rport"].as_u64(),
            f["retransmits"].as_u64()
        ),
        (Some(client.pid.into()), Some(port.into()), Some(0)),
        "{f}"
    );
    let silent = f["silent_seconds"].as_f64().unwrap_or(0.0);
    assert!((5.0..=10.0).contains(&silent), "{f}");
    let end = lines
        .iter()
        .find(|l| l["kind"] == "lifecycle" && l["sport"] == client_port)
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(end["end"], "peer_reset", "{end}");
}

/// Two idle connections, one with SO_KEEPALIVE on the client's side: the
/// client's process is reported for the one without (count 1), the
/// server's for both of its sides (count 2), each with its port.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn idle_without_keepalive_counts_by_process_and_port() {
    if !privileged_or_skip("idle_without_keepalive_counts_by_process_and_port") {
        return;
    }
    let ns = Netns::new("idle");
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--reconcile-interval",
            "1s",
            "--idle-after",
            "2s",
        ],
    );
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let mut client = ns.peer("tw-client");
    client.ok(&format!("connect 127.0.0.1 {port}"));
    client.ok("keep");
    server.ok("accept");
    server.ok("keep");
    client.ok(&format!("connect 127.0.0.1 {port}"));
    client.ok("keepalive");
    client.ok("keep");
    server.ok("accept");
    server.ok("keep");
    thread::sleep(Duration::from_millis(4500));
    let (lines, stderr) = tracer.stop();
    let reports = findings(&lines, "idle_without_keepalive");
    let latest = |pid: u32| {
        reports
            .iter()
            .rfind(|f| f["pid"].as_u64() == Some(pid.into()))
            .copied()
            .unwrap_or_else(|| panic!("no report for pid {pid}: {lines:#?}\n{stderr:?}"))
    };
    let c = latest(client.pid);
    assert_eq!(
        (c["count"].as_u64(), c["rport"].as_u64()),
        (Some(1), Some(port.into())),
        "{c}"
    );
    assert_eq!(c["comm"], "tw-client");
    let s = latest(server.pid);
    assert_eq!(
        (s["count"].as_u64(), s["lport"].as_u64()),
        (Some(2), Some(port.into())),
        "{s}"
    );
    assert!(
        s["longest_idle_seconds"].as_f64().is_some_and(|t| t >= 2.0),
        "{s}"
    );
    assert!(
        reports.iter().all(|f| f["severity"] == "info"),
        "{reports:#?}"
    );
}

/// Sends one bare ACK from `from_port` to `to_port` on 127.0.0.1 in `ns`
/// with hping3 (a stray segment with a random sequence number).
fn stray_ack(ns: &Netns, from_port: u16, to_port: u16) {
    // hping3 exits non-zero when nothing answers it: only that it ran matters.
    let status = std::process::Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "hping3", "-q", "-c", "1", "-A", "-k",
        ])
        .args([
            "-s",
            &from_port.to_string(),
            "-p",
            &to_port.to_string(),
            "127.0.0.1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("hping3 runs (cargo xtask setup --tests installs it)");
    assert!(status.code().is_some(), "hping3 ended by a signal");
}

/// TIME_WAIT assassination: a stray ACK makes the client's TIME_WAIT
/// socket answer with an ACK, the server's host (which has no such
/// connection) answers that with a reset, and with tcp_rfc1337=0 the reset
/// kills the TIME_WAIT at once. time_wait_assassinated names the client
/// and the peer. With tcp_rfc1337=1 the same stray ACK kills nothing and
/// nothing is reported.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn time_wait_assassination_is_reported_unless_rfc1337() {
    if !privileged_or_skip("time_wait_assassination_is_reported_unless_rfc1337") {
        return;
    }
    let ns = Netns::new("twa");
    ns.sysctl("net.ipv4.tcp_rfc1337", "0");
    let tracer = Tracer::start(&ns, &["--no-events", "--reconcile-interval", "1s"]);
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let mut client = ns.peer("tw-client");
    let client_port: u16 = client
        .ok(&format!("connect 127.0.0.1 {port}"))
        .parse()
        .unwrap();
    server.ok("accept");
    client.ok("close");
    server.ok("read_eof");
    server.ok("close");
    let in_time_wait = |p: u16| ns.sockets("time-wait", &["sport", "=", &format!(":{p}")]);
    assert_eq!(in_time_wait(client_port), 1);
    // A reconciliation sees it in TIME_WAIT first.
    thread::sleep(Duration::from_millis(1500));
    stray_ack(&ns, port, client_port);
    assert!(
        wait_until(Duration::from_secs(2), || in_time_wait(client_port) == 0),
        "ground truth: the kernel killed the TIME_WAIT"
    );
    thread::sleep(Duration::from_millis(2500));

    // The same with tcp_rfc1337=1: the reset is ignored.
    ns.sysctl("net.ipv4.tcp_rfc1337", "1");
    let protected: u16 = client
        .ok(&format!("connect 127.0.0.1 {port}"))
        .parse()
        .unwrap();
    server.ok("accept");
    client.ok("close");
    server.ok("read_eof");
    server.ok("close");
    thread::sleep(Duration::from_millis(1500));
    stray_ack(&ns, port, protected);
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(in_time_wait(protected), 1, "ground truth: rfc1337 kept it");
    let (lines, stderr) = tracer.stop();
    let reports = findings(&lines, "time_wait_assassinated");
    let raised = raised(&lines, "time_wait_assassinated");
    assert_eq!(raised.len(), 1, "{lines:#?}\n{stderr:?}");
    let f = raised[0];
    assert_eq!(
        (
            f["pid"].as_u64(),
            f["comm"].as_str(),
            f["rport"].as_u64(),
            f["lport"].as_u64()
        ),
        (
            Some(client.pid.into()),
            Some("tw-client"),
            Some(port.into()),
            Some(client_port.into())
        ),
        "{f}"
    );
    assert!(f["age_seconds"].as_f64().is_some_and(|a| a < 10.0), "{f}");
    assert!(
        reports.iter().all(|r| r["count"] == 1),
        "only the unprotected one: {reports:#?}"
    );
}

/// A listener with a backlog of 1 that never accepts: its accept queue
/// fills, further SYNs are dropped and the kernel counts ListenOverflows.
/// accept_queue_overflow names the listener's process and port, with the
/// queue and its limit from sock_diag, and no more overflows than TcpExt.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn accept_queue_overflow_names_the_listener() {
    if !privileged_or_skip("accept_queue_overflow_names_the_listener") {
        return;
    }
    let ns = Netns::new("aqo");
    // Clients stuck behind the full queue give up after one retry.
    ns.sysctl("net.ipv4.tcp_syn_retries", "1");
    let tracer = Tracer::start(&ns, &["--no-events", "--reconcile-interval", "1s"]);
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 1").parse().unwrap();
    let mut clients: Vec<Peer> = (0..6).map(|_| ns.peer("tw-client")).collect();
    for c in &mut clients {
        c.send(&format!("connect 127.0.0.1 {port}"));
    }
    // The clients behind the queue time out at 3 s (one SYN retransmit);
    // a reconciliation after that names them.
    thread::sleep(Duration::from_millis(4600));
    let (lines, stderr) = tracer.stop();
    let overflows = tcpext(&ns, "ListenOverflows");
    assert!(
        overflows > 0,
        "the kernel counted overflows (the situation under test)"
    );
    let raised = raised(&lines, "accept_queue_overflow");
    assert_eq!(raised.len(), 1, "{lines:#?}\n{stderr:?}");
    let f = raised[0];
    assert_eq!(
        (f["pid"].as_u64(), f["lport"].as_u64()),
        (Some(server.pid.into()), Some(port.into())),
        "{f}"
    );
    assert_eq!(f["queue_limit"], 1, "{f}");
    assert!(f["queue"].as_u64().is_some_and(|q| q >= 1), "{f}");
    let reported = findings(&lines, "accept_queue_overflow")
        .iter()
        .filter_map(|f| f["count"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(
        (1..=overflows).contains(&reported),
        "{reported} overflows reported, TcpExt counted {overflows}"
    );
    // Two connections fit the queue (backlog 1 holds 2); the other four
    // clients' connects timed out, and the finding names who made them.
    let last = findings(&lines, "accept_queue_overflow")
        .last()
        .copied()
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let timed_out = last["clients_timed_out"].as_u64().unwrap_or(0);
    assert!((1..=4).contains(&timed_out), "{last}");
    let named: Vec<&str> = last["clients"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
        .unwrap_or_default();
    assert!(!named.is_empty(), "{last}");
    for client in named {
        assert!(
            clients
                .iter()
                .any(|c| client == format!("tw-client (pid {})", c.pid)),
            "{client} is one of the test's clients: {last}"
        );
    }
}

/// Handshakes whose final ACK meets a full accept queue: three clients
/// finish their side of the handshake while nftables drops their ACKs,
/// five more fill the queue of a listener with a backlog of 4 that never
/// accepts, and the three ACKs that answer the server's SYN-ACK
/// retransmits are dropped by the kernel for want of room
/// (`TCP_LISTEN_OVERFLOW`, Linux 6.15+). tcpwatch shows each as a drop of
/// the listener, and accept_queue_overflow counts them for that listener,
/// no more than TcpExt's ListenOverflows.
#[test]
#[ignore = "privileged: needs root, Linux 6.15+, tcpwatch built with its eBPF programs, iproute2 and nftables; `cargo xtask test` runs it"]
fn accept_queue_overflow_counts_the_listeners_dropped_acks() {
    if !privileged_or_skip("accept_queue_overflow_counts_the_listeners_dropped_acks") {
        return;
    }
    let ns = Netns::new("aqd");
    let tracer = Tracer::start(&ns, &["--reconcile-interval", "1s"]);
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 4").parse().unwrap();
    ns.nft(&format!(
        "table inet aqd {{\n  chain in {{\n    type filter hook input priority 0;\n    tcp dport {port} tcp flags == ack drop\n  }}\n}}\n"
    ));
    let mut early: Vec<Peer> = (0..3).map(|_| ns.peer("tw-client")).collect();
    for c in &mut early {
        c.ok(&format!("connect 127.0.0.1 {port}"));
    }
    ns.exec(&["nft", "delete", "table", "inet", "aqd"]);
    let mut late: Vec<Peer> = (0..5).map(|_| ns.peer("tw-client")).collect();
    for c in &mut late {
        c.ok(&format!("connect 127.0.0.1 {port}"));
    }
    // The server retransmits its SYN-ACKs at 1 s; the early clients' ACKs
    // then meet the full queue.
    thread::sleep(Duration::from_millis(3200));
    let (lines, stderr) = tracer.stop();
    let overflows = tcpext(&ns, "ListenOverflows");
    let drops: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "drop" && l["sport"] == port)
        .collect();
    assert!(!drops.is_empty(), "{lines:#?}\n{stderr:?}");
    for d in &drops {
        assert_eq!(
            (
                d["reason"].as_str(),
                d["state"].as_str(),
                d["dport"].as_u64()
            ),
            (Some("TCP_LISTEN_OVERFLOW"), Some("LISTEN"), Some(0)),
            "{d}"
        );
    }
    let last = findings(&lines, "accept_queue_overflow")
        .last()
        .copied()
        .unwrap_or_else(|| panic!("{lines:#?}\n{stderr:?}"));
    assert_eq!(
        (last["pid"].as_u64(), last["lport"].as_u64()),
        (Some(server.pid.into()), Some(port.into())),
        "{last}"
    );
    let dropped = last["overflow_drops"].as_u64().unwrap_or(0);
    assert!(
        dropped >= 1 && dropped as usize <= drops.len() && dropped <= overflows,
        "{dropped} dropped ACKs reported, {} drop events, TcpExt ListenOverflows {overflows}: {last}",
        drops.len()
    );
}

/// Two namespaces over a veth: `server` (10.232.0.2) sends what is not for
/// the link through `outside` (10.232.0.1), which does not forward (a new
/// namespace's ip_forward is 0): SYN-ACKs to spoofed sources leave the
/// server and die there, unanswered, as they would on the internet.
/// Returns the namespaces and the server's address.
fn flood_pair(tag: &str) -> (Netns, Netns, &'static str) {
    let server = Netns::new(tag);
    let outside = Netns::new(&format!("{tag}o"));
    let status = std::process::Command::new("ip")
        .args([
            "link",
            "add",
            "sfveth0",
            "netns",
            &outside.name,
            "type",
            "veth",
        ])
        .args(["peer", "name", "sfveth1", "netns", &server.name])
        .status()
        .expect("ip runs");
    assert!(status.success(), "ip link add veth");
    outside.exec(&["ip", "addr", "add", "10.232.0.1/24", "dev", "sfveth0"]);
    server.exec(&["ip", "addr", "add", "10.232.0.2/24", "dev", "sfveth1"]);
    outside.exec(&["ip", "link", "set", "sfveth0", "up"]);
    server.exec(&["ip", "link", "set", "sfveth1", "up"]);
    server.exec(&["ip", "route", "add", "default", "via", "10.232.0.1"]);
    assert_eq!(
        outside
            .exec(&["sysctl", "-n", "net.ipv4.ip_forward"])
            .trim(),
        "0",
        "the outside namespace must drop what is not its own"
    );
    (server, outside, "10.232.0.2")
}

/// `count` SYNs to `addr:port` from random spoofed sources, 100 us apart,
/// sent by hping3 in `ns`; returns how many it says it sent. Its exit
/// status is not looked at: it reports whether answers came back.
fn hping3_syn_flood(ns: &Netns, addr: &str, port: u16, count: u32) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "hping3", "-S", "--rand-source"])
        .args([
            "-p",
            &port.to_string(),
            "-i",
            "u100",
            "-c",
            &count.to_string(),
        ])
        .args(["-q", addr])
        .output()
        .expect("hping3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| {
            l.split_once(" packets transmitted")
                .and_then(|(n, _)| n.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no statistics from hping3: {text}"))
}

/// The SYN queue's TcpExt counters.
const SYN_COUNTERS: [&str; 5] = [
    "SyncookiesSent",
    "SyncookiesRecv",
    "SyncookiesFailed",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
];

/// What one flood left: tcpwatch's lines, the listener, what hping3 sent,
/// the half-open connections `ss` listed right after, and the server
/// namespace's counters after tcpwatch stopped.
struct Flood {
    lines: Vec<Value>,
    stderr: Vec<String>,
    pid: u32,
    port: u16,
    sent: u64,
    half_open: usize,
    kernel: std::collections::BTreeMap<&'static str, u64>,
}

/// A listener with a backlog of 64 that never accepts, in `ns`, flooded
/// with 3000 spoofed SYNs from `outside` under `tcpwatch trace`.
fn flood(ns: &Netns, outside: &Netns, addr: &str) -> Flood {
    let tracer = Tracer::start(
        ns,
        &[
            "--no-events",
            "--reconcile-interval",
            "1s",
            "--finding-interval",
            "1s",
        ],
    );
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok(&format!("listen {addr} 64")).parse().unwrap();
    // A reconciliation before the flood: the counters' baseline.
    thread::sleep(Duration::from_millis(1500));
    let sent = hping3_syn_flood(outside, addr, port, 3000);
    let half_open = ns.sockets("syn-recv", &["sport", "=", &format!(":{port}")]);
    // The request sockets resend their SYN-ACK 1 s and 3 s after the SYN.
    thread::sleep(Duration::from_millis(3500));
    let (lines, stderr) = tracer.stop();
    let kernel = SYN_COUNTERS.map(|n| (n, tcpext(ns, n))).into();
    Flood {
        lines,
        stderr,
        pid: server.pid,
        port,
        sent,
        half_open,
        kernel,
    }
}

impl Flood {
    /// The largest `name` any syn_flood report showed.
    fn reported(&self, name: &str) -> u64 {
        findings(&self.lines, "syn_flood")
            .iter()
            .filter_map(|f| f[name].as_u64())
            .max()
            .unwrap_or(0)
    }

    /// The one syn_flood raised: on the listener, with its owner, within
    /// the kernel's counters; the SYN-ACKs resent to the spoofed sources
    /// are its evidence and no synack_retransmit outlives it.
    fn raised_on_the_listener(&self, addr: &str) -> &Value {
        let f = raised(&self.lines, "syn_flood");
        assert_eq!(f.len(), 1, "{:#?}\n{:?}", self.lines, self.stderr);
        let f = f[0];
        assert_eq!(
            (f["pid"].as_u64(), f["lport"].as_u64(), f["laddr"].as_str()),
            (Some(self.pid.into()), Some(self.port.into()), Some(addr)),
            "{f}"
        );
        assert_eq!(f["syn_queue_limit"], 64, "{f}");
        let half_open = f["half_open"].as_u64().unwrap_or(0);
        assert!((1..=65).contains(&half_open), "{f}");
        for name in SYN_COUNTERS {
            let (reported, kernel) = (self.reported(name), self.kernel[name]);
            assert!(
                reported <= kernel,
                "{reported} {name} reported, TcpExt counted {kernel}"
            );
        }
        let full = self.kernel["TCPReqQFullDrop"] + self.kernel["TCPReqQFullDoCookies"];
        assert!(
            (1..=full).contains(&self.reported("count")),
            "count {} against {full} SYNs at a full queue",
            self.reported("count")
        );
        assert!(self.reported("synack_retransmits") > 0, "{:#?}", self.lines);
        let synack: Vec<&Value> = findings(&self.lines, "synack_retransmit")
            .into_iter()
            .filter(|s| s["lport"] == self.port)
            .collect();
        let raised = synack.iter().filter(|s| s["status"] == "raised").count();
        let superseded = synack
            .iter()
            .filter(|s| s["status"] == "resolved" && s["superseded_by"] == "syn_flood")
            .count();
        assert_eq!(raised, superseded, "{synack:#?}");
        eprintln!(
            "{} SYNs sent, {} half-open listed by ss; kernel {:?}; tcpwatch: {}",
            self.sent,
            self.half_open,
            self.kernel,
            findings(&self.lines, "syn_flood")
                .last()
                .map(|f| f.to_string())
                .unwrap_or_default()
        );
        f
    }
}

/// A SYN flood from spoofed sources (hping3 --rand-source, from a second
/// namespace over a veth) at a listener with a backlog of 64 that never
/// accepts, with tcp_syncookies=1: 65 request sockets fill its SYN queue
/// and the kernel answers the rest with syncookies. syn_flood names the
/// listener's process and port, says cookies protect it, and counts no more
/// than the kernel's TcpExt counters.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn syn_flood_with_cookies_names_the_listener() {
    let test = "syn_flood_with_cookies_names_the_listener";
    if !privileged_or_skip(test) || !program_or_skip(test, "hping3") {
        return;
    }
    let (ns, outside, addr) = flood_pair("sfc");
    ns.sysctl("net.ipv4.tcp_syncookies", "1");
    let flood = flood(&ns, &outside, addr);
    assert!(
        flood.kernel["SyncookiesSent"] > 0,
        "the kernel sent cookies (the situation under test): {:?}",
        flood.kernel
    );
    let f = flood.raised_on_the_listener(addr);
    assert_eq!(f["severity"], "warning", "{f}");
    let summary = f["summary"].as_str().unwrap_or("");
    assert!(summary.contains("cookies are protecting it"), "{summary}");
    assert!(flood.reported("SyncookiesSent") > 0);
    assert_eq!(flood.reported("TCPReqQFullDrop"), 0);
}

/// The same flood with tcp_syncookies=0: SYNs beyond the full SYN queue
/// are dropped (TCPReqQFullDrop), and syn_flood is critical.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn syn_flood_without_cookies_is_critical() {
    let test = "syn_flood_without_cookies_is_critical";
    if !privileged_or_skip(test) || !program_or_skip(test, "hping3") {
        return;
    }
    let (ns, outside, addr) = flood_pair("sfd");
    ns.sysctl("net.ipv4.tcp_syncookies", "0");
    let flood = flood(&ns, &outside, addr);
    assert!(
        flood.kernel["TCPReqQFullDrop"] > 0,
        "the kernel dropped SYNs (the situation under test): {:?}",
        flood.kernel
    );
    let f = flood.raised_on_the_listener(addr);
    assert_eq!(f["severity"], "critical", "{f}");
    let summary = f["summary"].as_str().unwrap_or("");
    assert!(
        summary.contains("is losing SYNs") && summary.contains("tcp_syncookies=0"),
        "{summary}"
    );
    assert!(flood.reported("TCPReqQFullDrop") > 0);
    assert_eq!(flood.reported("SyncookiesSent"), 0);
}

/// A burst of 100 real clients at once, from the other namespace, to a
/// listener with a backlog of 128 that accepts them: no syn_flood.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_burst_of_real_connections_is_no_syn_flood() {
    if !privileged_or_skip("a_burst_of_real_connections_is_no_syn_flood") {
        return;
    }
    let (ns, outside, addr) = flood_pair("sfq");
    let tracer = Tracer::start(&ns, &["--no-events", "--reconcile-interval", "1s"]);
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok(&format!("listen {addr} 128")).parse().unwrap();
    server.send("fork_accept_leak 100");
    thread::sleep(Duration::from_millis(1500));
    let mut client = outside.peer("tw-client");
    assert_eq!(client.ok(&format!("connect_many {addr} {port} 100")), "100");
    assert!(server.reply().starts_with("ok"), "the server accepted them");
    thread::sleep(Duration::from_millis(2500));
    let (lines, stderr) = tracer.stop();
    for name in SYN_COUNTERS {
        assert_eq!(
            tcpext(&ns, name),
            0,
            "{name}: the kernel saw no overflow either"
        );
    }
    assert!(
        findings(&lines, "syn_flood").is_empty(),
        "{lines:#?}\n{stderr:?}"
    );
}

/// Review: every dump resets the session's periodic clock, even a dump of
/// one namespace made to confirm the owners of a CLOSE_WAIT that crossed
/// `--close-wait-age` unseen. A service that keeps leaking CLOSE_WAIT in
/// namespace A asks for A every 3 s or so, so with `--reconcile-interval`
/// above that the periodic dump of every namespace never comes: what only
/// reconciliations find in namespace B (here a `sysctl_risk` set after
/// start; likewise accept_queue_overflow, syn_flood, TIME_WAIT
/// corrections) is never reported. The README: "at start and every
/// `--reconcile-interval`, tcpwatch dumps the TCP sockets of every network
/// namespace (or those of `--netns`)".
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_leak_confirmed_in_one_namespace_does_not_starve_the_periodic_reconciliation_of_another() {
    if !privileged_or_skip(
        "a_leak_confirmed_in_one_namespace_does_not_starve_the_periodic_reconciliation_of_another",
    ) {
        return;
    }
    let leaking = Netns::new("starve-a");
    let quiet = Netns::new("starve-b");
    let quiet_inode = quiet.inode.to_string();
    let tracer = Tracer::start(
        &leaking,
        &[
            "--netns",
            &quiet_inode,
            "--no-events",
            "--close-wait-age",
            "1s",
            "--reconcile-interval",
            "5s",
        ],
    );
    // A risk in B that only a reconciliation of B can see.
    quiet.sysctl("net.ipv4.tcp_tw_reuse", "1");
    quiet.sysctl("net.ipv4.tcp_timestamps", "0");
    let mut leaky = leaking.peer("tw-leaky");
    let mut client = leaking.peer("tw-client");
    let port: u16 = leaky.ok("listen 127.0.0.1 64").parse().expect("port");
    // A new CLOSE_WAIT every second for 16 s: each crosses 1 s before
    // any dump of A has seen it.
    for _ in 0..16 {
        client.ok(&format!("connect 127.0.0.1 {port}"));
        leaky.ok("accept");
        client.ok("close");
        leaky.ok("keep");
        thread::sleep(Duration::from_millis(1000));
    }
    let (lines, stderr) = tracer.stop();
    assert!(
        !raised(&lines, "close_wait_leak").is_empty(),
        "A's leak was reported: {lines:#?} {stderr:#?}"
    );
    let risks: Vec<_> = raised(&lines, "sysctl_risk")
        .into_iter()
        .filter(|f| f["netns"] == quiet.inode)
        .collect();
    assert!(
        !risks.is_empty(),
        "16 s with --reconcile-interval 5s and namespace B was never reconciled: {lines:#?}"
    );
}
