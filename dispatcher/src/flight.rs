//! Jobs in flight: the `MAX_JOBS_IN_FLIGHT` cap, launching staged batches through the circuit
//! breaker, and recording each Job's outcome — including relaunching the batches a failed one
//! was replaced by: the halves of a split that isolates a poison message at once, a batch
//! retried whole after an outage once its backoff has passed.

use crate::breaker::Breaker;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::health::Health;
use crate::job;
use crate::launcher::{Cause, Launcher, Outcome, Running};
use crate::metrics::Metrics;
use crate::settle::{DeadLetterSettings, Settled, settle};
use crate::sizer::Sizer;
use crate::stage::Stager;
use futures::future::BoxFuture;
use sluice_contract::BatchState;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a batch comes to be launched, which decides what a failed create means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// Its deliveries are not acked yet: a transient failure can hand them back to RabbitMQ.
    Fresh,
    /// Staged already (a split half, a retry, a batch recovered at start): nothing to hand
    /// back, so every failure to create the Job becomes the batch's outcome.
    Staged,
}

/// A followed Job's outcome, due by a time (liveness), until dropped.
struct Due<'a> {
    health: &'a Health,
    what: String,
}

impl<'a> Due<'a> {
    fn new(health: &'a Health, what: String, by: std::time::Instant) -> Self {
        health.expect(what.clone(), by);
        Self { health, what }
    }
}

impl Drop for Due<'_> {
    fn drop(&mut self) {
        self.health.met(&self.what);
    }
}

/// The running Jobs and what they need; cheap to clone into tasks.
#[derive(Clone)]
pub struct Flight {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    stager: Stager,
    launcher: Box<dyn Launcher>,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    metrics: Arc<Metrics>,
    sizer: Arc<Sizer>,
    breaker: Arc<Breaker>,
    /// Cancelled when the shutdown grace runs out: stop waiting for Jobs.
    abandon: CancellationToken,
}

impl Flight {
    /// Jobs tracked by `launcher`, at most `MAX_JOBS_IN_FLIGHT` at once.
    pub fn new(
        config: Arc<Config>,
        stager: Stager,
        launcher: Box<dyn Launcher>,
        metrics: Arc<Metrics>,
        sizer: Arc<Sizer>,
        abandon: CancellationToken,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(config.batching.max_jobs_in_flight));
        let breaker = Arc::new(Breaker::new(&config.outages, Arc::clone(&metrics)));
        let inner = Inner {
            breaker,
            config,
            stager,
            launcher,
            slots,
            jobs: TaskTracker::new(),
            metrics,
            sizer,
            abandon,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The launcher, for its kind and for releasing finished Jobs.
    pub fn launcher(&self) -> &dyn Launcher {
        self.inner.launcher.as_ref()
    }

    /// The circuit breaker every launch passes.
    pub fn breaker(&self) -> &Breaker {
        &self.inner.breaker
    }

    /// Waits for a free slot under the cap; `None` once `stop` is cancelled.
    pub async fn slot(&self, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            () = stop.cancelled() => None,
            permit = Arc::clone(&self.inner.slots).acquire_owned() => permit.ok(),
        }
    }

    /// Launches the Job of a staged batch and tracks it until its outcome is recorded. The
    /// caller has passed the breaker ([`Breaker::admit`]).
    ///
    /// A create the API server refuses for good (403 from a quota or a terminating namespace,
    /// 404, 422), or, for a [`Launch::Staged`] batch, one it does not take within the
    /// launcher's retry budget, becomes the batch's outcome: an outage, retried whole after a
    /// backoff through the breaker, never a crash loop and never a stranded batch. An `Err`
    /// means the batch was not launched and is staged again: a fresh batch's transient
    /// failure (its deliveries then go back to RabbitMQ), or Redis failing.
    pub async fn launch(
        &self,
        batch_id: &str,
        permit: OwnedSemaphorePermit,
        kind: Launch,
    ) -> Result<()> {
        let inner = &self.inner;
        let job = job::build(&inner.config, batch_id);
        let launched = async {
            inner
                .stager
                .set_state(batch_id, BatchState::Running)
                .await?;
            Ok::<_, Error>(inner.launcher.launch(&job).await)
        };
        let running = match launched.await {
            Ok(Ok(running)) => running,
            Ok(Err(e)) if kind == Launch::Staged || !e.is_transient() => {
                inner.metrics.launch_refusals.inc();
                inner.metrics.error(e.metric_label());
                tracing::warn!(batch = %batch_id, error = %e, "the job could not be created; the batch will be retried whole");
                let reason = format!("LaunchRefused: {e}");
                Box::pin(std::future::ready(Outcome::failed(Cause::Outage, reason)))
            }
            Ok(Err(e)) | Err(e) => {
                inner.breaker.probe_not_launched();
                // Back to staged: an open batch is tried again on the next start.
                inner.stager.set_state(batch_id, BatchState::Staged).await?;
                return Err(e);
            }
        };
        inner.metrics.launched.inc();
        let (flight, batch_id) = (self.clone(), batch_id.to_owned());
        inner
            .jobs
            .spawn(async move { flight.follow(batch_id, running, permit).await });
        Ok(())
    }

