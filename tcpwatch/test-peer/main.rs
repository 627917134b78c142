//! The test peer of tcpwatch's privileged tests (`tcpwatch/tests/it`): a
//! process with the command name given as its argument, run inside a test's
//! network namespace, that opens, accepts, sends, forks and closes sockets
//! as the test tells it on stdin, one command a line, and answers each on
//! stdout (`@@ ok ...` or `@@ err ...`); or, with `--role ROLE`, one of
//! the helper processes of the attribution and regression tests (roles.rs).
//! Not part of tcpwatch: built for the tests only, and not packaged.
use std::{
    io::{BufRead, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

mod roles;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, role] if flag == "--role" => roles::run(role),
        [comm] => peer_loop(comm),
        _ => {
            eprintln!("usage: tcpwatch-test-peer COMM (commands on stdin) | --role ROLE");
            std::process::exit(2);
        }
    }
}

/// The peer side: a command interpreter over stdin, replies on stdout.
/// Takes `name` as this process's command name, what `ps`, `ss -p` and
/// tcpwatch see (`/proc/self/comm`); a peer that cannot is no peer.
fn set_comm(name: &str) {
    let c = std::ffi::CString::new(name).expect("comm has no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
    std::fs::write("/proc/self/comm", name).expect("can rename the process");
}

fn peer_loop(comm: &str) {
    use socket2::{Domain, SockAddr, Socket, Type};
    set_comm(comm);
    let mut listener: Option<Socket> = None;
    let mut conn: Option<Socket> = None;
    let mut kept: Vec<Socket> = Vec::new();
    let mut daemon_pipes: Vec<libc::c_int> = Vec::new();
    let reply = |s: String| {
        println!("@@ {s}");
        let _ = std::io::stdout().flush();
    };
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let result: Result<String, String> = match words.as_slice() {
            ["hello"] => Ok(String::new()),
            ["listen", addr, backlog] => (|| {
                let addr: SocketAddr = format!("{}:0", bracket(addr))
                    .parse()
                    .map_err(|e| format!("{e}"))?;
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
                    .map_err(|e| e.to_string())?;
                s.set_reuse_address(true).map_err(|e| e.to_string())?;
                s.bind(&SockAddr::from(addr)).map_err(|e| e.to_string())?;
                s.listen(backlog.parse().map_err(|_| "bad backlog".to_owned())?)
                    .map_err(|e| e.to_string())?;
                let port = local_port(&s);
                listener = Some(s);
                Ok(port.to_string())
            })(),
            ["connect", addr, port] | ["connect_from", _, addr, port] => (|| {
                let addr: SocketAddr = format!("{}:{port}", bracket(addr))
                    .parse()
                    .map_err(|e| format!("{e}"))?;
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
                    .map_err(|e| e.to_string())?;
                if let ["connect_from", local_port, ..] = words.as_slice() {
                    // A fixed source port, as the tw_reuse test needs.
                    let local: SocketAddr =
                        format!("{}:{local_port}", bracket(&addr.ip().to_string()))
                            .parse()
                            .map_err(|e| format!("{e}"))?;
                    s.set_reuse_address(true).map_err(|e| e.to_string())?;
                    s.bind(&SockAddr::from(local))
                        .map_err(|e| format!("bind: {e}"))?;
                }
                s.connect(&SockAddr::from(addr))
                    .map_err(|e| format!("{:?}", e.kind()))?;
                let port = local_port(&s);
                conn = Some(s);
                Ok(port.to_string())
            })(),
            // N clients at once: non-blocking connects, then a wait until
            // each is writable (connected, or failed). Kept open; replies
            // with how many connected.
            ["connect_many", addr, port, n] => (|| {
                let addr: SocketAddr = format!("{}:{port}", bracket(addr))
                    .parse()
                    .map_err(|e| format!("{e}"))?;
                let n: usize = n.parse().map_err(|_| "bad count".to_owned())?;
                let mut socks = Vec::with_capacity(n);
                for _ in 0..n {
                    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
                        .map_err(|e| e.to_string())?;
                    s.set_nonblocking(true).map_err(|e| e.to_string())?;
                    match s.connect(&SockAddr::from(addr)) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                    socks.push(s);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut connected = 0;
                for s in &socks {
                    let mut pfd = libc::pollfd {
                        fd: std::os::fd::AsRawFd::as_raw_fd(s),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    let left = deadline.saturating_duration_since(Instant::now());
                    let left = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&mut pfd, 1, left) };
                    if matches!(s.take_error(), Ok(None)) && s.peer_addr().is_ok() {
                        connected += 1;
                    }
                }
                kept.extend(socks);
                Ok(connected.to_string())
            })(),
            ["accept"] => match listener.as_ref().map(|l| l.accept()) {
                Some(Ok((s, peer))) => {
                    let port = peer.as_socket().map(|a| a.port()).unwrap_or(0);
                    conn = Some(s);
                    Ok(port.to_string())
                }
                Some(Err(e)) => Err(e.to_string()),
                None => Err("no listener".into()),
            },
            ["fork_accept", name] => {
                // A pre-fork server's worker: a child process accepts on the
                // inherited listener; it replies itself once it has accepted.
                let Some(fd) = listener.as_ref().map(std::os::fd::AsRawFd::as_raw_fd) else {
                    reply("err no listener".into());
                    continue;
                };
                let name = std::ffi::CString::new(*name).expect("comm has no NUL");
                // SAFETY: the child only makes raw system calls before _exit.
                match unsafe { libc::fork() } {
                    0 => unsafe { forked_acceptor(fd, &name) },
                    -1 => Err(std::io::Error::last_os_error().to_string()),
                    _ => continue,
                }
            }
            // A worker process of the same comm that accepts K connections
            // and never closes them (CLOSE_WAIT once the peers close); it
            // replies with its pid once it has accepted them all and dies
            // with this peer.
            ["fork_accept_leak", k] => {
                let Some(fd) = listener.as_ref().map(std::os::fd::AsRawFd::as_raw_fd) else {
                    reply("err no listener".into());
                    continue;
                };
                let k: usize = match k.parse() {
                    Ok(k) => k,
                    Err(_) => {
                        reply("err bad count".into());
                        continue;
                    }
                };
                // SAFETY: the child only makes raw system calls before _exit.
                match unsafe { libc::fork() } {
                    0 => unsafe { forked_leaker(fd, k) },
                    -1 => Err(std::io::Error::last_os_error().to_string()),
                    _ => continue,
                }
            }
            // Fork after accept (inetd, socat fork, sshd): this process
            // accepts, forks a handler that keeps the connection (and, with
            // `exec`, runs `sleep` with it inherited), and closes its own
            // copy. Replies with the handler's pid.
            ["fork_handler", mode] => {
                let Some(fd) = listener.as_ref().map(std::os::fd::AsRawFd::as_raw_fd) else {
                    reply("err no listener".into());
                    continue;
                };
                let exec = *mode == "exec";
                let read = *mode == "read";
                // SAFETY: plain system calls; the child only makes system
                // calls (and exec) before _exit.
                unsafe {
                    // No SOCK_CLOEXEC: the handler's exec keeps it.
                    let accepted = libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut());
                    if accepted < 0 {
                        Err(std::io::Error::last_os_error().to_string())
                    } else {
                        match libc::fork() {
                            0 => forked_handler(accepted, exec, read),
                            -1 => Err(std::io::Error::last_os_error().to_string()),
                            child => {
                                libc::close(accepted);
                                Ok(child.to_string())
                            }
                        }
                    }
                }
            }
            // A daemon: a launcher process calls listen(), forks the daemon
            // (comm NAME) and exits; the daemon accepts connections and
            // keeps them until this peer ends. The launcher replies with
            // the port, the daemon's pid and its own.
            ["daemonize", name] | ["daemonize_idle", name] => {
                let accepts = words[0] == "daemonize";
                let name = std::ffi::CString::new(*name).expect("comm has no NUL");
                let mut pipe = [0 as libc::c_int; 2];
                // SAFETY: pipe() fills the array; fork's children only make
                // system calls before _exit.
                unsafe {
                    if libc::pipe(pipe.as_mut_ptr()) != 0 {
                        reply(format!("err pipe: {}", std::io::Error::last_os_error()));
                        continue;
                    }
                    match libc::fork() {
                        0 => daemon_launcher(pipe, &name, accepts),
                        -1 => reply(format!("err fork: {}", std::io::Error::last_os_error())),
                        launcher => {
                            libc::close(pipe[0]);
                            // The daemon sees EOF on the pipe once this peer ends.
                            daemon_pipes.push(pipe[1]);
                            libc::waitpid(launcher, std::ptr::null_mut(), 0);
                        }
                    }
                }
                continue;
            }
            ["linger0"] => conn
                .as_ref()
                .ok_or("no connection".to_owned())
                .and_then(|c| {
                    c.set_linger(Some(std::time::Duration::ZERO))
                        .map_err(|e| e.to_string())
                })
                .map(|()| String::new()),
            ["send", text] => conn
                .as_ref()
                .ok_or("no connection".to_owned())
                .and_then(|c| c.send(text.as_bytes()).map_err(|e| e.to_string()))
                .map(|n| n.to_string()),
            ["read_eof"] => (|| {
                let c = conn.as_ref().ok_or("no connection".to_owned())?;
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
                loop {
                    match c.recv(&mut buf) {
                        Ok(0) => return Ok(String::new()),
                        Ok(_) => continue,
                        Err(e) => return Err(format!("{:?}", e.kind())),
                    }
                }
            })(),
            // Writes for SECS seconds, as fast as the path takes it; replies
            // with the bytes written.
            ["stream", secs] => (|| {
                let c = conn.as_ref().ok_or("no connection".to_owned())?;
                let secs: f64 = secs.parse().map_err(|_| "bad seconds".to_owned())?;
                let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
                let chunk = [7u8; 16384];
                let mut sent = 0usize;
                while std::time::Instant::now() < until {
                    sent += c.send(&chunk).map_err(|e| e.to_string())?;
                }
                Ok(sent.to_string())
            })(),
            // N connections from fixed source ports that the server closes
            // first (server-side TIME_WAIT), then, after a pause, N new
            // connections from the same ports within a moment, each taking
            // over its TIME_WAIT 4-tuple. Replies with the server's port.
            ["tw_burst", n, base] => (|| {
                let n: u16 = n.parse().map_err(|_| "bad count".to_owned())?;
                let base: u16 = base.parse().map_err(|_| "bad port".to_owned())?;
                let server =
                    std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
                let port = server.local_addr().map_err(|e| e.to_string())?.port();
                let dial = |source: u16| -> Result<Socket, String> {
                    let s =
                        Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
                    s.set_reuse_address(true).map_err(|e| e.to_string())?;
                    let local: SocketAddr = format!("127.0.0.1:{source}")
                        .parse()
                        .map_err(|e| format!("{e}"))?;
                    s.bind(&SockAddr::from(local))
                        .map_err(|e| format!("bind {source}: {e}"))?;
                    let remote: SocketAddr = format!("127.0.0.1:{port}")
                        .parse()
                        .map_err(|e| format!("{e}"))?;
                    s.connect(&SockAddr::from(remote))
                        .map_err(|e| format!("connect {source}: {e}"))?;
                    Ok(s)
                };
                for i in 0..n {
                    let c = dial(base + i)?;
                    let (accepted, _) = server.accept().map_err(|e| e.to_string())?;
                    drop(accepted);
                    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 16];
                    while matches!(c.recv(&mut buf), Ok(k) if k > 0) {}
                }
                std::thread::sleep(std::time::Duration::from_millis(1100));
                let mut kept = Vec::new();
                for i in 0..n {
                    let c = dial(base + i)?;
                    kept.push((c, server.accept().map_err(|e| e.to_string())?));
                }
                Ok(port.to_string())
            })(),
            // Reads the connection to its end on a thread of its own.
            ["drain"] => conn
                .as_ref()
                .ok_or("no connection".to_owned())
                .and_then(|c| c.try_clone().map_err(|e| e.to_string()))
                .map(|c| {
                    std::thread::spawn(move || {
                        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 65536];
                        while matches!(c.recv(&mut buf), Ok(n) if n > 0) {}
                    });
                    String::new()
                }),
            // Writes until the send buffer is full (the peer's window shut);
            // replies with the bytes written.
            ["fill"] => (|| {
                let c = conn.as_ref().ok_or("no connection".to_owned())?;
                c.set_nonblocking(true).map_err(|e| e.to_string())?;
                let chunk = [7u8; 65536];
                let mut sent = 0usize;
                let mut idle = 0;
                // Autotuning grows the buffers while the first bytes land:
                // full means EAGAIN several times in a row.
                while idle < 20 {
                    match c.send(&chunk) {
                        Ok(n) => {
                            sent += n;
                            idle = 0;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            idle += 1;
                            std::thread::sleep(std::time::Duration::from_millis(20));
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                c.set_nonblocking(false).map_err(|e| e.to_string())?;
                Ok(sent.to_string())
            })(),
            ["close"] => {
                conn = None;
                Ok(String::new())
            }
            // Reads once, waiting for data; replies with the bytes read.
            ["recv"] => conn
                .as_ref()
                .ok_or("no connection".to_owned())
                .and_then(|c| {
                    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 65536];
                    c.recv(&mut buf).map_err(|e| e.to_string())
                })
                .map(|n| n.to_string()),
            ["shutdown_wr"] => conn
                .as_ref()
                .ok_or("no connection".to_owned())
                .and_then(|c| {
                    c.shutdown(std::net::Shutdown::Write)
                        .map_err(|e| e.to_string())
                })
                .map(|()| String::new()),
            // shutdown(SHUT_RDWR): the socket stays held, reading nothing more.
            ["shutdown_both"] => conn
                .as_ref()
                .ok_or("no connection".to_owned())
                .and_then(|c| {
                    c.shutdown(std::net::Shutdown::Both)
                        .map_err(|e| e.to_string())
                })
                .map(|()| String::new()),
            // Keep the connection open (never closed: a leak) and free the slot.
            ["keepalive"] => conn
                .as_ref()
                .ok_or("no connection".to_owned())
                .and_then(|c| c.set_keepalive(true).map_err(|e| e.to_string()))
                .map(|()| String::new()),
            ["keep"] => {
                kept.extend(conn.take());
                Ok(kept.len().to_string())
            }
            ["close_kept"] => {
                kept.clear();
                Ok(String::new())
            }
            ["close_listener"] => {
                listener = None;
                Ok(String::new())
            }
            ["exit"] => break,
            other => Err(format!("unknown command {other:?}")),
        };
        match result {
            Ok(s) => reply(format!("ok {s}")),
            Err(e) => reply(format!("err {e}")),
        }
    }
}

