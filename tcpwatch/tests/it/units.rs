//! Units and containers: peers moved into cgroups the tests make under the
//! cgroup v2 mount (`system.slice/tcpwatch-test-PID.service`, a
//! `docker-ID.scope` in a test slice) are named by `trace` (JSON `unit` and
//! `container`, the `--unit` filter, findings), by the daemon's metrics and
//! by its API; and still after the process and its cgroup are gone.

use std::{thread, time::Duration};

use crate::common::*;
use serde_json::Value;

/// CLOCK_MONOTONIC in nanoseconds: the clock of the events' `ts_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The socket events (not findings nor lifecycle lines) of `pid`.
fn events_of(lines: &[Value], pid: u32) -> Vec<&Value> {
    lines
        .iter()
        .filter(|e| e.get("skaddr").is_some() && e["pid"] == pid)
        .collect()
}

fn docker(short: &str) -> Value {
    serde_json::json!({"runtime": "docker", "id": short})
}

/// What the test's own cgroup is (the unclassified peer stays there):
/// `unit` and `container` as trace writes them.
fn own_workload() -> (Value, Value) {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
    let path = tcpwatch::host::cgroup::v2_path(&text).expect("a cgroup v2 line");
    let w = tcpwatch::host::cgroup::classify(path);
    (
        serde_json::to_value(w.as_ref().and_then(|w| w.unit())).expect("json"),
        serde_json::to_value(w.as_ref().and_then(|w| w.container())).expect("json"),
    )
}

/// A test's service name (`tcpwatch-test-PID{tag}.service`), and its
/// container's id and short id.
fn names(tag: &str, n: u16) -> (String, String, String) {
    let id = container_id(n);
    let short = id[..12].to_owned();
    (
        format!("tcpwatch-test-{}{tag}.service", std::process::id()),
        id,
        short,
    )
}

/// A server in a service of its own and a client in a docker scope of its
/// own, and two connections the server never closes (CLOSE_WAIT).
struct Leak {
    server: Peer,
    client: Peer,
    service_cg: TestCgroup,
    docker_cg: TestCgroup,
    /// The server's port, and the client's command to connect to it.
    port: u16,
    connect: String,
}

