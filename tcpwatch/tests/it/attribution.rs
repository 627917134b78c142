//! The right process, every time: privileged scenarios from the review of
//! the owner tracking, each of which named a process that did not hold the
//! socket (or had exited), or showed the owner checks stalling the daemon,
//! before its fix.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::common::*;
use serde_json::Value;

/// A helper process of these tests, run by the test peer binary
/// (`tcpwatch-test-peer --role ROLE`, test-peer/roles.rs).
fn role_command(role: &str) -> Command {
    let mut cmd = Command::new(PEER);
    cmd.args(["--role", role]);
    cmd
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

fn api_connections(daemon: &RunningDaemon, ns: &Netns, port: u16) -> Vec<Value> {
    let (_, _, body) = http_get(&daemon.addr, &format!("/api/connections?port={port}"));
    let view: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    view["connections"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["netns"] == ns.inode && r["sport"] == port)
        .collect()
}

/// `tcpwatch trace --json` over every namespace (no `--netns`), so that a
/// namespace made after it started is one it has never reconciled.
struct TraceAll {
    child: Child,
    stdout: thread::JoinHandle<Vec<String>>,
}

impl TraceAll {
    fn start(extra: &[&str]) -> TraceAll {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcpwatch"))
            .args(["trace", "--json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpwatch starts");
        let out = BufReader::new(child.stdout.take().unwrap());
        let stdout = thread::spawn(move || out.lines().map_while(Result::ok).collect());
        let mut err = BufReader::new(child.stderr.take().unwrap());
        loop {
            let mut line = String::new();
            assert!(err.read_line(&mut line).unwrap() > 0, "tcpwatch exited");
            if line.contains("tracing TCP") {
                break;
            }
        }
        thread::spawn(move || for _ in err.lines() {});
        TraceAll { child, stdout }
    }

    fn stop(mut self) -> Vec<Value> {
        thread::sleep(Duration::from_millis(500));
        // SAFETY: our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let lines = std::mem::replace(&mut self.stdout, thread::spawn(Vec::new))
            .join()
            .unwrap();
        lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for TraceAll {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pre-fork server, workers accept, connections stay ESTABLISHED: the
/// accept() hook only rewrites the kernel map, no event tells userspace,
/// so /api/connections (and top, and the metrics) name the master until a
/// periodic reconciliation — never with `--reconcile-interval 0s`, and for
/// up to 10 s with the default.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn pre_fork_established_connections_name_the_worker_in_the_api() {
    if !privileged_or_skip("pre_fork_established_connections_name_the_worker_in_the_api") {
        return;
    }
    let daemon = RunningDaemon::start(&["--reconcile-interval", "0s"]);
    let ns = Netns::new("r13pf");
    let mut master = ns.peer("tw-master");
    let mut client = ns.peer("tw-client");
    let port: u16 = master.ok("listen 127.0.0.1 16").parse().unwrap();
    master.send("fork_accept_leak 2");
    for _ in 0..2 {
        client.ok(&format!("connect 127.0.0.1 {port}"));
        client.ok("keep");
    }
    let worker: u64 = master
        .reply()
        .strip_prefix("ok ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap();
    thread::sleep(Duration::from_secs(3));
    let rows = api_connections(&daemon, &ns, port);
    let pids: Vec<u64> = rows.iter().filter_map(|r| r["pid"].as_u64()).collect();
    assert_eq!(
        pids,
        [worker, worker],
        "worker {worker} accepted both; master is {}; ss: {}",
        master.pid,
        ns.exec(&[
            "ss",
            "-tnpH",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{port}")
        ])
    );
}

/// A daemonizing server (launcher listens, forks the daemon, exits), with
/// tcpwatch started first: the kernel's LISTENERS map keeps the launcher,
/// so each new connection's SYN_RECV -> ESTABLISHED event names the exited
/// launcher, and the model keeps it (recheck_exited_owners ignores
/// ESTABLISHED sockets and has already checked the launcher's pid).
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn daemon_connections_do_not_name_the_exited_launcher() {
    if !privileged_or_skip("daemon_connections_do_not_name_the_exited_launcher") {
        return;
    }
    let daemon = RunningDaemon::start(&["--reconcile-interval", "0s"]);
    let ns = Netns::new("r13dm");
    let tracer = Tracer::start(&ns, &["--reconcile-interval", "0s"]);
    let mut server = ns.peer("tw-server");
    let reply = server.ok("daemonize tw-daemon");
    let words: Vec<u64> = reply
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [port, daemon_pid, launcher] = words[..] else {
        panic!("{reply}");
    };
    // A tick sees the launcher exited and corrects the listener.
    thread::sleep(Duration::from_millis(2500));
    let mut client = ns.peer("tw-client");
    let client_port: u64 = client
        .ok(&format!("connect 127.0.0.1 {port}"))
        .parse()
        .unwrap();
    client.ok("keep");
    thread::sleep(Duration::from_secs(2));
    let rows = api_connections(&daemon, &ns, port as u16);
    let (lines, _) = tracer.stop();
    assert!(!alive(launcher), "the launcher has exited");
    let established: Vec<&Value> = lines
        .iter()
        .filter(|e| {
            e["kind"] == "state"
                && e["new_state"] == "ESTABLISHED"
                && e["sport"] == port
                && e["dport"] == client_port
        })
        .collect();
    let named: Vec<(Option<u64>, Option<u64>)> = rows
        .iter()
        .map(|r| (r["pid"].as_u64(), r["dport"].as_u64()))
        .collect();
    let traced: Vec<Option<u64>> = established.iter().map(|e| e["pid"].as_u64()).collect();
    assert_eq!(
        (named, traced),
        (
            vec![(Some(daemon_pid), Some(client_port))],
            vec![Some(daemon_pid)]
        ),
        "daemon {daemon_pid}, exited launcher {launcher}"
    );
}

/// A process that execs itself (same pid, new program and comm) keeping a
/// connection, then sends on it: the send hook compares pids only, so the
/// kernel keeps the old comm. A reconciliation corrects the model, and the
/// next state event (a reset, in softirq) puts the old name back: the
/// lifecycle line names `r13-before`, a program this pid no longer runs.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_process_that_execs_itself_is_named_after_its_new_program() {
    if !privileged_or_skip("a_process_that_execs_itself_is_named_after_its_new_program") {
        return;
    }
    let ns = Netns::new("r13ex");
    let tracer = Tracer::start(&ns, &["--lifecycle", "--reconcile-interval", "1s"]);
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let mut role = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(PEER)
        .args(["--role", &format!("before:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(role.stdout.take().unwrap());
    let mut next = || loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "role died");
        if let Some(at) = line.find("@@ ") {
            return line[at + 3..].trim().to_owned();
        }
    };
    let first = next();
    let local: u64 = first.split_whitespace().next().unwrap().parse().unwrap();
    server.ok("accept");
    assert!(next().starts_with("sent 5"), "the exec'd program sent");
    // At least one reconciliation looks at it under its new name.
    thread::sleep(Duration::from_millis(2500));
    server.ok("linger0");
    server.ok("close");
    thread::sleep(Duration::from_millis(500));
    let (lines, stderr) = tracer.stop();
    drop(role.stdin.take());
    let _ = role.kill();
    let _ = role.wait();
    let ended: Vec<(&Value, &Value)> = lines
        .iter()
        .filter(|e| e["kind"] == "lifecycle" && e["sport"] == local)
        .map(|e| (&e["comm"], &e["end"]))
        .collect();
    assert_eq!(
        ended,
        [(&Value::from("r13-after"), &Value::from("reset_received"))],
        "{lines:#?}\n{stderr:?}"
    );
}

/// Fork after accept with exec (the handler runs `sleep`, never reads) in a
/// namespace made after tcpwatch started, with `--reconcile-interval 0s`:
/// no reconciliation ever looks at the namespace, the CLOSE_WAIT gate lets
/// `reconciled_at() == None` through, and the leak is raised naming the
/// parent, which holds none of it.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn close_wait_in_a_namespace_never_reconciled_names_the_handler() {
    if !privileged_or_skip("close_wait_in_a_namespace_never_reconciled_names_the_handler") {
        return;
    }
    let tracer = TraceAll::start(&[
        "--no-events",
        "--close-wait-age",
        "1s",
        "--reconcile-interval",
        "0s",
    ]);
    let ns = Netns::new("r13nr");
    let mut parent = ns.peer("tw-parent");
    let mut client = ns.peer("tw-client");
    let port: u16 = parent.ok("listen 127.0.0.1 16").parse().unwrap();
    client.ok(&format!("connect 127.0.0.1 {port}"));
    client.ok("keep");
    let handler: u64 = parent.ok("fork_handler exec").parse().unwrap();
    client.ok("close_kept");
    thread::sleep(Duration::from_millis(3500));
    let ss = ns.exec(&["ss", "-tnpH", "state", "close-wait"]);
    let lines = tracer.stop();
    let raised: Vec<(Option<u64>, Option<&str>)> = findings(&lines, "close_wait_leak")
        .into_iter()
        .filter(|f| f["netns"] == ns.inode && f["status"] == "raised")
        .map(|f| (f["pid"].as_u64(), f["comm"].as_str()))
        .collect();
    assert_eq!(
        raised,
        [(Some(handler), Some("sleep"))],
        "parent is {}; ss: {ss}",
        parent.pid
    );
}

/// A client closes and exits while the peer drops everything: its orphaned
/// FIN_WAIT1 retransmits, and fin_retransmit names the exited pid (the
/// event's owner, never checked; no process holds an orphan).
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn fin_retransmit_of_an_orphan_names_no_exited_pid() {
    if !privileged_or_skip("fin_retransmit_of_an_orphan_names_no_exited_pid") {
        return;
    }
    let ns = Netns::new("r13fr");
    let tracer = Tracer::start(&ns, &["--no-events", "--finding-interval", "1s"]);
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    client.ok(&format!("connect 127.0.0.1 {port}"));
    server.ok("accept");
    ns.nft(&drop_rules(&[&format!("tcp sport {port} drop")]));
    client.ok("close");
    let pid = u64::from(client.pid);
    let exited_at = Instant::now();
    drop(client);
    assert!(!alive(pid));
    thread::sleep(Duration::from_millis(2500).saturating_sub(exited_at.elapsed()));
    let (lines, _) = tracer.stop();
    let f = findings(&lines, "fin_retransmit");
    assert!(!f.is_empty(), "{lines:#?}");
    let naming_the_dead: Vec<&&Value> = f.iter().filter(|f| f["pid"] == pid).collect();
    assert!(
        naming_the_dead.is_empty(),
        "pid {pid} exited before its FIN was first retransmitted: {naming_the_dead:#?}"
    );
}

type Hog = (Child, BufReader<std::process::ChildStdout>);

/// Ten processes holding 19,000 descriptors each (what a busy host has).
fn hogs() -> Vec<Hog> {
    (0..10)
        .map(|_| {
            let mut c = role_command("hog:19000")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut out = BufReader::new(c.stdout.take().unwrap());
            let mut line = String::new();
            while !line.contains("@@ ready") {
                line.clear();
                assert!(out.read_line(&mut line).unwrap() > 0, "hog died");
            }
            (c, out)
        })
        .collect()
}

fn end_hogs(hogs: &mut [Hog]) {
    for (h, out) in hogs {
        drop(h.stdin.take());
        let _ = std::io::copy(out, &mut std::io::sink());
        let _ = h.wait();
    }
}

/// The longest /healthz answers of `daemon` over `secs` seconds, one
/// request every 20 ms.
fn healthz_latencies(addr: &str, secs: u64) -> Vec<Duration> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut took = Vec::new();
    while Instant::now() < end {
        let t = Instant::now();
        let (status, _, _) = http_get(addr, "/healthz");
        assert!(status.contains("200"), "{status}");
        took.push(t.elapsed());
        thread::sleep(Duration::from_millis(20));
    }
    took.sort();
    took.reverse();
    took
}

/// A steady CLOSE_WAIT leak (one more socket crosses --close-wait-age
/// every few hundred ms, the situation the detector exists for) on a host
/// with many descriptors: `confirm_owners_of_waits` reconciles from the
/// tick, synchronously, with the daemon's lock held and on the event
/// loop's only thread (current-thread runtime): a full /proc holders scan
/// plus netns listing plus sock_diag dump every second or two. /healthz
/// (and the ring buffer consumer, and /metrics) wait for each one.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_steady_leak_does_not_stall_the_daemon() {
    if !privileged_or_skip("a_steady_leak_does_not_stall_the_daemon") {
        return;
    }
    let mut hogs = hogs();
    let daemon = RunningDaemon::start(&["--close-wait-age", "1s"]);
    thread::sleep(Duration::from_secs(2));
    let quiet = healthz_latencies(&daemon.addr, 6);
    let ns = Netns::new("r13st");
    let mut leaky = ns.peer("tw-leaky");
    let mut client = ns.peer("tw-client");
    let port: u16 = leaky.ok("listen 127.0.0.1 128").parse().unwrap();
    let leaking = thread::spawn(move || {
        for _ in 0..40 {
            client.ok(&format!("connect 127.0.0.1 {port}"));
            leaky.ok("accept");
            client.ok("close");
            leaky.ok("keep");
            thread::sleep(Duration::from_millis(250));
        }
        (leaky, client)
    });
    thread::sleep(Duration::from_secs(2));
    let storm = healthz_latencies(&daemon.addr, 6);
    let _peers = leaking.join().unwrap();
    end_hogs(&mut hogs);
    let slow = |l: &[Duration]| {
        l.iter()
            .filter(|d| **d > Duration::from_millis(100))
            .count()
    };
    assert!(
        slow(&storm) <= slow(&quiet),
        "/healthz over 100 ms: {} of {} while quiet (worst {:?}), {} of {} during a steady leak (worst {:?})",
        slow(&quiet),
        quiet.len(),
        quiet[0],
        slow(&storm),
        storm.len(),
        storm[0]
    );
}

/// Both a parent and its forked handler hold an accepted connection; the
/// peer closes, and the CLOSE_WAIT event names the parent (its accept()).
/// The handler then reads (EOF): the kernel map now names it, but nothing
/// tells userspace, and `owner_for` keeps the parent because it still
/// holds the socket. close_wait_leak names the parent, not the process
/// that used the socket last (issue 13: "name the one that used it last").
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn of_two_holders_the_one_that_read_last_is_named() {
    if !privileged_or_skip("of_two_holders_the_one_that_read_last_is_named") {
        return;
    }
    if !std::path::Path::new("/sys/kernel/tracing/events/sock/sock_recv_length").exists() {
        eprintln!("skipped: no sock:sock_recv_length");
        return;
    }
    let ns = Netns::new("r13sh");
    let tracer = Tracer::start(
        &ns,
        &["--close-wait-age", "1s", "--reconcile-interval", "1s"],
    );
    let mut role = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(PEER)
        .args(["--role", "sharer"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(role.stdout.take().unwrap());
    let mut next = || loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "role died");
        if let Some(at) = line.find("@@ ") {
            return line[at + 3..].trim().parse::<u64>().unwrap();
        }
    };
    let port = next();
    let mut client = ns.peer("tw-client");
    client.ok(&format!("connect 127.0.0.1 {port}"));
    let handler = next();
    client.ok("close");
    thread::sleep(Duration::from_millis(3500));
    let ss = ns.exec(&["ss", "-tnpH", "state", "close-wait"]);
    let (lines, stderr) = tracer.stop();
    drop(role.stdin.take());
    let _ = role.wait();
    let leaks: Vec<(Option<u64>, Value)> = findings(&lines, "close_wait_leak")
        .into_iter()
        .filter(|f| f["status"] == "raised")
        .map(|f| (f["pid"].as_u64(), f["holders"].clone()))
        .collect();
    let reads: Vec<(Value, Value)> = lines
        .iter()
        .filter(|e| e["kind"] == "state" && e["sport"] == port)
        .map(|e| (e["new_state"].clone(), e["pid"].clone()))
        .collect();
    assert_eq!(
        leaks,
        [(Some(handler), Value::from(2))],
        "parent {}; events {reads:?}; ss: {ss}\n{stderr:?}",
        role.id()
    );
}

/// Short-lived clients of a black-holed server (health checks, cron jobs)
/// give up and exit; their orphans keep retransmitting (rtx_run set, owner
/// exited, nobody holds them). `recheck_exited_owners` reconciles for
/// every new exited pid at the next tick and again every 10 s per pid,
/// never fixing anything (an orphan has no holder): a full reconciliation
/// every tick, from the tick, under the daemon's lock.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn clients_giving_up_on_a_dead_server_do_not_stall_the_daemon() {
    if !privileged_or_skip("clients_giving_up_on_a_dead_server_do_not_stall_the_daemon") {
        return;
    }
    let mut hogs = hogs();
    let daemon = RunningDaemon::start(&[]);
    thread::sleep(Duration::from_secs(2));
    let quiet = healthz_latencies(&daemon.addr, 6);
    let ns = Netns::new("r13gu");
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 128").parse().unwrap();
    ns.nft(&drop_rules(&[&format!(
        "tcp sport {port} tcp flags & syn == 0 drop"
    )]));
    let name = ns.name.clone();
    let clients = thread::spawn(move || {
        let mut spawned = Vec::new();
        for _ in 0..30 {
            spawned.push(
                Command::new("ip")
                    .args(["netns", "exec", &name])
                    .arg(PEER)
                    .args(["--role", &format!("giveup:{port}")])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            thread::sleep(Duration::from_millis(300));
        }
        // Each client connected, sent and gave up (the situation under test).
        spawned
            .into_iter()
            .map(|mut c| c.wait().is_ok_and(|s| s.success()))
            .filter(|ok| !ok)
            .count()
    });
    thread::sleep(Duration::from_secs(3));
    let storm = healthz_latencies(&daemon.addr, 6);
    let failed = clients.join().unwrap();
    end_hogs(&mut hogs);
    assert_eq!(failed, 0, "clients that could not connect and give up");
    let slow = |l: &[Duration]| {
        l.iter()
            .filter(|d| **d > Duration::from_millis(100))
            .count()
    };
    assert!(
        slow(&storm) <= slow(&quiet),
        "/healthz over 100 ms: {} of {} while quiet (worst {:?}), {} of {} while clients give up (worst {:?})",
        slow(&quiet),
        quiet.len(),
        quiet[0],
        slow(&storm),
        storm.len(),
        storm[0]
    );
}
