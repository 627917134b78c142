//! Privileged end-to-end tests of `tcpwatch trace --json`: real sockets in
//! peer processes with their own command names, each test in its own
//! network namespace, checked against what the test did.

use std::{thread, time::Duration};

use crate::common::*;
use serde_json::Value;

const CLIENT: &str = "tw-client";

const SERVER: &str = "tw-server";

/// A server and a client peer in `ns`, connected over `addr`.
fn connected_pair(ns: &Netns, addr: &str) -> (Peer, Peer, u16, u16) {
    connected_peers(ns, SERVER, CLIENT, addr)
}

fn kinds<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// The client closes first: it passes through FIN_WAIT1/2 (then TIME_WAIT,
/// which the tracepoint shows as `-> CLOSE`), the server through CLOSE_WAIT
/// and LAST_ACK. `classic`: with the classic tracepoint programs that
/// tcpwatch falls back to where the raw ones cannot be used, which must
/// see exactly the same.
fn client_active_close(v6: bool, classic: bool) {
    let ns = Netns::new(if v6 { "cac6" } else { "cac4" });
    let env: &[(&str, &str)] = if classic {
        &[("TCPWATCH_CLASSIC_TRACEPOINTS", "1"), ("RUST_LOG", "debug")]
    } else {
        &[("RUST_LOG", "debug")]
    };
    let tracer = Tracer::start_env(&ns, &["-vv"], env);
    let addr = localhost(v6).to_string();
    let (mut server, mut client, port, client_port) = connected_pair(&ns, &addr);
    client.ok("close");
    server.ok("read_eof");
    server.ok("close");
    server.ok("close_listener");
    let (events, stderr) = tracer.stop();

    let client_sock = socket_with(&events, "CLOSE->SYN_SENT", port);
    assert_eq!(
        transitions(&client_sock),
        [
            "CLOSE->SYN_SENT",
            "SYN_SENT->ESTABLISHED",
            "ESTABLISHED->FIN_WAIT1",
            "FIN_WAIT1->FIN_WAIT2",
            "FIN_WAIT2->CLOSE"
        ]
    );
    assert_owned_by(&client_sock, &client);

    let server_sock = socket_with(&events, "LISTEN->SYN_RECV", client_port);
    assert_eq!(
        transitions(&server_sock),
        [
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->CLOSE_WAIT",
            "CLOSE_WAIT->LAST_ACK",
            "LAST_ACK->CLOSE"
        ]
    );
    assert_owned_by(&server_sock, &server);

    let listener = socket_with(&events, "CLOSE->LISTEN", port);
    assert_eq!(transitions(&listener), ["CLOSE->LISTEN", "LISTEN->CLOSE"]);
    assert_owned_by(&listener, &server);

    let family = if v6 { 6 } else { 4 };
    for e in client_sock.iter().chain(&server_sock) {
        assert_eq!(e["family"], family, "{e}");
        assert_eq!(e["netns"], ns.inode, "{e}");
        assert_eq!(e["saddr"], addr.as_str(), "{e}");
        assert_eq!(e["daddr"], addr.as_str(), "{e}");
        assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    }
    // The established client socket's endpoints are the real ones.
    let est = &client_sock[1];
    assert_eq!(
        (est["sport"].as_u64(), est["dport"].as_u64()),
        (Some(client_port.into()), Some(port.into()))
    );
    // Time in the previous state is known from the second transition on.
    assert!(
        client_sock[1..]
            .iter()
            .all(|e| e["ms"].as_f64().is_some_and(|ms| ms >= 0.0)),
        "{client_sock:#?}"
    );
    assert!(kinds(&events, "reset_sent").is_empty() && kinds(&events, "reset_received").is_empty());
    let raw = stderr
        .iter()
        .any(|l| l.contains("inet_sock_set_state attached as a raw tracepoint"));
    assert_eq!(raw, !classic, "which programs ran: {stderr:#?}");
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn client_active_close_v4() {
    if privileged_or_skip("client_active_close_v4") {
        client_active_close(false, false);
    }
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn client_active_close_v6() {
    if privileged_or_skip("client_active_close_v6") {
        client_active_close(true, false);
    }
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn client_active_close_v4_on_classic_tracepoints() {
    if privileged_or_skip("client_active_close_v4_on_classic_tracepoints") {
        client_active_close(false, true);
    }
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn client_active_close_v6_on_classic_tracepoints() {
    if privileged_or_skip("client_active_close_v6_on_classic_tracepoints") {
        client_active_close(true, true);
    }
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn server_active_close() {
    if !privileged_or_skip("server_active_close") {
        return;
    }
    let ns = Netns::new("sac");
    let tracer = Tracer::start(&ns, &[]);
    let (mut server, mut client, port, client_port) = connected_pair(&ns, "127.0.0.1");
    server.ok("close");
    client.ok("read_eof");
    client.ok("close");
    let (events, _) = tracer.stop();

    let server_sock = socket_with(&events, "LISTEN->SYN_RECV", client_port);
    assert_eq!(
        transitions(&server_sock),
        [
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->FIN_WAIT1",
            "FIN_WAIT1->FIN_WAIT2",
            "FIN_WAIT2->CLOSE"
        ]
    );
    assert_owned_by(&server_sock, &server);
    let client_sock = socket_with(&events, "CLOSE->SYN_SENT", port);
    assert_eq!(
        transitions(&client_sock),
        [
            "CLOSE->SYN_SENT",
            "SYN_SENT->ESTABLISHED",
            "ESTABLISHED->CLOSE_WAIT",
            "CLOSE_WAIT->LAST_ACK",
            "LAST_ACK->CLOSE"
        ]
    );
    assert_owned_by(&client_sock, &client);
}

/// Both ends close while nftables drops their FINs; then FINs pass but the
/// ACKs answering them do not. When the two FIN retransmit timers fire in
/// the same timer-wheel tick, each FIN reaches a peer still in FIN_WAIT1 and
/// both ends pass through CLOSING. That timing is the kernel's, so the test
/// retries until `ss` (sock_diag) shows both ends in CLOSING, then checks
/// that tcpwatch saw exactly that.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn simultaneous_close() {
    if !privileged_or_skip("simultaneous_close") {
        return;
    }
    let ns = Netns::new("sim");
    let tracer = Tracer::start(&ns, &[]);
    let mut server = ns.peer(SERVER);
    let mut client = ns.peer(CLIENT);
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let port_filter = format!(":{port}");
    let count = |state: &str| {
        ns.sockets(state, &["sport", "=", &port_filter])
            + ns.sockets(state, &["dport", "=", &port_filter])
    };
    let mut client_port = None;
    for _attempt in 0..8 {
        let this_port: u16 = client
            .ok(&format!("connect 127.0.0.1 {port}"))
            .parse()
            .unwrap();
        server.ok("accept");
        ns.nft(&drop_rules(&[
            &format!("tcp sport {port} drop"),
            &format!("tcp dport {port} drop"),
        ]));
        // Both close as close together in time as two processes can.
        client.send("close");
        server.send("close");
        assert_eq!(
            (client.reply(), server.reply()),
            ("ok".to_owned(), "ok".to_owned())
        );
        ns.nft("delete table inet tw");
        ns.nft(&drop_rules(&[
            &format!("tcp sport {port} tcp flags & (fin|syn|rst) == 0 drop"),
            &format!("tcp dport {port} tcp flags & (fin|syn|rst) == 0 drop"),
        ]));
        let crossed = wait_until(Duration::from_secs(3), || count("closing") == 2);
        ns.nft("delete table inet tw");
        assert!(
            wait_until(Duration::from_secs(10), || count("closing")
                + count("fin-wait-1")
                == 0),
            "connections finish closing once nothing is dropped"
        );
        if crossed {
            client_port = Some(this_port);
            break;
        }
    }
    let client_port = client_port.expect("in 8 attempts, both ends were in CLOSING at least once");
    let (events, _) = tracer.stop();

    let sockets_of = |local: u16, remote: u16| -> Vec<Value> {
        let sockets = by_socket(&events);
        let found: Vec<_> = sockets
            .into_values()
            .filter(|evs| {
                evs.iter()
                    .any(|e| e["sport"] == local && e["dport"] == remote)
            })
            .collect();
        assert_eq!(found.len(), 1, "one socket {local}->{remote}: {found:#?}");
        found.into_iter().next().unwrap_or_default()
    };
    let client_sock = sockets_of(client_port, port);
    assert_eq!(
        transitions(&client_sock),
        [
            "CLOSE->SYN_SENT",
            "SYN_SENT->ESTABLISHED",
            "ESTABLISHED->FIN_WAIT1",
            "FIN_WAIT1->CLOSING",
            "CLOSING->CLOSE"
        ]
    );
    assert_owned_by(&client_sock, &client);
    let server_sock = sockets_of(port, client_port);
    assert_eq!(
        transitions(&server_sock),
        [
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->FIN_WAIT1",
            "FIN_WAIT1->CLOSING",
            "CLOSING->CLOSE"
        ]
    );
    assert_owned_by(&server_sock, &server);
    // A FIN whose first transmission nftables refused stays unsent and may
    // leave later by the probe timer as a fresh send rather than as a
    // retransmit; the retransmits that do happen belong to their owners.
    for (sock, peer) in [(&client_sock, &client), (&server_sock, &server)] {
        for e in sock.iter().filter(|e| e["kind"] == "retransmit") {
            assert!(
                matches!(e["state"].as_str(), Some("FIN_WAIT1" | "CLOSING")),
                "{e}"
            );
            assert_eq!(e["pid"], peer.pid);
        }
    }
}

/// SO_LINGER 0 then close(): a reset instead of a FIN.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn abortive_close() {
    if !privileged_or_skip("abortive_close") {
        return;
    }
    let ns = Netns::new("abo");
    let tracer = Tracer::start(&ns, &[]);
    let (mut server, mut client, port, client_port) = connected_pair(&ns, "127.0.0.1");
    client.ok("linger0");
    client.ok("close");
    assert!(server.cmd("read_eof").contains("ConnectionReset"));
    server.ok("close");
    let (events, _) = tracer.stop();

    let client_sock = socket_with(&events, "CLOSE->SYN_SENT", port);
    assert_eq!(
        transitions(&client_sock),
        [
            "CLOSE->SYN_SENT",
            "SYN_SENT->ESTABLISHED",
            "ESTABLISHED->CLOSE"
        ]
    );
    let sent: Vec<_> = client_sock
        .iter()
        .filter(|e| e["kind"] == "reset_sent")
        .collect();
    assert_eq!(sent.len(), 1, "{client_sock:#?}");
    assert_eq!(sent[0]["pid"], client.pid);
    assert_eq!(sent[0]["comm"], CLIENT);
    assert_eq!(
        (sent[0]["sport"].as_u64(), sent[0]["dport"].as_u64()),
        (Some(client_port.into()), Some(port.into()))
    );
    assert!(sent[0]["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert_owned_by(&client_sock, &client);

    let server_sock = socket_with(&events, "LISTEN->SYN_RECV", client_port);
    assert_eq!(
        transitions(&server_sock),
        [
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->CLOSE"
        ]
    );
    let received: Vec<_> = server_sock
        .iter()
        .filter(|e| e["kind"] == "reset_received")
        .collect();
    assert_eq!(received.len(), 1, "{server_sock:#?}");
    assert_eq!(received[0]["state"], "ESTABLISHED");
    // The reset arrives before the socket closes.
    let pos = |k: &str| {
        server_sock
            .iter()
            .position(|e| e["kind"] == k || e["new_state"] == k)
    };
    assert!(pos("reset_received") < pos("CLOSE"));
    assert_owned_by(&server_sock, &server);
}

/// A connect to a port nobody listens on: SYN answered by a reset.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn connect_refused() {
    if !privileged_or_skip("connect_refused") {
        return;
    }
    let ns = Netns::new("ref");
    let tracer = Tracer::start(&ns, &[]);
    let mut client = ns.peer(CLIENT);
    // Port 9 (discard) has no listener in a fresh namespace.
    assert_eq!(client.cmd("connect 127.0.0.1 9"), "err ConnectionRefused");
    let (events, _) = tracer.stop();

    let client_sock = socket_with(&events, "CLOSE->SYN_SENT", 9);
    assert_eq!(
        transitions(&client_sock),
        ["CLOSE->SYN_SENT", "SYN_SENT->CLOSE"]
    );
    let received: Vec<_> = client_sock
        .iter()
        .filter(|e| e["kind"] == "reset_received")
        .collect();
    assert_eq!(received.len(), 1, "{client_sock:#?}");
    assert_eq!(received[0]["state"], "SYN_SENT");
    assert_owned_by(&client_sock, &client);
    // The kernel's answer on behalf of no socket: sent from port 9, no owner.
    let sent = kinds(&events, "reset_sent");
    assert_eq!(sent.len(), 1, "{events:#?}");
    assert_eq!(sent[0]["sport"], 9);
    assert_eq!(sent[0]["reason"], "NO_SOCKET");
    assert_eq!(sent[0]["pid"], 0);
}

/// A listener with a full accept queue drops SYNs: the client retransmits
/// them until tcp_syn_retries (lowered in the namespace) runs out.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn syn_retransmits_against_full_accept_queue() {
    if !privileged_or_skip("syn_retransmits_against_full_accept_queue") {
        return;
    }
    let ns = Netns::new("syn");
    ns.sysctl("net.ipv4.tcp_syn_retries", "1");
    let tracer = Tracer::start(&ns, &[]);
    let mut server = ns.peer(SERVER);
    let mut first = ns.peer("tw-first");
    let mut client = ns.peer(CLIENT);
    // listen(0) queues one connection; nobody accepts it.
    let port: u16 = server.ok("listen 127.0.0.1 0").parse().unwrap();
    first.ok(&format!("connect 127.0.0.1 {port}"));
    assert_eq!(
        client.cmd(&format!("connect 127.0.0.1 {port}")),
        "err TimedOut"
    );
    let (events, _) = tracer.stop();

    let sockets = by_socket(&events);
    let client_sock = sockets
        .values()
        .find(|s| s.iter().any(|e| e["pid"] == client.pid))
        .expect("the client's socket was traced");
    assert_eq!(
        transitions(client_sock),
        ["CLOSE->SYN_SENT", "SYN_SENT->CLOSE"],
        "{events:#?}"
    );
    let rtx: Vec<_> = client_sock
        .iter()
        .filter(|e| e["kind"] == "retransmit")
        .collect();
    // 6.x retransmits the first SYNs about 1 s apart (tcp_syn_linear_timeouts)
    // but gives up after the time exponential backoff would have taken for
    // tcp_syn_retries: 1 s + 2 s for one retry.
    assert!(!rtx.is_empty(), "SYNs were retransmitted: {client_sock:#?}");
    for e in &rtx {
        assert_eq!(e["state"], "SYN_SENT");
        assert_eq!(e["dport"], port);
    }
    assert_owned_by(client_sock, &client);
    let close = client_sock.last().expect("events");
    // And the finding that names the process and the endpoint.
    let timeout = findings(&events, "connect_timeout");
    assert_eq!(timeout.len(), 1, "{events:#?}");
    assert_eq!(
        (timeout[0]["pid"].as_u64(), timeout[0]["rport"].as_u64()),
        (Some(client.pid.into()), Some(port.into()))
    );
    assert!(
        timeout[0]["syn_retransmits"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{}",
        timeout[0]
    );
    let syn_sent_ms = close["ms"].as_f64().unwrap_or(0.0);
    assert!(
        (2500.0..5000.0).contains(&syn_sent_ms),
        "SYN_SENT lasted about 3 s: {close}"
    );
}

/// The final ACK of the handshake is dropped: the listener retransmits its
/// SYN-ACK, attributed to the listening process.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn synack_retransmit() {
    if !privileged_or_skip("synack_retransmit") {
        return;
    }
    let ns = Netns::new("sak");
    let tracer = Tracer::start(&ns, &[]);
    let mut server = ns.peer(SERVER);
    let mut client = ns.peer(CLIENT);
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    ns.nft(&drop_rules(&[&format!(
        "tcp dport {port} tcp flags & (syn|fin|rst|ack) == ack drop"
    )]));
    client.ok(&format!("connect 127.0.0.1 {port}"));
    thread::sleep(Duration::from_millis(1500));
    ns.nft("delete table inet tw");
    let (events, _) = tracer.stop();

    let synacks = kinds(&events, "synack_retransmit");
    assert!(!synacks.is_empty(), "{events:#?}");
    for e in synacks {
        assert_eq!(e["sport"], port);
        assert_eq!(e["pid"], server.pid);
        assert_eq!(e["comm"], SERVER);
    }
}

/// Filters apply in the tracer: a port filter keeps only matching events.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn port_and_state_filters() {
    if !privileged_or_skip("port_and_state_filters") {
        return;
    }
    let ns = Netns::new("flt");
    let mut server = ns.peer(SERVER);
    let mut client = ns.peer(CLIENT);
    let port_a: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let tracer = Tracer::start(
        &ns,
        &["--rport", &port_a.to_string(), "--state", "FIN_WAIT1"],
    );
    let mut server_b = ns.peer("tw-server-b");
    let port_b: u16 = server_b.ok("listen 127.0.0.1 16").parse().unwrap();
    for port in [port_a, port_b] {
        client.ok(&format!("connect 127.0.0.1 {port}"));
        client.ok("close");
    }
    // SIGTERM, as systemd and kill send it, flushes like SIGINT.
    let (events, stderr) = tracer.stop_with(libc::SIGTERM);
    assert!(!events.is_empty(), "{stderr:?}");
    for e in &events {
        assert_eq!(e["dport"], port_a, "{e}");
        assert!(
            e["old_state"] == "FIN_WAIT1" || e["new_state"] == "FIN_WAIT1",
            "{e}"
        );
    }
    assert_eq!(
        transitions(&events),
        ["ESTABLISHED->FIN_WAIT1", "FIN_WAIT1->FIN_WAIT2"],
        "{stderr:?}"
    );
    assert!(
        stderr.iter().any(|l| l.contains("events received")),
        "{stderr:?}"
    );
}

/// Sockets older than tcpwatch: a listener and an established connection
/// made before tracing starts are attributed from `/proc` at start-up.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn sockets_older_than_tcpwatch() {
    if !privileged_or_skip("sockets_older_than_tcpwatch") {
        return;
    }
    let ns = Netns::new("old");
    let mut server = ns.peer(SERVER);
    let mut old_client = ns.peer("tw-old-client");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let old_port: u16 = old_client
        .ok(&format!("connect 127.0.0.1 {port}"))
        .parse()
        .unwrap();
    server.ok("accept");
    let tracer = Tracer::start(&ns, &[]);
    old_client.ok("close");
    server.ok("read_eof");
    server.ok("close");
    let mut new_client = ns.peer(CLIENT);
    let new_port: u16 = new_client
        .ok(&format!("connect 127.0.0.1 {port}"))
        .parse()
        .unwrap();
    server.ok("accept");
    let (events, _) = tracer.stop();

    let old_server_side: Vec<Value> = by_socket(&events)
        .into_values()
        .find(|evs| {
            evs.iter()
                .any(|e| e["sport"] == port && e["dport"] == old_port)
        })
        .expect("the old connection's server side was traced");
    assert_eq!(
        transitions(&old_server_side),
        [
            "ESTABLISHED->CLOSE_WAIT",
            "CLOSE_WAIT->LAST_ACK",
            "LAST_ACK->CLOSE"
        ]
    );
    assert_owned_by(&old_server_side, &server);
    // Learnt from /proc before the server's close() told the kernel side.
    assert_eq!(old_server_side[0]["owner"], "startup");
    assert_eq!(old_server_side[1]["owner"], "close");

    // The listener predates tcpwatch too; its new child inherits its owner.
    let new_server_side = socket_with(&events, "LISTEN->SYN_RECV", new_port);
    assert_owned_by(&new_server_side, &server);
    assert_eq!(new_server_side[0]["owner"], "listener");
}

/// A pre-fork server: one process listens, a forked worker accepts. The
/// connection belongs to the listener until accept() returns in the worker.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn accepted_by_another_process() {
    if !privileged_or_skip("accepted_by_another_process") {
        return;
    }
    let ns = Netns::new("acc");
    let tracer = Tracer::start(&ns, &[]);
    let mut server = ns.peer(SERVER);
    let mut client = ns.peer(CLIENT);
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    server.send("fork_accept tw-worker");
    let client_port: u16 = client
        .ok(&format!("connect 127.0.0.1 {port}"))
        .parse()
        .unwrap();
    let worker: u32 = server
        .reply()
        .strip_prefix("ok ")
        .and_then(|p| p.parse().ok())
        .expect("worker pid");
    client.ok("close");
    let open = || ns.sockets("close-wait", &["state", "last-ack"]);
    assert!(
        wait_until(Duration::from_secs(5), || open() == 0),
        "the worker closed its side"
    );
    let (events, _) = tracer.stop();

    let server_sock = socket_with(&events, "LISTEN->SYN_RECV", client_port);
    assert_eq!(
        transitions(&server_sock),
        [
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->CLOSE_WAIT",
            "CLOSE_WAIT->LAST_ACK",
            "LAST_ACK->CLOSE"
        ]
    );
    let owners: Vec<(u64, &str, &str)> = server_sock
        .iter()
        .map(|e| {
            (
                e["pid"].as_u64().unwrap_or(0),
                e["comm"].as_str().unwrap_or(""),
                e["owner"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let listener = (u64::from(server.pid), SERVER, "listener");
    assert_eq!(
        owners,
        [
            listener,
            listener,
            (u64::from(worker), "tw-worker", "accept"),
            (u64::from(worker), "tw-worker", "close"),
            (u64::from(worker), "tw-worker", "close"),
        ]
    );
}

/// `--lifecycle --no-events`: one line per finished connection, with who
/// opened and closed it, how it ended, and TIME_WAIT on the active closer.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn lifecycle_lines() {
    if !privileged_or_skip("lifecycle_lines") {
        return;
    }
    let ns = Netns::new("lif");
    let tracer = Tracer::start(&ns, &["--lifecycle", "--no-events"]);
    let (mut server, mut client, port, client_port) = connected_pair(&ns, "127.0.0.1");
    client.ok("send hello");
    client.ok("close");
    server.ok("read_eof");
    server.ok("close");
    assert_eq!(client.cmd("connect 127.0.0.1 9"), "err ConnectionRefused");
    let abort_port: u16 = client
        .ok(&format!("connect 127.0.0.1 {port}"))
        .parse()
        .unwrap();
    server.ok("accept");
    client.ok("linger0");
    client.ok("close");
    let (events, stderr) = tracer.stop();

    // Besides lifecycle lines, only the finding about the refused connect.
    let refused_finding = findings(&events, "connect_refused");
    assert_eq!(refused_finding.len(), 1, "{events:#?}");
    assert_eq!(refused_finding[0]["status"], "raised");
    assert_eq!(
        (
            refused_finding[0]["pid"].as_u64(),
            refused_finding[0]["rport"].as_u64()
        ),
        (Some(client.pid.into()), Some(9))
    );
    let events: Vec<Value> = events
        .into_iter()
        .filter(|e| e["kind"] == "lifecycle")
        .collect();
    let line = |sport: u16, dport: u16| -> &Value {
        let found: Vec<_> = events
            .iter()
            .filter(|e| e["sport"] == sport && e["dport"] == dport)
            .collect();
        assert_eq!(found.len(), 1, "one line for {sport}->{dport}: {events:#?}");
        found[0]
    };
    let c = line(client_port, port);
    assert_eq!(
        (
            c["opener"].as_str(),
            c["closer"].as_str(),
            c["end"].as_str()
        ),
        (Some("active"), Some("active"), Some("normal_close"))
    );
    assert_eq!(c["time_wait"], true);
    assert_eq!(
        (c["pid"].as_u64(), c["comm"].as_str()),
        (Some(client.pid.into()), Some(CLIENT))
    );
    for state in ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"] {
        assert!(
            c["state_ms"][state].as_f64().is_some_and(|ms| ms > 0.0),
            "{state} in {c}"
        );
    }
    let life = c["lifetime_ms"].as_f64().unwrap_or(0.0);
    let sum: f64 = c["state_ms"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_f64).sum())
        .unwrap_or(0.0);
    assert!(
        (life - sum).abs() < 0.01,
        "state times add up to the lifetime: {c}"
    );

    let s = line(port, client_port);
    assert_eq!(
        (
            s["opener"].as_str(),
            s["closer"].as_str(),
            s["end"].as_str()
        ),
        (Some("passive"), Some("passive"), Some("normal_close"))
    );
    assert_eq!(s["time_wait"], false);
    assert_eq!(s["pid"], server.pid);

    let refused: Vec<_> = events.iter().filter(|e| e["dport"] == 9).collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["end"], "connect_refused");
    assert_eq!(refused[0]["resets_received"], 1);

    let aborted = line(abort_port, port);
    assert_eq!(
        (aborted["end"].as_str(), aborted["resets_sent"].as_u64()),
        (Some("reset_sent"), Some(1))
    );
    assert_eq!(line(port, abort_port)["end"], "reset_received");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("finished connections shown")),
        "{stderr:?}"
    );
}

