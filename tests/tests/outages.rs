//! Outages are not poison, with the local launcher: each fault makes every runner unable to
//! do its work, under load, with one real poison message mixed in; the fault is then removed
//! without restarting anything (the checks are in `sluice_tests::outage`). The time from the
//! fix to the last result, and the extra Jobs spent isolating the poison message, go to the
//! reliability table (docs/RELIABILITY.md).

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use sluice_tests::outage::{local_config, outage_then_fix, runner_script};
use sluice_tests::proxy::Proxy;
use sluice_tests::{TestEnv, require_binaries};
use std::path::PathBuf;
use std::time::Duration;

/// What stops runners from working, and how it is removed.
enum Fault {
    /// The runner exits before work: with an outage code, or any other code (a wrapper
    /// script's `exit 1`), which only attribution tells from a crash.
    ExitsBeforeWork(PathBuf),
    /// Runners reach Redis through a proxy that refuses every connection.
    RedisUnreachable(Proxy),
}

impl Fault {
    fn fix(&self) {
        match self {
            Self::ExitsBeforeWork(flag) => std::fs::remove_file(flag).unwrap(),
            Self::RedisUnreachable(proxy) => proxy.restore(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_exits_before_work_dead_letters_nothing_and_resumes_once_fixed() {
    require_binaries().unwrap();
    let env = TestEnv::new("outage-exit").await.unwrap();
    let flag = std::env::temp_dir().join(format!("{}-broken", env.prefix));
    std::fs::write(&flag, "").unwrap();
    let runner = runner_script(&env, &flag, 78, &env.redis_url);
    let fault = Fault::ExitsBeforeWork(flag);
    let config = local_config(&env, &runner);
    outage_then_fix(
        "runner exits 78 before work",
        &env,
        config,
        || fault.fix(),
        "exit code 78",
    )
    .await;
    let _ = std::fs::remove_file(runner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_that_cannot_reach_redis_dead_letter_nothing_and_resume_once_it_is_back() {
    require_binaries().unwrap();
    let env = TestEnv::new("outage-redis").await.unwrap();
    let target = env.redis_url.trim_start_matches("redis://");
    let target = target.trim_end_matches('/').parse().unwrap();
    let proxy = Proxy::start(target).await.unwrap();
    proxy.cut(Duration::from_secs(3600));
    let url = format!("redis://127.0.0.1:{}/", proxy.port());
    let never = std::env::temp_dir().join(format!("{}-never", env.prefix));
    let runner = runner_script(&env, &never, 78, &url);
    let fault = Fault::RedisUnreachable(proxy);
    let config = local_config(&env, &runner);
    outage_then_fix(
        "Redis unreachable for every runner",
        &env,
        config,
        || fault.fix(),
        "exit code 69",
    )
    .await;
    let _ = std::fs::remove_file(runner);
}

/// Exit 1 is not an outage code: only attribution (no run ever reached the batch) tells this
/// broken runner from one that crashed on a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_exits_1_before_work_is_an_outage_too_by_attribution() {
    require_binaries().unwrap();
    let env = TestEnv::new("outage-exit1").await.unwrap();
    let flag = std::env::temp_dir().join(format!("{}-broken", env.prefix));
    std::fs::write(&flag, "").unwrap();
    let runner = runner_script(&env, &flag, 1, &env.redis_url);
    let fault = Fault::ExitsBeforeWork(flag);
    let config = local_config(&env, &runner);
    outage_then_fix(
        "runner exits 1 before work",
        &env,
        config,
        || fault.fix(),
        "never reached the batch",
    )
    .await;
    let _ = std::fs::remove_file(runner);
}
