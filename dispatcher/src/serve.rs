//! `dispatcher serve`: consume, batch, stage, launch, ack; record outcomes; stop gracefully.
//!
//! The order per batch is what makes the hand-off safe: a permit from the in-flight cap is
//! taken first (so a burst waits in RabbitMQ), then the batch is staged in Redis, then its Job
//! is launched, and only then are its deliveries acked. A crash at any point before the ack
//! leaves the messages in RabbitMQ.

use crate::batcher::{Batcher, Limits, Next};
use crate::config::Config;
use crate::consumer::{Consumer, Pending};
use crate::error::{Error, Result};
use crate::launcher::{Launcher, Outcome, Running};
use crate::metrics::Metrics;
use crate::settle::{DeadLetterSettings, settle};
use crate::stage::Stager;
use crate::{job, launcher};
use futures::StreamExt;
use sluice_contract::{BatchState, Keys};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a dispatcher run did, returned when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Batches launched (including recovered ones).
    pub launched: u64,
    /// Batches still running when the shutdown grace ran out (relaunched on the next start).
    pub abandoned: u64,
}

/// The running dispatcher's shared parts.
struct Dispatcher {
    config: Arc<Config>,
    stager: Stager,
    launcher: Arc<Launcher>,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    metrics: Arc<Metrics>,
}