/// The child of `fork_accept`: accept, reply with its pid, wait for the
/// peer to close, close, exit.
///
/// # Safety
/// Must run in a freshly forked child: only system calls, then `_exit`.
unsafe fn forked_acceptor(listener: libc::c_int, name: &std::ffi::CStr) -> ! {
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
        let conn = libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut());
        let line = if conn < 0 {
            "@@ err accept\n".to_owned()
        } else {
            format!("@@ ok {}\n", libc::getpid())
        };
        libc::write(1, line.as_ptr().cast(), line.len());
        let mut buf = [0u8; 512];
        while conn >= 0 && libc::recv(conn, buf.as_mut_ptr().cast(), buf.len(), 0) > 0 {}
        libc::close(conn);
        libc::_exit(0)
    }
}

/// The handler of `fork_handler`: keeps the accepted connection until the
/// peer that forked it ends; with `exec`, as `sleep`; with `read`, after
/// reading a request.
///
/// # Safety
/// Must run in a freshly forked child: only system calls, then exec or `_exit`.
unsafe fn forked_handler(conn: libc::c_int, exec: bool, read: bool) -> ! {
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if read {
            // Reads the request (one segment), then leaks the connection.
            let mut buf = [0u8; 512];
            libc::recv(conn, buf.as_mut_ptr().cast(), buf.len(), 0);
        }
        if exec {
            let sleep = c"/bin/sleep";
            let seconds = c"600";
            let argv = [sleep.as_ptr(), seconds.as_ptr(), std::ptr::null()];
            libc::execv(sleep.as_ptr(), argv.as_ptr());
        }
        loop {
            libc::pause();
        }
    }
}

