//! The dispatcher's side of Redis: staging batches and recording their state.
//!
//! A batch is staged in one MULTI/EXEC transaction (its messages, its state hash, the open-set
//! entry and the counters), so a crash leaves either all of it or none.

use crate::error::{Error, Result};
use crate::retry::with_backoff;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use sluice_contract::record::unix_millis;
use sluice_contract::{BatchState, Keys};
use std::time::Duration;

/// How long a Redis operation is retried before the caller sees the error.
const REDIS_BUDGET: Duration = Duration::from_secs(60);

/// Stages batches and records their lifecycle.
#[derive(Clone)]
pub struct Stager {
    con: ConnectionManager,
    keys: Keys,
    ttl_seconds: u64,
}

impl Stager {
    /// Connects to Redis, retrying while it is unreachable.
    pub async fn connect(url: &str, keys: Keys, ttl_seconds: u64) -> Result<Self> {
        let client = redis::Client::open(url).map_err(Error::redis("parsing REDIS_URL"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let con = with_backoff("connecting to redis", Some(REDIS_BUDGET), || {
            let (client, config) = (client.clone(), config.clone());
            async move {
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(Error::redis("connecting"))
            }
        })
        .await?;
        Ok(Self {
            con,
            keys,
            ttl_seconds,
        })
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A clone of the connection, for one-off commands.
    pub fn connection(&self) -> ConnectionManager {
        self.con.clone()
    }

    /// Stores a batch's frames and state atomically.
    pub async fn stage(&self, batch_id: &str, job: &str, frames: &[Vec<u8>]) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.keys.batch_messages(batch_id))
            .rpush(self.keys.batch_messages(batch_id), frames)
            .hset_multiple(
                self.keys.batch(batch_id),
                &[
                    ("state", BatchState::Staged.as_str().to_owned()),
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
            .hincr(
                self.keys.stats(),
                "received",
                -i64::try_from(size).unwrap_or(i64::MAX),
            )
            .hincr(self.keys.stats(), "batches", -1)
            .ignore();
        self.exec("discarding a batch", &pipe).await
    }

    /// Records a batch's new state.
    pub async fn set_state(&self, batch_id: &str, state: BatchState) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.hset(self.keys.batch(batch_id), "state", state.as_str())
            .ignore();
        self.exec("recording batch state", &pipe).await
    }

    /// Records a finished batch: its final state and reason, out of the open set, its staged
    /// messages freed, its state hash expiring with the results.
    pub async fn close(
        &self,
        batch_id: &str,
        state: BatchState,
        reason: Option<&str>,
    ) -> Result<()> {
        let batch = self.keys.batch(batch_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &batch,
                &[
                    ("state", state.as_str().to_owned()),
                    ("finished_at", unix_millis().to_string()),
                ],
            )
            .srem(self.keys.open_batches(), batch_id)
            .del(self.keys.batch_messages(batch_id))
            .del(self.keys.batch_working(batch_id));
        if let Some(reason) = reason {
            pipe.hset(&batch, "reason", reason);
        }
        if self.ttl_seconds > 0 {
            pipe.expire(&batch, i64::try_from(self.ttl_seconds).unwrap_or(i64::MAX));
        }
        self.exec("closing a batch", pipe.ignore()).await
    }

    /// Replaces a failed batch by new batches in one transaction: each is staged (with
    /// `parent` naming the batch it came from) and the failed batch is closed as `state`
    /// (`split` to isolate a poison message, `retried` after an outage), so a crash never
    /// leaves both or neither.
    pub async fn replace(
        &self,
        parent: &str,
        state: BatchState,
        reason: &str,
        children: &[(String, Vec<Vec<u8>>)],
    ) -> Result<()> {
        let now = unix_millis().to_string();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (child, frames) in children {
            pipe.del(self.keys.batch_messages(child))
                .rpush(self.keys.batch_messages(child), frames)
                .hset_multiple(
                    self.keys.batch(child),
                    &[
                        ("state", BatchState::Staged.as_str().to_owned()),
                        ("size", frames.len().to_string()),
                        ("job", crate::job::job_name(child)),
                        ("created_at", now.clone()),
                        ("parent", parent.to_owned()),
                    ],
                )
                .sadd(self.keys.open_batches(), child)
                .hincr(self.keys.stats(), "batches", 1);
        }
        let batch = self.keys.batch(parent);
        pipe.hset_multiple(
            &batch,
            &[
                ("state", state.as_str()),
                ("finished_at", now.as_str()),
                ("reason", reason),
            ],
        )
        .srem(self.keys.open_batches(), parent)
        .del(self.keys.batch_messages(parent))
        .del(self.keys.batch_working(parent));
        if self.ttl_seconds > 0 {
            pipe.expire(&batch, i64::try_from(self.ttl_seconds).unwrap_or(i64::MAX));
        }
        self.exec("splitting a batch", pipe.ignore()).await
    }

    /// Records whether runners can do their work, for `dispatcher status`: `None` when they
    /// can, else the last outage's reason.
    pub async fn record_runner_health(&self, outage: Option<&str>) -> Result<()> {
        let state = if outage.is_some() {
            "unhealthy"
        } else {
            "healthy"
        };
        let mut pipe = redis::pipe();
        pipe.hset_multiple(
            self.keys.runner_health(),
            &[
                ("state", state.to_owned()),
                ("reason", outage.unwrap_or_default().to_owned()),
                ("since", unix_millis().to_string()),
            ],
        )
        .ignore();
        self.exec("recording runner health", &pipe).await
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

    /// A batch's `job` field and state, if it is still known.
    pub async fn batch_info(&self, batch_id: &str) -> Result<Option<(String, Option<BatchState>)>> {
        let (job, state): (Option<String>, Option<String>) = self
            .batch_fields(batch_id, ["job", "state"], "reading a batch")
            .await?;
        Ok(job.map(|job| (job, state.as_deref().and_then(BatchState::parse))))
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

    async fn exec(&self, what: &'static str, pipe: &redis::Pipeline) -> Result<()> {
        self.retry(what, |mut con| {
            let pipe = pipe.clone();
            async move { pipe.query_async::<()>(&mut con).await }
        })
        .await
    }

    /// Runs a Redis call with the connection manager, retrying transient failures.
    pub async fn retry<T, Op, Fut>(&self, what: &'static str, mut op: Op) -> Result<T>
    where
        Op: FnMut(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        with_backoff(what, Some(REDIS_BUDGET), || {
            let fut = op(self.con.clone());
            async move { fut.await.map_err(Error::redis(what)) }
        })
        .await
    }
}
