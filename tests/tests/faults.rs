//! Fault injection against real RabbitMQ and Redis. Every test ends by checking the guarantee
//! message by message (one result and one stream entry each: 0 lost, 0 duplicated) and
//! records its figures for the reliability table.

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sluice_contract::{Keys, StagedMessage};
use sluice_dispatcher::stage::Stager;
use sluice_tests::cases::sleepers;
use sluice_tests::guarantee::{Figures, record};
use sluice_tests::proxy::Proxy;
use sluice_tests::{Outgoing, TestEnv, binary, require_binaries, spawn_dispatcher, write_script};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SETTLE: Duration = Duration::from_secs(120);

fn assert_guarantee(fault: &str, injected: usize, figures: &Figures) {
    record(fault, injected, figures);
    assert_eq!(
        (figures.lost, figures.duplicated),
        (0, 0),
        "{fault}: {figures:?}"
    );
}

/// Finishes what is left with a fresh in-process dispatcher, then checks every message.
async fn drain_and_check(env: &TestEnv, ids: &[String], extra: &[(&str, &str)]) -> Figures {
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(env.config(extra).unwrap(), stop.clone());
    let figures = env.figures(ids, SETTLE).await.unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    figures
}

async fn ok_count(env: &TestEnv) -> u64 {
    env.stats().await.unwrap().get("ok").copied().unwrap_or(0)
}