/// The launcher of `daemonize`: listen, fork the daemon, reply, exit.
///
/// # Safety
/// Must run in a freshly forked child: only system calls, then `_exit`.
unsafe fn daemon_launcher(pipe: [libc::c_int; 2], name: &std::ffi::CStr, accepts: bool) -> ! {
    unsafe {
        libc::close(pipe[1]);
        libc::prctl(
            libc::PR_SET_NAME,
            c"tw-launcher".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        let listener = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let bound = libc::bind(listener, (&raw const addr).cast(), len) == 0
            && libc::listen(listener, if accepts { 16 } else { 4 }) == 0;
        let mut got = len;
        libc::getsockname(listener, (&raw mut addr).cast(), &mut got);
        let port = u16::from_be(addr.sin_port);
        let daemon = libc::fork();
        if daemon == 0 {
            libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
            let mut fds = [
                libc::pollfd {
                    fd: listener,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: pipe[0],
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if !accepts {
                // `daemonize_idle`: never accepts, so its queue fills.
                fds[0].events = 0;
            }
            loop {
                if libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {
                    libc::_exit(1);
                }
                if fds[1].revents != 0 {
                    libc::_exit(0);
                }
                if fds[0].revents != 0 {
                    // Kept open, never read: the connection stays.
                    libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut());
                }
            }
        }
        let line = if bound && daemon > 0 {
            format!("@@ ok {port} {daemon} {}\n", libc::getpid())
        } else {
            "@@ err daemonize\n".to_owned()
        };
        libc::write(1, line.as_ptr().cast(), line.len());
        libc::_exit(0)
    }
}

/// The child of `fork_accept_leak`: accept `k` connections, reply with its
/// pid, hold them until the parent peer dies.
///
/// # Safety
/// Must run in a freshly forked child: only system calls, then `_exit`.
unsafe fn forked_leaker(listener: libc::c_int, k: usize) -> ! {
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        let mut ok = true;
        for _ in 0..k {
            ok &= libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) >= 0;
        }
        let line = if ok {
            format!("@@ ok {}\n", libc::getpid())
        } else {
            "@@ err accept\n".to_owned()
        };
        libc::write(1, line.as_ptr().cast(), line.len());
        loop {
            libc::pause();
        }
    }
}

/// The local port a socket is bound to (0 if it cannot be read).
fn local_port(s: &socket2::Socket) -> u16 {
    s.local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or(0, |a| a.port())
}

fn bracket(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    }
}
