//! `cargo xtask systemd-test`: proves the Debian package under a real
//! systemd. A Debian 12 root file system made with mmdebstrap from the
//! machine's own apt sources (cached in `~/.cache/tcpwatch/debian12/`, with
//! its 6.1 kernel and initrd) gets the package and a test unit, becomes an
//! ext4 image, and boots under QEMU (TCG) with systemd as init. The unit
//! installs the package with dpkg and runs the checks of
//! `systemd_test_guest.sh`, whose results come back over a second serial
//! port.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    deb,
    kernels::{Mirror, DEB822_SOURCES},
    setup::{self, run},
    tasks,
    vm::{qemu_tcg, wait_until},
};

/// The guest's checks, in the order they run.
pub const CHECKS: [&str; 8] = [
    "installed",
    "started",
    "capabilities",
    "metrics",
    "watchdog",
    "restart_after_kill",
    "bad_config",
    "purge",
];

const GUEST_SCRIPT: &str = include_str!("systemd_test_guest.sh");

/// The boot's target: multi-user.target, then the test.
const TEST_TARGET: &str = "\
[Unit]
Description=cargo xtask systemd-test
Requires=multi-user.target tcpwatch-test.service
After=multi-user.target
AllowIsolate=yes
";

/// Runs the checks once the system is up, then powers off either way.
/// `SuccessAction=`/`FailureAction=` belong in `[Unit]`: in `[Service]`
/// systemd ignores them and the guest would never power off.
const TEST_SERVICE: &str = "\
[Unit]
Description=cargo xtask systemd-test: install tcpwatch's package and check the service
After=multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/tcpwatch-systemd-test
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=6min
";

/// What the root file system holds besides Debian's minimal base: systemd
/// as init, a kernel with its initrd, and the tools the checks use.
const PACKAGES: &str =
    "systemd-sysv,udev,dbus,linux-image-cloud-amd64,initramfs-tools,zstd,curl,procps,libcap2-bin";
const SUITE: &str = "bookworm";
/// A cold mmdebstrap took 75 s here; a slow mirror gets ten times that.
const ROOTFS_TIMEOUT: Duration = Duration::from_secs(900);
/// Boot to power-off: about 100 s here (boot 15-20 s, the checks' waits 50 s).
const GUEST_TIMEOUT: Duration = Duration::from_secs(420);
const DISK_SIZE: &str = "2G";
const KERNEL_ARGS: &str =
    "root=/dev/vda rw console=ttyS0 systemd.unit=tcpwatch-test.target panic=1";

