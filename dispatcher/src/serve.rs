//! `dispatcher serve`: consume, batch, stage, launch, ack; record outcomes; stop gracefully;
//! pause consumption while the circuit breaker holds launches back.
//!
//! The order per batch is what makes the hand-off safe: a permit from the in-flight cap is
//! taken first (so a burst waits in RabbitMQ), then the batch is staged in Redis, then its Job
//! is launched, and only then are its deliveries acked. A crash at any point before the ack
//! leaves the messages in RabbitMQ.

use crate::backlog::Backlog;
use crate::batcher::{Batcher, Limits, Next};
use crate::config::Config;
use crate::consumer::{Consumer, Pending};
use crate::error::{Error, Result};
use crate::failpoint::Failpoint;
use crate::flight::{Flight, Launch};
use crate::metrics::Metrics;
use crate::sizer::{BatchMode, Sizer};
use crate::stage::Stager;
use crate::{health, job, launcher};
use futures::StreamExt;
use sluice_contract::retry::Policy;
use sluice_contract::{BatchState, Keys};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

/// Delays between attempts to (re)connect the consumer: 400 ms doubling to 12.8 s, plus jitter,
/// for as long as the dispatcher runs.
const RECONNECT: Policy = Policy::new(
    Duration::from_millis(400),
    Duration::from_millis(12_800),
    None,
);

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
    sizer: Arc<Sizer>,
    failpoint: Failpoint,
    stager: Stager,
    flight: Flight,
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
    let launcher =
        launcher::from_config(&config, abandon.clone(), Arc::clone(metrics.health())).await?;
    let keys = Keys::new(&config.redis.key_prefix);
    let stager = tokio::select! {
        () = shutdown.cancelled() => return Ok(Summary::default()),
        stager = Stager::connect(&config.redis.redis_url, keys, config.redis.result_ttl_seconds) => stager?,
    };
    tracing::info!(launcher = launcher.kind(), queue = %config.broker.queue, "dispatcher starting");
    let config = Arc::new(config);
    let sizer = Arc::new(Sizer::new(
        config.batching.batch_mode,
        usize::from(config.batching.batch_max_messages),
        Duration::from_secs_f64(config.batching.target_job_seconds),
        config.batching.max_jobs_in_flight,
        config.job_startup_prior(),
    ));
    let flight = Flight::new(
        Arc::clone(&config),
        stager.clone(),
        launcher,
        Arc::clone(&metrics),
        Arc::clone(&sizer),
        abandon,
    );
    let failpoint = Failpoint::parse(config.service.sluice_failpoint.as_deref());
    let dispatcher = Dispatcher {
        config,
        sizer,
        failpoint,
        stager,
        flight,
        metrics,
    };
    let mut summary = Summary {
        launched: dispatcher.recover(&shutdown).await?,
        ..Summary::default()
    };
    summary.launched += dispatcher.consume(&shutdown).await;
    let grace = Duration::from_secs(dispatcher.config.service.shutdown_grace_seconds);
    summary.abandoned = dispatcher.flight.drain(grace).await;
    tracing::info!(?summary, "dispatcher stopped");
    Ok(summary)
}

