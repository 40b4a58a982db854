//! Applying the reconciler's decisions: one step per batch, each a compare-and-set, and what
//! follows a settled outcome.

use super::Reconciler;
use super::decide::{Action, Facts, Observation, decide};
use crate::cas::Applied;
use crate::error::Result;
use crate::health;
use crate::job;
use crate::launcher::{FailureKind, Outcome};
use crate::reason::Failure;
use crate::settle::{DeadLetterSettings, Settled, settle};
use crate::steps::{self, BatchView};
use sluice_contract::BatchState;
use sluice_contract::record::unix_millis;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// How [`Reconciler::start`] gets a batch's Job running.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// Create it.
    Launch,
    /// Follow the one a lost dispatcher left, or create it if there is none.
    Adopt,
}

impl Reconciler {
    /// Reconciles every open batch, and drops running-set entries of batches no longer open.
    /// Returns when the next pass is due sooner than the regular interval, if it is.
    pub(super) async fn pass(&self) -> Option<Instant> {
        let stager = &self.inner.stager;
        let open = match stager.open_batches().await {
            Ok(open) => open,
            Err(e) => {
                self.redis_failed(&e);
                return None;
            }
        };
        self.share_runner_health().await;
        let wake = self.reconcile(&open).await;
        let open: HashSet<&String> = open.iter().collect();
        if let Ok(running) = stager.running_batches().await {
            let leaked: Vec<String> = running
                .into_iter()
                .filter(|id| !open.contains(id))
                .collect();
            if let Err(e) = stager.forget(&leaked).await {
                self.redis_failed(&e);
            }
        }
        wake
    }

    /// Closes this dispatcher's open breaker when another dispatcher recorded runners healthy
    /// since it opened: a replica with nothing left to probe with would otherwise stay paused
    /// (and unready) after the cause is fixed.
    /// Returns whether it closed it.
    async fn share_runner_health(&self) -> bool {
        let breaker = &self.inner.breaker;
        let Some(opened) = breaker.opened_at_ms() else {
            return false;
        };
        match self.inner.stager.runners_healthy_since().await {
            // A second of slack for the clocks of two nodes.
            Ok(Some(since)) if since + 1000 >= opened && breaker.healthy() => {
                tracing::info!("another dispatcher's job reached its work: runners work again");
                true
            }
            Ok(_) => false,
            Err(e) => {
                self.redis_failed(&e);
                false
            }
        }
    }

