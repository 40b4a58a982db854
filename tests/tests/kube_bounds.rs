//! No hang and no crash loop, with the kube launcher against the fake API server: a Job whose
//! delete the watch missed, Jobs created suspended that nothing admits, creates refused for
//! good (403, 422) at run time and at start-up recovery, a failed Job whose pod is stuck
//! terminating, and failed Jobs kept until their TTL for their logs. Every message is checked:
//! none lost, none duplicated, none dead but the poison one.

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sluice_dispatcher::Config;
use sluice_dispatcher::metrics::Metrics;
use sluice_tests::fake_kube::FakeKube;
use sluice_tests::outage::{
    POISON, SETTINGS, batches, fix_and_check, outage_then_fix, publish_workload,
    wait_until_held_back,
};
use sluice_tests::{Outgoing, TestEnv, binary, require_binaries, spawn_dispatcher_with};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "sluice-bounds";

/// A fake cluster and the dispatcher's configuration for it: the outage settings, quick
/// checks on late Jobs (`JOB_SLACK_SECONDS` 1) and `extra`.
async fn cluster(env: &TestEnv, extra: &[(&str, &str)]) -> (FakeKube, Config) {
    let (fake, kube) = FakeKube::for_test(env, &binary("runner"), NAMESPACE)
        .await
        .unwrap();
    let mut vars: Vec<(&str, &str)> = kube.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.extend(SETTINGS);
    vars.extend([("JOB_SLACK_SECONDS", "1"), ("JOB_TTL_SECONDS", "1")]);
    vars.extend_from_slice(extra);
    (fake, env.config(&vars).unwrap())
}