pub fn systemd_test() -> Result<()> {
    if !tasks::is_root() {
        bail!("cargo xtask systemd-test runs as root: mmdebstrap --mode=root and the guest's file owners need it");
    }
    setup::vm_packages()?;
    let readme = tasks::workspace_root().join("README.md");
    let capeff = documented_capeff(
        &fs::read_to_string(&readme)
            .with_context(|| format!("cannot read {}", readme.display()))?,
    )?;

    let mut timings = Vec::new();
    let step = Instant::now();
    let deb = deb::deb()?;
    timings.push(format!("package {}", secs(step.elapsed())));

    let step = Instant::now();
    let (rootfs, cold) = Rootfs::cached_or_made()?;
    timings.push(format!(
        "root file system {} {}",
        if cold { "made" } else { "cached" },
        secs(step.elapsed())
    ));

    let dir = tasks::target_dir().join("systemd-test");
    let step = Instant::now();
    let disk = make_disk(&rootfs, &deb, &capeff, &dir)?;
    timings.push(format!("disk {}", secs(step.elapsed())));

    let boot = boot(&rootfs, &disk, &dir)?;
    let report = Report::parse(&boot.results);
    timings.push(format!("guest {}", secs(boot.elapsed)));
    if !report.timings.is_empty() {
        let inside: Vec<String> = report
            .timings
            .iter()
            .map(|(name, s)| format!("{name} {s} s"))
            .collect();
        timings.push(format!("in the guest: {}", inside.join(", ")));
    }
    println!("systemd-test {}: {}", rootfs.kernel, timings.join("; "));
    for line in &report.info {
        println!("  {line}");
    }
    let failed = report.failed(&boot);
    if failed.is_empty() {
        println!("systemd-test: passed {0}/{0}", CHECKS.len());
    } else {
        println!(
            "systemd-test: FAILED {}/{} passed: {}",
            CHECKS.len() - failed.len(),
            CHECKS.len(),
            failed.join("; ")
        );
        for line in &report.journal {
            println!("  journal | {line}");
        }
        println!("  console: {}", boot.console_log.display());
        let console = fs::read_to_string(&boot.console_log).unwrap_or_default();
        let lines: Vec<&str> = console.lines().collect();
        for line in &lines[lines.len().saturating_sub(25)..] {
            println!("  | {}", line.trim_end_matches('\r'));
        }
    }
    // The plain closing line that test reports end with.
    println!(
        "systemd-test: {} passed, {} failed",
        CHECKS.len().saturating_sub(failed.len()),
        failed.len()
    );
    if !failed.is_empty() {
        let names: Vec<&str> = failed
            .iter()
            .map(|f| f.split(':').next().unwrap_or(f))
            .collect();
        bail!("systemd-test failed: {}", names.join(", "));
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

/// The capabilities README says the daemon keeps after attaching (the
/// sentence "After attaching it keeps only `CAP_...`, ... (see ...)"), as
/// /proc/PID/status prints CapEff.
fn documented_capeff(readme: &str) -> Result<String> {
    /// Capability numbers (include/uapi/linux/capability.h) of the names
    /// tcpwatch's documentation uses.
    const NUMBERS: [(&str, u32); 6] = [
        ("CAP_DAC_READ_SEARCH", 2),
        ("CAP_NET_ADMIN", 12),
        ("CAP_SYS_PTRACE", 19),
        ("CAP_SYS_ADMIN", 21),
        ("CAP_PERFMON", 38),
        ("CAP_BPF", 39),
    ];
    let text = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let sentence = "After attaching it keeps only ";
    let at = text
        .find(sentence)
        .with_context(|| format!("README.md no longer says \"{sentence}...\""))?;
    let list = &text[at + sentence.len()..];
    let list = &list[..list.find(['(', '.']).unwrap_or(list.len())];
    let mut mask = 0u64;
    for name in list.split('`').filter(|w| w.starts_with("CAP_")) {
        let (_, bit) = NUMBERS
            .iter()
            .find(|(n, _)| *n == name)
            .with_context(|| format!("README.md names {name}, unknown to systemd-test"))?;
        mask |= 1 << bit;
    }
    if mask == 0 {
        bail!("README.md's list of kept capabilities is empty: {list}");
    }
    Ok(format!("{mask:016x}"))
}

/// The cached Debian 12 system: its root file system as a tarball, and the
/// kernel and initrd it installed.
struct Rootfs {
    tarball: PathBuf,
    vmlinuz: PathBuf,
    initrd: PathBuf,
    kernel: String,
}

impl Rootfs {
    /// The cache, or a new one when it is missing or was made with other
    /// packages; returns it and whether it was made now.
    fn cached_or_made() -> Result<(Rootfs, bool)> {
        let dir = setup::cache_dir()?.join("debian12");
        let recipe = format!("{SUITE} minbase {PACKAGES}\n");
        let rootfs = Rootfs {
            tarball: dir.join("rootfs.tar"),
            vmlinuz: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            kernel: fs::read_to_string(dir.join("KERNEL"))
                .unwrap_or_default()
                .trim()
                .to_owned(),
        };
        let cached = fs::read_to_string(dir.join("RECIPE")).is_ok_and(|r| r == recipe)
            && [&rootfs.tarball, &rootfs.vmlinuz, &rootfs.initrd]
                .iter()
                .all(|p| p.is_file());
        if cached {
            return Ok((rootfs, false));
        }
        make_rootfs(&dir, &recipe)?;
        let kernel = fs::read_to_string(dir.join("KERNEL")).context("cannot read KERNEL")?;
        Ok((
            Rootfs {
                kernel: kernel.trim().to_owned(),
                ..rootfs
            },
            true,
        ))
    }
}

/// Runs mmdebstrap into `dir.partial` and moves it to `dir` when whole.
fn make_rootfs(dir: &Path, recipe: &str) -> Result<()> {
    let started = Instant::now();
    let mirror = Mirror::of_this_machine()?;
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    eprintln!(
        "xtask: making a Debian 12 root file system with mmdebstrap (about 75 s, once) in {}",
        dir.display()
    );
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--mode=root", "--format=tar"])
        .arg(format!("--include={PACKAGES}"))
        // The guest has no network, and its sources would name the
        // machine's mirror: none are kept.
        .arg(r#"--customize-hook=rm -f "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*"#)
        .arg(SUITE)
        .arg(partial.join("rootfs.tar"))
        .arg(sources_argument(&mirror))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so a hung run is ended with its children.
        .process_group(0);
    let mut child = cmd.spawn().context("cannot start mmdebstrap")?;
    // Its messages may name the mirror: kept only with the host replaced.
    let stderr = child.stderr.take().context("no mmdebstrap stderr")?;
    let log_path = partial.join("mmdebstrap.log");
    let redactor = {
        let mut log = fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        thread::spawn(move || {
            let mut tail = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = mirror.redact(&line);
                let _ = writeln!(log, "{line}");
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            tail
        })
    };
    let status = wait_until(&mut child, started + ROOTFS_TIMEOUT)?;
    if status.is_none() {
        // SAFETY: kill() on the process group of the child started above.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
    }
    let tail = redactor.join().unwrap_or_default().join("\n  ");
    match status {
        None => bail!(
            "mmdebstrap did not finish within {} s; its log: {}\n  {tail}",
            ROOTFS_TIMEOUT.as_secs(),
            log_path.display()
        ),
        Some(s) if !s.success() => bail!("mmdebstrap failed ({s}):\n  {tail}"),
        Some(_) => {}
    }
    // The kernel and initrd it installed, for QEMU's -kernel and -initrd.
    let tarball = partial.join("rootfs.tar");
    let listing = setup::output(Command::new("tar").arg("-tf").arg(&tarball))?;
    let vmlinuz = listing
        .lines()
        .find(|l| l.starts_with("./boot/vmlinuz-"))
        .context("the root file system has no /boot/vmlinuz-*")?
        .to_owned();
    let release = vmlinuz.trim_start_matches("./boot/vmlinuz-").to_owned();
    let initrd = format!("./boot/initrd.img-{release}");
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&partial)
        .args([&vmlinuz, &initrd]))?;
    for (from, to) in [(&vmlinuz, "vmlinuz"), (&initrd, "initrd.img")] {
        fs::rename(partial.join(from), partial.join(to))
            .with_context(|| format!("cannot move {from} out of the tarball's /boot"))?;
    }
    let _ = fs::remove_dir_all(partial.join("boot"));
    fs::write(partial.join("KERNEL"), format!("{release}\n")).context("cannot write KERNEL")?;
    fs::write(partial.join("RECIPE"), recipe).context("cannot write RECIPE")?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&partial, dir).with_context(|| format!("cannot move it to {}", dir.display()))?;
    eprintln!(
        "xtask: cached Debian 12 with {release} in {} ({:.0} s)",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// mmdebstrap's mirror argument: the machine's deb822 sources file as it
/// is when it names Debian 12, else one sources line for its archive (so
/// the mirror's address is read, never written down).
fn sources_argument(mirror: &Mirror) -> String {
    let names_suite = fs::read_to_string(DEB822_SOURCES).is_ok_and(|text| {
        text.lines().any(|l| {
            l.trim_start().starts_with("Suites:") && l.split_whitespace().any(|s| s == SUITE)
        })
    });
    if names_suite {
        DEB822_SOURCES.to_owned()
    } else {
        format!(
            "deb [signed-by={}] {} {SUITE} main",
            mirror.keyring, mirror.uri
        )
    }
}

/// The guest's disk: the cached root file system with the package, the
/// checks and their units added, as an ext4 image made without mounting.
fn make_disk(rootfs: &Rootfs, deb: &Path, capeff: &str, dir: &Path) -> Result<PathBuf> {
    let _ = fs::remove_dir_all(dir);
    let root = dir.join("root");
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(&rootfs.tarball)
        .arg("-C")
        .arg(&root)
        .arg("--numeric-owner"))?;
    let place = |to: &str, data: &[u8], mode: u32| -> Result<()> {
        let path = root.join(to);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))
    };
    place(
        "root/tcpwatch.deb",
        &fs::read(deb).with_context(|| format!("cannot read {}", deb.display()))?,
        0o644,
    )?;
    place(
        "usr/local/sbin/tcpwatch-systemd-test",
        GUEST_SCRIPT.replace("@EXPECTED_CAPEFF@", capeff).as_bytes(),
        0o755,
    )?;
    place(
        "etc/systemd/system/tcpwatch-test.target",
        TEST_TARGET.as_bytes(),
        0o644,
    )?;
    place(
        "etc/systemd/system/tcpwatch-test.service",
        TEST_SERVICE.as_bytes(),
        0o644,
    )?;
    let disk = dir.join("disk.img");
    // Through output(): mkfs prints a line even with -q.
    setup::output(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(&root)
            .arg(&disk)
            .arg(DISK_SIZE),
    )?;
    // 360 MB that the image now holds.
    let _ = fs::remove_dir_all(&root);
    Ok(disk)
}

