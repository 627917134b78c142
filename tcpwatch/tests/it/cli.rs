//! The command line as a user meets it: help, bad values, missing privileges.

use std::process::Command;

use crate::common::tcpwatch;

#[test]
fn every_trace_flag_is_documented() {
    let out = tcpwatch(&["trace", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--json",
        "--port",
        "--lport",
        "--rport",
        "--pid",
        "--comm",
        "--netns",
        "--state",
        "--ipv4",
        "--ipv6",
        "--lifecycle",
        "--no-events",
        "--no-findings",
        "--close-wait-age",
        "--fin-wait2-age",
        "--time-wait-count",
        "--peer-unresponsive-after",
        "--port-use-fraction",
        "--finding-interval",
        "--reconcile-interval",
        "--color",
        "--ring-kib",
        "--verbose",
    ] {
        let lines: Vec<&str> = help.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(flag) || l.contains(&format!(", {flag}")))
            .unwrap_or_else(|| panic!("{flag} missing:\n{help}"));
        // Short help is on the flag's line, long help on the next one.
        let same_line = lines[at]
            .split_once(flag)
            .map(|(_, rest)| rest.trim())
            .unwrap_or("");
        let words = |t: &str| t.split_whitespace().filter(|w| !w.starts_with('<')).count();
        let next = lines.get(at + 1).map(|l| l.trim()).unwrap_or("");
        let documented = words(same_line) >= 3 || (!next.starts_with('-') && words(next) >= 3);
        assert!(documented, "{flag} has no help text:\n{help}");
    }
}

#[test]
fn every_top_flag_is_documented() {
    let out = tcpwatch(&["top", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--netns",
        "--refresh",
        "--top",
        "--close-wait-age",
        "--reconcile-interval",
    ] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
}

#[test]
fn every_audit_flag_is_documented() {
    let out = tcpwatch(&["audit", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--netns", "--json"] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
}

#[test]
fn bad_values_exit_2_with_one_message() {
    for args in [
        &["trace", "--port", "70000"][..],
        &["trace", "--state", "nope"],
        &["trace", "--ring-kib", "3"],
    ] {
        let out = tcpwatch(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: invalid value"), "{args:?}: {err}");
    }
}

/// Without privileges: one sentence naming what is missing, no backtrace.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn unprivileged_trace_says_what_is_missing() {
    if !crate::common::privileged_or_skip("unprivileged_trace_says_what_is_missing") {
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_tcpwatch"))
        .arg("trace")
        .output()
        .expect("setpriv (util-linux) runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("needs root, or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}