/// A server that never closes the connections its clients closed: a
/// CLOSE_WAIT leak, attributed to the server's pid and port, resolved once
/// it finally closes them.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn close_wait_leak_finding() {
    if !privileged_or_skip("close_wait_leak_finding") {
        return;
    }
    let ns = Netns::new("cwl");
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--close-wait-age",
            "1s",
            "--finding-interval",
            "1s",
        ],
    );
    let mut server = ns.peer(SERVER);
    let mut client = ns.peer(CLIENT);
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    for _ in 0..2 {
        client.ok(&format!("connect 127.0.0.1 {port}"));
        server.ok("accept");
        client.ok("close");
        server.ok("keep");
    }
    let close_wait = || ns.sockets("close-wait", &[]);
    assert_eq!(close_wait(), 2, "ground truth: two sockets in CLOSE_WAIT");
    thread::sleep(Duration::from_millis(2500));
    server.ok("close_kept");
    assert!(wait_until(Duration::from_secs(3), || close_wait() == 0));
    thread::sleep(Duration::from_millis(1500));
    let (lines, _) = tracer.stop();

    let reports = findings(&lines, "close_wait_leak");
    let raised: Vec<_> = reports.iter().filter(|r| r["status"] == "raised").collect();
    assert_eq!(raised.len(), 1, "raised once: {reports:#?}");
    let f = raised[0];
    assert_eq!(
        (f["pid"].as_u64(), f["comm"].as_str(), f["lport"].as_u64()),
        (Some(server.pid.into()), Some(SERVER), Some(port.into()))
    );
    assert_eq!(f["count"], 2);
    assert!(f["age_seconds"].as_f64().is_some_and(|a| a >= 1.0), "{f}");
    assert_eq!(f["severity"], "warning");
    assert!(
        reports.iter().any(|r| r["status"] == "resolved"),
        "resolved once closed: {reports:#?}"
    );
}

