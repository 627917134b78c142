//! `cargo xtask deb`: the Debian package, `target/debian/tcpwatch_VERSION_ARCH.deb`.
//!
//! cargo-deb packs what tcpwatch/Cargo.toml's `[package.metadata.deb]`
//! lists: the release binary (built here first, with its eBPF programs),
//! the unit with the maintainer scripts that enable, start and stop it, the
//! configuration as a conffile, the rules and their tests, and the files
//! this task writes under `target/release/deb/usr/`: shell completions and
//! man pages made by the binary from its own command line, and the Grafana
//! dashboard when `deploy/grafana/tcpwatch.json` exists.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    setup::{self, output, run},
    tasks,
};

/// Completion scripts: the shell as `tcpwatch completions` names it, and
/// where the shell's package looks for them.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "share/bash-completion/completions/tcpwatch"),
    ("zsh", "share/zsh/vendor-completions/_tcpwatch"),
    ("fish", "share/fish/vendor_completions.d/tcpwatch.fish"),
];

/// Optional files of `deploy/` (added by other work), packed when present.
const OPTIONAL: [(&str, &str); 1] = [(
    "grafana/tcpwatch.json",
    "share/tcpwatch/grafana/tcpwatch.json",
)];

/// Builds the package and returns its path.
pub fn deb() -> Result<PathBuf> {
    let cargo_deb = setup::deb_tools()?;
    let binary = tasks::build()?;
    // cargo-deb reads `target/release/...` asset paths from the real target
    // directory, so the generated files go there.
    let usr = tasks::target_dir().join("release").join("deb").join("usr");
    generate(&binary, &usr)?;
    let out = tasks::target_dir().join("debian");
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let printed = output(
        Command::new(&cargo_deb)
            // Stripped: the release profile keeps line tables for
            // development, which would make the package six times larger.
            .args(["--no-build", "--strip", "--package", "tcpwatch", "--output"])
            .arg(&out)
            .current_dir(tasks::workspace_root()),
    )
    .context("cargo-deb failed")?;
    // cargo-deb prints the package's path last.
    let deb = printed
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .with_context(|| format!("cargo-deb did not name the package it wrote: {printed}"))?;
    Ok(deb)
}

/// Writes the completions, the man pages and the optional files under `usr`
/// (emptied first, so nothing stale is packed).
fn generate(binary: &Path, usr: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(usr);
    for (shell, to) in COMPLETIONS {
        let script = output(Command::new(binary).args(["completions", shell]))?;
        if script.trim().is_empty() {
            bail!("`tcpwatch completions {shell}` printed nothing");
        }
        write(&usr.join(to), script.as_bytes())?;
    }
    let man = usr.join("share/man/man1");
    run(Command::new(binary).arg("manpages").arg(&man))?;
    let pages: Vec<PathBuf> = fs::read_dir(&man)
        .with_context(|| format!("cannot list {}", man.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    if !pages.iter().any(|p| p.ends_with("tcpwatch.1")) {
        bail!("`tcpwatch manpages` wrote no tcpwatch.1");
    }
    // Debian's policy: man pages gzipped, without a time stamp (-n).
    run(Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages))?;
    let deploy = tasks::workspace_root().join("deploy");
    for (from, to) in OPTIONAL {
        let from = deploy.join(from);
        if from.is_file() {
            let data =
                fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
            write(&usr.join(to), &data)?;
        }
    }
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}