struct Boot {
    results: String,
    console_log: PathBuf,
    elapsed: Duration,
    timed_out: bool,
    qemu_failed: Option<String>,
}

/// Boots the disk with the cached kernel and initrd, at most
/// [`GUEST_TIMEOUT`]; the first serial port is the console, the second the
/// results.
fn boot(rootfs: &Rootfs, disk: &Path, dir: &Path) -> Result<Boot> {
    let console_log = dir.join("console.log");
    let results = dir.join("results.txt");
    let qemu_log = dir.join("qemu.stderr");
    let stderr = fs::File::create(&qemu_log)
        .with_context(|| format!("cannot create {}", qemu_log.display()))?;
    let serial = |path: &Path| format!("file:{}", path.display());
    let started = Instant::now();
    let mut qemu = qemu_tcg()
        .arg("-kernel")
        .arg(&rootfs.vmlinuz)
        .arg("-initrd")
        .arg(&rootfs.initrd)
        .args(["-append", KERNEL_ARGS])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,cache=unsafe",
            disk.display()
        ))
        .args(["-nic", "none", "-display", "none", "-no-reboot"])
        .args(["-serial", &serial(&console_log)])
        .args(["-serial", &serial(&results)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("cannot start qemu-system-x86_64 (cargo xtask setup --vm installs it)")?;
    let status = wait_until(&mut qemu, started + GUEST_TIMEOUT)?;
    if status.is_none() {
        // Child::kill sends SIGKILL to this QEMU's pid only.
        let _ = qemu.kill();
        let _ = qemu.wait();
    }
    let qemu_failed = status.filter(|s| !s.success()).map(|s| {
        let text = fs::read_to_string(&qemu_log).unwrap_or_default();
        format!("qemu exited with {s}: {}", text.trim().replace('\n', " | "))
    });
    Ok(Boot {
        results: String::from_utf8_lossy(&fs::read(&results).unwrap_or_default()).into_owned(),
        console_log,
        elapsed: started.elapsed(),
        timed_out: status.is_none(),
        qemu_failed,
    })
}

/// What the guest sent over the second serial port.
#[derive(Debug, Default)]
struct Report {
    /// (check, None when ok or Some(reason)), in the order sent.
    checks: Vec<(String, Option<String>)>,
    timings: Vec<(String, String)>,
    info: Vec<String>,
    journal: Vec<String>,
    end: Option<i32>,
}

impl Report {
    fn parse(text: &str) -> Report {
        let mut report = Report::default();
        for line in text.lines().map(|l| l.trim_end_matches('\r')) {
            if let Some(rest) = line.strip_prefix("CHECK ") {
                let (name, result) = rest.split_once(' ').unwrap_or((rest, ""));
                let failure = (result != "ok")
                    .then(|| result.strip_prefix("FAILED: ").unwrap_or(result).to_owned());
                report.checks.push((name.to_owned(), failure));
            } else if let Some(rest) = line.strip_prefix("TIMING ") {
                let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
                report.timings.push((name.to_owned(), value.to_owned()));
            } else if let Some(rest) = line.strip_prefix("INFO ") {
                report.info.push(rest.to_owned());
            } else if let Some(rest) = line.strip_prefix("JOURNAL ") {
                report.journal.push(rest.to_owned());
            } else if let Some(rc) = line.strip_prefix("SYSTEMD-TEST-END rc=") {
                report.end = rc.trim().parse().ok();
            }
        }
        report
    }

    /// Each failed or missing check with its reason, and what cut the run
    /// short; empty when everything passed.
    fn failed(&self, boot: &Boot) -> Vec<String> {
        let mut failed = Vec::new();
        for name in CHECKS {
            match self.checks.iter().find(|(n, _)| n == name) {
                Some((_, None)) => {}
                Some((_, Some(why))) => failed.push(format!("{name}: {why}")),
                None => failed.push(format!("{name}: not run")),
            }
        }
        let cut_short = if boot.timed_out {
            Some(format!(
                "the guest was killed after {} s",
                GUEST_TIMEOUT.as_secs()
            ))
        } else if let Some(qemu) = &boot.qemu_failed {
            Some(qemu.clone())
        } else if self.end.is_none() {
            Some("the guest stopped without its end marker".to_owned())
        } else {
            None
        };
        if let Some(why) = cut_short {
            if failed.is_empty() {
                failed.push(format!("end: {why}"));
            } else if let Some(last) = failed.last_mut() {
                last.push_str(&format!(" ({why})"));
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> Boot {
        Boot {
            results: String::new(),
            console_log: PathBuf::from("console.log"),
            elapsed: Duration::from_secs(90),
            timed_out: false,
            qemu_failed: None,
        }
    }

    #[test]
    fn readme_documents_the_four_kept_capabilities() {
        let readme = fs::read_to_string(tasks::workspace_root().join("README.md")).unwrap();
        // CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21), CAP_BPF (39).
        assert_eq!(documented_capeff(&readme).unwrap(), "0000008000280004");
        assert!(documented_capeff("keeps everything").is_err());
        assert!(documented_capeff("After attaching it keeps only `CAP_CHOWN`.").is_err());
    }

    #[test]
    fn every_check_must_pass_and_the_guest_must_end() {
        let mut text: String = CHECKS.iter().map(|n| format!("CHECK {n} ok\r\n")).collect();
        text.push_str("TIMING boot 17.5\r\nINFO CapEff 0000008000280004\r\n");
        assert_eq!(
            Report::parse(&text).failed(&boot()),
            ["end: the guest stopped without its end marker"]
        );
        text.push_str("SYSTEMD-TEST-END rc=0\r\n");
        let report = Report::parse(&text);
        assert!(report.failed(&boot()).is_empty());
        assert_eq!(report.timings, [("boot".to_owned(), "17.5".to_owned())]);
        assert_eq!(report.info, ["CapEff 0000008000280004"]);

        let text = "CHECK installed ok\nCHECK started FAILED: activating\nJOURNAL x\n";
        let mut timed_out = boot();
        timed_out.timed_out = true;
        let failed = Report::parse(text).failed(&timed_out);
        assert_eq!(failed[0], "started: activating");
        assert_eq!(failed.len(), CHECKS.len() - 1);
        assert_eq!(
            failed.last().map(String::as_str),
            Some("purge: not run (the guest was killed after 420 s)")
        );
    }

    /// The names the guest script prints are the ones the host expects.
    #[test]
    fn the_script_runs_every_check() {
        for name in CHECKS {
            assert!(
                GUEST_SCRIPT.contains(&format!("\ncheck {name} ")),
                "{name} is not run by the guest script"
            );
        }
        assert!(GUEST_SCRIPT.contains("@EXPECTED_CAPEFF@"));
    }
}
