//! Outages are not poison, with the kube launcher against the fake API server: images that
//! cannot be pulled, pods that a quota refuses (`FailedCreate`), and a runner that exits with
//! an outage code (the Job's `FailJob` rule), each under load with one real poison message
//! mixed in, then removed without restarting anything (checks in `sluice_tests::outage`).

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use sluice_tests::fake_kube::FakeKube;
use sluice_tests::outage::{SETTINGS, outage_then_fix};
use sluice_tests::{TestEnv, binary, require_binaries, write_script};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const NAMESPACE: &str = "sluice-test";

/// A fake cluster whose pods run `runner`, and the dispatcher's configuration for it, with
/// short graces for stuck pods and pod-less Jobs.
async fn cluster(env: &TestEnv, runner: &Path) -> (FakeKube, sluice_dispatcher::Config) {
    let secrets = HashMap::from([(
        ("sluice-redis".to_owned(), "url".to_owned()),
        env.redis_url.clone(),
    )]);
    let pass_through = vec![("SLUICE_TEST_KERNELS".to_owned(), "1".to_owned())];
    let fake = FakeKube::start(runner, secrets, pass_through)
        .await
        .unwrap();
    let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", env.prefix));
    fake.write_kubeconfig(&kubeconfig, NAMESPACE).unwrap();
    let path = kubeconfig.display().to_string();
    let mut vars = SETTINGS.to_vec();
    vars.extend([
        ("LAUNCHER", "kube"),
        ("KUBECONFIG", path.as_str()),
        ("NAMESPACE", NAMESPACE),
        ("POD_STUCK_SECONDS", "1"),
        ("POD_CREATE_SECONDS", "2"),
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
