//! Shell completions and man pages, generated from the command line's own
//! definition (hidden `completions` and `manpages` subcommands; `cargo xtask
//! deb` puts their output in the Debian package).
use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("cannot write the {shell} completions: {source}")]
    Completions {
        shell: Shell,
        source: std::io::Error,
    },
    #[error("cannot write the man pages to {dir}: {source}")]
    ManPages {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The completion script for `shell`, as the shell's completion directory
/// expects it (`/usr/share/bash-completion/completions/tcpwatch`,
/// `vendor-completions/_tcpwatch`, `vendor_completions.d/tcpwatch.fish`).
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut visible_command(), "tcpwatch", &mut script);
    script
}

/// The command line without its hidden subcommands, which clap_complete
/// would offer otherwise (clap_mangen leaves them out by itself).
fn visible_command() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("tcpwatch")
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .propagate_version(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// Prints the completion script for `shell` on standard output.
pub fn print_completions(shell: Shell) -> Result<(), DocsError> {
    std::io::stdout()
        .lock()
        .write_all(&completions(shell))
        .map_err(|source| DocsError::Completions { shell, source })
}

/// Writes `tcpwatch.1` and one page per (visible) subcommand,
/// `tcpwatch-run.1` and so on, into `dir`, which is made if missing.
pub fn write_man_pages(dir: &Path) -> Result<(), DocsError> {
    let failed = |source| DocsError::ManPages {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_the_visible_subcommands_only() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completions(shell)).expect("utf-8");
            for sub in ["trace", "run", "config", "top", "audit", "close-wait-age"] {
                assert!(script.contains(sub), "{shell}: {sub} missing");
            }
            for hidden in ["manpages", "completions"] {
                assert!(!script.contains(hidden), "{shell}: {hidden} listed");
            }
        }
    }

    #[test]
    fn a_page_per_visible_command() {
        let dir = std::env::temp_dir().join(format!("tcpwatch-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_man_pages(&dir).expect("written");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "tcpwatch-audit.1",
                "tcpwatch-config.1",
                "tcpwatch-run.1",
                "tcpwatch-top.1",
                "tcpwatch-trace.1",
                "tcpwatch.1"
            ]
        );
        let run = std::fs::read_to_string(dir.join("tcpwatch-run.1")).expect("page");
        assert!(
            run.contains(".TH tcpwatch-run 1") && run.contains("config"),
            "{run}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