/// A server that closes first keeps the TIME_WAIT sockets: a buildup on its
/// listening port (threshold lowered for the test).
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn server_side_time_wait_buildup_finding() {
    if !privileged_or_skip("server_side_time_wait_buildup_finding") {
        return;
    }
    let ns = Netns::new("twb");
    let tracer = Tracer::start(&ns, &["--no-events", "--time-wait-count", "3"]);
    let mut server = ns.peer(SERVER);
    let mut client = ns.peer(CLIENT);
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    for _ in 0..3 {
        server_closes_first(&mut client, &mut server, "127.0.0.1", port);
    }
    let ss = ns.sockets("time-wait", &["sport", "=", &format!(":{port}")]);
    assert_eq!(
        ss, 3,
        "ground truth: the server holds the TIME_WAIT sockets"
    );
    thread::sleep(Duration::from_millis(1500));
    let (lines, _) = tracer.stop();
    let reports = findings(&lines, "time_wait_buildup");
    assert_eq!(reports.len(), 1, "{lines:#?}");
    let f = reports[0];
    assert_eq!(
        (f["lport"].as_u64(), f["count"].as_u64(), f["pid"].as_u64()),
        (Some(port.into()), Some(3), Some(server.pid.into()))
    );
    assert!(
        f["summary"]
            .as_str()
            .is_some_and(|s| s.contains("this server closes first")),
        "{f}"
    );
}

