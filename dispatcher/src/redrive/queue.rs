//! The dead-letter queue's side of a redrive: every copy in it is fetched and held unacked for
//! the run, so the run can publish the selected ones back and ack them, while whatever it does
//! not ack (not selected, or the run died) goes back to the queue when its channel closes.

use crate::amqp;
use crate::config::Config;
use crate::error::{Error, Result};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel, Connection};
use sluice_contract::dead;
use std::collections::HashMap;

/// One message in the dead-letter queue.
pub struct Copy {
    /// Its `x-sluice-id` header (else its `message_id`).
    pub id: String,
    /// Its `x-sluice-batch` header: copies of one dead letter share it.
    pub batch: String,
    /// Its `x-sluice-reason` header.
    pub reason: String,
    /// Its `x-sluice-attempts` header.
    pub attempts: u64,
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// Its properties without the dead-letter headers: what goes back on the work queue.
    pub properties: BasicProperties,
    acker: Acker,
}

/// The copies fetched from the dead-letter queue, held until [`DeadQueue::close`].
pub struct DeadQueue {
    /// The queue's name.
    pub name: String,
    /// Every copy it held when the run began (none if the queue does not exist), oldest first.
    pub copies: Vec<Copy>,
    /// Where in `copies` each dead letter's copies are, by `(id, batch)`: a redrive looks a
    /// letter up several times, and the queue may hold thousands.
    by_letter: HashMap<(String, String), Vec<usize>>,
    session: Option<(Connection, Channel)>,
}

impl DeadQueue {
    /// Fetches every message the queue holds now (later dead letters wait for the next run).
    pub async fn read(config: &Config) -> Result<Self> {
        let route = config
            .broker
            .dead_letter_route()
            .map_err(Error::InvalidConfig)?;
        let connection = amqp::connect(&config.broker, "sluice-redrive-dead-letters").await?;
        let channel = channel(&connection).await?;
        let Ok(state) = amqp::inspect_queue(&channel, &route.queue).await else {
            // No dead-letter queue (yet): only index entries of older versions can be redriven.
            let _ = connection.close(200, "no dead-letter queue".into()).await;
            return Ok(Self {
                name: route.queue,
                copies: Vec::new(),
                by_letter: HashMap::new(),
                session: None,
            });
        };
        let mut copies = Vec::new();
        for _ in 0..state.message_count() {
            let got = channel
                .basic_get(
                    route.queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(Error::amqp("fetching a dead letter"))?;
            let Some(message) = got else { break };
            copies.push(copy(message.delivery));
        }
        let mut by_letter: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (at, copy) in copies.iter().enumerate() {
            let letter = (copy.id.clone(), copy.batch.clone());
            by_letter.entry(letter).or_default().push(at);
        }
        Ok(Self {
            name: route.queue,
            copies,
            by_letter,
            session: Some((connection, channel)),
        })
    }

    /// The copies of the dead letter of message `id` that died in `batch`.
    pub fn of<'a>(&'a self, id: &str, batch: &str) -> impl Iterator<Item = &'a Copy> {
        self.by_letter
            .get(&(id.to_owned(), batch.to_owned()))
            .into_iter()
            .flatten()
            .map(|&at| &self.copies[at])
    }

    /// Acks (removes from the queue) every copy of each `(id, batch)`.
    pub async fn ack(&self, letters: &[(&str, &str)]) -> Result<()> {
        for (id, batch) in letters {
            for copy in self.of(id, batch) {
                copy.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(Error::amqp("acking a dead letter"))?;
            }
        }
        Ok(())
    }

    /// Closes the channel: copies not acked go back to the queue.
    pub async fn close(self) {
        if let Some((connection, _)) = self.session {
            let _ = connection.close(200, "redrive done".into()).await;
        }
    }
}

async fn channel(connection: &Connection) -> Result<Channel> {
    connection
        .create_channel()
        .await
        .map_err(Error::amqp("opening a channel"))
}

fn copy(delivery: lapin::message::Delivery) -> Copy {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    let id = text(dead::ID)
        .or_else(|| {
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(ToString::to_string)
        })
        .unwrap_or_default();
    let attempts = match headers.inner().get(dead::ATTEMPTS) {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let mut kept = FieldTable::default();
    for (name, value) in headers.inner() {
        if !name.as_str().starts_with("x-sluice-") {
            kept.insert(name.clone(), value.clone());
        }
    }
    Copy {
        batch: text(dead::BATCH).unwrap_or_default(),
        reason: text(dead::REASON).unwrap_or_default(),
        id,
        attempts,
        properties: delivery.properties.clone().with_headers(kept),
        body: delivery.data,
        acker: delivery.acker,
    }
}
