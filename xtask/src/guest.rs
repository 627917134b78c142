//! The suite `cargo xtask vm-test` runs inside each guest, as
//! `/bin/xtask guest-suite` (it also runs on a host, as root, for
//! development). It drives real sockets with std::net in peer processes of
//! their own command names, runs tcpwatch as a user would, and prints one
//! line per check on the console: `CHECK <name> ok` or
//! `CHECK <name> FAILED: <reason>`; the host reads those lines.
//!
//! Emulation (QEMU's TCG) is slow and its timing uneven, so every wait is
//! bounded but generous, and checks assert each connection's own sequence
//! of events rather than totals.
use std::{
    collections::BTreeSet,
    ffi::CString,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::fs::symlink},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

/// Every check, in the order the suite runs them; the host expects each.
pub const CHECKS: &[&str] = &[
    "without_sock_diag",
    "sock_diag",
    "lifecycle",
    "refused",
    "syn_timeout",
    "close_wait_leak",
    "drops",
    "trace_stop",
    "run_metrics",
    "time_wait",
    "audit",
    "orphan_overflow",
];

/// The trace-based checks, which all fail if `tcpwatch trace` cannot start.
const TRACE_CHECKS: &[&str] = &[
    "lifecycle",
    "refused",
    "syn_timeout",
    "close_wait_leak",
    "drops",
    "trace_stop",
];

/// Markers around a tracepoint's format file on the console.
pub const FORMAT_BEGIN: &str = "FORMAT-BEGIN ";
pub const FORMAT_END: &str = "FORMAT-END ";
pub const FORMAT_MISSING: &str = "FORMAT-MISSING ";

/// How long tcpwatch may take to load and attach (under 1 s in a TCG guest
/// on a 2-core host; the host gives the whole guest 90 s).
const START_WITHIN: Duration = Duration::from_secs(30);
/// How long events of a step may take to arrive (a reconciliation, every
/// 10 s, included).
const EVENTS_WITHIN: Duration = Duration::from_secs(15);
/// How long a peer may take to answer a command (a connect waits up to 10 s).
const REPLY_WITHIN: Duration = Duration::from_secs(20);
/// The connect timeout of the client whose SYNs are dropped: long enough
/// for the first SYN retransmit (initial RTO 1 s) on every kernel.
const SYN_TIMEOUT_MS: u64 = 3500;
/// CLOSE_WAIT older than this is a leak, for the trace in the suite.
const CLOSE_WAIT_AGE: &str = "1s";
/// Connections closed by the client for the TIME_WAIT count.
const TIME_WAIT_CONNECTIONS: usize = 20;
/// Ports for the suite's servers: below the ephemeral range (32768 and up by
/// default), so no client's local port can collide with them.
const PORT_RANGE: std::ops::Range<u16> = 20000..30000;

