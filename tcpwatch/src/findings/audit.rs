//! The TCP sysctl audit: what a network namespace's settings make the kernel
//! do at the edges (TIME_WAIT, handshakes, teardowns, dead peers). Pure:
//! [`evaluate`] works on values read elsewhere, so tests need no kernel.
use crate::{
    findings::{Finding, FindingKind, Severity},
    host::netns_state::NetnsState,
};

const TCP_RTO_MAX_MS: u64 = 120_000;
const TCP_RTO_MIN_MS: u64 = 200;
const TCP_TIMEOUT_INIT_MS: u64 = 1_000;

/// The time the kernel allows `boundary` retransmissions with exponential
/// backoff from `rto_base_ms`, capped at TCP_RTO_MAX: `tcp_model_timeout()`
/// in net/ipv4/tcp_timer.c, which decides when retries are exhausted.
pub fn model_timeout_ms(boundary: u64, rto_base_ms: u64) -> u64 {
    let thresh = u64::from((TCP_RTO_MAX_MS / rto_base_ms.max(1)).max(1).ilog2());
    if boundary <= thresh {
        ((2u64 << boundary.min(62)) - 1) * rto_base_ms
    } else {
        ((2u64 << thresh) - 1) * rto_base_ms + (boundary - thresh) * TCP_RTO_MAX_MS
    }
}

fn secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn risk(
    severity: Severity,
    setting: &str,
    value: impl serde::Serialize,
    summary: String,
) -> Finding {
    Finding::new(FindingKind::SysctlRisk, severity, summary)
        .evidence("setting", format!("net.ipv4.{setting}"))
        .evidence("value", value)
}

