//! The reconciler: every open batch, whoever launched it, moved on one step at a time from
//! what Redis records and what the launcher observes, by any dispatcher.
//!
//! Like a Kubernetes controller, it is level-triggered: on every event (a followed Job ended)
//! and at least every `RECONCILE_SECONDS` it reads each open batch ([`crate::steps::BatchView`]),
//! decides one step with a pure function ([`decide::decide`]) and applies it as a
//! compare-and-set on the batch's generation ([`crate::cas`]). So a restart, a missed event, a
//! Redis outage of any length or a second replica converge on the same result instead of
//! doubling work: the step is applied once, and the children it creates have derived ids.
//!
//! Ownership ([`lease`]): each dispatcher holds a lease in Redis and writes its id as the
//! `owner` of the batches it launches. A launched batch whose owner's lease has expired is
//! adopted (its Job followed by name, a local runner by its process) by whichever dispatcher
//! reconciles it next, within the lease time plus `RECONCILE_SECONDS`. Dispatchers run
//! active-active: every replica consumes, launches and settles, and the in-flight cap is one
//! set in Redis shared by all.
//!
//! - [`decide`]: the decision, unit-tested branch by branch;
//! - [`apply`]: applying each step, and what follows a settled outcome (children launched
//!   at once, the breaker, the sizer);
//! - [`followed`]: the Jobs this dispatcher's launcher follows;
//! - [`fresh`]: batches just cut from deliveries: launched in a slot, or parked;
//! - [`lease`]: this dispatcher's lease, which is also the Redis health probe.

pub mod apply;
pub mod decide;
pub mod followed;
pub mod fresh;
pub mod lease;

use crate::breaker::Breaker;
use crate::config::Config;
use crate::dead_letters::DeadLetters;
use crate::error::Error;
use crate::launcher::{FailureKind, Launcher, Outcome, Running};
use crate::metrics::Metrics;
use crate::sizer::Sizer;
use crate::stage::Stager;
use followed::Followed;
pub use fresh::{Fresh, FreshBatch};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a consumer waiting for a slot under the cap looks again when no local event
/// woke it (a slot another dispatcher freed).
const SLOT_POLL: Duration = Duration::from_millis(200);

/// The reconciler and what it shares with the consumer; cheap to clone into tasks.
#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    stager: Stager,
    launcher: Box<dyn Launcher>,
    breaker: Arc<Breaker>,
    dead_letters: DeadLetters,
    metrics: Arc<Metrics>,
    sizer: Arc<Sizer>,
    /// This dispatcher's id (leases, batch owners).
    me: String,
    followed: Followed,
    /// Batches to reconcile now (a followed Job ended, a child was created).
    events: mpsc::UnboundedSender<String>,
    inbox: Mutex<mpsc::UnboundedReceiver<String>>,
    /// A slot under the cap may have freed.
    capacity: Notify,
    /// Follow tasks and launches.
    tasks: TaskTracker,
    /// Cancelled when the shutdown grace runs out: stop following Jobs.
    abandon: CancellationToken,
    /// Shutting down: settle what is followed, launch and adopt nothing new.
    stopping: AtomicBool,
    /// A launch waited for the cap or the breaker: look again as soon as something settles.
    starved: AtomicBool,
    launched: AtomicU64,
}