/// Runs every check and prints its result; fails if any check failed.
/// Run by the guest's init before the sock_diag modules are loaded:
/// `tcpwatch run` must say what is missing, in one sentence, report it on
/// /healthz and in `tcpwatch_sock_diag_available`, and keep serving the
/// namespace's settings and its socket list (read from /proc instead).
pub fn without_sock_diag(tcpwatch: &Path) -> Result<()> {
    let started = Instant::now();
    let result = (|| -> Result<()> {
        if sock_diag_answers().is_ok() {
            bail!("sock_diag answers before the modules are loaded (built in?): nothing to check");
        }
        let port = free_ports(1)?[0];
        let daemon = Daemon::start(tcpwatch, port)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = daemon.get("/metrics")?;
            let available = sample(&body, "tcpwatch_sock_diag_available");
            let listed = sample(&body, "tcpwatch_sockets{state=\"LISTEN\"}");
            let sysctl = body.lines().any(|l| l.starts_with("tcpwatch_sysctl{"));
            if available == Some(0.0) && sysctl && listed.is_some_and(|n| n >= 1.0) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "without sock_diag: tcpwatch_sock_diag_available {available:?}, tcpwatch_sysctl present {sysctl}, LISTEN sockets {listed:?} (its own from /proc/net/tcp expected)"
                );
            }
            thread::sleep(Duration::from_millis(300));
        }
        let (status, health) = daemon.get("/healthz")?;
        if status != 200 || !health.contains("degraded") {
            bail!("/healthz answered {status} {health:?} without sock_diag");
        }
        let said = daemon.stderr_text();
        let sentence = "the kernel's socket list (sock_diag) is unavailable";
        if said.matches(sentence).count() != 1 {
            bail!("tcpwatch should say once that {sentence}; it said: {said}");
        }
        daemon.stop();
        Ok(())
    })();
    match result {
        Ok(()) => println!("CHECK without_sock_diag ok"),
        Err(e) => println!(
            "CHECK without_sock_diag FAILED: {}",
            one_line(&format!("{e:#}"))
        ),
    }
    println!(
        "INFO without_sock_diag took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn suite(tcpwatch: &Path, dump_formats: bool) -> Result<()> {
    if dump_formats {
        // First: if the suite hangs the formats are already out.
        if let Err(e) = print_formats() {
            println!("INFO formats: {e:#}");
        }
    }
    let peers = PeerDir::new()?;
    let mut failed = 0;
    let mut report = |name: &str, started: Instant, result: Result<()>| {
        match result {
            Ok(()) => println!("CHECK {name} ok"),
            Err(e) => {
                failed += 1;
                println!("CHECK {name} FAILED: {}", one_line(&format!("{e:#}")));
            }
        }
        println!("INFO {name} took {:.1} s", started.elapsed().as_secs_f64());
    };

    let started = Instant::now();
    report("sock_diag", started, sock_diag_answers());

    let ports = free_ports(5)?;
    let (lifecycle_port, refused_port, syn_port, leak_port, drop_port) =
        (ports[0], ports[1], ports[2], ports[3], ports[4]);
    let started = Instant::now();
    match Tracer::start(tcpwatch, &ports) {
        Err(e) => {
            let why = format!("tcpwatch trace did not start: {e:#}");
            for name in TRACE_CHECKS {
                report(name, started, Err(anyhow!("{why}")));
            }
        }
        Ok(tracer) => {
            println!(
                "INFO tcpwatch trace started in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let started = Instant::now();
            report(
                "lifecycle",
                started,
                lifecycle(&tracer, &peers, lifecycle_port),
            );
            let started = Instant::now();
            report("refused", started, refused(&tracer, &peers, refused_port));
            let started = Instant::now();
            report(
                "syn_timeout",
                started,
                syn_timeout(&tracer, &peers, syn_port),
            );
            let started = Instant::now();
            report(
                "close_wait_leak",
                started,
                close_wait_leak(&tracer, &peers, leak_port),
            );
            let started = Instant::now();
            report("drops", started, drops(&tracer, &peers, drop_port));
            let started = Instant::now();
            report("trace_stop", started, tracer.stop());
        }
    }

    let started = Instant::now();
    let daemon_port = free_ports(1)?[0];
    match Daemon::start(tcpwatch, daemon_port) {
        Err(e) => {
            let why = format!("tcpwatch run did not serve /metrics: {e:#}");
            report("run_metrics", started, Err(anyhow!("{why}")));
            report("time_wait", started, Err(anyhow!("{why}")));
        }
        Ok(daemon) => {
            println!(
                "INFO tcpwatch run serving in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let started = Instant::now();
            report("run_metrics", started, run_metrics(&daemon));
            let started = Instant::now();
            report("time_wait", started, time_wait(&daemon));
            daemon.stop();
        }
    }

    let started = Instant::now();
    report("audit", started, audit(tcpwatch));
    // Last: it lowers the guest's (global) tcp_max_orphans.
    let started = Instant::now();
    report("orphan_overflow", started, orphan_overflow(tcpwatch));
    if failed > 0 {
        bail!("{failed} of {} checks failed", CHECKS.len());
    }
    Ok(())
}

fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The kernel answers a sock_diag dump of TCP sockets, as `ss` asks it:
/// tcpwatch reconciles with it and reads TIME_WAIT from it. Needs inet_diag
/// and tcp_diag, which the guest's /init loads (modules in Debian's kernels).
fn sock_diag_answers() -> Result<()> {
    let reply = netlink_exchange(libc::NETLINK_SOCK_DIAG, &tcp_dump_request())?;
    // The first message: inet_diag_msg records or DONE when it works,
    // NLMSG_ERROR (ENOENT without tcp_diag) when it does not.
    let kind = reply.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    match kind {
        Some(SOCK_DIAG_BY_FAMILY) => Ok(()),
        Some(t) if t == libc::NLMSG_DONE as u16 => Ok(()),
        Some(t) if t == libc::NLMSG_ERROR as u16 => {
            let errno = reply
                .get(16..20)
                .map_or(0, |b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            bail!(
                "the kernel refused a TCP sock_diag dump: {} (inet_diag and tcp_diag not loaded?)",
                std::io::Error::from_raw_os_error(errno)
            )
        }
        other => bail!("unexpected sock_diag reply type {other:?}"),
    }
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// struct inet_diag_req_v2, its inet_diag_sockid inlined.
#[repr(C)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
struct DiagRequest {
    header: libc::nlmsghdr,
    body: InetDiagReqV2,
}

/// A dump of every IPv4 TCP socket, in every state.
fn tcp_dump_request() -> DiagRequest {
    DiagRequest {
        header: libc::nlmsghdr {
            nlmsg_len: std::mem::size_of::<DiagRequest>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        body: InetDiagReqV2 {
            family: libc::AF_INET as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: u32::MAX,
            sport: 0,
            dport: 0,
            src: [0; 4],
            dst: [0; 4],
            interface: 0,
            cookie: [0; 2],
        },
    }
}

/// Sends one request on a netlink socket of `protocol` and returns the
/// first datagram of the answer (waiting at most 10 s).
fn netlink_exchange(protocol: i32, request: &DiagRequest) -> Result<Vec<u8>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let io_error = std::io::Error::last_os_error;
    // SAFETY: socket() has no memory-safety preconditions.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        bail!("no netlink socket of protocol {protocol}: {}", io_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns; it closes on drop.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads one timeval that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc != 0 {
        bail!("cannot set a receive timeout: {}", io_error());
    }
    // SAFETY: send() reads size_of::<DiagRequest>() bytes of a live,
    // initialised #[repr(C)] value.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            (request as *const DiagRequest).cast(),
            std::mem::size_of::<DiagRequest>(),
            0,
        )
    };
    if sent < 0 {
        bail!("cannot send a netlink request: {}", io_error());
    }
    let mut reply = vec![0u8; 16384];
    // SAFETY: recv() writes at most reply.len() bytes into the buffer.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    if n < 0 {
        bail!("no netlink reply: {}", io_error());
    }
    reply.truncate(n as usize);
    Ok(reply)
}

/// `n` distinct loopback ports nobody listens on now.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    // Held until all are found, so the same port is not taken twice.
    let mut held = Vec::new();
    for port in PORT_RANGE {
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
            if held.len() == n {
                break;
            }
        }
    }
    if held.len() < n {
        bail!("fewer than {n} free ports in {PORT_RANGE:?}");
    }
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

// ---------------------------------------------------------------------------
// The checks that read `tcpwatch trace --json`.

