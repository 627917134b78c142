//! Harness for the privileged tests: a network namespace per test, peer
//! processes with their own command names, and `tcpwatch trace --json`.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::fs::MetadataExt,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The test peer: a process the tests drive line by line, with a command
/// name of their choosing (`tcpwatch/test-peer/main.rs`).
pub const PEER: &str = env!("CARGO_BIN_EXE_tcpwatch-test-peer");

/// Whether the privileged tests can run here. They are `#[ignore]`d, with
/// their reason, so a plain `cargo test` reports them as ignored; run
/// anyway (`cargo xtask test`, `--include-ignored`), one that cannot run
/// fails: it never passes without running.
pub fn privileged_or_skip(test: &str) -> bool {
    let reason = if !is_root() {
        Some("not root")
    } else if !binary_has_ebpf() {
        Some("tcpwatch was built without its eBPF programs (run `cargo xtask setup`)")
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("the `ip` tool (iproute2) is missing")
    } else {
        None
    };
    let Some(reason) = reason else { return true };
    skip_unless_required(test, reason)
}

/// Whether the privileged tests must run (CI, `cargo xtask test`).
fn privileged_tests_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var_os("TCPWATCH_REQUIRE_PRIVILEGED_TESTS").is_some()
}

/// Fails `test`, which was asked to run (it is `#[ignore]`d otherwise),
/// for `reason`: a test that cannot run does not pass.
fn skip_unless_required(test: &str, reason: &str) -> bool {
    let how = if privileged_tests_required() {
        "where privileged tests must run"
    } else {
        "run it as root after `cargo xtask setup --tests`, or leave it ignored"
    };
    panic!("test {test} cannot run: {reason} ({how})");
}

/// Whether `program` (installed by `cargo xtask setup --tests`) can run,
/// for a test that needs it beyond `privileged_or_skip`.
pub fn program_or_skip(test: &str, program: &str) -> bool {
    Command::new(program).arg("-h").output().is_ok()
        || skip_unless_required(
            test,
            &format!("`{program}` is missing (run `cargo xtask setup --tests`)"),
        )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the tcpwatch binary under test to completion.
pub fn tcpwatch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tcpwatch"))
        .args(args)
        .output()
        .expect("tcpwatch runs")
}

