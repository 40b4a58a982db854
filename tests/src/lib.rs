//! Shared harness for sluice's end-to-end suites.
//!
//! Every test gets its own queue and key prefix ([`TestEnv`]) and deletes only those. The
//! suites talk to the real RabbitMQ and Redis (`AMQP_URL`, `REDIS_URL`, defaulting to the local
//! ones) and fail loudly when either is unreachable: they never skip.

pub mod cases;
pub mod cluster;
pub mod dead;
pub mod fake_kube;
pub mod guarantee;
pub mod node_agent;
pub mod outage;
pub mod proxy;
pub mod servers;

use anyhow::{Result, bail};
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection};
use redis::AsyncCommands;
use sluice_dispatcher::Config;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// One test's private corner of RabbitMQ and Redis.
pub struct TestEnv {
    /// Queue name, unique to the test.
    pub queue: String,
    /// Key prefix, unique to the test.
    pub prefix: String,
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// More variables for every dispatcher, runner and connection of this environment (TLS
    /// files, queue arguments).
    pub extra: Vec<(String, String)>,
}

/// A message to publish: body and optional AMQP `message_id` property.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Raw body bytes.
    pub body: Vec<u8>,
    /// The `message_id` property.
    pub message_id: Option<String>,
}

impl Outgoing {
    /// A JSON body without properties.
    pub fn json(value: &serde_json::Value) -> Self {
        Self {
            body: value.to_string().into_bytes(),
            message_id: None,
        }
    }

    /// Raw bytes keyed by a `message_id` property.
    pub fn raw(id: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            body: body.into(),
            message_id: Some(id.to_owned()),
        }
    }
}

/// A result hash as read back from Redis.
pub type ResultHash = HashMap<String, String>;

impl TestEnv {
    /// A fresh environment named after the test; fails if a service is unreachable.
    pub async fn new(test: &str) -> Result<Self> {
        let amqp_url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let redis_url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
        Self::on(test, &amqp_url, &redis_url, &[]).await
    }

