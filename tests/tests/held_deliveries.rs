//! Nothing the dispatcher holds goes back to the broker: a breaker cycle on a quorum queue
//! with a delivery limit of 1, and every Job slot busy for longer than a private broker's
//! `consumer_timeout`. In both, every message gets its result, none is redelivered, and the
//! deliveries held when consumption paused were parked in Redis and acked.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use sluice_dispatcher::metrics::Metrics;
use sluice_tests::cases::{echoes, sleepers};
use sluice_tests::outage::{
    batches, fix_and_check, local_config, publish_workload, runner_script, wait_until_held_back,
};
use sluice_tests::servers::{Options, Servers};
use sluice_tests::{TestEnv, require_binaries, spawn_dispatcher_with, wait_until};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Unacked deliveries of `queue` as a private node's `rabbitmqctl` reports them.
fn unacked(rabbitmqctl: impl Fn(&[&str]) -> String, queue: &str) -> u64 {
    let out = rabbitmqctl(&["-q", "list_queues", "name", "messages_unacknowledged"]);
    out.lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("queue {queue} not listed: {out}"))
}

/// No batch records a redelivered delivery or a quorum delivery count above 0.
fn assert_nothing_redelivered(all: &[HashMap<String, String>]) {
    for batch in all {
        for field in ["redelivered", "delivery_count_max"] {
            assert!(
                batch.get(field).is_none_or(|n| n == "0"),
                "a delivery went back to the broker: {batch:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_cycle_on_a_quorum_queue_with_delivery_limit_1_returns_nothing() {
    require_binaries().unwrap();
    let env = TestEnv::new("held-quorum").await.unwrap();
    env.create_queue(r#"{"x-queue-type":"quorum","x-delivery-limit":1}"#)
        .await
        .unwrap();

    // Every runner exits 78 (an outage) until the flag is removed.
    let flag = std::env::temp_dir().join(format!("{}-broken", env.prefix));
    std::fs::write(&flag, "").unwrap();
    let script = runner_script(&env, &flag, 78, &env.redis_url);
    let config = local_config(&env, &script);

    let name = "breaker cycle on a quorum queue, x-delivery-limit 1";
    let ids = publish_workload(&env).await;
    let (stop, metrics) = (CancellationToken::new(), Arc::new(Metrics::new()));
    let dispatcher = spawn_dispatcher_with(config.clone(), Arc::clone(&metrics), stop.clone());
    wait_until_held_back(
        name,
        &env,
        &config,
        "exit code 78",
        Duration::from_secs(120),
    )
    .await;
    // Paused, it holds nothing: its consumer is gone and what it held is parked (a quorum
    // queue's unacked count in `rabbitmqctl` lags by seconds; the consumer count does not).
    assert_eq!(
        env.queue_counts().await.unwrap().1,
        0,
        "no consumer while held back"
    );
    assert!(metrics.parked.get() > 0, "what it held was parked");
    fix_and_check(name, &env, &config, &ids, || {
        std::fs::remove_file(&flag).unwrap();
    })
    .await;
    assert_nothing_redelivered(&batches(&env).await);
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    let _ = std::fs::remove_file(script);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slot_busy_past_the_consumer_timeout_redelivers_and_loses_nothing() {
    require_binaries().unwrap();
    // RabbitMQ looks for late acks about once a minute: a slot busy for 75 s is seen.
    let options = Options {
        rabbitmq_conf: &["consumer_timeout = 5000"],
        ..Options::default()
    };
    let servers = Servers::start("consumer-timeout", &options).unwrap();
    let redis_url = format!("redis://localhost:{}/", servers.redis_port);
    let env = TestEnv::on("timeout", &servers.amqp_url(), &redis_url, &[])
        .await
        .unwrap();
    let config = env
        .config(&[
            ("BATCH_MODE", "fixed"),
            ("BATCH_MAX_MESSAGES", "5"),
            ("BATCH_LINGER_MS", "100"),
            ("MAX_JOBS_IN_FLIGHT", "1"),
            ("UNACKED_MAX_SECONDS", "2"),
        ])
        .unwrap();
    let (stop, metrics) = (CancellationToken::new(), Arc::new(Metrics::new()));
    let dispatcher = spawn_dispatcher_with(config, Arc::clone(&metrics), stop.clone());

    // One batch of five 15 s messages holds the only slot for 75 s on one thread.
    let (mut ids, long) = sleepers("long-", 5, 15_000);
    env.publish(&long).await.unwrap();
    let launched = Arc::clone(&metrics);
    wait_until("the long batch launched", Duration::from_secs(30), || {
        launched.launched.get() >= 1
    })
    .await;
    let (quick, messages) = echoes("quick-", 20);
    env.publish(&messages).await.unwrap();
    let parked = Arc::clone(&metrics);
    wait_until("a batch parked", Duration::from_secs(30), || {
        parked.parked.get() >= 1
    })
    .await;
    // The slot is still busy; what the consumer held is parked and acked, the rest is ready.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ctl = |args: &[&str]| servers.rabbitmqctl(args).unwrap();
    assert_eq!(
        unacked(ctl, &env.queue),
        0,
        "nothing held while the slot is busy"
    );
    assert_eq!(
        metrics.launched.get(),
        1,
        "the long batch still holds the slot"
    );

    ids.extend(quick);
    let results = env
        .wait_for_results(&ids, Duration::from_secs(240))
        .await
        .unwrap();
    assert!(
        ids.iter().all(|id| results[id]["status"] == "ok"),
        "{results:?}"
    );
    assert_eq!(
        env.stream_len().await.unwrap(),
        ids.len(),
        "each result once"
    );
    assert_nothing_redelivered(&batches(&env).await);
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}