fn binary_has_ebpf() -> bool {
    Command::new(env!("CARGO_BIN_EXE_tcpwatch"))
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("eBPF programs included"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

/// A network namespace made for one test and deleted after it.
pub struct Netns {
    pub name: String,
    pub inode: u64,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let n = NEXT_NETNS.fetch_add(1, Ordering::Relaxed);
        let name = format!("tw-{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        let inode = std::fs::metadata(format!("/run/netns/{name}"))
            .expect("ip netns add made the namespace file")
            .ino();
        Netns { name, inode }
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// How many TCP sockets `ss` (sock_diag) lists in `state`, with an
    /// optional ss filter such as `["dport", "=", ":80"]`: ground truth.
    pub fn sockets(&self, state: &str, filter: &[&str]) -> usize {
        let mut args = vec!["ss", "-tanH", "state", state];
        args.extend_from_slice(filter);
        self.exec(&args).lines().count()
    }

    /// Sets a sysctl inside the namespace only.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// Loads an nftables ruleset inside the namespace only.
    pub fn nft(&self, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft runs");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(ruleset.as_bytes())
            .expect("nft reads");
        assert!(
            child.wait().expect("nft ends").success(),
            "nft rejected:\n{ruleset}"
        );
    }

    pub fn peer(&self, comm: &str) -> Peer {
        Peer::spawn(self, comm)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A process in the namespace, driven line by line (see `peer_main`).
pub struct Peer {
    pub pid: u32,
    pub comm: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn spawn(netns: &Netns, comm: &str) -> Peer {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &netns.name])
            .arg(PEER)
            .arg(comm)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("peer starts");
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        // `ip netns exec` execs the peer: the pid stays the same.
        let mut peer = Peer {
            pid: child.id(),
            comm: comm.to_owned(),
            child,
            stdin,
            stdout,
        };
        assert_eq!(peer.cmd("hello"), "ok");
        peer
    }

    /// Sends one command and returns its reply (without the `@@ ` prefix).
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.reply()
    }

    /// Sends a command without waiting, so two peers can act at once.
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("peer reads commands");
        self.stdin.flush().expect("peer reads commands");
    }

    /// The reply to the last command sent.
    pub fn reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            reply.clear();
            let n = self.stdout.read_line(&mut reply).expect("peer replies");
            assert!(n > 0, "peer {} exited", self.comm);
            // libtest may print `test peer_main ... ` before the first reply.
            if let Some(at) = reply.find("@@ ") {
                return reply[at + 3..].trim_end().to_owned();
            }
        }
    }

    /// A command that must succeed; returns what follows `ok`.
    pub fn ok(&mut self, line: &str) -> String {
        let reply = self.cmd(line);
        match reply.strip_prefix("ok") {
            Some(rest) => rest.trim().to_owned(),
            None => panic!("peer {}: `{line}` answered `{reply}`", self.comm),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tcpwatch trace --json` restricted to one namespace.
pub struct Tracer {
    child: Child,
    stdout: thread::JoinHandle<Vec<String>>,
    stderr: thread::JoinHandle<Vec<String>>,
}

impl Tracer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(netns: &Netns, extra: &[&str]) -> Tracer {
        Self::start_env(netns, extra, &[])
    }

    /// The same with environment variables for tcpwatch.
    pub fn start_env(netns: &Netns, extra: &[&str], env: &[(&str, &str)]) -> Tracer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcpwatch"))
            .args(["trace", "--json", "--netns", &netns.inode.to_string()])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpwatch starts");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let stdout = thread::spawn(move || out.lines().map_while(Result::ok).collect());
        let mut err = BufReader::new(child.stderr.take().expect("piped"));
        // Wait for the line that says the programs are attached.
        let mut seen = Vec::new();
        loop {
            let mut line = String::new();
            let n = err.read_line(&mut line).expect("tcpwatch stderr");
            assert!(n > 0, "tcpwatch exited before tracing: {seen:?}");
            let ready = line.contains("tracing TCP");
            seen.push(line.trim_end().to_owned());
            if ready {
                break;
            }
        }
        let stderr = thread::spawn(move || {
            let mut lines = seen;
            lines.extend(err.lines().map_while(Result::ok));
            lines
        });
        Tracer {
            child,
            stdout,
            stderr,
        }
    }

    /// Stops tracing with SIGINT and returns the events and stderr lines.
    pub fn stop(self) -> (Vec<Value>, Vec<String>) {
        self.stop_with(libc::SIGINT)
    }

    /// Stops tracing with `signal`, which must end it cleanly (exit 0).
    pub fn stop_with(mut self, signal: libc::c_int) -> (Vec<Value>, Vec<String>) {
        // Let delayed ACKs land and events still in flight on other CPUs
        // reach the ring buffer.
        thread::sleep(Duration::from_millis(500));
        // SAFETY: kill on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().expect("tcpwatch ends");
        let lines = std::mem::replace(&mut self.stdout, thread::spawn(Vec::new))
            .join()
            .expect("reader");
        let stderr = std::mem::replace(&mut self.stderr, thread::spawn(Vec::new))
            .join()
            .expect("reader");
        assert!(
            status.success(),
            "tcpwatch trace exited with {status}; stderr: {stderr:?}"
        );
        // Shown with a failing test's output: losses explain missing events.
        eprintln!("tcpwatch stderr: {stderr:?}");
        let events = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (events, stderr)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Events grouped by socket, in order: by kernel socket address, split where
/// the address is reused by a new socket (a birth transition after events).
pub fn by_socket(events: &[Value]) -> BTreeMap<(String, u32), Vec<Value>> {
    let mut generation: BTreeMap<String, u32> = BTreeMap::new();
    let mut out: BTreeMap<(String, u32), Vec<Value>> = BTreeMap::new();
    // Findings and lifecycle lines are about no single kernel socket.
    for e in events.iter().filter(|e| e.get("skaddr").is_some()) {
        let addr = e["skaddr"].as_str().unwrap_or("").to_owned();
        let birth = e["kind"] == "state"
            && matches!(
                (e["old_state"].as_str(), e["new_state"].as_str()),
                (Some("CLOSE"), Some("SYN_SENT" | "LISTEN")) | (Some("LISTEN"), Some("SYN_RECV"))
            );
        let gen = generation.entry(addr.clone()).or_insert(0);
        if birth && out.contains_key(&(addr.clone(), *gen)) {
            *gen += 1;
        }
        out.entry((addr, *gen)).or_default().push(e.clone());
    }
    out
}

/// One connection to `port` that the client closes first: the TIME_WAIT
/// stays on the client.
pub fn client_closes_first(client: &mut Peer, server: &mut Peer, addr: &str, port: u16) {
    close_client_first(client, server, &format!("connect {addr} {port}"));
}

/// The same from a fixed source port, as tcp_tw_reuse scenarios need.
pub fn client_closes_first_from(
    client: &mut Peer,
    server: &mut Peer,
    source: u16,
    addr: &str,
    port: u16,
) {
    close_client_first(
        client,
        server,
        &format!("connect_from {source} {addr} {port}"),
    );
}

fn close_client_first(client: &mut Peer, server: &mut Peer, connect: &str) {
    client.ok(connect);
    server.ok("accept");
    client.ok("close");
    server.ok("read_eof");
    server.ok("close");
}

/// One connection to `port` that the server closes first: the TIME_WAIT
/// stays on the server.
pub fn server_closes_first(client: &mut Peer, server: &mut Peer, addr: &str, port: u16) {
    client.ok(&format!("connect {addr} {port}"));
    server.ok("accept");
    server.ok("close");
    client.ok("read_eof");
    client.ok("close");
}

/// The value of the sample `name{labels}` in an exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// The sum of the samples of `metric` whose labels include every one of
/// `labels` (others, such as `unit`, may take any value), or None when no
/// sample matches.
pub fn sample_where(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((set, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let has = |(name, value): &(&str, &str)| set.contains(&format!("{name}=\"{value}\""));
        if labels.iter().all(has) {
            if let Ok(v) = value.trim().parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// (status line, lower-cased headers, body) of a GET; empty strings while
/// the server is not up yet.
pub fn http_get(addr: &str, path: &str) -> (String, String, String) {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return Default::default();
    };
    let mut text = String::new();
    if write!(s, "GET {path} HTTP/1.0\r\nHost: tcpwatch\r\n\r\n").is_err()
        || std::io::Read::read_to_string(&mut s, &mut text).is_err()
    {
        return Default::default();
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_owned(),
        headers.to_ascii_lowercase(),
        body.to_owned(),
    )
}

/// `tcpwatch run` on a free loopback port, killed when dropped.
pub struct RunningDaemon {
    pub child: Child,
    /// `127.0.0.1:PORT` it serves on.
    pub addr: String,
}

impl RunningDaemon {
    pub fn start(args: &[&str]) -> RunningDaemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcpwatch"))
            .args(["run", "--listen", "127.0.0.1:0"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpwatch run starts");
        let mut err = BufReader::new(child.stderr.take().expect("piped"));
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(
                err.read_line(&mut line).expect("stderr") > 0,
                "tcpwatch run exited early"
            );
            if let Some(rest) = line
                .split("serving https://")
                .nth(1)
                .or_else(|| line.split("serving http://").nth(1))
            {
                break rest.trim().trim_end_matches("/metrics").to_owned();
            }
        };
        thread::spawn(move || for _ in err.lines() {});
        RunningDaemon { child, addr }
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server that leaks CLOSE_WAIT, a server that closes first (TIME_WAIT
/// on its side) and their client, in one namespace.
pub struct LeakAndBuildup {
    pub leaky: Peer,
    pub closer: Peer,
    pub client: Peer,
    pub leaky_port: u16,
    pub closer_port: u16,
}

/// `leaks` connections the leaky server never closes after the client did,
/// and `closes` the other server closes first.
pub fn leak_and_buildup(ns: &Netns, leaks: usize, closes: usize) -> LeakAndBuildup {
    let mut leaky = ns.peer("tw-leaky");
    let mut closer = ns.peer("tw-closer");
    let mut client = ns.peer("tw-client");
    let leaky_port: u16 = leaky.ok("listen 127.0.0.1 16").parse().expect("port");
    let closer_port: u16 = closer.ok("listen 127.0.0.1 16").parse().expect("port");
    for _ in 0..leaks {
        client.ok(&format!("connect 127.0.0.1 {leaky_port}"));
        leaky.ok("accept");
        client.ok("close");
        leaky.ok("keep");
    }
    for _ in 0..closes {
        server_closes_first(&mut client, &mut closer, "127.0.0.1", closer_port);
    }
    LeakAndBuildup {
        leaky,
        closer,
        client,
        leaky_port,
        closer_port,
    }
}

/// An nftables table `inet tw` dropping what `rules` match on output, for
/// `Netns::nft`.
pub fn drop_rules(rules: &[&str]) -> String {
    let body: String = rules.iter().map(|r| format!("    {r}\n")).collect();
    format!("table inet tw {{\n  chain out {{\n    type filter hook output priority 0;\n{body}  }}\n}}\n")
}

/// The reports of `kind` in `lines` that raised it.
pub fn raised<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    findings(lines, kind)
        .into_iter()
        .filter(|f| f["status"] == "raised")
        .collect()
}

/// The TcpExt counter `name` of a namespace (`nstat`'s view of
/// /proc/net/netstat, read here apart from tcpwatch's own parser: ground truth).
pub fn tcpext(ns: &Netns, name: &str) -> u64 {
    let text = ns.exec(&["cat", "/proc/net/netstat"]);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (Some(names), Some(values)) = (lines.first(), lines.get(1)) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The finding reports of `kind` in `lines`.
pub fn findings<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|e| e["kind"] == "finding" && e["finding"] == kind)
        .collect()
}

/// `OLD->NEW` strings of the state events in `events`.
pub fn transitions(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "state")
        .map(|e| {
            format!(
                "{}->{}",
                e["old_state"].as_str().unwrap_or("?"),
                e["new_state"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// The state events of the one socket whose first transition is `first` and
/// whose events mention `port` as local or remote port.
pub fn socket_with(events: &[Value], first: &str, port: u16) -> Vec<Value> {
    let sockets = by_socket(events);
    let matching: Vec<_> = sockets
        .values()
        .filter(|evs| {
            transitions(evs).first().map(String::as_str) == Some(first)
                && evs.iter().any(|e| e["sport"] == port || e["dport"] == port)
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one socket starting {first} on port {port}, got {matching:#?}\nall: {events:#?}"
    );
    matching[0].clone()
}

pub fn assert_owned_by(events: &[Value], peer: &Peer) {
    for e in events {
        assert_eq!(e["pid"], peer.pid, "pid of {e}");
        assert_eq!(e["comm"], peer.comm.as_str(), "comm of {e}");
    }
}

pub fn localhost(v6: bool) -> IpAddr {
    if v6 {
        "::1".parse().expect("literal")
    } else {
        "127.0.0.1".parse().expect("literal")
    }
}

/// A server and a client peer in `ns` with these command names, connected
/// over `addr` (the server listening with a backlog of 16, the connection
/// accepted); returns them with the listening port and the client's port.
pub fn connected_peers(
    ns: &Netns,
    server: &str,
    client: &str,
    addr: &str,
) -> (Peer, Peer, u16, u16) {
    let mut server = ns.peer(server);
    let mut client = ns.peer(client);
    let port: u16 = server.ok(&format!("listen {addr} 16")).parse().unwrap();
    let client_port: u16 = client
        .ok(&format!("connect {addr} {port}"))
        .parse()
        .unwrap();
    assert_eq!(server.ok("accept").parse::<u16>().unwrap(), client_port);
    (server, client, port, client_port)
}

/// Kills `server` (listening on `port`, holding unread data so the kernel
/// resets its connection) after cutting it off with nftables (table
/// `unseen`: nothing reaches the port, nothing leaves it): the client
/// never learns. The server's sockets are gone when this returns; the
/// caller restores the path with [`restore_path`].
pub fn kill_server_unseen(ns: &Netns, server: &Peer, port: u16) {
    ns.nft(&format!(
        "table inet unseen {{\n  chain in {{\n    type filter hook input priority 0;\n    tcp dport {port} drop\n  }}\n  chain out {{\n    type filter hook output priority 0;\n    tcp sport {port} drop\n  }}\n}}\n"
    ));
    // SAFETY: a signal to the peer process this test started.
    assert_eq!(unsafe { libc::kill(server.pid as i32, libc::SIGKILL) }, 0);
    assert!(
        wait_until(Duration::from_secs(5), || {
            ns.sockets("all", &["sport", "=", &format!(":{port}")]) == 0
        }),
        "the server's sockets are gone"
    );
}

/// Undoes [`kill_server_unseen`]'s cut.
pub fn restore_path(ns: &Netns) {
    ns.exec(&["nft", "delete", "table", "inet", "unseen"]);
}

/// Waits until `cond` holds or the timeout passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// A tool a test needs: present, or (outside CI and `cargo xtask test`) a skip.
pub fn tool(name: &str, test: &str) -> bool {
    if Command::new(name).arg("--version").output().is_ok() {
        return true;
    }
    // Asked to run (it is `#[ignore]`d otherwise): missing, it fails.
    panic!("{test} needs {name} (run `cargo xtask setup --tests`)");
}

/// An empty directory of this test process's own under the temporary directory.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tcpwatch-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `s` percent-encoded for a URL query (everything but unreserved characters).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus (Debian's) on a free loopback port, scraping `target`
/// every second (job `tcpwatch`) with a storage directory of its own; killed
/// and its directory removed when dropped.
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:PORT` of its web API.
    pub web: String,
    dir: std::path::PathBuf,
}

impl Prometheus {
    /// Starts it with `rules` (the text of a rule file) if given, and waits
    /// until it has scraped `target` once.
    pub fn start(tag: &str, target: &str, rules: Option<&str>) -> Prometheus {
        let dir = temp_dir(tag);
        let mut config = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n".to_owned();
        if let Some(rules) = rules {
            std::fs::write(dir.join("tcpwatch.rules.yml"), rules).expect("write");
            config.push_str("rule_files:\n  - tcpwatch.rules.yml\n");
        }
        config.push_str(&format!(
            "scrape_configs:\n  - job_name: tcpwatch\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ));
        std::fs::write(dir.join("prometheus.yml"), config).expect("write");
        let web = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .to_string();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus { child, web, dir };
        assert!(
            wait_until(Duration::from_secs(30), || http_get(
                &prometheus.web,
                "/-/ready"
            )
            .0
            .contains(" 200")),
            "prometheus never became ready"
        );
        // Targets are applied a few seconds after start: what happens before
        // the first scrape would be part of every series' first sample.
        assert!(
            wait_until(Duration::from_secs(30), || prometheus.query("up == 1")
                ["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())),
            "prometheus never scraped {target}"
        );
        prometheus
    }

    /// A GET of the HTTP API, as JSON (null when it does not answer JSON).
    pub fn api(&self, path: &str) -> Value {
        serde_json::from_str(&http_get(&self.web, path).2).unwrap_or(Value::Null)
    }

    /// An instant query at the present.
    pub fn query(&self, promql: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", url_encode(promql)))
    }

    /// A range query from `start` to `end` (Unix seconds) every `step` seconds.
    pub fn query_range(&self, promql: &str, start: f64, end: f64, step: f64) -> Value {
        self.api(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            url_encode(promql)
        ))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cgroup v2 hierarchy's mount, as tcpwatch finds it.
pub fn cgroup2_mount() -> tcpwatch::host::cgroup::Mount {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    tcpwatch::host::cgroup::cgroup2_mount(&text).expect("a cgroup2 mount (pure v2 or hybrid host)")
}

/// Directories above test cgroups that this process made (`system.slice`
/// on a host without systemd, the test slice), with how many test cgroups
/// use each: the last one out removes it.
static SHARED_CGROUPS: std::sync::Mutex<BTreeMap<std::path::PathBuf, usize>> =
    std::sync::Mutex::new(BTreeMap::new());

/// A cgroup made for a test under the v2 mount (`system.slice/NAME.service`,
/// `SLICE/docker-ID.scope`); processes moved into it go back to where they
/// came from, and the directory (with the parents this process made) is
/// removed, when it is dropped. Existing cgroups are only read.
pub struct TestCgroup {
    pub dir: std::path::PathBuf,
    /// Its path as `/proc/PID/cgroup` names it.
    pub path: String,
    /// The parents made for it, innermost first.
    parents: Vec<std::path::PathBuf>,
    /// Where each process moved in came from.
    origins: Vec<(u32, std::path::PathBuf)>,
}

impl TestCgroup {
    /// Makes the cgroup at `rel` (below the mount, e.g. `system.slice/x.service`).
    pub fn new(rel: &str) -> TestCgroup {
        let mount = cgroup2_mount();
        let dir = mount.point.join(rel);
        assert!(!dir.exists(), "{} exists already", dir.display());
        let mut shared = SHARED_CGROUPS.lock().unwrap_or_else(|p| p.into_inner());
        let mut parents = Vec::new();
        let mut at = dir.parent();
        while let Some(parent) = at.filter(|p| *p != mount.point.as_path()) {
            if let Some(users) = shared.get_mut(parent) {
                *users += 1;
                parents.push(parent.to_owned());
            } else if !parent.exists() {
                parents.push(parent.to_owned());
            }
            at = parent.parent();
        }
        // Made outermost first; counted as this process's own.
        for parent in parents.iter().rev() {
            if !shared.contains_key(parent) {
                std::fs::create_dir(parent)
                    .unwrap_or_else(|e| panic!("cannot make {}: {e}", parent.display()));
                shared.insert(parent.clone(), 1);
            }
        }
        drop(shared);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
        TestCgroup {
            path: mount.path_of(rel),
            dir,
            parents,
            origins: Vec::new(),
        }
    }

    /// The directory of the cgroup process `pid` is in now.
    fn dir_of(pid: u32) -> std::path::PathBuf {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroup");
        let path = tcpwatch::host::cgroup::v2_path(&text).expect("a cgroup v2 line");
        cgroup2_mount().dir_of(path).expect("within the mount")
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&mut self, pid: u32) {
        self.origins.push((pid, Self::dir_of(pid)));
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("cannot move {pid} into {}: {e}", self.dir.display()));
        assert_eq!(Self::dir_of(pid), self.dir, "{pid} moved");
    }

    /// The cgroup id tcpwatch sees: the directory's inode number.
    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.dir).expect("the cgroup").ino()
    }

    /// Moves what is left inside back out and removes the directory (and
    /// the parents nobody else uses).
    pub fn remove(mut self) {
        self.clean();
    }

    fn clean(&mut self) {
        if !self.dir.exists() {
            return;
        }
        let own = Self::dir_of(std::process::id());
        // What is inside (forked children too) goes back where it came from.
        for _ in 0..50 {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                let back = self
                    .origins
                    .iter()
                    .find(|(p, _)| *p == pid)
                    .map_or(own.clone(), |(_, d)| d.clone());
                let _ = std::fs::write(back.join("cgroup.procs"), pid.to_string());
            }
            // An exiting process leaves a moment after it is reaped.
            if std::fs::remove_dir(&self.dir).is_ok() {
                break;
            }
            thread::sleep(Duration::from_millis(40));
        }
        let mut shared = SHARED_CGROUPS.lock().unwrap_or_else(|p| p.into_inner());
        for parent in &self.parents {
            let Some(users) = shared.get_mut(parent) else {
                continue;
            };
            *users -= 1;
            if *users == 0 {
                shared.remove(parent);
                let _ = std::fs::remove_dir(parent);
            }
        }
        self.parents.clear();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.clean();
    }
}

/// A docker container id (64 hexadecimal digits) unique to this process and `n`.
pub fn container_id(n: u16) -> String {
    format!("{:08x}{n:04x}", std::process::id()).repeat(6)[..64].to_owned()
}
