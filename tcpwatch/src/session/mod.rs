//! The one event loop of `run`, `trace` and `top`: [`Session::run`] drains
//! the ring buffer, ticks, decides when the model is checked against the
//! kernel's socket list, and feeds a [`Sink`] (the trace printer, the TUI,
//! the daemon's state), which applies what it is given.
//!
//! The kernel's list is dumped on a blocking thread, one dump at a time, so
//! a slow dump (hundreds of thousands of sockets) never stops the ring
//! buffer from draining; the sink applies the finished dump to its
//! observer ([`crate::session::observer::Observer::apply_dumps`]). Dumps are made
//! every `reconcile_every`, when the observer asks for owners to be
//! confirmed, and after events were lost (at most every
//! [`REPAIR_EVERY_NS`]): one policy for every subcommand.

pub mod observer;
use crate::tcp::NetnsId;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use log::warn;
use tokio::{io::unix::AsyncFd, task::JoinHandle, time::Interval};

use crate::{
    host::cgroup::Units,
    host::clock::monotonic_ns,
    kernel::loader,
    session::observer::{dump_namespaces, Dumps},
};

/// How often the model is checked against sock_diag unless told otherwise.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

/// Repairs after lost events are at most this frequent: each is a full dump.
pub const REPAIR_EVERY_NS: u64 = 5_000_000_000;

/// What the loop has to do next.
enum Step<'a> {
    /// Records are waiting (possibly none, after the drain delay).
    Ring(&'a mut RingBuf<MapData>),
    /// A tick: time for timers, expiries and periodic work.
    Tick(u64),
    /// A dump of the kernel's socket list finished: apply it.
    Dumped(Dumps),
}

/// Which namespaces a dump covers: `All`, or these (plus every one listed).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    All,
    Only(Vec<NetnsId>),
}

impl Scope {
    fn of(namespaces: &[NetnsId]) -> Self {
        if namespaces.is_empty() {
            Scope::All
        } else {
            Scope::Only(namespaces.to_vec())
        }
    }

    fn union(self, other: Scope) -> Scope {
        match (self, other) {
            (Scope::Only(mut a), Scope::Only(b)) => {
                a.extend(b);
                a.sort_unstable();
                a.dedup();
                Scope::Only(a)
            }
            _ => Scope::All,
        }
    }

    fn namespaces(&self) -> Vec<NetnsId> {
        match self {
            Scope::All => Vec::new(),
            Scope::Only(n) => n.clone(),
        }
    }
}

/// What a subcommand does with the session's steps: `trace` prints, `top`
/// draws, the daemon updates the state its endpoints serve. The session
/// owns the loop, the timers, the dumps and what to do after losses.
pub trait Sink {
    /// Decodes and applies the records waiting in the ring buffer.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> std::io::Result<()>;
    /// Applies a finished dump of the kernel's socket list.
    fn dumped(&mut self, dumps: Dumps) -> std::io::Result<()>;
    /// Ages the model and the findings; says what the session is to do.
    fn tick(&mut self, now: u64) -> std::io::Result<Ticked>;
    /// Events were lost to a full ring buffer since the last tick: the
    /// model is unsure of some connections until the repair the session
    /// has asked for lands.
    fn events_lost(&mut self, now: u64);
}

/// What a sink's tick asks of the session.
#[derive(Debug, Default)]
pub struct Ticked {
    /// Namespaces whose owners the observer wants confirmed now.
    pub reconcile: Option<Vec<NetnsId>>,
    /// Events the kernel could not put in the ring buffer so far (its
    /// counter, which only grows).
    pub ring_full: u64,
    /// A new interval between periodic reconciliations (a reload).
    pub reconcile_every: Option<Duration>,
    /// The sink is done (the user quit).
    pub stop: bool,
}

/// The ring buffer, the tick and the reconciliation policy of one loop.
pub struct Session {
    ring: AsyncFd<RingBuf<MapData>>,
    ticker: Interval,
    units: Units,
    /// The namespaces the user asked for (`--netns`); empty: all.
    only: Vec<NetnsId>,
    reconcile_every_ns: u64,
    last_reconcile_ns: u64,
    last_repair_ns: u64,
    /// Events were lost and the repair waits for [`REPAIR_EVERY_NS`] to pass.
    repair_pending: bool,
    running: Option<JoinHandle<Dumps>>,
    queued: Option<Scope>,
    /// The ring buffer's overflow count at the last tick.
    ring_full_seen: u64,
}

