//! Builds the eBPF programs with aya-build and leaves the object in OUT_DIR.
//!
//! When the eBPF toolchain is missing (no bpf-linker, no rust-src) or
//! AYA_BUILD_SKIP is set, an empty object is written instead, so that
//! `cargo build` and `cargo test` of the userspace still work; tcpwatch then
//! says at run time how to get the real thing.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use aya_build::{Package, Toolchain};

fn main() {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    for var in ["PATH", "HOME", "XDG_CACHE_HOME", "RUSTUP_TOOLCHAIN"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("tcpwatch");

    if let Some(reason) = skip_reason() {
        println!("cargo:warning=building tcpwatch WITHOUT its eBPF programs: {reason}; run `cargo xtask setup` to install the eBPF toolchain");
        fs::write(&object, []).expect("OUT_DIR is writable");
        println!("cargo:rustc-env=TCPWATCH_EBPF_STATUS=missing: {reason}");
        return;
    }

    // The eBPF crate needs -Z build-std=core; the stable toolchain allows it
    // only with RUSTC_BOOTSTRAP, which we set for that child build alone.
    // SAFETY (edition 2021 set_var): build scripts are single-threaded here.
    env::set_var("RUSTC_BOOTSTRAP", "1");
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    let package = Package {
        name: "tcpwatch-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tcpwatch-ebpf"),
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], Toolchain::Custom(&toolchain)) {
        panic!("building the eBPF programs failed: {e:#}");
    }
    println!("cargo:rustc-env=TCPWATCH_EBPF_STATUS=included");
}

/// Why the eBPF object cannot be built here, if it cannot.
fn skip_reason() -> Option<String> {
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        return Some("AYA_BUILD_SKIP is set".to_owned());
    }
    let sysroot = rustc_sysroot()?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Some("the rust-src component is not installed".to_owned());
    }
    if find_in_path("bpf-linker").is_some() {
        return None;
    }
    match private_linker_dir(&sysroot) {
        Some(dir) => {
            // Put the linker `cargo xtask setup` built for this toolchain on PATH.
            let path = env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![dir];
            dirs.extend(env::split_paths(&path));
            env::set_var(
                "PATH",
                env::join_paths(dirs).expect("PATH entries are valid"),
            );
            None
        }
        None => Some("bpf-linker is not installed".to_owned()),
    }
}

fn rustc_sysroot() -> Option<PathBuf> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    Some(PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// `cargo xtask setup` installs bpf-linker under
/// `~/.cache/tcpwatch/bpf-linker-<version>-<libLLVM file of the toolchain>/bin`.
fn private_linker_dir(sysroot: &Path) -> Option<PathBuf> {
    let llvm = fs::read_dir(sysroot.join("lib"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))?;
    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
        .join("tcpwatch");
    println!("cargo:rerun-if-changed={}", cache.display());
    fs::read_dir(&cache)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&format!("-{llvm}")))
        })
        .map(|p| p.join("bin"))
        .find(|bin| bin.join("bpf-linker").is_file())
}
