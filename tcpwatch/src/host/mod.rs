//! The host as tcpwatch reads it besides the eBPF programs: the kernel's
//! socket list (`sock_diag`), network namespaces and their sysctls and
//! counters (`netns`), which processes hold which sockets (`owners`, from
//! `/proc`), what a cgroup is (`cgroup`: systemd units, containers), and
//! the clocks events are stamped with (`clock`).
pub mod cgroup;
pub mod clock;
pub mod netns;
pub mod netns_state;
pub mod owners;
pub mod proc_net;
pub mod sock_diag;