/// tcp_tw_reuse=1 with a fixed source port: the second connect takes over
/// the first one's TIME_WAIT, and TcpExt TWRecycled agrees.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn tw_reuse_finding() {
    if !privileged_or_skip("tw_reuse_finding") {
        return;
    }
    let ns = Netns::new("twr");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    let tracer = Tracer::start(&ns, &["--no-events"]);
    let mut server = ns.peer(SERVER);
    let mut client = ns.peer(CLIENT);
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let source: u16 = 41234;
    client_closes_first_from(&mut client, &mut server, source, "127.0.0.1", port);
    assert_eq!(ns.sockets("time-wait", &[]), 1);
    // tcp_tw_reuse_delay is 1 s by default.
    thread::sleep(Duration::from_millis(1200));
    client.ok(&format!("connect_from {source} 127.0.0.1 {port}"));
    let (lines, _) = tracer.stop();
    let reports = findings(&lines, "tw_reuse");
    assert_eq!(reports.len(), 1, "{lines:#?}");
    let f = reports[0];
    assert_eq!(
        (f["lport"].as_u64(), f["rport"].as_u64(), f["pid"].as_u64()),
        (
            Some(source.into()),
            Some(port.into()),
            Some(client.pid.into())
        )
    );
    assert!(
        f["age_seconds"]
            .as_f64()
            .is_some_and(|a| (1.0..3.0).contains(&a)),
        "{f}"
    );
    let netstat = ns.exec(&["cat", "/proc/net/netstat"]);
    let recycled = tcpwatch::host::netns_state::parse_netstat(&netstat)
        .get("TWRecycled")
        .copied();
    assert_eq!(recycled, Some(1), "the kernel counted the reuse too");
}