impl Reconciler {
    /// A reconciler for dispatcher `me`.
    pub fn new(
        config: Arc<Config>,
        stager: Stager,
        launcher: Box<dyn Launcher>,
        metrics: Arc<Metrics>,
        sizer: Arc<Sizer>,
        me: String,
        abandon: CancellationToken,
    ) -> Self {
        let (events, inbox) = mpsc::unbounded_channel();
        let breaker = Arc::new(Breaker::new(&config.outages, Arc::clone(&metrics)));
        let inner = Inner {
            dead_letters: DeadLetters::new(&config.broker),
            config,
            stager,
            launcher,
            breaker,
            metrics,
            sizer,
            me,
            followed: Followed::default(),
            events,
            inbox: Mutex::new(inbox),
            capacity: Notify::new(),
            tasks: TaskTracker::new(),
            abandon,
            stopping: AtomicBool::new(false),
            starved: AtomicBool::new(false),
            launched: AtomicU64::new(0),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The circuit breaker every launch passes.
    pub fn breaker(&self) -> &Breaker {
        &self.inner.breaker
    }

    /// This dispatcher's id.
    pub fn id(&self) -> &str {
        &self.inner.me
    }

    /// Batches launched so far (fresh, children, adopted).
    pub fn launched(&self) -> u64 {
        self.inner.launched.load(Ordering::Relaxed)
    }

    /// A create the API server refused for good (or did not take within its budget): the
    /// batch's outcome, an outage retried whole behind the breaker.
    fn refused(&self, batch_id: &str, generation: &str, error: &Error) {
        let inner = &self.inner;
        inner.metrics.launch_refusals.inc();
        inner.metrics.error(error.metric_label());
        tracing::warn!(batch = %batch_id, %error, "the job could not be created; the batch will be retried whole");
        let outcome = Outcome::failed(
            FailureKind::LaunchRefused,
            format!("LaunchRefused: {error}"),
        );
        if inner.followed.ended(batch_id, generation, outcome) {
            let _ = inner.events.send(batch_id.to_owned());
        }
    }

    /// Follows a launched Job to its outcome in a tracked task, then asks for its batch to
    /// be reconciled.
    fn follow(&self, batch_id: &str, generation: &str, running: Running) {
        let (this, batch_id, generation) =
            (self.clone(), batch_id.to_owned(), generation.to_owned());
        self.inner.tasks.spawn(async move {
            let inner = &this.inner;
            let timer = inner.metrics.time_job();
            // The launcher bounds the wait (`JOB_WAIT_SECONDS`); past that and some slack, the
            // dispatcher is stuck and liveness says so.
            let what = format!("outcome of batch {batch_id}");
            let by = std::time::Instant::now()
                + inner.config.job_wait_limit()
                + 3 * inner.config.job_slack();
            inner.metrics.health().expect(what.clone(), by);
            let outcome = running.await;
            inner.metrics.health().met(&what);
            drop(timer);
            let label = match &outcome {
                Outcome::Succeeded => "succeeded",
                Outcome::Failed(failure) => {
                    tracing::warn!(batch = %batch_id, reason = %failure, kind = %failure.kind, "job failed");
                    "failed"
                }
                // Left running for whoever adopts it: the entry stays until drain requeues it.
                Outcome::Abandoned => return inner.metrics.batch_ended("abandoned"),
            };
            inner.metrics.batch_ended(label);
            if inner.followed.ended(&batch_id, &generation, outcome) {
                let _ = inner.events.send(batch_id);
            }
        });
    }

    /// Reconciles until `stop` is cancelled: each event's batch at once, every open batch at
    /// least every `RECONCILE_SECONDS` (sooner when a retry's backoff or a probe is due).
    pub async fn run(&self, stop: CancellationToken) {
        let every = self.inner.config.replicas.reconcile_every();
        let mut inbox = self.inner.inbox.lock().await;
        let mut next_pass = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                // Cancellation-safe: a message not yet received stays in the channel.
                Some(batch) = inbox.recv() => {
                    let mut batches = vec![batch];
                    while let Ok(more) = inbox.try_recv() {
                        batches.push(more);
                    }
                    batches.sort();
                    batches.dedup();
                    let wake = self.reconcile(&batches).await;
                    next_pass = next_pass.min(wake.unwrap_or(next_pass));
                    if self.inner.starved.swap(false, Ordering::Relaxed) {
                        next_pass = tokio::time::Instant::now();
                    }
                }
                // A timer holds nothing: dropping it is safe.
                () = tokio::time::sleep_until(next_pass) => {
                    let wake = self.pass().await;
                    let regular = tokio::time::Instant::now() + every;
                    next_pass = wake.map_or(regular, |w| w.min(regular));
                }
            }
        }
    }

    /// From now on settles what it follows and launches or adopts nothing new (shutting down).
    pub fn stop_taking_work(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    /// Lets followed Jobs finish within `grace` while they are still settled, then abandons
    /// the rest: a Job that outlives its dispatcher stays for whoever adopts it; a local
    /// runner, stopped with the dispatcher, has its batch staged again. Returns how many were
    /// abandoned.
    pub async fn drain(&self, grace: Duration) -> u64 {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::Relaxed);
        inner.tasks.close();
        tracing::info!(
            running = inner.followed.len(),
            ?grace,
            "waiting for running jobs"
        );
        let settled = async {
            while !inner.followed.is_empty() {
                let freed = inner.capacity.notified();
                tokio::select! {
                    () = freed => {}
                    () = tokio::time::sleep(SLOT_POLL) => {}
                }
            }
        };
        if tokio::time::timeout(grace, settled).await.is_ok() {
            return 0;
        }
        let abandoned = inner.followed.unended();
        tracing::warn!(
            abandoned = abandoned.len(),
            "grace period over; abandoning running jobs to another dispatcher or the next start"
        );
        inner.abandon.cancel();
        inner.tasks.wait().await;
        if !inner.launcher.outlives_dispatcher() {
            self.requeue(&abandoned).await;
        }
        abandoned.len() as u64
    }
}
