//! tcpwatch's kernel programs: tracepoints on the TCP connection lifecycle.
//!
//! Every program reads its tracepoint record at offsets that userspace
//! discovered at start-up (the `LAYOUT` global), so one object runs on
//! kernels whose record layouts differ.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod accept;
#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod io;
#[cfg(target_arch = "bpf")]
mod lifecycle;
#[cfg(target_arch = "bpf")]
mod reset;
#[cfg(target_arch = "bpf")]
mod retransmit;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