/// A TIME_WAIT older than tcpwatch is learnt from sock_diag at start with
/// its true age (from the kernel's timer), and its reuse reports that age.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn tw_reuse_of_a_time_wait_older_than_tcpwatch() {
    if !privileged_or_skip("tw_reuse_of_a_time_wait_older_than_tcpwatch") {
        return;
    }
    let ns = Netns::new("twold");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    let mut server = ns.peer(SERVER);
    let mut client = ns.peer(CLIENT);
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let source: u16 = 41236;
    client_closes_first_from(&mut client, &mut server, source, "127.0.0.1", port);
    assert_eq!(ns.sockets("time-wait", &[]), 1);
    thread::sleep(Duration::from_millis(2500));
    let tracer = Tracer::start(&ns, &["--no-events"]);
    client.ok(&format!("connect_from {source} 127.0.0.1 {port}"));
    let (lines, _) = tracer.stop();
    let reports = findings(&lines, "tw_reuse");
    assert_eq!(reports.len(), 1, "{lines:#?}");
    assert!(
        reports[0]["age_seconds"]
            .as_f64()
            .is_some_and(|a| (2.5..6.0).contains(&a)),
        "{}",
        reports[0]
    );
}

/// Leaks and buildups that predate tcpwatch: found in the kernel's socket
/// list (sock_diag) at start, owners from /proc, ages as lower bounds.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn findings_about_sockets_older_than_tcpwatch() {
    if !privileged_or_skip("findings_about_sockets_older_than_tcpwatch") {
        return;
    }
    let ns = Netns::new("pre");
    let LeakAndBuildup {
        leaky,
        leaky_port,
        closer_port,
        closer: _closer,
        client: _client,
    } = leak_and_buildup(&ns, 2, 3);
    assert_eq!(ns.sockets("close-wait", &[]), 2);
    assert_eq!(ns.sockets("time-wait", &[]), 3);

    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--close-wait-age",
            "1s",
            "--time-wait-count",
            "3",
            "--reconcile-interval",
            "1s",
        ],
    );
    thread::sleep(Duration::from_millis(2500));
    let (lines, stderr) = tracer.stop();

    let leak = findings(&lines, "close_wait_leak");
    assert_eq!(leak.len(), 1, "{lines:#?}\n{stderr:?}");
    assert_eq!(
        (
            leak[0]["pid"].as_u64(),
            leak[0]["comm"].as_str(),
            leak[0]["lport"].as_u64(),
            leak[0]["count"].as_u64()
        ),
        (
            Some(leaky.pid.into()),
            Some("tw-leaky"),
            Some(leaky_port.into()),
            Some(2)
        )
    );
    assert!(
        leak[0]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("at least")),
        "{}",
        leak[0]
    );

    let buildup = findings(&lines, "time_wait_buildup");
    assert_eq!(buildup.len(), 1, "{lines:#?}");
    assert_eq!(
        (buildup[0]["lport"].as_u64(), buildup[0]["count"].as_u64()),
        (Some(closer_port.into()), Some(3))
    );
    assert!(stderr.iter().any(|l| l.contains("sock_diag")), "{stderr:?}");
}

