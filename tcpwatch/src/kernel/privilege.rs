//! Giving up privilege once the programs are attached: what the rest of
//! tcpwatch's life (the ring buffer consumer, the model, the HTTP server)
//! needs is far less than what loading needed.
//!
//! Capabilities are per thread: this runs on the thread that loaded the
//! programs, before any other long-lived thread exists, and every thread
//! created later inherits the reduced sets.

use rustix::thread::{self as thread, CapabilitySet, CapabilitySets};

/// What stays after attach, and why. Everything else is dropped from the
/// effective, permitted, inheritable, ambient and bounding sets.
pub const KEPT: [(CapabilitySet, &str, &str); 4] = [
    (
        CapabilitySet::BPF,
        "CAP_BPF",
        "reading and resetting tcpwatch's own maps (fd-based on recent kernels; kept for older ones)",
    ),
    (
        CapabilitySet::SYS_ADMIN,
        "CAP_SYS_ADMIN",
        "setns() into other network namespaces to reconcile them with sock_diag",
    ),
    (
        CapabilitySet::SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "opening /proc/PID/ns/net of other users' processes to find their namespaces",
    ),
    (
        CapabilitySet::DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH",
        "searching /proc/PID directories of other users' processes",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read this thread's capabilities: {0}")]
    Read(std::io::Error),
    #[error("cannot lower this thread's capabilities: {0}")]
    Set(std::io::Error),
}

fn kept() -> CapabilitySet {
    KEPT.iter()
        .fold(CapabilitySet::empty(), |m, (cap, _, _)| m | *cap)
}

fn get() -> Result<CapabilitySets, PrivilegeError> {
    thread::capabilities(None).map_err(|e| PrivilegeError::Read(e.into()))
}

/// This thread's effective capabilities.
pub fn effective() -> Result<CapabilitySet, PrivilegeError> {
    get().map(|sets| sets.effective)
}

/// Whether this thread may load and attach tracing programs: CAP_SYS_ADMIN,
/// or CAP_BPF with CAP_PERFMON (5.8+).
pub fn can_load_programs() -> bool {
    effective().is_ok_and(|caps| {
        caps.contains(CapabilitySet::SYS_ADMIN)
            || caps.contains(CapabilitySet::BPF | CapabilitySet::PERFMON)
    })
}

/// Drops every capability but [`KEPT`] from this thread (and so from every
/// thread it creates later), and forbids gaining privilege through exec.
/// Returns the effective set left.
pub fn drop_after_attach() -> Result<CapabilitySet, PrivilegeError> {
    let keep = kept() & get()?.permitted;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which
    // goes with the rest below.
    if get()?.permitted.contains(CapabilitySet::SETPCAP) {
        for bit in 0..64u32 {
            let cap = CapabilitySet::from_bits_retain(1 << bit);
            if !keep.contains(cap) {
                // EINVAL past the kernel's last capability is expected.
                let _ = thread::remove_capability_from_bounding_set(cap);
            }
        }
    }
    // Neither can fail on the supported kernels (4.3+ for the ambient set);
    // if one did, the capability sets below still bound what is left.
    let _ = thread::clear_ambient_capability_set();
    let _ = thread::set_no_new_privs(true);
    thread::set_capabilities(
        None,
        CapabilitySets {
            effective: keep,
            permitted: keep,
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(|e| PrivilegeError::Set(e.into()))?;
    effective()
}

/// Names of the capabilities in `set` that tcpwatch knows.
pub fn names(set: CapabilitySet) -> Vec<&'static str> {
    KEPT.iter()
        .filter(|(cap, _, _)| set.contains(*cap))
        .map(|(_, name, _)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_set_is_four_capabilities() {
        assert_eq!(kept().bits().count_ones(), 4);
        assert_eq!(
            names(kept()),
            [
                "CAP_BPF",
                "CAP_SYS_ADMIN",
                "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH"
            ]
        );
    }

    /// In a thread of its own, so the test process keeps its privileges.
    #[test]
    fn dropping_leaves_at_most_the_kept_set() {
        let left = std::thread::spawn(drop_after_attach)
            .join()
            .expect("the thread ends")
            .expect("dropping capabilities never needs a capability");
        assert!(kept().contains(left), "{left:?}");
    }
}
