//! RabbitMQ helpers shared by the consumer and the `publish`, `redrive` and `status` commands
//! (and by producers in tests): connecting (over TLS for `amqps://`), finding or declaring the
//! work queue, reading its depth, channels with publisher confirms.
//!
//! The queue is looked up passively first and used as it is: a queue the user created (a
//! quorum queue, a dead-letter exchange, `x-max-length`) needs neither matching arguments nor
//! the configure permission. Only a missing queue is declared, with `QUEUE_ARGUMENTS`.

use crate::config::broker::{Broker, queue_arguments};
use crate::error::{Error, Result};
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use sluice_contract::tls::{self, Service};

/// Opens a connection (named after its user, so operators see it in RabbitMQ). For
/// `amqps://`, the system's roots and `AMQP_CA_FILE` are trusted and `AMQP_CERT_FILE` is
/// presented; a TLS failure is one line naming the host.
pub async fn connect(broker: &Broker, name: &str) -> Result<Connection> {
    let uri: AMQPUri = broker
        .amqp_url
        .parse()
        .map_err(|e| Error::InvalidConfig(format!("AMQP_URL is not an AMQP URL: {e}")))?;
    let host = format!("{}:{}", uri.authority.host, uri.authority.port);
    let pem = broker
        .tls()
        .load(Service::Rabbitmq)
        .map_err(|e| Error::InvalidConfig(e.to_string()))?;
    let config = OwnedTLSConfig {
        identity: pem
            .identity
            .map(|(pem, key)| OwnedIdentity::PKCS8 { pem, key }),
        cert_chain: pem.ca.map(|ca| String::from_utf8_lossy(&ca).into_owned()),
    };
    tls::install_crypto_provider();
    let runtime = lapin::runtime::default_runtime().map_err(Error::amqp("starting a runtime"))?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri_with_config(uri, properties, config, runtime)
        .await
        .map_err(Error::or_tls(
            Service::Rabbitmq,
            host,
            Error::amqp("connecting to rabbitmq"),
        ))
}

/// A channel on `connection` with publisher confirms: every publish sluice makes (messages,
/// dead letters, redriven messages, replies) waits for the broker's confirm.
pub async fn confirming_channel(connection: &Connection) -> Result<Channel> {
    let channel = open(connection).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(Error::amqp("enabling publisher confirms"))?;
    Ok(channel)
}

/// The work queue's state: looked up passively, and declared (durable, with
/// `QUEUE_ARGUMENTS`) only when it does not exist.
pub async fn ensure_queue(connection: &Connection, broker: &Broker) -> Result<lapin::Queue> {
    ensure_named(connection, &broker.queue, || {
        queue_arguments(broker.queue_arguments.as_deref()).map_err(Error::InvalidConfig)
    })
    .await
}

/// `queue`'s state: looked up passively, and declared durable with `arguments` only when it
/// does not exist. Uses channels of its own, as a failed passive declare closes the channel it
/// was made on.
pub async fn ensure_named(
    connection: &Connection,
    queue: &str,
    arguments: impl FnOnce() -> Result<FieldTable>,
) -> Result<lapin::Queue> {
    let channel = open(connection).await?;
    match inspect_queue(&channel, queue).await {
        Ok(state) => {
            close(channel).await;
            return Ok(state);
        }
        Err(e) if !is_not_found(&e) => return Err(e),
        Err(_) => {}
    }
    let channel = open(connection).await?;
    let state = channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments()?)
        .await
        .map_err(Error::amqp("declaring the queue"))?;
    tracing::info!(%queue, "declared the queue, which did not exist");
    close(channel).await;
    Ok(state)
}

/// A connection and a channel on it with publisher confirms, for a publisher that outlives
/// broker outages: opened when first needed, and again once the channel has closed or
/// [`Confirming::reset`] dropped it after a failed publish.
pub struct Confirming {
    broker: Broker,
    name: &'static str,
    /// A queue looked up, or declared durable when missing, on every new connection.
    ensure: Option<String>,
    session: Option<(Connection, Channel)>,
}

impl Confirming {
    /// A session named `name` (as RabbitMQ lists it); `ensure` as above.
    pub fn new(broker: &Broker, name: &'static str, ensure: Option<String>) -> Self {
        Self {
            broker: broker.clone(),
            name,
            ensure,
            session: None,
        }
    }

    /// The open channel, or a new one on a new connection.
    pub async fn channel(&mut self) -> Result<Channel> {
        if let Some((_, channel)) = &self.session
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let connection = connect(&self.broker, self.name).await?;
        if let Some(queue) = &self.ensure {
            ensure_named(&connection, queue, || Ok(FieldTable::default())).await?;
        }
        let channel = confirming_channel(&connection).await?;
        self.session = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Closes the session after a failure: the next [`Confirming::channel`] opens a new one.
    pub async fn reset(&mut self, why: &str) {
        if let Some((connection, _)) = self.session.take() {
            let _ = connection.close(200, why.into()).await;
        }
    }
}

/// Reads a queue's state (ready messages, consumers) with a passive declare: one round trip,
/// and an error if the queue does not exist (which closes `channel`).
pub async fn inspect_queue(channel: &Channel, queue: &str) -> Result<lapin::Queue> {
    let passive = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .map_err(Error::amqp("reading the queue's state"))
}

fn is_not_found(error: &Error) -> bool {
    matches!(error, Error::Amqp { source, .. }
        if matches!(source.kind(), ErrorKind::ProtocolError(e)
            if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

async fn open(connection: &Connection) -> Result<Channel> {
    connection
        .create_channel()
        .await
        .map_err(Error::amqp("opening a channel"))
}

async fn close(channel: Channel) {
    if let Err(e) = channel.close(200, "done".into()).await {
        tracing::debug!(error = %e, "closing a channel");
    }
}
