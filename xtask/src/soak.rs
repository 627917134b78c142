//! `cargo xtask soak`: `tcpwatch run` for minutes under mixed churn, with
//! its memory sampled along the way and its view checked against `ss` at
//! the end. Reported, not asserted; the report says what held.
use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    bench::{churn_in_netns, start_daemon, Netns},
    probe,
};

/// One phase of the workload: seconds of churn (or of quiet), and who
/// closes first.
const PHASES: [(f64, Option<bool>); 3] = [(20.0, Some(false)), (20.0, Some(true)), (10.0, None)];

pub fn soak(minutes: f64) -> Result<()> {
    let binary = crate::tasks::build()?;
    let ns = Netns::new()?;
    let inode = probe::netns_inode(&ns.0)?;
    let daemon = start_daemon(&binary, "", &["--netns-labels"])?;
    let port = daemon.metrics_port.context("a daemon has a port")?;
    let started = Instant::now();
    let until = Duration::from_secs_f64(minutes * 60.0);

    let name = ns.0.clone();
    let workload = thread::spawn(move || -> Result<(u64, f64)> {
        let mut connections = 0f64;
        let mut phases = 0;
        while started.elapsed() < until {
            let (seconds, closer) = PHASES[phases % PHASES.len()];
            phases += 1;
            match closer {
                Some(client_closes) => {
                    connections += seconds * churn_in_netns(&name, seconds, client_closes)?;
                }
                None => thread::sleep(Duration::from_secs_f64(seconds)),
            }
        }
        Ok((phases as u64, connections))
    });

    println!("### Soak: {minutes} min of mixed churn under tcpwatch run\n");
    println!("| minute | daemon RSS | model connections | model TIME_WAIT | events received | lost: ring full / skipped |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut peak_rss = 0u64;
    let mut rss_curve = Vec::new();
    while !workload.is_finished() {
        thread::sleep(Duration::from_secs(30));
        let rss = probe::rss_bytes(daemon.pid())?;
        peak_rss = peak_rss.max(rss);
        rss_curve.push(rss);
        let (body, _) = probe::http_get(port, "/metrics")?;
        println!(
            "| {:.1} | {:.1} MiB | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} |",
            started.elapsed().as_secs_f64() / 60.0,
            rss as f64 / 1048576.0,
            probe::sample(&body, "tcpwatch_model_connections"),
            probe::sample(&body, "tcpwatch_model_time_wait_entries"),
            probe::sample(&body, "tcpwatch_events_received_total"),
            probe::sample(&body, "tcpwatch_events_lost_total{cause=\"ringbuf_full\""),
            probe::sample(&body, "tcpwatch_events_lost_total{cause=\"bpf_recursion\""),
        );
    }
    let (phases, connections) = workload
        .join()
        .map_err(|_| anyhow::anyhow!("the workload panicked"))??;

    // After the churn: equal to ss within one reconciliation (10 s)?
    let agreed = probe::time_to_agree(
        port,
        inode,
        &ns.0,
        Duration::from_secs(15),
        Duration::from_millis(500),
    )?;
    let alive = probe::http_get(port, "/healthz").is_ok();
    let stderr = daemon.stop();
    let panics = stderr.matches("panicked").count();
    let first = rss_curve.first().copied().unwrap_or(0);
    let last_rss = rss_curve.last().copied().unwrap_or(0);
    println!();
    println!("| phases | connections made | panics | healthy at the end | RSS first -> peak -> last | equal to ss after the churn |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {phases} | {connections:.0} | {panics} | {alive} | {:.1} -> {:.1} -> {:.1} MiB | {} |",
        first as f64 / 1048576.0,
        peak_rss as f64 / 1048576.0,
        last_rss as f64 / 1048576.0,
        match agreed {
            Ok(s) => format!("within {s:.1} s"),
            Err((diff, state)) => format!("no: {diff} off in {state}"),
        },
    );
    Ok(())
}
