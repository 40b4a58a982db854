//! RabbitMQ helpers shared by the consumer and the `publish` and `status` commands (and by
//! producers in tests): connecting, declaring the work queue, reading its depth.

use crate::error::{Error, Result};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

/// Opens a connection (named after the dispatcher, so operators see it in RabbitMQ).
pub async fn connect(url: &str, name: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .map_err(Error::amqp("connecting to rabbitmq"))
}

/// Declares the durable work queue, as producers may also do with the same arguments.
pub async fn declare_queue(channel: &Channel, queue: &str) -> Result<lapin::Queue> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(Error::amqp("declaring the queue"))
}

/// Reads a queue's state (ready messages, consumers) with a passive declare: one round trip,
/// and an error if the queue does not exist.
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
