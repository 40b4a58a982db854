//! The dispatcher's side of Redis: staging batches, reading what is recorded of them, applying
//! the reconciler's steps ([`crate::steps`]) and the dispatchers' leases.
//!
//! A fresh batch is staged by one compare-and-set step (its messages, its state hash, the
//! open-set and running-set entries and the counters), so a crash leaves either all of it or
//! none, and the shared in-flight cap is checked in the same step.
//!
//! A write Redis refuses for memory fails at once (the caller's loop waits for room) and is
//! noted for [`crate::memory`], which [`memory`] reads for.

use crate::cas::{Applied, Step, applied};
use crate::error::{Error, Result};
use crate::retry::{with_backoff, with_backoff_while};
use crate::steps::{self, BatchView};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use sluice_contract::record::{ResultWrite, unix_millis};
use sluice_contract::{BatchState, Keys};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod leases;
mod memory;

pub use memory::Footprint;

/// How long a Redis operation is retried before the caller sees the error.
pub const REDIS_BUDGET: Duration = Duration::from_secs(60);

/// Marks runners healthy unless the record already says so.
static RUNNERS_WORK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('HGET', KEYS[1], 'state') ~= 'healthy' then \
         redis.call('HSET', KEYS[1], 'state', 'healthy', 'reason', '', 'since', ARGV[1]) end",
    )
});

/// Stages batches and records their lifecycle.
#[derive(Clone)]
pub struct Stager {
    con: ConnectionManager,
    keys: Keys,
    ttl_seconds: u64,
    /// A write was refused for memory since [`Stager::take_refused`] last looked.
    refused: Arc<AtomicBool>,
}

impl Stager {
    /// Connects to Redis, retrying while it is unreachable for up to a minute (tools and
    /// tests; the service retries [`Stager::open`] itself, with readiness kept up to date).
    pub async fn connect(client: redis::Client, keys: Keys, ttl_seconds: u64) -> Result<Self> {
        with_backoff("connecting to redis", Some(REDIS_BUDGET), || {
            Self::open(client.clone(), keys.clone(), ttl_seconds)
        })
        .await
    }

    /// Connects to Redis once; a TLS failure is one line naming the server.
    pub async fn open(client: redis::Client, keys: Keys, ttl_seconds: u64) -> Result<Self> {
        let failed = Error::redis_connect(&client);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let con = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(failed)?;
        Ok(Self {
            con,
            keys,
            ttl_seconds,
            refused: Arc::default(),
        })
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The result expiry, for the records a step writes.
    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds
    }