/// A peer that goes silent mid-connection (nftables drops everything it
/// sends): the client retransmits with backoff (peer_unresponsive, with the
/// time left) until tcp_retries2, lowered in the namespace, runs out
/// (lifecycle end reason retransmit_timeout).
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn silent_peer_is_unresponsive_then_times_out() {
    if !privileged_or_skip("silent_peer_is_unresponsive_then_times_out") {
        return;
    }
    let ns = Netns::new("sil");
    // 4 retries from a 200 ms RTO: the kernel gives up after 6.2 s.
    ns.sysctl("net.ipv4.tcp_retries2", "4");
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--lifecycle",
            "--peer-unresponsive-after",
            "2s",
            "--reconcile-interval",
            "1s",
        ],
    );
    let (_server, mut client, port, client_port) = connected_pair(&ns, "127.0.0.1");
    ns.nft(&drop_rules(&[&format!("tcp sport {port} drop")]));
    client.ok("send hello");
    let established = || ns.sockets("established", &["dport", "=", &format!(":{port}")]);
    assert!(
        wait_until(Duration::from_secs(15), || established() == 0),
        "the kernel aborts the client's connection"
    );
    thread::sleep(Duration::from_millis(300));
    let (lines, stderr) = tracer.stop();

    let stalled = findings(&lines, "peer_unresponsive");
    let raised: Vec<_> = stalled.iter().filter(|f| f["status"] == "raised").collect();
    assert_eq!(raised.len(), 1, "{lines:#?}\n{stderr:?}");
    let f = raised[0];
    assert_eq!(
        (f["pid"].as_u64(), f["lport"].as_u64(), f["rport"].as_u64()),
        (
            Some(client.pid.into()),
            Some(client_port.into()),
            Some(port.into())
        )
    );
    assert_eq!(f["tcp_retries2"], 4, "read from the namespace");
    assert!(f["seconds_left"].as_f64().is_some_and(|s| s < 6.2), "{f}");
    assert!(
        stalled.iter().any(|f| f["status"] == "resolved"),
        "{stalled:#?}"
    );

    let ended: Vec<_> = lines
        .iter()
        .filter(|e| e["kind"] == "lifecycle" && e["sport"] == client_port && e["dport"] == port)
        .collect();
    assert_eq!(ended.len(), 1, "{lines:#?}");
    assert_eq!(ended[0]["end"], "retransmit_timeout");
    assert!(
        ended[0]["retransmits"]["data"]
            .as_u64()
            .is_some_and(|n| n >= 4),
        "{}",
        ended[0]
    );
}

/// A client that opens many short connections to one port with a narrowed
/// ephemeral port range: TIME_WAIT takes most of the range.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn port_exhaustion_risk_finding() {
    if !privileged_or_skip("port_exhaustion_risk_finding") {
        return;
    }
    let ns = Netns::new("pex");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40019");
    let tracer = Tracer::start(&ns, &["--no-events", "--reconcile-interval", "1s"]);
    let (mut server, mut client, port, _) = connected_pair(&ns, "127.0.0.1");
    client.ok("close");
    server.ok("close");
    for _ in 0..11 {
        client_closes_first(&mut client, &mut server, "127.0.0.1", port);
    }
    let ss = ns.sockets("time-wait", &["dport", "=", &format!(":{port}")]);
    assert_eq!(
        ss, 12,
        "ground truth: the client holds 12 TIME_WAIT sockets"
    );
    thread::sleep(Duration::from_millis(1500));
    let (lines, _) = tracer.stop();
    let risk = findings(&lines, "port_exhaustion_risk");
    assert_eq!(risk.len(), 1, "{lines:#?}");
    let f = risk[0];
    assert_eq!(
        (
            f["count"].as_u64(),
            f["ports"].as_u64(),
            f["rport"].as_u64()
        ),
        (Some(12), Some(20), Some(port.into()))
    );
    assert_eq!(f["raddr"], "127.0.0.1");
    assert_eq!(f["severity"], "warning");
}