    /// Waits for one Job's outcome, records it, and relaunches split halves.
    async fn follow(self, batch_id: String, running: Running, permit: OwnedSemaphorePermit) {
        let inner = &self.inner;
        let timer = inner.metrics.time_job();
        let launched = std::time::Instant::now();
        // The launcher bounds the wait (`JOB_WAIT_SECONDS`); past that and some slack, the
        // dispatcher is stuck and liveness says so.
        let due = Due::new(
            inner.metrics.health(),
            format!("outcome of batch {batch_id}"),
            launched + inner.config.job_wait_limit() + 3 * inner.config.job_slack(),
        );
        let outcome = running.await;
        let lasted = launched.elapsed();
        drop(timer);
        let label = match &outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed { reason, cause } => {
                tracing::warn!(batch = %batch_id, %reason, ?cause, "job failed");
                "failed"
            }
            Outcome::Abandoned => return inner.metrics.batch_ended("abandoned"),
        };
        inner.metrics.batch_ended(label);
        let settings = DeadLetterSettings {
            ttl_seconds: inner.config.redis.result_ttl_seconds,
            stream_maxlen: inner.config.redis.results_maxlen,
        };
        let recorded = match settle(&inner.stager, &batch_id, &outcome, settings).await {
            Ok(settled) => {
                drop(due);
                self.after_settle(&batch_id, settled, permit, lasted).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            // The batch stays open (or its Job stays) and the next start settles it again.
            inner.metrics.error(e.metric_label());
            tracing::error!(batch = %batch_id, error = %e, "could not record the job's outcome");
        }
    }

    async fn after_settle(
        &self,
        batch_id: &str,
        settled: Settled,
        permit: OwnedSemaphorePermit,
        lasted: Duration,
    ) -> Result<()> {
        let inner = &self.inner;
        if let Err(e) = inner.launcher.finished(&job::job_name(batch_id)).await {
            // The outcome is recorded: a Job left behind costs nothing but its TTL.
            tracing::warn!(batch = %batch_id, error = %e, "could not release the finished job");
        }
        if let Some((messages, work_us)) = inner.stager.work(batch_id).await? {
            inner
                .sizer
                .observe(messages, Duration::from_micros(work_us), lasted);
        }
        if settled.reached_work() && inner.breaker.healthy() {
            inner.stager.record_runner_health(None).await?;
        }
        match settled {
            Settled::Closed { dead } => {
                inner.metrics.dead_letters.inc_by(dead as u64);
            }
            Settled::Retry { child, reason } => {
                let (delay, open) = inner.breaker.outage(&reason);
                if open {
                    inner.stager.record_runner_health(Some(&reason)).await?;
                }
                drop(permit);
                tracing::warn!(batch = %batch_id, retry = %child, ?delay, %reason, "the job could not do its work; retrying its messages whole after a delay");
                // On abandon the batch stays staged and the next start launches it.
                let waited = tokio::select! {
                    () = inner.abandon.cancelled() => false,
                    () = tokio::time::sleep(delay) => true,
                };
                if waited
                    && inner.breaker.admit(&inner.abandon).await
                    && let Some(slot) = self.slot(&inner.abandon).await
                {
                    self.relaunch(child, slot).await?;
                }
            }
            Settled::Split { children } => {
                // Free this Job's slot first: with a cap of one, the halves need it.
                drop(permit);
                tracing::info!(batch = %batch_id, ?children, "split a failed batch to isolate its poison message");
                for child in children {
                    // On abandon the half stays staged and the next start launches it.
                    if !inner.breaker.admit(&inner.abandon).await {
                        break;
                    }
                    let Some(slot) = self.slot(&inner.abandon).await else {
                        break;
                    };
                    self.relaunch(child, slot).await?;
                }
            }
        }
        Ok(())
    }

    /// [`Flight::launch`] behind a boxed, `Send` future: launching from inside a followed Job's
    /// task is recursive, and naming the future's type breaks the cycle for the compiler.
    fn relaunch(
        &self,
        batch_id: String,
        permit: OwnedSemaphorePermit,
    ) -> BoxFuture<'static, Result<()>> {
        let flight = self.clone();
        Box::pin(async move { flight.launch(&batch_id, permit, Launch::Staged).await })
    }

    /// Lets running Jobs finish within `grace`, then abandons the rest; returns how many were
    /// abandoned.
    pub async fn drain(&self, grace: Duration) -> u64 {
        let inner = &self.inner;
        inner.jobs.close();
        tracing::info!(running = self.running(), ?grace, "waiting for running jobs");
        if tokio::time::timeout(grace, inner.jobs.wait()).await.is_ok() {
            return 0;
        }
        let abandoned = self.running() as u64;
        tracing::warn!(
            abandoned,
            "grace period over; abandoning running jobs to the next start"
        );
        inner.abandon.cancel();
        inner.jobs.wait().await;
        abandoned
    }

    fn running(&self) -> usize {
        self.inner.config.batching.max_jobs_in_flight - self.inner.slots.available_permits()
    }
}
