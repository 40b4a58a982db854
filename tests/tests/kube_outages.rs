//! Outages are not poison, with the kube launcher against the fake API server: images that
//! cannot be pulled, pods that a quota refuses (`FailedCreate`), pods held unschedulable or in
//! another waiting reason, and a runner that exits with an outage code (the Job's `FailJob`
//! rule), each under load with one real poison message mixed in, then removed without
//! restarting anything (checks in `sluice_tests::outage`). Evictions are no outage at all: the
//! Job controller replaces the pod without spending a retry.

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sluice_tests::fake_kube::FakeKube;
use sluice_tests::guarantee::record;
use sluice_tests::outage::{SETTINGS, outage_then_fix};
use sluice_tests::{Outgoing, TestEnv, binary, require_binaries, spawn_dispatcher, write_script};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "sluice-test";

/// A fake cluster whose pods run `runner`, and the dispatcher's configuration for it, with
/// short graces for stuck pods and pod-less Jobs.
async fn cluster(env: &TestEnv, runner: &Path) -> (FakeKube, sluice_dispatcher::Config) {
    let (fake, kube) = FakeKube::for_test(env, runner, NAMESPACE).await.unwrap();
    let mut vars: Vec<(&str, &str)> = kube.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.extend(SETTINGS);
    vars.extend([
        ("POD_STUCK_SECONDS", "1"),
        ("POD_CREATE_SECONDS", "2"),
        // Failed Jobs are kept for their logs until this TTL.
        ("JOB_TTL_SECONDS", "1"),
    ]);
    (fake, env.config(&vars).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_that_cannot_be_pulled_dead_letter_nothing_and_pods_run_once_they_are_there() {
    require_binaries().unwrap();
    let env = TestEnv::new("kube-outage-image").await.unwrap();
    let (fake, config) = cluster(&env, &binary("runner")).await;
    fake.images_missing(true);
    outage_then_fix(
        "kube: image cannot be pulled (ErrImagePull)",
        &env,
        config,
        || fake.images_missing(false),
        "ImagePull",
    )
    .await;
    // Stuck Jobs are deleted at once; the poison message's failed Job after its TTL.
    for _ in 0..100 {
        if fake.job_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.job_count(), 0, "every Job deleted, stuck ones too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_refused_by_a_quota_dead_letter_nothing_and_run_once_it_has_room() {
    require_binaries().unwrap();
    let env = TestEnv::new("kube-outage-quota").await.unwrap();
    let (fake, config) = cluster(&env, &binary("runner")).await;
    fake.refuse_pods(true);
    outage_then_fix(
        "kube: pods refused (FailedCreate)",
        &env,
        config,
        || fake.refuse_pods(false),
        "FailedCreate",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_exiting_with_an_outage_code_fails_its_job_at_once_and_is_retried_whole() {
    require_binaries().unwrap();
    let env = TestEnv::new("kube-outage-exit").await.unwrap();
    let flag = std::env::temp_dir().join(format!("{}-broken", env.prefix));
    std::fs::write(&flag, "").unwrap();
    let runner = broken_runner(&env, &flag);
    let (_fake, config) = cluster(&env, &runner).await;
    // The reason is the FailJob rule's: the Job failed at its first pod, no retry spent.
    outage_then_fix(
        "kube: runner exits 78 (FailJob rule)",
        &env,
        config,
        || std::fs::remove_file(&flag).unwrap(),
        "exit code 78 matching FailJob rule",
    )
    .await;
    let _ = std::fs::remove_file(runner);
}

/// A runner that exits 78 while `flag` exists, else runs the real runner.
fn broken_runner(env: &TestEnv, flag: &Path) -> PathBuf {
    let script = std::env::temp_dir().join(format!("{}-runner.sh", env.prefix));
    let text = format!(
        "#!/bin/sh\n[ -e '{}' ] && exit 78\nexec '{}'\n",
        flag.display(),
        binary("runner").display()
    );
    write_script(&script, &text).unwrap();
    script
}

/// Pods held in `reason` until released: an outage named by that reason.
async fn held(reason: &str) {
    require_binaries().unwrap();
    let env = TestEnv::new(&format!("kube-held-{}", reason.to_lowercase()))
        .await
        .unwrap();
    let (fake, config) = cluster(&env, &binary("runner")).await;
    fake.hold_pods(Some(reason));
    outage_then_fix(
        &format!("kube: pods held ({reason})"),
        &env,
        config,
        || fake.hold_pods(None),
        reason,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_image_name_is_an_outage() {
    held("InvalidImageName").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_or_config_map_is_an_outage() {
    held("CreateContainerConfigError").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_no_node_can_take_are_an_outage() {
    held("Unschedulable").await;
}

/// A node drain evicts running pods three times under load: the Job's policy ignores the
/// `DisruptionTarget` failures, so no retry is spent, nothing is split or retried by the
/// dispatcher, and only the poison message ends dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_pods_are_replaced_without_a_retry_and_nothing_is_lost() {
    require_binaries().unwrap();
    let env = TestEnv::new("kube-evict").await.unwrap();
    let (fake, config) = cluster(&env, &binary("runner")).await;
    let mut ids: Vec<String> = (0..60).map(|i| format!("e{i}")).collect();
    let mut messages: Vec<Outgoing> = ids
        .iter()
        .map(|id| Outgoing::json(&json!({"id": id, "kernel": "sleep", "input": {"ms": 150}})))
        .collect();
    messages.push(Outgoing::json(
        &json!({"id": "poison", "kernel": "crash", "input": "x"}),
    ));
    ids.push("poison".into());
    env.publish(&messages).await.unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    let mut evictions = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while evictions < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no Job became active within 60 s"
        );
        if fake.stats().peak_active > 0 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            fake.evict_running_pods();
            evictions += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let figures = env.figures(&ids, Duration::from_secs(120)).await.unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    let evicted = fake.stats().evicted;
    assert!(evicted >= 1, "the drains evicted running pods");
    record(
        "kube: running pods evicted (3 drains)",
        evicted as usize,
        &figures,
    );
    assert_eq!((figures.lost, figures.duplicated), (0, 0), "{figures:?}");
    assert_eq!(figures.dead, 1, "only the poison message: {figures:?}");
    let mut con = env.redis().await.unwrap();
    let retried: Vec<String> =
        redis::AsyncCommands::keys(&mut con, format!("{}:batch:*", env.prefix))
            .await
            .unwrap();
    for key in retried.iter().filter(|k| k.matches(':').count() == 2) {
        let state: Option<String> = redis::AsyncCommands::hget(&mut con, key, "state")
            .await
            .unwrap();
        assert_ne!(
            state.as_deref(),
            Some("retried"),
            "an eviction is no outage: {key}"
        );
    }
    env.cleanup().await.unwrap();
}
