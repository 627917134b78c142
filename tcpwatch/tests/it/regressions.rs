//! Regressions found in review, as privileged scenarios: findings about a
//! pre-fork server's connections name the worker that accepted them, a
//! daemonizing client's leak names the live holder, and a short outage on an
//! idle connection is no unresponsive peer.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::Duration,
};

use crate::common::*;

const ROLE_ENV: &str = "TCPWATCH_REGRESSION_ROLE";

/// Not a test: a pre-fork server (see [`PreFork`]).
#[test]
fn regression_role_main() {
    if let Ok(mode) = std::env::var(ROLE_ENV) {
        match mode.strip_prefix("heir:") {
            Some(port) => heir_role(port.parse().unwrap()),
            None => prefork_role(&mode),
        }
    }
}

fn set_comm(name: &str) {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// The master listens on 127.0.0.1 (comm `rv-master`) and forks a worker
/// (comm `rv-worker`) that accepts one connection and then, by `mode`,
/// writes until the peer's window is shut (`fill`) or sends 5 bytes 1.5 s
/// later (`send`). The accepted socket is held only by the worker.
fn prefork_role(mode: &str) {
    set_comm("rv-master");
    let _ = std::fs::write("/proc/self/comm", "rv-master");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let fill = mode == "fill";
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
    let _ = std::fs::write("/proc/self/comm", "rv-parent");
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

struct PreFork {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
    worker: u32,
}

impl PreFork {
    fn start(ns: &Netns, mode: &str) -> PreFork {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(exe)
            .args([
                "--exact",
                "regression_role_main",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_ENV, mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out: BufReader<ChildStdout> = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let (port, worker) = loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "pre-fork server died"
            );
            if let Some(at) = line.find("@@ ") {
                let mut w = line[at + 3..].split_whitespace();
                break (
                    w.next().unwrap().parse().unwrap(),
                    w.next().unwrap().parse().unwrap(),
                );
            }
        };
        PreFork {
            child,
            _stdin: stdin,
            port,
            worker,
        }
    }
}

impl Drop for PreFork {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The holder of the accepted socket, as `ss -tnp` (the kernel) sees it.
fn holder(ns: &Netns, port: u16) -> String {
    ns.exec(&[
        "ss",
        "-tnpH",
        "state",
        "established",
        "sport",
        "=",
        &format!(":{port}"),
    ])
}

/// A pre-fork server whose worker (not the master that listened) accepted
/// the connection and writes to a client that stops reading. The worker
/// holds the socket; zero_window_stall names the master.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn zero_window_stall_names_the_worker_that_accepted() {
    if !privileged_or_skip("zero_window_stall_names_the_worker_that_accepted") {
        return;
    }
    let ns = Netns::new("rvzw");
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--zero-window-after",
            "2s",
            "--finding-interval",
            "1s",
            "--reconcile-interval",
            "1s",
        ],
    );
    let server = PreFork::start(&ns, "fill");
    let mut client = ns.peer("tw-client");
    client.ok(&format!("connect 127.0.0.1 {}", server.port));
    thread::sleep(Duration::from_secs(6));
    let ss = holder(&ns, server.port);
    let (lines, stderr) = tracer.stop();
    let f = findings(&lines, "zero_window_stall");
    let raised = f
        .iter()
        .find(|f| f["status"] == "raised")
        .unwrap_or_else(|| panic!("{lines:#?}\n{stderr:?}"));
    assert!(ss.contains(&format!("pid={}", server.worker)), "{ss}");
    assert_eq!(
        (raised["pid"].as_u64(), raised["comm"].as_str()),
        (Some(server.worker.into()), Some("rv-worker")),
        "the socket's holder per ss: {ss}"
    );
}

/// The same pre-fork worker sends, and the client's ACKs are dropped:
/// peer_unresponsive names the master, not the worker holding the socket.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn peer_unresponsive_names_the_worker_that_accepted() {
    if !privileged_or_skip("peer_unresponsive_names_the_worker_that_accepted") {
        return;
    }
    let ns = Netns::new("rvpu");
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--peer-unresponsive-after",
            "3s",
            "--finding-interval",
            "1s",
            "--reconcile-interval",
            "1s",
        ],
    );
    let server = PreFork::start(&ns, "send");
    let mut client = ns.peer("tw-client");
    client.ok(&format!("connect 127.0.0.1 {}", server.port));
    ns.nft(&drop_rules(&[&format!("tcp dport {} drop", server.port)]));
    thread::sleep(Duration::from_secs(8));
    let ss = holder(&ns, server.port);
    let (lines, stderr) = tracer.stop();
    let f = findings(&lines, "peer_unresponsive");
    let raised = f
        .iter()
        .find(|f| f["status"] == "raised")
        .unwrap_or_else(|| panic!("{lines:#?}\n{stderr:?}"));
    assert!(ss.contains(&format!("pid={}", server.worker)), "{ss}");
    assert_eq!(
        (raised["pid"].as_u64(), raised["comm"].as_str()),
        (Some(server.worker.into()), Some("rv-worker")),
        "the socket's holder per ss: {ss}"
    );
}

