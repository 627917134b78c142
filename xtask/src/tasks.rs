//! Build, run and test.
use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::setup::{self, run};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds the release binary with its eBPF programs and returns its path.
pub fn build() -> Result<PathBuf> {
    setup::toolchain()?;
    run(cargo().args(["build", "--release", "--package", "tcpwatch"]))?;
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target.join("release").join("tcpwatch"))
}

pub fn run_tcpwatch(args: &[String]) -> Result<()> {
    let binary = build()?;
    let mut cmd = if is_root() {
        Command::new(&binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(&binary);
        sudo
    };
    let status = cmd
        .args(args)
        .status()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs every test; privileged tests must run, not skip.
pub fn test(extra: &[String]) -> Result<()> {
    setup::toolchain()?;
    setup::test_packages()?;
    run(cargo()
        .args(["test", "--workspace", "--exclude", "tcpwatch-ebpf"])
        .args(extra)
        .env("TCPWATCH_REQUIRE_PRIVILEGED_TESTS", "1"))
}
