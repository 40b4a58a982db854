//! The circuit breaker: outages cost time, never messages, and never a storm of failing Jobs.
//!
//! Each Job that could not do its work (an outage, see [`crate::settle`]) is retried whole
//! after a delay that doubles with each outage in a row, with jitter. After
//! `OUTAGE_THRESHOLD` outages in a row the breaker **opens**: no Job is launched and the
//! consumer parks what it holds (its prefetch window at most) and takes no more deliveries
//! (messages wait in RabbitMQ), `/readyz` answers 503 with the
//! reason, `sluice_runner_healthy` is 0 and one line is logged. While open, one Job at a time
//! is let through as a probe, the probes spaced by the same growing delay. The first Job whose
//! runner reaches its work closes the breaker again: fixing the cause is all a user does.
//!
//! A full Redis holds launches and consumption back the same way, without probes: a runner
//! could not write its results, and a batch could not be staged. [`crate::memory`] watches
//! Redis and lifts the hold ([`Breaker::redis_room`]) once it has room again.
//!
//! [`Breaker::try_admit`] is the gate every launch of a staged batch passes (fresh batches
//! are parked while it is open); [`Breaker::outage`] and
//! [`Breaker::healthy`] are what outcomes report.

use crate::config::Outages;
use crate::health::{self, Health};
use crate::metrics::Metrics;
use sluice_contract::retry::{Backoff, Policy};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Whether launches flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Jobs are launched as they come.
    Closed,
    /// Launches are held back; one probe at a time.
    Open {
        /// When the next probe may start.
        probe_at: Instant,
        /// A probe Job is out.
        probing: bool,
    },
}

struct State {
    mode: Mode,
    /// Outages since the last Job that reached its work.
    in_a_row: u32,
    /// Retry delays, reset by a healthy Job.
    delays: Backoff,
    /// The delay the next outage gets, taken from `delays` ahead of time so that a batch's
    /// retry can be scheduled before its outage is counted.
    ahead: Duration,
    /// The last outage's reason.
    reason: String,
    /// Unix ms when it opened (0 while closed).
    opened_at_ms: u64,
    /// Why Redis is full, while it is: everything is held back, no probe goes out.
    redis_full: Option<String>,
}

/// The breaker; shared by the launch paths and the consumer.
pub struct Breaker {
    state: Mutex<State>,
    changed: Notify,
    policy: Policy,
    threshold: u32,
    metrics: Arc<Metrics>,
}

