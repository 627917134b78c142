//! Situations where a finding could name the wrong process or report what
//! did not happen (each once did): privileged scenarios with real sockets
//! in namespaces made by each test. Each asserts the kernel's ground truth
//! first, so a passing run means the situation was made.

use std::{thread, time::Duration};

use crate::common::*;
use serde_json::Value;

fn lifecycle(lines: &[Value], sport: u16) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["kind"] == "lifecycle" && l["sport"] == sport)
        .collect()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Send-Q of the connection from local port `sport`, as `ss` lists it.
fn send_queue(ns: &Netns, sport: u16) -> Option<u64> {
    let out = ns.exec(&["ss", "-tnH", "sport", "=", &format!(":{sport}")]);
    let line = out.lines().next()?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A client closes a connection it has read to the end (an orphan: the
/// kernel hands it to a timewait socket in its FIN_WAIT2 substate, which
/// `ss` lists as FIN-WAIT-2, never as TIME-WAIT), and the server, which
/// still has something to say, writes 50 ms later. The FIN_WAIT2 timewait
/// answers with a reset and is dropped at once (whatever tcp_rfc1337 is).
/// No TIME_WAIT existed, none was assassinated; tcpwatch's model inferred
/// one at FIN_WAIT2 -> CLOSE and reports its disappearance as
/// time_wait_assassinated.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn an_orphan_killed_by_late_data_is_no_time_wait_assassination() {
    if !privileged_or_skip("an_orphan_killed_by_late_data_is_no_time_wait_assassination") {
        return;
    }
    let ns = Netns::new("rvtw");
    ns.sysctl("net.ipv4.tcp_rfc1337", "0");
    let tracer = Tracer::start(
        &ns,
        &["--no-events", "--lifecycle", "--reconcile-interval", "1s"],
    );
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let mut client = ns.peer("tw-client");
    // A reconciliation of the namespace first (an early death needs one).
    thread::sleep(Duration::from_millis(1500));
    let client_port: u16 = client
        .ok(&format!("connect 127.0.0.1 {port}"))
        .parse()
        .unwrap();
    server.ok("accept");
    client.ok("close");
    let filter = ["sport", "=", &format!(":{client_port}")];
    // The server's ACK of the FIN may take a moment on a loaded machine.
    wait_until(Duration::from_secs(1), || {
        ns.sockets("fin-wait-2", &filter) + ns.sockets("time-wait", &filter) > 0
    });
    let (fin_wait2, time_wait) = (
        ns.sockets("fin-wait-2", &filter),
        ns.sockets("time-wait", &filter),
    );
    thread::sleep(Duration::from_millis(50));
    server.ok("send late");
    assert!(
        wait_until(Duration::from_secs(2), || ns.sockets("all", &filter) == 0),
        "ground truth: the late data killed the orphan"
    );
    assert_eq!(
        (fin_wait2, time_wait),
        (1, 0),
        "ground truth: an orphan in FIN-WAIT-2, no TIME-WAIT"
    );
    thread::sleep(Duration::from_millis(2500));
    let (lines, stderr) = tracer.stop();
    let f = raised(&lines, "time_wait_assassinated");
    assert!(
        f.is_empty(),
        "no TIME_WAIT existed, none was assassinated: {f:#?}\n{stderr:?}"
    );
}

/// Two segments' worth of loss (the server's input dropped for 700 ms:
/// the client retransmits twice), then the path is back and the server
/// acknowledges everything (ground truth: the client's Send-Q is 0). A
/// second later the server application, alive and never restarted, aborts
/// the connection (SO_LINGER 0). That is an ordinary reset; tcpwatch ends
/// it as peer_reset and raises peer_restarted ("the peer lost the
/// connection (it restarted, or crashed and came back)").
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_peer_abort_after_a_brief_loss_is_no_peer_restart() {
    if !privileged_or_skip("a_peer_abort_after_a_brief_loss_is_no_peer_restart") {
        return;
    }
    let ns = Netns::new("rvpr");
    let tracer = Tracer::start(&ns, &["--no-events", "--lifecycle"]);
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let mut client = ns.peer("tw-client");
    let client_port: u16 = client
        .ok(&format!("connect 127.0.0.1 {port}"))
        .parse()
        .unwrap();
    server.ok("accept");
    ns.nft(&format!(
        "table inet rv {{\n  chain in {{\n    type filter hook input priority 0;\n    tcp dport {port} drop\n  }}\n}}\n"
    ));
    client.ok("send lost-for-a-moment");
    thread::sleep(Duration::from_millis(700));
    ns.exec(&["nft", "delete", "table", "inet", "rv"]);
    assert!(
        wait_until(Duration::from_secs(5), || send_queue(&ns, client_port)
            == Some(0)),
        "ground truth: the server acknowledged the data"
    );
    thread::sleep(Duration::from_millis(200));
    server.ok("linger0");
    server.ok("close");
    let filter = ["sport", "=", &format!(":{client_port}")];
    assert!(
        wait_until(Duration::from_secs(2), || ns.sockets("all", &filter) == 0),
        "ground truth: the client's connection was reset"
    );
    assert!(
        alive(server.pid),
        "ground truth: the server never restarted"
    );
    let (lines, stderr) = tracer.stop();
    let ends: Vec<&Value> = lifecycle(&lines, client_port);
    assert!(
        !ends.is_empty(),
        "the client's connection ended in sight: {lines:#?}\n{stderr:?}"
    );
    assert!(
        ends.iter().all(|l| l["end"] != "peer_reset"),
        "an abort by a live peer: {ends:#?}"
    );
    let f = raised(&lines, "peer_restarted");
    assert!(f.is_empty(), "the peer never restarted: {f:#?}");
}

/// A live server that aborts a connection in answer to a request that came
/// after a silence (an idle keep-alive connection it no longer wants): the
/// client's request is acknowledged by the server's kernel at once (data
/// after an idle spell is acknowledged without delay), then the server
/// reads it and closes with SO_LINGER 0. A reset after a silence, but not
/// one from a host that lost the connection: no peer_restarted.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_live_peer_aborting_after_a_silence_is_no_peer_restart() {
    if !privileged_or_skip("a_live_peer_aborting_after_a_silence_is_no_peer_restart") {
        return;
    }
    let ns = Netns::new("rvsl");
    let tracer = Tracer::start(&ns, &["--no-events", "--lifecycle"]);
    let (mut server, mut client, _port, client_port) =
        connected_peers(&ns, "tw-server", "tw-client", "127.0.0.1");
    thread::sleep(Duration::from_millis(6500));
    client.ok("send request");
    server.ok("recv");
    server.ok("linger0");
    server.ok("close");
    let filter = ["sport", "=", &format!(":{client_port}")];
    assert!(
        wait_until(Duration::from_secs(2), || ns.sockets("all", &filter) == 0),
        "ground truth: the client's connection was reset"
    );
    assert!(
        alive(server.pid),
        "ground truth: the server never restarted"
    );
    let (lines, stderr) = tracer.stop();
    let ends: Vec<&Value> = lifecycle(&lines, client_port);
    assert!(
        !ends.is_empty(),
        "the client's connection ended in sight: {lines:#?}\n{stderr:?}"
    );
    assert!(
        ends.iter().all(|l| l["end"] == "reset_received"),
        "an abort by a live peer: {ends:#?}"
    );
    let f = raised(&lines, "peer_restarted");
    assert!(f.is_empty(), "the peer never restarted: {f:#?}");
}

