//! Idempotent installation of the eBPF toolchain and test dependencies.
use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// The bpf-linker release known to work with aya 0.14 (see the README).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests drive: `ip` for network namespaces, `nft` to
/// drop packets inside them, `ss` for ground truth, `tmux` to run `tcpwatch
/// top` as a person would and read its screen, `promtool` and `prometheus`
/// for the metrics, rules and a real scrape, `systemd-analyze` for the unit,
/// `hping3` for a SYN flood from spoofed sources.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("nftables", "nft"),
    ("hping3", "hping3"),
    ("tmux", "tmux"),
    ("prometheus", "promtool"),
    ("systemd", "systemd-analyze"),
];

/// Debian packages `cargo xtask vm-test` and `systemd-test` drive: QEMU to
/// boot Debian's kernels, a static busybox for the guest's shell and tools (a
/// dynamic one would do too: the initramfs carries whatever libraries `ldd`
/// lists), the decompressors for the kernels' `.ko.xz` / `.ko.zst` modules,
/// and for systemd-test mmdebstrap (the Debian 12 root file system) and
/// mkfs.ext4 (its disk image, made from a directory without mounting).
const VM_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("busybox-static", "busybox"),
    ("xz-utils", "xz"),
    ("zstd", "zstd"),
    ("mmdebstrap", "mmdebstrap"),
    ("e2fsprogs", "mkfs.ext4"),
];

/// Debian packages `cargo xtask deb` uses: dpkg-shlibdeps, with which
/// cargo-deb computes the package's dependencies on shared libraries.
const DEB_PACKAGES: &[(&str, &str)] = &[("dpkg-dev", "dpkg-shlibdeps")];

/// The cargo-deb release `cargo xtask deb` uses.
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// rust-src for `-Z build-std=core`, and a bpf-linker linked against the
/// same LLVM as rustc (the bitcode rustc emits must be read by the same LLVM).
pub fn toolchain() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .context("rustup is needed to add the rust-src component")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding the rust-src component");
        run(Command::new("rustup").args(["component", "add", "rust-src"]))?;
    }
    let linker = linker_dir()?;
    if linker.bin.join("bpf-linker").is_file()
        && Command::new(linker.bin.join("bpf-linker"))
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute, once)",
        linker.llvm_file
    );
    let lib = linker.prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let real = linker.sysroot.join("lib").join(&linker.llvm_file);
    for name in ["libLLVM.so", linker.llvm_file.as_str()] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&real, &link).with_context(|| format!("cannot link {}", link.display()))?;
    }
    run(Command::new("cargo")
        .args(["install", "--root"])
        .arg(&linker.prefix)
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{}", linker.llvm_major))
        .env("LLVM_PREFIX", &linker.prefix)
        // Keep the install's own build artifacts out of the repository.
        .env_remove("CARGO_TARGET_DIR"))
}

/// cargo-deb, installed once with `cargo install --locked` into
/// `~/.cache/tcpwatch/cargo-deb-VERSION/` (nothing else on the machine is
/// touched); returns the program's path.
pub fn cargo_deb() -> Result<PathBuf> {
    let prefix = cache_dir()?.join(format!("cargo-deb-{CARGO_DEB_VERSION}"));
    let program = prefix.join("bin").join("cargo-deb");
    if Command::new(&program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(program);
    }
    eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION} (about a minute, once)");
    run(Command::new("cargo")
        .args(["install", "--locked", "--root"])
        .arg(&prefix)
        .arg(format!("cargo-deb@{CARGO_DEB_VERSION}"))
        .env_remove("CARGO_TARGET_DIR"))?;
    Ok(program)
}

pub struct LinkerDir {
    pub sysroot: PathBuf,
    pub llvm_file: String,
    pub llvm_major: String,
    pub prefix: PathBuf,
    pub bin: PathBuf,
}

/// Where the private bpf-linker for this toolchain lives. The name embeds the
/// toolchain's libLLVM file, so a toolchain update gets a fresh linker.
/// tcpwatch/build.rs looks for it under the same name.
pub fn linker_dir() -> Result<LinkerDir> {
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["--print", "sysroot"]))?.trim());
    let llvm_file = fs::read_dir(sysroot.join("lib"))
        .with_context(|| format!("cannot list {}/lib", sysroot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .context("this Rust toolchain ships no libLLVM.so to build bpf-linker against")?;
    let version = output(Command::new("rustc").arg("-vV"))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV does not name its LLVM version")?
        .to_owned();
    let prefix = cache_dir()?.join(format!("bpf-linker-{BPF_LINKER_VERSION}-{llvm_file}"));
    let bin = prefix.join("bin");
    Ok(LinkerDir {
        sysroot,
        llvm_file,
        llvm_major,
        prefix,
        bin,
    })
}

pub fn cache_dir() -> Result<PathBuf> {
    let base = match env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("tcpwatch"))
}

pub fn has_program(name: &str) -> bool {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| Path::new(&d).join(name).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(name).is_file())
}

/// Debian packages for the privileged tests, installed only when missing,
/// and the Kubernetes manifests' validator (PyPI, in a virtualenv of its own).
pub fn test_packages() -> Result<()> {
    install_missing(TEST_PACKAGES, "the tests need")?;
    crate::k8s::install()
}

/// Debian packages for `cargo xtask vm-test`, installed only when missing.
pub fn vm_packages() -> Result<()> {
    for program in ["apt-get", "apt-cache", "dpkg-deb", "ldd"] {
        if !has_program(program) {
            bail!("cargo xtask vm-test fetches Debian's kernels with apt and dpkg-deb and reads libraries with ldd; `{program}` is missing");
        }
    }
    install_missing(VM_PACKAGES, "cargo xtask vm-test needs")
}

/// cargo-deb and the Debian packages for `cargo xtask deb`; returns
/// cargo-deb's path.
pub fn deb_tools() -> Result<PathBuf> {
    install_missing(DEB_PACKAGES, "cargo xtask deb needs")?;
    cargo_deb()
}

/// Installs with apt-get the packages of `wanted` whose program is missing.
fn install_missing(wanted: &[(&str, &str)], who_needs: &str) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(_, program)| !has_program(program))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !has_program("apt-get") {
        bail!("{who_needs} the programs of {missing:?}; install them with your package manager");
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    apt_install(&missing)
}

/// `apt-get install` of `packages`, after an update of the lists.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// libbpf-tools, for `tcpstates` as the benchmarks' reference observer.
pub fn bench_packages() -> Result<()> {
    if has_program("tcpstates") {
        return Ok(());
    }
    if !has_program("apt-get") {
        eprintln!("xtask: tcpstates (libbpf-tools) is missing; it is left out of the comparison");
        return Ok(());
    }
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "libbpf-tools",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
