//! `cargo xtask vm-test`: proves tcpwatch on Debian's kernels. Each kernel
//! boots under QEMU (TCG: this machine kind has no usable hardware
//! virtualisation) with an initramfs holding tcpwatch and the guest suite
//! (`xtask guest-suite`, guest.rs); the host reads the suite's `CHECK` lines
//! from the serial console and prints one line per kernel.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    guest::{CHECKS, FORMAT_BEGIN, FORMAT_END, FORMAT_MISSING},
    initramfs::{self, Base},
    kernels::{self, Kernel},
    setup, tasks,
};

/// Every series, for `cargo xtask test` under CI.
pub fn all_series() -> Vec<String> {
    kernels::SERIES.iter().map(|s| s.name.to_owned()).collect()
}

/// Wall-clock limit of one guest, boot to power-off. A passing guest takes
/// 12-15 s on a 2-core host; six times that leaves room for a slower host,
/// and four hung guests plus a build still end within 10 minutes.
const GUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Console lines shown when a kernel fails.
const TAIL_LINES: usize = 40;
/// The longest reason quoted per failed check in the one-line verdict; the
/// console log has the whole of it.
const REASON_CHARS: usize = 400;

/// Boots each kernel of `series` and runs the guest suite in it, on the
/// given tcpwatch binary or a fresh release build; with `save_formats` also
/// writes each kernel's tracepoint formats to
/// tcpwatch/tests/data/formats-<series>/.
pub fn vm_test(series: &[String], tcpwatch: Option<&Path>, save_formats: bool) -> Result<()> {
    setup::vm_packages()?;
    let kernels = kernels::kernels(series)?;
    let tcpwatch = match tcpwatch {
        Some(path) => path.to_owned(),
        None => tasks::build()?,
    };
    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    let base = initramfs::base(&tcpwatch, &xtask)?;
    let out = tasks::target_dir().join("vm-test");
    let mut failed = Vec::new();
    for kernel in &kernels {
        let dir = out.join(kernel.series);
        let outcome = boot(kernel, &base, &dir, save_formats)?;
        let report = GuestReport::parse(&outcome.console);
        let verdict = report.verdict(&outcome);
        println!("vm-test {}: {verdict}", kernel.release);
        if !report.passed(&outcome) {
            failed.push(kernel.release.clone());
            print_tail(&outcome);
        }
        if save_formats {
            match save(&report, kernel) {
                Ok(line) => println!("  {line}"),
                Err(e) => {
                    println!("  formats of {} not saved: {e:#}", kernel.release);
                    failed.push(format!("{} (formats)", kernel.release));
                }
            }
        }
    }
    // The plain closing line test reports end with: kernels, not checks.
    println!(
        "vm-test: {} passed, {} failed",
        kernels.len().saturating_sub(failed.len()),
        failed.len()
    );
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

/// What one boot left behind.
struct Boot {
    console: String,
    console_log: PathBuf,
    qemu_stderr: String,
    elapsed: Duration,
    timed_out: bool,
}

/// Boots `kernel` with the initramfs and waits for it to power off, at most
/// [`GUEST_TIMEOUT`]; the console goes to `dir/console.log`.
fn boot(kernel: &Kernel, base: &Base, dir: &Path, save_formats: bool) -> Result<Boot> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let initrd = dir.join("initramfs.cpio");
    fs::write(&initrd, base.with_modules(kernel)?)
        .with_context(|| format!("cannot write {}", initrd.display()))?;
    let console_log = dir.join("console.log");
    let qemu_log = dir.join("qemu.stderr");
    let console = fs::File::create(&console_log)
        .with_context(|| format!("cannot create {}", console_log.display()))?;
    let qemu_stderr = fs::File::create(&qemu_log)
        .with_context(|| format!("cannot create {}", qemu_log.display()))?;
    let mut append = "console=ttyS0 panic=-1 quiet".to_owned();
    if save_formats {
        append.push_str(" vmtest.formats=1");
    }
    let started = Instant::now();
    let mut qemu = qemu_tcg()
        // No network card: the suite uses loopback only, and without one
        // the firmware does not try to boot from the network first.
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(qemu_stderr)
        .spawn()
        .context("cannot start qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let timed_out = wait_until(&mut qemu, started + GUEST_TIMEOUT)?.is_none();
    if timed_out {
        // Child::kill sends SIGKILL to this QEMU's pid only.
        let _ = qemu.kill();
        let _ = qemu.wait();
    }
    let elapsed = started.elapsed();
    // The initramfs is rebuilt on every run; 80 MB per kernel is not worth keeping.
    let _ = fs::remove_file(&initrd);
    Ok(Boot {
        console: String::from_utf8_lossy(
            &fs::read(&console_log)
                .with_context(|| format!("cannot read {}", console_log.display()))?,
        )
        .into_owned(),
        console_log,
        qemu_stderr: fs::read_to_string(&qemu_log).unwrap_or_default(),
        elapsed,
        timed_out,
    })
}

/// QEMU with the machine every guest gets: emulated (TCG, since this
/// machine kind has no usable hardware virtualisation), 2 CPUs, 2 GiB.
pub fn qemu_tcg() -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-machine", "q35,accel=tcg", "-cpu", "max"])
        .args(["-smp", "2", "-m", "2G"]);
    qemu
}