/// The same live abort after a silence, by a request/response server: it
/// answered an earlier request at once (which puts its socket in the
/// kernel's interactive "pingpong" mode), so when the next request comes
/// after 6.5 s of quiet its kernel delays the ACK, hoping to piggyback it
/// on a reply (tcp_in_quickack_mode() is false in pingpong mode). The
/// server reads the request and aborts (SO_LINGER 0) within that delay:
/// the reset reaches the client before any ACK, with the request
/// outstanding and the peer's last timestamp 6 s old. The server is alive
/// and never lost the connection: no peer_restarted, and the connection
/// ends as reset_received, not peer_reset.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_live_request_response_server_aborting_after_a_silence_is_no_peer_restart() {
    if !privileged_or_skip(
        "a_live_request_response_server_aborting_after_a_silence_is_no_peer_restart",
    ) {
        return;
    }
    let ns = Netns::new("rvpp");
    let tracer = Tracer::start(&ns, &["--no-events", "--lifecycle"]);
    let (mut server, mut client, _port, client_port) =
        connected_peers(&ns, "tw-server", "tw-client", "127.0.0.1");
    // A first exchange, answered at once.
    client.ok("send request1");
    server.ok("recv");
    server.ok("send response1");
    client.ok("recv");
    thread::sleep(Duration::from_millis(6500));
    // The server waits in recv() before the request is sent, and aborts
    // as soon as it has read it.
    server.send("recv");
    client.ok("send request2");
    assert!(
        server.reply().starts_with("ok"),
        "the server read the request"
    );
    server.ok("linger0");
    server.ok("close");
    let filter = ["sport", "=", &format!(":{client_port}")];
    assert!(
        wait_until(Duration::from_secs(2), || ns.sockets("all", &filter) == 0),
        "ground truth: the client's connection was reset"
    );
    assert!(
        alive(server.pid),
        "ground truth: the server never restarted"
    );
    thread::sleep(Duration::from_millis(300));
    let (lines, stderr) = tracer.stop();
    let ends: Vec<&Value> = lifecycle(&lines, client_port);
    assert!(
        !ends.is_empty(),
        "the client's connection ended in sight: {lines:#?}\n{stderr:?}"
    );
    let f = raised(&lines, "peer_restarted");
    assert!(
        f.is_empty(),
        "a live server aborted; it never restarted: {f:#?}\nends: {ends:#?}"
    );
    assert!(
        ends.iter().all(|l| l["end"] == "reset_received"),
        "an abort by a live peer: {ends:#?}"
    );
}

