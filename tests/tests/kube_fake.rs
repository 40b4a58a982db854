//! The kube launcher end to end against the in-repo fake API server (kubeconfig pointing at
//! it): real RabbitMQ, real Redis, runner processes started by the fake Job controller.

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sluice_tests::cases::{echoes, mixed};
use sluice_tests::fake_kube::FakeKube;
use sluice_tests::guarantee::record;
use sluice_tests::{Outgoing, TestEnv, binary, require_binaries, spawn_dispatcher};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "sluice-test";

/// A fake cluster for `env`, and the kubeconfig that points at it.
async fn cluster(env: &TestEnv) -> (FakeKube, PathBuf) {
    let secrets = HashMap::from([(
        ("sluice-redis".to_owned(), "url".to_owned()),
        env.redis_url.clone(),
    )]);
    let pass_through = vec![("SLUICE_TEST_KERNELS".to_owned(), "1".to_owned())];
    let fake = FakeKube::start(&binary("runner"), secrets, pass_through)
        .await
        .unwrap();
    let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", env.prefix));
    fake.write_kubeconfig(&kubeconfig, NAMESPACE).unwrap();
    (fake, kubeconfig)
}

fn kube_config(
    env: &TestEnv,
    kubeconfig: &std::path::Path,
    extra: &[(&str, &str)],
) -> sluice_dispatcher::Config {
    let path = kubeconfig.display().to_string();
    let mut vars = vec![
        ("LAUNCHER", "kube"),
        ("KUBECONFIG", path.as_str()),
        ("NAMESPACE", NAMESPACE),
        // Failed Jobs are kept for their logs until this TTL.
        ("JOB_TTL_SECONDS", "1"),
    ];
    vars.extend_from_slice(extra);
    env.config(&vars).unwrap()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_mixed_messages_through_the_kube_launcher() {
    require_binaries().unwrap();
    let env = TestEnv::new("kube-mixed").await.unwrap();
    let (fake, kubeconfig) = cluster(&env).await;
    let config = kube_config(
        &env,
        &kubeconfig,
        &[
            ("BATCH_MAX_MESSAGES", "50"),
            ("BATCH_LINGER_MS", "100"),
            ("MAX_JOBS_IN_FLIGHT", "3"),
            ("MAX_MESSAGE_BYTES", "4096"),
        ],
    );
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    let cases = mixed(500);
    env.run_cases(&cases, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(env.stream_len().await.unwrap(), 500);

    // Each batch got exactly one Job and one pod; finished Jobs are deleted once recorded.
    wait_until("every finished Job is deleted", || fake.job_count() == 0).await;
    let stats = fake.stats();
    assert_eq!(
        stats.creates.len(),
        10,
        "500 messages in batches of 50: {stats:?}"
    );
    assert!(
        stats.creates.values().all(|&n| n == 1) && stats.pods.values().all(|&n| n == 1),
        "{stats:?}"
    );
    assert!(
        stats.peak_active <= 3,
        "MAX_JOBS_IN_FLIGHT exceeded: {stats:?}"
    );
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_restarted_while_jobs_run_adopts_them_and_loses_nothing() {
    require_binaries().unwrap();
    let env = TestEnv::new("kube-restart").await.unwrap();
    let (fake, kubeconfig) = cluster(&env).await;
    let extra = [
        ("BATCH_MAX_MESSAGES", "10"),
        ("MAX_JOBS_IN_FLIGHT", "3"),
        ("SHUTDOWN_GRACE_SECONDS", "0"),
    ];
    let ids: Vec<String> = (0..150).map(|i| format!("k{i}")).collect();
    let messages: Vec<Outgoing> = ids
        .iter()
        .map(|id| Outgoing::json(&json!({"id": id, "kernel": "sleep", "input": {"ms": 60}})))
        .collect();
    env.publish(&messages).await.unwrap();

    let first = CancellationToken::new();
    let dispatcher = spawn_dispatcher(kube_config(&env, &kubeconfig, &extra), first.clone());
    wait_until("three Jobs are running", || fake.stats().creates.len() >= 4).await;
    first.cancel();
    let summary = dispatcher.await.unwrap().unwrap();
    assert!(
        summary.abandoned > 0,
        "the first dispatcher left Jobs running: {summary:?}"
    );

    let second = CancellationToken::new();
    let dispatcher = spawn_dispatcher(kube_config(&env, &kubeconfig, &extra), second.clone());
    env.wait_for_results(&ids, Duration::from_secs(120))
        .await
        .unwrap();
    wait_until("every finished Job is deleted", || fake.job_count() == 0).await;
    second.cancel();
    dispatcher.await.unwrap().unwrap();

    let stats = fake.stats();
    assert!(
        stats.conflicts >= 1,
        "the restarted dispatcher adopted running Jobs (409): {stats:?}"
    );
    assert!(
        stats.creates.values().all(|&n| n == 1),
        "one Job per batch: {stats:?}"
    );
    assert!(
        stats.pods.values().all(|&n| n == 1),
        "nothing run twice: {stats:?}"
    );
    assert!(
        stats.peak_active <= 3,
        "in-flight count recovered across the restart: {stats:?}"
    );
    assert_eq!(
        env.stream_len().await.unwrap(),
        150,
        "one result per message"
    );
    let figures = env.figures(&ids, Duration::from_secs(1)).await.unwrap();
    record("kube: dispatcher restarted while Jobs run", 1, &figures);
    assert_eq!((figures.lost, figures.duplicated), (0, 0), "{figures:?}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_errors_are_retried_and_nothing_is_lost() {
    require_binaries().unwrap();
    let env = TestEnv::new("kube-faults").await.unwrap();
    let (fake, kubeconfig) = cluster(&env).await;
    fake.fail_for(500, Duration::from_secs(3));
    let config = kube_config(
        &env,
        &kubeconfig,
        &[("BATCH_MAX_MESSAGES", "20"), ("BATCH_LINGER_MS", "50")],
    );
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    let (ids, messages) = echoes("f", 200);
    env.publish(&messages[..100]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    fake.fail_for(429, Duration::from_secs(2));
    env.publish(&messages[100..]).await.unwrap();

    let results = env
        .wait_for_results(&ids, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(
        ids.iter()
            .all(|id| results[id]["output"] == format!("\"{id}\""))
    );
    assert_eq!(env.stream_len().await.unwrap(), 200);
    let stats = fake.stats();
    assert!(stats.faults > 0, "faults were injected: {stats:?}");
    let figures = env.figures(&ids, Duration::from_secs(1)).await.unwrap();
    record(
        "kube: API server answering 500 (3 s), then 429 (2 s)",
        stats.faults as usize,
        &figures,
    );
    assert_eq!((figures.lost, figures.duplicated), (0, 0), "{figures:?}");
    assert!(stats.creates.values().all(|&n| n == 1), "{stats:?}");
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_deleted_while_the_watch_is_down_is_settled_after_the_410_relist() {
    require_binaries().unwrap();
    let env = TestEnv::new("kube-watch-gap").await.unwrap();
    let (fake, kubeconfig) = cluster(&env).await;
    // One batch of four slow messages (fixed size), so the deleted Job holds all of them.
    let extra = [
        ("BATCH_MODE", "fixed"),
        ("BATCH_MAX_MESSAGES", "4"),
        ("MAX_JOBS_IN_FLIGHT", "2"),
    ];
    let ids: Vec<String> = (0..4).map(|i| format!("gap{i}")).collect();
    let messages: Vec<Outgoing> = ids
        .iter()
        .map(|id| Outgoing::json(&json!({"id": id, "kernel": "sleep", "input": {"ms": 1500}})))
        .collect();
    env.publish(&messages).await.unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(kube_config(&env, &kubeconfig, &extra), stop.clone());
    wait_until("the batch's pod runs", || !fake.stats().pods.is_empty()).await;

    // The watch goes down; while it is down the Job is deleted and the history compacted, so
    // no Delete event can ever be replayed: only the re-list after 410 Gone can tell.
    // The outage lasts until restored, so the order holds however loaded the machine is.
    fake.cut_watches_for(Duration::from_secs(600));
    let name = fake.job_names().pop().unwrap();
    assert!(fake.delete_job(NAMESPACE, &name));
    fake.compact();
    tokio::time::sleep(Duration::from_secs(1)).await;
    fake.restore_watches();

    env.wait_for_results(&ids, Duration::from_secs(60))
        .await
        .unwrap();
    wait_until("every finished Job is deleted", || fake.job_count() == 0).await;
    stop.cancel();
    dispatcher.await.unwrap().unwrap();

    let stats = fake.stats();
    assert!(stats.watch_refusals >= 1, "the watch was down: {stats:?}");
    assert!(
        stats.gone >= 1,
        "the watch resumed into 410 Gone: {stats:?}"
    );
    assert_eq!(
        stats.creates.len(),
        2,
        "the deleted batch settled once, as an outage, and was retried whole (never split): {stats:?}"
    );
    for id in &ids {
        let result = env.result(id).await.unwrap();
        assert_eq!(
            result.get("status").map(String::as_str),
            Some("ok"),
            "{id}: {result:?}"
        );
    }
    let figures = env.figures(&ids, Duration::from_secs(1)).await.unwrap();
    record("kube: Job deleted while the watch was down", 1, &figures);
    assert_eq!((figures.lost, figures.duplicated), (0, 0), "{figures:?}");
    env.cleanup().await.unwrap();
}
