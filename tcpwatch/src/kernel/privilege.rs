//! Giving up privilege once the programs are attached: what the rest of
//! tcpwatch's life (the ring buffer consumer, the model, the HTTP server)
//! needs is far less than what loading needed.
//!
//! Capabilities are per thread: this runs on the thread that loaded the
//! programs, before any other long-lived thread exists, and every thread
//! created later inherits the reduced sets.

/// What stays after attach, and why. Everything else is dropped from the
/// effective, permitted, inheritable, ambient and bounding sets.
pub const KEPT: [(u32, &str, &str); 4] = [
    (
        39,
        "CAP_BPF",
        "reading and resetting tcpwatch's own maps (fd-based on recent kernels; kept for older ones)",
    ),
    (
        21,
        "CAP_SYS_ADMIN",
        "setns() into other network namespaces to reconcile them with sock_diag",
    ),
    (
        19,
        "CAP_SYS_PTRACE",
        "opening /proc/PID/ns/net of other users' processes to find their namespaces",
    ),
    (
        2,
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

/// `struct __user_cap_header_struct` (include/uapi/linux/capability.h).
#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`; version 3 uses two of them.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;
const CAP_SETPCAP: u32 = 8;

fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |m, (bit, _, _)| m | 1 << bit)
}

fn get() -> Result<[Data; 2], PrivilegeError> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two Data structs for version 3, as allocated.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(PrivilegeError::Read(std::io::Error::last_os_error()));
    }
    Ok(data)
}

fn mask(data: &[Data; 2], pick: fn(&Data) -> u32) -> u64 {
    u64::from(pick(&data[0])) | u64::from(pick(&data[1])) << 32
}

/// Drops every capability but [`KEPT`] from this thread (and so from every
/// thread it creates later), and forbids gaining privilege through exec.
/// Returns the effective set left.
pub fn drop_after_attach() -> Result<u64, PrivilegeError> {
    let current = get()?;
    let permitted = mask(&current, |d| d.permitted);
    let keep = kept_mask() & permitted;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which
    // goes with the rest below.
    if permitted & (1 << CAP_SETPCAP) != 0 {
        for cap in 0..64u32 {
            if keep & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments; EINVAL past the
                // kernel's last capability is expected and ignored.
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: keep as u32,
            permitted: keep as u32,
            inheritable: 0,
        },
        Data {
            effective: (keep >> 32) as u32,
            permitted: (keep >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads two Data structs for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(PrivilegeError::Set(std::io::Error::last_os_error()));
    }
    Ok(mask(&get()?, |d| d.effective))
}

/// Names of the capabilities in `mask` that tcpwatch knows.
pub fn names(mask: u64) -> Vec<&'static str> {
    KEPT.iter()
        .filter(|(bit, _, _)| mask & (1 << bit) != 0)
        .map(|(_, name, _)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_set_is_four_capabilities() {
        assert_eq!(kept_mask().count_ones(), 4);
        assert_eq!(
            names(kept_mask()),
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
        assert_eq!(left & !kept_mask(), 0, "{left:#x}");
    }
}
