//! `dispatcher serve`: consume, batch, stage, launch, ack; record outcomes; stop gracefully;
//! pause consumption while the circuit breaker holds launches back or every slot stays busy.
//!
//! The order per batch is what makes the hand-off safe: the batch is staged in Redis as
//! running once a slot under the in-flight cap (shared by every dispatcher) is free, so a
//! burst waits in RabbitMQ; then its Job is launched, and only then are its deliveries acked.
//! A crash at any point before the ack leaves the messages in RabbitMQ. No delivery waits
//! unacked for a slot longer than `UNACKED_MAX_SECONDS` from its arrival: past that, or when
//! the breaker opens or the dispatcher stops, what it holds is parked in Redis (staged with no
//! owner, no slot taken) and acked ([`release`]), and consumption pauses.

use crate::backlog::Backlog;
use crate::batcher::{Batcher, Limits, Next};
use crate::config::Config;
use crate::consumer::{Consumer, Cut, Pending};
use crate::error::{Error, Result};
use crate::failpoint::Failpoint;
use crate::metrics::Metrics;
use crate::reconcile::{Fresh, Reconciler, lease};
use crate::release::release;
use crate::sizer::{BatchMode, Sizer};
use crate::stage::Stager;
use crate::{health, launcher, memory, reply};
use futures::StreamExt;
use sluice_contract::Keys;
use sluice_contract::retry::Policy;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    reconciler: Reconciler,
    metrics: Arc<Metrics>,
}

