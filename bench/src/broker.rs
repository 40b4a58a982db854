//! RabbitMQ and Redis plumbing for the scenarios: publishing, draining, cleaning up.

use anyhow::{Result, bail};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::{Duration, Instant};

/// Where the services are.
#[derive(Clone)]
pub struct Services {
    /// RabbitMQ URL.
    pub amqp: String,
    /// Redis URL.
    pub redis: String,
}

impl Services {
    /// From `AMQP_URL`/`REDIS_URL`, defaulting to the local services.
    pub fn from_env() -> Self {
        Self {
            amqp: std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            redis: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into()),
        }
    }

    /// A Redis connection.
    pub async fn redis(&self) -> Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.redis.as_str())?
            .get_multiplexed_async_connection()
            .await?)
    }

    /// Declares `queue` durable (as the dispatcher does) and publishes every body, persistent,
    /// with publisher confirms.
    pub async fn publish(&self, queue: &str, bodies: impl Iterator<Item = Vec<u8>>) -> Result<()> {
        let publisher = Publisher::open(self, queue).await?;
        publisher.send(bodies).await?;
        publisher.close().await
    }

    /// Ready messages and consumers on `queue`.
    pub async fn queue_state(&self, queue: &str) -> Result<(u32, u32)> {
        let connection = Connection::connect(&self.amqp, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        connection.close(200, "read".into()).await?;
        Ok((q.message_count(), q.consumer_count()))
    }

    /// The broker's ceiling: a plain consume-and-ack loop (prefetch as sluice's at batch
    /// `batch`) draining `count` waiting messages, acking every message (`ack_every` 1) or
    /// every `ack_every` with `multiple`. Returns messages per second.
    pub async fn raw_drain(
        &self,
        queue: &str,
        count: usize,
        batch: u16,
        ack_every: usize,
    ) -> Result<f64> {
        let connection = Connection::connect(&self.amqp, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(batch.saturating_mul(2), BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "raw".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let started = Instant::now();
        for i in 1..=count {
            let Some(delivery) = consumer.next().await else {
                bail!("consumer closed")
            };
            if i % ack_every == 0 || i == count {
                delivery?
                    .ack(BasicAckOptions {
                        multiple: ack_every > 1,
                    })
                    .await?;
            }
        }
        let rate = count as f64 / started.elapsed().as_secs_f64();
        connection.close(200, "drained".into()).await?;
        Ok(rate)
    }

    /// Deletes `queue` and every key under `prefix`.
    pub async fn cleanup(&self, queue: &str, prefix: &str) -> Result<()> {
        let connection = Connection::connect(&self.amqp, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
        connection.close(200, "cleaned".into()).await?;
        let mut con = self.redis().await?;
        let keys: Vec<String> = {
            let mut iter =
                redis::AsyncCommands::scan_match::<_, String>(&mut con, format!("{prefix}:*"))
                    .await?;
            let mut keys = Vec::new();
            while let Some(key) = iter.next_item().await {
                keys.push(key?);
            }
            keys
        };
        for chunk in keys.chunks(1_000) {
            redis::AsyncCommands::del::<_, ()>(&mut con, chunk).await?;
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Polls `check` every 20 ms until it is true or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + limit;
    while !check().await? {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A confirmed publisher on one queue, kept open for trickles.
pub struct Publisher {
    connection: Connection,
    channel: lapin::Channel,
    queue: String,
}

impl Publisher {
    /// Connects and declares the queue.
    pub async fn open(services: &Services, queue: &str) -> Result<Self> {
        let connection =
            Connection::connect(&services.amqp, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection,
            channel,
            queue: queue.to_owned(),
        })
    }

    /// Publishes every body, persistent, and waits for every confirm.
    pub async fn send(&self, bodies: impl Iterator<Item = Vec<u8>>) -> Result<()> {
        let mut pending = futures::stream::FuturesUnordered::new();
        for body in bodies {
            let props = BasicProperties::default().with_delivery_mode(2);
            let routing = self.queue.as_str().into();
            pending.push(
                self.channel
                    .basic_publish(
                        "".into(),
                        routing,
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    )
                    .await?,
            );
            if pending.len() >= 2_000 {
                confirmed(pending.next().await)?;
            }
        }
        while let Some(confirm) = pending.next().await {
            confirmed(Some(confirm))?;
        }
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(self) -> Result<()> {
        self.connection.close(200, "published".into()).await?;
        Ok(())
    }
}

fn confirmed(confirm: Option<lapin::Result<lapin::Confirmation>>) -> Result<()> {
    match confirm {
        Some(Ok(c)) if c.is_ack() => Ok(()),
        Some(Err(e)) => Err(e.into()),
        _ => bail!("a message was not confirmed"),
    }
}
