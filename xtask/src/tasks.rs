//! Build, run and test.
use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::setup::{self, run};

pub fn workspace_root() -> PathBuf {
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
    Ok(target_dir().join("release").join("tcpwatch"))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` or the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
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

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs every test; privileged tests must run, not skip. Under CI (or with
/// `TCPWATCH_VM_TEST=1`) the kernel matrix follows (`vm-test` on every
/// Debian kernel series), then the Debian package under a real systemd
/// (`systemd-test`).
pub fn test(extra: &[String]) -> Result<()> {
    setup::toolchain()?;
    setup::test_packages()?;
    // The privileged tests are `#[ignore]`d with their reason, so a plain
    // `cargo test` reports them as not run; here every one runs.
    let (cargo_args, test_args) = match extra.iter().position(|a| a == "--") {
        Some(at) => (&extra[..at], &extra[at + 1..]),
        None => (extra, &[][..]),
    };
    run(cargo()
        .args(["test", "--workspace", "--exclude", "tcpwatch-ebpf"])
        .args(cargo_args)
        .args(["--", "--include-ignored"])
        .args(test_args)
        .env("TCPWATCH_REQUIRE_PRIVILEGED_TESTS", "1"))?;
    if vm_test_wanted() {
        crate::vm::vm_test(&crate::vm::all_series(), None, false)?;
        crate::systemd_test::systemd_test()?;
    }
    Ok(())
}

/// `CI=true` (as the privileged tests read it) or `TCPWATCH_VM_TEST=1`.
fn vm_test_wanted() -> bool {
    let set = |name: &str| env::var(name).is_ok_and(|v| v == "true" || v == "1");
    set("CI") || set("TCPWATCH_VM_TEST")
}

/// `target/dist/tcpwatch-VERSION-ARCH-linux.tar.gz`, unpacking to paths an
/// admin expects under `/`: usr/bin/tcpwatch,
/// usr/lib/systemd/system/tcpwatch.service, etc/tcpwatch/tcpwatch.toml and
/// usr/share/tcpwatch/ (Prometheus scrape config, rules and their tests,
/// the Grafana dashboard).
pub fn dist() -> Result<PathBuf> {
    let binary = build()?;
    let root = workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("tcpwatch-{version}-{}-linux", std::env::consts::ARCH);
    let dist = root.join("target").join("dist");
    let stage = dist.join(&name);
    let _ = std::fs::remove_dir_all(&stage);
    let place = |from: &std::path::Path, to: &str| -> Result<()> {
        let dest = stage.join(to);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::copy(from, &dest)
            .with_context(|| format!("cannot copy {} to {}", from.display(), dest.display()))?;
        Ok(())
    };
    let deploy = root.join("deploy");
    place(&binary, "usr/bin/tcpwatch")?;
    place(
        &deploy.join("tcpwatch.service"),
        "usr/lib/systemd/system/tcpwatch.service",
    )?;
    place(&deploy.join("tcpwatch.toml"), "etc/tcpwatch/tcpwatch.toml")?;
    for file in [
        "prometheus.yml",
        "tcpwatch.rules.yml",
        "tcpwatch.rules.test.yml",
        "grafana/tcpwatch.json",
    ] {
        place(&deploy.join(file), &format!("usr/share/tcpwatch/{file}"))?;
    }
    let tarball = dist.join(format!("{name}.tar.gz"));
    run(Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&stage)
        .args(["usr", "etc"]))?;
    Ok(tarball)
}
