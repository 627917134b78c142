#![no_std]
//! Empty library target: lets `tcpwatch` name this crate as a build dependency,
//! so cargo rebuilds the eBPF object when the programs change.