/// The raw tracepoint programs and the classic ones they replace, running
/// side by side over the same connections, report exactly the same state
/// events: endpoints, states and owners of every transition, through a
/// close by either side, an abortive close, a refused connect and a
/// connect with no free port, on IPv4 and IPv6.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn raw_and_classic_tracepoints_see_the_same_events() {
    if !privileged_or_skip("raw_and_classic_tracepoints_see_the_same_events") {
        return;
    }
    let ns = Netns::new("rawcl");
    let raw = Tracer::start_env(&ns, &["-vv"], &[]);
    let classic = Tracer::start_env(&ns, &["-vv"], &[("TCPWATCH_CLASSIC_TRACEPOINTS", "1")]);
    for v6 in [false, true] {
        let addr = localhost(v6).to_string();
        let mut server = ns.peer("tw-server");
        let mut client = ns.peer("tw-client");
        let port: u16 = server.ok(&format!("listen {addr} 16")).parse().unwrap();
        client_closes_first(&mut client, &mut server, &addr, port);
        server_closes_first(&mut client, &mut server, &addr, port);
        client.ok(&format!("connect {addr} {port}"));
        server.ok("accept");
        server.ok("linger0");
        server.ok("close");
        server.ok("close_listener");
        let refused = client.cmd(&format!("connect {addr} {port}"));
        assert!(refused.contains("ConnectionRefused"), "{refused}");
    }
    // No local port: a range of one port, held.
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    ns.sysctl("net.ipv4.ip_local_port_range", "20000 20000");
    let mut client = ns.peer("tw-client");
    client.ok(&format!("connect 127.0.0.1 {port}"));
    client.ok("keep");
    assert!(client
        .cmd(&format!("connect 127.0.0.1 {port}"))
        .contains("AddrNotAvailable"));
    thread::sleep(Duration::from_millis(300));
    let (raw_events, raw_err) = raw.stop();
    let (classic_events, classic_err) = classic.stop();
    assert!(
        raw_err
            .iter()
            .any(|l| l.contains("inet_sock_set_state attached as a raw tracepoint")),
        "{raw_err:#?}"
    );
    assert!(
        !classic_err
            .iter()
            .any(|l| l.contains("attached as a raw tracepoint")),
        "{classic_err:#?}"
    );
    // Everything but the time, which each program takes for itself.
    let states = |events: &[Value]| {
        let mut v: Vec<String> = events
            .iter()
            .filter(|e| e["kind"] == "state")
            .map(|e| {
                format!(
                    "{} {}->{} {}:{} {}:{} f{} {}/{}",
                    e["skaddr"],
                    e["old_state"],
                    e["new_state"],
                    e["saddr"],
                    e["sport"],
                    e["daddr"],
                    e["dport"],
                    e["family"],
                    e["pid"],
                    e["comm"]
                )
            })
            .collect();
        v.sort();
        v
    };
    let (a, b) = (states(&raw_events), states(&classic_events));
    assert!(a.len() >= 30, "the workload made transitions: {a:#?}");
    assert_eq!(a, b, "raw and classic programs disagree");
}

/// Segments the kernel drops for a live connection, by reason: the
/// server's ACKs are dropped by nftables for a second, so the client
/// retransmits data the server already has, and the server's kernel drops
/// each duplicate (`TCP_OLD_DATA`, answering with a D-SACK: TcpExt
/// `TCPDSACKOldSent`). Each is a `drop` event of the server's connection,
/// owned by the server, and the server's lifecycle line counts them.
#[test]
#[ignore = "privileged: needs root, Linux 6.12+, tcpwatch built with its eBPF programs, iproute2 and nftables; `cargo xtask test` runs it"]
fn drops_of_a_live_connection() {
    if !privileged_or_skip("drops_of_a_live_connection") {
        return;
    }
    let ns = Netns::new("drp");
    let tracer = Tracer::start(&ns, &["--lifecycle"]);
    let (mut server, mut client, port, client_port) = connected_pair(&ns, "127.0.0.1");
    server.ok("drain");
    ns.nft(&format!(
        "table inet drp {{\n  chain out {{\n    type filter hook output priority 0;\n    tcp sport {port} drop\n  }}\n}}\n"
    ));
    client.ok("send duplicated");
    thread::sleep(Duration::from_millis(1200));
    ns.exec(&["nft", "delete", "table", "inet", "drp"]);
    thread::sleep(Duration::from_millis(800));
    let old_data = tcpext(&ns, "TCPDSACKOldSent");
    client.ok("close");
    thread::sleep(Duration::from_millis(100));
    server.ok("close");
    thread::sleep(Duration::from_millis(300));
    let (events, stderr) = tracer.stop();
    let drops: Vec<&Value> = kinds(&events, "drop")
        .into_iter()
        .filter(|e| e["sport"] == port && e["dport"] == client_port)
        .collect();
    assert!(
        !drops.is_empty() && drops.len() as u64 <= old_data,
        "{} drop events, TcpExt TCPDSACKOldSent {old_data}: {events:#?}\n{stderr:?}",
        drops.len()
    );
    for d in &drops {
        assert_eq!(
            (d["reason"].as_str(), d["state"].as_str(), d["pid"].as_u64()),
            (
                Some("TCP_OLD_DATA"),
                Some("ESTABLISHED"),
                Some(server.pid.into())
            ),
            "{d}"
        );
    }
    let line = events
        .iter()
        .find(|e| e["kind"] == "lifecycle" && e["sport"] == port && e["dport"] == client_port)
        .unwrap_or_else(|| panic!("the server's lifecycle line: {events:#?}"));
    assert_eq!(
        (line["drops"].as_u64(), line["last_drop_reason"].as_str()),
        (Some(drops.len() as u64), Some("TCP_OLD_DATA")),
        "{line}"
    );
    // The client's side saw no drop.
    let client_line = events
        .iter()
        .find(|e| e["kind"] == "lifecycle" && e["sport"] == client_port)
        .unwrap_or_else(|| panic!("the client's lifecycle line: {events:#?}"));
    assert!(client_line.get("drops").is_none(), "{client_line}");
}

