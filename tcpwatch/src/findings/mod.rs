//! Findings: what tcpwatch tells an operator, each with a stable kind, a
//! severity, one sentence, the evidence, and what the kernel's behaviour
//! implies should be done.

pub mod audit;
pub mod detect;
use crate::tcp::NetnsId;
use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Stable finding kinds: their names are what JSON, metrics labels and
/// `--finding` filters use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FindingKind {
    TimeWaitBuildup,
    CloseWaitLeak,
    TwReuse,
    TimeWaitSynReuse,
    ConnectTimeout,
    ConnectRefused,
    SynackRetransmit,
    FinRetransmit,
    FinWait2Stall,
    PeerUnresponsive,
    TwReuseReset,
    PortExhaustionRisk,
    ZeroWindowStall,
    AcceptQueueOverflow,
    ConnectFailed,
    PeerRestarted,
    IdleWithoutKeepalive,
    TimeWaitAssassinated,
    OrphanOverflow,
    SynFlood,
    SysctlRisk,
    TimeWaitOverflow,
}

impl FindingKind {
    /// Every kind tcpwatch reports.
    pub const ALL: [FindingKind; 22] = [
        FindingKind::TimeWaitBuildup,
        FindingKind::CloseWaitLeak,
        FindingKind::TwReuse,
        FindingKind::TimeWaitSynReuse,
        FindingKind::ConnectTimeout,
        FindingKind::ConnectRefused,
        FindingKind::SynackRetransmit,
        FindingKind::FinRetransmit,
        FindingKind::FinWait2Stall,
        FindingKind::PeerUnresponsive,
        FindingKind::TwReuseReset,
        FindingKind::PortExhaustionRisk,
        FindingKind::ZeroWindowStall,
        FindingKind::AcceptQueueOverflow,
        FindingKind::ConnectFailed,
        FindingKind::PeerRestarted,
        FindingKind::IdleWithoutKeepalive,
        FindingKind::TimeWaitAssassinated,
        FindingKind::OrphanOverflow,
        FindingKind::SynFlood,
        FindingKind::SysctlRisk,
        FindingKind::TimeWaitOverflow,
    ];

    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::TimeWaitBuildup => "time_wait_buildup",
            FindingKind::CloseWaitLeak => "close_wait_leak",
            FindingKind::TwReuse => "tw_reuse",
            FindingKind::TimeWaitSynReuse => "time_wait_syn_reuse",
            FindingKind::ConnectTimeout => "connect_timeout",
            FindingKind::ConnectRefused => "connect_refused",
            FindingKind::SynackRetransmit => "synack_retransmit",
            FindingKind::FinRetransmit => "fin_retransmit",
            FindingKind::FinWait2Stall => "fin_wait2_stall",
            FindingKind::PeerUnresponsive => "peer_unresponsive",
            FindingKind::TwReuseReset => "tw_reuse_reset",
            FindingKind::PortExhaustionRisk => "port_exhaustion_risk",
            FindingKind::ZeroWindowStall => "zero_window_stall",
            FindingKind::AcceptQueueOverflow => "accept_queue_overflow",
            FindingKind::ConnectFailed => "connect_failed",
            FindingKind::PeerRestarted => "peer_restarted",
            FindingKind::IdleWithoutKeepalive => "idle_without_keepalive",
            FindingKind::TimeWaitAssassinated => "time_wait_assassinated",
            FindingKind::OrphanOverflow => "orphan_overflow",
            FindingKind::SynFlood => "syn_flood",
            FindingKind::SysctlRisk => "sysctl_risk",
            FindingKind::TimeWaitOverflow => "time_wait_overflow",
        }
    }

    /// The kind of a stable name.
    pub fn from_name(name: &str) -> Option<FindingKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for FindingKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What one finding is about. Findings of one kind about one subject are
/// one finding: raised once, updated while it lasts, resolved when it ends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A namespace as a whole (a SYN flood no one listener stands out in).
    Namespace { netns: NetnsId },
    /// A sysctl of a namespace (`net.ipv4.` and its name), or its TIME_WAIT
    /// table overflowing (`None`).
    Setting {
        netns: NetnsId,
        name: Option<String>,
    },
    /// Orphaned sockets near the host's limit, or aborted because of it.
    Orphans { netns: NetnsId, aborted: bool },
    /// A local port of a namespace, whoever uses it.
    LocalPort { netns: NetnsId, port: u16 },
    /// A process's local port: its listener's SYN-ACK retransmits, its
    /// CLOSE_WAIT sockets.
    ProcessPort { netns: NetnsId, pid: u32, port: u16 },
    /// A listening address (its accept queue, a SYN flood towards it).
    Listener {
        netns: NetnsId,
        addr: IpAddr,
        port: u16,
    },
    /// A peer, whoever talks to it.
    Peer {
        netns: NetnsId,
        addr: IpAddr,
        port: u16,
    },
    /// A process and one peer it talks to.
    ProcessPeer {
        netns: NetnsId,
        pid: u32,
        addr: IpAddr,
        port: u16,
    },
    /// TIME_WAIT sockets of one local endpoint (the server side closed
    /// first: `local`) or towards one remote endpoint.
    TimeWaitGroup {
        netns: NetnsId,
        local: bool,
        addr: IpAddr,
        port: u16,
    },
    /// The local ports in use from one address to one destination.
    Route {
        netns: NetnsId,
        from: IpAddr,
        addr: IpAddr,
        port: u16,
    },
    /// A process's idle connections on one of its local ports (`local`) or
    /// towards one remote port.
    IdleGroup {
        netns: NetnsId,
        pid: u32,
        local: bool,
        port: u16,
    },
    /// One connection.
    Connection {
        netns: NetnsId,
        local: IpAddr,
        local_port: u16,
        remote: IpAddr,
        remote_port: u16,
    },
}