    /// A fresh environment on other servers: `amqp_url` and `redis_url`, with `extra`
    /// variables (TLS files) for every connection.
    pub async fn on(
        test: &str,
        amqp_url: &str,
        redis_url: &str,
        extra: &[(&str, &str)],
    ) -> Result<Self> {
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let env = Self {
            queue: format!("test-{test}-{}", &tag[20..]),
            prefix: format!("test-{test}-{}", &tag[20..]),
            amqp_url: amqp_url.to_owned(),
            redis_url: redis_url.to_owned(),
            extra: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        env.check_services().await?;
        Ok(env)
    }

    /// A connection to this environment's broker, as the dispatcher makes it.
    pub async fn amqp(&self) -> Result<Connection> {
        let config = self.config(&[])?;
        Ok(sluice_dispatcher::amqp::connect(&config.broker, "sluice-tests").await?)
    }

    async fn check_services(&self) -> Result<()> {
        let amqp = self.amqp().await;
        let redis = async {
            let mut con = self.redis().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .map_err(anyhow::Error::from)
        }
        .await;
        match (amqp, redis) {
            (Ok(c), Ok(_)) => {
                let _ = c.close(200, "ok".into()).await;
                Ok(())
            }
            (a, r) => bail!(
                "the end-to-end suites need RabbitMQ at {} ({}) and Redis at {} ({}); start them with `make services`",
                self.amqp_url,
                a.err().map_or("ok".into(), |e| e.to_string()),
                self.redis_url,
                r.err().map_or("ok".into(), |e| e.to_string()),
            ),
        }
    }

    /// A dispatcher configuration for this environment, plus `extra` variables.
    pub fn config(&self, extra: &[(&str, &str)]) -> Result<Config> {
        // Later entries win, as in a shell; envy itself rejects duplicates.
        let mut vars: std::collections::BTreeMap<String, String> =
            self.vars().into_iter().collect();
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Ok(Config::from_vars(vars)?)
    }

    /// The variables that point a dispatcher at this environment.
    pub fn vars(&self) -> Vec<(String, String)> {
        [
            ("AMQP_URL", self.amqp_url.as_str()),
            ("REDIS_URL", &self.redis_url),
            ("QUEUE", &self.queue),
            ("KEY_PREFIX", &self.prefix),
            ("METRICS_ADDR", ""),
            ("LAUNCHER", "local"),
            ("SLUICE_TEST_KERNELS", "1"),
            ("RUNNER_LOG", "warn"),
            ("RUST_LOG", "warn"),
            // Suites assert exact batch compositions; the mixed suite opts into adaptive.
            ("BATCH_MODE", "fixed"),
            // A dispatcher killed by a suite is taken over within seconds, not the default 20.
            ("LEASE_SECONDS", "3"),
            ("RECONCILE_SECONDS", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([(
            "RUNNER_BIN".to_owned(),
            binary("runner").display().to_string(),
        )])
        .chain(self.extra.iter().cloned())
        .collect()
    }

    /// A Redis client for this environment (with its TLS files).
    pub fn redis_client(&self) -> Result<redis::Client> {
        Ok(self.config(&[])?.redis.client()?)
    }

    /// A Redis connection.
    pub async fn redis(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = self.redis_client()?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Publishes persistent messages with publisher confirms.
    pub async fn publish(&self, messages: &[Outgoing]) -> Result<()> {
        let connection = self.amqp().await?;
        let broker = self.config(&[])?.broker;
        sluice_dispatcher::amqp::ensure_queue(&connection, &broker).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            let mut props = BasicProperties::default().with_delivery_mode(2);
            if let Some(id) = &m.message_id {
                props = props.with_message_id(id.as_str().into());
            }
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        self.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &m.body,
                        props,
                    )
                    .await?,
            );
        }
        let mut confirms = futures::stream::iter(confirms).buffer_unordered(1024);
        while let Some(confirm) = confirms.next().await {
            if !confirm?.is_ack() {
                bail!("broker nacked a published message");
            }
        }
        connection.close(200, "published".into()).await?;
        Ok(())
    }

    /// Reads the result hash of `id` (empty if none).
    pub async fn result(&self, id: &str) -> Result<ResultHash> {
        Ok(self
            .redis()
            .await?
            .hgetall(format!("{}:result:{id}", self.prefix))
            .await?)
    }

    /// Waits until every id has a result, or fails after `timeout` naming what is missing.
    pub async fn wait_for_results(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> Result<HashMap<String, ResultHash>> {
        let mut con = self.redis().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut pipe = redis::pipe();
            for id in ids {
                pipe.exists(format!("{}:result:{id}", self.prefix));
            }
            let done: Vec<bool> = pipe.query_async(&mut con).await?;
            let missing: Vec<&String> = ids
                .iter()
                .zip(&done)
                .filter(|(_, d)| !**d)
                .map(|(id, _)| id)
                .collect();
            if missing.is_empty() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} of {} results missing after {timeout:?}, e.g. {:?}",
                    missing.len(),
                    ids.len(),
                    &missing[..missing.len().min(5)]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(format!("{}:result:{id}", self.prefix));
        }
        let hashes: Vec<ResultHash> = pipe.query_async(&mut con).await?;
        Ok(ids.iter().cloned().zip(hashes).collect())
    }

    /// Publishes every case, waits for all their results and checks each one.
    pub async fn run_cases(&self, cases: &[crate::cases::Case], timeout: Duration) -> Result<()> {
        let messages: Vec<Outgoing> = cases.iter().map(|c| c.message.clone()).collect();
        self.publish(&messages).await?;
        let ids: Vec<String> = cases.iter().map(|c| c.id.clone()).collect();
        let results = self.wait_for_results(&ids, timeout).await?;
        for case in cases {
            case.check(&results[&case.id]);
        }
        Ok(())
    }

    /// Number of entries in the results stream.
    pub async fn stream_len(&self) -> Result<usize> {
        Ok(self
            .redis()
            .await?
            .xlen(format!("{}:results", self.prefix))
            .await?)
    }

