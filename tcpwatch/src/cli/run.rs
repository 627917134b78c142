//! `tcpwatch run`: the daemon. Loads the programs, models every connection,
//! and serves /metrics, /healthz and the JSON API; a systemd service
//! (Type=notify, watchdog) and a Prometheus scrape target.
use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use clap::Args;
use log::{info, warn};
use tokio::signal::unix::{signal, SignalKind};

use super::DetectorArgs;
use crate::{
    findings::detect::Detectors,
    host::clock::monotonic_ns,
    host::netns,
    kernel::event::{decode, LISTEN_OVERFLOW},
    kernel::loader::{self, LoadOptions},
    model::Model,
    serve::config::Config,
    serve::daemon::{self, Daemon},
    serve::metrics::Metrics,
    serve::web::{ServeLimits, Web},
    session::observer::{Dumps, Observer},
    session::{self, Session, Sink, Ticked},
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML); `tcpwatch config` prints the effective one.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Address of the HTTP server [default: 127.0.0.1:9775; loopback unless
    /// exposing it is a deliberate choice].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// Also export sockets by network namespace (tcpwatch_netns_sockets,
    /// the top_n namespaces by sockets, then `other`).
    #[arg(long)]
    pub netns_labels: bool,

    /// TLS and basic authentication for the endpoint: a web configuration
    /// file in the Prometheus exporter-toolkit format (tls_server_config,
    /// basic_auth_users with bcrypt hashes).
    #[arg(long, value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,

    #[command(flatten)]
    pub detect: DetectorArgs,
}

impl RunArgs {
    /// The configuration file (or the defaults) with the flags over it.
    pub fn effective(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if self.netns_labels {
            config.netns_labels = true;
        }
        if let Some(path) = &self.web_config_file {
            config.web_config_file = Some(path.clone());
        }
        self.detect.apply_to(&mut config);
        Ok(config)
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    // The daemon never starts half-configured: everything is checked first.
    let config = args.effective()?;
    let web = match &config.web_config_file {
        Some(path) => Web::load(path)?,
        None => Web::default(),
    };
    super::block_on(serve(args, config, web))
}

async fn serve(args: RunArgs, mut config: Config, web: Web) -> anyhow::Result<()> {
    let listener = crate::serve::web::listen(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let probe = loader::load(LoadOptions {
        ring_bytes: config.ring_kib * 1024,
        program_stats: config.bpf_stats,
        ..Default::default()
    })?;
    let loader::Probe {
        ebpf: _attached_while_in_scope,
        events,
        counters,
        reasons,
        attached,
        snapshot,
        units,
    } = probe;
    let observer = Observer::new(
        Model::new(config.limits())
            .with_listen_overflow_reason(reasons.drop_number(LISTEN_OVERFLOW)),
        Some(Detectors::new(config.thresholds)),
        snapshot,
    )
    .with_units(units);
    let shared = Arc::new(Mutex::new(Daemon {
        observer,
        metrics: Metrics::new().context("cannot register the metrics")?,
        reasons,
        counters,
        counters_seen: Default::default(),
        own_netns: None,
        top_n: config.top_n,
        netns_labels: config.netns_labels,
        last_loop_ns: monotonic_ns(),
        loss_window: VecDeque::new(),
        received: 0,
    }));
    // Connections and TIME_WAIT sockets older than tcpwatch, before serving.
    let units = daemon::lock(&shared).observer.units().clone();
    if let Some(dumps) = session::dump_once(&[], &units).await {
        apply_dumps(&shared, dumps);
    }
    let mut session = Session::new(
        events,
        units,
        &[],
        Duration::from_secs(1),
        config.reconcile_interval.0,
    )
    .context("cannot poll the ring buffer")?
    .with_ring_full(daemon::lock(&shared).heartbeat(monotonic_ns()));

    // Before announcing readiness: a signal sent after it must be handled.
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    // A reload is applied by the next tick (within a second).
    let reload_asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asked = reload_asked.clone();
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            asked.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let router = daemon::router(shared.clone(), web.auth.clone());
    let scheme = if web.tls.is_some() { "https" } else { "http" };
    let server = tokio::spawn(crate::serve::web::serve(
        listener,
        router,
        web.tls.clone(),
        ServeLimits::default(),
    ));
    eprintln!(
        "tcpwatch: attached to {} tracepoints ({}); serving {scheme}://{bound}/metrics",
        attached.len(),
        attached.join(", ")
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);

    let mut sink = DaemonSink {
        shared: shared.clone(),
        args: &args,
        config: &mut config,
        reload_asked,
        watchdog_every_ns: watchdog.then_some(watchdog_usec * 500),
        last_watchdog: 0,
    };
    let stop = async {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    };
    session
        .run(&mut sink, stop)
        .await
        .context("cannot poll the ring buffer")?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    server.abort();
    info!("stopping; detaching the programs");
    Ok(())
}

/// The daemon's state fed by the session, under its lock for each step.
struct DaemonSink<'a> {
    shared: daemon::Shared,
    args: &'a RunArgs,
    config: &'a mut Config,
    /// SIGHUP arrived: reload the configuration at the next tick.
    reload_asked: Arc<std::sync::atomic::AtomicBool>,
    /// Half systemd's watchdog interval, when it watches.
    watchdog_every_ns: Option<u64>,
    last_watchdog: u64,
}

impl Sink for DaemonSink<'_> {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> std::io::Result<()> {
        let mut d = daemon::lock(&self.shared);
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(ev) => {
                    let observed = d.observer.record(ev);
                    d.observed(&observed);
                }
                Err(_) => d.metrics.malformed(),
            }
        }
        Ok(())
    }

    fn dumped(&mut self, dumps: Dumps) -> std::io::Result<()> {
        apply_dumps(&self.shared, dumps);
        Ok(())
    }

    fn tick(&mut self, now: u64) -> std::io::Result<Ticked> {
        let mut ticked = Ticked::default();
        {
            let mut d = daemon::lock(&self.shared);
            let (outcomes, reports) = d.observer.tick(now);
            // Owners to confirm: the session dumps their namespaces now,
            // off the lock.
            ticked.reconcile = d.observer.take_reconcile_request();
            d.outcomes(&outcomes);
            for r in &reports {
                d.metrics.on_report(r.finding.kind, r.status.name());
            }
            ticked.ring_full = d.heartbeat(now);
        }
        if self
            .reload_asked
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            ticked.reconcile_every = reload(self.args, self.config, &self.shared);
        }
        if let Some(every) = self.watchdog_every_ns {
            if now.saturating_sub(self.last_watchdog) >= every {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                self.last_watchdog = now;
            }
        }
        Ok(ticked)
    }

    fn events_lost(&mut self, _now: u64) {
        let marked = daemon::lock(&self.shared).observer.model.mark_uncertain();
        info!("events were lost; {marked} connections marked uncertain; reconciling with sock_diag (at most every 5 s)");
    }
}

