//! The RabbitMQ side: one connection and channel with manual acks and a bounded prefetch.
//!
//! The prefetch is what keeps a burst in RabbitMQ: the broker sends at most `prefetch`
//! unacked deliveries, and the dispatcher acks a batch only once its Job is launched (or the
//! batch is parked in Redis, see [`crate::release`]).

use crate::amqp::{connect, ensure_queue, inspect_queue};
use crate::batcher::Weighed;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::reconcile::FreshBatch;
use crate::steps::Redeliveries;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use sluice_contract::StagedMessage;
use std::time::Duration;
use tokio::time::Instant;

/// The consumer tag: one consumer per channel, so a constant names it.
const TAG: &str = "sluice-dispatcher";

/// A live consumer's connection and channel; its deliveries come as a separate stream.
pub struct Consumer {
    connection: Connection,
    /// The channel deliveries arrive on; acks must go through it.
    channel: Channel,
}

/// A delivery reduced to what staging needs: its tag, for the ack, and its staged frame.
#[derive(Debug)]
pub struct Pending {
    /// The delivery tag on this consumer's channel.
    pub tag: u64,
    /// The frame stored in Redis.
    pub frame: Vec<u8>,
    /// The broker delivered it before (to us or to another consumer).
    pub redelivered: bool,
    /// Its `x-delivery-count` header (quorum queues), 0 when absent.
    pub delivery_count: u64,
    /// It came from a stream queue (an `x-stream-offset` header), which sluice cannot consume.
    pub from_stream: bool,
    /// When it arrived: from then on it waits unacked.
    pub received: Instant,
}

impl Pending {
    /// Converts a delivery, dropping a body over `max_message_bytes` (its size is kept, so the
    /// runner can answer it with an error result without the body ever reaching Redis).
    pub fn new(delivery: lapin::message::Delivery, max_message_bytes: usize) -> Self {
        let size = delivery.data.len();
        let headers = delivery.properties.headers().as_ref();
        let header = |name: &str| headers.and_then(|h| h.inner().get(name));
        let delivery_count = header("x-delivery-count").map_or(0, as_count);
        let from_stream = header("x-stream-offset").is_some();
        let oversized = size > max_message_bytes;
        let message = StagedMessage {
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            fallback_id: uuid::Uuid::now_v7().to_string(),
            reply_to: property(delivery.properties.reply_to().as_ref()),
            correlation_id: property(delivery.properties.correlation_id().as_ref()),
            dropped_size: oversized.then_some(size),
            body: if oversized { Vec::new() } else { delivery.data },
        };
        Self {
            tag: delivery.delivery_tag,
            frame: message.encode(),
            redelivered: delivery.redelivered,
            delivery_count,
            from_stream,
            received: Instant::now(),
        }
    }
}

/// A closed batch of deliveries, as staging needs it.
#[derive(Debug)]
pub struct Cut {
    /// The batch id (a `UUIDv7`: time-ordered).
    pub id: String,
    /// Its messages' staged frames.
    pub frames: Vec<Vec<u8>>,
    /// What the broker said of its deliveries.
    pub history: Redeliveries,
    /// Its last delivery's tag, which acks the whole batch.
    pub last_tag: u64,
    /// When its first (oldest) delivery arrived.
    pub first_received: Instant,
}

impl Cut {
    /// Cuts `batch` (in delivery order, not empty) into what staging needs; deliveries from
    /// a stream `queue` are refused ([`Error::StreamQueue`]).
    pub fn new(batch: Vec<Pending>, queue: &str) -> Result<Self> {
        if batch.iter().any(|p| p.from_stream) {
            return Err(Error::StreamQueue {
                queue: queue.to_owned(),
            });
        }
        let first_received = batch.first().map_or_else(Instant::now, |p| p.received);
        let history = Redeliveries {
            redelivered: batch.iter().filter(|p| p.redelivered).count(),
            max_delivery_count: batch.iter().map(|p| p.delivery_count).max().unwrap_or(0),
        };
        Ok(Self {
            id: uuid::Uuid::now_v7().to_string(),
            last_tag: batch.last().map_or(0, |p| p.tag),
            frames: batch.into_iter().map(|p| p.frame).collect(),
            history,
            first_received,
        })
    }