/// Waits until at least `n` results are `ok`, failing after [`SETTLE`].
async fn until_ok(env: &TestEnv, n: u64) {
    let deadline = std::time::Instant::now() + SETTLE;
    while ok_count(env).await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {n} results within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_sigkilled_at_each_dangerous_point_loses_and_duplicates_nothing() {
    require_binaries().unwrap();
    let env = TestEnv::new("kill-points").await.unwrap();
    let (ids, messages) = sleepers("p", 400, 10);
    env.publish(&messages).await.unwrap();
    let extra = [("BATCH_MAX_MESSAGES", "20"), ("MAX_JOBS_IN_FLIGHT", "2")];
    let points = [
        "before-stage@2",
        "before-launch@2",
        "before-ack@2",
        "after-ack@3",
    ];
    for point in points {
        let mut child = tokio::process::Command::new(binary("dispatcher"))
            .env_clear()
            .envs(env.vars())
            .envs(extra)
            .env("SLUICE_FAILPOINT", point)
            .spawn()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: the dispatcher was SIGKILLed ({status})"
        );
    }
    let figures = drain_and_check(&env, &ids, &extra).await;
    assert_guarantee(
        "dispatcher SIGKILLed at 4 dangerous points",
        points.len(),
        &figures,
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_sigkilled_mid_batch_are_retried_without_loss() {
    require_binaries().unwrap();
    let env = TestEnv::new("kill-runners").await.unwrap();
    let dir = std::env::temp_dir().join(&env.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let wrapper = dir.join("runner.sh");
    let text = format!(
        "#!/bin/sh\necho $$ >> '{}/pids'\nexec '{}'\n",
        dir.display(),
        binary("runner").display()
    );
    write_script(&wrapper, &text).unwrap();
    let wrapper = wrapper.display().to_string();
    let extra = [
        ("BATCH_MAX_MESSAGES", "20"),
        ("JOB_BACKOFF_LIMIT", "6"),
        ("RUNNER_BIN", wrapper.as_str()),
    ];
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(env.config(&extra).unwrap(), stop.clone());
    let (ids, messages) = sleepers("r", 200, 20);
    env.publish(&messages).await.unwrap();

    let mut killed = std::collections::HashSet::new();
    for _ in 0..100 {
        if killed.len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let pids = std::fs::read_to_string(dir.join("pids")).unwrap_or_default();
        let Some(pid) = pids.lines().rev().find(|p| !killed.contains(*p)) else {
            continue;
        };
        if std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status()
            .unwrap()
            .success()
        {
            killed.insert(pid.to_owned());
        }
    }
    let figures = env.figures(&ids, SETTLE).await.unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    assert_guarantee(
        "runner processes SIGKILLed mid-batch",
        killed.len(),
        &figures,
    );
    assert!(!killed.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await.unwrap();
}

/// Cuts the dispatcher's connection through `proxy` twice while work is under way.
async fn cut_twice(
    env: &TestEnv,
    proxy: &Proxy,
    ids: &[String],
    extra: &[(&str, &str)],
) -> Figures {
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(env.config(extra).unwrap(), stop.clone());
    for (after, down) in [(20, 4), (150, 3)] {
        until_ok(env, after).await;
        proxy.cut(Duration::from_secs(down));
    }
    let figures = env.figures(ids, SETTLE).await.unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_rabbitmq_connection_loses_and_duplicates_nothing() {
    require_binaries().unwrap();
    let env = TestEnv::new("cut-amqp").await.unwrap();
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap())
        .await
        .unwrap();
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port());
    let (ids, messages) = sleepers("a", 300, 10);
    env.publish(&messages).await.unwrap();
    let figures = cut_twice(
        &env,
        &proxy,
        &ids,
        &[("AMQP_URL", &url), ("BATCH_MAX_MESSAGES", "10")],
    )
    .await;
    assert_guarantee(
        "RabbitMQ connection cut (4 s, then 3 s)",
        proxy.cuts(),
        &figures,
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_redis_connection_loses_and_duplicates_nothing() {
    require_binaries().unwrap();
    let env = TestEnv::new("cut-redis").await.unwrap();
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap())
        .await
        .unwrap();
    // The dispatcher and, through the local launcher's Secret, every runner use the proxy.
    let url = format!("redis://127.0.0.1:{}/", proxy.port());
    let (ids, messages) = sleepers("d", 300, 10);
    env.publish(&messages).await.unwrap();
    let figures = cut_twice(
        &env,
        &proxy,
        &ids,
        &[("REDIS_URL", &url), ("BATCH_MAX_MESSAGES", "10")],
    )
    .await;
    assert_guarantee(
        "Redis connection cut (4 s, then 3 s)",
        proxy.cuts(),
        &figures,
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_starts_while_redis_is_down_waits_for_it() {
    require_binaries().unwrap();
    let env = TestEnv::new("redis-down").await.unwrap();
    let ids: Vec<String> = (0..50).map(|i| format!("w{i}")).collect();
    let frames: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| {
            let body = json!({"kernel": "echo", "input": id})
                .to_string()
                .into_bytes();
            StagedMessage {
                message_id: Some(id.clone()),
                fallback_id: format!("f-{id}"),
                reply_to: None,
                correlation_id: None,
                dropped_size: None,
                body,
            }
            .encode()
        })
        .collect();
    let stager = Stager::connect(env.redis_client().unwrap(), Keys::new(&env.prefix), 0)
        .await
        .unwrap();
    stager
        .stage("down-1", "sluice-down-1", &frames)
        .await
        .unwrap();
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap())
        .await
        .unwrap();
    proxy.cut(Duration::from_secs(3));
    let status = tokio::process::Command::new(binary("runner"))
        .env_clear()
        .envs([
            ("BATCH_ID", "down-1".to_owned()),
            ("KEY_PREFIX", env.prefix.clone()),
            ("REDIS_URL", format!("redis://127.0.0.1:{}/", proxy.port())),
            ("REDIS_RETRY_SECONDS", "30".to_owned()),
            ("RUST_LOG", "error".to_owned()),
        ])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "the runner waited for Redis: {status}");
    let figures = env.figures(&ids, SETTLE).await.unwrap();
    assert_guarantee("Redis unreachable when a runner starts (3 s)", 1, &figures);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_heavy_load_loses_and_duplicates_nothing() {
    require_binaries().unwrap();
    let env = TestEnv::new("term-load").await.unwrap();
    let ids: Vec<String> = (0..5_000).map(|i| format!("h{i}")).collect();
    let messages: Vec<Outgoing> = ids
        .iter()
        .map(|id| Outgoing::json(&json!({"id": id, "kernel": "modsum", "input": {"n": 200_000}})))
        .collect();
    env.publish(&messages).await.unwrap();
    let extra = [
        ("BATCH_MAX_MESSAGES", "100"),
        ("SHUTDOWN_GRACE_SECONDS", "30"),
    ];
    let mut child = tokio::process::Command::new(binary("dispatcher"))
        .env_clear()
        .envs(env.vars())
        .envs(extra)
        .spawn()
        .unwrap();
    until_ok(&env, 1_000).await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    let figures = drain_and_check(&env, &ids, &extra).await;
    assert_guarantee("SIGTERM under load (5,000 messages)", 1, &figures);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_delivery_stays_unacked_while_its_job_runs() {
    require_binaries().unwrap();
    let env = TestEnv::new("unacked").await.unwrap();
    let extra = [
        ("BATCH_MAX_MESSAGES", "5"),
        ("MAX_JOBS_IN_FLIGHT", "4"),
        ("BATCH_LINGER_MS", "100"),
    ];
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(env.config(&extra).unwrap(), stop.clone());
    // Four batches of five 1.5 s messages: each Job runs ~7.5 s on one thread.
    let (ids, messages) = sleepers("u", 20, 1_500);
    env.publish(&messages).await.unwrap();
    let deadline = std::time::Instant::now() + SETTLE;
    while env
        .stats()
        .await
        .unwrap()
        .get("batches")
        .copied()
        .unwrap_or(0)
        < 4
    {
        assert!(std::time::Instant::now() < deadline, "4 batches staged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ok_count(&env).await, 0, "the Jobs are still running");
    let (ready, unacked) = queue_counts(&env.queue);
    assert_eq!(
        (ready, unacked),
        (0, 0),
        "every delivery of a running Job is already acked"
    );
    let figures = env.figures(&ids, SETTLE).await.unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    assert_guarantee(
        "long Jobs vs consumer_timeout (0 unacked while running)",
        0,
        &figures,
    );
    env.cleanup().await.unwrap();
}

/// Ready and unacknowledged counts of `queue`, as the broker reports them.
fn queue_counts(queue: &str) -> (u64, u64) {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
        .expect("rabbitmqctl is installed with rabbitmq-server");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(queue))
        .unwrap_or_default();
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    (
        fields.first().copied().unwrap_or(u64::MAX),
        fields.get(1).copied().unwrap_or(u64::MAX),
    )
}
