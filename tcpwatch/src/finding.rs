//! Findings: what tcpwatch tells an operator, each with a stable kind, a
//! severity, one sentence, the evidence, and what the kernel's behaviour
//! implies should be done.
use std::collections::BTreeMap;

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

/// Stable finding kinds (used in JSON and, later, in metrics labels).
pub mod kind {
    pub const SYSCTL_RISK: &str = "sysctl_risk";
    pub const TIME_WAIT_OVERFLOW: &str = "time_wait_overflow";
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub severity: Severity,
    /// One sentence.
    pub summary: String,
    /// The facts it rests on, by name.
    pub evidence: BTreeMap<String, serde_json::Value>,
    /// What to do, and why, in terms of what the kernel does.
    pub remedy: String,
    /// The unit or container of the process it names, when known (also in
    /// the evidence as `unit` and `container`).
    #[serde(skip)]
    pub workload: Option<std::sync::Arc<crate::cgroup::Workload>>,
}

impl Finding {
    pub fn new(kind: &'static str, severity: Severity, summary: impl Into<String>) -> Self {
        Finding {
            kind,
            severity,
            summary: summary.into(),
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

    pub fn remedy(mut self, remedy: impl Into<String>) -> Self {
        self.remedy = remedy.into();
        self
    }

    /// Names the unit or container of the process the finding names: the
    /// `unit` and `container` evidence, and the summary says it first
    /// (`nginx.service: nginx (pid 123) holds ...`).
    pub fn in_workload(
        mut self,
        workload: Option<std::sync::Arc<crate::cgroup::Workload>>,
    ) -> Self {
        let Some(w) = workload else {
            return self;
        };
        let names_process = self.evidence.contains_key("pid") || self.evidence.contains_key("comm");
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