    /// The batch for the reconciler, its deliveries held at most `unacked_max` in all.
    pub fn fresh(&self, unacked_max: Duration) -> FreshBatch<'_> {
        FreshBatch {
            id: &self.id,
            frames: &self.frames,
            history: self.history,
            hold_until: self.first_received + unacked_max,
        }
    }
}

/// An integer header of any AMQP integer type; anything else counts as 0.
fn as_count(value: &lapin::types::AMQPValue) -> u64 {
    use lapin::types::AMQPValue as V;
    let n: i128 = match value {
        V::ShortShortInt(n) => (*n).into(),
        V::ShortShortUInt(n) => (*n).into(),
        V::ShortInt(n) => (*n).into(),
        V::ShortUInt(n) => (*n).into(),
        V::LongInt(n) => (*n).into(),
        V::LongUInt(n) => (*n).into(),
        V::LongLongInt(n) => (*n).into(),
        _ => 0,
    };
    u64::try_from(n).unwrap_or(0)
}

impl Weighed for Pending {
    fn bytes(&self) -> usize {
        self.frame.len()
    }
}

impl Consumer {
    /// Connects, declares the queue, sets the prefetch and starts consuming.
    pub async fn start(config: &Config) -> Result<(Self, lapin::Consumer)> {
        let connection = connect(&config.broker, "sluice-dispatcher").await?;
        ensure_queue(&connection, &config.broker).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(Error::amqp("opening a channel"))?;
        channel
            .basic_qos(config.prefetch(), BasicQosOptions::default())
            .await
            .map_err(Error::amqp("setting the prefetch"))?;
        let stream = channel
            .basic_consume(
                config.broker.queue.as_str().into(),
                TAG.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::amqp("starting the consumer"))?;
        Ok((
            Self {
                connection,
                channel,
            },
            stream,
        ))
    }

    /// Acks every delivery up to and including `tag`. Batches are staged and launched in
    /// delivery order on this one channel, so `multiple` acks exactly the closed batch.
    pub async fn ack_through(&self, tag: u64) -> Result<()> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(Error::amqp("acking a batch"))
    }

    /// Stops the broker sending deliveries (`basic.cancel` returns none of those already
    /// sent: they still come on the stream, which then ends).
    pub async fn cancel(&self) -> Result<()> {
        self.channel
            .basic_cancel(TAG.into(), BasicCancelOptions::default())
            .await
            .map_err(Error::amqp("cancelling the consumer"))
    }

    /// Messages ready in `queue`, for adaptive sizing.
    pub async fn depth(&self, queue: &str) -> Result<u32> {
        Ok(inspect_queue(&self.channel, queue).await?.message_count())
    }

    /// Closes the connection; the broker requeues every unacked delivery.
    pub async fn close(self) {
        if let Err(e) = self
            .connection
            .close(200, "dispatcher stopping".into())
            .await
        {
            tracing::debug!(error = %e, "closing the rabbitmq connection");
        }
    }
}

/// A short-string property as text, if set.
fn property(value: Option<&lapin::types::ShortString>) -> Option<String> {
    value.map(|v| v.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(tag: u64, redelivered: bool, delivery_count: u64, received: Instant) -> Pending {
        Pending {
            tag,
            frame: vec![0; 3],
            redelivered,
            delivery_count,
            from_stream: false,
            received,
        }
    }

    #[test]
    fn a_cut_acks_through_its_last_tag_and_is_held_from_its_oldest_delivery() {
        let first = Instant::now();
        let later = first + Duration::from_secs(1);
        let cut = Cut::new(
            vec![
                pending(7, false, 0, first),
                pending(8, true, 3, later),
                pending(9, true, 1, later),
            ],
            "jobs",
        )
        .unwrap();
        assert_eq!(cut.last_tag, 9);
        assert_eq!(cut.frames.len(), 3);
        assert_eq!(
            cut.history,
            Redeliveries {
                redelivered: 2,
                max_delivery_count: 3
            }
        );
        let fresh = cut.fresh(Duration::from_secs(180));
        assert_eq!(fresh.hold_until, first + Duration::from_secs(180));
        assert_eq!(fresh.id, cut.id);
    }
}
