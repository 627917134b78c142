//! The kernel side: what runs there and how tcpwatch talks to it.
//!
//! `tracefs` reads the running kernel's tracepoint formats and `btf` the
//! offsets of the struct fields the programs read; `loader` loads and
//! attaches the eBPF programs with that layout, seeds their maps, reads
//! their counters and hands out the ring buffer; `event` decodes its
//! records; `privilege` drops what tcpwatch no longer needs once attached.
pub mod btf;
pub mod event;
pub mod loader;
pub mod privilege;
pub mod tracefs;
