//! Faults tcpwatch must survive without breaking the host, losing track
//! silently or running with more privilege than it needs: a SIGKILL and a
//! restart, a namespace that disappears while observed, clients that never
//! read and a scrape storm, tracefs missing, and the capabilities left
//! after attach.

use std::{
    io::Write,
    net::TcpStream,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::common::*;

fn metrics(daemon: &RunningDaemon) -> String {
    let (status, _, body) = http_get(&daemon.addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    body
}

fn netns_series(ns: &Netns, state: &str) -> String {
    format!(
        "tcpwatch_netns_sockets{{netns=\"{}\",state=\"{state}\"}}",
        ns.inode
    )
}

/// Every thread of the daemon runs with the four capabilities it keeps
/// after attach (CAP_BPF, CAP_SYS_ADMIN, CAP_SYS_PTRACE,
/// CAP_DAC_READ_SEARCH), no bounding set beyond them, and no_new_privs.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn after_attach_only_the_needed_capabilities_remain() {
    if !privileged_or_skip("after_attach_only_the_needed_capabilities_remain") {
        return;
    }
    let daemon = RunningDaemon::start(&[]);
    let _ = metrics(&daemon);
    let kept: u64 = 1 << 39 | 1 << 21 | 1 << 19 | 1 << 2;
    let tasks = std::fs::read_dir(format!("/proc/{}/task", daemon.child.id())).expect("tasks");
    let mut threads = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).expect("status");
        let field = |name: &str| -> u64 {
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {status}"));
            u64::from_str_radix(value.trim(), 16).expect("hex")
        };
        for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(field(set), kept, "{set} of {:?}", task.path());
        }
        assert_eq!(field("CapAmb:"), 0);
        assert_eq!(field("NoNewPrivs:"), 1);
        threads += 1;
    }
    assert!(threads >= 1);
}

/// SIGKILL, then a new daemon: it rebuilds its view from sock_diag (the
/// leak and the TIME_WAITs are back, agreeing with ss, the leak still
/// attributed to its process), and connections that existed before it
/// started are not counted again as opened.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn killed_and_restarted_the_daemon_rebuilds_from_sock_diag() {
    if !privileged_or_skip("killed_and_restarted_the_daemon_rebuilds_from_sock_diag") {
        return;
    }
    let ns = Netns::new("kill");
    let args = [
        "--netns-labels",
        "--reconcile-interval",
        "1s",
        "--close-wait-age",
        "1s",
    ];
    let first = RunningDaemon::start(&args);
    // Kept to the end: dropping them would end their sockets.
    let peers = leak_and_buildup(&ns, 2, 3);
    let leaky_port = peers.leaky_port;
    thread::sleep(Duration::from_millis(1500));
    let before = metrics(&first);
    assert_eq!(
        sample(&before, &netns_series(&ns, "CLOSE_WAIT")),
        Some(2.0),
        "{before}"
    );
    drop(first); // SIGKILL

    let second = RunningDaemon::start(&args);
    thread::sleep(Duration::from_millis(1500));
    let after = metrics(&second);
    assert_eq!(ns.sockets("close-wait", &[]), 2);
    assert_eq!(ns.sockets("time-wait", &[]), 3);
    assert_eq!(
        sample(&after, &netns_series(&ns, "CLOSE_WAIT")),
        Some(2.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, &netns_series(&ns, "TIME_WAIT")),
        Some(3.0),
        "{after}"
    );
    let port = leaky_port.to_string();
    let leak = [("comm", "tw-leaky"), ("port", port.as_str())];
    assert_eq!(
        sample_where(&after, "tcpwatch_close_wait_sockets", &leak),
        Some(2.0),
        "{after}"
    );
    // Learnt, not replayed: the connections that predate the restart come
    // from sock_diag with their age unknown, not as new connections (the
    // opened counters count only what the new daemon saw open; other tests'
    // namespaces share those, so the records are checked instead).
    let (_, _, conns) = http_get(&second.addr, &format!("/api/connections?port={leaky_port}"));
    let conns: serde_json::Value = serde_json::from_str(&conns).expect("JSON");
    let records: Vec<serde_json::Value> = conns["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["netns"] == ns.inode)
        .cloned()
        .collect();
    assert_eq!(records.len(), 2, "{conns:#}");
    assert!(
        records
            .iter()
            .all(|c| c["state_age_known"] == false && c["state"] == "CLOSE_WAIT"),
        "{conns:#}"
    );
}

