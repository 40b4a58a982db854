//! RabbitMQ's RPC pattern: a message published with `reply_to` and `correlation_id` gets its
//! result published there, as a pika worker would answer it, to a named queue and to direct
//! reply-to alike; errors and dead letters are answered too; a reply queue that is gone costs
//! only its own replies.

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};
use serde_json::{Value, json};
use sluice_dispatcher::metrics::Metrics;
use sluice_tests::{TestEnv, require_binaries, spawn_dispatcher_with};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const DIRECT: &str = "amq.rabbitmq.reply-to";

/// Publishes an echo (or `kernel`) message `id` asking for a reply to `reply_to`.
async fn publish(channel: &Channel, env: &TestEnv, id: &str, kernel: &str, reply_to: &str) {
    let body = json!({"kernel": kernel, "input": id}).to_string();
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.into())
        .with_reply_to(reply_to.into())
        .with_correlation_id(format!("c-{id}").as_str().into());
    let confirm = channel
        .basic_publish(
            "".into(),
            env.queue.as_str().into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
}

/// Replies on `consumer` until `count` have come (or the deadline): correlation id → body.
async fn replies(consumer: &mut Consumer, count: usize) -> HashMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = HashMap::new();
    while got.len() < count {
        let next = timeout(deadline - Instant::now(), consumer.next()).await;
        let delivery = next.expect("replies by the deadline").unwrap().unwrap();
        let properties = &delivery.properties;
        assert_eq!(
            properties
                .content_type()
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("application/json")
        );
        let correlation = properties.correlation_id().as_ref().unwrap().to_string();
        let body: Value = serde_json::from_slice(&delivery.data).unwrap();
        assert!(
            got.insert(correlation.clone(), body).is_none(),
            "one reply per result: {correlation} twice"
        );
    }
    got
}

/// Every reply matches its Redis result: same id, status, output or error.
async fn check(env: &TestEnv, replies: &HashMap<String, Value>) {
    for (correlation, reply) in replies {
        let id = correlation.strip_prefix("c-").unwrap();
        assert_eq!(reply["id"], id, "{reply}");
        let result = env.result(id).await.unwrap();
        assert_eq!(reply["status"], result["status"].as_str(), "{id}: {reply}");
        match result.get("output") {
            Some(output) => {
                assert_eq!(
                    reply["output"],
                    serde_json::from_str::<Value>(output).unwrap()
                );
            }
            None => assert_eq!(reply["error"], result["error"].as_str(), "{id}"),
        }
    }
}

async fn consume(channel: &Channel, queue: &str, no_ack: bool) -> Consumer {
    let options = BasicConsumeOptions {
        no_ack,
        ..BasicConsumeOptions::default()
    };
    channel
        .basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_replied_to_a_named_queue_and_to_direct_reply_to_with_their_correlation_ids() {
    require_binaries().unwrap();
    let env = TestEnv::new("replies").await.unwrap();
    let connection = env.amqp().await.unwrap();
    env.publish(&[]).await.unwrap(); // declares the work queue
    let named = format!("{}-replies", env.queue);
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            named.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut from_named = consume(&channel, &named, true).await;
    // Direct reply-to: consumed, then published on, from one channel, as RabbitMQ requires.
    let direct = connection.create_channel().await.unwrap();
    direct
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut from_direct = consume(&direct, DIRECT, true).await;
    for i in 0..10 {
        publish(&direct, &env, &format!("n{i}"), "echo", &named).await;
        publish(&direct, &env, &format!("d{i}"), "echo", DIRECT).await;
    }
    // An error and a dead letter are answered too.
    publish(&direct, &env, "bad", "no-such-kernel", &named).await;
    publish(&direct, &env, "poison", "crash", &named).await;

    let config = env
        .config(&[("BATCH_MAX_MESSAGES", "8"), ("JOB_BACKOFF_LIMIT", "0")])
        .unwrap();
    let (stop, metrics) = (CancellationToken::new(), Arc::new(Metrics::new()));
    let dispatcher = spawn_dispatcher_with(config, Arc::clone(&metrics), stop.clone());
    let named_replies = replies(&mut from_named, 12).await;
    let direct_replies = replies(&mut from_direct, 10).await;
    check(&env, &named_replies).await;
    check(&env, &direct_replies).await;
    assert_eq!(named_replies["c-bad"]["status"], "error");
    assert_eq!(named_replies["c-poison"]["status"], "dead");
    assert_eq!(direct_replies["c-d3"]["output"], "d3");
    // Nothing more comes: one reply per result.
    let extra = timeout(Duration::from_secs(2), from_named.next()).await;
    assert!(extra.is_err(), "an extra reply: {extra:?}");
    // Counted once the broker confirmed them, which may be just after they arrived here.
    let sent = || {
        metrics
            .replies
            .get_or_create(&vec![("outcome", "sent")])
            .get()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent() < 22 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sent(), 22);

    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    connection.close(200, "done".into()).await.unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_queue_that_is_gone_costs_only_its_own_replies() {
    require_binaries().unwrap();
    let env = TestEnv::new("replies-gone").await.unwrap();
    let connection = env.amqp().await.unwrap();
    env.publish(&[]).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let (kept, gone) = (format!("{}-kept", env.queue), format!("{}-gone", env.queue));
    for queue in [&kept, &gone] {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let ids: Vec<String> = (0..40).map(|i| format!("g{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let to = if i % 2 == 0 { &kept } else { &gone };
        publish(&channel, &env, id, "echo", to).await;
    }
    // The requester of half of them went away before its answers came.
    channel
        .queue_delete(gone.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();

    let config = env.config(&[("BATCH_MAX_MESSAGES", "10")]).unwrap();
    let (stop, metrics) = (CancellationToken::new(), Arc::new(Metrics::new()));
    let dispatcher = spawn_dispatcher_with(config, Arc::clone(&metrics), stop.clone());
    let results = env
        .wait_for_results(&ids, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(results.values().all(|r| r["status"] == "ok"), "{results:?}");
    let mut from_kept = consume(&channel, &kept, true).await;
    let kept_replies = replies(&mut from_kept, 20).await;
    check(&env, &kept_replies).await;
    let unroutable = |m: &Metrics| {
        m.replies
            .get_or_create(&vec![("outcome", "unroutable")])
            .get()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while unroutable(&metrics) < 20 {
        assert!(
            Instant::now() < deadline,
            "the gone queue's replies were not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(unroutable(&metrics), 20);

    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    channel
        .queue_delete(kept.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
    env.cleanup().await.unwrap();
}
