//! `cargo xtask bench`: what tcpwatch costs a host that churns connections,
//! next to no observer and to libbpf-tools' `tcpstates`.
//!
//! The workload (`cargo xtask churn`, run inside a network namespace made
//! for it) is a loopback server and clients doing connect, a little data and
//! close as fast as they can. Each observer runs on the host and sees the
//! namespace's events like any other. Figures are reported, never asserted:
//! machines are noisy.
use std::{
    io::{Read, Write},
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

use crate::setup::run;

/// Runs the churn workload for `seconds`; returns the connections per second.
pub fn churn(seconds: f64, clients: usize) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // The server closes first: TIME_WAIT stays on its side, so clients never
    // run out of ephemeral ports however fast they go.
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 16];
            let _ = s.read_exact(&mut buf);
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
                        // Until the server's FIN.
                        let _ = s.read(&mut buf);
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

struct Netns(String);

impl Netns {
    fn new() -> Result<Netns> {
        let name = format!("tcpwatch-bench-{}", std::process::id());
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
struct Observer(Child);

impl Drop for Observer {
    fn drop(&mut self) {
        // SAFETY: kill on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

fn start(program: &Path, args: &[&str], ready: Duration) -> Result<Observer> {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    // Loading and attaching takes well under this.
    thread::sleep(ready);
    Ok(Observer(child))
}

/// Clients of the churn workload: enough to keep both CPUs busy, so the rate
/// measures CPU cost rather than wake-up latency.
pub const CLIENTS: usize = 8;

fn churn_once(ns: &Netns, seconds: f64) -> Result<f64> {
    let me = std::env::current_exe().context("cannot find the xtask binary")?;
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(me)
        .args([
            "churn",
            "--seconds",
            &seconds.to_string(),
            "--clients",
            &CLIENTS.to_string(),
        ])
        .output()
        .context("cannot run the churn workload")?;
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
    Observer(PathBuf, Vec<&'static str>),
    /// An observer that is not installed here.
    Missing,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures every observer mode `runs` times, interleaved, and prints a
/// Markdown table.
pub fn bench(seconds: f64, runs: usize) -> Result<()> {
    let binary: PathBuf = crate::tasks::build()?;
    let tcpstates = ["/usr/sbin/tcpstates", "/usr/bin/tcpstates"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let ns = Netns::new()?;
    let modes: Vec<(&str, Mode)> = vec![
        ("no observer", Mode::Baseline),
        (
            "tcpwatch run (metrics)",
            Mode::Observer(binary.clone(), vec!["run", "--listen", "127.0.0.1:0"]),
        ),
        (
            "tcpwatch trace --json > /dev/null",
            Mode::Observer(binary.clone(), vec!["trace", "--json"]),
        ),
        (
            "libbpf-tools tcpstates > /dev/null",
            tcpstates.map_or(Mode::Missing, |p| Mode::Observer(p, vec![])),
        ),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..runs {
        for (i, (_, mode)) in modes.iter().enumerate() {
            match mode {
                Mode::Baseline => results[i].push(churn_once(&ns, seconds)?),
                Mode::Missing => {}
                Mode::Observer(program, args) => {
                    let _running = start(program, args, Duration::from_millis(1500))?;
                    results[i].push(churn_once(&ns, seconds)?);
                }
            }
        }
    }
    let baseline = median(results[0].clone());
    println!("| observer | connections/s (median of {runs}) | min - max | ratio to no observer |");
    println!("| --- | --- | --- | --- |");
    for ((name, _), r) in modes.iter().zip(&results) {
        if r.is_empty() {
            println!("| {name} | not installed | | |");
            continue;
        }
        let m = median(r.clone());
        let (lo, hi) = r
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        println!(
            "| {name} | {m:.0} | {lo:.0} - {hi:.0} | {:.2} |",
            m / baseline
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// A smoke run of the workload on loopback (no privileges needed).
    #[test]
    fn churn_completes_connections() {
        let rate = super::churn(0.3, 2).expect("churn runs");
        assert!(rate > 10.0, "only {rate} connections/s");
    }
}
