//! tcpwatch: an eBPF observer of the Linux TCP connection lifecycle.
//!
//! The library holds everything below the command line so tests and later
//! subcommands can use the decoding, filtering and rendering without a kernel.
pub mod audit;
pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod diag;
pub mod event;
pub mod filter;
pub mod finding;
pub mod layout;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod observer;
pub mod output;
pub mod privilege;
pub mod records;
pub mod session;
pub mod snapshot;
pub mod summary;
pub mod web;
