//! `dispatcher status`: queue depth, batches by state, Jobs in flight, runner health, result
//! counts, dead letters.

use crate::amqp::{connect, inspect_queue};
use crate::config::Config;
use crate::error::{Error, Result};
use redis::AsyncCommands;
use sluice_contract::{BatchState, Keys};
use std::collections::BTreeMap;
use std::fmt;

/// A snapshot of the system.
#[derive(Debug, Default)]
pub struct Report {
    /// The queue's name.
    pub queue: String,
    /// Messages ready in the queue, and consumers on it; `None` if it does not exist.
    pub queue_depth: Option<(u32, u32)>,
    /// Open batches by state.
    pub open_batches: BTreeMap<&'static str, usize>,
    /// The `{prefix}:stats` counters.
    pub stats: BTreeMap<String, u64>,
    /// Entries in `{prefix}:dead`: messages dead now.
    pub dead_letters: u64,
    /// Entries in `{prefix}:redrive`: taken by a redrive that stopped before finishing.
    pub redriving: u64,
    /// `{prefix}:runner`: whether runners can do their work (state, reason, since).
    pub runner: BTreeMap<String, String>,
}

impl Report {
    /// Jobs running now (open batches whose Job was launched).
    pub fn in_flight(&self) -> usize {
        self.open_batches
            .get(BatchState::Running.as_str())
            .copied()
            .unwrap_or(0)
    }
}

/// Reads the report from RabbitMQ and Redis.
pub async fn report(config: &Config) -> Result<Report> {
    let connection = connect(&config.broker.amqp_url, "sluice-status").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(Error::amqp("opening a channel"))?;
    let queue_depth = inspect_queue(&channel, &config.broker.queue)
        .await
        .ok()
        .map(|q| (q.message_count(), q.consumer_count()));
    let _ = connection.close(200, "status read".into()).await;

    let keys = Keys::new(&config.redis.key_prefix);
    let client = redis::Client::open(config.redis.redis_url.as_str())
        .map_err(Error::redis("parsing REDIS_URL"))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(Error::redis("connecting"))?;
    let open: Vec<String> = con
        .smembers(keys.open_batches())
        .await
        .map_err(Error::redis("listing batches"))?;
    let mut open_batches = BTreeMap::new();
    for batch in open {
        let state: Option<String> = con
            .hget(keys.batch(&batch), "state")
            .await
            .map_err(Error::redis("reading a batch"))?;
        let state = state
            .as_deref()
            .and_then(BatchState::parse)
            .map_or("unknown", BatchState::as_str);
        *open_batches.entry(state).or_insert(0) += 1;
    }
    let stats: BTreeMap<String, u64> = con
        .hgetall(keys.stats())
        .await
        .map_err(Error::redis("reading stats"))?;
    let (dead_letters, redriving, runner): (u64, u64, BTreeMap<String, String>) = redis::pipe()
        .llen(keys.dead())
        .llen(keys.redrive())
        .hgetall(keys.runner_health())
        .query_async(&mut con)
        .await
        .map_err(Error::redis("counting dead letters"))?;
    Ok(Report {
        queue: config.broker.queue.clone(),
        queue_depth,
        open_batches,
        stats,
        dead_letters,
        redriving,
        runner,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.queue_depth {
            Some((ready, consumers)) => writeln!(
                f,
                "queue {}: {ready} ready, {consumers} consumer(s)",
                self.queue
            )?,
            None => writeln!(f, "queue {}: does not exist yet", self.queue)?,
        }
        let total: usize = self.open_batches.values().sum();
        write!(f, "open batches: {total}")?;
        for (state, n) in &self.open_batches {
            write!(f, ", {state} {n}")?;
        }
        writeln!(f)?;
        writeln!(f, "jobs in flight: {}", self.in_flight())?;
        match self.runner.get("state").map(String::as_str) {
            Some("unhealthy") => writeln!(
                f,
                "runners: UNHEALTHY, launches held back and consumption paused until a probe Job works: {}",
                self.runner.get("reason").map_or("", String::as_str)
            )?,
            _ => writeln!(f, "runners: healthy")?,
        }
        let stat = |name: &str| self.stats.get(name).copied().unwrap_or(0);
        writeln!(
            f,
            "messages: received {}, ok {}, error {}, dead {}, redriven {} (batches {})",
            stat("received"),
            stat("ok"),
            stat("error"),
            stat("dead"),
            stat("redriven"),
            stat("batches")
        )?;
        write!(f, "dead letters: {}", self.dead_letters)?;
        if self.redriving > 0 {
            // A redrive that stopped part-way; the next one publishes these first.
            write!(
                f,
                ", {} taken by a redrive that stopped: run `dispatcher redrive` again",
                self.redriving
            )?;
        }
        writeln!(f)
    }
}
