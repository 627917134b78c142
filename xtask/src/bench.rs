//! `cargo xtask bench`: what tcpwatch costs a host that churns connections,
//! next to no observer and to libbpf-tools' `tcpstates`.
//!
//! The workload (`cargo xtask churn`, run inside a network namespace made
//! for it) is a loopback server and clients doing connect, a little data and
//! close as fast as they can. Each observer runs on the host and sees the
//! namespace's events like any other. Figures are reported, never asserted:
//! machines are noisy.
use std::{
    io::{BufRead as _, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{probe, setup::run};

/// Runs the churn workload for `seconds`; returns the connections per second.
/// By default the server closes first: TIME_WAIT stays on its side, so
/// clients never run out of ephemeral ports however fast they go. With
/// `client_closes`, TIME_WAIT is the clients' (the soak test mixes both).
pub fn churn(seconds: f64, clients: usize, client_closes: bool) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 16];
            if client_closes {
                // Until the client's FIN.
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            } else {
                let _ = s.read_exact(&mut buf);
            }
        }
    });
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, done) = (stop.clone(), done.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 16];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        continue;
                    };
                    if s.write_all(&buf).is_ok() {
                        if !client_closes {
                            // Until the server's FIN.
                            let _ = s.read(&mut buf);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for w in workers {
        let _ = w.join();
    }
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed)
}

pub struct Netns(pub String);

impl Netns {
    pub fn new() -> Result<Netns> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "tcpwatch-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// An observer of the host, stopped (SIGINT) when dropped.
pub struct Observer {
    child: Child,
    /// The daemon's HTTP port, for `tcpwatch run`.
    pub metrics_port: Option<u16>,
    /// Where its standard error goes, to read its exit summary.
    stderr: PathBuf,
}

impl Observer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it and returns its standard error.
    pub fn stop(mut self) -> String {
        self.interrupt();
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn interrupt(&mut self) {
        // SAFETY: kill on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.interrupt();
        }
        let _ = std::fs::remove_file(&self.stderr);
    }
}

fn start(program: &Path, args: &[String], metrics_port: Option<u16>) -> Result<Observer> {
    start_with_env(program, args, metrics_port, &[])
}

fn start_with_env(
    program: &Path,
    args: &[String],
    metrics_port: Option<u16>,
    env: &[(&str, &str)],
) -> Result<Observer> {
    let stderr = std::env::temp_dir().join(format!(
        "tcpwatch-bench-{}-{}.err",
        std::process::id(),
        probe::free_port()?
    ));
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let observer = Observer {
        child,
        metrics_port,
        stderr,
    };
    match metrics_port {
        Some(port) => probe::wait_for_metrics(port, Duration::from_secs(20))?,
        // Loading and attaching takes well under this.
        None => thread::sleep(Duration::from_millis(1500)),
    }
    Ok(observer)
}

/// `tcpwatch run` on a free port, with `config` lines in a file if any.
pub fn start_daemon(binary: &Path, config: &str, extra: &[&str]) -> Result<Observer> {
    start_daemon_with_env(binary, config, extra, &[])
}