impl Session {
    /// `tick`: how often [`Step::Tick`] comes; `reconcile_every`: how often
    /// the kernel's list is dumped (zero: only when asked).
    pub fn new(
        events: RingBuf<MapData>,
        units: Units,
        only: &[NetnsId],
        tick: Duration,
        reconcile_every: Duration,
    ) -> std::io::Result<Self> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Session {
            ring: loader::async_ring(events)?,
            ticker,
            units,
            only: only.to_vec(),
            reconcile_every_ns: reconcile_every.as_nanos() as u64,
            last_reconcile_ns: monotonic_ns(),
            last_repair_ns: 0,
            repair_pending: false,
            running: None,
            queued: None,
            ring_full_seen: 0,
        })
    }

    /// The ring buffer's overflow count when the session starts: losses
    /// are what it grows by from here.
    pub fn with_ring_full(mut self, ring_full: u64) -> Self {
        self.ring_full_seen = ring_full;
        self
    }

    /// Feeds `sink` until `stop` completes, the sink stops or fails, or the
    /// ring buffer cannot be polled. After a tick whose overflow count
    /// grew, the model is repaired from the kernel's socket list (at most
    /// every [`REPAIR_EVERY_NS`]), whichever sink it is.
    pub async fn run(
        &mut self,
        sink: &mut impl Sink,
        stop: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                step = self.next() => match step? {
                    Step::Ring(ring) => sink.drain(ring)?,
                    Step::Dumped(dumps) => sink.dumped(dumps)?,
                    Step::Tick(now) => {
                        let ticked = sink.tick(now)?;
                        if let Some(namespaces) = ticked.reconcile {
                            self.reconcile_now(&namespaces);
                        }
                        if let Some(every) = ticked.reconcile_every {
                            self.set_reconcile_every(every);
                        }
                        if ticked.ring_full > self.ring_full_seen {
                            self.repair(now);
                            sink.events_lost(now);
                        }
                        self.ring_full_seen = self.ring_full_seen.max(ticked.ring_full);
                        if ticked.stop {
                            return Ok(());
                        }
                    }
                },
                () = &mut stop => return Ok(()),
            }
        }
    }

    /// A new interval between periodic reconciliations (SIGHUP).
    pub fn set_reconcile_every(&mut self, every: Duration) {
        self.reconcile_every_ns = every.as_nanos() as u64;
    }

    /// Waits for the next thing to do.
    async fn next(&mut self) -> std::io::Result<Step<'_>> {
        let Session {
            ring,
            ticker,
            running,
            ..
        } = self;
        enum Woken {
            Ring,
            Tick,
            Dumped(Result<Dumps, tokio::task::JoinError>),
        }
        let woken = tokio::select! {
            ready = loader::readable(ring) => {
                ready?;
                Woken::Ring
            }
            _ = ticker.tick() => Woken::Tick,
            done = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                Woken::Dumped(done)
            }
        };
        match woken {
            Woken::Ring => Ok(Step::Ring(self.ring.get_mut())),
            Woken::Tick => {
                let now = monotonic_ns();
                self.start_due_repair(now);
                if self.reconcile_every_ns > 0
                    && now.saturating_sub(self.last_reconcile_ns) >= self.reconcile_every_ns
                {
                    self.reconcile_now(&[]);
                }
                Ok(Step::Tick(now))
            }
            Woken::Dumped(done) => {
                self.running = None;
                if let Some(scope) = self.queued.take() {
                    self.start(scope);
                }
                match done {
                    Ok(dumps) => Ok(Step::Dumped(dumps)),
                    Err(e) => {
                        warn!("the reconciliation thread failed: {e}");
                        Ok(Step::Tick(monotonic_ns()))
                    }
                }
            }
        }
    }

    /// Dumps `namespaces` (empty: those the user asked for) now, or right
    /// after the dump that is running. Only a dump of everything the user
    /// asked for counts as the periodic one: a namespace confirming its
    /// owners every few seconds must not hold up the others' checks.
    pub fn reconcile_now(&mut self, namespaces: &[NetnsId]) {
        let scope = if namespaces.is_empty() {
            Scope::of(&self.only)
        } else {
            Scope::of(namespaces)
        };
        if scope == Scope::of(&self.only) {
            self.last_reconcile_ns = monotonic_ns();
        }
        if self.running.is_some() {
            self.queued = Some(match self.queued.take() {
                Some(queued) => queued.union(scope),
                None => scope,
            });
        } else {
            self.start(scope);
        }
    }

    /// Events were lost: dumps everything the user asked for now, or as
    /// soon as [`REPAIR_EVERY_NS`] has passed since the last repair (the
    /// caller marks the model's records uncertain until it lands).
    pub fn repair(&mut self, now: u64) {
        self.repair_pending = true;
        self.start_due_repair(now);
    }

    fn start_due_repair(&mut self, now: u64) {
        if self.repair_pending && now.saturating_sub(self.last_repair_ns) >= REPAIR_EVERY_NS {
            self.repair_pending = false;
            self.last_repair_ns = now;
            self.reconcile_now(&[]);
        }
    }

    /// The ring buffer, for a last drain before exiting.
    pub fn ring(&mut self) -> &mut RingBuf<MapData> {
        self.ring.get_mut()
    }

    fn start(&mut self, scope: Scope) {
        let units = self.units.clone();
        let namespaces = scope.namespaces();
        self.running = Some(tokio::task::spawn_blocking(move || {
            dump_namespaces(&namespaces, &units)
        }));
    }
}

/// One dump now, off the runtime thread: the first look at the kernel's
/// list, before any event is applied.
pub async fn dump_once(only: &[NetnsId], units: &Units) -> Option<Dumps> {
    let (only, units) = (only.to_vec(), units.clone());
    match tokio::task::spawn_blocking(move || dump_namespaces(&only, &units)).await {
        Ok(dumps) => Some(dumps),
        Err(e) => {
            warn!("the reconciliation thread failed: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_scopes_merge_into_one_dump() {
        assert_eq!(Scope::of(&[]), Scope::All);
        assert_eq!(
            Scope::of(&[NetnsId(3), NetnsId(1)]).union(Scope::of(&[NetnsId(1), NetnsId(2)])),
            Scope::Only(vec![NetnsId(1), NetnsId(2), NetnsId(3)])
        );
        assert_eq!(Scope::of(&[NetnsId(3)]).union(Scope::All), Scope::All);
        assert_eq!(Scope::All.union(Scope::of(&[NetnsId(3)])), Scope::All);
        assert!(Scope::All.namespaces().is_empty());
    }
}