    /// Stores a batch's frames and state atomically, as `staged` with no owner: whichever
    /// dispatcher reconciles it first launches it (tests and tools stage this way).
    pub async fn stage(&self, batch_id: &str, job: &str, frames: &[Vec<u8>]) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.keys.batch_messages(batch_id))
            .rpush(self.keys.batch_messages(batch_id), frames)
            .hset_multiple(
                self.keys.batch(batch_id),
                &[
                    ("state", BatchState::Staged.as_str().to_owned()),
                    ("gen", "1".to_owned()),
                    ("size", frames.len().to_string()),
                    ("job", job.to_owned()),
                    ("created_at", unix_millis().to_string()),
                ],
            )
            .sadd(self.keys.open_batches(), batch_id)
            .hincr(self.keys.stats(), "received", frames.len())
            .hincr(self.keys.stats(), "batches", 1)
            .ignore();
        self.exec("staging a batch", &pipe).await
    }

    /// Removes a staged batch whose deliveries go back to RabbitMQ (its launch failed), so the
    /// redelivered messages are staged once, not twice.
    pub async fn discard(&self, batch_id: &str, size: usize) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.keys.batch_messages(batch_id))
            .del(self.keys.batch(batch_id))
            .srem(self.keys.open_batches(), batch_id)
            .srem(self.keys.running_batches(), batch_id)
            .hincr(
                self.keys.stats(),
                "received",
                -i64::try_from(size).unwrap_or(i64::MAX),
            )
            .hincr(self.keys.stats(), "batches", -1)
            .ignore();
        self.exec("discarding a batch", &pipe).await
    }

    /// Records whether runners can do their work, for `dispatcher status` and the other
    /// dispatchers: `None` when they can (written only if the record says otherwise, so
    /// `since` stays the time it changed and every Job that reaches its work may call it),
    /// else the last outage's reason.
    pub async fn record_runner_health(&self, outage: Option<&str>) -> Result<()> {
        let Some(outage) = outage else {
            let key = self.keys.runner_health();
            let now = unix_millis().to_string();
            return self
                .retry("recording runner health", move |mut con| {
                    let mut call = RUNNERS_WORK.prepare_invoke();
                    call.key(&key).arg(&now);
                    async move { call.invoke_async(&mut con).await }
                })
                .await;
        };
        let state = "unhealthy";
        let mut pipe = redis::pipe();
        pipe.hset_multiple(
            self.keys.runner_health(),
            &[
                ("state", state.to_owned()),
                ("reason", outage.to_owned()),
                ("since", unix_millis().to_string()),
            ],
        )
        .ignore();
        self.exec("recording runner health", &pipe).await
    }

    /// When runners were last recorded healthy (by any dispatcher), if that is the record.
    pub async fn runners_healthy_since(&self) -> Result<Option<u64>> {
        let key = self.keys.runner_health();
        let record: std::collections::HashMap<String, String> = self
            .retry("reading runner health", move |mut con| {
                let key = key.clone();
                async move { con.hgetall(key).await }
            })
            .await?;
        let healthy = record.get("state").map(String::as_str) == Some("healthy");
        Ok(healthy
            .then(|| record.get("since").and_then(|s| s.parse().ok()))
            .flatten())
    }

    /// Ids of batches staged but not closed.
    pub async fn open_batches(&self) -> Result<Vec<String>> {
        let key = self.keys.open_batches();
        self.retry("listing open batches", move |mut con| {
            let key = key.clone();
            async move { con.smembers(key).await }
        })
        .await
    }

    /// A finished batch's size and the runner's processing time (`work_us`), if recorded.
    pub async fn work(&self, batch_id: &str) -> Result<Option<(usize, u64)>> {
        let (size, work): (Option<usize>, Option<u64>) = self
            .batch_fields(batch_id, ["size", "work_us"], "reading a batch's work time")
            .await?;
        Ok(size.zip(work))
    }

    /// `HMGET` of fields of a batch's state hash.
    async fn batch_fields<T: redis::FromRedisValue>(
        &self,
        batch_id: &str,
        fields: [&'static str; 2],
        what: &'static str,
    ) -> Result<T> {
        let key = self.keys.batch(batch_id);
        self.retry(what, move |mut con| {
            let key = key.clone();
            async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg(&fields[..])
                    .query_async(&mut con)
                    .await
            }
        })
        .await
    }

    /// What the runners recorded of a batch: how many runs reached it, and the ids they
    /// recorded as working (see the runner's `claims`).
    pub async fn attribution(&self, batch_id: &str) -> Result<(u64, Vec<String>)> {
        let (batch, working) = (self.keys.batch(batch_id), self.keys.batch_working(batch_id));
        self.retry("reading what the runner recorded", move |mut con| {
            let mut pipe = redis::pipe();
            pipe.hget(&batch, "runs").smembers(&working);
            async move {
                let (runs, working): (Option<u64>, Vec<String>) =
                    pipe.query_async(&mut con).await?;
                Ok((runs.unwrap_or(0), working))
            }
        })
        .await
    }

    /// A batch's staged frames.
    pub async fn frames(&self, batch_id: &str) -> Result<Vec<Vec<u8>>> {
        let key = self.keys.batch_messages(batch_id);
        self.retry("loading batch messages", move |mut con| {
            let key = key.clone();
            async move { con.lrange(key, 0, -1).await }
        })
        .await
    }

    /// Stages a fresh batch: launched (`running`, owned by the dispatcher) if fewer than
    /// the cap are in flight across every dispatcher, [`Applied::Full`] otherwise; or parked
    /// (`staged`, no owner) for whichever dispatcher has a slot first.
    pub async fn stage_fresh(
        &self,
        batch_id: &str,
        frames: &[Vec<u8>],
        placement: steps::Placement<'_>,
        history: steps::Redeliveries,
    ) -> Result<Applied> {
        // The step is dropped once its call is built: the frames' copies in flight stay the
        // three the memory bound counts (README, "Sizing").
        let invocation =
            steps::stage_fresh(&self.keys, batch_id, frames, placement, history).invocation();
        self.invoke(&invocation, "staging a batch").await
    }

    /// Applies a step if its batch is still as it was decided from.
    pub async fn apply(&self, step: &Step, what: &'static str) -> Result<Applied> {
        self.invoke(&step.invocation(), what).await
    }

    /// Applies a step that also writes `results`, each once.
    pub async fn apply_with_results(
        &self,
        step: &Step,
        results: &ResultWrite<'_>,
        what: &'static str,
    ) -> Result<Applied> {
        let invocation = step.invocation_with_results(&results.keys, &results.args);
        self.invoke(&invocation, what).await
    }

    /// Runs a step's script call, built once for every attempt.
    async fn invoke(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        what: &'static str,
    ) -> Result<Applied> {
        let code: i64 = self
            .retry(what, |mut con| async move {
                invocation.invoke_async(&mut con).await
            })
            .await?;
        Ok(applied(code))
    }

    /// What Redis holds of each batch, `None` for a batch whose record is gone.
    pub async fn views(&self, ids: &[String]) -> Result<Vec<Option<BatchView>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.batch(id)).collect();
        let hashes: Vec<std::collections::HashMap<String, String>> = self
            .retry("reading open batches", |mut con| {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.hgetall(key);
                }
                async move { pipe.query_async(&mut con).await }
            })
            .await?;
        Ok(ids
            .iter()
            .zip(hashes)
            .map(|(id, fields)| BatchView::from_fields(id, &fields))
            .collect())
    }

    /// Ids in the running set (Jobs in flight across every dispatcher).
    pub async fn running_batches(&self) -> Result<Vec<String>> {
        let key = self.keys.running_batches();
        self.retry("listing running batches", move |mut con| {
            let key = key.clone();
            async move { con.smembers(key).await }
        })
        .await
    }

    /// Drops ids that are no longer open batches from the open and running sets.
    pub async fn forget(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.srem(self.keys.open_batches(), ids)
            .ignore()
            .srem(self.keys.running_batches(), ids)
            .ignore();
        self.exec("forgetting closed batches", &pipe).await
    }

    /// Whether each id already has a result.
    pub async fn results_exist(&self, ids: &[&str]) -> Result<Vec<bool>> {
        let keys: Vec<String> = ids.iter().map(|id| self.keys.result(id)).collect();
        self.exist(&keys, "checking results of a failed batch")
            .await
    }

    /// Whether each key exists, in one round trip.
    async fn exist(&self, keys: &[String], what: &'static str) -> Result<Vec<bool>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.retry(what, |mut con| {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.exists(key);
            }
            async move { pipe.query_async(&mut con).await }
        })
        .await
    }

    async fn exec(&self, what: &'static str, pipe: &redis::Pipeline) -> Result<()> {
        self.retry(what, |mut con| {
            let pipe = pipe.clone();
            async move { pipe.query_async::<()>(&mut con).await }
        })
        .await
    }

    /// Runs a Redis call with the connection manager, retrying transient failures.
    async fn retry<T, Op, Fut>(&self, what: &'static str, mut op: Op) -> Result<T>
    where
        Op: FnMut(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        // A refusal for memory is not retried here: the deliveries a staging holds would wait
        // unacked, and a settle would hold its pass; the caller's own loop (the consumer's
        // pause, the next reconcile pass) tries again once the memory watch sees room.
        let retry = |e: &Error| e.is_transient() && !e.is_redis_full();
        let call = || {
            let fut = op(self.con.clone());
            async move {
                fut.await
                    .map_err(|e| self.noted(e))
                    .map_err(Error::redis(what))
            }
        };
        with_backoff_while(what, Some(REDIS_BUDGET), call, retry).await
    }

    /// Notes a refusal for memory, for [`Stager::take_refused`].
    fn noted(&self, e: redis::RedisError) -> redis::RedisError {
        if sluice_contract::memory::is_full(&e) {
            self.refused.store(true, Ordering::Relaxed);
        }
        e
    }

    /// Whether a write was refused for memory since the last call.
    pub fn take_refused(&self) -> bool {
        self.refused.swap(false, Ordering::Relaxed)
    }
}