impl Breaker {
    /// A closed breaker with the configured thresholds.
    pub fn new(settings: &Outages, metrics: Arc<Metrics>) -> Self {
        let policy = Policy::new(settings.first_delay(), settings.max_delay(), None);
        let (delays, ahead) = fresh_delays(&policy);
        let state = State {
            mode: Mode::Closed,
            in_a_row: 0,
            delays,
            ahead,
            reason: String::new(),
            opened_at_ms: 0,
            redis_full: None,
        };
        Self {
            state: Mutex::new(state),
            changed: Notify::new(),
            policy,
            threshold: settings.outage_threshold,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain fields, each written whole: a panic elsewhere cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn health(&self) -> &Health {
        self.metrics.health()
    }

    /// Whether launches and consumption are held back now: runners are unhealthy or Redis is
    /// full.
    pub fn is_open(&self) -> bool {
        let state = self.lock();
        matches!(state.mode, Mode::Open { .. }) || state.redis_full.is_some()
    }

    /// Whether Redis is full now.
    pub fn is_redis_full(&self) -> bool {
        self.lock().redis_full.is_some()
    }

    /// Redis is full (`why`: how full, or the refusal): launches and consumption wait until
    /// [`Breaker::redis_room`].
    pub fn redis_full(&self, why: &str) {
        let newly = self.lock().redis_full.replace(why.to_owned()).is_none();
        self.health().block(health::REDIS_FULL, why);
        if newly {
            tracing::error!(%why, "redis is full: holding launches back and pausing consumption until it has room");
            self.metrics.redis_full.set(1);
            self.changed.notify_waiters();
        }
    }

    /// Redis has room again: what was held back for it goes on.
    pub fn redis_room(&self) {
        if self.lock().redis_full.take().is_some() {
            tracing::info!("redis has room again: launching and consuming");
            self.metrics.redis_full.set(0);
            self.health().clear(health::REDIS_FULL);
            self.changed.notify_waiters();
        }
    }

    /// Whether a Job may be launched now: always while closed; while open, when this launch
    /// may be the one probe (it is then counted as out). The reconciler asks this for staged
    /// batches and looks again at [`Breaker::next_probe`].
    pub fn try_admit(&self) -> bool {
        let mut state = self.lock();
        if state.redis_full.is_some() {
            return false;
        }
        match &mut state.mode {
            Mode::Closed => true,
            Mode::Open { probe_at, probing } if !*probing && *probe_at <= Instant::now() => {
                *probing = true;
                true
            }
            Mode::Open { .. } => false,
        }
    }

    /// While open, the Unix ms it opened at: runner health another dispatcher records as
    /// healthy after that closes this breaker too.
    pub fn opened_at_ms(&self) -> Option<u64> {
        let state = self.lock();
        matches!(state.mode, Mode::Open { .. }).then_some(state.opened_at_ms)
    }

    /// When a probe may go next, while open and no probe is out.
    pub fn next_probe(&self) -> Option<Instant> {
        let state = self.lock();
        if state.redis_full.is_some() {
            return None;
        }
        match state.mode {
            Mode::Open {
                probe_at,
                probing: false,
            } => Some(probe_at),
            _ => None,
        }
    }

    /// Waits while the breaker is open; `false` once `stop` is cancelled.
    pub async fn closed(&self, stop: &CancellationToken) -> bool {
        tokio::select! {
            () = stop.cancelled() => false,
            () = self.until_open(false) => true,
        }
    }

    /// Resolves once the breaker is open (`open`) or closed (`!open`).
    pub async fn until_open(&self, open: bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_open() == open {
                return;
            }
            changed.await;
        }
    }

    /// The delay the next [`Breaker::outage`] will give, for scheduling a retry before the
    /// outage is counted (it is counted once its retry is recorded).
    pub fn upcoming_delay(&self) -> Duration {
        self.lock().ahead
    }

    /// A Job could not do its work because of `reason`; returns how long to wait before its
    /// batch is launched again (while open, [`Breaker::next_probe`] says when), and whether
    /// the breaker is open now (so the caller records why).
    pub fn outage(&self, reason: &str) -> (Duration, bool) {
        self.metrics.outages.inc();
        let mut state = self.lock();
        let delay = state.ahead;
        state.ahead = state.delays.next_delay().unwrap_or(self.policy.max_delay());
        if state.redis_full.is_some() {
            // Redis's fault, already held for: no reason to suspect the runners.
            return (delay, false);
        }
        state.in_a_row += 1;
        reason.clone_into(&mut state.reason);
        let in_a_row = state.in_a_row;
        let opening = state.mode == Mode::Closed && in_a_row >= self.threshold;
        match &mut state.mode {
            Mode::Closed if !opening => return (delay, false),
            mode => {
                *mode = Mode::Open {
                    probe_at: Instant::now() + delay,
                    probing: false,
                };
            }
        }
        if opening {
            state.opened_at_ms = sluice_contract::record::unix_millis();
        }
        drop(state);
        let why = format!("{in_a_row} jobs in a row could not do their work; last: {reason}");
        if opening {
            tracing::error!(%why, next_probe = ?delay, "runners are unhealthy: holding launches back and pausing consumption until a probe job works");
            self.metrics.runner_healthy.set(0);
        } else {
            tracing::warn!(%why, next_probe = ?delay, "the probe job met the outage too");
        }
        self.health().block(health::RUNNER, why);
        self.changed.notify_waiters();
        (Duration::ZERO, true)
    }

    /// A Job's runner reached its work: the deployment works. Returns whether the breaker was
    /// open until now.
    pub fn healthy(&self) -> bool {
        let mut state = self.lock();
        let was_open = matches!(state.mode, Mode::Open { .. });
        state.mode = Mode::Closed;
        state.in_a_row = 0;
        (state.delays, state.ahead) = fresh_delays(&self.policy);
        drop(state);
        if was_open {
            tracing::info!("runners work again: launching and consuming");
            self.metrics.runner_healthy.set(1);
            self.health().clear(health::RUNNER);
            self.changed.notify_waiters();
        }
        was_open
    }

    /// Whether the launch [`Breaker::try_admit`] let through is the probe (for its log line,
    /// written once the launch is applied rather than for every batch that tried).
    pub fn is_probing(&self) -> bool {
        matches!(self.lock().mode, Mode::Open { probing: true, .. })
    }

    /// A probe could not even be launched: let the next one try.
    pub fn probe_not_launched(&self) {
        if let Mode::Open { probing, .. } = &mut self.lock().mode {
            *probing = false;
        }
        self.changed.notify_waiters();
    }
}

/// A fresh schedule and its first delay.
fn fresh_delays(policy: &Policy) -> (Backoff, Duration) {
    let mut delays = policy.backoff();
    let first = delays.next_delay().unwrap_or(policy.max_delay());
    (delays, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> Breaker {
        let settings = Outages {
            outage_threshold: threshold,
            outage_retry_seconds: 0.01,
            outage_retry_max_seconds: 0.05,
        };
        Breaker::new(&settings, Arc::new(Metrics::new()))
    }

    /// Waits for the probe slot, as the reconciler's passes do.
    async fn probe(b: &Breaker) {
        while !b.try_admit() {
            let at = b.next_probe().expect("a probe is due");
            tokio::time::sleep_until(at).await;
        }
    }

    #[tokio::test]
    async fn opens_after_the_threshold_probes_one_at_a_time_and_closes_on_health() {
        let b = breaker(2);
        let stop = CancellationToken::new();
        let (delay, open) = b.outage("exit code 69");
        assert!(delay > Duration::ZERO && !open);
        assert!(!b.is_open(), "one outage is retried, not a reason to stop");
        assert_eq!(b.outage("exit code 69"), (Duration::ZERO, true));
        assert!(b.is_open());
        assert!(b.metrics.health().is_blocked(health::RUNNER));
        assert!(!b.try_admit(), "no probe before its delay");
        probe(&b).await;
        assert!(!b.try_admit(), "no second launch while the probe is out");
        assert_eq!(b.next_probe(), None, "nothing due while the probe is out");
        assert!(b.healthy(), "it was open");
        assert!(!b.is_open());
        assert!(!b.metrics.health().is_blocked(health::RUNNER));
        assert!(b.try_admit());
        assert!(b.closed(&stop).await);
    }

    #[tokio::test]
    async fn a_full_redis_holds_everything_back_without_probes_until_it_has_room() {
        let b = breaker(1);
        let stop = CancellationToken::new();
        b.redis_full("used 95% of maxmemory");
        assert!(b.is_open() && !b.try_admit());
        assert!(b.metrics.health().is_blocked(health::REDIS_FULL));
        let ahead = b.upcoming_delay();
        assert_eq!(
            b.outage("exit code 75"),
            (ahead, false),
            "not counted against runners"
        );
        assert_eq!(b.next_probe(), None, "no probe while redis is full");
        assert!(!b.try_admit());
        b.redis_room();
        assert!(!b.metrics.health().is_blocked(health::REDIS_FULL));
        assert!(!b.is_open(), "the runners were never suspected");
        assert!(b.try_admit());
        assert!(b.closed(&stop).await);
    }

    #[tokio::test]
    async fn a_failed_probe_keeps_it_open_and_lets_the_next_probe_through() {
        let b = breaker(1);
        let stop = CancellationToken::new();
        b.outage("ErrImagePull");
        probe(&b).await;
        b.outage("ErrImagePull");
        assert!(b.is_open());
        probe(&b).await;
        b.probe_not_launched();
        assert!(
            b.try_admit(),
            "a probe that was not launched frees the slot"
        );
        stop.cancel();
        assert!(!b.closed(&stop).await, "stopping ends a wait");
    }
}