/// A connection idle for longer than --peer-unresponsive-after meets a
/// 2.5 s outage: the first retransmits are lost, the fourth gets through.
/// The peer never stopped answering for the threshold (5 s), yet
/// peer_unresponsive is raised within ~1.5 s of the first retransmit,
/// because the threshold is compared with the time since the last ACK,
/// which on an idle connection is the idle time.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn a_short_outage_on_an_idle_connection_is_no_unresponsive_peer() {
    if !privileged_or_skip("a_short_outage_on_an_idle_connection_is_no_unresponsive_peer") {
        return;
    }
    let ns = Netns::new("rvidle");
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--peer-unresponsive-after",
            "5s",
            "--finding-interval",
            "1s",
            "--reconcile-interval",
            "1s",
        ],
    );
    let mut server = ns.peer("tw-server");
    let mut client = ns.peer("tw-client");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    client.ok(&format!("connect 127.0.0.1 {port}"));
    server.ok("accept");
    // Idle for longer than the threshold.
    thread::sleep(Duration::from_secs(7));
    ns.nft(&drop_rules(&[&format!("tcp sport {port} drop")]));
    client.ok("send hello");
    thread::sleep(Duration::from_millis(2500));
    ns.exec(&["nft", "delete", "table", "inet", "tw"]);
    thread::sleep(Duration::from_secs(3));
    let (lines, _) = tracer.stop();
    // Whatever the outage's exact length, a finding must not be raised
    // before its own evidence shows a stall of the threshold's length.
    let early: Vec<_> = findings(&lines, "peer_unresponsive")
        .into_iter()
        .filter(|f| f["status"] == "raised")
        .filter(|f| f["age_seconds"].as_f64().is_some_and(|s| s < 5.0))
        .collect();
    assert!(
        early.is_empty(),
        "peer_unresponsive raised before 5 s of stall (--peer-unresponsive-after 5s): {early:#?}"
    );
}

/// A client process connects, forks an heir that keeps the connection, and
/// exits (a daemonizing client). The server closes: the heir's socket sits
/// in CLOSE_WAIT. close_wait_leak names the parent, which is dead; the
/// kernel (ss -tnp) names the heir.
#[test]
#[ignore = "privileged: needs root, tcpwatch built with its eBPF programs and iproute2; `cargo xtask test` runs it"]
fn close_wait_leak_names_the_live_holder_not_a_dead_pid() {
    if !privileged_or_skip("close_wait_leak_names_the_live_holder_not_a_dead_pid") {
        return;
    }
    let ns = Netns::new("rvheir");
    let tracer = Tracer::start(
        &ns,
        &[
            "--no-events",
            "--close-wait-age",
            "1s",
            "--reconcile-interval",
            "1s",
        ],
    );
    let mut server = ns.peer("tw-server");
    let port: u16 = server.ok("listen 127.0.0.1 16").parse().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(exe)
        .args([
            "--exact",
            "regression_role_main",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, format!("heir:{port}"))
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("@@ ").expect("the parent printed its pids");
    let mut w = text[at + 3..].split_whitespace();
    let (_local, parent, heir): (u16, u32, u32) = (
        w.next().unwrap().parse().unwrap(),
        w.next().unwrap().parse().unwrap(),
        w.next().unwrap().parse().unwrap(),
    );
    server.ok("accept");
    server.ok("close");
    thread::sleep(Duration::from_secs(3));
    let ss = ns.exec(&["ss", "-tnpH", "state", "close-wait"]);
    let parent_alive = std::path::Path::new(&format!("/proc/{parent}")).exists();
    let (lines, stderr) = tracer.stop();
    // SAFETY: a kill of the heir this test made.
    unsafe { libc::kill(heir as i32, libc::SIGKILL) };
    let f = findings(&lines, "close_wait_leak");
    let raised = f
        .iter()
        .find(|f| f["status"] == "raised")
        .unwrap_or_else(|| panic!("{lines:#?}\n{stderr:?}"));
    assert!(!parent_alive && ss.contains(&format!("pid={heir}")), "{ss}");
    assert_eq!(
        (raised["pid"].as_u64(), raised["comm"].as_str()),
        (Some(heir.into()), Some("rv-heir")),
        "pid {parent} (rv-parent) exited; the holder per ss: {ss}"
    );
}
