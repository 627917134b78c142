//! deploy/: the systemd unit, the default configuration, the Prometheus
//! scrape configuration and alerting rules, and a real Prometheus scraping
//! tcpwatch.

use std::{
    io::Write,
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use crate::common::*;
use tcpwatch::serve::config::Config;

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).join(file)
}

#[test]
fn default_configuration_file_is_the_defaults() {
    let config = Config::load(&deploy("tcpwatch.toml")).expect("deploy/tcpwatch.toml parses");
    assert_eq!(config, Config::default());
}

#[test]
#[ignore = "needs tools `cargo xtask setup --tests` installs; `cargo xtask test` runs it"]
fn systemd_unit_verifies() {
    if !tool("systemd-analyze", "systemd_unit_verifies") {
        return;
    }
    // verify checks that ExecStart exists: point it at the built binary.
    let dir = temp_dir("unit");
    let unit = std::fs::read_to_string(deploy("tcpwatch.service")).expect("unit");
    assert!(
        unit.contains("Type=notify")
            && unit.contains("NoNewPrivileges=yes")
            && unit.contains("ProtectSystem=strict")
            && unit.contains("RestartPreventExitStatus=78")
    );
    let path = dir.join("tcpwatch.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/tcpwatch", env!("CARGO_BIN_EXE_tcpwatch")),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("runs");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs tools `cargo xtask setup --tests` installs; `cargo xtask test` runs it"]
fn prometheus_files_check_and_rule_tests_pass() {
    if !tool("promtool", "prometheus_files_check_and_rule_tests_pass") {
        return;
    }
    for args in [
        vec!["check", "rules", "tcpwatch.rules.yml"],
        vec!["check", "config", "prometheus.yml"],
        vec!["test", "rules", "tcpwatch.rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(deploy(""))
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn get(addr: &str, path: &str) -> String {
    http_get(addr, path).2
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_real_scrape_passes_promtool_check_metrics() {
    if !privileged_or_skip("a_real_scrape_passes_promtool_check_metrics")
        || !tool("promtool", "a_real_scrape_passes_promtool_check_metrics")
    {
        return;
    }
    let daemon = RunningDaemon::start(&[]);
    let addr = daemon.addr.clone();
    // Some traffic, so that histograms and labelled counters exist.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    for _ in 0..3 {
        let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (s, _) = listener.accept().expect("accept");
        drop(c);
        drop(s);
    }
    thread::sleep(Duration::from_millis(300));
    let body = get(&addr, "/metrics");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    check
        .stdin
        .take()
        .expect("piped")
        .write_all(body.as_bytes())
        .expect("promtool reads");
    let out = check.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus (Debian's) scrapes tcpwatch: a PromQL query gives the
/// TIME_WAIT count `ss` sees, and the CLOSE_WAIT alert fires.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn prometheus_scrapes_tcpwatch_and_the_close_wait_alert_fires() {
    if !privileged_or_skip("prometheus_scrapes_tcpwatch_and_the_close_wait_alert_fires")
        || !tool(
            "prometheus",
            "prometheus_scrapes_tcpwatch_and_the_close_wait_alert_fires",
        )
    {
        return;
    }
    let ns = Netns::new("prom");
    let daemon = RunningDaemon::start(&["--reconcile-interval", "1s"]);
    let addr = daemon.addr.clone();
    // Keep every peer alive: the leaky server holds the CLOSE_WAIT sockets.
    let servers = leak_and_buildup(&ns, 1, 3);
    let closer_port = servers.closer_port;
    assert_eq!(
        ns.sockets("time-wait", &["sport", "=", &format!(":{closer_port}")]),
        3
    );

    // The shipped rules, with the CLOSE_WAIT alert's 5 minutes shortened.
    let rules = std::fs::read_to_string(deploy("tcpwatch.rules.yml")).expect("rules");
    let rules = rules.replace(
        "(tcpwatch_close_wait_oldest_seconds) > 300\n        for: 5m",
        "(tcpwatch_close_wait_oldest_seconds) > 1\n        for: 0s",
    );
    assert!(
        rules.contains("> 1\n        for: 0s"),
        "the CLOSE_WAIT rule changed shape"
    );
    let prometheus = Prometheus::start("prometheus", &addr, Some(&rules));
    let series = format!("tcpwatch_time_wait_sockets{{endpoint=\"server :{closer_port}\"}}");
    let time_wait = || -> Option<f64> {
        prometheus.query(&series)["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
    };
    let firing = || {
        prometheus.api("/api/v1/alerts")["data"]["alerts"]
            .as_array()
            .is_some_and(|a| {
                a.iter().any(|a| {
                    a["labels"]["alertname"] == "TcpCloseWaitLeak"
                        && a["state"] == "firing"
                        && a["labels"]["comm"] == "tw-leaky"
                })
            })
    };
    let up = wait_until(Duration::from_secs(30), || time_wait().is_some());
    assert!(up, "prometheus never had the series");
    assert_eq!(time_wait(), Some(3.0), "PromQL agrees with ss");
    assert!(
        wait_until(Duration::from_secs(30), firing),
        "{}",
        prometheus.api("/api/v1/alerts")
    );
}
