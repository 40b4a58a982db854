//! Fresh batches, cut from deliveries not acked yet: staged as running once the shared cap
//! has room and launched, or parked (staged with no owner) when no slot frees before their
//! deliveries may wait no longer, or when the dispatcher stops.

use super::{Reconciler, SLOT_POLL};
use crate::cas::Applied;
use crate::error::{Error, Result};
use crate::failpoint::Failpoint;
use crate::job;
use crate::steps::{BatchView, Placement};
use sluice_contract::BatchState;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

/// What became of a fresh batch handed to [`Reconciler::launch_fresh`]; either way its
/// deliveries are safe in Redis and are acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// Staged and launched (or its launch refused for good, which is its outcome now).
    Launched,
    /// Parked: staged with no owner, because no slot freed before its deliveries' hold ran
    /// out or the dispatcher is stopping; whichever dispatcher has a slot first launches it.
    Parked,
}

/// A batch just cut from deliveries, not acked yet.
#[derive(Debug, Clone, Copy)]
pub struct FreshBatch<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its staged messages.
    pub frames: &'a [Vec<u8>],
    /// What the broker said of its deliveries.
    pub history: crate::steps::Redeliveries,
    /// When its oldest delivery has waited unacked as long as it may (`UNACKED_MAX_SECONDS`).
    pub hold_until: tokio::time::Instant,
}

/// A fresh batch's id is taken: only two dispatchers with one id can do that.
fn shared_id(batch_id: &str) -> Error {
    Error::InvalidConfig(format!(
        "batch {batch_id} exists already: two dispatchers share an id"
    ))
}

impl Reconciler {
    /// Stages a fresh batch (its deliveries not acked yet) as soon as a slot under the
    /// cap is free and launches its Job, or parks it when its hold runs out, the breaker
    /// opens or `stop` comes first. A create refused for good becomes the batch's outcome (an outage, retried
    /// whole); an `Err` means the batch is not staged (a transient launch failure was undone,
    /// or Redis failed) and its deliveries must go back to RabbitMQ.
    pub async fn launch_fresh(
        &self,
        batch: &FreshBatch<'_>,
        failpoint: &Failpoint,
        stop: &CancellationToken,
    ) -> Result<Fresh> {
        let inner = &self.inner;
        failpoint.hit("before-stage");
        if self.stage_in_a_slot(batch, stop).await? == Fresh::Parked {
            return Ok(Fresh::Parked);
        }
        failpoint.hit("before-launch");
        let job = job::build(&inner.config, batch.id);
        match inner.launcher.launch(&job).await {
            Ok(running) => self.follow(batch.id, "1", running),
            Err(e) if e.is_transient() => {
                inner.followed.stop(batch.id);
                // Its deliveries go back to RabbitMQ: drop the staged copy, so the
                // redelivered messages are staged once.
                inner.stager.discard(batch.id, batch.frames.len()).await?;
                inner.capacity.notify_waiters();
                return Err(e);
            }
            Err(e) => self.refused(batch.id, "1", &e),
        }
        inner.launched.fetch_add(1, Ordering::Relaxed);
        inner.metrics.launched.inc();
        Ok(Fresh::Launched)
    }

    /// Stages `batch` as running under this dispatcher once the shared cap has room
    /// ([`Fresh::Launched`]: launch it now), or parks it ([`Fresh::Parked`]).
    async fn stage_in_a_slot(
        &self,
        batch: &FreshBatch<'_>,
        stop: &CancellationToken,
    ) -> Result<Fresh> {
        let inner = &self.inner;
        let placement = Placement::Running {
            owner: &inner.me,
            cap: inner.config.batching.max_jobs_in_flight,
        };
        loop {
            // The breaker may open while the batch waits: a fresh batch never goes out as a
            // probe (the reconciler's staged batches do).
            let late = tokio::time::Instant::now() >= batch.hold_until;
            if stop.is_cancelled() || late || inner.breaker.is_open() {
                return self.park(batch).await;
            }
            let freed = inner.capacity.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            inner.followed.start(batch.id, "1");
            let staged = inner
                .stager
                .stage_fresh(batch.id, batch.frames, placement, batch.history)
                .await;
            match staged {
                Ok(Applied::Yes) => return Ok(Fresh::Launched),
                Ok(Applied::Full) => inner.followed.stop(batch.id),
                Ok(Applied::Stale) => {
                    inner.followed.stop(batch.id);
                    return Err(shared_id(batch.id));
                }
                Err(e) => {
                    inner.followed.stop(batch.id);
                    return Err(e);
                }
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = &mut freed => {}
                () = tokio::time::sleep(SLOT_POLL) => {}
                () = tokio::time::sleep_until(batch.hold_until) => {}
                () = inner.breaker.until_open(true) => {}
            }
        }
    }

    /// Stages `batch` with no owner, for the first dispatcher with a slot (this one's next
    /// pass looks as soon as something settles).
    pub async fn park(&self, batch: &FreshBatch<'_>) -> Result<Fresh> {
        let inner = &self.inner;
        let staged = inner
            .stager
            .stage_fresh(batch.id, batch.frames, Placement::Parked, batch.history)
            .await?;
        if staged == Applied::Stale {
            return Err(shared_id(batch.id));
        }
        inner.metrics.parked.inc();
        inner.starved.store(true, Ordering::Relaxed);
        Ok(Fresh::Parked)
    }

    /// Waits until none of the `parked` batches waits for a slot any more (launched by any
    /// dispatcher, or gone); `false` once `stop` is cancelled.
    pub async fn until_launched(&self, parked: &[String], stop: &CancellationToken) -> bool {
        loop {
            let freed = self.inner.capacity.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.inner.stager.views(parked).await {
                Ok(views) => {
                    let staged = |v: &BatchView| v.state == Some(BatchState::Staged);
                    if !views.iter().flatten().any(staged) {
                        return true;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the parked batches; looking again");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = &mut freed => {}
                () = tokio::time::sleep(SLOT_POLL) => {}
            }
        }
    }
}
