//! A full Redis is an outage that loses nothing: on a private Redis with a small `maxmemory`
//! (shared broker), consumption and launches pause while it is full, readiness, the metric
//! and `dispatcher status` say `redis-full`, messages wait in RabbitMQ, and once memory frees
//! every message ends with exactly one result, without a restart and without a dead letter.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sluice_dispatcher::health;
use sluice_dispatcher::metrics::Metrics;
use sluice_tests::cases::sleepers;
use sluice_tests::guarantee::record;
use sluice_tests::outage::batches;
use sluice_tests::servers::{Options, Servers};
use sluice_tests::{Outgoing, TestEnv, require_binaries, spawn_dispatcher_with, wait_until};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A private Redis that refuses writes at `maxmemory` (set by each test) and the shared broker.
async fn full_able(name: &str) -> (Servers, TestEnv) {
    let options = Options {
        redis_only: true,
        redis_args: &["--maxmemory-policy", "noeviction"],
        ..Options::default()
    };
    let servers = Servers::start(name, &options).unwrap();
    let amqp = std::env::var("AMQP_URL").unwrap_or_else(|_| AMQP.into());
    let env = TestEnv::on(name, &amqp, &servers.redis_url(), &[])
        .await
        .unwrap();
    (servers, env)
}

async fn used_memory(env: &TestEnv) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut env.redis().await.unwrap())
        .await
        .unwrap();
    sluice_contract::memory::Memory::parse(&info).used
}

/// Runs one command on the test's Redis.
async fn run(env: &TestEnv, command: &redis::Cmd) {
    let _: () = command
        .query_async(&mut env.redis().await.unwrap())
        .await
        .unwrap();
}

async fn set_maxmemory(env: &TestEnv, bytes: u64) {
    run(
        env,
        redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(bytes),
    )
    .await;
}