fn start_daemon_with_env(
    binary: &Path,
    config: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Observer> {
    let port = probe::free_port()?;
    let mut args = vec![
        "run".to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
    ];
    if !config.is_empty() {
        let path = std::env::temp_dir().join(format!("tcpwatch-bench-{port}.toml"));
        std::fs::write(&path, config)?;
        args.extend(["--config".to_owned(), path.display().to_string()]);
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    start_with_env(binary, &args, Some(port), env)
}

/// Clients of the churn workload: enough to keep both CPUs busy, so the rate
/// measures CPU cost rather than wake-up latency.
pub const CLIENTS: usize = 8;

fn churn_once(ns: &Netns, seconds: f64) -> Result<f64> {
    churn_in(&ns.0, seconds)
}

fn churn_in(netns: &str, seconds: f64) -> Result<f64> {
    churn_in_netns(netns, seconds, false)
}

/// Runs the churn workload in the named namespace.
pub fn churn_in_netns(netns: &str, seconds: f64, client_closes: bool) -> Result<f64> {
    let me = std::env::current_exe().context("cannot find the xtask binary")?;
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns]).arg(me).args([
        "churn",
        "--seconds",
        &seconds.to_string(),
        "--clients",
        &CLIENTS.to_string(),
    ]);
    if client_closes {
        command.arg("--client-closes");
    }
    let out = command.output().context("cannot run the churn workload")?;
    if !out.status.success() {
        bail!("churn failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("churn printed no rate")
}

/// What runs beside the workload.
enum Mode {
    Baseline,
    Daemon,
    /// The daemon with a configuration and environment of its own (the
    /// classic tracepoints, no BPF statistics, no optional hooks...), to
    /// measure what each costs.
    DaemonWith {
        config: &'static str,
        env: &'static [(&'static str, &'static str)],
    },
    Observer(PathBuf, Vec<String>),
    /// An observer that is not installed here.
    Missing,
}

/// One run of one mode.
#[derive(Clone, Copy, Default)]
struct Run {
    rate: f64,
    /// The observer's own CPU seconds during the churn.
    cpu: Option<f64>,
    events: Option<f64>,
    /// Events dropped because the ring buffer was full.
    lost: Option<f64>,
    /// Program runs the kernel skipped (BPF recursion on a CPU).
    missed: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Events received, lost (ring buffer full) and missed (BPF recursion)
/// from trace's exit summary.
fn trace_summary(stderr: &str) -> (Option<f64>, Option<f64>, Option<f64>) {
    let number_before = |what: &str| {
        stderr.lines().rev().find_map(|l| {
            let at = l.find(what)?;
            l[..at].split_whitespace().last()?.parse::<f64>().ok()
        })
    };
    (
        number_before(" events received"),
        number_before(" events LOST").or(Some(0.0)),
        number_before(" events MISSED").or(Some(0.0)),
    )
}

fn observed_churn(ns: &Netns, seconds: f64, observer: Observer) -> Result<Run> {
    let before = probe::cpu_seconds(observer.pid())?;
    let rate = churn_once(ns, seconds)?;
    let cpu = Some(probe::cpu_seconds(observer.pid())? - before);
    if let Some(port) = observer.metrics_port {
        let (body, _) = probe::http_get(port, "/metrics")?;
        let events = probe::sample(&body, "tcpwatch_events_received_total");
        let lost = probe::sample(&body, "tcpwatch_events_lost_total{cause=\"ringbuf_full\"");
        let missed = probe::sample(&body, "tcpwatch_events_lost_total{cause=\"bpf_recursion\"");
        drop(observer);
        return Ok(Run {
            rate,
            cpu,
            events: Some(events),
            lost: Some(lost),
            missed: Some(missed),
        });
    }
    let (events, lost, missed) = trace_summary(&observer.stop());
    Ok(Run {
        rate,
        cpu,
        events,
        lost,
        missed,
    })
}

/// Measures every observer mode `runs` times, interleaved, and prints a
/// Markdown table.
fn overhead(binary: &Path, ns: &Netns, seconds: f64, runs: usize) -> Result<()> {
    let tcpstates = ["/usr/sbin/tcpstates", "/usr/bin/tcpstates"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let modes: Vec<(&str, Mode)> = vec![
        ("no observer", Mode::Baseline),
        ("tcpwatch run (metrics)", Mode::Daemon),
        (
            "tcpwatch run on the classic tracepoints",
            Mode::DaemonWith {
                config: "",
                env: &[("TCPWATCH_CLASSIC_TRACEPOINTS", "1")],
            },
        ),
        (
            "tcpwatch run without the drop hook (skb:kfree_skb)",
            Mode::DaemonWith {
                config: "",
                env: &[("TCPWATCH_SKIP_HOOKS", "kfree_skb")],
            },
        ),
        (
            "tcpwatch run without BPF statistics (bpf_stats = false)",
            Mode::DaemonWith {
                config: "bpf_stats = false\n",
                env: &[],
            },
        ),
        (
            "floor: one raw tracepoint program on inet_sock_set_state that returns at once (nothing observed)",
            Mode::DaemonWith {
                config: "",
                env: &[
                    ("TCPWATCH_BENCH_EMPTY_LIFECYCLE", "1"),
                    ("TCPWATCH_SKIP_HOOKS", "optional"),
                ],
            },
        ),
        (
            "floor on the classic tracepoint (nothing observed)",
            Mode::DaemonWith {
                config: "",
                env: &[
                    ("TCPWATCH_BENCH_EMPTY_LIFECYCLE", "1"),
                    ("TCPWATCH_SKIP_HOOKS", "optional"),
                    ("TCPWATCH_CLASSIC_TRACEPOINTS", "1"),
                ],
            },
        ),
        (
            "tcpwatch trace --json > /dev/null",
            Mode::Observer(binary.to_owned(), vec!["trace".into(), "--json".into()]),
        ),
        (
            "libbpf-tools tcpstates > /dev/null",
            tcpstates.map_or(Mode::Missing, |p| Mode::Observer(p, vec![])),
        ),
    ];
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); modes.len()];
    for _ in 0..runs {
        for (i, (_, mode)) in modes.iter().enumerate() {
            let run = match mode {
                Mode::Baseline => Run {
                    rate: churn_once(ns, seconds)?,
                    ..Run::default()
                },
                Mode::Missing => continue,
                Mode::Daemon => observed_churn(ns, seconds, start_daemon(binary, "", &[])?)?,
                Mode::DaemonWith { config, env } => observed_churn(
                    ns,
                    seconds,
                    start_daemon_with_env(binary, config, &[], env)?,
                )?,
                Mode::Observer(program, args) => {
                    observed_churn(ns, seconds, start(program, args, None)?)?
                }
            };
            results[i].push(run);
        }
    }
    let baseline = median(results[0].iter().map(|r| r.rate).collect());
    println!("### Churn overhead ({runs} runs of {seconds} s per mode, interleaved)\n");
    println!("| observer | connections/s (median) | min - max | ratio to no observer | observer CPU s per run | events per run | CPU µs per event | lost: ring full / skipped by the kernel (all runs) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for ((name, _), r) in modes.iter().zip(&results) {
        if r.is_empty() {
            println!("| {name} | not installed | | | | | | |");
            continue;
        }
        let rates: Vec<f64> = r.iter().map(|x| x.rate).collect();
        let m = median(rates.clone());
        let (lo, hi) = rates
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let pick = |f: fn(&Run) -> Option<f64>| {
            let v: Vec<f64> = r.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let cpu = pick(|x| x.cpu);
        let events = pick(|x| x.events);
        let lost: Option<f64> = r.iter().map(|x| x.lost).sum();
        let missed: Option<f64> = r.iter().map(|x| x.missed).sum();
        let show =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        let per_event = cpu
            .zip(events)
            .filter(|(_, e)| *e > 0.0)
            .map(|(c, e)| c / e * 1e6);
        println!(
            "| {name} | {m:.0} | {lo:.0} - {hi:.0} | {:.2} | {} | {} | {} | {} / {} |",
            m / baseline,
            show(cpu, 2),
            show(events, 0),
            show(per_event, 2),
            show(lost, 0),
            show(missed, 0),
        );
    }
    println!();
    Ok(())
}

/// Past capacity: the daemon with a ring buffer too small for the churn.
/// Losses must be counted and reported, memory must stay flat, and the
/// daemon must keep serving (with /healthz saying why it is unhealthy).
fn capacity(binary: &Path, ns: &Netns, seconds: f64) -> Result<()> {
    println!("### Past capacity: a 16 KiB ring buffer under full churn\n");
    let daemon = start_daemon(binary, "ring_kib = 16\n", &[])?;
    let port = daemon.metrics_port.context("a daemon has a port")?;
    let rss_before = probe::rss_bytes(daemon.pid())?;
    let rate = churn_once(ns, seconds)?;
    let (body, _) = probe::http_get(port, "/metrics")?;
    let received = probe::sample(&body, "tcpwatch_events_received_total");
    let lost = probe::sample(&body, "tcpwatch_events_lost_total");
    let rss_after = probe::rss_bytes(daemon.pid())?;
    let health = match probe::http_get(port, "/healthz") {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("{e}"),
    };
    let alive = daemon_alive(&daemon);
    drop(daemon);
    println!("| churn connections/s | events received | events lost (counted) | lost share | RSS before -> after | still serving | /healthz |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {rate:.0} | {received:.0} | {lost:.0} | {:.1}% | {:.1} -> {:.1} MiB | {alive} | {health} |\n",
        100.0 * lost / (received + lost).max(1.0),
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
    );
    Ok(())
}

fn daemon_alive(daemon: &Observer) -> bool {
    daemon
        .metrics_port
        .is_some_and(|port| probe::http_get(port, "/metrics").is_ok())
}

/// tcpwatch's counts by state for the churn namespace against `ss`, during
/// churn and after it stops, until they agree.
fn accuracy(binary: &Path, ns: &Netns, seconds: f64) -> Result<()> {
    println!(
        "### Accuracy against ss during and after {seconds} s of churn (reconcile_interval 5s)\n"
    );
    let inode = probe::netns_inode(&ns.0)?;
    let daemon = start_daemon(binary, "reconcile_interval = \"5s\"\n", &["--netns-labels"])?;
    let port = daemon.metrics_port.context("a daemon has a port")?;
    let churn = {
        let name = ns.0.clone();
        thread::spawn(move || churn_in(&name, seconds))
    };
    let started = Instant::now();
    let (mut worst, mut worst_state, mut worst_of) = (0, String::new(), 0);
    while started.elapsed().as_secs_f64() < seconds {
        let (diff, state, total) = probe::disagreement(port, inode, &ns.0)?;
        if diff > worst {
            (worst, worst_state, worst_of) = (diff, state, total);
        }
        thread::sleep(Duration::from_millis(500));
    }
    let rate = churn
        .join()
        .map_err(|_| anyhow::anyhow!("churn panicked"))??;
    let agreed = probe::time_to_agree(
        port,
        inode,
        &ns.0,
        Duration::from_secs(30),
        Duration::from_millis(250),
    )?;
    let (body, _) = probe::http_get(port, "/metrics")?;
    let corrections = probe::sample(&body, "tcpwatch_reconcile_corrections_total");
    drop(daemon);
    println!("| churn connections/s | largest disagreement during churn (state, of sockets) | after churn: equal to ss within | reconcile corrections |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {rate:.0} | {worst} ({worst_state}, of {worst_of}) | {} | {corrections:.0} |\n",
        match agreed {
            Ok(s) => format!("{s:.1} s"),
            Err((diff, state)) => format!("not in 30 s (still {diff} off in {state})"),
        },
    );
    Ok(())
}

/// Daemon memory and scrape cost with `sockets` sockets held open in a
/// namespace (half as many connections: both ends are tracked).
fn memory(binary: &Path, sizes: &[usize]) -> Result<()> {
    println!("### Memory and scrape cost by tracked sockets (established, both ends)\n");
    println!("| tracked sockets | model connections | daemon RSS | RSS growth per socket | /metrics scrape (median of 5) |");
    println!("| --- | --- | --- | --- | --- |");
    let me = std::env::current_exe().context("cannot find the xtask binary")?;
    for &sockets in sizes {
        let ns = Netns::new()?;
        // Reconciliation only at start: its dumps are transient memory that
        // would blur what the model itself holds.
        let config = format!(
            "max_connections = {}\nmax_time_wait = {}\nreconcile_interval = \"0s\"\n",
            sockets * 2,
            sockets * 2
        );
        let daemon = start_daemon(binary, &config, &[])?;
        let port = daemon.metrics_port.context("a daemon has a port")?;
        thread::sleep(Duration::from_secs(1));
        let rss_before = probe::rss_bytes(daemon.pid())?;
        let mut holders = Vec::new();
        let mut left = sockets / 2;
        while left > 0 {
            let n = left.min(crate::hold::PER_HOLDER);
            left -= n;
            holders.push(
                Command::new("ip")
                    .args(["netns", "exec", &ns.0])
                    .arg(&me)
                    .args(["hold", "--connections", &n.to_string()])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .context("cannot start a holder")?,
            );
        }
        for holder in &mut holders {
            // It prints one line, `ready`, once every connection is up.
            let mut ready = String::new();
            if let Some(out) = holder.stdout.take() {
                let _ = std::io::BufReader::new(out).read_line(&mut ready);
            }
            if !ready.contains("ready") {
                for h in &mut holders {
                    let _ = h.kill();
                }
                bail!("a holder of the {sockets} sockets did not get ready");
            }
        }
        // Let the daemon drain what the connects produced.
        let mut model = 0.0;
        for _ in 0..60 {
            thread::sleep(Duration::from_millis(500));
            let (body, _) = probe::http_get(port, "/metrics")?;
            let now = probe::sample(&body, "tcpwatch_model_connections");
            if now >= sockets as f64 && now == model {
                break;
            }
            model = now;
        }
        let rss = probe::rss_bytes(daemon.pid())?;
        let scrapes: Vec<f64> = (0..5)
            .map(|_| probe::http_get(port, "/metrics").map(|(_, t)| t.as_secs_f64() * 1e3))
            .collect::<Result<_>>()?;
        for holder in &mut holders {
            drop(holder.stdin.take());
        }
        for holder in &mut holders {
            let _ = holder.wait();
        }
        drop(daemon);
        println!(
            "| {sockets} | {model:.0} | {:.1} MiB | {:.0} bytes | {:.1} ms |",
            rss as f64 / 1048576.0,
            rss.saturating_sub(rss_before) as f64 / sockets as f64,
            median(scrapes),
        );
        drop(ns);
    }
    println!();
    Ok(())
}

/// The benchmark sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Overhead,
    Capacity,
    Accuracy,
    Memory,
}

/// Runs the chosen sections (all by default) and prints Markdown.
pub fn bench(seconds: f64, runs: usize, sizes: &[usize], only: &[Section]) -> Result<()> {
    let binary: PathBuf = crate::tasks::build()?;
    let wanted = |s: Section| only.is_empty() || only.contains(&s);
    // Each section in namespaces of its own, deleted after it (which purges
    // their TIME_WAIT sockets): no section measures another's leftovers.
    if wanted(Section::Memory) {
        memory(&binary, sizes)?;
    }
    if wanted(Section::Overhead) {
        overhead(&binary, &Netns::new()?, seconds, runs)?;
    }
    if wanted(Section::Capacity) {
        capacity(&binary, &Netns::new()?, seconds)?;
    }
    if wanted(Section::Accuracy) {
        accuracy(&binary, &Netns::new()?, seconds.max(10.0))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// A smoke run of the workload on loopback (no privileges needed).
    #[test]
    fn churn_completes_connections() {
        let rate = super::churn(0.3, 2, false).expect("churn runs");
        assert!(rate > 10.0, "only {rate} connections/s");
        let rate = super::churn(0.3, 2, true).expect("churn runs");
        assert!(rate > 10.0, "only {rate} connections/s");
    }
}