/// A full connection between two processes: each end's events carry its
/// own process, and both ends close normally.
fn lifecycle(tracer: &Tracer, peers: &PeerDir, port: u16) -> Result<()> {
    let mut server = peers.spawn("gserver")?;
    let mut client = peers.spawn("gclient")?;
    server.ok(&format!("listen {port} 16"))?;
    let cport: u16 = client.ok(&format!("connect {port} 10000"))?.parse()?;
    server.ok("accept")?;
    client.ok("close_connections")?;
    // The server closes once the client's FIN has arrived, so the client
    // closes first and ends in TIME_WAIT.
    tracer.wait_for("the server's ESTABLISHED -> CLOSE_WAIT", |evs| {
        evs.iter()
            .find(|e| on_tuple(e, port, cport) && is_state(e, "ESTABLISHED", "CLOSE_WAIT"))
            .map(|_| ())
    })?;
    server.ok("close_accepted")?;
    tracer.wait_until(|evs| {
        let ended = |l, r| {
            evs.iter()
                .any(|e| is_kind(e, "lifecycle") && on_tuple(e, l, r))
        };
        ended(cport, port) && ended(port, cport)
    });

    let events = tracer.events();
    let mut problems = lifecycle_problems(&events, &client, &server, port, cport);
    // Every supported kernel has BTF: the raw tracepoint programs, not the
    // classic fallback, saw these transitions.
    let stderr = tracer.stderr_text();
    if !stderr.contains("inet_sock_set_state (raw)") {
        problems.push(format!(
            "the raw tracepoint programs did not attach: {stderr}"
        ));
    }
    verdict("lifecycle", problems, &events, &[port])
}

/// What is missing or wrong in the events of the lifecycle check's
/// connection (the server on `port`, the client on `cport`).
fn lifecycle_problems(
    events: &[Value],
    client: &Peer,
    server: &Peer,
    port: u16,
    cport: u16,
) -> Vec<String> {
    let mut problems = Vec::new();
    let client_side = |e: &Value| on_tuple(e, cport, port);
    let server_side = |e: &Value| on_tuple(e, port, cport);
    let mut expect = |owner: &Peer, what: &str, matches: &dyn Fn(&Value) -> bool| {
        expect_owned(&mut problems, events, owner, what, matches)
    };
    // Before connect() picks the local port: known by the remote port only.
    expect(client, "client CLOSE -> SYN_SENT", &|e| {
        is_state(e, "CLOSE", "SYN_SENT") && num(e, "dport") == u64::from(port)
    });
    expect(client, "client SYN_SENT -> ESTABLISHED", &|e| {
        client_side(e) && is_state(e, "SYN_SENT", "ESTABLISHED")
    });
    expect(server, "server SYN_RECV -> ESTABLISHED", &|e| {
        server_side(e) && is_state(e, "SYN_RECV", "ESTABLISHED")
    });
    expect(client, "client ESTABLISHED -> FIN_WAIT1", &|e| {
        client_side(e) && is_state(e, "ESTABLISHED", "FIN_WAIT1")
    });
    // FIN_WAIT2 -> CLOSE usually; the TIME_WAIT socket that follows has no event.
    expect(client, "client's close (-> CLOSE)", &|e| {
        client_side(e) && is_kind(e, "state") && text(e, "new_state") == "CLOSE"
    });
    expect(server, "server ESTABLISHED -> CLOSE_WAIT", &|e| {
        server_side(e) && is_state(e, "ESTABLISHED", "CLOSE_WAIT")
    });
    expect(server, "server CLOSE_WAIT -> LAST_ACK", &|e| {
        server_side(e) && is_state(e, "CLOSE_WAIT", "LAST_ACK")
    });
    expect(server, "server LAST_ACK -> CLOSE", &|e| {
        server_side(e) && is_state(e, "LAST_ACK", "CLOSE")
    });
    // Every event of each end belongs to that end's process, including
    // those the kernel emits in softirq on behalf of the other end.
    for (side, owner, on_side) in [
        (
            "client-side",
            client,
            &client_side as &dyn Fn(&Value) -> bool,
        ),
        ("server-side", server, &server_side),
    ] {
        for e in events
            .iter()
            .filter(|e| on_side(e) && !is_kind(e, "finding"))
        {
            if !owned_by(e, owner) {
                problems.push(format!("{side} {} attributed to {}", describe(e), who(e)));
            }
        }
    }
    for (side, opener, on_side) in [
        ("client", "active", &client_side as &dyn Fn(&Value) -> bool),
        ("server", "passive", &server_side),
    ] {
        let line = events
            .iter()
            .find(|e| is_kind(e, "lifecycle") && on_side(e));
        match line {
            None => problems.push(format!("no {side} lifecycle line")),
            Some(line) if text(line, "end") != "normal_close" || text(line, "opener") != opener => {
                problems.push(format!(
                    "{side} lifecycle line says end={} opener={} (expected normal_close, {opener})",
                    text(line, "end"),
                    text(line, "opener")
                ))
            }
            Some(_) => {}
        }
    }
    problems
}

/// A connect to a port nothing listens on: refused with a reset.
fn refused(tracer: &Tracer, peers: &PeerDir, port: u16) -> Result<()> {
    let mut client = peers.spawn("gclient")?;
    let reply = client.cmd(&format!("connect {port} 10000"))?;
    if reply != "err ConnectionRefused" {
        bail!("connect to the closed port {port} answered `{reply}`, not a refusal");
    }
    // The finding is printed after the lifecycle line: wait for it.
    tracer.wait_until(|evs| {
        evs.iter()
            .any(|e| is_finding(e, "connect_refused") && num(e, "rport") == u64::from(port))
    });
    let events = tracer.events();
    let mut problems = Vec::new();
    let to_port = |e: &Value| num(e, "dport") == u64::from(port);
    expect_owned(
        &mut problems,
        &events,
        &client,
        "reset received in SYN_SENT",
        |e| to_port(e) && is_kind(e, "reset_received"),
    );
    expect_owned(&mut problems, &events, &client, "SYN_SENT -> CLOSE", |e| {
        to_port(e) && is_state(e, "SYN_SENT", "CLOSE")
    });
    expect_owned(
        &mut problems,
        &events,
        &client,
        "lifecycle line ending connect_refused",
        |e| to_port(e) && is_kind(e, "lifecycle") && text(e, "end") == "connect_refused",
    );
    expect_owned(
        &mut problems,
        &events,
        &client,
        "connect_refused finding",
        |e| is_finding(e, "connect_refused") && num(e, "rport") == u64::from(port),
    );
    verdict("refused", problems, &events, &[port])
}

