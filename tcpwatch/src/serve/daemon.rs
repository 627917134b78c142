//! The daemon's shared state and its HTTP interface: `/metrics`,
//! `/healthz` and a read-only JSON API (`/api/findings`,
//! `/api/connections`), on axum.
use crate::tcp::NetnsId;
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    extract::{Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::{Deserialize, Serialize};

use crate::{
    host::clock::monotonic_ns,
    host::netns_state::NetnsState,
    kernel::event::{KernelReasons, TcpState},
    kernel::loader::{CounterReader, Counters},
    model::Outcome,
    present::summary::summarize,
    serve::metrics::{Metrics, CONTENT_TYPE},
    session::observer::{Observed, Observer},
};

/// How far back `/healthz` looks at event loss.
const HEALTH_WINDOW_NS: u64 = 60_000_000_000;

/// Everything the event loop updates and the HTTP handlers read.
pub struct Daemon {
    pub observer: Observer,
    pub metrics: Metrics,
    pub reasons: KernelReasons,
    pub counters: CounterReader,
    /// The last reading of `counters` that succeeded: a failed read
    /// reports it again rather than zeros (counters never go back).
    pub counters_seen: Counters,
    /// Settings and counters of tcpwatch's own namespace, from the last reconciliation.
    pub own_netns: Option<NetnsState>,
    pub top_n: usize,
    /// Sockets by namespace in the metrics too.
    pub netns_labels: bool,
    /// When the event loop last ran, for /healthz.
    pub last_loop_ns: u64,
    /// (time, events received, events lost), one sample a second.
    pub loss_window: VecDeque<(u64, u64, u64)>,
    pub received: u64,
}

pub type Shared = Arc<Mutex<Daemon>>;

/// The state, even if a panic poisoned the lock: the data stays usable.
pub fn lock(shared: &Shared) -> MutexGuard<'_, Daemon> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Daemon {
    /// Counts and models one observed event.
    pub fn observed(&mut self, o: &Observed) {
        self.received += 1;
        self.metrics.on_event(&o.event);
        self.outcomes(&o.outcomes);
        for r in &o.reports {
            self.metrics.on_report(r.finding.kind, r.status.name());
        }
    }

    pub fn outcomes(&mut self, outcomes: &[Outcome]) {
        for outcome in outcomes {
            self.metrics.on_outcome(outcome);
        }
    }

    /// The kernel-side counters now, or as last read when they cannot be.
    pub fn read_counters(&mut self) -> Counters {
        match self.counters.read() {
            Ok(now) => self.counters_seen = now,
            Err(e) => log::debug!("cannot read the kernel-side counters: {e}"),
        }
        self.counters_seen
    }

    /// Records a turn of the event loop and a sample of the loss window;
    /// returns the ring buffer's overflow count, which the session repairs
    /// the model after when it grows. Programs the kernel skipped (BPF
    /// recursion) are a small steady background on a busy host, left to
    /// the periodic reconciliation.
    pub fn heartbeat(&mut self, now: u64) -> u64 {
        self.last_loop_ns = now;
        let counters = self.read_counters();
        let lost = counters.ringbuf_full + counters.recursion_misses;
        self.loss_window.push_back((now, self.received, lost));
        while self
            .loss_window
            .front()
            .is_some_and(|(t, _, _)| now.saturating_sub(*t) > HEALTH_WINDOW_NS)
        {
            self.loss_window.pop_front();
        }
        counters.ringbuf_full
    }

    /// None when healthy, else why not.
    pub fn unhealthy(&self, now: u64) -> Option<String> {
        if now.saturating_sub(self.last_loop_ns) > 5_000_000_000 {
            return Some("the event loop has not run for more than 5 s".into());
        }
        let (Some(first), Some(last)) = (self.loss_window.front(), self.loss_window.back()) else {
            return None;
        };
        let received = last.1.saturating_sub(first.1);
        let lost = last.2.saturating_sub(first.2);
        // Occasional loss under a burst is reported by metrics; losing more
        // than 1% of events for a minute means the model can't be trusted.
        if lost > 100 && lost * 100 > received {
            return Some(format!(
                "{lost} events lost in the last minute against {received} received"
            ));
        }
        None
    }
}