/// A namespace deleted while observed: its sockets leave the metrics at the
/// next reconciliation and the daemon stays healthy.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_namespace_that_disappears_is_forgotten() {
    if !privileged_or_skip("a_namespace_that_disappears_is_forgotten") {
        return;
    }
    let daemon = RunningDaemon::start(&["--netns-labels", "--reconcile-interval", "1s"]);
    let ns = Netns::new("gone");
    let inode = ns.inode;
    let series = netns_series(&ns, "TIME_WAIT");
    {
        let _peers = leak_and_buildup(&ns, 1, 2);
        thread::sleep(Duration::from_millis(1500));
        assert_eq!(sample(&metrics(&daemon), &series), Some(2.0));
    }
    drop(ns);
    thread::sleep(Duration::from_millis(2500));
    let body = metrics(&daemon);
    // Namespace inode numbers are reused: another test's new namespace may
    // carry it by now, and then its sockets rightly show.
    if !namespace_inode_in_use(inode) {
        assert!(!body.contains(&format!("netns=\"{inode}\"")), "{body}");
    }
    let (status, _, _) = http_get(&daemon.addr, "/healthz");
    assert!(status.contains("200"), "{status}");
}

/// Whether a live namespace (named, or of a process) has this inode.
fn namespace_inode_in_use(inode: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let of_processes = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("ns/net"));
    named
        .chain(of_processes)
        .any(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == inode))
}

/// Clients that send a request and never read the answer, and a storm of
/// scrapes from several threads: every scrape is answered, a fresh one
/// stays quick, and events keep flowing.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn clients_that_never_read_and_a_scrape_storm_do_not_stall_the_daemon() {
    if !privileged_or_skip("clients_that_never_read_and_a_scrape_storm_do_not_stall_the_daemon") {
        return;
    }
    let ns = Netns::new("storm");
    let daemon = RunningDaemon::start(&[]);
    let _ = metrics(&daemon);
    let silent: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = TcpStream::connect(&daemon.addr).expect("connect");
            let _ = s.set_nodelay(true);
            write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
            s
        })
        .collect();
    let storm: Vec<_> = (0..8)
        .map(|_| {
            let addr = daemon.addr.clone();
            thread::spawn(move || {
                (0..40)
                    .filter(|_| http_get(&addr, "/metrics").0.contains("200"))
                    .count()
            })
        })
        .collect();
    let started = Instant::now();
    let body = metrics(&daemon);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let answered: usize = storm
        .into_iter()
        .map(|t| t.join().expect("storm thread"))
        .sum();
    assert_eq!(answered, 8 * 40);
    // Read-only: anything but GET is refused, whatever it carries.
    let mut post = TcpStream::connect(&daemon.addr).expect("connect");
    write!(
        post,
        "POST /api/findings HTTP/1.0\r\nContent-Length: 100000\r\n\r\n{}",
        "x".repeat(100_000)
    )
    .expect("send");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut post, &mut answer);
    assert!(answer.starts_with("HTTP/1.0 405"), "{answer}");
    // Events still flow: a connection in the namespace is counted.
    let received = |b: &str| sample(b, "tcpwatch_events_received_total").unwrap_or(0.0);
    let before = received(&body);
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    client_closes_first(&mut client, &mut server, "127.0.0.1", port);
    thread::sleep(Duration::from_millis(300));
    assert!(received(&metrics(&daemon)) > before);
    drop(silent);
}

/// tracefs not mounted (in a mount namespace of the test's own, so the
/// host's mount is untouched): tcpwatch mounts it and traces.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_missing_tracefs_is_mounted() {
    if !privileged_or_skip("a_missing_tracefs_is_mounted") {
        return;
    }
    let mounted = || {
        std::fs::read_to_string("/proc/self/mounts")
            .expect("mounts")
            .contains(" tracefs ")
    };
    let host_had_it = mounted();
    let script = "umount /sys/kernel/tracing 2>/dev/null; \
                  umount /sys/kernel/debug/tracing 2>/dev/null; \
                  if [ -d /sys/kernel/tracing/events ]; then echo still mounted; exit 3; fi; \
                  exec timeout --preserve-status -s INT 2 \"$0\" trace --no-events";
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(env!("CARGO_BIN_EXE_tcpwatch"))
        .output()
        .expect("unshare runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("tracing TCP on"), "{stderr}");
    assert_eq!(mounted(), host_had_it, "the host's mounts are untouched");
}

