//! The local launcher behaves like the Job controller: exact environment, retries up to
//! `backoffLimit`, a kill at `activeDeadlineSeconds`.

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use sluice_dispatcher::launcher::{self, Cause, FailureKind, Launcher, Outcome};
use sluice_dispatcher::{Config, job};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sluice-launcher-{name}-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// A fake runner: a shell script with `body`, `$DIR` standing for the fixture folder.
    fn runner(&self, body: &str) -> String {
        let path = self.dir.join("runner.sh");
        let text = format!("#!/bin/sh\nDIR='{}'\n{body}\n", self.dir.display());
        sluice_tests::write_script(&path, &text).unwrap();
        path.display().to_string()
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }
}

/// A local launcher running `runner`, with `extra` variables.
async fn local_launcher(
    runner: &str,
    extra: &[(&str, &str)],
) -> (Config, Box<dyn Launcher>, CancellationToken) {
    let mut vars = vec![
        ("RUNNER_BIN", runner),
        ("LAUNCHER", "local"),
        ("REDIS_URL", "redis://:secret@127.0.0.1:6379/"),
        ("SLUICE_TEST_KERNELS", "1"),
    ];
    vars.extend_from_slice(extra);
    let config =
        Config::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))).unwrap();
    let abandon = CancellationToken::new();
    let launcher = launcher::from_config(&config, abandon.clone(), Arc::default())
        .await
        .unwrap();
    (config, launcher, abandon)
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn the_runner_gets_exactly_the_jobs_environment_with_secrets_resolved() {
    let fx = Fixture::new("env");
    let runner = fx.runner("env > \"$DIR/env\"");
    let settings = [
        ("RUNNER_CPU", "2"),
        ("REDIS_RETRY_SECONDS", "7"),
        ("RESULT_CHUNK", "9"),
        ("RESULT_FLUSH_MS", "11"),
    ];
    let (config, launcher, _) = local_launcher(&runner, &settings).await;
    let outcome = launcher
        .launch(&job::build(&config, "b-env"))
        .await
        .unwrap()
        .await;
    assert_eq!(outcome, Outcome::Succeeded);

    let env = fx.read("env");
    let mut names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !["PWD", "SHLVL", "_", "OLDPWD"].contains(k)) // added by sh itself
        .collect();
    names.sort_unstable();
    let expected = [
        "BATCH_ID",
        "DEFAULT_KERNEL",
        "KEY_PREFIX",
        "MAX_MESSAGE_BYTES",
        // The dispatcher's own, so that exec kernels' commands are found as in an image.
        "PATH",
        "RAYON_NUM_THREADS",
        "REDIS_RETRY_SECONDS",
        "REDIS_URL",
        "RESULTS_MAXLEN",
        "RESULT_CHUNK",
        "RESULT_FLUSH_MS",
        "RESULT_TTL_SECONDS",
        "RUST_LOG",
        "SLUICE_TEST_KERNELS",
    ];
    assert_eq!(names, expected);
    let path = format!("PATH={}", std::env::var("PATH").unwrap_or_default());
    assert!(env.lines().any(|l| l == path), "{env}");
    // The dispatcher's settings for runners reach them, not the runner's own defaults.
    for line in [
        "REDIS_RETRY_SECONDS=7",
        "RESULT_CHUNK=9",
        "RESULT_FLUSH_MS=11",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} in {env}");
    }
    assert!(
        env.contains("REDIS_URL=redis://:secret@127.0.0.1:6379/"),
        "secretKeyRef resolved"
    );
    assert!(env.contains("BATCH_ID=b-env") && env.contains("RAYON_NUM_THREADS=2"));
}

#[tokio::test]
async fn a_failing_run_is_retried_up_to_the_backoff_limit() {
    let fx = Fixture::new("retry");
    // Fails on the first two attempts, succeeds on the third.
    let runner =
        fx.runner("echo x >> \"$DIR/attempts\"\n[ $(wc -l < \"$DIR/attempts\") -ge 3 ] || exit 7");
    let (config, launcher, _) = local_launcher(&runner, &[("JOB_BACKOFF_LIMIT", "2")]).await;
    assert_eq!(
        launcher
            .launch(&job::build(&config, "b"))
            .await
            .unwrap()
            .await,
        Outcome::Succeeded
    );
    assert_eq!(fx.read("attempts").lines().count(), 3);

    let fx = Fixture::new("retry-limit");
    let runner = fx.runner("echo x >> \"$DIR/attempts\"\nexit 7");
    let (config, launcher, _) = local_launcher(&runner, &[("JOB_BACKOFF_LIMIT", "1")]).await;
    let outcome = launcher
        .launch(&job::build(&config, "b"))
        .await
        .unwrap()
        .await;
    assert_eq!(
        outcome,
        Outcome::failed(
            FailureKind::BackoffLimitExceeded,
            "BackoffLimitExceeded: exit code 7"
        )
    );
    assert_eq!(
        fx.read("attempts").lines().count(),
        2,
        "backoffLimit 1 means two attempts"
    );
}

#[tokio::test]
async fn a_runner_that_cannot_do_its_work_fails_the_job_at_once_as_an_outage() {
    let fx = Fixture::new("outage-code");
    let runner = fx.runner(
        "echo x >> \"$DIR/attempts\"\necho 'line one' >&2\necho 'redis: connection refused' >&2\nexit 69",
    );
    let (config, launcher, _) = local_launcher(&runner, &[("JOB_BACKOFF_LIMIT", "3")]).await;
    let outcome = launcher
        .launch(&job::build(&config, "b"))
        .await
        .unwrap()
        .await;
    assert_eq!(
        outcome,
        Outcome::failed(
            FailureKind::OutageExit,
            "PodFailurePolicy: the runner could not do its work: exit code 69; \
             last output: line one | redis: connection refused"
        )
    );
    assert_eq!(
        fx.read("attempts").lines().count(),
        1,
        "no retry spent on an outage"
    );
}

#[tokio::test]
async fn a_run_past_the_deadline_is_killed() {
    let fx = Fixture::new("deadline");
    let runner = fx.runner("echo $$ > \"$DIR/pid\"\nexec sleep 60");
    let (config, launcher, _) = local_launcher(&runner, &[("JOB_DEADLINE_SECONDS", "1")]).await;
    let outcome = launcher
        .launch(&job::build(&config, "b"))
        .await
        .unwrap()
        .await;
    assert!(
        matches!(&outcome, Outcome::Failed(f) if f.kind == FailureKind::DeadlineExceeded && f.cause() == Cause::Crash),
        "{outcome:?}"
    );
    let pid = fx.read("pid").trim().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z "),
        "runner {pid} still alive: {state}"
    );
}

#[tokio::test]
async fn abandoning_stops_waiting_and_kills_the_run() {
    let fx = Fixture::new("abandon");
    let runner = fx.runner("exec sleep 60");
    let (config, launcher, abandon) = local_launcher(&runner, &[]).await;
    let running = launcher.launch(&job::build(&config, "b")).await.unwrap();
    abandon.cancel();
    assert_eq!(running.await, Outcome::Abandoned);
}

#[tokio::test]
async fn a_missing_runner_binary_is_a_start_up_error() {
    let config =
        Config::from_vars([("RUNNER_BIN".to_owned(), "/nonexistent/runner".to_owned())]).unwrap();
    let err = launcher::from_config(&config, CancellationToken::new(), Arc::default())
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("RUNNER_BIN /nonexistent/runner not found"),
        "{err}"
    );
}