/// The routes, read-only, behind the endpoint's limits and, when
/// configured, basic authentication ([`crate::serve::web::guard`]).
pub fn router(shared: Shared, auth: Option<Arc<crate::serve::web::BasicAuth>>) -> Router {
    let routes = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/findings", get(findings))
        .route("/api/connections", get(connections));
    crate::serve::web::guard(routes, auth).with_state(shared)
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let mut d = lock(&shared);
    let now = monotonic_ns();
    let mut summary = summarize(&d.observer.model, now, &[], d.top_n);
    summary.name_units(d.observer.units());
    if d.netns_labels {
        summary.by_netns = crate::present::summary::by_netns(&d.observer.model, d.top_n);
    }
    let counters: Counters = d.read_counters();
    // Each scrape reports the ring buffer's peak fill since the previous one.
    if let Err(e) = d.counters.reset_ring_peak() {
        log::warn!("cannot reset the ring buffer's peak fill: {e}");
    }
    let kernel = crate::serve::metrics::KernelReading {
        totals: d.counters.totals(),
        reasons: d.reasons.clone(),
        counters,
        programs: d.counters.programs(),
    };
    let d = &mut *d;
    d.metrics.top_n_listeners = d.top_n;
    d.metrics
        .sock_diag_available
        .set(i64::from(d.observer.sock_diag_available.unwrap_or(false)));
    let body = d.metrics.render(
        kernel,
        &summary,
        &d.observer.model,
        d.observer.detectors.as_ref(),
        d.own_netns.as_ref(),
    );
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

async fn healthz(State(shared): State<Shared>) -> Response {
    let d = lock(&shared);
    match d.unhealthy(monotonic_ns()) {
        // Degraded but alive: a restart would not load the modules, so the
        // status stays 200 and the body says what is missing.
        None if d.observer.sock_diag_available == Some(false) => (
            StatusCode::OK,
            format!("ok, degraded: {}\n", crate::host::sock_diag::UNAVAILABLE),
        )
            .into_response(),
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

#[derive(Serialize)]
struct FindingView {
    kind: crate::findings::FindingKind,
    severity: &'static str,
    netns: NetnsId,
    summary: String,
    evidence: std::collections::BTreeMap<String, serde_json::Value>,
    remedy: String,
}

async fn findings(State(shared): State<Shared>) -> Json<Vec<FindingView>> {
    let d = lock(&shared);
    let mut out: Vec<FindingView> = d
        .observer
        .detectors
        .iter()
        .flat_map(|det| det.open_findings())
        .map(|(f, netns)| FindingView {
            kind: f.kind,
            severity: f.severity.name(),
            netns,
            summary: f.summary.clone(),
            evidence: f.rendered_evidence(),
            remedy: f.remedy.clone(),
        })
        .collect();
    out.sort_by(|a, b| {
        a.kind
            .name()
            .cmp(b.kind.name())
            .then_with(|| a.summary.cmp(&b.summary))
    });
    Json(out)
}

#[derive(Deserialize)]
struct ConnectionFilter {
    state: Option<String>,
    port: Option<u16>,
    pid: Option<u32>,
    /// A systemd unit, slice or container, as `trace --unit` takes it.
    unit: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ConnectionView {
    netns: NetnsId,
    state: &'static str,
    saddr: String,
    sport: u16,
    daddr: String,
    dport: u16,
    pid: u32,
    comm: String,
    /// The owner's systemd unit (or slice); null when unknown.
    unit: Option<String>,
    /// The owner's container (`runtime`, 12-digit `id`); null when none.
    container: Option<crate::host::cgroup::Container>,
    opener: &'static str,
    state_age_seconds: f64,
    /// False when the state was entered before tcpwatch saw the socket.
    state_age_known: bool,
    /// Events were lost during its life; the next reconciliation checks it.
    uncertain: bool,
    /// Processes holding the socket at the last reconciliation (`ss -p`).
    holders: u16,
}

#[derive(Serialize)]
struct ConnectionsView {
    connections: Vec<ConnectionView>,
    truncated: bool,
}

async fn connections(State(shared): State<Shared>, Query(q): Query<ConnectionFilter>) -> Response {
    let state: Option<TcpState> = match q.state.as_deref().map(str::parse) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let d = lock(&shared);
    let now = monotonic_ns();
    let units = d.observer.units();
    let mut matching = d
        .observer
        .model
        .connections()
        .filter(|c| {
            state.is_none_or(|s| c.state == s)
                && q.port
                    .is_none_or(|p| c.tuple.local_port == p || c.tuple.remote_port == p)
                && q.pid.is_none_or(|p| c.pid == p)
        })
        .map(|c| (c, units.get(c.cgroup)))
        .filter(|(_, w)| {
            q.unit
                .as_deref()
                .is_none_or(|name| w.as_deref().is_some_and(|w| w.matches(name)))
        });
    let connections: Vec<ConnectionView> = matching
        .by_ref()
        .take(limit)
        .map(|(c, w)| ConnectionView {
            netns: c.tuple.netns,
            state: c.state.name(),
            saddr: c.tuple.local.to_string(),
            sport: c.tuple.local_port,
            daddr: c.tuple.remote.to_string(),
            dport: c.tuple.remote_port,
            pid: c.pid,
            comm: c.comm.to_string(),
            unit: w.as_deref().and_then(|w| w.unit()).map(str::to_owned),
            container: w.as_deref().and_then(|w| w.container()).cloned(),
            opener: c.opener.name(),
            state_age_seconds: now.saturating_sub(c.state_since_ns) as f64 / 1e9,
            state_age_known: c.state_age_known,
            uncertain: c.uncertain,
            holders: c.holders,
        })
        .collect();
    let truncated = matching.next().is_some();
    Json(ConnectionsView {
        connections,
        truncated,
    })
    .into_response()
}
