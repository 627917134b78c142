//! Helper processes of the attribution and regression tests, each with
//! the command names the tests look for: `--role ROLE`.
use crate::set_comm;
use std::{
    io::{BufRead, Write},
    os::unix::process::CommandExt,
    process::Command,
    thread,
    time::Duration,
};

/// Runs helper `role`: `prefork:MODE` and `heir:PORT` (regressions.rs),
/// the others (attribution.rs).
pub fn run(role: &str) {
    if let Some(mode) = role.strip_prefix("prefork:") {
        prefork_role(mode);
    } else if let Some(port) = role.strip_prefix("heir:") {
        heir_role(port.parse().expect("a port"));
    } else {
        attribution_role(role);
    }
}

/// This binary again as helper `role` (`before` execs itself as `after`).
fn role_command(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.args(["--role", role]);
    cmd
}

/// Helpers of the attribution tests (tests/it/attribution.rs).
///
/// `before:PORT`: as `r13-before`, connects to 127.0.0.1:PORT, then execs
/// this same binary (same pid) as `after:FD`, keeping the connection.
/// `after:FD`: as `r13-after`, sends 5 bytes on FD, says so, and holds it.
fn attribution_role(role: &str) {
    if let Some(port) = role.strip_prefix("before:") {
        set_comm("r13-before");
        let conn = std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap()))
            .expect("connect");
        let local = conn.local_addr().unwrap().port();
        // dup() clears FD_CLOEXEC: the exec keeps the connection.
        let fd = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&conn)) };
        println!("@@ {local} {}", std::process::id());
        let _ = std::io::stdout().flush();
        let e = role_command(&format!("after:{fd}")).exec();
        panic!("exec failed: {e}");
    }
    if role == "sharer" {
        // Accepts one connection and forks a handler; both keep it (the
        // parent forgot to close its copy). The handler reads the request
        // (here: the peer's FIN) half a second later, then holds it.
        set_comm("r13-parent");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        println!("@@ {}", listener.local_addr().unwrap().port());
        let _ = std::io::stdout().flush();
        let (conn, _) = listener.accept().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&conn);
        let name = c"r13-handler";
        // SAFETY: the child only makes raw system calls.
        let handler = unsafe { libc::fork() };
        if handler == 0 {
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
                let half = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 500_000_000,
                };
                libc::nanosleep(&half, std::ptr::null_mut());
                let mut buf = [0u8; 64];
                libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                loop {
                    libc::pause();
                }
            }
        }
        println!("@@ {handler}");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        drop(conn);
        return;
    }
    if let Some(port) = role.strip_prefix("giveup:") {
        // A client of a black-holed server: sends, waits 1.5 s for an
        // answer that never comes, gives up and exits (the kernel keeps
        // retransmitting the orphan).
        // Not connecting is a failure: the test's situation never arose.
        let mut c = match std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap()))
        {
            Ok(c) => c,
            Err(e) => fail(&format!("giveup: cannot connect: {e}")),
        };
        let _ = c.write_all(&[7u8; 1000]);
        thread::sleep(Duration::from_millis(1500));
        return;
    }
    if let Some(n) = role.strip_prefix("hog:") {
        // Many descriptors (what a busy host has): every holders scan
        // reads each one's link.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system calls on our own limits and descriptors.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            for _ in 0..n.parse::<usize>().unwrap().min(lim.rlim_max as usize - 100) {
                libc::dup(null);
            }
        }
        println!("@@ ready");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        return;
    }
    if let Some(fd) = role.strip_prefix("after:") {
        set_comm("r13-after");
        let fd: i32 = fd.parse().unwrap();
        // SAFETY: a send on the inherited descriptor.
        let sent = unsafe { libc::send(fd, b"hello".as_ptr().cast(), 5, 0) };
        println!("@@ sent {sent}");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        return;
    }
    fail(&format!("unknown role {role:?}"));
}

/// A helper that cannot do what it was asked ends the process with a
/// failure status: a test must never go on as if the situation arose.
fn fail(why: &str) -> ! {
    eprintln!("tcpwatch-test-peer: {why}");
    std::process::exit(1)
}

/// The master listens on 127.0.0.1 (comm `rv-master`) and forks a worker
/// (comm `rv-worker`) that accepts one connection and then, by `mode`,
/// writes until the peer's window is shut (`fill`) or sends 5 bytes 1.5 s
/// later (`send`). The accepted socket is held only by the worker.
fn prefork_role(mode: &str) {
    set_comm("rv-master");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let fill = match mode {
        "fill" => true,
        "send" => false,
        other => fail(&format!("unknown prefork mode {other:?}")),
    };
    let worker_name = std::ffi::CString::new("rv-worker").unwrap();
    // SAFETY: the child only makes raw system calls, then _exit.
    let worker = unsafe { libc::fork() };
    if worker == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::prctl(
                libc::PR_SET_NAME,
                worker_name.as_ptr() as libc::c_ulong,
                0,
                0,
                0,
            );
            let conn = libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut());
            libc::close(fd);
            let buf = [7u8; 65536];
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 20_000_000,
            };
            if fill {
                libc::fcntl(conn, libc::F_SETFL, libc::O_NONBLOCK);
                let mut idle = 0;
                while idle < 20 {
                    if libc::send(conn, buf.as_ptr().cast(), buf.len(), 0) < 0 {
                        idle += 1;
                        libc::nanosleep(&pause, std::ptr::null_mut());
                    } else {
                        idle = 0;
                    }
                }
            } else {
                let later = libc::timespec {
                    tv_sec: 1,
                    tv_nsec: 500_000_000,
                };
                libc::nanosleep(&later, std::ptr::null_mut());
                libc::send(conn, buf.as_ptr().cast(), 5, 0);
            }
            loop {
                libc::pause();
            }
        }
    }
    println!("@@ {port} {worker}");
    let _ = std::io::stdout().flush();
    // Until told to stop (or stdin closes): then the worker dies with us.
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    // SAFETY: a kill of our own child.
    unsafe { libc::kill(worker, libc::SIGKILL) };
}

/// A process (comm `rv-parent`) connects to 127.0.0.1:`port`, forks an
/// heir (comm `rv-heir`) that keeps the socket, prints both pids and exits
/// at once, as a daemonizing process does.
fn heir_role(port: u16) {
    set_comm("rv-parent");
    let conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local = conn.local_addr().unwrap().port();
    let name = std::ffi::CString::new("rv-heir").unwrap();
    // SAFETY: the child only makes raw system calls.
    let heir = unsafe { libc::fork() };
    if heir == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
            // Let go of the parent's stdout, so whoever reads it sees EOF.
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            // Hold the socket (never close it) until killed.
            loop {
                libc::pause();
            }
        }
    }
    println!("@@ {local} {} {heir}", std::process::id());
    let _ = std::io::stdout().flush();
    // SAFETY: exits without running destructors; the heir keeps the socket.
    unsafe { libc::_exit(0) };
}