    /// The `{prefix}:stats` counters.
    pub async fn stats(&self) -> Result<HashMap<String, u64>> {
        Ok(self
            .redis()
            .await?
            .hgetall(format!("{}:stats", self.prefix))
            .await?)
    }

    /// Declares this test's queue durable with `arguments` before sluice looks at it, as its
    /// owner would, on a connection of its own.
    pub async fn declare_queue(&self, arguments: lapin::types::FieldTable) -> Result<()> {
        let connection = self.amqp().await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                lapin::options::QueueDeclareOptions::durable(),
                arguments,
            )
            .await?;
        connection.close(200, "created".into()).await?;
        Ok(())
    }

    /// [`TestEnv::declare_queue`] with `arguments` as JSON, the way `QUEUE_ARGUMENTS` takes them.
    pub async fn create_queue(&self, arguments: &str) -> Result<()> {
        let table = sluice_dispatcher::config::broker::queue_arguments(Some(arguments))
            .map_err(anyhow::Error::msg)?;
        self.declare_queue(table).await
    }

    /// Messages ready in the queue.
    pub async fn queue_depth(&self) -> Result<u32> {
        Ok(self.queue_counts().await?.0)
    }

    /// Messages ready in the queue, and its consumers.
    pub async fn queue_counts(&self) -> Result<(u32, u32)> {
        let connection = self.amqp().await?;
        let broker = self.config(&[])?.broker;
        let queue = sluice_dispatcher::amqp::ensure_queue(&connection, &broker).await?;
        connection.close(200, "read".into()).await?;
        Ok((queue.message_count(), queue.consumer_count()))
    }

    /// Deletes this test's queue and keys, and nothing else.
    pub async fn cleanup(&self) -> Result<()> {
        let connection = self.amqp().await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        // The dead-letter queue the dispatcher declared for this test's queue, if it did.
        channel
            .queue_delete(
                format!("{}.dead", self.queue).as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await?;
        connection.close(200, "cleaned".into()).await?;
        let mut con = self.redis().await?;
        let keys: Vec<String> = {
            let mut iter = con
                .scan_match::<_, String>(format!("{}:*", self.prefix))
                .await?;
            let mut keys = Vec::new();
            while let Some(key) = iter.next_item().await {
                keys.push(key?);
            }
            keys
        };
        for chunk in keys.chunks(500) {
            con.del::<_, ()>(chunk).await?;
        }
        Ok(())
    }
}

/// Path of a workspace binary built next to the test executable (`make test` builds them first).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(PathBuf::from)
        .unwrap_or_default();
    dir.join(name)
}

/// Writes an executable shell script (a stand-in runner, a wrapper).
pub fn write_script(path: &std::path::Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Fails with a clear message when the binaries the suites spawn are missing.
pub fn require_binaries() -> Result<()> {
    for name in ["runner", "dispatcher"] {
        let path = binary(name);
        if !path.is_file() {
            bail!(
                "{} is missing: run `cargo build --workspace --bins` (or `make test`) first",
                path.display()
            );
        }
    }
    Ok(())
}

/// Waits until `done`, polling every 100 ms; fails the test after `within`, naming `what`.
pub async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the dispatcher in this process until `stop` is cancelled.
pub fn spawn_dispatcher(
    config: Config,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<sluice_dispatcher::Result<sluice_dispatcher::serve::Summary>> {
    let metrics = std::sync::Arc::new(sluice_dispatcher::metrics::Metrics::new());
    spawn_dispatcher_with(config, metrics, stop)
}

/// [`spawn_dispatcher`] with metrics (and readiness) the test can read.
pub fn spawn_dispatcher_with(
    config: Config,
    metrics: std::sync::Arc<sluice_dispatcher::metrics::Metrics>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<sluice_dispatcher::Result<sluice_dispatcher::serve::Summary>> {
    tokio::spawn(sluice_dispatcher::serve::run(config, metrics, stop))
}
