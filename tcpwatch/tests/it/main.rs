//! tcpwatch's integration tests, one binary with a module per area. Most
//! are privileged (root, the eBPF programs, a network namespace each) and
//! `#[ignore]`d with their reason, so a plain `cargo test` lists them as
//! ignored; `cargo xtask test` runs them all (`--include-ignored`), and one
//! that cannot run fails. They drive real sockets through the test peer
//! (`tcpwatch-test-peer`, test-peer/main.rs) and check tcpwatch against
//! the kernel (`ss`, TcpExt) and what the test itself did.
mod common;

mod attribution;
mod audit;
mod cli;
mod daemon;
mod dashboard;
mod deploy;
mod false_findings;
mod faults;
mod findings;
mod fuzz;
mod layout_live;
mod regressions;
mod test_peer;
mod top;
mod trace;
mod units;