/// Runs the dispatcher until `shutdown` is cancelled, then lets running Jobs finish for up to
/// `SHUTDOWN_GRACE_SECONDS` and returns. Open batches, this dispatcher's and those of
/// dispatchers that are gone, are taken care of by the [`reconcile`](crate::reconcile) loop.
pub async fn run(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<Summary> {
    let abandon = CancellationToken::new();
    let launcher =
        launcher::from_config(&config, abandon.clone(), Arc::clone(metrics.health())).await?;
    let keys = Keys::new(&config.redis.key_prefix);
    metrics
        .health()
        .block(health::REDIS, "not connected to redis yet");
    let client = config.redis.client()?;
    let stager = tokio::select! {
        () = shutdown.cancelled() => return Ok(Summary::default()),
        stager = connect_redis(client, keys, config.redis.result_ttl_seconds, &metrics) => stager,
    };
    let me = config.replicas.id_or_generate();
    let lease_ttl = config.replicas.lease();
    if !lease::take(&stager, &me, lease_ttl, &metrics, &shutdown).await {
        return Ok(Summary::default());
    }
    tracing::info!(launcher = launcher.kind(), queue = %config.broker.queue, dispatcher = %me, "dispatcher starting");
    let config = Arc::new(config);
    let sizer = Arc::new(Sizer::new(
        config.batching.batch_mode,
        usize::from(config.batching.batch_max_messages),
        Duration::from_secs_f64(config.batching.target_job_seconds),
        config.batching.max_jobs_in_flight,
        config.job_startup_prior(),
    ));
    let reconciler = Reconciler::new(
        Arc::clone(&config),
        stager.clone(),
        launcher,
        Arc::clone(&metrics),
        Arc::clone(&sizer),
        me.clone(),
        abandon,
    );
    let background = TaskTracker::new();
    let (stop_loop, stop_lease) = (CancellationToken::new(), CancellationToken::new());
    let looping = reconciler.clone();
    let loop_stop = stop_loop.clone();
    background.spawn(async move { looping.run(loop_stop).await });
    background.spawn(memory::watch(
        stager.clone(),
        reconciler.clone(),
        Arc::clone(&config),
        Arc::clone(&metrics),
        stop_lease.clone(),
    ));
    background.spawn(reply::serve(
        Arc::clone(&config),
        me.clone(),
        Arc::clone(&metrics),
        stop_lease.clone(),
    ));
    background.spawn(lease::hold(
        stager,
        me,
        lease_ttl,
        Arc::clone(&metrics),
        stop_lease.clone(),
    ));
    background.close();
    let failpoint = Failpoint::parse(config.service.sluice_failpoint.as_deref());
    let dispatcher = Dispatcher {
        config,
        sizer,
        failpoint,
        reconciler,
        metrics,
    };
    let consumed = dispatcher.consume(&shutdown).await;
    let grace = Duration::from_secs(dispatcher.config.service.shutdown_grace_seconds);
    let abandoned = dispatcher.reconciler.drain(grace).await;
    stop_loop.cancel();
    stop_lease.cancel();
    background.wait().await;
    let summary = Summary {
        launched: dispatcher.reconciler.launched(),
        abandoned,
    };
    tracing::info!(?summary, "dispatcher stopped");
    consumed.map(|()| summary)
}

/// Connects to Redis, retrying until it answers; each failure (a TLS one in its own line) is
/// readiness's `redis` reason meanwhile.
async fn connect_redis(
    client: redis::Client,
    keys: Keys,
    ttl_seconds: u64,
    metrics: &Metrics,
) -> Stager {
    let mut backoff = RECONNECT.backoff();
    loop {
        match Stager::open(client.clone(), keys.clone(), ttl_seconds).await {
            Ok(stager) => return stager,
            Err(e) => {
                metrics.health().block(health::REDIS, e.to_string());
                let delay = backoff.next_delay().unwrap_or(RECONNECT.max_delay());
                tracing::warn!(error = %e, ?delay, "cannot connect to redis; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Why a consumer session ended without an error.
#[derive(Debug)]
enum Ended {
    /// Shutdown: what it held is parked.
    Shutdown,
    /// The breaker holds work back (runners unhealthy, or Redis full): what it held is
    /// parked; consume again once it lets work through.
    HeldBack,
    /// Every slot stayed busy for `UNACKED_MAX_SECONDS`: what it held is parked; consume
    /// again once these batches have slots.
    Parked(Vec<String>),
}

impl Dispatcher {
    /// Consumes until shutdown, reconnecting with backoff whenever RabbitMQ or Redis fails.
    /// The schedule starts over once a session is up, so a failure after a good session waits
    /// the shortest delay again. Only a stream queue, which no retry can cure, ends it.
    async fn consume(&self, shutdown: &CancellationToken) -> Result<()> {
        let mut backoff = RECONNECT.backoff();
        while !shutdown.is_cancelled() {
            if self.reconciler.breaker().is_open() {
                // The why is under `runner` or `redis-full`, kept current there.
                let reason = "paused while launches are held back (see runner, redis-full)";
                self.metrics.health().block(health::CONSUMER, reason);
                if !self.reconciler.breaker().closed(shutdown).await {
                    break;
                }
            }
            let session = tokio::select! {
                () = shutdown.cancelled() => break,
                consumer = Consumer::start(&self.config) => consumer,
            };
            let outcome = match session {
                Ok((consumer, stream)) => {
                    backoff = RECONNECT.backoff();
                    self.metrics.health().clear(health::CONSUMER);
                    self.consume_session(consumer, stream, shutdown).await
                }
                Err(e) => Err(e),
            };
            let resumed = match outcome {
                Ok(Ended::Shutdown) => break,
                // The loop's top waits for the breaker to close.
                Ok(Ended::HeldBack) => true,
                Ok(Ended::Parked(parked)) => {
                    // Busy, not broken: readiness stays as it is.
                    tracing::info!(
                        parked = parked.len(),
                        "every job slot stayed busy: paused until the parked batches have slots"
                    );
                    self.reconciler.until_launched(&parked, shutdown).await
                }
                Err(e) => {
                    if e.is_redis_full() {
                        // Held back at once: reconnecting would only take deliveries back.
                        let why = format!("a write was refused for memory: {e}");
                        self.reconciler.breaker().redis_full(&why);
                    }
                    self.metrics
                        .health()
                        .block(health::CONSUMER, format!("consumer stopped: {e}"));
                    self.metrics.error(e.metric_label());
                    // Only a stream queue ends it: any other failure (a Redis error the driver
                    // calls final, a refused declare) may be fixed while we wait.
                    if matches!(e, Error::StreamQueue { .. }) {
                        tracing::error!(error = %e, "cannot consume; stopping");
                        return Err(e);
                    }
                    // RECONNECT has neither budget nor retry limit: its schedule never runs out.
                    let delay = backoff.next_delay().unwrap_or(RECONNECT.max_delay());
                    tracing::warn!(error = %e, ?delay, "consumer stopped; reconnecting");
                    tokio::select! {
                        // Shutdown cuts the wait short; a timer holds nothing: dropping it is safe.
                        () = shutdown.cancelled() => false,
                        () = tokio::time::sleep(delay) => true,
                    }
                }
            };
            if !resumed {
                break;
            }
        }
        Ok(())
    }

    /// One connection's life: batches until shutdown, a pause or a failure. A pause or a
    /// shutdown parks what is held ([`release`]); after a failure, unacked deliveries (a batch
    /// being filled, or one whose launch failed) go back to the queue as the connection closes.
    async fn consume_session(
        &self,
        consumer: Consumer,
        stream: lapin::Consumer,
        shutdown: &CancellationToken,
    ) -> Result<Ended> {
        let max_bytes = self.config.broker.max_message_bytes;
        let limits = Limits {
            max_messages: usize::from(self.config.batching.batch_max_messages),
            max_bytes: self.config.batching.batch_max_bytes,
            linger: self.config.linger(),
        };
        let mut batcher = Batcher::new(limits);
        // Deliveries are taken from the client as they arrive, so each one's hold counts from
        // its arrival, not from when a batch gets to it.
        let (arrived, pumped) = futures::channel::mpsc::unbounded();
        let pump = tokio::spawn(async move {
            let mut stream = stream;
            while let Some(delivery) = stream.next().await {
                let pending = delivery.map(|d| Pending::new(d, max_bytes));
                if arrived.unbounded_send(pending).is_err() {
                    break;
                }
            }
        });
        let mut deliveries = Backlog::new(pumped);
        let breaker = self.reconciler.breaker();
        let ended = loop {
            if breaker.is_open() {
                tracing::info!("pausing consumption while launches are held back");
                break Ok(Ended::HeldBack);
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
                () = shutdown.cancelled() => break Ok(Ended::Shutdown),
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
            let cut = match Cut::new(batch, &self.config.broker.queue) {
                Ok(cut) => cut,
                Err(e) => break Err(e),
            };
            match self.dispatch(&consumer, cut, shutdown).await {
                Ok((_, Fresh::Launched)) => {}
                Ok((_, Fresh::Parked)) if shutdown.is_cancelled() => break Ok(Ended::Shutdown),
                Ok((_, Fresh::Parked)) if breaker.is_open() => break Ok(Ended::HeldBack),
                Ok((id, Fresh::Parked)) => break Ok(Ended::Parked(vec![id])),
                Err(e) => break Err(e),
            }
        };
        let ended = match ended {
            Ok(ended) => {
                if matches!(ended, Ended::Shutdown) {
                    // What is parked now waits for another dispatcher or the next start.
                    self.reconciler.stop_taking_work();
                }
                let (reconciler, config) = (&self.reconciler, &self.config);
                let released =
                    release(&consumer, batcher, &mut deliveries, reconciler, config).await;
                released.map(|more| match ended {
                    Ended::Parked(mut parked) => {
                        parked.extend(more);
                        Ended::Parked(parked)
                    }
                    other => other,
                })
            }
            Err(e) => Err(e),
        };
        consumer.close().await;
        // The stream ends with the connection; the pump holds nothing worth waiting for.
        pump.abort();
        ended
    }

    /// Stages a closed batch once a slot under the cap is free and launches its Job, or parks
    /// it (the breaker is open, its deliveries may wait no longer, or the dispatcher stops);
    /// then acks its deliveries. Returns the batch id and which it was.
    #[tracing::instrument(skip_all, fields(batch = %cut.id, size = cut.frames.len()))]
    async fn dispatch(
        &self,
        consumer: &Consumer,
        cut: Cut,
        shutdown: &CancellationToken,
    ) -> Result<(String, Fresh)> {
        let size = cut.frames.len() as u64;
        let fresh = cut.fresh(self.config.batching.unacked_max());
        // Parked rather than launched when the breaker is open (launch_fresh decides).
        let placed = self
            .reconciler
            .launch_fresh(&fresh, &self.failpoint, shutdown)
            .await?;
        // Staged: the frames' copy here is no longer needed while the ack goes out.
        let Cut { id, last_tag, .. } = cut;
        self.failpoint.hit("before-ack");
        consumer.ack_through(last_tag).await?;
        self.failpoint.hit("after-ack");
        self.metrics.messages.inc_by(size);
        Ok((id, placed))
    }
}
