//! `dispatcher status`: queue depth, batches by state, Jobs in flight, runner health, result
//! counts, dead letters.

use crate::amqp::{connect, inspect_queue};
use crate::config::Config;
use crate::error::{Error, Result};
use redis::AsyncCommands;
use sluice_contract::memory::{Memory, human_bytes};
use sluice_contract::{BatchState, Keys};
use std::collections::BTreeMap;
use std::fmt;

/// A snapshot of the system.
#[derive(Debug)]
pub struct Report {
    /// The queue's name.
    pub queue: String,
    /// Messages ready in the queue, and consumers on it; `None` if it does not exist.
    pub queue_depth: Option<(u32, u32)>,
    /// The dead-letter queue's name, and the messages in it (`None` if it does not exist).
    pub dead_queue: (String, Option<u32>),
    /// What Redis holds, or why it could not be read (Redis unreachable: nothing is staged,
    /// launched or settled until it answers again).
    pub redis: std::result::Result<Stored, String>,
}

/// What `dispatcher status` reads from Redis.
#[derive(Debug)]
pub struct Stored {
    /// Open batches by state.
    pub open_batches: BTreeMap<&'static str, usize>,
    /// Owners of open batches (the dispatcher that launched or adopted each), with how many
    /// batches each owns and whether its lease is held (a lost dispatcher's is not: its
    /// batches are adopted within `LEASE_SECONDS` plus `RECONCILE_SECONDS`).
    pub owners: BTreeMap<String, (usize, bool)>,
    /// The `{prefix}:stats` counters.
    pub stats: BTreeMap<String, u64>,
    /// Entries in `{prefix}:dead`: messages dead now.
    pub dead_letters: u64,
    /// Entries in `{prefix}:redrive`: taken by a redrive that stopped before finishing.
    pub redriving: u64,
    /// `{prefix}:runner`: whether runners can do their work (state, reason, since).
    pub runner: BTreeMap<String, String>,
    /// What `INFO memory` says (or why it could not be read), and the `REDIS_PAUSE_PERCENT` it
    /// is judged by.
    pub memory: (MemoryRead, u8),
}

/// What `INFO memory` said, or why it could not be read.
type MemoryRead = std::result::Result<Memory, String>;

impl Default for Stored {
    fn default() -> Self {
        Self {
            open_batches: BTreeMap::new(),
            owners: BTreeMap::new(),
            stats: BTreeMap::new(),
            dead_letters: 0,
            redriving: 0,
            runner: BTreeMap::new(),
            memory: (Err("not read".into()), 0),
        }
    }
}

/// Reads the report from RabbitMQ and Redis. An unreachable Redis is part of the
/// report, not an error (that is when an operator runs this); an unreachable broker is one.
pub async fn report(config: &Config) -> Result<Report> {
    let connection = connect(&config.broker, "sluice-status").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(Error::amqp("opening a channel"))?;
    let queue_depth = inspect_queue(&channel, &config.broker.queue)
        .await
        .ok()
        .map(|q| (q.message_count(), q.consumer_count()));
    let dead_queue = config
        .broker
        .dead_letter_route()
        .map_err(Error::InvalidConfig)?
        .queue;
    // A passive declare of a missing queue closes its channel: one of its own.
    let channel = connection
        .create_channel()
        .await
        .map_err(Error::amqp("opening a channel"))?;
    let dead_count = inspect_queue(&channel, &dead_queue)
        .await
        .ok()
        .map(|q| q.message_count());
    let _ = connection.close(200, "status read".into()).await;
    let redis = read_redis(config).await;
    Ok(Report {
        queue: config.broker.queue.clone(),
        queue_depth,
        dead_queue: (dead_queue, dead_count),
        redis,
    })
}