/// Drop events of a listener name the process that holds it now. A
/// daemonizing server: the launcher calls listen() (backlog 4), forks the
/// daemon and exits; the daemon holds the listener (and never accepts).
/// Its accept queue fills and the final ACKs of three handshakes meet it
/// full (`TCP_LISTEN_OVERFLOW`, as in findings.rs
/// `accept_queue_overflow_counts_the_listeners_dropped_acks`). The kernel
/// remembers the owner it saw at listen(), the launcher; SYN-ACK
/// retransmits of the same listener are re-attributed to the holder the
/// model knows (`attribute_to_listener`), drop events are not: they name
/// the exited launcher.
#[test]
#[ignore = "privileged: needs root, Linux 6.15+, tcpwatch built with its eBPF programs, iproute2 and nftables; `cargo xtask test` runs it"]
fn drops_of_a_daemons_listener_name_the_daemon() {
    if !privileged_or_skip("drops_of_a_daemons_listener_name_the_daemon") {
        return;
    }
    let ns = Netns::new("rvdd");
    let tracer = Tracer::start(&ns, &["--reconcile-interval", "1s"]);
    let mut server = ns.peer("tw-server");
    let reply = server.ok("daemonize_idle tw-daemon");
    let words: Vec<u64> = reply
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [port, daemon_pid, launcher] = words[..] else {
        panic!("{reply}");
    };
    // A tick and a reconciliation: the model knows the daemon holds it.
    thread::sleep(Duration::from_millis(2500));
    ns.nft(&format!(
        "table inet rvdd {{\n  chain in {{\n    type filter hook input priority 0;\n    tcp dport {port} tcp flags == ack drop\n  }}\n}}\n"
    ));
    let mut early: Vec<Peer> = (0..3).map(|_| ns.peer(CLIENT)).collect();
    for c in &mut early {
        c.ok(&format!("connect 127.0.0.1 {port}"));
    }
    ns.exec(&["nft", "delete", "table", "inet", "rvdd"]);
    let mut late: Vec<Peer> = (0..5).map(|_| ns.peer(CLIENT)).collect();
    for c in &mut late {
        c.ok(&format!("connect 127.0.0.1 {port}"));
    }
    thread::sleep(Duration::from_millis(3200));
    let (events, stderr) = tracer.stop();
    assert!(
        !alive(launcher as u32) && alive(daemon_pid as u32),
        "ground truth: the launcher exited, the daemon holds the listener"
    );
    let drops: Vec<&Value> = kinds(&events, "drop")
        .into_iter()
        .filter(|e| e["sport"] == port && e["state"] == "LISTEN")
        .collect();
    assert!(
        !drops.is_empty(),
        "ground truth: the listener's dropped ACKs: {events:#?}\n{stderr:?}"
    );
    let synacks: Vec<(Option<u64>, Option<&str>)> = kinds(&events, "synack_retransmit")
        .into_iter()
        .filter(|e| e["sport"] == port)
        .map(|e| (e["pid"].as_u64(), e["comm"].as_str()))
        .collect();
    let named: Vec<(Option<u64>, Option<&str>)> = drops
        .iter()
        .map(|e| (e["pid"].as_u64(), e["comm"].as_str()))
        .collect();
    assert!(
        named
            .iter()
            .all(|n| *n == (Some(daemon_pid), Some("tw-daemon"))),
        "drops of the daemon's listener (daemon {daemon_pid}, exited launcher {launcher}) name {named:?}; its SYN-ACK retransmits name {synacks:?}"
    );
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// The drop that ends a connection is counted on its lifecycle line. The
/// server shuts its connection down both ways (FIN_WAIT2, still held,
/// reading nothing more); the client's late data aborts it: the kernel
/// closes the socket and drops the segment (`TCP_ABORT_ON_DATA`, the
/// same scenario as `cargo xtask vm-test`'s "drops" check). The kernel
/// closes the socket (tcp_done) before it frees the segment, so the drop
/// event comes after the CLOSE transition, when the model has already
/// finished the connection: the server's lifecycle line says no drops.
#[test]
#[ignore = "privileged: needs root, Linux 6.12+, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn the_drop_that_aborts_a_connection_is_on_its_lifecycle_line() {
    if !privileged_or_skip("the_drop_that_aborts_a_connection_is_on_its_lifecycle_line") {
        return;
    }
    let ns = Netns::new("rvab");
    let tracer = Tracer::start(&ns, &["--lifecycle"]);
    let (mut server, mut client, port, client_port) = connected_pair(&ns, "127.0.0.1");
    server.ok("shutdown_both");
    thread::sleep(Duration::from_millis(300));
    client.ok("send late");
    let filter = ["sport", "=", &format!(":{port}")];
    let server_side = ["dport", "=", &format!(":{client_port}")];
    assert!(
        wait_until(Duration::from_secs(2), || {
            ns.sockets("all", &filter) == 0 || ns.sockets("all", &server_side) == 0
        }),
        "ground truth: the server's connection was aborted"
    );
    thread::sleep(Duration::from_millis(500));
    let (events, stderr) = tracer.stop();
    let drops: Vec<&Value> = kinds(&events, "drop")
        .into_iter()
        .filter(|e| e["sport"] == port && e["dport"] == client_port)
        .collect();
    assert!(
        drops
            .iter()
            .any(|d| d["reason"] == "TCP_ABORT_ON_DATA"),
        "ground truth: the kernel dropped the late data for the server's connection: {events:#?}\n{stderr:?}"
    );
    let line = events
        .iter()
        .find(|e| e["kind"] == "lifecycle" && e["sport"] == port && e["dport"] == client_port)
        .unwrap_or_else(|| panic!("the server's lifecycle line: {events:#?}"));
    assert_eq!(
        (line["drops"].as_u64(), line["last_drop_reason"].as_str()),
        (Some(drops.len() as u64), Some("TCP_ABORT_ON_DATA")),
        "drop events {drops:#?}\nlifecycle {line}"
    );
}
