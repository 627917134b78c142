//! `tcpwatch audit`: the TCP sysctls and TcpExt counters of a network
//! namespace, and what they make the kernel do.
use crate::tcp::NetnsId;
use std::io::{self, IsTerminal, Write};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use crate::{
    findings::audit,
    findings::{Finding, Severity},
    host::netns::{self, Target},
    host::netns_state::{self, NetnsState},
};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Network namespace to audit: an `ip netns` name, a path such as
    /// /proc/PID/ns/net, or a process id (default: tcpwatch's own).
    #[arg(long, value_name = "NETNS")]
    pub netns: Option<Target>,

    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    netns: NetnsId,
    sysctls: &'a std::collections::BTreeMap<String, String>,
    tcpext: std::collections::BTreeMap<&'static str, u64>,
    time_wait: u64,
    findings: &'a [Finding],
}

pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    let target = args.netns.clone().unwrap_or(Target::Current);
    let (inode, state) = netns::read_state(&target).context("cannot audit")?;
    let findings = audit::evaluate(&state);
    match write(&args, inode, &state, &findings) {
        // A closed pipe (`| head`) is a normal way to stop reading.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write the audit"),
    }
}

fn write(
    args: &AuditArgs,
    inode: NetnsId,
    state: &NetnsState,
    findings: &[Finding],
) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if args.json {
        let report = Report {
            netns: inode,
            sysctls: &state.sysctls,
            tcpext: tcpext(state),
            time_wait: state.time_wait,
            findings,
        };
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        let color = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        write_text(&mut out, inode, state, findings, color)?;
    }
    out.flush()
}

fn tcpext(state: &NetnsState) -> std::collections::BTreeMap<&'static str, u64> {
    netns_state::TCPEXT
        .iter()
        .filter_map(|name| state.tcpext.get(*name).map(|v| (*name, *v)))
        .collect()
}

fn write_text(
    out: &mut impl Write,
    inode: NetnsId,
    state: &NetnsState,
    findings: &[Finding],
    color: bool,
) -> io::Result<()> {
    writeln!(out, "network namespace {inode}\n")?;
    writeln!(out, "{:<32} VALUE", "SETTING")?;
    for (name, value) in &state.sysctls {
        writeln!(
            out,
            "{:<32} {}",
            format!("net.ipv4.{name}"),
            value.split_whitespace().collect::<Vec<_>>().join(" ")
        )?;
    }
    writeln!(out, "\nTIME_WAIT sockets now: {}", state.time_wait)?;
    let counters: Vec<String> = tcpext(state)
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    writeln!(out, "TcpExt: {}", counters.join(", "))?;
    writeln!(out, "\nFINDINGS ({})", findings.len())?;
    for f in findings {
        let sev = format!("{:<8}", f.severity.name());
        let sev = match (color, f.severity) {
            (true, Severity::Critical) => format!("\x1b[31;1m{sev}\x1b[0m"),
            (true, Severity::Warning) => format!("\x1b[33;1m{sev}\x1b[0m"),
            _ => sev,
        };
        writeln!(out, "{sev} {:<18} {}", f.kind, f.summary)?;
        writeln!(out, "{:<27}-> {}", "", f.remedy)?;
    }
    Ok(())
}