/// While full: readiness and `dispatcher status` say why, and nothing is consumed (the queue
/// keeps its depth).
async fn assert_held_back_while_full(
    env: &TestEnv,
    config: &sluice_dispatcher::Config,
    metrics: &Metrics,
) {
    // The consumer's pause comes as it notices; then it holds nothing and takes nothing.
    let paused = "consumer: paused while launches are held back";
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metrics.health().ready().unwrap_err().contains(paused) {
        assert!(Instant::now() < deadline, "{paused} within 30s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = metrics.health().ready().unwrap_err();
    assert!(ready.contains("redis-full: "), "{ready}");
    assert_eq!(
        env.queue_counts().await.unwrap().1,
        0,
        "no consumer while full"
    );
    let status = sluice_dispatcher::status::report(config)
        .await
        .unwrap()
        .to_string();
    assert!(status.contains("redis memory: FULL"), "{status}");
    // Deliveries the consumer held when it paused are parked; then nothing moves.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = env.queue_depth().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(before > 0, "messages wait in RabbitMQ");
    assert_eq!(
        env.queue_depth().await.unwrap(),
        before,
        "nothing consumed while full"
    );
    assert!(metrics.health().is_blocked(health::REDIS_FULL));
}

/// Every message ended ok exactly once, none dead (the guarantee, recorded as `fault`), and the
/// dispatcher is ready again.
async fn assert_all_ok_once(env: &TestEnv, ids: &[String], metrics: &Metrics, fault: &str) {
    let figures = env.figures(ids, Duration::from_secs(240)).await.unwrap();
    record(fault, 1, &figures);
    assert_eq!(
        (figures.lost, figures.duplicated, figures.dead),
        (0, 0, 0),
        "{figures:?}"
    );
    let results = env
        .wait_for_results(ids, Duration::from_secs(5))
        .await
        .unwrap();
    let not_ok: Vec<_> = results
        .iter()
        .filter(|(_, r)| r["status"] != "ok")
        .collect();
    assert!(not_ok.is_empty(), "{:?}", &not_ok[..not_ok.len().min(3)]);
    let stats = env.stats().await.unwrap();
    assert_eq!(
        stats.get("ok").copied(),
        Some(ids.len() as u64),
        "{stats:?}"
    );
    let room = || metrics.redis_full.get() == 0 && !metrics.health().is_blocked(health::REDIS_FULL);
    wait_until(
        "readiness without redis-full",
        Duration::from_secs(10),
        room,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_filled_by_results_pauses_consumption_and_resumes_when_maxmemory_is_raised() {
    require_binaries().unwrap();
    let (_servers, env) = full_able("redis-full-load").await;
    set_maxmemory(&env, used_memory(&env).await + 3_000_000).await;
    let config = env
        .config(&[
            ("BATCH_MAX_MESSAGES", "20"),
            ("BATCH_LINGER_MS", "50"),
            ("MAX_JOBS_IN_FLIGHT", "1"),
            // Room below maxmemory for what is in flight when the watch sees the mark.
            ("REDIS_PAUSE_PERCENT", "60"),
        ])
        .unwrap();
    // 1 kB results: about 3,000 fill it, 5,000 are sent.
    let ids: Vec<String> = (0..5000).map(|i| format!("m{i}")).collect();
    let body = "x".repeat(1000);
    let messages: Vec<Outgoing> = ids
        .iter()
        .map(|id| Outgoing::json(&json!({"id": id, "kernel": "echo", "input": body})))
        .collect();
    env.publish(&messages).await.unwrap();
    let (stop, metrics) = (CancellationToken::new(), Arc::new(Metrics::new()));
    let dispatcher = spawn_dispatcher_with(config.clone(), Arc::clone(&metrics), stop.clone());

    let full = Arc::clone(&metrics);
    wait_until("redis full", Duration::from_secs(120), || {
        full.redis_full.get() == 1
    })
    .await;
    assert!(metrics.redis_max_memory.get() > 0 && metrics.redis_used_memory.get() > 0);
    // Results kept a week at this rate need far more than 3 MB: the estimate (and the one
    // warning) say so once the rate has been seen for ten seconds.
    let need = Arc::clone(&metrics);
    wait_until("results outgrow maxmemory", Duration::from_secs(30), || {
        need.redis_results_need.get() > need.redis_max_memory.get()
    })
    .await;
    assert_held_back_while_full(&env, &config, &metrics).await;

    set_maxmemory(&env, 0).await;
    assert_all_ok_once(
        &env,
        &ids,
        &metrics,
        "redis full of results, maxmemory raised",
    )
    .await;
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_for_memory_mid_run_are_an_outage_that_ends_when_memory_frees() {
    require_binaries().unwrap();
    let (_servers, env) = full_able("redis-full-refused").await;
    let config = env
        .config(&[
            ("BATCH_MAX_MESSAGES", "10"),
            ("BATCH_LINGER_MS", "50"),
            ("MAX_JOBS_IN_FLIGHT", "2"),
            // Runners give up on a refusing Redis soon: their batches become outages.
            ("REDIS_RETRY_SECONDS", "2"),
            ("OUTAGE_RETRY_MAX_SECONDS", "2"),
        ])
        .unwrap();
    // Batches of ten 300 ms messages: the refusal meets runners mid-batch.
    let (ids, messages) = sleepers("s", 200, 300);
    env.publish(&messages).await.unwrap();
    let (stop, metrics) = (CancellationToken::new(), Arc::new(Metrics::new()));
    let dispatcher = spawn_dispatcher_with(config.clone(), Arc::clone(&metrics), stop.clone());
    let launched = Arc::clone(&metrics);
    wait_until("a batch launched", Duration::from_secs(30), || {
        launched.launched.get() >= 1
    })
    .await;

    // Another client's megabyte, then a maxmemory below what is used: every write is refused
    // from now on, and deleting the filler makes room.
    let filler = format!("{}:filler", env.prefix);
    run(
        &env,
        redis::cmd("SET").arg(&filler).arg("x".repeat(1_000_000)),
    )
    .await;
    set_maxmemory(&env, used_memory(&env).await - 1_000).await;
    let full = Arc::clone(&metrics);
    wait_until("redis full", Duration::from_secs(30), || {
        full.redis_full.get() == 1
    })
    .await;
    assert_held_back_while_full(&env, &config, &metrics).await;
    // Runners that met the refusal exited as outages (never as poison): their batches are
    // retried whole once Redis takes the settle.
    let outage = Arc::clone(&metrics);
    wait_until("a runner's outage", Duration::from_secs(30), || {
        outage.outages.get() >= 1
    })
    .await;

    run(&env, redis::cmd("DEL").arg(&filler)).await;
    assert_all_ok_once(
        &env,
        &ids,
        &metrics,
        "redis writes refused for memory mid-run",
    )
    .await;
    let retried = batches(&env).await;
    assert!(
        retried
            .iter()
            .any(|b| b.get("state").map(String::as_str) == Some("retried")),
        "a batch whose runner met the refusal was retried whole"
    );
    assert!(
        !metrics.health().is_blocked(health::RUNNER),
        "the runners were never blamed for redis"
    );
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}