/// Waits for `child` to exit until `deadline`: its status, or None when it
/// is still running then (the caller ends it).
pub fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for a child")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn print_tail(boot: &Boot) {
    println!("  console: {}", boot.console_log.display());
    let lines: Vec<&str> = boot.console.lines().collect();
    for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
        println!("  | {}", line.trim_end_matches('\r'));
    }
    let qemu = boot.qemu_stderr.trim();
    if !qemu.is_empty() {
        println!("  qemu stderr: {}", qemu.replace('\n', " | "));
    }
}

/// What the guest printed: its check results, its end marker and, with
/// `--save-formats`, the tracepoint format files.
#[derive(Debug, Default)]
struct GuestReport {
    /// (check, None when ok or Some(reason)), in the order printed.
    checks: Vec<(String, Option<String>)>,
    /// The suite's exit status, from `VMTEST-END rc=N`.
    end: Option<i32>,
    insmod_failures: Vec<String>,
    formats: Vec<(String, String)>,
    missing_formats: Vec<String>,
}

impl GuestReport {
    fn parse(console: &str) -> GuestReport {
        let mut report = GuestReport::default();
        let mut format: Option<(String, Vec<&str>)> = None;
        for line in console.lines().map(|l| l.trim_end_matches('\r')) {
            if let Some((name, body)) = &mut format {
                if line.strip_prefix(FORMAT_END) == Some(name.as_str()) {
                    let mut text = body.join("\n");
                    text.push('\n');
                    report.formats.push((name.clone(), text));
                    format = None;
                } else {
                    body.push(line);
                }
                continue;
            }
            // Markers are searched within the line: a kernel message may
            // have been printed in front of them.
            if let Some(at) = line.find("CHECK ") {
                let rest = &line[at + "CHECK ".len()..];
                let (name, result) = rest.split_once(' ').unwrap_or((rest, ""));
                let failure = (result != "ok")
                    .then(|| result.strip_prefix("FAILED: ").unwrap_or(result).to_owned());
                report.checks.push((name.to_owned(), failure));
            } else if let Some(at) = line.find("VMTEST-END rc=") {
                report.end = line[at + "VMTEST-END rc=".len()..].trim().parse().ok();
            } else if let Some(at) = line.find("VMTEST insmod ") {
                report.insmod_failures.push(line[at..].to_owned());
            } else if let Some(name) = line.strip_prefix(FORMAT_BEGIN) {
                format = Some((name.trim().to_owned(), Vec::new()));
            } else if let Some(name) = line.strip_prefix(FORMAT_MISSING) {
                report.missing_formats.push(name.trim().to_owned());
            }
        }
        report
    }

    fn passed_checks(&self) -> usize {
        CHECKS
            .iter()
            .filter(|name| self.checks.iter().any(|(n, f)| n == *name && f.is_none()))
            .count()
    }

    fn passed(&self, boot: &Boot) -> bool {
        !boot.timed_out && self.end.is_some() && self.passed_checks() == CHECKS.len()
    }