/// A burst while the consumer is stopped overflows a 4 KiB ring buffer: the
/// losses are counted and reported, and the reconciliation that follows
/// finds the CLOSE_WAIT leak made during the burst anyway.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_ring_buffer_overflow_is_counted_and_repaired() {
    if !privileged_or_skip("a_ring_buffer_overflow_is_counted_and_repaired") {
        return;
    }
    let ns = Netns::new("burst");
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--ring-kib",
            "4",
            "--reconcile-interval",
            "1s",
            "--close-wait-age",
            "1s",
        ],
    );
    // SAFETY: signals to the tracer this test started and has not reaped.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGSTOP) };
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let port: u16 = server.ok("listen 127.0.0.1 64").parse().unwrap();
    for _ in 0..30 {
        client_closes_first(&mut client, &mut server, "127.0.0.1", port);
    }
    // Kept to the end: dropping them would end their sockets.
    let peers = leak_and_buildup(&ns, 2, 0);
    let leaky_port = peers.leaky_port;
    // SAFETY: as above.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGCONT) };
    thread::sleep(Duration::from_millis(3000));
    let (lines, stderr) = tracer.stop();
    let summary = stderr.last().cloned().unwrap_or_default();
    assert!(
        summary.contains("events LOST (ring buffer full)"),
        "{stderr:#?}"
    );
    assert!(
        summary.contains("corrected the model"),
        "the reconciliation repaired it: {stderr:#?}"
    );
    let leaks: Vec<_> = findings(&lines, "close_wait_leak")
        .into_iter()
        .filter(|f| f["lport"] == leaky_port)
        .collect();
    assert!(!leaks.is_empty(), "{lines:#?}");
}

/// Review: losses within 5 s of a repair are never repaired. The session
/// refuses the repair (at most one every 5 s) and `trace` forgets the
/// loss (its count is taken as reported), so with `--reconcile-interval
/// 0s` (documented: checks only at start; a long interval likewise until
/// its next round) a CLOSE_WAIT leak whose events were lost in the second
/// burst is never found. The README promises an early reconciliation
/// after losses "at most every 5 s", i.e. one deferred, not dropped.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn losses_soon_after_a_repair_are_repaired_too() {
    if !privileged_or_skip("losses_soon_after_a_repair_are_repaired_too") {
        return;
    }
    let ns = Netns::new("burst2");
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--ring-kib",
            "4",
            "--reconcile-interval",
            "0s",
            "--close-wait-age",
            "1s",
        ],
    );
    // Bursts of refused connects (to a port nobody listens on): their lost
    // events leave no CLOSE_WAIT or FIN_WAIT2 behind whose owners a
    // confirmation would dump the namespace for (that dump would find the
    // leak by chance).
    let mut client = ns.peer("tw-client");
    let burst = |client: &mut Peer| {
        for _ in 0..60 {
            let answer = client.cmd("connect 127.0.0.1 9");
            assert!(answer.starts_with("err"), "{answer}");
        }
    };
    // First burst: losses, and the repair they trigger.
    // SAFETY: signals to the tracer this test started and has not reaped.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGSTOP) };
    burst(&mut client);
    // SAFETY: as above.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGCONT) };
    thread::sleep(Duration::from_millis(1500));
    // Second burst, a second or two after that repair: its losses hide a
    // CLOSE_WAIT leak.
    // SAFETY: as above.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGSTOP) };
    burst(&mut client);
    let peers = leak_and_buildup(&ns, 2, 0);
    let leaky_port = peers.leaky_port;
    // SAFETY: as above.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGCONT) };
    // Well past the 5 s after the first repair.
    thread::sleep(Duration::from_millis(9000));
    let (lines, stderr) = tracer.stop();
    let lost = stderr
        .iter()
        .filter(|l| l.contains("LOST") || l.contains("lost"))
        .count();
    assert!(lost > 0, "events were lost: {stderr:#?}");
    let leaks: Vec<_> = findings(&lines, "close_wait_leak")
        .into_iter()
        .filter(|f| f["lport"] == leaky_port)
        .collect();
    assert!(
        !leaks.is_empty(),
        "the leak hidden by the second burst's losses was never found (no repair): {stderr:#?}"
    );
}
