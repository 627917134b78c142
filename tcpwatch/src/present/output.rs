//! Rendering events for people (aligned columns, colour on terminals) and
//! for programs (one JSON object per line).
use crate::tcp::NetnsId;
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Write},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    findings::detect::{Report, Status},
    findings::Severity,
    host::cgroup::{Container, Units, Workload},
    host::clock::WallClock,
    kernel::event::{EventKind, KernelReasons, TcpEvent, TcpState},
    model::{state_index, Closer, EndReason, Finished, Opener, Retransmits, LIFECYCLE_ORDER},
};

use crate::tcp::endpoint;

fn millis(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// One JSON line. Field names are a stable interface: scripts read them.
#[derive(Serialize)]
struct JsonEvent<'a> {
    time: String,
    ts_ns: u64,
    kind: &'static str,
    pid: u32,
    comm: &'a str,
    /// The owner's systemd unit (or slice); null when unknown.
    unit: Option<&'a str>,
    /// The owner's container (`runtime`, 12-digit `id`); null when none.
    container: Option<&'a Container>,
    owner: &'static str,
    netns: NetnsId,
    family: u8,
    saddr: String,
    sport: u16,
    daddr: String,
    dport: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_state: Option<&'static str>,
    /// Present on state events; null when the previous transition was not seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    ms: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// A received reset: seconds since the peer was last heard, where the
    /// kernel could tell (the connection had TCP timestamps).
    #[serde(skip_serializing_if = "Option::is_none")]
    silence_s: Option<u16>,
    skaddr: String,
}

/// A finished connection as one JSON line.
#[derive(Serialize)]
struct JsonLifecycle<'a> {
    time: String,
    ts_ns: u64,
    kind: &'static str,
    pid: u32,
    comm: &'a str,
    unit: Option<&'a str>,
    container: Option<&'a Container>,
    netns: NetnsId,
    family: u8,
    saddr: String,
    sport: u16,
    daddr: String,
    dport: u16,
    opener: Opener,
    closer: Option<Closer>,
    end: EndReason,
    time_wait: bool,
    /// Null when the connection was born before tcpwatch saw it.
    lifetime_ms: Option<f64>,
    /// Milliseconds in each state the connection passed through.
    state_ms: BTreeMap<&'static str, f64>,
    retransmits: Retransmits,
    resets_sent: u8,
    resets_received: u8,
    /// Segments the kernel dropped for it (6.12+; see `tcpwatch_drops_total`)
    /// and the last one's reason; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    drops: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_drop_reason: Option<String>,
    /// Present (true) when events were lost during its life.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    uncertain: bool,
}

/// How events are written.
pub enum Style {
    Json,
    Human { color: bool },
}

/// Writes events in one [`Style`].
pub struct Renderer {
    style: Style,
    clock: WallClock,
    reasons: KernelReasons,
    /// tcpwatch's own network namespace: findings elsewhere name theirs.
    own_netns: NetnsId,
    /// What owners' cgroups are, for finished connections.
    units: Units,
}

/// Width of the EVENT column: `ESTABLISHED -> CLOSE_WAIT` and most resets fit.
const EVENT_WIDTH: usize = 26;

const HEADER: [(&str, usize); 6] = [
    ("TIME", 12),
    ("PID", 7),
    ("COMM", 15),
    ("LOCAL", 23),
    ("REMOTE", 23),
    ("EVENT", EVENT_WIDTH),
];

impl Renderer {
    pub fn new(style: Style, clock: WallClock, reasons: KernelReasons) -> Self {
        Self {
            style,
            clock,
            reasons,
            own_netns: NetnsId(0),
            units: Units::default(),
        }
    }

    /// Finished connections name their owner's unit or container from `units`.
    pub fn with_units(mut self, units: Units) -> Self {
        self.units = units;
        self
    }

    /// Findings in other namespaces than `inode` name their namespace.
    pub fn with_own_netns(mut self, inode: NetnsId) -> Self {
        self.own_netns = inode;
        self
    }