/// How long `dispatcher status` waits for Redis before calling it unreachable.
const REDIS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn read_redis(config: &Config) -> std::result::Result<Stored, String> {
    let read = async {
        let client = config.redis.client()?;
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .map_err(Error::redis_connect(&client))?;
        let mut out = stored(&mut con, &Keys::new(&config.redis.key_prefix)).await?;
        // INFO may not be granted: then the memory is unknown, the rest still shown.
        let info: redis::RedisResult<String> =
            redis::cmd("INFO").arg("memory").query_async(&mut con).await;
        let memory = info
            .map(|info| Memory::parse(&info))
            .map_err(|e| e.to_string());
        out.memory = (memory, config.redis.redis_pause_percent);
        Ok::<_, Error>(out)
    };
    match tokio::time::timeout(REDIS_WAIT, read).await {
        Ok(read) => read.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {}s", REDIS_WAIT.as_secs())),
    }
}

async fn stored(con: &mut redis::aio::MultiplexedConnection, keys: &Keys) -> Result<Stored> {
    let open: Vec<String> = con
        .smembers(keys.open_batches())
        .await
        .map_err(Error::redis("listing batches"))?;
    let mut out = Stored::default();
    for batch in open {
        let (state, owner): (Option<String>, Option<String>) = con
            .hmget(keys.batch(&batch), &["state", "owner"])
            .await
            .map_err(Error::redis("reading a batch"))?;
        let state = state
            .as_deref()
            .and_then(BatchState::parse)
            .map_or("unknown", BatchState::as_str);
        *out.open_batches.entry(state).or_insert(0) += 1;
        if let Some(owner) = owner.filter(|o| !o.is_empty()) {
            out.owners.entry(owner).or_insert((0, false)).0 += 1;
        }
    }
    for (owner, (_, held)) in &mut out.owners {
        *held = con
            .exists(keys.dispatcher_lease(owner))
            .await
            .map_err(Error::redis("reading a lease"))?;
    }
    out.stats = con
        .hgetall(keys.stats())
        .await
        .map_err(Error::redis("reading stats"))?;
    (out.dead_letters, out.redriving, out.runner) = redis::pipe()
        .llen(keys.dead())
        .llen(keys.redrive())
        .hgetall(keys.runner_health())
        .query_async(con)
        .await
        .map_err(Error::redis("counting dead letters"))?;
    Ok(out)
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
        match &self.dead_queue {
            (name, Some(count)) => writeln!(f, "dead-letter queue {name}: {count} message(s)")?,
            (name, None) => writeln!(f, "dead-letter queue {name}: none yet")?,
        }
        match &self.redis {
            Ok(stored) => stored.fmt(f),
            Err(e) => writeln!(
                f,
                "redis: UNREACHABLE, nothing is staged, launched or settled until it answers: {e}"
            ),
        }
    }
}

impl Stored {
    /// How full Redis is, by the dispatcher's own rule (without its hysteresis or the refusals
    /// it saw: those are in its readiness and `sluice_redis_full`).
    fn fmt_memory(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (memory, pause) = &self.memory;
        let memory = match memory {
            Ok(memory) => memory,
            Err(e) => return writeln!(f, "redis memory: unknown, INFO memory cannot be read: {e}"),
        };
        if crate::memory::is_full(memory, false, false, *pause) {
            writeln!(
                f,
                "redis memory: FULL, consumption and launches paused until it has room: {}",
                crate::memory::describe(memory, false, *pause)
            )?;
        } else if memory.max > 0 {
            writeln!(
                f,
                "redis memory: {}",
                crate::memory::describe(memory, false, *pause)
            )?;
        } else {
            writeln!(
                f,
                "redis memory: used {}, no maxmemory",
                human_bytes(memory.used)
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "redis: reachable")?;
        self.fmt_memory(f)?;
        let total: usize = self.open_batches.values().sum();
        write!(f, "open batches: {total}")?;
        for (state, n) in &self.open_batches {
            write!(f, ", {state} {n}")?;
        }
        writeln!(f)?;
        let running = self.open_batches.get(BatchState::Running.as_str());
        writeln!(f, "jobs in flight: {}", running.copied().unwrap_or(0))?;
        for (owner, (batches, held)) in &self.owners {
            let lease = if *held {
                "lease held"
            } else {
                "lease expired: adopted by another dispatcher shortly"
            };
            writeln!(f, "dispatcher {owner}: {batches} open batch(es), {lease}")?;
        }
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
        write!(f, "dead letters: {} indexed", self.dead_letters)?;
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
