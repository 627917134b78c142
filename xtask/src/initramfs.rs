//! The vm-test guest's root file system: a newc cpio archive (the format the
//! kernel unpacks into its initial rootfs) holding busybox, `/init`, the
//! tcpwatch release binary, this xtask binary (the in-guest suite) with the
//! shared libraries `ldd` lists, and one kernel's diag modules.
//!
//! Built fresh on every run (only the kernels are cached): the common part
//! once, then a copy per kernel with that kernel's modules appended.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::kernels::{Kernel, MODULES};

/// Where the guest finds the binaries (its PATH is /bin only).
pub const GUEST_TCPWATCH: &str = "/bin/tcpwatch";
pub const GUEST_XTASK: &str = "/bin/xtask";

/// The guest's PID 1. Prints `VMTEST-...` markers the host reads; the
/// suite's own `CHECK` lines come from `xtask guest-suite`.
const INIT: &str = r#"#!/bin/sh
# PID 1 of the vm-test guest (written by cargo xtask vm-test: xtask/src/initramfs.rs).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ip link set lo up
echo "VMTEST-KERNEL $(uname -r)"
# First without the sock_diag modules (as on a host that cannot load them).
/bin/xtask guest-without-sock-diag --tcpwatch /bin/tcpwatch
# inet_diag first: tcp_diag needs it.
for m in inet_diag tcp_diag; do
    insmod /lib/modules/$m.ko || echo "VMTEST insmod $m failed"
done
set -- guest-suite --tcpwatch /bin/tcpwatch
grep -q vmtest.formats=1 /proc/cmdline && set -- "$@" --dump-formats
/bin/xtask "$@"
echo "VMTEST-END rc=$?"
poweroff -f
"#;

/// The part of the archive every kernel shares, without the trailer.
pub struct Base(Cpio);

/// Builds the shared part: busybox and its applets, /init, the binaries and
/// their libraries, the mount points and /dev/console.
pub fn base(tcpwatch: &Path, xtask: &Path) -> Result<Base> {
    let mut cpio = Cpio::default();
    for dir in [
        "/bin",
        "/dev",
        "/proc",
        "/sys",
        "/tmp",
        "/run",
        "/lib/modules",
    ] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for PID 1's standard streams before
    // /init can mount devtmpfs: without this node the guest prints nothing.
    cpio.char_device("/dev/console", 5, 1);
    cpio.file("/init", 0o755, INIT.as_bytes());

    let busybox = find_program("busybox")?;
    cpio.file("/bin/busybox", 0o755, &read(&busybox)?);
    for applet in busybox_applets(&busybox)? {
        if applet != "busybox" {
            cpio.symlink(&format!("/bin/{applet}"), "busybox");
        }
    }
    cpio.file(GUEST_TCPWATCH, 0o755, &read(tcpwatch)?);
    cpio.file(GUEST_XTASK, 0o755, &read(xtask)?);

    let mut libraries = BTreeSet::new();
    for binary in [busybox.as_path(), tcpwatch, xtask] {
        libraries.extend(shared_libraries(binary)?);
    }
    for library in libraries {
        // At the path ldd names: the dynamic loader's path is compiled into
        // the binaries, and glibc's default search path has the rest.
        let path = library.to_string_lossy().into_owned();
        cpio.file(&path, 0o755, &read(&library)?);
    }
    Ok(Base(cpio))
}

impl Base {
    /// The whole archive for one kernel: the shared part and its modules.
    pub fn with_modules(&self, kernel: &Kernel) -> Result<Vec<u8>> {
        let mut cpio = self.0.clone();
        for module in MODULES {
            let path = kernel.module(module);
            cpio.file(&format!("/lib/modules/{module}.ko"), 0o644, &read(&path)?);
        }
        Ok(cpio.finish())
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn find_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` is missing (cargo xtask setup installs it)"))
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = crate::setup::output(Command::new(busybox).arg("--list"))?;
    let applets: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .map(str::to_owned)
        .collect();
    for needed in ["sh", "mount", "insmod", "ip", "poweroff", "grep", "uname"] {
        if !applets.iter().any(|a| a == needed) {
            bail!(
                "{} has no `{needed}` applet, which the guest's /init uses",
                busybox.display()
            );
        }
    }
    Ok(applets)
}

/// The shared libraries and the dynamic loader `ldd` lists for a binary;
/// none for a static one.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static binaries: ldd says so and exits 1.
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ldd(&text).with_context(|| format!("reading ldd's output for {}", binary.display()))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("a library is missing: {line}");
        }
        let target = line.split_once("=>").map_or(line, |(_, t)| t.trim());
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// A newc ("070701") cpio archive in memory.
#[derive(Clone, Default)]
struct Cpio {
    bytes: Vec<u8>,
    next_ino: u32,
    /// Directories already written, so parents are written once.
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    fn dir(&mut self, path: &str) {
        self.parents(path);
        if self.dirs.insert(path.to_owned()) {
            self.entry(path, S_IFDIR | 0o755, (0, 0), &[]);
        }
    }

    fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, S_IFREG | perm, (0, 0), data);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.parents(path);
        self.entry(path, S_IFCHR | 0o600, (major, minor), &[]);
    }

    /// Writes every missing ancestor directory of `path`.
    fn parents(&mut self, path: &str) {
        let mut ancestors: Vec<&str> = Path::new(path)
            .ancestors()
            .skip(1)
            .filter_map(Path::to_str)
            .filter(|p| *p != "/" && !p.is_empty())
            .collect();
        ancestors.reverse();
        for dir in ancestors {
            if self.dirs.insert(dir.to_owned()) {
                self.entry(dir, S_IFDIR | 0o755, (0, 0), &[]);
            }
        }
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_ino += 1;
        // Names in the archive are relative to the root.
        let name = path.trim_start_matches('/');
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible archives
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Header plus name, and data, are each padded to four bytes.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        // The trailer is an entry named TRAILER!!! with no data.
        let name = "TRAILER!!!";
        self.bytes.extend_from_slice(b"070701");
        for field in [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, name.len() as u32 + 1, 0] {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f01)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    /// The archive unpacks with the system's cpio, when it is installed.
    #[test]
    fn archive_is_newc() {
        let mut cpio = Cpio::default();
        cpio.file("/a/b/c.txt", 0o644, b"hello");
        cpio.symlink("/a/link", "b/c.txt");
        cpio.char_device("/dev/console", 5, 1);
        let bytes = cpio.finish();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        for name in [
            "a\0",
            "a/b\0",
            "a/b/c.txt\0",
            "hello",
            "a/link\0",
            "dev\0",
            "TRAILER!!!\0",
        ] {
            assert!(text.contains(name), "{name:?} missing");
        }
        let Ok(mut child) = Command::new("cpio")
            .args(["-i", "-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            return;
        };
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "a\na/b\na/b/c.txt\na/link\ndev\ndev/console\n"
        );
    }
}
