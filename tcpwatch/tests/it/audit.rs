//! `tcpwatch audit` against network namespaces the tests configure, with
//! `ss` and the namespace's own counters as ground truth.

use crate::common::*;
use serde_json::Value;

fn audit(netns: &str) -> Value {
    let out = tcpwatch(&["audit", "--json", "--netns", netns]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

fn finding<'a>(report: &'a Value, setting: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter(|f| f["evidence"]["setting"] == format!("net.ipv4.{setting}"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn audit_reads_the_namespace_it_is_given() {
    if !privileged_or_skip("audit_reads_the_namespace_it_is_given") {
        return;
    }
    let ns = Netns::new("aud");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    ns.sysctl("net.ipv4.tcp_timestamps", "0");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999");
    ns.sysctl("net.ipv4.tcp_rfc1337", "1");

    // Three connections closed by the client: three TIME_WAIT sockets.
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    for _ in 0..3 {
        client_closes_first(&mut client, &mut server, "127.0.0.1", port);
    }
    let ss_time_wait = ns.sockets("time-wait", &[]) as u64;
    assert_eq!(ss_time_wait, 3);

    let report = audit(&ns.name);
    assert_eq!(report["netns"], ns.inode);
    assert_eq!(report["sysctls"]["ip_local_port_range"], "40000 40999");
    assert_eq!(report["time_wait"], ss_time_wait);
    assert_eq!(
        report["tcpext"]["TW"], 3,
        "TcpExt TW counts TIME_WAIT entries in this namespace only"
    );

    let reuse = finding(&report, "tcp_tw_reuse");
    assert!(
        reuse.iter().any(|f| f["severity"] == "warning"
            && f["summary"]
                .as_str()
                .is_some_and(|s| s.contains("no effect"))),
        "{reuse:#?}"
    );
    let ports = finding(&report, "ip_local_port_range");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["evidence"]["ports"], 1000);
    assert!(
        finding(&report, "tcp_rfc1337").is_empty(),
        "rfc1337=1 raises nothing"
    );

    // The host's own namespace is untouched by all of this.
    let host = audit(&std::process::id().to_string());
    assert_ne!(host["netns"], ns.inode);
    assert!(finding(&host, "ip_local_port_range")
        .iter()
        .all(|f| f["evidence"]["ports"] != 1000));
}

#[test]
fn audit_of_a_missing_namespace_is_one_sentence() {
    let out = tcpwatch(&["audit", "--netns", "tcpwatch-no-such-netns"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot open network namespace /run/netns/tcpwatch-no-such-netns"),
        "{err}"
    );
}