impl Subject {
    /// The network namespace the subject is in.
    pub fn netns(&self) -> NetnsId {
        match *self {
            Subject::Namespace { netns }
            | Subject::Setting { netns, .. }
            | Subject::Orphans { netns, .. }
            | Subject::LocalPort { netns, .. }
            | Subject::ProcessPort { netns, .. }
            | Subject::Listener { netns, .. }
            | Subject::Peer { netns, .. }
            | Subject::ProcessPeer { netns, .. }
            | Subject::TimeWaitGroup { netns, .. }
            | Subject::Route { netns, .. }
            | Subject::IdleGroup { netns, .. }
            | Subject::Connection { netns, .. } => netns,
        }
    }
}

/// Who and where a finding is about: the process and endpoints it names.
/// Typed, for filters and for naming the workload; written into the
/// evidence only when the finding is rendered ([`Finding::rendered_evidence`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Who {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub laddr: Option<IpAddr>,
    pub lport: Option<u16>,
    pub raddr: Option<IpAddr>,
    pub rport: Option<u16>,
    /// Processes holding the socket(s) at the last look (`ss -p`); shown
    /// when more than one does.
    pub holders: Option<u16>,
    /// The process's cgroup v2 id (0 when unknown), which names its unit
    /// or container; never rendered itself.
    pub cgroup: u64,
}

impl Who {
    /// `f`, about this process and these endpoints.
    pub fn apply(self, mut f: Finding) -> Finding {
        f.who = self;
        f
    }

    /// The evidence fields it renders as, by name.
    fn evidence(&self) -> Vec<(&'static str, serde_json::Value)> {
        let mut out = Vec::new();
        if let Some(n) = self.holders.filter(|n| *n > 1) {
            out.push(("holders", n.into()));
        }
        if let Some(pid) = self.pid {
            out.push(("pid", pid.into()));
        }
        if let Some(comm) = &self.comm {
            out.push(("comm", comm.as_str().into()));
        }
        if let Some(a) = self.laddr {
            out.push(("laddr", a.to_string().into()));
        }
        if let Some(p) = self.lport {
            out.push(("lport", p.into()));
        }
        if let Some(a) = self.raddr {
            out.push(("raddr", a.to_string().into()));
        }
        if let Some(p) = self.rport {
            out.push(("rport", p.into()));
        }
        out
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    /// One sentence.
    pub summary: String,
    /// Who and where it is about.
    pub who: Who,
    /// The other facts it rests on, by name.
    pub evidence: BTreeMap<String, serde_json::Value>,
    /// What to do, and why, in terms of what the kernel does.
    pub remedy: String,
    /// The unit or container of the process it names, when known (also in
    /// the evidence as `unit` and `container`).
    pub workload: Option<std::sync::Arc<crate::host::cgroup::Workload>>,
}

impl Serialize for Finding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Finding", 5)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("severity", &self.severity)?;
        st.serialize_field("summary", &self.summary)?;
        st.serialize_field("evidence", &self.rendered_evidence())?;
        st.serialize_field("remedy", &self.remedy)?;
        st.end()
    }
}

impl Finding {
    pub fn new(kind: FindingKind, severity: Severity, summary: impl Into<String>) -> Self {
        Finding {
            kind,
            severity,
            summary: summary.into(),
            who: Who::default(),
            evidence: BTreeMap::new(),
            remedy: String::new(),
            workload: None,
        }
    }

    pub fn evidence(mut self, name: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.evidence.insert(name.to_owned(), value);
        self
    }

    /// The evidence as shown to the operator: who and where, then the
    /// other facts.
    pub fn rendered_evidence(&self) -> BTreeMap<String, serde_json::Value> {
        let mut out = self.evidence.clone();
        for (name, value) in self.who.evidence() {
            out.entry(name.to_owned()).or_insert(value);
        }
        out
    }

    pub fn remedy(mut self, remedy: impl Into<String>) -> Self {
        self.remedy = remedy.into();
        self
    }

    /// Names the unit or container of the process the finding names: the
    /// `unit` and `container` evidence, and the summary says it first
    /// (`nginx.service: nginx (pid 123) holds ...`).
    pub fn in_workload(
        mut self,
        workload: Option<std::sync::Arc<crate::host::cgroup::Workload>>,
    ) -> Self {
        let Some(w) = workload else {
            return self;
        };
        let names_process = self.who.pid.is_some() || self.who.comm.is_some();
        if !names_process {
            return self;
        }
        if let Some(unit) = w.unit() {
            self = self.evidence("unit", unit);
        }
        if let Some(c) = w.container() {
            self = self.evidence("container", c);
        }
        self.summary = format!("{}: {}", w.label(), self.summary);
        self.workload = Some(w);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_unique_stable_names_the_readme_documents() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let mut seen = std::collections::HashSet::new();
        for kind in FindingKind::ALL {
            let name = kind.name();
            assert!(seen.insert(name), "{name} twice");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert_eq!(FindingKind::from_name(name), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).ok(),
                Some(serde_json::Value::from(name))
            );
            assert!(
                readme.contains(&format!("| `{name}` |")),
                "README's findings table has no row for {name}"
            );
        }
        assert_eq!(FindingKind::from_name("no_such_kind"), None);
    }
}