/// Fork after accept: the server accepts, forks a handler that holds the
/// connection and closes its own copy. The client sends a request the
/// handler never reads, and the handler is killed. The kernel closes the
/// connection in the exiting handler (a reset: unread data), so the end is
/// owner_exited, and the process that exited is the handler. tcpwatch names
/// the parent (the listener's owner, inherited at accept), which is alive
/// and closed nothing: the abortive close (ESTABLISHED -> CLOSE) does not
/// bind the current task as the owner in the eBPF program, unlike
/// ESTABLISHED -> FIN_WAIT1.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn owner_exited_names_the_handler_that_exited_not_its_parent() {
    if !privileged_or_skip("owner_exited_names_the_handler_that_exited_not_its_parent") {
        return;
    }
    let ns = Netns::new("rvoe");
    // No reconciliation between the fork and the kill (the first one runs
    // at start): only the events name the holder.
    let tracer = Tracer::start(
        &ns,
        &["--no-events", "--lifecycle", "--reconcile-interval", "600s"],
    );
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let mut client = ns.peer("tw-client");
    client.ok(&format!("connect 127.0.0.1 {port}"));
    let handler: u32 = server.ok("fork_handler plain").parse().unwrap();
    client.ok("send unread");
    thread::sleep(Duration::from_millis(200));
    // SAFETY: a signal to the handler this test's peer forked.
    assert_eq!(unsafe { libc::kill(handler as i32, libc::SIGKILL) }, 0);
    let filter = ["sport", "=", &format!(":{port}")];
    assert!(
        wait_until(Duration::from_secs(5), || ns
            .sockets("established", &filter)
            == 0),
        "ground truth: the handler's connection was closed"
    );
    assert!(alive(server.pid), "ground truth: the parent did not exit");
    thread::sleep(Duration::from_millis(300));
    let (lines, stderr) = tracer.stop();
    let ends = lifecycle(&lines, port);
    let exited: Vec<&&Value> = ends.iter().filter(|l| l["end"] == "owner_exited").collect();
    assert_eq!(exited.len(), 1, "{lines:#?}\n{stderr:?}");
    assert_eq!(
        exited[0]["pid"].as_u64(),
        Some(handler.into()),
        "the handler exited holding it, not the parent (pid {}): {}",
        server.pid,
        exited[0]
    );
}