    /// `passed 9/9 (23 s)`, or `FAILED ...` with each failed or missing
    /// check and why.
    fn verdict(&self, boot: &Boot) -> String {
        let secs = boot.elapsed.as_secs_f64().round();
        if self.passed(boot) {
            return format!("passed {}/{} ({secs} s)", CHECKS.len(), CHECKS.len());
        }
        // Checks that failed for the same reason (tcpwatch did not start,
        // say) are named together, with the reason once.
        let mut groups: Vec<(Vec<&str>, &str)> = Vec::new();
        for (name, failure) in &self.checks {
            let Some(reason) = failure.as_deref() else {
                continue;
            };
            match groups.iter_mut().find(|(_, r)| *r == reason) {
                Some((names, _)) => names.push(name),
                None => groups.push((vec![name], reason)),
            }
        }
        let mut why: Vec<String> = groups
            .iter()
            .map(|(names, reason)| format!("{}: {}", names.join(", "), shorten(reason)))
            .collect();
        let missing: Vec<&str> = CHECKS
            .iter()
            .copied()
            .filter(|name| !self.checks.iter().any(|(n, _)| n == name))
            .collect();
        if !missing.is_empty() {
            why.push(format!("not run: {}", missing.join(", ")));
        }
        why.extend(self.insmod_failures.iter().cloned());
        if boot.timed_out {
            why.push(format!("guest killed after {} s", GUEST_TIMEOUT.as_secs()));
        } else if self.end.is_none() {
            why.push("the guest stopped without its end marker".to_owned());
        }
        format!(
            "FAILED {}/{} passed ({secs} s): {}",
            self.passed_checks(),
            CHECKS.len(),
            why.join("; ")
        )
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= REASON_CHARS {
        return text.to_owned();
    }
    let cut: String = text.chars().take(REASON_CHARS).collect();
    format!("{cut}... (whole reason in the console log)")
}

/// Writes the formats the guest printed to
/// tcpwatch/tests/data/formats-<series>/<category>__<name>.
fn save(report: &GuestReport, kernel: &Kernel) -> Result<String> {
    if report.formats.is_empty() {
        bail!("the guest printed no format files");
    }
    let dir = tasks::workspace_root()
        .join("tcpwatch/tests/data")
        .join(format!("formats-{}", kernel.series));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in &report.formats {
        // Names come from the guest's console: keep them to plain file names.
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("unexpected format name {name:?} on the console");
        }
        fs::write(dir.join(name), text).with_context(|| format!("cannot write {name}"))?;
    }
    let mut line = format!("{} format files in {}", report.formats.len(), dir.display());
    if !report.missing_formats.is_empty() {
        line.push_str(&format!(
            "; not in this kernel: {}",
            report.missing_formats.join(", ")
        ));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(console: &str) -> Boot {
        Boot {
            console: console.to_owned(),
            console_log: PathBuf::from("console.log"),
            qemu_stderr: String::new(),
            elapsed: Duration::from_secs(23),
            timed_out: false,
        }
    }

    #[test]
    fn reads_checks_markers_and_formats() {
        let mut console =
            String::from("[    1.0] booting\r\nVMTEST-KERNEL 6.1.0-50-cloud-amd64\r\n");
        console.push_str("FORMAT-BEGIN tcp__tcp_probe\r\nname: tcp_probe\r\n\tfield:int a;\r\n\r\nprint fmt: \"x\"\r\nFORMAT-END tcp__tcp_probe\r\n");
        console.push_str("FORMAT-MISSING sock__sock_send_length\r\n");
        for name in CHECKS {
            if *name == "refused" {
                console.push_str("[  9.9] noise CHECK refused FAILED: no SYN_SENT -> CLOSE\r\n");
            } else {
                console.push_str(&format!("CHECK {name} ok\r\n"));
            }
        }
        console.push_str("VMTEST-END rc=1\r\n");
        let b = boot(&console);
        let report = GuestReport::parse(&b.console);
        assert_eq!(report.end, Some(1));
        assert_eq!(
            report.formats,
            [(
                "tcp__tcp_probe".to_owned(),
                "name: tcp_probe\n\tfield:int a;\n\nprint fmt: \"x\"\n".to_owned()
            )]
        );
        assert_eq!(report.missing_formats, ["sock__sock_send_length"]);
        assert!(!report.passed(&b));
        assert_eq!(
            report.verdict(&b),
            format!(
                "FAILED {}/{} passed (23 s): refused: no SYN_SENT -> CLOSE",
                CHECKS.len() - 1,
                CHECKS.len()
            )
        );
    }

    #[test]
    fn all_checks_and_the_end_marker_make_a_pass() {
        let mut console: String = CHECKS.iter().map(|n| format!("CHECK {n} ok\n")).collect();
        assert!(
            !GuestReport::parse(&console).passed(&boot(&console)),
            "no end marker"
        );
        console.push_str("VMTEST-END rc=0\n");
        let b = boot(&console);
        let report = GuestReport::parse(&console);
        assert_eq!(
            report.verdict(&b),
            format!("passed {0}/{0} (23 s)", CHECKS.len())
        );
        let same =
            "CHECK lifecycle FAILED: no start\nCHECK refused FAILED: no start\nVMTEST-END rc=1\n";
        assert!(GuestReport::parse(same)
            .verdict(&boot(same))
            .contains(": lifecycle, refused: no start; not run: without_sock_diag, sock_diag"));
        let cut = "CHECK without_sock_diag ok\nCHECK sock_diag ok\nVMTEST-END rc=1\n";
        assert!(GuestReport::parse(cut)
            .verdict(&boot(cut))
            .contains("not run: lifecycle"));
    }
}
