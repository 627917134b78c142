//! Layout discovery against the running kernel's own tracefs format files
//! and BTF (privileged: tracefs may need mounting and is root-only).

use tcpwatch::kernel::loader;
use tcpwatch_common::{FIELD_ABSENT, OFFSETS_SKB, OFFSETS_SOCK};

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("procfs");
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn discovers_the_running_kernels_layouts() {
    if !crate::common::privileged_or_skip("discovers_the_running_kernels_layouts") {
        return;
    }
    let events = loader::tracefs_events().expect("tracefs is there or can be mounted");
    let found = loader::discover(&events).expect("this kernel's formats parse");
    assert!(found
        .tracepoints
        .contains(&"sock:inet_sock_set_state".to_owned()));
    let l = found.layout;
    assert_ne!(l.set_state.skaddr, FIELD_ABSENT);
    assert_ne!(l.set_state.new_state, FIELD_ABSENT);
    assert_eq!(
        l.kernel.valid & OFFSETS_SOCK,
        OFFSETS_SOCK,
        "struct offsets from BTF"
    );
    assert_eq!(
        l.kernel.valid & OFFSETS_SKB,
        OFFSETS_SKB,
        "struct offsets from BTF"
    );

    let version = kernel_version();
    // `err` arrived in tcp_retransmit_skb with 6.17; the reason in tcp_send_reset with 6.10.
    assert_eq!(
        l.retransmit_skb.err != FIELD_ABSENT,
        version >= (6, 17),
        "kernel {version:?}"
    );
    assert_eq!(
        l.send_reset.sockaddr == 1,
        version >= (6, 10),
        "kernel {version:?}"
    );
    if version >= (6, 10) {
        assert_eq!(found.reasons.reset_name(1), "NO_SOCKET");
    }
    // Drops are counted where skb:kfree_skb names the socket (6.12+), by
    // the names this kernel gives its reasons.
    assert_eq!(
        found.reasons.drops_counted(),
        version >= (6, 12),
        "kernel {version:?}"
    );
    if version >= (6, 12) {
        assert_eq!(l.kfree_skb.skaddr, 24, "rx_sk");
        let zero_window = found.reasons.drop_number("TCP_ZEROWINDOW");
        assert!(zero_window.is_some(), "kernel {version:?}");
        assert_eq!(
            zero_window.map(|n| found.reasons.drop_name(n)),
            Some("TCP_ZEROWINDOW".to_owned())
        );
    }
    // The stored 6.18 formats match the live ones on a 6.18 kernel.
    if version.0 == 6 && version.1 == 18 {
        let stored = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/formats-6.18/tcp__tcp_retransmit_skb"
        ))
        .expect("test data");
        let live =
            std::fs::read_to_string(events.join("tcp/tcp_retransmit_skb/format")).expect("tracefs");
        let fields = |t: &str| {
            t.lines()
                .filter(|l| l.trim_start().starts_with("field:"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(&stored), fields(&live));
    }
}
