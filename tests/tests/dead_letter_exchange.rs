//! A work queue with its own dead-letter exchange (`x-dead-letter-exchange` in
//! `QUEUE_ARGUMENTS`, as users who created their queue that way set it): sluice's dead letters
//! go through that exchange, as RabbitMQ's own would, to the queue the user bound to it, and
//! `dispatcher redrive` reads them back from `DEAD_LETTER_QUEUE`. An exchange that routes
//! them nowhere is an error, never a silent loss.

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};
use sluice_contract::dead;
use sluice_dispatcher::dead_letters::{DeadLetter, DeadLetters};
use sluice_dispatcher::redrive::{self, Selector};
use sluice_tests::TestEnv;
use sluice_tests::dead::header;

fn letter<'a>(id: &'a str, body: &'a [u8]) -> DeadLetter<'a> {
    DeadLetter {
        id,
        batch: "b-dlx",
        reason: "gave up: the message's Job failed on its own",
        attempts: 1,
        message_id: Some(id),
        body,
    }
}

async fn declare_exchange(connection: &Connection, exchange: &str) {
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_go_through_the_queue_s_own_exchange_and_are_redriven_from_its_queue() {
    let env = TestEnv::new("dlx").await.unwrap();
    let exchange = format!("{}-dlx", env.queue);
    let dead_queue = format!("{}.dead", env.queue);
    let arguments = format!(r#"{{"x-dead-letter-exchange":"{exchange}"}}"#);
    let config = env
        .config(&[
            ("QUEUE_ARGUMENTS", &arguments),
            ("DEAD_LETTER_QUEUE", &dead_queue),
        ])
        .unwrap();
    let connection = env.amqp().await.unwrap();
    declare_exchange(&connection, &exchange).await;
    let publisher = DeadLetters::new(&config.broker);

    // Bound nowhere yet: the broker returns it (mandatory), and the publish fails.
    let refused = publisher.publish(&letter("lost", b"{}")).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("routes key")),
        "{refused:?}"
    );

    // The user's binding, with the routing key RabbitMQ uses for its own: the queue's name.
    sluice_dispatcher::dead_letters::ensure_queue(&connection, &dead_queue)
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_bind(
            dead_queue.as_str().into(),
            exchange.as_str().into(),
            env.queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let body = br#"{"id":"via-dlx","kernel":"echo","input":1}"#;
    publisher.publish(&letter("via-dlx", body)).await.unwrap();
    let letters = env.dead_queue().await.unwrap();
    assert_eq!(letters.len(), 1, "routed to the bound queue");
    assert_eq!(letters[0].data, body);
    assert_eq!(header(&letters[0], dead::ID).as_deref(), Some("via-dlx"));

    // Redrive reads DEAD_LETTER_QUEUE: the copy without an index entry goes back on the queue.
    let summary = redrive::run(&config, &Selector::All).await.unwrap();
    assert_eq!(summary.requeued, 1, "{summary:?}");
    assert_eq!(env.queue_depth().await.unwrap(), 1);
    assert!(env.dead_queue().await.unwrap().is_empty());

    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
    env.cleanup().await.unwrap();
}