impl Leak {
    fn new(ns: &Netns, comms: (&str, &str), service: &str, id: &str) -> Leak {
        let me = std::process::id();
        let mut server = ns.peer(comms.0);
        let mut client = ns.peer(comms.1);
        let mut service_cg = TestCgroup::new(&format!("system.slice/{service}"));
        service_cg.add(server.pid);
        let mut docker_cg = TestCgroup::new(&format!("tcpwatch-test-{me}.slice/docker-{id}.scope"));
        docker_cg.add(client.pid);
        let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
        let connect = format!("connect 127.0.0.1 {port}");
        for _ in 0..2 {
            client.ok(&connect);
            server.ok("accept");
            client.ok("close");
            server.ok("keep");
        }
        Leak {
            server,
            client,
            service_cg,
            docker_cg,
            port,
            connect,
        }
    }
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn trace_names_the_unit_or_container_of_every_owner() {
    if !privileged_or_skip("trace_names_the_unit_or_container_of_every_owner") {
        return;
    }
    let me = std::process::id();
    let (service, id, short) = names("", 0);
    let ns = Netns::new("units");
    // Started before the cgroups exist: each id is learnt when it first comes.
    let all = Tracer::start(
        &ns,
        &[
            "--lifecycle",
            "--close-wait-age",
            "1s",
            "--finding-interval",
            "1s",
        ],
    );
    let by_service = Tracer::start(&ns, &["--unit", &service, "--close-wait-age", "1s"]);
    let by_container = Tracer::start(&ns, &["--unit", &short, "--close-wait-age", "1s"]);

    let Leak {
        mut server,
        mut client,
        service_cg,
        docker_cg,
        port,
        connect,
    } = Leak::new(&ns, ("tw-unit-srv", "tw-unit-cli"), &service, &id);
    // A client in the test's own cgroup, closed normally.
    let mut other = ns.peer("tw-unit-none");
    other.ok(&connect);
    server.ok("accept");
    other.ok("close");
    server.ok("read_eof");
    server.ok("close");
    // The leak is older than 1 s, and a reconciliation has seen it.
    thread::sleep(Duration::from_secs(5));

    // The client closes a last connection whose FIN the server never
    // acknowledges, exits, and its cgroup is removed: the orphan's FIN
    // retransmits still name the container, from the id the kernel kept.
    client.ok(&connect);
    server.ok("accept");
    ns.nft(&drop_rules(&[&format!("tcp sport {port} drop")]));
    client.ok("close");
    let client_pid = client.pid;
    drop(client);
    docker_cg.remove();
    let removed_ns = monotonic_ns();
    assert!(
        !cgroup2_mount()
            .point
            .join(format!("tcpwatch-test-{me}.slice"))
            .exists(),
        "the test slice is removed with its only scope"
    );
    thread::sleep(Duration::from_millis(2500));

    let (lines, _) = all.stop();
    let (service_lines, _) = by_service.stop();
    let (container_lines, _) = by_container.stop();
    let (server_pid, other_pid) = (server.pid, other.pid);
    drop(server);
    drop(other);
    service_cg.remove();

    // Every event of the server names its unit, and no container.
    let server_events = events_of(&lines, server_pid);
    assert!(!server_events.is_empty(), "{lines:#?}");
    for e in &server_events {
        assert_eq!(
            (&e["unit"], &e["container"]),
            (&Value::from(service.as_str()), &Value::Null),
            "{e}"
        );
    }
    // Every event of the client names its container (a docker scope is
    // no unit of its own).
    let client_events = events_of(&lines, client_pid);
    assert!(client_events.len() >= 6, "{lines:#?}");
    for e in &client_events {
        assert_eq!(
            (&e["unit"], &e["container"]),
            (&Value::Null, &docker(&short)),
            "{e}"
        );
    }
    // The peer left in the test's own cgroup: whatever that is.
    let (own_unit, own_container) = own_workload();
    let other_events = events_of(&lines, other_pid);
    assert!(!other_events.is_empty(), "{lines:#?}");
    for e in &other_events {
        assert_eq!(
            (&e["unit"], &e["container"]),
            (&own_unit, &own_container),
            "{e}"
        );
    }
    // After the client exited and its cgroup was removed.
    let after: Vec<&Value> = lines
        .iter()
        .filter(|e| {
            e["kind"] == "retransmit"
                && e["ts_ns"].as_u64().is_some_and(|t| t > removed_ns)
                && e["comm"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("tw-unit-cli"))
        })
        .collect();
    assert!(
        !after.is_empty(),
        "no FIN retransmit after the cgroup was removed: {lines:#?}"
    );
    for e in &after {
        assert_eq!(e["container"], docker(&short), "{e}");
    }
    // Lifecycle lines of the client's connections.
    let ended: Vec<&Value> = lines
        .iter()
        .filter(|e| e["kind"] == "lifecycle" && e["pid"] == client_pid)
        .collect();
    assert!(ended.len() >= 2, "{lines:#?}");
    for e in &ended {
        assert_eq!(e["container"], docker(&short), "{e}");
    }

    // Findings name the unit first.
    let leak = findings(&lines, "close_wait_leak");
    let raised = leak
        .first()
        .unwrap_or_else(|| panic!("no close_wait_leak: {lines:#?}"));
    assert_eq!(raised["unit"], service.as_str(), "{raised}");
    let summary = raised["summary"].as_str().unwrap_or("");
    assert!(
        summary.starts_with(&format!(
            "{service}: tw-unit-srv (pid {}) holds 2 connections",
            raised["pid"]
        )),
        "{summary}"
    );
    let fin = findings(&lines, "fin_retransmit");
    let fin = fin
        .first()
        .unwrap_or_else(|| panic!("no fin_retransmit: {lines:#?}"));
    assert_eq!(fin["container"], docker(&short), "{fin}");
    assert!(
        fin["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("docker:{short}: "))),
        "{fin}"
    );

    // --unit NAME: only what that unit's processes own, findings included.
    let shown = |lines: &[Value]| -> Vec<Value> {
        lines
            .iter()
            .filter(|e| e.get("skaddr").is_some())
            .cloned()
            .collect()
    };
    let service_events = shown(&service_lines);
    assert!(
        service_events.len() >= server_events.len(),
        "{service_lines:#?}"
    );
    for e in &service_events {
        assert_eq!(e["unit"], service.as_str(), "{e}");
    }
    assert!(
        !findings(&service_lines, "close_wait_leak").is_empty(),
        "{service_lines:#?}"
    );
    assert!(
        findings(&service_lines, "fin_retransmit").is_empty(),
        "{service_lines:#?}"
    );
    let container_events = shown(&container_lines);
    assert!(
        container_events.len() >= client_events.len(),
        "{container_lines:#?}"
    );
    for e in &container_events {
        assert_eq!(e["container"], docker(&short), "{e}");
    }
    assert!(
        container_events
            .iter()
            .any(|e| e["ts_ns"].as_u64().is_some_and(|t| t > removed_ns)),
        "the filter still knows the container after its cgroup is gone: {container_lines:#?}"
    );
    assert!(
        findings(&container_lines, "close_wait_leak").is_empty(),
        "{container_lines:#?}"
    );
    assert!(
        !findings(&container_lines, "fin_retransmit").is_empty(),
        "{container_lines:#?}"
    );
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn the_daemon_labels_close_wait_with_the_unit_and_the_api_names_it() {
    if !privileged_or_skip("the_daemon_labels_close_wait_with_the_unit_and_the_api_names_it") {
        return;
    }
    let (service, id, short) = names("-api", 1);
    let ns = Netns::new("unitsd");
    let daemon = RunningDaemon::start(&["--close-wait-age", "1s"]);
    let Leak {
        mut server,
        mut client,
        service_cg,
        docker_cg,
        port,
        connect,
    } = Leak::new(&ns, ("tw-unit-dsrv", "tw-unit-dcli"), &service, &id);
    // And one the client keeps open.
    client.ok(&connect);
    server.ok("accept");
    client.ok("keep");
    server.ok("keep");

    let port_label = port.to_string();
    let labels = [
        ("comm", "tw-unit-dsrv"),
        ("port", port_label.as_str()),
        ("unit", service.as_str()),
    ];
    let mut body = String::new();
    let labelled = wait_until(Duration::from_secs(10), || {
        body = http_get(&daemon.addr, "/metrics").2;
        sample_where(&body, "tcpwatch_close_wait_sockets", &labels) == Some(2.0)
    });
    assert!(labelled, "{labels:?} should be 2:\n{body}");
    assert!(
        sample_where(&body, "tcpwatch_close_wait_oldest_seconds", &labels).is_some(),
        "{body}"
    );

    let api = |query: &str| -> Vec<Value> {
        let (_, _, text) = http_get(&daemon.addr, &format!("/api/connections?{query}"));
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        v["connections"].as_array().cloned().unwrap_or_default()
    };
    let leaked = api(&format!("state=CLOSE_WAIT&port={port}"));
    assert_eq!(leaked.len(), 2, "{leaked:#?}");
    for c in &leaked {
        assert_eq!(
            (&c["unit"], &c["container"]),
            (&Value::from(service.as_str()), &Value::Null),
            "{c}"
        );
    }
    let of_service = api(&format!("unit={service}&port={port}"));
    assert_eq!(
        of_service.len(),
        3,
        "two leaked, the server's side of the open one: {of_service:#?}"
    );
    // The client's closing sides leave FIN_WAIT1 when the server's ACK of
    // their FIN comes, which a delayed ACK can hold back for up to 200 ms
    // after the server's side entered CLOSE_WAIT.
    let mut of_container = Vec::new();
    wait_until(Duration::from_secs(5), || {
        of_container = api(&format!("unit={short}&port={port}"));
        of_container.len() == 1
    });
    assert_eq!(
        of_container.len(),
        1,
        "the client's side of the open one: {of_container:#?}"
    );
    assert_eq!(of_container[0]["container"], docker(&short));
    assert_eq!(of_container[0]["unit"], Value::Null);
    assert_eq!(of_container[0]["state"], "ESTABLISHED");

    // Raised once the leak is older than 1 s and a reconciliation saw it.
    let leak_on_port =
        |f: &&Value| f["kind"] == "close_wait_leak" && f["evidence"]["lport"] == port;
    let mut open: Vec<Value> = Vec::new();
    wait_until(Duration::from_secs(10), || {
        let (_, _, text) = http_get(&daemon.addr, "/api/findings");
        open = serde_json::from_str(&text).unwrap_or_default();
        open.iter().any(|f| leak_on_port(&f))
    });
    let leak = open
        .iter()
        .find(leak_on_port)
        .unwrap_or_else(|| panic!("no close_wait_leak on {port}: {open:#?}"));
    assert_eq!(leak["evidence"]["unit"], service.as_str(), "{leak}");
    assert!(
        leak["summary"].as_str().is_some_and(
            |s| s.starts_with(&format!("{service}: tw-unit-dsrv (pid {})", server.pid))
        ),
        "{leak}"
    );

    drop(client);
    drop(server);
    docker_cg.remove();
    service_cg.remove();
}
