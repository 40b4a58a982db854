//! The outage suites' harness: a workload with one poison message, run into a fault that stops
//! every runner, then checked message by message once the fault is removed (`tests/outages.rs`
//! with the local launcher, `tests/kube_outages.rs` against the fake API server).

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use crate::guarantee::record;
use crate::{Outgoing, TestEnv, binary, spawn_dispatcher_with, write_script};
use redis::AsyncCommands;
use serde_json::json;
use sluice_dispatcher::Config;
use sluice_dispatcher::metrics::Metrics;
use sluice_dispatcher::status;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Messages per case (plus the poison one): enough that some still wait in RabbitMQ once the
/// breaker opens. Before it does, each of the real cluster's two replicas stages a fresh batch
/// of 20 for every failed Job (its retry waits out a delay) and holds 40 in its prefetch
/// window, about 200 in all, and more when a slow cluster fails a Job more slowly.
pub const MESSAGES: usize = 400;
/// The poison message's id.
pub const POISON: &str = "poison";

/// Echo messages with one `crash` message (kills its runner) in the middle.
pub fn workload() -> (Vec<String>, Vec<Outgoing>) {
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

/// Every batch hash of the test (state, reason, parent…), with its `id`.
pub async fn batches(env: &TestEnv) -> Vec<HashMap<String, String>> {
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

/// Settings that make outages quick to see and to recover from.
pub const SETTINGS: [(&str, &str); 8] = [
    ("BATCH_MODE", "fixed"),
    ("BATCH_MAX_MESSAGES", "20"),
    ("MAX_JOBS_IN_FLIGHT", "2"),
    ("JOB_BACKOFF_LIMIT", "1"),
    ("OUTAGE_THRESHOLD", "3"),
    ("OUTAGE_RETRY_SECONDS", "0.2"),
    ("OUTAGE_RETRY_MAX_SECONDS", "1"),
    ("REDIS_RETRY_SECONDS", "1"),
];

/// A `RUNNER_BIN` that exits `code` while `flag` exists, else runs the real runner, with
/// Redis at `redis_url`.
pub fn runner_script(env: &TestEnv, flag: &Path, code: u8, redis_url: &str) -> PathBuf {
    let script = std::env::temp_dir().join(format!("{}-runner.sh", env.prefix));
    let text = format!(
        "#!/bin/sh\n[ -e '{flag}' ] && exit {code}\nREDIS_URL='{redis_url}' exec '{runner}'\n",
        flag = flag.display(),
        runner = binary("runner").display()
    );
    write_script(&script, &text).unwrap();
    script
}

/// The outage settings with `runner` as `RUNNER_BIN`.
pub fn local_config(env: &TestEnv, runner: &Path) -> Config {
    let runner = runner.display().to_string();
    let mut vars = SETTINGS.to_vec();
    vars.push(("RUNNER_BIN", &runner));
    env.config(&vars).unwrap()
}

/// Runs the workload with `config` while every runner meets a fault, waits until the breaker
/// holds launches back (and says so, with `expected` in its reason), removes the fault with
/// `fix` (nothing is restarted) and checks every message; returns the seconds from the fix to
/// the last result, for the reliability table.
pub async fn outage_then_fix(
    name: &str,
    env: &TestEnv,
    config: Config,
    fix: impl FnOnce(),
    expected: &str,
) -> f64 {
    let ids = publish_workload(env).await;
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let dispatcher = spawn_dispatcher_with(config.clone(), Arc::clone(&metrics), stop.clone());
    wait_until_held_back(name, env, &config, expected, Duration::from_secs(120)).await;
    // Readiness and the metric say so too, with the reason.
    let ready = metrics.health().ready().unwrap_err();
    assert!(
        ready.contains("runner:") && ready.contains(expected),
        "{ready}"
    );
    assert!(metrics.render().contains("sluice_runner_healthy 0"));
    let recovery = fix_and_check(name, env, &config, &ids, fix).await;
    assert!(metrics.render().contains("sluice_runner_healthy 1"));
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
    recovery
}

/// Appends one case's figures to `target/outages.tsv`, which `make test` prints.
fn record_recovery(name: &str, recovery: Duration, retried: usize, extra_jobs: usize) {
    use std::io::Write as _;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/outages.tsv");
    let row = format!(
        "{name}\t{:.1}\t{retried}\t{extra_jobs}\n",
        recovery.as_secs_f64()
    );
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(row.as_bytes());
    }
}

/// Publishes the workload; returns its ids.
pub async fn publish_workload(env: &TestEnv) -> Vec<String> {
    let (ids, messages) = workload();
    env.publish(&messages).await.unwrap();
    ids
}

/// Waits until the breaker holds launches back: Jobs were retried whole (none split, none
/// failed), consumption is paused with messages waiting in RabbitMQ, and `dispatcher status`
/// reports the runners unhealthy with `expected` in the reason.
pub async fn wait_until_held_back(
    name: &str,
    env: &TestEnv,
    config: &Config,
    expected: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let all = batches(env).await;
        let report = status::report(config).await.unwrap();
        let runner = &report.redis.as_ref().unwrap().runner;
        let open = runner.get("state").map(String::as_str) == Some("unhealthy");
        if open && count(&all, "retried") >= 3 && env.queue_depth().await.unwrap() > 0 {
            assert_eq!(count(&all, "split"), 0, "{name}: an outage split a batch");
            assert_eq!(count(&all, "failed"), 0, "{name}: an outage failed a batch");
            assert!(runner["reason"].contains(expected), "{report:?}");
            assert!(
                report.to_string().contains("runners: UNHEALTHY"),
                "{report}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no outage seen: runner record {runner:?}, {} retried, {} waiting in the queue: {all:?}",
            count(&all, "retried"),
            env.queue_depth().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A pausing consumer first fills its prefetch window (and parks it): let that settle, on
    // every replica, before looking.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = env.queue_depth().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = env.queue_depth().await.unwrap();
    assert!(
        still >= waiting,
        "{name}: nothing consumed while the breaker is open ({waiting} then {still})"
    );
}

/// Removes the fault and checks every message: only the poison one dead (of its crash),
/// every other one `ok` once, nothing lost or duplicated, runners reported healthy again.
/// Returns the seconds from the fix to the last result.
pub async fn fix_and_check(
    name: &str,
    env: &TestEnv,
    config: &Config,
    ids: &[String],
    fix: impl FnOnce(),
) -> f64 {
    let fixed = Instant::now();
    fix();
    let figures = env.figures(ids, Duration::from_secs(600)).await.unwrap();
    let recovery = fixed.elapsed();
    let report = status::report(config).await.unwrap();
    assert_eq!(
        report.redis.as_ref().unwrap().runner["state"],
        "healthy",
        "recovered by itself: {report:?}"
    );
    let all = batches(env).await;
    let extra_jobs = poison_jobs(&all);
    println!(
        "outage: {name}: {:.1} s from the fix to the last result; {} retried batches; {extra_jobs} extra Jobs for the poison message",
        recovery.as_secs_f64(),
        count(&all, "retried"),
    );
    record(&format!("outage, then fixed: {name}"), 1, &figures);
    record_recovery(name, recovery, count(&all, "retried"), extra_jobs);
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
    recovery.as_secs_f64()
}