async fn eventually(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The reasons of the test's batches with `state`.
async fn reasons(env: &TestEnv, state: &str) -> Vec<String> {
    batches(env)
        .await
        .into_iter()
        .filter(|b| b.get("state").map(String::as_str) == Some(state))
        .map(|b| b.get("reason").cloned().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_delete_the_watch_missed_is_found_gone_and_its_batch_retried_whole() {
    require_binaries().unwrap();
    let env = TestEnv::new("bounds-lost").await.unwrap();
    let (fake, config) = cluster(&env, &[]).await;
    // Slow work, so the first Job is still running when it is lost.
    let ids: Vec<String> = (0..60).map(|i| format!("s{i}")).collect();
    let messages: Vec<Outgoing> = ids
        .iter()
        .map(|id| Outgoing::json(&json!({"id": id, "kernel": "sleep", "input": {"ms": 100}})))
        .collect();
    env.publish(&messages).await.unwrap();
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let dispatcher = spawn_dispatcher_with(config, Arc::clone(&metrics), stop.clone());
    eventually("a Job runs", Duration::from_secs(30), async || {
        !fake.stats().pods.is_empty()
    })
    .await;
    let lost = fake.job_names().pop().unwrap();
    assert!(
        fake.lose_job(NAMESPACE, &lost),
        "{lost} removed without an event"
    );

    let figures = env.figures(&ids, Duration::from_secs(120)).await.unwrap();
    assert_eq!(
        (figures.lost, figures.duplicated, figures.dead),
        (0, 0, 0),
        "{figures:?}"
    );
    for id in &ids {
        assert_eq!(env.result(id).await.unwrap()["status"], "ok", "{id}");
    }
    let retried = reasons(&env, "retried").await;
    assert!(
        retried.iter().any(|r| r.starts_with("JobLost")),
        "the lost Job's batch was retried whole: {retried:?}"
    );
    assert!(fake.stats().gets > 0, "found by a direct read");
    assert_eq!(metrics.health().live(std::time::Instant::now()), Ok(()));
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_jobs_nothing_admits_block_readiness_naming_kueue_and_run_once_admitted() {
    require_binaries().unwrap();
    let env = TestEnv::new("bounds-kueue").await.unwrap();
    let settings = [
        ("KUEUE_QUEUE", "team-a"),
        ("JOB_DEADLINE_SECONDS", "3"),
        ("JOB_WAIT_SECONDS", "5"),
    ];
    let (fake, config) = cluster(&env, &settings).await;
    let name = "kube: Jobs suspended, never admitted (no Kueue)";
    let ids = publish_workload(&env).await;
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let dispatcher = spawn_dispatcher_with(config.clone(), Arc::clone(&metrics), stop.clone());
    eventually(
        "readiness names Kueue",
        Duration::from_secs(30),
        async || {
            metrics.health().ready().is_err_and(|r| {
                r.contains("admission:") && r.contains("Kueue") && r.contains("team-a")
            })
        },
    )
    .await;
    // Given up on at JOB_WAIT_SECONDS and retried whole, until the breaker holds back.
    wait_until_held_back(name, &env, &config, "NotAdmitted", Duration::from_secs(120)).await;
    fix_and_check(name, &env, &config, &ids, || fake.admit_suspended(true)).await;
    eventually("ready again", Duration::from_secs(30), async || {
        metrics.health().ready().is_ok()
    })
    .await;
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_refused_as_invalid_settle_their_batches_and_the_dispatcher_goes_on() {
    require_binaries().unwrap();
    let env = TestEnv::new("bounds-422").await.unwrap();
    let (fake, config) = cluster(&env, &[]).await;
    fake.refuse_creates(Some(422));
    let fix = || fake.refuse_creates(None);
    outage_then_fix(
        "kube: Job create refused (422)",
        &env,
        config,
        fix,
        "is invalid",
    )
    .await;
    assert!(fake.stats().refused_creates >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_refused_by_a_quota_never_crash_loop_the_dispatcher_even_at_start_up() {
    require_binaries().unwrap();
    let env = TestEnv::new("bounds-403").await.unwrap();
    let (fake, config) = cluster(&env, &[]).await;
    let name = "kube: Job create refused (403 quota), dispatcher restarted";
    fake.refuse_creates(Some(403));
    let ids = publish_workload(&env).await;
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let first = spawn_dispatcher_with(config.clone(), Arc::clone(&metrics), stop.clone());
    wait_until_held_back(
        name,
        &env,
        &config,
        "exceeded quota",
        Duration::from_secs(120),
    )
    .await;
    assert!(metrics.render().contains("sluice_launch_refusals_total"));
    stop.cancel();
    first.await.unwrap().unwrap();

    // A restart recovers the open batches into the same refusal: it must keep running.
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let second = spawn_dispatcher_with(config.clone(), Arc::clone(&metrics), stop.clone());
    let refused = fake.stats().refused_creates;
    eventually(
        "the restart meets the refusal",
        Duration::from_secs(30),
        async || fake.stats().refused_creates > refused,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !second.is_finished(),
        "the dispatcher goes on after a refusal at start-up"
    );
    fix_and_check(name, &env, &config, &ids, || fake.refuse_creates(None)).await;
    stop.cancel();
    second.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_whose_pods_are_stuck_terminating_still_settle_and_are_deleted() {
    require_binaries().unwrap();
    let env = TestEnv::new("bounds-terminating").await.unwrap();
    let (fake, config) = cluster(&env, &[]).await;
    fake.pods_stuck_terminating(true);
    let ids = publish_workload(&env).await;
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let dispatcher = spawn_dispatcher_with(config, metrics, stop.clone());
    let figures = env.figures(&ids, Duration::from_secs(120)).await.unwrap();
    assert_eq!(
        (figures.lost, figures.duplicated, figures.dead),
        (0, 0, 1),
        "{figures:?}"
    );
    let poison = env.result(POISON).await.unwrap();
    assert!(poison["error"].contains("signal 6"), "{poison:?}");
    // Never `Failed`, so never reaped by the TTL: the dispatcher deletes them.
    eventually(
        "the stuck Jobs are deleted",
        Duration::from_secs(30),
        async || fake.job_count() == 0,
    )
    .await;
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_kept_until_its_ttl_so_its_logs_can_be_read() {
    require_binaries().unwrap();
    let env = TestEnv::new("bounds-ttl").await.unwrap();
    let settings = [
        ("BATCH_MAX_MESSAGES", "1"),
        ("JOB_BACKOFF_LIMIT", "0"),
        ("JOB_TTL_SECONDS", "4"),
    ];
    let (fake, config) = cluster(&env, &settings).await;
    let poison = Outgoing::json(&json!({"id": POISON, "kernel": "crash", "input": null}));
    env.publish(&[poison]).await.unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher_with(config, Arc::new(Metrics::new()), stop.clone());
    let ids = [POISON.to_owned()];
    let figures = env.figures(&ids, Duration::from_secs(60)).await.unwrap();
    assert_eq!(figures.dead, 1, "{figures:?}");
    let kept = fake.job_names();
    assert!(
        kept.iter()
            .any(|job| fake.has_condition(NAMESPACE, job, "Failed")),
        "the failed Job is still there after its batch settled: {kept:?}"
    );
    eventually("the TTL deletes it", Duration::from_secs(30), async || {
        fake.job_count() == 0
    })
    .await;
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}