/// Applies a dump of the kernel's socket list (taken by the session off
/// the lock) and keeps tcpwatch's own namespace's settings and counters,
/// from the same dumps, for the metrics.
fn apply_dumps(shared: &daemon::Shared, dumps: Dumps) {
    let dumps_complete = dumps.complete;
    let own_state = netns::current().ok().and_then(|own| {
        dumps
            .namespaces
            .iter()
            .find(|n| n.netns == own)
            .map(|n| n.contents.0.clone())
    });
    let mut d = daemon::lock(shared);
    let reports = d.observer.apply_dumps(dumps);
    for r in &reports {
        d.metrics.on_report(r.finding.kind, r.status.name());
    }
    // TcpExt counters are counted at each reading, not at scrapes: the
    // first reading of a namespace (at start, or when it appears) is the
    // baseline, so what happens before the next scrape counts too.
    {
        let d = &mut *d;
        d.metrics.count_tcpext(&d.observer.netns_states, d.top_n);
    }
    let complete = dumps_complete;
    match own_state {
        Some(state) => d.own_netns = Some(state),
        // A dump of some namespaces only (owners to confirm) says nothing
        // of tcpwatch's own.
        None if complete => {
            warn!("cannot read the TCP settings and counters of tcpwatch's own network namespace")
        }
        None => {}
    }
    drop(d);
    // A dump of many sockets leaves freed memory in the allocator's arenas;
    // returning it keeps the footprint close to the model's, not its peaks.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// SIGHUP: new thresholds from the configuration file, keeping all state;
/// returns the reconciliation interval when the reload took.
fn reload(args: &RunArgs, config: &mut Config, shared: &daemon::Shared) -> Option<Duration> {
    match args.effective() {
        Ok(fresh) => {
            // What a reload cannot change says so by name: an operator who
            // adds authentication must not read "reloaded" and assume it.
            let kept: Vec<&str> = [
                ("listen", fresh.listen != config.listen),
                ("ring_kib", fresh.ring_kib != config.ring_kib),
                ("bpf_stats", fresh.bpf_stats != config.bpf_stats),
                (
                    "web_config_file",
                    fresh.web_config_file != config.web_config_file,
                ),
                (
                    "max_connections",
                    fresh.max_connections != config.max_connections,
                ),
                ("max_time_wait", fresh.max_time_wait != config.max_time_wait),
            ]
            .into_iter()
            .filter_map(|(key, changed)| changed.then_some(key))
            .collect();
            if !kept.is_empty() {
                warn!(
                    "{} changed but take effect only at the next start (restart tcpwatch); reloading the rest",
                    kept.join(", ")
                );
            } else if fresh.web_config_file.is_some() {
                warn!("the web configuration file (TLS, basic authentication) is read only at start: restart tcpwatch to apply changes made to it");
            }
            let mut d = daemon::lock(shared);
            if let Some(det) = d.observer.detectors.as_mut() {
                det.set_thresholds(fresh.thresholds);
            }
            d.top_n = fresh.top_n;
            d.netns_labels = fresh.netns_labels;
            config.thresholds = fresh.thresholds;
            config.reconcile_interval = fresh.reconcile_interval;
            config.top_n = fresh.top_n;
            config.netns_labels = fresh.netns_labels;
            warn!("configuration reloaded");
            Some(config.reconcile_interval.0)
        }
        Err(e) => {
            warn!("configuration not reloaded, keeping the previous one: {e:#}");
            None
        }
    }
}