/// What this namespace's settings and counters imply.
pub fn evaluate(s: &NetnsState) -> Vec<Finding> {
    let mut out = Vec::new();
    let tw_reuse = s.int("tcp_tw_reuse");
    if let (Some(reuse), Some(0)) = (tw_reuse, s.int("tcp_timestamps")) {
        if reuse != 0 {
            out.push(
                risk(
                    Severity::Warning,
                    "tcp_tw_reuse",
                    reuse,
                    format!("tcp_tw_reuse={reuse} has no effect: it needs TCP timestamps, and tcp_timestamps=0"),
                )
                .evidence("tcp_timestamps", 0)
                .remedy(
                    "The kernel reuses a TIME_WAIT 4-tuple only when timestamps prove new segments \
                     newer than old ones; enable net.ipv4.tcp_timestamps, or fix the churn that fills \
                     TIME_WAIT (connection reuse, keep-alive) instead of relying on tcp_tw_reuse.",
                ),
            );
        }
    }
    if tw_reuse == Some(1) {
        let delay = s.int("tcp_tw_reuse_delay").unwrap_or(1000);
        out.push(
            risk(
                Severity::Info,
                "tcp_tw_reuse",
                1,
                format!(
                    "tcp_tw_reuse=1: every outgoing connection may take a 4-tuple still in TIME_WAIT {delay} ms after it entered it"
                ),
            )
            .evidence("tcp_tw_reuse_delay_ms", delay)
            .remedy(
                "Skipping TIME_WAIT risks a stale segment or reset from the old connection hitting \
                 the new one, and a lost final ACK being answered with a challenge ACK instead of \
                 closing the peer's LAST_ACK; prefer 2 (loopback only, the default) and fewer, \
                 longer-lived connections.",
            ),
        );
    }
    if s.int("tcp_rfc1337") == Some(0) {
        out.push(
            risk(
                Severity::Info,
                "tcp_rfc1337",
                0,
                "tcp_rfc1337=0: a reset received in TIME_WAIT kills the TIME_WAIT socket early (TIME_WAIT assassination)"
                    .to_owned(),
            )
            .remedy(
                "Set net.ipv4.tcp_rfc1337=1 to make TIME_WAIT sockets ignore resets as RFC 1337 \
                 recommends, so old duplicates cannot reach a new connection on the same 4-tuple.",
            ),
        );
    }
    let overflow = s.tcpext.get("TCPTimeWaitOverflow").copied().unwrap_or(0);
    let max_tw = s.int("tcp_max_tw_buckets");
    if overflow > 0 {
        out.push(
            Finding::new(
                FindingKind::TimeWaitOverflow,
                Severity::Warning,
                format!(
                    "{overflow} connections skipped TIME_WAIT because tcp_max_tw_buckets ({}) was exceeded",
                    max_tw.map_or_else(|| "?".to_owned(), |m| m.to_string())
                ),
            )
            .evidence("TCPTimeWaitOverflow", overflow)
            .evidence("tcp_max_tw_buckets", max_tw)
            .evidence("time_wait", s.time_wait)
            .remedy(
                "Past the limit the kernel closes connections without TIME_WAIT, so delayed segments \
                 of an old connection can corrupt a new one on the same 4-tuple; raise \
                 net.ipv4.tcp_max_tw_buckets or find who closes so many connections first.",
            ),
        );
    }
    if let Some(max) = max_tw.and_then(|m| u64::try_from(m).ok()) {
        if max > 0 && s.time_wait * 10 >= max * 8 {
            let severity = if s.time_wait >= max {
                Severity::Critical
            } else {
                Severity::Warning
            };
            out.push(
                risk(
                    severity,
                    "tcp_max_tw_buckets",
                    max,
                    format!("{} sockets in TIME_WAIT, {}% of tcp_max_tw_buckets ({max})", s.time_wait, s.time_wait * 100 / max),
                )
                .evidence("time_wait", s.time_wait)
                .remedy(
                    "When the table is full, closing connections skip TIME_WAIT (TCPTimeWaitOverflow); \
                     raise the limit or reduce the rate at which this host closes connections first.",
                ),
            );
        }
    }
    if let Some(retries) = s.int("tcp_syn_retries").and_then(|r| u64::try_from(r).ok()) {
        let ms = model_timeout_ms(retries, TCP_TIMEOUT_INIT_MS);
        if ms >= 30_000 {
            out.push(
                risk(
                    Severity::Info,
                    "tcp_syn_retries",
                    retries,
                    format!("connect() to an address that drops SYNs fails only after {} (tcp_syn_retries={retries})", secs(ms)),
                )
                .evidence("connect_timeout_seconds", ms as f64 / 1000.0)
                .remedy(
                    "Clients without their own connect timeout wait this long on a dead upstream; \
                     set a timeout in the client, or lower net.ipv4.tcp_syn_retries \
                     (each step roughly halves the wait).",
                ),
            );
        }
    }
    if let Some(retries) = s
        .int("tcp_synack_retries")
        .and_then(|r| u64::try_from(r).ok())
    {
        let ms = model_timeout_ms(retries, TCP_TIMEOUT_INIT_MS);
        if ms >= 30_000 {
            out.push(
                risk(
                    Severity::Info,
                    "tcp_synack_retries",
                    retries,
                    format!("a half-open connection whose final ACK never comes holds its slot for {} (tcp_synack_retries={retries})", secs(ms)),
                )
                .evidence("half_open_seconds", ms as f64 / 1000.0)
                .remedy("Under SYN floods or lossy clients, lower net.ipv4.tcp_synack_retries to free the SYN queue sooner."),
            );
        }
    }
    if s.int("tcp_syncookies") == Some(0) {
        out.push(
            risk(Severity::Warning, "tcp_syncookies", 0, "tcp_syncookies=0: a SYN flood fills the SYN queue and legitimate connects are dropped".to_owned())
                .remedy("Set net.ipv4.tcp_syncookies=1: cookies are used only when the SYN queue overflows."),
        );
    }
    if let Some(backlog) = s.int("tcp_max_syn_backlog") {
        if backlog < 256 {
            out.push(
                risk(Severity::Warning, "tcp_max_syn_backlog", backlog, format!("tcp_max_syn_backlog={backlog} leaves little room for half-open connections"))
                    .remedy("Raise net.ipv4.tcp_max_syn_backlog (the kernel's default is at least 128 and scales with memory)."),
            );
        }
    }
    if let Some((low, high)) = s.port_range() {
        let ports = (high + 1).saturating_sub(low);
        if high < low {
            out.push(risk(
                Severity::Critical,
                "ip_local_port_range",
                format!("{low} {high}"),
                format!("ip_local_port_range {low}-{high} is empty"),
            ));
        } else if ports < 16_384 {
            out.push(
                risk(
                    Severity::Warning,
                    "ip_local_port_range",
                    format!("{low} {high}"),
                    format!(
                        "only {ports} ephemeral ports: closing first, this host can open at most {} new connections per second to one remote address and port before TIME_WAIT exhausts them",
                        ports / 60
                    ),
                )
                .evidence("ports", ports)
                .remedy("Widen net.ipv4.ip_local_port_range, reuse connections, or let the server close first."),
            );
        }
    }
    if let Some(fin) = s.int("tcp_fin_timeout") {
        if fin > 60 {
            out.push(
                risk(
                    Severity::Info,
                    "tcp_fin_timeout",
                    fin,
                    format!("orphaned connections wait {fin} s in FIN_WAIT2 for the peer's FIN"),
                )
                .remedy("Each waiting orphan holds memory and a 4-tuple; the default is 60 s."),
            );
        }
    }
    if let Some(orphan) = s
        .int("tcp_orphan_retries")
        .and_then(|r| u64::try_from(r).ok())
    {
        // 0 means 8 for a socket whose peer is alive (tcp_orphan_retries()).
        let retries = if orphan == 0 { 8 } else { orphan };
        let ms = model_timeout_ms(retries, TCP_RTO_MIN_MS);
        if ms >= 60_000 {
            out.push(
                risk(Severity::Info, "tcp_orphan_retries", orphan, format!("a closed socket keeps retransmitting its FIN to an unresponsive peer for up to {} (tcp_orphan_retries={orphan})", secs(ms)))
                    .evidence("fin_give_up_seconds", ms as f64 / 1000.0)
                    .remedy("Lower net.ipv4.tcp_orphan_retries on busy servers with many unresponsive clients (FIN_WAIT1 and LAST_ACK pile up)."),
            );
        }
    }
    if let (Some(time), Some(intvl), Some(probes)) = (
        s.int("tcp_keepalive_time"),
        s.int("tcp_keepalive_intvl"),
        s.int("tcp_keepalive_probes"),
    ) {
        let total = time + intvl * probes;
        if total > 3600 {
            out.push(
                risk(Severity::Info, "tcp_keepalive_time", time, format!("an idle keep-alive connection to a dead peer is noticed only after {total} s ({time} + {intvl} x {probes})"))
                    .evidence("dead_peer_seconds", total)
                    .remedy("Applications set SO_KEEPALIVE with TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT per socket, or lower the net.ipv4.tcp_keepalive_* defaults."),
            );
        }
    }
    if let Some(retries) = s.int("tcp_retries2").and_then(|r| u64::try_from(r).ok()) {
        let ms = model_timeout_ms(retries, TCP_RTO_MIN_MS);
        if ms >= 300_000 {
            out.push(
                risk(Severity::Info, "tcp_retries2", retries, format!("a connection with unacknowledged data to a dead peer is aborted only after about {} (tcp_retries2={retries})", secs(ms)))
                    .evidence("dead_peer_seconds", ms as f64 / 1000.0)
                    .remedy("Set TCP_USER_TIMEOUT on sockets that must fail fast, or lower net.ipv4.tcp_retries2 (8 gives about 100 s)."),
            );
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> NetnsState {
        let values = [
            ("tcp_tw_reuse", "2"),
            ("tcp_tw_reuse_delay", "1000"),
            ("tcp_timestamps", "1"),
            ("tcp_max_tw_buckets", "131072"),
            ("tcp_rfc1337", "0"),
            ("tcp_fin_timeout", "60"),
            ("tcp_orphan_retries", "0"),
            ("tcp_syn_retries", "6"),
            ("tcp_synack_retries", "5"),
            ("tcp_syncookies", "1"),
            ("tcp_max_syn_backlog", "2048"),
            ("ip_local_port_range", "32768\t60999"),
            ("tcp_keepalive_time", "7200"),
            ("tcp_keepalive_intvl", "75"),
            ("tcp_keepalive_probes", "9"),
            ("tcp_retries2", "15"),
        ];
        NetnsState {
            sysctls: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn settings(findings: &[Finding]) -> Vec<String> {
        findings
            .iter()
            .map(|f| {
                f.evidence
                    .get("setting")
                    .and_then(|v| v.as_str())
                    .unwrap_or(f.kind.name())
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn kernel_timeouts_match_the_documented_figures() {
        // tcp_syn_retries: 6 -> 127 s, 5 -> 63 s, 1 -> 3 s.
        assert_eq!(model_timeout_ms(6, 1000), 127_000);
        assert_eq!(model_timeout_ms(5, 1000), 63_000);
        assert_eq!(model_timeout_ms(1, 1000), 3_000);
        // tcp_retries2=15 -> 924.6 s; 8 -> 102.2 s.
        assert_eq!(model_timeout_ms(15, 200), 924_600);
        assert_eq!(model_timeout_ms(8, 200), 102_200);
    }

    #[test]
    fn defaults_raise_only_information() {
        let f = evaluate(&defaults());
        assert!(f.iter().all(|f| f.severity == Severity::Info), "{f:#?}");
        assert_eq!(
            settings(&f),
            [
                "net.ipv4.tcp_rfc1337",
                "net.ipv4.tcp_syn_retries",
                "net.ipv4.tcp_synack_retries",
                "net.ipv4.tcp_orphan_retries",
                "net.ipv4.tcp_keepalive_time",
                "net.ipv4.tcp_retries2",
            ]
        );
        let keepalive = f.iter().find(|f| f.summary.contains("keep-alive")).unwrap();
        assert!(
            keepalive.summary.contains("7875 s (7200 + 75 x 9)"),
            "{}",
            keepalive.summary
        );
        assert!(f.iter().all(|f| !f.remedy.is_empty()));
    }

    #[test]
    fn tw_reuse_without_timestamps_is_a_warning() {
        let mut s = defaults();
        s.sysctls.insert("tcp_tw_reuse".into(), "1".into());
        s.sysctls.insert("tcp_timestamps".into(), "0".into());
        let f = evaluate(&s);
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0].summary.contains("has no effect"), "{}", f[0].summary);
        assert!(f
            .iter()
            .any(|f| f.summary.starts_with("tcp_tw_reuse=1: every outgoing")));
    }

    #[test]
    fn time_wait_pressure_and_overflow() {
        let mut s = defaults();
        s.sysctls.insert("tcp_max_tw_buckets".into(), "1000".into());
        s.time_wait = 850;
        s.tcpext.insert("TCPTimeWaitOverflow".into(), 12);
        let f = evaluate(&s);
        let overflow = f
            .iter()
            .find(|f| f.kind == FindingKind::TimeWaitOverflow)
            .expect("overflow finding");
        assert_eq!(overflow.evidence["TCPTimeWaitOverflow"], 12);
        let pressure = f
            .iter()
            .find(|f| {
                f.evidence
                    .get("setting")
                    .is_some_and(|v| v == "net.ipv4.tcp_max_tw_buckets")
            })
            .unwrap();
        assert_eq!(pressure.severity, Severity::Warning);
        assert!(pressure.summary.contains("85%"), "{}", pressure.summary);
        s.time_wait = 1000;
        assert!(evaluate(&s)
            .iter()
            .any(|f| f.severity == Severity::Critical));
    }

    #[test]
    fn narrow_port_range_gives_the_sustainable_rate() {
        let mut s = defaults();
        s.sysctls
            .insert("ip_local_port_range".into(), "40000 40999".into());
        let f = evaluate(&s);
        let ports = f
            .iter()
            .find(|f| f.summary.contains("ephemeral ports"))
            .expect("port finding");
        assert!(
            ports.summary.contains("only 1000 ephemeral ports")
                && ports
                    .summary
                    .contains("at most 16 new connections per second"),
            "{}",
            ports.summary
        );
        s.sysctls
            .insert("ip_local_port_range".into(), "50000 40000".into());
        assert!(evaluate(&s)
            .iter()
            .any(|f| f.severity == Severity::Critical));
    }

    #[test]
    fn syncookies_and_backlog() {
        let mut s = defaults();
        s.sysctls.insert("tcp_syncookies".into(), "0".into());
        s.sysctls.insert("tcp_max_syn_backlog".into(), "64".into());
        let f = settings(&evaluate(&s));
        assert!(f.contains(&"net.ipv4.tcp_syncookies".to_owned()));
        assert!(f.contains(&"net.ipv4.tcp_max_syn_backlog".to_owned()));
    }

    #[test]
    fn missing_or_garbled_values_raise_nothing() {
        let mut s = NetnsState::default();
        assert!(evaluate(&s).is_empty());
        s.sysctls.insert("tcp_syn_retries".into(), "many".into());
        s.sysctls.insert("ip_local_port_range".into(), "1".into());
        assert!(evaluate(&s).is_empty());
    }
}