/// Runs the dispatcher until `shutdown` is cancelled, then lets running Jobs finish for up to
/// `SHUTDOWN_GRACE_SECONDS` and returns.
pub async fn run(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<Summary> {
    let abandon = CancellationToken::new();
    let launcher = launcher::from_config(&config, abandon.clone()).await?;
    let keys = Keys::new(&config.key_prefix);
    let stager = tokio::select! {
        () = shutdown.cancelled() => return Ok(Summary::default()),
        stager = Stager::connect(&config.redis_url, keys, config.result_ttl_seconds) => stager?,
    };
    tracing::info!(launcher = launcher.kind(), queue = %config.queue, "dispatcher starting");
    let dispatcher = Dispatcher {
        slots: Arc::new(Semaphore::new(config.max_jobs_in_flight)),
        config: Arc::new(config),
        stager,
        launcher: Arc::new(launcher),
        jobs: TaskTracker::new(),
        metrics,
    };
    let mut summary = Summary {
        launched: dispatcher.recover(&shutdown).await?,
        ..Summary::default()
    };
    summary.launched += dispatcher.consume(&shutdown).await;
    summary.abandoned = dispatcher.drain(abandon).await;
    tracing::info!(?summary, "dispatcher stopped");
    Ok(summary)
}

impl Dispatcher {
    /// Relaunches batches a previous run staged but did not see finish. The runner skips
    /// messages that already have results, so a relaunch never redoes finished work.
    async fn recover(&self, shutdown: &CancellationToken) -> Result<u64> {
        let mut launched = 0;
        for batch_id in self.stager.open_batches().await? {
            let Some(permit) = self.slot(shutdown).await else {
                break;
            };
            match self.stager.batch_info(&batch_id).await? {
                Some((_, Some(BatchState::Staged | BatchState::Running))) => {
                    tracing::info!(batch = %batch_id, "relaunching a batch left open by an earlier run");
                    self.launch(&batch_id, permit).await?;
                    launched += 1;
                }
                Some((_, Some(state))) => {
                    // Finished while no dispatcher watched (the runner marks its own success):
                    // record it and release its Job.
                    self.stager.close(&batch_id, state, None).await?;
                    self.launcher.finished(&job::job_name(&batch_id)).await?;
                }
                _ => {
                    self.stager
                        .close(&batch_id, BatchState::Failed, Some("batch state lost"))
                        .await?;
                }
            }
        }
        Ok(launched)
    }

    /// Consumes until shutdown, reconnecting with backoff whenever RabbitMQ or Redis fails.
    async fn consume(&self, shutdown: &CancellationToken) -> u64 {
        let mut launched = 0;
        let mut failures = 0_u32;
        while !shutdown.is_cancelled() {
            let session = tokio::select! {
                () = shutdown.cancelled() => break,
                consumer = Consumer::start(&self.config) => consumer,
            };
            let outcome = match session {
                Ok((consumer, stream)) => {
                    failures = 0;
                    self.metrics.set_ready(true);
                    self.consume_session(consumer, stream, shutdown, &mut launched)
                        .await
                }
                Err(e) => Err(e),
            };
            self.metrics.set_ready(false);
            if let Err(e) = outcome {
                self.metrics.error(e.metric_label());
                failures += 1;
                let delay = Duration::from_millis(200 * 2_u64.pow(failures.min(6)));
                tracing::warn!(error = %e, ?delay, "consumer stopped; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        launched
    }

    /// One connection's life: batches until shutdown or failure. Unacked deliveries (a batch
    /// being filled, or one whose launch failed) go back to the queue when the connection closes.
    async fn consume_session(
        &self,
        consumer: Consumer,
        stream: lapin::Consumer,
        shutdown: &CancellationToken,
        launched: &mut u64,
    ) -> Result<()> {
        let max_bytes = self.config.max_message_bytes;
        let limits = Limits {
            max_messages: usize::from(self.config.batch_max_messages),
            max_bytes: self.config.batch_max_bytes,
            linger: self.config.linger(),
        };
        let mut batcher = Batcher::new(limits);
        let mut deliveries = stream.map(|d| d.map(|d| Pending::new(d, max_bytes)));
        let result = loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                // Cancellation-safe: received items stay in the batcher.
                next = batcher.next_batch(&mut deliveries) => next,
            };
            let batch = match next {
                Next::Batch(batch) => batch,
                Next::StreamEnded => {
                    break Err(Error::ConsumerClosed {
                        reason: "stream ended".into(),
                    });
                }
                Next::Failed(reason) => break Err(Error::ConsumerClosed { reason }),
            };
            let Some(permit) = self.slot(shutdown).await else {
                break Ok(());
            };
            if let Err(e) = self.dispatch(&consumer, batch, permit).await {
                break Err(e);
            }
            *launched += 1;
        };
        consumer.close().await;
        result
    }

    /// Waits for a free slot under `MAX_JOBS_IN_FLIGHT`; `None` on shutdown.
    async fn slot(&self, shutdown: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            () = shutdown.cancelled() => None,
            permit = Arc::clone(&self.slots).acquire_owned() => permit.ok(),
        }
    }

    /// Stages a closed batch, launches its Job and acks its deliveries.
    #[tracing::instrument(skip_all, fields(batch, size = batch.len()))]
    async fn dispatch(
        &self,
        consumer: &Consumer,
        batch: Vec<Pending>,
        permit: OwnedSemaphorePermit,
    ) -> Result<()> {
        let batch_id = uuid::Uuid::now_v7().to_string();
        tracing::Span::current().record("batch", batch_id.as_str());
        let last_tag = batch.last().map_or(0, |p| p.tag);
        let size = batch.len() as u64;
        let frames: Vec<Vec<u8>> = batch.into_iter().map(|p| p.frame).collect();
        self.stager
            .stage(&batch_id, &job::job_name(&batch_id), &frames)
            .await?;
        drop(frames);
        if let Err(e) = self.launch(&batch_id, permit).await {
            // The deliveries return to the queue when this session closes: drop the staged
            // copy, so the redelivered messages are staged once.
            self.stager.discard(&batch_id, size as usize).await?;
            return Err(e);
        }
        consumer.ack_through(last_tag).await?;
        self.metrics.messages.inc_by(size);
        Ok(())
    }

    /// Launches the Job of a staged batch and tracks it until its outcome is recorded.
    async fn launch(&self, batch_id: &str, permit: OwnedSemaphorePermit) -> Result<()> {
        let job = job::build(&self.config, batch_id);
        self.stager.set_state(batch_id, BatchState::Running).await?;
        let running = match self.launcher.launch(&job).await {
            Ok(running) => running,
            Err(e) => {
                // Back to staged: a recovered batch is tried again on the next start.
                self.stager.set_state(batch_id, BatchState::Staged).await?;
                return Err(e);
            }
        };
        self.metrics.launched.inc();
        let watch = OutcomeWatch {
            stager: self.stager.clone(),
            metrics: Arc::clone(&self.metrics),
            config: Arc::clone(&self.config),
            launcher: Arc::clone(&self.launcher),
            batch_id: batch_id.to_owned(),
        };
        self.jobs.spawn(async move {
            watch.run(running).await;
            drop(permit);
        });
        Ok(())
    }

    /// Lets running Jobs finish within the grace period, then abandons the rest.
    async fn drain(&self, abandon: CancellationToken) -> u64 {
        self.jobs.close();
        let grace = Duration::from_secs(self.config.shutdown_grace_seconds);
        let running = self.config.max_jobs_in_flight - self.slots.available_permits();
        tracing::info!(running, ?grace, "waiting for running jobs");
        if tokio::time::timeout(grace, self.jobs.wait()).await.is_ok() {
            return 0;
        }
        let abandoned = (self.config.max_jobs_in_flight - self.slots.available_permits()) as u64;
        tracing::warn!(
            abandoned,
            "grace period over; abandoning running jobs to the next start"
        );
        abandon.cancel();
        self.jobs.wait().await;
        abandoned
    }
}

/// Waits for one Job's outcome and records it.
struct OutcomeWatch {
    stager: Stager,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    launcher: Arc<Launcher>,
    batch_id: String,
}

impl OutcomeWatch {
    async fn run(self, running: Running) {
        let timer = self.metrics.time_job();
        let outcome = running.await;
        drop(timer);
        let batch_id = self.batch_id.as_str();
        let label = match &outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed { reason } => {
                tracing::warn!(batch = %batch_id, %reason, "job failed");
                "failed"
            }
            Outcome::Abandoned => return self.metrics.batch_ended("abandoned"),
        };
        self.metrics.batch_ended(label);
        let settings = DeadLetterSettings {
            ttl_seconds: self.config.result_ttl_seconds,
            stream_maxlen: self.config.results_maxlen,
        };
        let recorded = match settle(&self.stager, batch_id, &outcome, settings).await {
            Ok(dead) => {
                self.metrics.dead_letters.inc_by(dead as u64);
                self.launcher.finished(&job::job_name(batch_id)).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            // The batch stays open (or its Job stays) and the next start settles it again.
            self.metrics.error(e.metric_label());
            tracing::error!(batch = %batch_id, error = %e, "could not record the job's outcome");
        }
    }
}