/// An operator clears TIME_WAIT sockets with `ss -K` (sock_diag
/// SOCK_DESTROY: `tcp_abort()` deschedules a timewait socket). Nothing the
/// kernel counts or traces tells that from a reset reaching them, so the
/// finding must not claim a reset as a certainty, nor present tcp_rfc1337
/// as the whole cure: it names both causes.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn time_wait_killed_by_ss_k_is_not_blamed_on_a_reset_alone() {
    if !privileged_or_skip("time_wait_killed_by_ss_k_is_not_blamed_on_a_reset_alone") {
        return;
    }
    let ns = Netns::new("rvssk");
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
    let sport = format!(":{client_port}");
    let filter = ["sport", "=", sport.as_str()];
    assert_eq!(ns.sockets("time-wait", &filter), 1);
    // A reconciliation sees it in TIME_WAIT first.
    thread::sleep(Duration::from_millis(1500));
    ns.exec(&["ss", "-K", "state", "time-wait", "sport", "=", &sport]);
    assert!(
        wait_until(Duration::from_secs(2), || ns.sockets("time-wait", &filter)
            == 0),
        "ground truth: ss -K removed the TIME_WAIT"
    );
    thread::sleep(Duration::from_millis(2500));
    let (lines, stderr) = tracer.stop();
    let f = raised(&lines, "time_wait_assassinated");
    assert!(
        f.iter().all(
            |f| f["summary"].as_str().is_some_and(|s| s.contains("ss -K"))
                && f["remedy"].as_str().is_some_and(|r| r.contains("ss -K"))
        ),
        "an operator's ss -K must be named as a possible cause: {f:#?}\n{stderr:?}"
    );
}

/// A client closes (nothing unread: an orphan in FIN_WAIT1) while the
/// server still has data on the way: the server's pure ACK of the FIN is
/// lost (dropped here by a rule on 52-byte segments from the server), and
/// the server's next segment both acknowledges the FIN and carries data.
/// The kernel moves the orphan to FIN_WAIT2 and, data after close(), calls
/// tcp_done() and sends a reset (TcpExt TCPAbortOnData): no TIME_WAIT. The
/// trace shows FIN_WAIT2 -> CLOSE and then the sent reset; tcpwatch ends it
/// as normal_close with a TIME_WAIT, which the next reconciliation finds
/// gone and reports as time_wait_assassinated.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn an_orphan_reset_for_data_after_close_has_no_time_wait() {
    if !privileged_or_skip("an_orphan_reset_for_data_after_close_has_no_time_wait") {
        return;
    }
    let ns = Netns::new("rvad");
    ns.sysctl("net.ipv4.tcp_rfc1337", "0");
    let tracer = Tracer::start(
        &ns,
        &["--no-events", "--lifecycle", "--reconcile-interval", "1s"],
    );
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let mut client = ns.peer("tw-client");
    thread::sleep(Duration::from_millis(1500));
    let client_port: u16 = client
        .ok(&format!("connect 127.0.0.1 {port}"))
        .parse()
        .unwrap();
    server.ok("accept");
    ns.nft(&format!(
        "table inet rv {{\n  chain in {{\n    type filter hook input priority 0;\n    tcp sport {port} ip length 52 drop\n  }}\n}}\n"
    ));
    let aborts = tcpext(&ns, "TCPAbortOnData");
    client.ok("close");
    thread::sleep(Duration::from_millis(50));
    server.ok("send late");
    let filter = ["sport", "=", &format!(":{client_port}")];
    assert!(
        wait_until(Duration::from_secs(2), || ns.sockets("all", &filter) == 0),
        "ground truth: the client's socket is gone, no TIME-WAIT"
    );
    assert_eq!(
        tcpext(&ns, "TCPAbortOnData"),
        aborts + 1,
        "ground truth: the kernel aborted it for data after close()"
    );
    ns.exec(&["nft", "delete", "table", "inet", "rv"]);
    thread::sleep(Duration::from_millis(2500));
    let (lines, stderr) = tracer.stop();
    let ends = lifecycle(&lines, client_port);
    assert_eq!(ends.len(), 1, "{lines:#?}\n{stderr:?}");
    let f = raised(&lines, "time_wait_assassinated");
    assert!(
        ends[0]["end"] != "normal_close" && ends[0]["time_wait"] == false && f.is_empty(),
        "reset for data after close, no TIME_WAIT: {}\ntime_wait_assassinated: {f:#?}",
        ends[0]
    );
}
