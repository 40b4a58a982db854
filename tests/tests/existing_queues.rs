//! Queues that users created before sluice ran, with arguments sluice did not choose, and a
//! broker user that may read and write but not configure: used as they are, never redeclared.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use lapin::options::QueueDeclareOptions;
use sluice_tests::cases::mixed;
use sluice_tests::{TestEnv, binary, require_binaries, spawn_dispatcher};
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl of the broker `make services` started must be on PATH");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Drains 200 mixed messages from the queue as it is and checks every result.
async fn drain(env: &TestEnv, extra: &[(&str, &str)]) {
    let mut vars = vec![("BATCH_MAX_MESSAGES", "40"), ("MAX_MESSAGE_BYTES", "4096")];
    vars.extend_from_slice(extra);
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(env.config(&vars).unwrap(), stop.clone());
    env.run_cases(&mixed(200), Duration::from_secs(120))
        .await
        .unwrap();
    stop.cancel();
    assert_eq!(dispatcher.await.unwrap().unwrap().abandoned, 0);
    assert_eq!(env.queue_depth().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_that_exists_is_drained_as_it_is() {
    require_binaries().unwrap();
    let env = TestEnv::new("quorum").await.unwrap();
    env.create_queue(r#"{"x-queue-type":"quorum","x-delivery-limit":5}"#)
        .await
        .unwrap();
    // QUEUE_ARGUMENTS only matter for a queue that is missing; these would not match.
    drain(&env, &[("QUEUE_ARGUMENTS", r#"{"x-max-length":3}"#)]).await;
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_with_dead_letter_and_max_length_arguments_is_drained() {
    require_binaries().unwrap();
    let env = TestEnv::new("dlx").await.unwrap();
    env.create_queue(r#"{"x-dead-letter-exchange":"amq.fanout","x-max-length":100000,"x-overflow":"reject-publish"}"#,
    ).await.unwrap();
    drain(&env, &[]).await;
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_is_declared_with_queue_arguments() {
    require_binaries().unwrap();
    let mut env = TestEnv::new("declared").await.unwrap();
    // Producers and the dispatcher alike: whichever connects first declares it, the same way.
    env.extra.push((
        "QUEUE_ARGUMENTS".to_owned(),
        r#"{"x-queue-type":"quorum"}"#.to_owned(),
    ));
    drain(&env, &[]).await;
    let queues = rabbitmqctl(&["list_queues", "-q", "name", "type"]);
    let line = queues
        .lines()
        .find(|l| l.starts_with(&format!("{}\t", env.queue)))
        .unwrap_or_else(|| panic!("{} is not listed: {queues}", env.queue));
    assert!(line.ends_with("quorum"), "{line}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_configure_permission_publishes_and_drains_an_existing_queue() {
    require_binaries().unwrap();
    let owner = TestEnv::new("least").await.unwrap();
    owner
        .create_queue(r#"{"x-queue-type":"quorum"}"#)
        .await
        .unwrap();
    let user = format!("sluice-{}", owner.queue);
    rabbitmqctl(&["add_user", &user, "secret-of-the-test"]);
    rabbitmqctl(&["set_permissions", "-p", "/", &user, "^$", ".*", ".*"]);
    let url = owner
        .amqp_url
        .replacen("guest:guest", &format!("{user}:secret-of-the-test"), 1);
    let env = TestEnv {
        queue: owner.queue.clone(),
        prefix: owner.prefix.clone(),
        amqp_url: url,
        redis_url: owner.redis_url.clone(),
        extra: Vec::new(),
    };

    // `dispatcher publish` as that user, then the dispatcher drains as that user.
    let published = Command::new(binary("dispatcher"))
        .args([
            "publish",
            "-n",
            "50",
            "--kernel",
            "echo",
            "--input",
            "\"hi\"",
            "--id-prefix",
            "lp",
        ])
        .envs(env.vars())
        .output()
        .unwrap();
    assert!(published.status.success(), "{published:?}");
    let ids: Vec<String> = (0..50).map(|i| format!("lp-{i}")).collect();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(env.config(&[]).unwrap(), stop.clone());
    let results = env
        .wait_for_results(&ids, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(results.values().all(|r| r["status"] == "ok"), "{results:?}");
    stop.cancel();
    assert_eq!(dispatcher.await.unwrap().unwrap().abandoned, 0);

    // The user could not have declared it: configure is refused.
    let connection = env.amqp().await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let refused = channel
        .queue_declare(
            format!("{}-new", env.queue).as_str().into(),
            QueueDeclareOptions::durable(),
            lapin::types::FieldTable::default(),
        )
        .await;
    assert!(refused.is_err(), "configure must be refused to this user");
    let _ = connection.close(200, "done".into()).await;
    rabbitmqctl(&["delete_user", &user]);
    // Deleting the queue needs configure: its owner does it.
    owner.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_queue_is_refused_in_one_line_and_nothing_is_taken_from_it() {
    use lapin::types::{AMQPValue, FieldTable};
    require_binaries().unwrap();
    let env = TestEnv::new("stream").await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    env.declare_queue(arguments).await.unwrap();
    let metrics = std::sync::Arc::new(sluice_dispatcher::metrics::Metrics::new());
    let stop = CancellationToken::new();
    let dispatcher = sluice_tests::spawn_dispatcher_with(
        env.config(&[]).unwrap(),
        std::sync::Arc::clone(&metrics),
        stop.clone(),
    );
    // A stream hands a new consumer only what arrives after it subscribed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metrics
        .health()
        .is_blocked(sluice_dispatcher::health::CONSUMER)
    {
        assert!(tokio::time::Instant::now() < deadline, "never consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.publish(&[sluice_tests::Outgoing::raw("s-1", "hello")])
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), dispatcher)
        .await
        .expect("the dispatcher stops by itself on a stream queue")
        .unwrap();
    let Err(error) = outcome else {
        panic!("a stream queue is an error");
    };
    let error = error.to_string();
    assert!(
        error.starts_with(&format!("queue {} is a stream queue", env.queue)),
        "{error}"
    );
    assert!(env.result("s-1").await.unwrap().is_empty());
    assert!(!env.stats().await.unwrap().contains_key("received"));
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_and_the_quorum_delivery_count_are_recorded_on_the_batch() {
    use futures::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    use redis::AsyncCommands;
    require_binaries().unwrap();
    let env = TestEnv::new("redelivered").await.unwrap();
    env.create_queue(r#"{"x-queue-type":"quorum"}"#)
        .await
        .unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("r-{i}")).collect();
    let messages: Vec<_> = ids
        .iter()
        .map(|id| sluice_tests::Outgoing::raw(id, "again"))
        .collect();
    env.publish(&messages).await.unwrap();

    // Another consumer takes all twenty and goes away without acking: each is returned once.
    let connection = env.amqp().await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(20, BasicQosOptions::default())
        .await
        .unwrap();
    let mut taken = channel
        .basic_consume(
            env.queue.as_str().into(),
            "taker".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..20 {
        tokio::time::timeout(Duration::from_secs(10), taken.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    connection.close(200, "gone".into()).await.unwrap();

    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(
        env.config(&[("BATCH_MAX_MESSAGES", "20")]).unwrap(),
        stop.clone(),
    );
    env.wait_for_results(&ids, Duration::from_secs(60))
        .await
        .unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    let mut con = env.redis().await.unwrap();
    let keys: Vec<String> = {
        let mut iter = con
            .scan_match::<_, String>(format!("{}:batch:*", env.prefix))
            .await
            .unwrap();
        let mut keys = Vec::new();
        while let Some(key) = iter.next_item().await {
            keys.push(key.unwrap());
        }
        keys
    };
    let (mut redelivered, mut max_count) = (0, 0);
    for key in keys
        .iter()
        .filter(|k| k.matches(':').count() == env.prefix.matches(':').count() + 2)
    {
        let (r, c): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(key)
            .arg("redelivered")
            .arg("delivery_count_max")
            .query_async(&mut con)
            .await
            .unwrap();
        redelivered += r.unwrap_or(0);
        max_count = max_count.max(c.unwrap_or(0));
    }
    assert_eq!(redelivered, 20, "{keys:?}");
    assert!(max_count >= 1, "x-delivery-count recorded: {max_count}");
    env.cleanup().await.unwrap();
}