/// SYNs dropped by a listener whose accept queue is full: the client
/// retransmits its SYN until its own connect timeout closes the socket.
fn syn_timeout(tracer: &Tracer, peers: &PeerDir, port: u16) -> Result<()> {
    let mut server = peers.spawn("gserver")?;
    let mut client = peers.spawn("gclient")?;
    // A backlog of 0 holds one connection; nobody accepts it, so the kernel
    // silently drops every further SYN (no firewall needed).
    server.ok(&format!("listen {port} 0"))?;
    let filler: u16 = client.ok(&format!("connect {port} 10000"))?.parse()?;
    let reply = client.cmd(&format!("connect {port} {SYN_TIMEOUT_MS}"))?;
    if reply != "err TimedOut" {
        bail!("the connect to a full accept queue answered `{reply}` instead of timing out");
    }
    let is_target = |e: &Value| {
        num(e, "dport") == u64::from(port)
            && num(e, "sport") != u64::from(filler)
            && num(e, "sport") != 0
    };
    // The finding is printed after the lifecycle line: wait for it.
    tracer.wait_until(|evs| {
        evs.iter()
            .any(|e| is_finding(e, "connect_timeout") && num(e, "rport") == u64::from(port))
    });
    let events = tracer.events();
    let mut problems = Vec::new();
    let retransmits: Vec<&Value> = events
        .iter()
        .filter(|e| is_target(e) && is_kind(e, "retransmit") && text(e, "state") == "SYN_SENT")
        .collect();
    if retransmits.is_empty() {
        problems.push("no SYN retransmit (kind retransmit in SYN_SENT)".to_owned());
    }
    for e in retransmits.iter().filter(|e| !owned_by(e, &client)) {
        problems.push(format!("SYN retransmit attributed to {}", who(e)));
    }
    expect_owned(&mut problems, &events, &client, "SYN_SENT -> CLOSE", |e| {
        is_target(e) && is_state(e, "SYN_SENT", "CLOSE")
    });
    match events.iter().find(|e| is_kind(e, "lifecycle") && is_target(e)) {
        None => problems.push("no lifecycle line".to_owned()),
        Some(line)
            if !owned_by(line, &client)
                || text(line, "end") != "connect_timeout"
                || line["retransmits"]["syn"].as_u64().unwrap_or(0) == 0 =>
        {
            problems.push(format!(
                "lifecycle line {line} (expected end connect_timeout with SYN retransmits, owned by {})",
                client.describe()
            ))
        }
        Some(_) => {}
    }
    expect_owned(
        &mut problems,
        &events,
        &client,
        "connect_timeout finding",
        |e| is_finding(e, "connect_timeout") && num(e, "rport") == u64::from(port),
    );
    verdict("syn_timeout", problems, &events, &[port])
}

/// A server that never closes connections its clients closed.
fn close_wait_leak(tracer: &Tracer, peers: &PeerDir, port: u16) -> Result<()> {
    let mut leaky = peers.spawn("gleaky")?;
    let mut client = peers.spawn("gclient")?;
    leaky.ok(&format!("listen {port} 16"))?;
    client.ok(&format!("connect {port} 10000"))?;
    leaky.ok("accept")?;
    client.ok("close_connections")?;
    // Raised at the first tick after the CLOSE_WAIT is older than 1 s.
    let finding = tracer.wait_for("a close_wait_leak finding on the server's port", |evs| {
        evs.iter()
            .find(|e| is_finding(e, "close_wait_leak") && num(e, "lport") == u64::from(port))
            .cloned()
    })?;
    println!("INFO close_wait_leak finding: {finding}");
    if !owned_by(&finding, &leaky) {
        bail!(
            "the close_wait_leak finding names {}, not the leaking server {}: {finding}",
            who(&finding),
            leaky.describe()
        );
    }
    Ok(())
}

/// A segment the kernel drops for a known socket: data sent to a server
/// that shut down both directions (FIN_WAIT2, still holding the socket,
/// reading nothing more) aborts it (`TCP_ABORT_ON_DATA`,
/// tcp_rcv_state_process() in net/ipv4/tcp_input.c). A close() instead
/// would make it an orphan, turned into a timewait socket on 6.12+, which
/// frees the data without a reason. From 6.12 skb:kfree_skb names the socket: a
/// `drop` event of the server's port, with the kernel's reason name. Older
/// kernels cannot say which socket a drop was for: no drop event at all.
fn drops(tracer: &Tracer, peers: &PeerDir, port: u16) -> Result<()> {
    let mut server = peers.spawn("gserver")?;
    let mut client = peers.spawn("gclient")?;
    server.ok(&format!("listen {port} 16"))?;
    client.ok(&format!("connect {port} 10000"))?;
    server.ok("accept")?;
    server.ok("shutdown_accepted")?;
    thread::sleep(Duration::from_millis(300));
    client.ok("send_connections")?;
    // The server's kernel answers the data with a reset.
    tracer.wait_for("the client's reset", |evs| {
        evs.iter()
            .find(|e| is_kind(e, "reset_received") && num(e, "dport") == u64::from(port))
            .cloned()
    })?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let of_port = |e: &&Value| is_kind(e, "drop") && num(e, "sport") == u64::from(port);
    if version >= (6, 12) {
        let drop = tracer.wait_for("a drop event of the server's socket", |evs| {
            evs.iter().find(of_port).cloned()
        })?;
        println!("INFO drop event: {drop}");
        if text(&drop, "reason") != "TCP_ABORT_ON_DATA" {
            bail!("the drop's reason is not the kernel's TCP_ABORT_ON_DATA: {drop}");
        }
    } else {
        thread::sleep(Duration::from_millis(500));
        if let Some(e) = tracer.events().iter().find(|e| is_kind(e, "drop")) {
            bail!("a drop event on Linux {version:?}, whose skb:kfree_skb has no rx_sk: {e}");
        }
    }
    Ok(())
}

