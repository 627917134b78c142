//! `cargo xtask hold`: opens N loopback connections and keeps them open, so
//! the memory benchmark can measure tcpwatch with 2N tracked sockets (both
//! ends of each connection). Run inside a namespace made for it.
use std::{
    io::{BufRead, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
};

use anyhow::{bail, Context as _, Result};

/// Loopback connections per server port: fewer than the ephemeral range
/// (28,232 ports by default), so every connection finds a 4-tuple.
const PER_PORT: usize = 25_000;
/// Connections one holder keeps: two descriptors each, within the hard
/// open-file limit a process without CAP_SYS_RESOURCE cannot raise (often
/// 20,000). The benchmark starts as many holders as it needs.
pub const PER_HOLDER: usize = 9_000;

/// Raises the soft open-file limit to the hard one if `wanted` needs it.
fn raise_nofile(wanted: u64) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write one valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!(
                "cannot read the open-file limit: {}",
                std::io::Error::last_os_error()
            );
        }
        if wanted > limit.rlim_max {
            bail!(
                "{wanted} descriptors are more than the hard limit ({})",
                limit.rlim_max
            );
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!(
                "cannot raise the open-file limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Opens `connections` connections, prints `ready`, and holds them until
/// standard input closes.
pub fn hold(connections: usize) -> Result<()> {
    raise_nofile(2 * connections as u64 + 64)?;
    let ports = connections.div_ceil(PER_PORT).max(1);
    let accepted: Arc<Mutex<Vec<TcpStream>>> =
        Arc::new(Mutex::new(Vec::with_capacity(connections)));
    let mut addresses = Vec::new();
    for _ in 0..ports {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen")?;
        addresses.push(listener.local_addr()?);
        let accepted = accepted.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Ok(mut held) = accepted.lock() {
                    held.push(stream);
                }
            }
        });
    }
    let mut clients = Vec::with_capacity(connections);
    for i in 0..connections {
        let to = addresses[i % ports];
        clients.push(TcpStream::connect(to).with_context(|| format!("connection {i} to {to}"))?);
    }
    while accepted.lock().map(|h| h.len()).unwrap_or(0) < connections {
        thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("ready");
    std::io::stdout().flush()?;
    // Held until the benchmark closes our standard input.
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line)? > 0 {}
    drop(clients);
    Ok(())
}