impl Dispatcher {
    /// Relaunches batches a previous run staged but did not see finish. The runner skips
    /// messages that already have results, so a relaunch never redoes finished work.
    async fn recover(&self, shutdown: &CancellationToken) -> Result<u64> {
        let mut launched = 0;
        for batch_id in self.stager.open_batches().await? {
            let Some(permit) = self.flight.slot(shutdown).await else {
                break;
            };
            match self.stager.batch_info(&batch_id).await? {
                Some((_, Some(BatchState::Staged | BatchState::Running))) => {
                    if !self.flight.breaker().admit(shutdown).await {
                        break;
                    }
                    tracing::info!(batch = %batch_id, "relaunching a batch left open by an earlier run");
                    self.flight
                        .launch(&batch_id, permit, Launch::Staged)
                        .await?;
                    launched += 1;
                }
                Some((_, Some(state))) => {
                    // Finished while no dispatcher watched (the runner marks its own success):
                    // record it and release its Job.
                    self.stager.close(&batch_id, state, None).await?;
                    self.flight
                        .launcher()
                        .finished(&job::job_name(&batch_id))
                        .await?;
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
    /// The schedule starts over once a session is up, so a failure after a good session waits
    /// the shortest delay again.
    async fn consume(&self, shutdown: &CancellationToken) -> u64 {
        let mut launched = 0;
        let mut backoff = RECONNECT.backoff();
        while !shutdown.is_cancelled() {
            let session = tokio::select! {
                () = shutdown.cancelled() => break,
                consumer = Consumer::start(&self.config) => consumer,
            };
            let outcome = match session {
                Ok((consumer, stream)) => {
                    backoff = RECONNECT.backoff();
                    self.metrics.health().clear(health::CONSUMER);
                    self.consume_session(consumer, stream, shutdown, &mut launched)
                        .await
                }
                Err(e) => Err(e),
            };
            let reason = match &outcome {
                Ok(()) if shutdown.is_cancelled() => "shutting down".to_owned(),
                Ok(()) => "paused while runners are unhealthy (see runner)".to_owned(),
                Err(e) => format!("consumer stopped: {e}"),
            };
            self.metrics.health().block(health::CONSUMER, reason);
            if outcome.is_ok() && !self.flight.breaker().closed(shutdown).await {
                break;
            }
            if let Err(e) = outcome {
                self.metrics.error(e.metric_label());
                // RECONNECT has neither budget nor retry limit: its schedule never runs out.
                let delay = backoff.next_delay().unwrap_or(RECONNECT.max_delay());
                tracing::warn!(error = %e, ?delay, "consumer stopped; reconnecting");
                tokio::select! {
                    // Shutdown cuts the wait short; a timer holds nothing, so dropping it is safe.
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
        let max_bytes = self.config.broker.max_message_bytes;
        let limits = Limits {
            max_messages: usize::from(self.config.batching.batch_max_messages),
            max_bytes: self.config.batching.batch_max_bytes,
            linger: self.config.linger(),
        };
        let mut batcher = Batcher::new(limits);
        let mut deliveries = Backlog::new(stream.map(|d| d.map(|d| Pending::new(d, max_bytes))));
        let breaker = self.flight.breaker();
        let result = loop {
            if breaker.is_open() {
                // Deliveries not yet staged go back to the queue as the session closes.
                tracing::info!("pausing consumption while runners are unhealthy");
                break Ok(());
            }
            if batcher.is_empty() && self.config.batching.batch_mode == BatchMode::Adaptive {
                // The backlog: what the broker still holds plus what it already pushed to us.
                match consumer.depth(&self.config.broker.queue).await {
                    Ok(ready) => {
                        let depth = ready as usize + deliveries.fill();
                        batcher.set_max_messages(self.sizer.size(depth));
                    }
                    Err(e) => break Err(e),
                }
            }
            let next = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = breaker.until_open(true) => continue,
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
            if !breaker.admit(shutdown).await {
                break Ok(());
            }
            let Some(permit) = self.flight.slot(shutdown).await else {
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
        self.failpoint.hit("before-stage");
        self.stager
            .stage(&batch_id, &job::job_name(&batch_id), &frames)
            .await?;
        drop(frames);
        self.failpoint.hit("before-launch");
        if let Err(e) = self.flight.launch(&batch_id, permit, Launch::Fresh).await {
            // The deliveries return to the queue when this session closes: drop the staged
            // copy, so the redelivered messages are staged once.
            self.stager.discard(&batch_id, size as usize).await?;
            return Err(e);
        }
        self.failpoint.hit("before-ack");
        consumer.ack_through(last_tag).await?;
        self.failpoint.hit("after-ack");
        self.metrics.messages.inc_by(size);
        Ok(())
    }
}
