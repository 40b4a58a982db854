//! The work queue's side of a redrive: messages published back with publisher confirms.

use crate::amqp::{connect as amqp_connect, ensure_queue};
use crate::config::Config;
use crate::error::{Error, Result};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::ProgressBar;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

/// A message going back on the work queue.
pub struct Outgoing<'a> {
    /// The id (for the log).
    pub id: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// Its properties.
    pub properties: BasicProperties,
}

/// The channel dead letters are published on, with publisher confirms.
pub struct Requeue {
    connection: Connection,
    channel: Channel,
    queue: String,
}

impl Requeue {
    pub async fn connect(config: &Config) -> Result<Self> {
        let connection = amqp_connect(&config.broker, "sluice-redrive").await?;
        ensure_queue(&connection, &config.broker).await?;
        let channel = crate::amqp::confirming_channel(&connection).await?;
        Ok(Self {
            connection,
            channel,
            queue: config.broker.queue.clone(),
        })
    }

    /// Publishes each message, persistent and mandatory (a message the broker cannot route
    /// comes back as an error rather than vanishing), and waits for every confirm.
    pub async fn publish(&self, messages: &[Outgoing<'_>], progress: &ProgressBar) -> Result<()> {
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut pending = FuturesUnordered::new();
        for message in messages {
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    mandatory,
                    message.body,
                    message.properties.clone().with_delivery_mode(2),
                )
                .await
                .map_err(Error::amqp("publishing a dead letter"))?;
            tracing::debug!(id = message.id, "redriven");
            pending.push(confirm);
        }
        while let Some(confirm) = pending.next().await {
            self.check(confirm.map_err(Error::amqp("waiting for a publisher confirm"))?)?;
            progress.inc(1);
        }
        Ok(())
    }

    /// A confirm is only an ack without a returned message: a mandatory publish that could not
    /// be routed is acked too, and comes back.
    fn check(&self, confirmation: Confirmation) -> Result<()> {
        let reason = if !confirmation.is_ack() {
            "nacked".to_owned()
        } else if confirmation.take_message().is_some() {
            format!("returned: queue {} does not exist", self.queue)
        } else {
            return Ok(());
        };
        Err(Error::BrokerRefused { reason })
    }

    pub async fn close(&self) {
        if let Err(e) = self.connection.close(200, "redriven".into()).await {
            tracing::debug!(error = %e, "closing the rabbitmq connection");
        }
    }
}
