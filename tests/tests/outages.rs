//! Outages are not poison: each fault makes every runner unable to do its work, under load,
//! with one real poison message mixed in; the fault is then removed without restarting
//! anything. Per message: none dead but the poison, every other message exactly one `ok`
//! result, nothing lost or duplicated. The time from the fix to the last result, and the extra
//! Jobs spent isolating the poison message, go to the reliability table (docs/RELIABILITY.md).

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use redis::AsyncCommands;
use serde_json::json;
use sluice_dispatcher::metrics::Metrics;
use sluice_dispatcher::status;
use sluice_tests::guarantee::record;
use sluice_tests::proxy::Proxy;
use sluice_tests::{
    Outgoing, TestEnv, binary, require_binaries, spawn_dispatcher_with, write_script,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const MESSAGES: usize = 240;
const POISON: &str = "poison";

/// What stops runners from working, and how it is removed.
enum Fault {
    /// The runner exits before work, as with a broken configuration (exit 78).
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

/// A `RUNNER_BIN` that exits 78 while `flag` exists, else runs the real runner, with Redis at
/// `redis_url`.
fn runner_script(env: &TestEnv, flag: &Path, redis_url: &str) -> PathBuf {
    let script = std::env::temp_dir().join(format!("{}-runner.sh", env.prefix));
    let text = format!(
        "#!/bin/sh\n[ -e '{flag}' ] && exit 78\nREDIS_URL='{redis_url}' exec '{runner}'\n",
        flag = flag.display(),
        runner = binary("runner").display()
    );
    write_script(&script, &text).unwrap();
    script
}

/// Echo messages with one `crash` message (kills its runner) in the middle.
fn workload() -> (Vec<String>, Vec<Outgoing>) {
    let mut ids: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    ids.insert(MESSAGES / 2, POISON.to_owned());
    let messages = ids
        .iter()
        .map(|id| {
            let kernel = if id == POISON { "crash" } else { "echo" };
            Outgoing::json(&json!({"id": id, "kernel": kernel, "input": id}))
        })
        .collect();
    (ids, messages)
}

/// Every batch hash of the test: its state and parent.
async fn batches(env: &TestEnv) -> Vec<HashMap<String, String>> {
    let mut con = env.redis().await.unwrap();
    let keys: Vec<String> = con.keys(format!("{}:batch:*", env.prefix)).await.unwrap();
    let mut all = Vec::new();
    for key in keys.iter().filter(|k| k.matches(':').count() == 2) {
        let mut batch: HashMap<String, String> = con.hgetall(key).await.unwrap();
        batch.insert("id".into(), key.rsplit(':').next().unwrap().to_owned());
        all.push(batch);
    }
    all
}

fn count(batches: &[HashMap<String, String>], state: &str) -> usize {
    batches.iter().filter(|b| b["state"] == state).count()
}

/// Jobs launched for batches cut from a split: what isolating the poison message cost.
fn poison_jobs(batches: &[HashMap<String, String>]) -> usize {
    let split: Vec<&str> = batches
        .iter()
        .filter(|b| b["state"] == "split")
        .map(|b| b["id"].as_str())
        .collect();
    batches
        .iter()
        .filter(|b| b.get("parent").is_some_and(|p| split.contains(&p.as_str())))
        .count()
}

/// Runs the workload into `fault`, waits until the breaker holds launches back (and says so,
/// with `expected` in its reason), fixes the fault and checks every message.
async fn outage_then_fix(name: &str, env: &TestEnv, fault: Fault, runner: &Path, expected: &str) {
    let runner = runner.display().to_string();
    let extra = [
        ("RUNNER_BIN", runner.as_str()),
        ("BATCH_MODE", "fixed"),
        ("BATCH_MAX_MESSAGES", "20"),
        ("MAX_JOBS_IN_FLIGHT", "2"),
        ("JOB_BACKOFF_LIMIT", "1"),
        ("OUTAGE_THRESHOLD", "3"),
        ("OUTAGE_RETRY_SECONDS", "0.2"),
        ("OUTAGE_RETRY_MAX_SECONDS", "1"),
        ("REDIS_RETRY_SECONDS", "1"),
    ];
    let (ids, messages) = workload();
    env.publish(&messages).await.unwrap();
    let stop = CancellationToken::new();
    let config = env.config(&extra).unwrap();
    let metrics = Arc::new(Metrics::new());
    let dispatcher = spawn_dispatcher_with(config.clone(), Arc::clone(&metrics), stop.clone());

    // The breaker opens: Jobs were retried whole, none split, and the rest waits in RabbitMQ.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = batches(env).await;
        if count(&all, "retried") >= 3 && env.queue_depth().await.unwrap() > 0 {
            assert_eq!(count(&all, "split"), 0, "{name}: an outage split a batch");
            assert_eq!(count(&all, "failed"), 0, "{name}: an outage failed a batch");
            break;
        }
        assert!(Instant::now() < deadline, "{name}: no outage seen: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waiting = env.queue_depth().await.unwrap();
    assert!(waiting > 0, "{name}: consumption paused");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = env.queue_depth().await.unwrap();
    assert!(
        still >= waiting,
        "{name}: nothing consumed while the breaker is open ({waiting} then {still})"
    );

    // It says so: readiness, the metric, and `dispatcher status`, each with the reason.
    let ready = metrics.health().ready().unwrap_err();
    assert!(
        ready.contains("runner:") && ready.contains(expected),
        "{ready}"
    );
    assert!(metrics.render().contains("sluice_runner_healthy 0"));
    let report = status::report(&config).await.unwrap();
    assert_eq!(report.runner["state"], "unhealthy", "{report:?}");
    assert!(report.runner["reason"].contains(expected), "{report:?}");
    assert!(
        report.to_string().contains("runners: UNHEALTHY"),
        "{report}"
    );

    let fixed = Instant::now();
    fault.fix();
    let figures = env.figures(&ids, Duration::from_secs(180)).await.unwrap();
    let recovery = fixed.elapsed();
    let report = status::report(&config).await.unwrap();
    assert_eq!(
        report.runner["state"], "healthy",
        "recovered by itself: {report:?}"
    );
    assert!(metrics.render().contains("sluice_runner_healthy 1"));
    stop.cancel();
    dispatcher.await.unwrap().unwrap();

    let all = batches(env).await;
    let extra_jobs = poison_jobs(&all);
    println!(
        "outage: {name}: {:.1} s from the fix to the last result; {} retried batches; {extra_jobs} extra Jobs for the poison message",
        recovery.as_secs_f64(),
        count(&all, "retried"),
    );
    record(&format!("outage, then fixed: {name}"), 1, &figures);
    assert_eq!((figures.lost, figures.duplicated), (0, 0), "{figures:?}");
    assert_eq!(
        figures.dead, 1,
        "only the poison message is dead: {figures:?}"
    );
    let poison = env.result(POISON).await.unwrap();
    assert_eq!(poison["status"], "dead", "{poison:?}");
    assert!(
        poison["error"].contains("signal 6"),
        "the crash is the reason: {poison:?}"
    );
    for id in ids.iter().filter(|id| *id != POISON) {
        assert_eq!(env.result(id).await.unwrap()["status"], "ok", "{id}");
    }
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_exits_before_work_dead_letters_nothing_and_resumes_once_fixed() {
    require_binaries().unwrap();
    let env = TestEnv::new("outage-exit").await.unwrap();
    let flag = std::env::temp_dir().join(format!("{}-broken", env.prefix));
    std::fs::write(&flag, "").unwrap();
    let runner = runner_script(&env, &flag, &env.redis_url);
    outage_then_fix(
        "runner exits 78 before work",
        &env,
        Fault::ExitsBeforeWork(flag),
        &runner,
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
    let runner = runner_script(&env, &never, &url);
    outage_then_fix(
        "Redis unreachable for every runner",
        &env,
        Fault::RedisUnreachable(proxy),
        &runner,
        "exit code 69",
    )
    .await;
    let _ = std::fs::remove_file(runner);
}