/// More orphans than tcp_max_orphans (lowered to 4; the guest is ours):
/// clients fill their send buffers towards a server that never reads and
/// close, so each stays an orphan in FIN_WAIT1; past the limit the kernel
/// resets further closes and counts TCPAbortOnMemory, and tcpwatch reports
/// orphan_overflow with at most as many resets as the kernel counted.
fn orphan_overflow(tcpwatch: &Path) -> Result<()> {
    const CLIENTS: usize = 16;
    std::fs::write("/proc/sys/net/ipv4/tcp_max_orphans", "4")
        .context("cannot lower tcp_max_orphans")?;
    let tracer = Tracer::start_with(
        tcpwatch,
        &["--no-events", "--reconcile-interval", "1s"].map(str::to_owned),
    )?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mut clients = Vec::new();
    let mut accepted = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = TcpStream::connect(("127.0.0.1", port))?;
        accepted.push(listener.accept()?.0);
        client.set_nonblocking(true)?;
        let chunk = [0u8; 65536];
        // Until the server's receive buffer and this send buffer are full.
        loop {
            match client.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("filling a send buffer"),
            }
        }
        clients.push(client);
    }
    for client in clients {
        drop(client);
        // tcp_too_many_orphans() reads a count refreshed every 100 ms.
        thread::sleep(Duration::from_millis(150));
    }
    let aborts = tcpext("TCPAbortOnMemory")?;
    if aborts == 0 {
        bail!("the kernel aborted no orphan (TCPAbortOnMemory 0): the situation was not made");
    }
    let finding = tracer.wait_for("an orphan_overflow finding with resets", |evs| {
        evs.iter()
            .find(|e| {
                is_finding(e, "orphan_overflow")
                    && num(e, "count") > 0
                    && text(e, "severity") == "critical"
            })
            .cloned()
    })?;
    println!("INFO orphan_overflow: TCPAbortOnMemory {aborts}; finding {finding}");
    if num(&finding, "count") > aborts {
        bail!("orphan_overflow reports more resets than the kernel counted ({aborts}): {finding}");
    }
    drop(accepted);
    Ok(())
}

/// A TcpExt counter of this namespace.
fn tcpext(name: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat")?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if let (Some(names), Some(values)) = (
            names.strip_prefix("TcpExt:"),
            values.strip_prefix("TcpExt:"),
        ) {
            if let Some((_, v)) = names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == name)
            {
                return v.parse().context("a TcpExt value");
            }
        }
    }
    bail!("no TcpExt {name} in /proc/net/netstat")
}

/// Passes when nothing is missing; otherwise lists what is. Either way the
/// events seen on the check's ports go to the console, as evidence.
fn verdict(check: &str, problems: Vec<String>, events: &[Value], ports: &[u16]) -> Result<()> {
    let seen: Vec<String> = events
        .iter()
        .filter(|e| {
            ports.iter().any(|p| {
                [
                    num(e, "sport"),
                    num(e, "dport"),
                    num(e, "lport"),
                    num(e, "rport"),
                ]
                .contains(&u64::from(*p))
            })
        })
        .map(describe)
        .collect();
    println!("INFO {check} events: [{}]", seen.join(", "));
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "{}; events seen: [{}]",
        problems.join("; "),
        seen.join(", ")
    )
}

/// The first event that `matches` must exist and belong to `owner`.
fn expect_owned(
    problems: &mut Vec<String>,
    events: &[Value],
    owner: &Peer,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) {
    match events.iter().find(|e| matches(e)) {
        None => problems.push(format!("no {what}")),
        Some(e) if !owned_by(e, owner) => problems.push(format!(
            "{what} attributed to {}, not to {}",
            who(e),
            owner.describe()
        )),
        Some(_) => {}
    }
}

fn num(e: &Value, field: &str) -> u64 {
    e[field].as_u64().unwrap_or(0)
}

fn text<'a>(e: &'a Value, field: &str) -> &'a str {
    e[field].as_str().unwrap_or("")
}

fn is_kind(e: &Value, kind: &str) -> bool {
    text(e, "kind") == kind
}

fn is_state(e: &Value, old: &str, new: &str) -> bool {
    is_kind(e, "state") && text(e, "old_state") == old && text(e, "new_state") == new
}

fn is_finding(e: &Value, kind: &str) -> bool {
    is_kind(e, "finding") && text(e, "finding") == kind && text(e, "status") == "raised"
}

fn on_tuple(e: &Value, local: u16, remote: u16) -> bool {
    num(e, "sport") == u64::from(local) && num(e, "dport") == u64::from(remote)
}

fn owned_by(e: &Value, peer: &Peer) -> bool {
    num(e, "pid") == u64::from(peer.pid) && text(e, "comm") == peer.comm
}

fn who(e: &Value) -> String {
    format!("pid {} ({})", num(e, "pid"), text(e, "comm"))
}

/// One event in a few words, for failure messages.
fn describe(e: &Value) -> String {
    let what = match text(e, "kind") {
        "state" => format!("{} -> {}", text(e, "old_state"), text(e, "new_state")),
        "lifecycle" => format!("lifecycle end={}", text(e, "end")),
        "finding" => format!("finding {} {}", text(e, "finding"), text(e, "status")),
        other => format!("{other} in {}", text(e, "state")),
    };
    format!(
        ":{}>{} {what} {}/{}",
        num(e, "sport").max(num(e, "lport")),
        num(e, "dport").max(num(e, "rport")),
        text(e, "comm"),
        num(e, "pid"),
    )
}

/// `tcpwatch trace --json --lifecycle` on the suite's ports, read by a
/// thread into a list the checks poll.
struct Tracer {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Tracer {
    fn start(tcpwatch: &Path, ports: &[u16]) -> Result<Tracer> {
        let mut args: Vec<String> = ["--lifecycle", "--close-wait-age", CLOSE_WAIT_AGE]
            .map(str::to_owned)
            .to_vec();
        for port in ports {
            args.extend(["--port".to_owned(), port.to_string()]);
        }
        Self::start_with(tcpwatch, &args)
    }