    /// Decides and applies one step for each of `batches`; returns the earliest time one of
    /// them must be looked at again, if any must before the next pass.
    pub(super) async fn reconcile(&self, batches: &[String]) -> Option<Instant> {
        let inner = &self.inner;
        let (views, alive) = match self.observe(batches).await {
            Ok(observed) => observed,
            Err(e) => {
                self.redis_failed(&e);
                return None;
            }
        };
        let mut wake: Option<Instant> = None;
        let now_ms = unix_millis();
        for (batch, view) in batches.iter().zip(views) {
            let observed = match &view {
                Some(v) => inner.followed.observe(batch, &v.generation),
                None => Observation::NotFollowed,
            };
            let owner_alive = view
                .as_ref()
                .and_then(|v| v.owner.as_deref())
                .is_some_and(|o| alive.get(o).copied().unwrap_or(false));
            let facts = Facts {
                me: &inner.me,
                owner_alive,
                now_ms,
                stopping: inner.stopping.load(Ordering::Relaxed),
            };
            let action = decide(view.as_ref(), &observed, facts);
            let due = match self.apply(batch, view.as_ref(), action).await {
                Ok(due) => due,
                Err(e) => {
                    inner.metrics.error(e.metric_label());
                    tracing::warn!(%batch, error = %e, "could not reconcile the batch; trying again");
                    None
                }
            };
            wake = match (wake, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        wake
    }

    /// The records of `batches`, and whether each other dispatcher that owns one holds its
    /// lease.
    async fn observe(
        &self,
        batches: &[String],
    ) -> Result<(Vec<Option<BatchView>>, HashMap<String, bool>)> {
        let stager = &self.inner.stager;
        let views = stager.views(batches).await?;
        let owners: Vec<&str> = views
            .iter()
            .flatten()
            .filter_map(|v| v.owner.as_deref())
            .filter(|o| *o != self.inner.me)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let held = stager.leases_held(&owners).await?;
        let alive = owners.into_iter().map(str::to_owned).zip(held).collect();
        Ok((views, alive))
    }

    /// Applies one decision; returns when the batch must be looked at again, if sooner than
    /// the next pass.
    async fn apply(
        &self,
        batch: &str,
        view: Option<&BatchView>,
        action: Action,
    ) -> Result<Option<Instant>> {
        let inner = &self.inner;
        let Some(view) = view else {
            inner.followed.stop(batch);
            inner.stager.forget(&[batch.to_owned()]).await?;
            return Ok(None);
        };
        match action {
            Action::Wait => {}
            Action::WaitUntil(at_ms) => {
                let wait = Duration::from_millis(at_ms.saturating_sub(unix_millis()));
                return Ok(Some(Instant::now() + wait));
            }
            Action::Forget => {
                inner.followed.stop(batch);
                inner.stager.forget(&[batch.to_owned()]).await?;
            }
            Action::Launch => return self.launch(view).await,
            Action::Adopt => self.adopt(view).await?,
            Action::Settle(outcome) => self.settle(view, &outcome).await?,
            Action::Close => {
                let ttl = inner.stager.ttl_seconds();
                let step =
                    steps::close(inner.stager.keys(), view, BatchState::Succeeded, None, ttl);
                if self.applied(inner.stager.apply(&step, "closing a batch").await?) {
                    self.release(&view.id);
                }
            }
        }
        Ok(None)
    }

    fn applied(&self, applied: Applied) -> bool {
        if applied == Applied::Stale {
            self.inner.metrics.stale_steps.inc();
        }
        applied == Applied::Yes
    }

    /// Launches a staged batch through the breaker and the cap.
    async fn launch(&self, view: &BatchView) -> Result<Option<Instant>> {
        let inner = &self.inner;
        if !inner.breaker.try_admit() {
            inner.starved.store(true, Ordering::Relaxed);
            return Ok(inner.breaker.next_probe());
        }
        let cap = inner.config.batching.max_jobs_in_flight;
        let generation = view.next_generation();
        inner.followed.start(&view.id, &generation);
        let step = steps::launch(inner.stager.keys(), view, &inner.me, cap);
        let applied = inner.stager.apply(&step, "launching a batch").await;
        if !matches!(applied, Ok(Applied::Yes)) {
            inner.followed.stop(&view.id);
            inner.breaker.probe_not_launched();
            if matches!(applied, Ok(Applied::Full)) {
                inner.starved.store(true, Ordering::Relaxed);
            } else if let Ok(applied) = applied {
                self.applied(applied);
            }
            return applied.map(|_| None);
        }
        if inner.breaker.is_probing() {
            tracing::info!(batch = %view.id, "launching one job to probe whether runners work again");
        }
        self.start(&view.id, generation, Start::Launch);
        inner.launched.fetch_add(1, Ordering::Relaxed);
        inner.metrics.launched.inc();
        Ok(None)
    }

    /// Takes over a launched batch whose owner is gone and follows its Job.
    async fn adopt(&self, view: &BatchView) -> Result<()> {
        let inner = &self.inner;
        let generation = view.next_generation();
        inner.followed.start(&view.id, &generation);
        let step = steps::adopt(inner.stager.keys(), view, &inner.me);
        let applied = inner.stager.apply(&step, "adopting a batch").await;
        if !matches!(applied, Ok(Applied::Yes)) {
            inner.followed.stop(&view.id);
            return applied.map(|a| {
                self.applied(a);
            });
        }
        inner.metrics.adopted.inc();
        tracing::info!(batch = %view.id, from = view.owner.as_deref().unwrap_or("nobody"), "adopting a batch whose dispatcher is gone");
        self.start(&view.id, generation, Start::Adopt);
        Ok(())
    }

    /// Creates (or takes over) the batch's Job in a tracked task and follows it; a create
    /// refused for good is its outcome.
    fn start(&self, batch: &str, generation: String, how: Start) {
        let (this, batch) = (self.clone(), batch.to_owned());
        self.inner.tasks.spawn(async move {
            let job = job::build(&this.inner.config, &batch);
            let launcher = &this.inner.launcher;
            let started = match how {
                Start::Launch => launcher.launch(&job).await,
                Start::Adopt => launcher.adopt(&job).await,
            };
            match started {
                Ok(running) => this.follow(&batch, &generation, running),
                Err(e) => this.refused(&batch, &generation, &e),
            }
        });
    }

    /// Records a followed Job's outcome and acts on it.
    async fn settle(&self, view: &BatchView, outcome: &Outcome) -> Result<()> {
        let inner = &self.inner;
        let settings = DeadLetterSettings {
            ttl_seconds: inner.config.redis.result_ttl_seconds,
            stream_maxlen: inner.config.redis.results_maxlen,
            index_max: inner.config.redis.dead_index_max,
            queue: &inner.dead_letters,
        };
        let breaker = &inner.breaker;
        // Lost with its dispatcher: no sign the runners are unhealthy.
        let counts = |failure: &Failure| failure.kind != FailureKind::RunnerLost;
        // The outage is counted once its retry is recorded, so a settle that fails (a full
        // Redis refusing it) and is tried again at the next pass counts once.
        let retry_at = |failure: &Failure| {
            let delay = breaker.upcoming_delay().as_millis() as u64;
            if counts(failure) {
                unix_millis() + delay
            } else {
                0
            }
        };
        let settled = settle(&inner.stager, view, outcome, settings, retry_at).await?;
        let opened = match &settled {
            Settled::Retry { failure, .. } if counts(failure) => breaker.outage(&failure.reason).1,
            _ => false,
        };
        let lasted = inner.followed.lasted(&view.id);
        inner.followed.stop(&view.id);
        inner.capacity.notify_waiters();
        if settled == Settled::Stale {
            inner.metrics.stale_steps.inc();
            return Ok(());
        }
        self.release(&view.id);
        if let (Some(lasted), Some((messages, work_us))) =
            (lasted, inner.stager.work(&view.id).await?)
        {
            inner
                .sizer
                .observe(messages, Duration::from_micros(work_us), lasted);
        }
        if settled.reached_work() {
            breaker.healthy();
            // Every replica's: a stale outage another one recorded is overwritten at once.
            inner.stager.record_runner_health(None).await?;
        }
        match settled {
            Settled::Closed { dead } => {
                inner.metrics.dead_letters.inc_by(dead as u64);
            }
            Settled::Retry { child, failure } => {
                // A probe launched before another dispatcher saw runners work again must not
                // overwrite that newer record: it closes this breaker instead.
                if opened && !self.share_runner_health().await {
                    inner
                        .stager
                        .record_runner_health(Some(&failure.reason))
                        .await?;
                }
                tracing::warn!(batch = %view.id, retry = %child, reason = %failure, kind = %failure.kind, "the job could not do its work; retrying its messages whole");
                let _ = inner.events.send(child);
            }
            Settled::Split { children } => {
                tracing::info!(batch = %view.id, ?children, "split a failed batch to isolate its poison message");
                for child in children {
                    let _ = inner.events.send(child);
                }
            }
            Settled::Stale => {}
        }
        Ok(())
    }

    /// Releases a finished batch's Job in the background: a Job left behind costs nothing
    /// but its TTL.
    fn release(&self, batch: &str) {
        let (this, name) = (self.clone(), job::job_name(batch));
        self.inner.tasks.spawn(async move {
            if let Err(e) = this.inner.launcher.finished(&name).await {
                tracing::warn!(job = %name, error = %e, "could not release the finished job");
            }
        });
    }

    /// Stages abandoned batches again (their local runners were stopped with this
    /// dispatcher), so another dispatcher or the next start launches them at once.
    pub(super) async fn requeue(&self, abandoned: &[(String, String)]) {
        let stager = &self.inner.stager;
        let ids: Vec<String> = abandoned.iter().map(|(id, _)| id.clone()).collect();
        let Ok(views) = stager.views(&ids).await else {
            return;
        };
        for ((_, generation), view) in abandoned.iter().zip(views) {
            let Some(view) = view.filter(|v| &v.generation == generation) else {
                continue;
            };
            let step = steps::requeue(stager.keys(), &view);
            if let Err(e) = stager
                .apply(&step, "staging an abandoned batch again")
                .await
            {
                tracing::warn!(batch = %view.id, error = %e, "could not stage the abandoned batch again; it is adopted once this dispatcher's lease expires");
            }
        }
    }

    fn redis_failed(&self, error: &crate::Error) {
        self.inner.metrics.error(error.metric_label());
        if error.is_redis_full() {
            // Redis answers; the memory watch holds work back until it has room.
            tracing::warn!(%error, "redis is full: open batches are reconciled once it has room");
            return;
        }
        self.inner
            .metrics
            .health()
            .block(health::REDIS, format!("redis does not answer: {error}"));
        tracing::warn!(%error, "could not reconcile open batches; trying again");
    }
}