    /// Who and where a finding is about, from its evidence: `comm (pid N),
    /// local -> remote, netns I` (the namespace only when not tcpwatch's).
    fn finding_subject(&self, r: &Report) -> String {
        let e = &r.finding.rendered_evidence();
        let text = |k: &str| e.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let number = |k: &str| e.get(k).and_then(|v| v.as_u64());
        let mut parts = Vec::new();
        match (text("comm"), number("pid")) {
            (Some(comm), Some(pid)) => parts.push(format!("{comm} (pid {pid})")),
            (None, Some(pid)) => parts.push(format!("pid {pid}")),
            _ => {}
        }
        let side = |addr: Option<String>, port: Option<u64>| match (addr, port) {
            (Some(a), Some(p)) => a.parse::<IpAddr>().map(|ip| endpoint(ip, p as u16)).ok(),
            (None, Some(p)) => Some(format!(":{p}")),
            _ => None,
        };
        match (
            side(text("laddr"), number("lport")),
            side(text("raddr"), number("rport")),
        ) {
            (Some(l), Some(r)) => parts.push(format!("{l} -> {r}")),
            (Some(l), None) => parts.push(l),
            (None, Some(r)) => parts.push(format!("-> {r}")),
            (None, None) => {}
        }
        if r.netns != NetnsId(0) && r.netns != self.own_netns {
            parts.push(format!("netns {}", r.netns));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" [{}]", parts.join(", "))
        }
    }

    /// The column header, for human output.
    pub fn header(&self) -> Option<String> {
        match self.style {
            Style::Json => None,
            Style::Human { .. } => {
                let mut line = String::new();
                for (name, width) in HEADER {
                    let _ = write!(line, "{name:<width$} ");
                }
                line.push_str(&format!("{:>8}  UNIT", "MS"));
                Some(line)
            }
        }
    }

    pub fn write(&self, out: &mut impl Write, ev: &TcpEvent) -> io::Result<()> {
        match self.style {
            Style::Json => {
                serde_json::to_writer(&mut *out, &self.json(ev))?;
                out.write_all(b"\n")
            }
            Style::Human { color } => writeln!(out, "{}", self.human(ev, color)),
        }
    }

    /// A finding raised, updated or resolved.
    pub fn write_finding(&self, out: &mut impl Write, r: &Report) -> io::Result<()> {
        let f = &r.finding;
        match self.style {
            Style::Json => {
                let mut line = serde_json::Map::new();
                line.insert("time".into(), self.clock.rfc3339(r.ts_ns).into());
                line.insert("ts_ns".into(), r.ts_ns.into());
                line.insert("kind".into(), "finding".into());
                line.insert("finding".into(), f.kind.name().into());
                line.insert("status".into(), r.status.name().into());
                line.insert("severity".into(), f.severity.name().into());
                line.insert("netns".into(), r.netns.0.into());
                line.insert("summary".into(), f.summary.clone().into());
                // Evidence fields (pid, comm, laddr, lport, raddr, rport,
                // count, age_seconds, ...) at the top level, as documented.
                for (name, value) in f.rendered_evidence() {
                    line.entry(name).or_insert(value);
                }
                line.insert("remedy".into(), f.remedy.clone().into());
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")
            }
            Style::Human { color } => {
                let head = format!(
                    "{} {} {}",
                    r.status.name().to_uppercase(),
                    f.severity.name(),
                    f.kind
                );
                let head = match (color, f.severity, r.status) {
                    (true, _, Status::Resolved) => format!("\x1b[32m{head}\x1b[0m"),
                    (true, Severity::Critical, _) => format!("\x1b[31;1m{head}\x1b[0m"),
                    (true, Severity::Warning, _) => format!("\x1b[33;1m{head}\x1b[0m"),
                    (true, Severity::Info, _) => format!("\x1b[36m{head}\x1b[0m"),
                    _ => head,
                };
                writeln!(
                    out,
                    "{:<12} {head}{}: {}",
                    self.clock.time_of_day(r.ts_ns),
                    self.finding_subject(r),
                    f.summary
                )?;
                if r.status != Status::Resolved {
                    writeln!(out, "{:<12} -> {}", "", f.remedy)?;
                }
                Ok(())
            }
        }
    }

    /// One line for a finished connection (`--lifecycle`).
    pub fn write_lifecycle(&self, out: &mut impl Write, f: &Finished) -> io::Result<()> {
        let c = &f.connection;
        let state_ms: BTreeMap<&'static str, f64> = TcpState::ALL
            .iter()
            .zip(c.time_in_state)
            .filter(|(_, secs)| *secs > 0.0)
            .map(|(s, secs)| (s.name(), f64::from(secs) * 1e3))
            .collect();
        let workload = self.units.get(c.cgroup);
        match self.style {
            Style::Json => {
                let line = JsonLifecycle {
                    time: self.clock.rfc3339(f.end_ns),
                    ts_ns: f.end_ns,
                    kind: "lifecycle",
                    pid: c.pid,
                    comm: &c.comm,
                    unit: workload.as_deref().and_then(Workload::unit),
                    container: workload.as_deref().and_then(Workload::container),
                    netns: c.tuple.netns,
                    family: if c.tuple.local.is_ipv4() { 4 } else { 6 },
                    saddr: c.tuple.local.to_string(),
                    sport: c.tuple.local_port,
                    daddr: c.tuple.remote.to_string(),
                    dport: c.tuple.remote_port,
                    opener: c.opener,
                    closer: c.closer,
                    end: f.end,
                    time_wait: f.time_wait,
                    lifetime_ms: f.lifetime_ns().map(millis),
                    state_ms,
                    retransmits: c.retransmits,
                    resets_sent: c.resets_sent,
                    resets_received: c.resets_received,
                    drops: (c.drops > 0).then_some(c.drops),
                    last_drop_reason: (c.drops > 0)
                        .then(|| self.reasons.drop_name(c.last_drop_reason)),
                    uncertain: c.uncertain,
                };
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")
            }
            Style::Human { color } => {
                let what = format!("{:<EVENT_WIDTH$}", format!("DONE {}", f.end.name()));
                let what = if color {
                    format!("\x1b[36m{what}\x1b[0m")
                } else {
                    what
                };
                let life = f
                    .lifetime_ns()
                    .map_or_else(|| "-".to_owned(), |ns| format!("{:.3}", millis(ns)));
                let mut details = format!(
                    "opener={} closer={}",
                    c.opener.name(),
                    c.closer.map_or("-", Closer::name)
                );
                if f.time_wait {
                    details.push_str(" time_wait");
                }
                if let Some(w) = &workload {
                    let _ = write!(details, " unit={}", w.label());
                }
                for state in LIFECYCLE_ORDER {
                    let secs = c.time_in_state[state_index(state)];
                    if secs > 0.0 {
                        let _ = write!(details, " {state}={:.3}", f64::from(secs) * 1e3);
                    }
                }
                let r = c.retransmits;
                if r.syn + r.synack + r.data + r.fin > 0 {
                    let _ = write!(details, " rtx(syn={},data={},fin={})", r.syn, r.data, r.fin);
                }
                if c.drops > 0 {
                    let _ = write!(
                        details,
                        " drops={}({})",
                        c.drops,
                        self.reasons.drop_name(c.last_drop_reason)
                    );
                }
                writeln!(
                    out,
                    "{:<12} {:<7} {:<15} {:<23} {:<23} {what} {life:>8}  {details}",
                    self.clock.time_of_day(f.end_ns),
                    if c.pid == 0 {
                        "-".to_owned()
                    } else {
                        c.pid.to_string()
                    },
                    if c.comm.is_empty() { "-" } else { &c.comm },
                    endpoint(c.tuple.local, c.tuple.local_port),
                    endpoint(c.tuple.remote, c.tuple.remote_port),
                )
            }
        }
    }

    fn json<'a>(&self, ev: &'a TcpEvent) -> JsonEvent<'a> {
        let is_state = ev.kind == EventKind::State;
        JsonEvent {
            time: self.clock.rfc3339(ev.ts_ns),
            ts_ns: ev.ts_ns,
            kind: ev.kind.name(),
            pid: ev.pid,
            comm: &ev.comm,
            unit: ev.workload.as_deref().and_then(Workload::unit),
            container: ev.workload.as_deref().and_then(Workload::container),
            owner: ev.owner.name(),
            netns: ev.netns,
            family: ev.family(),
            saddr: ev.saddr.to_string(),
            sport: ev.sport,
            daddr: ev.daddr.to_string(),
            dport: ev.dport,
            old_state: if is_state {
                ev.old_state.map(TcpState::name)
            } else {
                None
            },
            new_state: if is_state {
                ev.new_state.map(TcpState::name)
            } else {
                None
            },
            ms: is_state.then(|| ev.old_state_ns.map(millis)),
            state: if is_state {
                None
            } else {
                ev.new_state.map(TcpState::name)
            },
            reason: match ev.kind {
                EventKind::ResetSent => Some(self.reasons.reset_name(ev.reason)),
                EventKind::Drop => Some(self.reasons.drop_name(ev.reason)),
                _ => None,
            },
            silence_s: ev.silence_s,
            skaddr: format!("{:#x}", ev.skaddr),
        }
    }

    fn human(&self, ev: &TcpEvent, color: bool) -> String {
        let in_state = ev.new_state.map(|s| format!(" in {s}")).unwrap_or_default();
        let (what, code, ms) = match ev.kind {
            EventKind::State => {
                let old = ev.old_state.map_or("?", TcpState::name);
                let new = ev.new_state.map_or("?", TcpState::name);
                let code = match ev.new_state {
                    Some(TcpState::Established) => "32",
                    Some(TcpState::Close) => "2",
                    Some(TcpState::CloseWait) => "33",
                    _ => "",
                };
                let ms = ev
                    .old_state_ns
                    .map_or_else(|| "-".to_owned(), |ns| format!("{:.3}", millis(ns)));
                (format!("{old:>11} -> {new}"), code, ms)
            }
            EventKind::Retransmit => (format!("RETRANSMIT{in_state}"), "33;1", String::new()),
            EventKind::SynackRetransmit => ("SYNACK RETRANSMIT".to_owned(), "33;1", String::new()),
            EventKind::ResetSent => (
                format!(
                    "RESET SENT{in_state} ({})",
                    self.reasons.reset_name(ev.reason)
                ),
                "31;1",
                String::new(),
            ),
            EventKind::ResetReceived => {
                (format!("RESET RECEIVED{in_state}"), "31;1", String::new())
            }
            EventKind::Owner => ("OWNER".to_owned(), "36", String::new()),
            EventKind::Drop => (
                format!("DROP{in_state} ({})", self.reasons.drop_name(ev.reason)),
                "35",
                String::new(),
            ),
        };
        // Pad before colouring: escape sequences have no width on screen.
        let what = format!("{what:<EVENT_WIDTH$}");
        let what = if color && !code.is_empty() {
            format!("\x1b[{code}m{what}\x1b[0m")
        } else {
            what
        };
        let pid = if ev.pid == 0 {
            "-".to_owned()
        } else {
            ev.pid.to_string()
        };
        let comm = if ev.comm.is_empty() { "-" } else { &ev.comm };
        let unit = ev
            .workload
            .as_deref()
            .map(Workload::label)
            .unwrap_or_default();
        format!(
            "{:<12} {:<7} {:<15} {:<23} {:<23} {what} {ms:>8}  {unit}",
            self.clock.time_of_day(ev.ts_ns),
            pid,
            comm,
            endpoint(ev.saddr, ev.sport),
            endpoint(ev.daddr, ev.dport),
        )
        .trim_end()
        .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::OwnerSource;

    fn ev(kind: EventKind) -> TcpEvent {
        TcpEvent {
            ts_ns: 1_795_248_241_123_456_789,
            skaddr: 0xffff_8880_1234_5678,
            kind,
            pid: 4242,
            comm: "curl".into(),
            owner: OwnerSource::Connect,
            netns: NetnsId(4026531840),
            saddr: "::1".parse().unwrap(),
            sport: 40000,
            daddr: "::1".parse().unwrap(),
            dport: 8080,
            old_state: Some(TcpState::SynSent),
            new_state: Some(TcpState::Established),
            old_state_ns: Some(1_250_000),
            reason: 12,
            ..TcpEvent::blank()
        }
    }

    fn renderer(style: Style) -> Renderer {
        Renderer::new(
            style,
            WallClock::with_offset(0),
            KernelReasons::new([(12, "TCP_ABORT_ON_LINGER".to_owned())].into()),
        )
    }

    fn json_line(e: &TcpEvent) -> serde_json::Value {
        let mut buf = Vec::new();
        renderer(Style::Json).write(&mut buf, e).unwrap();
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&buf).unwrap()
    }

    #[test]
    fn json_state_event_has_the_documented_fields() {
        let v = json_line(&ev(EventKind::State));
        assert_eq!(v["time"], "2026-11-21T08:04:01.123456Z");
        assert_eq!(v["kind"], "state");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["comm"], "curl");
        assert_eq!(v["netns"], 4026531840u64);
        assert_eq!(v["family"], 6);
        assert_eq!(v["saddr"], "::1");
        assert_eq!(v["sport"], 40000);
        assert_eq!(v["dport"], 8080);
        assert_eq!(v["old_state"], "SYN_SENT");
        assert_eq!(v["new_state"], "ESTABLISHED");
        assert_eq!(v["ms"], 1.25);
        assert!(v.get("state").is_none());
        assert!(v.get("reason").is_none());
        // Unknown unit and container: present, null.
        assert!(v["unit"].is_null() && v.as_object().unwrap().contains_key("unit"));
        assert!(v["container"].is_null() && v.as_object().unwrap().contains_key("container"));
    }

    #[test]
    fn units_and_containers_in_json_and_columns() {
        use std::sync::Arc;
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let mut e = ev(EventKind::State);
        e.workload = crate::host::cgroup::classify("/system.slice/nginx.service").map(Arc::new);
        let v = json_line(&e);
        assert_eq!(v["unit"], "nginx.service");
        assert!(v["container"].is_null());
        let line = renderer(Style::Human { color: false }).human(&e, false);
        assert!(line.ends_with("1.250  nginx.service"), "{line}");

        e.workload = crate::host::cgroup::classify(&format!("/system.slice/docker-{id}.scope"))
            .map(Arc::new);
        let v = json_line(&e);
        assert!(v["unit"].is_null());
        assert_eq!(v["container"]["runtime"], "docker");
        assert_eq!(v["container"]["id"], "0123456789ab");
        let line = renderer(Style::Human { color: false }).human(&e, false);
        assert!(line.ends_with("  docker:0123456789ab"), "{line}");
    }

    #[test]
    fn json_unknown_duration_is_null() {
        let mut e = ev(EventKind::State);
        e.old_state_ns = None;
        let v = json_line(&e);
        assert!(v["ms"].is_null());
        assert!(v.as_object().unwrap().contains_key("ms"));
    }

    #[test]
    fn json_retransmit_and_reset_fields() {
        let mut e = ev(EventKind::Retransmit);
        e.old_state = Some(TcpState::SynSent);
        e.new_state = Some(TcpState::SynSent);
        let v = json_line(&e);
        assert_eq!(v["kind"], "retransmit");
        assert_eq!(v["state"], "SYN_SENT");
        assert!(v.get("old_state").is_none() && v.get("ms").is_none());
        let v = json_line(&ev(EventKind::ResetSent));
        assert_eq!(v["kind"], "reset_sent");
        assert_eq!(v["reason"], "TCP_ABORT_ON_LINGER");
        let v = json_line(&ev(EventKind::ResetReceived));
        assert_eq!(v["kind"], "reset_received");
        assert!(v.get("reason").is_none());
    }

    #[test]
    fn human_lines_align_and_colour_only_when_asked() {
        let plain = renderer(Style::Human { color: false });
        let header = plain.header().unwrap();
        let line = plain.human(&ev(EventKind::State), false);
        assert!(
            line.starts_with("08:04:01.123 4242    curl            [::1]:40000"),
            "{line}"
        );
        assert!(line.contains("SYN_SENT -> ESTABLISHED"), "{line}");
        assert!(line.ends_with("1.250"), "{line}");
        assert_eq!(
            header.len(),
            line.len() + "  UNIT".len(),
            "MS column aligned:\n{header}\n{line}"
        );
        assert_eq!(header.find("LOCAL"), line.find("[::1]:40000"));
        assert!(!line.contains('\x1b'));
        let coloured = plain.human(&ev(EventKind::State), true);
        assert!(coloured.contains("\x1b[32m"));
        let reset = plain.human(&ev(EventKind::ResetSent), false);
        assert!(
            reset.contains("RESET SENT in ESTABLISHED (TCP_ABORT_ON_LINGER)"),
            "{reset}"
        );
    }

    #[test]
    fn terminal_finding_lines_name_the_process_endpoint_and_foreign_namespace() {
        use crate::{
            findings::detect::{Report, Status},
            findings::{Finding, Severity},
        };
        let report = |netns| Report {
            status: Status::Raised,
            ts_ns: 0,
            netns,
            finding: Finding::new(
                crate::findings::FindingKind::ConnectRefused,
                Severity::Warning,
                "refused 3 times",
            )
            .evidence("pid", 12)
            .evidence("comm", "curl")
            .evidence("laddr", "10.0.0.1")
            .evidence("lport", 40000)
            .evidence("raddr", "::1")
            .evidence("rport", 9)
            .remedy("start the server"),
        };
        let r = renderer(Style::Human { color: false }).with_own_netns(NetnsId(7));
        let mut buf = Vec::new();
        r.write_finding(&mut buf, &report(NetnsId(7))).unwrap();
        let own = String::from_utf8(buf).unwrap();
        assert!(
            own.contains("RAISED warning connect_refused [curl (pid 12), 10.0.0.1:40000 -> [::1]:9]: refused 3 times"),
            "{own}"
        );
        let mut buf = Vec::new();
        r.write_finding(&mut buf, &report(NetnsId(4026532180)))
            .unwrap();
        let foreign = String::from_utf8(buf).unwrap();
        assert!(
            foreign.contains("[::1]:9, netns 4026532180]: refused"),
            "{foreign}"
        );
    }
}