    /// `tcpwatch trace --json` with `args`.
    fn start_with(tcpwatch: &Path, args: &[String]) -> Result<Tracer> {
        let mut cmd = Command::new(tcpwatch);
        cmd.args(["trace", "--json", "--color", "never"]).args(args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", tcpwatch.display()))?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let sink = events.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| serde_json::json!({"kind": "unparsable", "line": line, "error": e.to_string()}));
                if let Ok(mut events) = sink.lock() {
                    events.push(value);
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let ready = read_stderr(
            child.stderr.take().context("no stderr pipe")?,
            stderr.clone(),
            "tracing TCP",
        );
        let mut tracer = Tracer {
            child,
            events,
            stderr,
        };
        match ready.recv_timeout(START_WITHIN) {
            Ok(()) => Ok(tracer),
            Err(_) => {
                let exited = tracer.child.try_wait().ok().flatten();
                let _ = tracer.child.kill();
                let _ = tracer.child.wait();
                let how = exited.map_or_else(
                    || format!("no `tracing TCP` within {START_WITHIN:?}"),
                    |s| format!("exited with {s}"),
                );
                bail!("{how}; stderr: {}", tracer.stderr_text())
            }
        }
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|l| l.join(" | "))
            .unwrap_or_default()
    }

    /// Polls the events until `done` says that all a check expects has
    /// arrived, for at most [`EVENTS_WITHIN`]; the check then names what is
    /// missing.
    fn wait_until(&self, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + EVENTS_WITHIN;
        while Instant::now() < deadline && !self.events.lock().is_ok_and(|e| done(&e)) {
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls the events until `find` finds something, for at most
    /// [`EVENTS_WITHIN`]; fails naming `what` if tcpwatch died or time ran out.
    fn wait_for<T>(&self, what: &str, find: impl Fn(&[Value]) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + EVENTS_WITHIN;
        loop {
            if let Some(found) = self.events.lock().ok().and_then(|e| find(&e)) {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                let events = self.events();
                bail!(
                    "no {what} within {EVENTS_WITHIN:?}; {} events so far: [{}]; tcpwatch stderr: {}",
                    events.len(),
                    events.iter().map(describe).collect::<Vec<_>>().join(", "),
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGINT must end tracing cleanly, with its summary on stderr.
    fn stop(mut self) -> Result<()> {
        // SAFETY: kill on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = wait_bounded(&mut self.child, Duration::from_secs(30))?;
        // Give the stderr reader the last lines.
        thread::sleep(Duration::from_millis(200));
        let stderr = self.stderr_text();
        if !status.success() {
            bail!("tcpwatch trace exited with {status} after SIGINT; stderr: {stderr}");
        }
        let unparsable: Vec<Value> = self
            .events()
            .into_iter()
            .filter(|e| is_kind(e, "unparsable"))
            .collect();
        if !unparsable.is_empty() {
            bail!("lines of --json output that are not JSON: {unparsable:?}");
        }
        let summary = self
            .stderr
            .lock()
            .ok()
            .and_then(|l| l.iter().find(|l| l.contains("events received")).cloned());
        match summary {
            Some(line) => {
                println!("INFO trace summary: {line}");
                Ok(())
            }
            None => bail!("no summary (`events received`) on stderr after SIGINT: {stderr}"),
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects a child's stderr lines; the returned channel gets a message
/// when a line contains `ready` (and is dropped if the child exits first).
fn read_stderr(
    stderr: impl Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
    ready: &'static str,
) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(ready) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
            if let Ok(mut lines) = lines.lock() {
                lines.push(line);
            }
        }
    });
    rx
}

/// Waits for a child at most `within`, killing it when time runs out.
fn wait_bounded(child: &mut Child, within: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {within:?}; killed");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Peer processes: the same binary under other names, so that each end of a
// connection has its own pid and command name.

/// A directory of symlinks to this binary named after the peers: the kernel
/// takes a process's command name from the file name it executed.
struct PeerDir(PathBuf);

impl PeerDir {
    fn new() -> Result<PeerDir> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let dir = std::env::temp_dir().join(format!("tcpwatch-guest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        for name in ["gserver", "gclient", "gleaky"] {
            symlink(&exe, dir.join(name)).with_context(|| format!("cannot link {name}"))?;
        }
        Ok(PeerDir(dir))
    }

    fn spawn(&self, comm: &str) -> Result<Peer> {
        let mut child = Command::new(self.0.join(comm))
            .arg("guest-peer")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start the peer {comm}"))?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, replies) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = Peer {
            pid: child.id(),
            comm: comm.to_owned(),
            child,
            stdin,
            replies,
        };
        peer.ok("hello")?;
        Ok(peer)
    }
}

impl Drop for PeerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running peer, driven one command line at a time.
struct Peer {
    pid: u32,
    comm: String,
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
}

impl Peer {
    fn describe(&self) -> String {
        format!("pid {} ({})", self.pid, self.comm)
    }

    /// Sends a command; returns the reply (`ok ...` or `err ...`).
    fn cmd(&mut self, line: &str) -> Result<String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("{} is gone", self.describe()))?;
        self.replies.recv_timeout(REPLY_WITHIN).map_err(|_| {
            anyhow!(
                "{} did not answer `{line}` within {REPLY_WITHIN:?}",
                self.describe()
            )
        })
    }

    /// A command that must succeed; returns what follows `ok`.
    fn ok(&mut self, line: &str) -> Result<String> {
        let reply = self.cmd(line)?;
        match reply.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => bail!("{}: `{line}` answered `{reply}`", self.describe()),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer side (`xtask guest-peer`): commands on stdin, one reply line
/// each on stdout.
pub fn peer() -> Result<()> {
    let mut listener: Option<TcpListener> = None;
    let mut accepted: Vec<TcpStream> = Vec::new();
    let mut connections: Vec<TcpStream> = Vec::new();
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("cannot read a command")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply: Result<String> = match words.as_slice() {
            ["hello"] => Ok(String::new()),
            ["listen", port, backlog] => listen(port, backlog).map(|l| {
                listener = Some(l);
                String::new()
            }),
            ["accept"] => match &listener {
                Some(l) => l.accept().map_err(Into::into).map(|(stream, from)| {
                    accepted.push(stream);
                    from.port().to_string()
                }),
                None => Err(anyhow!("no listener")),
            },
            ["connect", port, millis] => connect(port, millis).map(|stream| {
                let port = stream.local_addr().map_or(0, |a| a.port());
                connections.push(stream);
                port.to_string()
            }),
            ["close_connections"] => {
                connections.clear();
                Ok(String::new())
            }
            ["close_accepted"] => {
                accepted.clear();
                Ok(String::new())
            }
            ["shutdown_accepted"] => accepted
                .iter()
                .try_for_each(|c| c.shutdown(std::net::Shutdown::Both))
                .map_err(Into::into)
                .map(|()| String::new()),
            ["send_connections"] => connections
                .iter_mut()
                .try_for_each(|c| c.write_all(b"late"))
                .map_err(Into::into)
                .map(|()| String::new()),
            other => Err(anyhow!("unknown command {other:?}")),
        };
        let line = match reply {
            Ok(rest) => format!("ok {rest}"),
            Err(e) => format!("err {e}"),
        };
        writeln!(out, "{}", line.trim_end())?;
        out.flush()?;
    }
    Ok(())
}

/// A loopback listener with the given accept-queue length.
fn listen(port: &str, backlog: &str) -> Result<TcpListener> {
    let port: u16 = port.parse().context("bad port")?;
    let backlog: i32 = backlog.parse().context("bad backlog")?;
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    // std listens with a backlog of its own; listen() again on a listening
    // socket only changes the backlog.
    // SAFETY: listen() on a socket this listener owns.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(listener)
}

/// Connects with a timeout; the error is the io::ErrorKind's name
/// (`ConnectionRefused`, `TimedOut`), which the checks compare.
fn connect(port: &str, millis: &str) -> Result<TcpStream> {
    let port: u16 = port.parse().context("bad port")?;
    let millis: u64 = millis.parse().context("bad timeout")?;
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&to, Duration::from_millis(millis))
        .map_err(|e| anyhow!("{:?}", e.kind()))
}

// ---------------------------------------------------------------------------
// The daemon's checks.

/// `tcpwatch run` on a loopback port.
struct Daemon {
    child: Child,
    port: u16,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(tcpwatch: &Path, port: u16) -> Result<Daemon> {
        let mut child = Command::new(tcpwatch)
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", tcpwatch.display()))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let _ = read_stderr(
            child.stderr.take().context("no stderr pipe")?,
            stderr.clone(),
            "",
        );
        let mut daemon = Daemon {
            child,
            port,
            stderr,
        };
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if matches!(http_get(port, "/metrics"), Ok((200, _))) {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!("exited with {status}; stderr: {}", daemon.stderr_text());
            }
            if Instant::now() >= deadline {
                bail!(
                    "no /metrics within {START_WITHIN:?}; stderr: {}",
                    daemon.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|l| l.join(" | "))
            .unwrap_or_default()
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.port, path)
            .with_context(|| format!("GET {path}; tcpwatch stderr: {}", self.stderr_text()))
    }

    fn stop(mut self) {
        // SAFETY: kill on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if let Err(e) = wait_bounded(&mut self.child, Duration::from_secs(30)) {
            println!("INFO tcpwatch run did not stop on SIGTERM: {e:#}");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over HTTP/1.0 from 127.0.0.1: the status code and the body.
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: vm-test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed response: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// /metrics and /healthz answer; with the diag modules loaded the daemon
/// is healthy, not degraded.
fn run_metrics(daemon: &Daemon) -> Result<()> {
    let (status, body) = daemon.get("/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    for series in [
        "tcpwatch_build_info",
        "tcpwatch_sockets",
        "tcpwatch_events_received_total",
    ] {
        if !body.lines().any(|l| l.starts_with(series)) {
            bail!("/metrics has no {series}");
        }
    }
    let (status, health) = daemon.get("/healthz")?;
    if status != 200 || health.trim() != "ok" {
        bail!("/healthz answered {status} `{}`", health.trim());
    }
    Ok(())
}

/// Connections the client closes first leave TIME_WAIT sockets, which the
/// tracepoints never show: tcpwatch's count against the kernel's list.
fn time_wait(daemon: &Daemon) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (done, served) = mpsc::channel();
    thread::spawn(move || {
        let result = serve_until_eof(&listener, TIME_WAIT_CONNECTIONS);
        let _ = done.send(result);
    });
    for i in 0..TIME_WAIT_CONNECTIONS {
        // Dropped at once: the client closes first, so the TIME_WAIT is on
        // this side.
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10),
        )
        .with_context(|| format!("connection {i}"))?;
    }
    served
        .recv_timeout(EVENTS_WITHIN)
        .map_err(|_| anyhow!("the server did not see every close within {EVENTS_WITHIN:?}"))??;

    let endpoint = format!("tcpwatch_time_wait_sockets{{endpoint=\"127.0.0.1:{port}\"}}");
    let deadline = Instant::now() + EVENTS_WITHIN;
    loop {
        let kernel_before = kernel_time_wait(None)?;
        let kernel_ours = kernel_time_wait(Some(port))?;
        let (_, body) = daemon.get("/metrics")?;
        let kernel_after = kernel_time_wait(None)?;
        let total = sample(&body, "tcpwatch_sockets{state=\"TIME_WAIT\"}");
        let ours = sample(&body, &endpoint);
        // The scrape's own connection may add a TIME_WAIT after the metrics
        // were taken: the daemon's total lies between the two kernel counts.
        let low = kernel_before.min(kernel_after) as f64;
        let high = kernel_before.max(kernel_after) as f64;
        // The kernel's own list is the truth: under emulation a later
        // connect may reuse an earlier TIME_WAIT's 4-tuple (tcp_tw_reuse on
        // loopback), so fewer than all of them may be listed, never none.
        let agree = (1..=TIME_WAIT_CONNECTIONS as u64).contains(&kernel_ours)
            && ours == Some(kernel_ours as f64)
            && total.is_some_and(|t| (low..=high).contains(&t));
        if agree {
            println!(
                "INFO time_wait: {kernel_ours} towards port {port} in /proc/net/tcp, {ours:?} in {endpoint}; \
                 {total:?} in all in tcpwatch_sockets, {kernel_before}..{kernel_after} in /proc"
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "after {TIME_WAIT_CONNECTIONS} client-closed connections to port {port}: \
                 /proc/net/tcp{{,6}} lists {kernel_ours} TIME_WAIT towards it and {kernel_before}..{kernel_after} in all; \
                 tcpwatch says {} towards it ({endpoint}) and {} in all (tcpwatch_sockets{{state=\"TIME_WAIT\"}})",
                ours.map_or("nothing".to_owned(), |v| v.to_string()),
                total.map_or("nothing".to_owned(), |v| v.to_string()),
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Accepts `n` connections and closes each after the client's FIN.
fn serve_until_eof(listener: &TcpListener, n: usize) -> Result<()> {
    for _ in 0..n {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 64];
        while stream.read(&mut buf)? > 0 {}
    }
    Ok(())
}

/// TIME_WAIT sockets (state 06) in /proc/net/tcp and tcp6, all or only
/// those towards `remote_port`.
fn kernel_time_wait(remote_port: Option<u16>) -> Result<u64> {
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue; // no IPv6 in this kernel
        };
        count += text
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (Some(remote), Some(state)) = (fields.get(2), fields.get(3)) else {
                    return false;
                };
                let port = remote
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                *state == "06" && remote_port.is_none_or(|want| port == Some(want))
            })
            .count() as u64;
    }
    Ok(count)
}

/// The value of one exact series (name and labels) in an exposition.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `tcpwatch audit --json`: exit 0 and the documented top-level keys.
fn audit(tcpwatch: &Path) -> Result<()> {
    let mut child = Command::new(tcpwatch)
        .args(["audit", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", tcpwatch.display()))?;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_bounded(&mut child, Duration::from_secs(60))?;
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!("exited with {status}: {}", err.trim());
    }
    let doc: Value = serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
    let missing: Vec<&str> = ["netns", "sysctls", "tcpext", "time_wait", "findings"]
        .into_iter()
        .filter(|k| doc.get(k).is_none())
        .collect();
    if !missing.is_empty() {
        bail!("no {} in {doc}", missing.join(", "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Tracepoint formats, printed for `vm-test --save-formats`.

/// The tracepoints tcpwatch reads or may read; `*` is every one of a category.
const FORMAT_EVENTS: &[(&str, &str)] = &[
    ("sock", "inet_sock_set_state"),
    ("tcp", "*"),
    ("skb", "kfree_skb"),
    ("sock", "sock_send_length"),
    ("sock", "sock_recv_length"),
    ("sched", "sched_process_exec"),
    ("sched", "sched_process_exit"),
    ("syscalls", "sys_exit_accept"),
    ("syscalls", "sys_exit_accept4"),
    ("syscalls", "sys_enter_connect"),
];

/// Prints each format file between markers, named `<category>__<name>` as
/// in tcpwatch/tests/data/; a tracepoint the kernel lacks is named as missing.
fn print_formats() -> Result<()> {
    let events = tracefs_events()?;
    let mut out = std::io::stdout().lock();
    for (category, name) in FORMAT_EVENTS {
        let names: BTreeSet<String> = if *name == "*" {
            std::fs::read_dir(events.join(category))
                .with_context(|| format!("no tracepoint category {category}"))?
                .filter_map(Result::ok)
                .filter(|e| e.path().join("format").is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        } else {
            BTreeSet::from([(*name).to_owned()])
        };
        for name in names {
            let file = format!("{category}__{name}");
            match std::fs::read_to_string(events.join(category).join(&name).join("format")) {
                Ok(format) => {
                    writeln!(out, "{FORMAT_BEGIN}{file}")?;
                    write!(out, "{format}")?;
                    if !format.ends_with('\n') {
                        writeln!(out)?;
                    }
                    writeln!(out, "{FORMAT_END}{file}")?;
                }
                Err(_) => writeln!(out, "{FORMAT_MISSING}{file}")?,
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The tracefs events directory, mounting tracefs if nothing has yet.
fn tracefs_events() -> Result<PathBuf> {
    let tracing = Path::new("/sys/kernel/tracing");
    if !tracing.join("events").is_dir() {
        let source = CString::new("nodev")?;
        let target = CString::new("/sys/kernel/tracing")?;
        let fstype = CString::new("tracefs")?;
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call
        // and no data argument.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!("cannot mount tracefs: {}", std::io::Error::last_os_error());
        }
    }
    Ok(tracing.join("events"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_match_whole_series() {
        let body = "tcpwatch_sockets{state=\"TIME_WAIT\"} 21\n\
                    tcpwatch_sockets{state=\"TIME_WAIT_X\"} 3\n\
                    tcpwatch_time_wait_sockets{endpoint=\"127.0.0.1:4000\"} 20\n";
        assert_eq!(
            sample(body, "tcpwatch_sockets{state=\"TIME_WAIT\"}"),
            Some(21.0)
        );
        assert_eq!(
            sample(
                body,
                "tcpwatch_time_wait_sockets{endpoint=\"127.0.0.1:4000\"}"
            ),
            Some(20.0)
        );
        assert_eq!(
            sample(
                body,
                "tcpwatch_time_wait_sockets{endpoint=\"127.0.0.1:4001\"}"
            ),
            None
        );
    }

    #[test]
    fn events_are_matched_by_tuple_and_owner() {
        let e: Value = serde_json::from_str(
            r#"{"kind":"state","pid":42,"comm":"gclient","sport":40000,"dport":20001,"old_state":"SYN_SENT","new_state":"ESTABLISHED"}"#,
        )
        .unwrap();
        assert!(is_state(&e, "SYN_SENT", "ESTABLISHED"));
        assert!(on_tuple(&e, 40000, 20001) && !on_tuple(&e, 20001, 40000));
        assert_eq!(
            describe(&e),
            ":40000>20001 SYN_SENT -> ESTABLISHED gclient/42"
        );
        assert_eq!(one_line("a\nb \n\nc"), "a | b | c");
    }
}
