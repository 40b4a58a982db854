//! Dead letters in RabbitMQ, where its users look for them: a message given up on is
//! published to the dead-letter queue (`DEAD_LETTER_QUEUE`, default `<QUEUE>.dead`, or the
//! queue's own dead-letter exchange) with its body byte for byte, its `message_id`, and why in
//! headers ([`sluice_contract::dead`]), and the broker's confirm is awaited **before** its
//! result is marked `dead` ([`crate::settle`]).
//!
//! So a dead result always has its message in the queue. A settle that fails after the
//! publish (Redis refused it, another dispatcher settled first) publishes again when it is
//! tried again: a dead letter can be in the queue twice, with the same `x-sluice-batch`, and
//! `dispatcher redrive` takes such copies together. A broker that cannot take the dead letter
//! (down, the exchange routes it nowhere) fails the settle, which is tried again at the next
//! pass: nothing is marked dead without its message kept.

use crate::amqp::{self, Confirming};
use crate::config::broker::{Broker, DeadLetterRoute};
use crate::error::{Error, Result};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use sluice_contract::dead;
use tokio::sync::Mutex;

/// One message given up on.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// The id its result is keyed by.
    pub id: &'a str,
    /// The batch it died in.
    pub batch: &'a str,
    /// Why.
    pub reason: &'a str,
    /// Runner runs that reached that batch.
    pub attempts: u64,
    /// Its `message_id` as it arrived.
    pub message_id: Option<&'a str>,
    /// Its body as it arrived.
    pub body: &'a [u8],
}

/// Publishes dead letters over a connection of its own, opened when first needed and again
/// after a failure.
pub struct DeadLetters {
    /// Checked at start-up with the rest of the configuration.
    route: std::result::Result<DeadLetterRoute, String>,
    session: Mutex<Confirming>,
}

impl DeadLetters {
    /// A publisher for the configured route; connects on first use (declaring the queue when
    /// it publishes straight to it).
    pub fn new(broker: &Broker) -> Self {
        let route = broker.dead_letter_route();
        let ensure = route
            .as_ref()
            .ok()
            .filter(|r| r.declares_queue())
            .map(|r| r.queue.clone());
        Self {
            route,
            session: Mutex::new(Confirming::new(broker, "sluice-dead-letters", ensure)),
        }
    }

    /// Publishes `letter` and waits for the broker's confirm; an error drops the connection.
    pub async fn publish(&self, letter: &DeadLetter<'_>) -> Result<()> {
        let route = self
            .route
            .as_ref()
            .map_err(|e| Error::InvalidConfig(e.clone()))?;
        let mut session = self.session.lock().await;
        let channel = session.channel().await?;
        let published = publish(&channel, route, letter).await;
        if published.is_err() {
            session.reset("dead-letter publish failed").await;
        }
        published
    }
}

/// The dead-letter queue, looked up passively and declared durable only when missing.
pub async fn ensure_queue(connection: &Connection, queue: &str) -> Result<()> {
    amqp::ensure_named(connection, queue, || Ok(FieldTable::default()))
        .await
        .map(drop)
}

/// Persistent and mandatory (a dead letter routed nowhere comes back as an error).
async fn publish(
    channel: &Channel,
    route: &DeadLetterRoute,
    letter: &DeadLetter<'_>,
) -> Result<()> {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirmation = channel
        .basic_publish(
            route.exchange.as_str().into(),
            route.routing_key.as_str().into(),
            mandatory,
            letter.body,
            properties(letter),
        )
        .await
        .map_err(Error::amqp("publishing a dead letter"))?
        .await
        .map_err(Error::amqp("waiting for a dead letter's confirm"))?;
    let reason = if !confirmation.is_ack() {
        "nacked".to_owned()
    } else if confirmation.take_message().is_some() {
        format!(
            "returned: exchange '{}' routes key '{}' to no queue",
            route.exchange, route.routing_key
        )
    } else {
        return Ok(());
    };
    Err(Error::BrokerRefused {
        reason: format!("dead letter for {}: {reason}", route.queue),
    })
}

/// The message's own `message_id`, and the dead-letter headers.
pub fn properties(letter: &DeadLetter<'_>) -> BasicProperties {
    let mut headers = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    headers.insert(ShortString::from(dead::ID), text(letter.id));
    headers.insert(ShortString::from(dead::BATCH), text(letter.batch));
    headers.insert(ShortString::from(dead::REASON), text(letter.reason));
    headers.insert(
        ShortString::from(dead::ATTEMPTS),
        AMQPValue::LongLongInt(i64::try_from(letter.attempts).unwrap_or(i64::MAX)),
    );
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    match letter.message_id.map(ShortString::try_new) {
        Some(Ok(id)) => properties.with_message_id(id),
        _ => properties,
    }
}
