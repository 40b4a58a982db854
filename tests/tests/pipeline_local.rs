//! The whole pipeline with the local launcher: RabbitMQ → dispatcher → runner → Redis.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sluice_tests::cases::mixed;
use sluice_tests::{Outgoing, TestEnv, require_binaries, spawn_dispatcher};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mixed_messages_all_end_with_the_right_result() {
    require_binaries().unwrap();
    let env = TestEnv::new("mixed").await.unwrap();
    let cases = mixed(1_000);

    let config = env
        .config(&[
            ("BATCH_MODE", "adaptive"),
            ("BATCH_MAX_MESSAGES", "100"),
            ("BATCH_LINGER_MS", "100"),
            ("MAX_MESSAGE_BYTES", "4096"),
        ])
        .unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    env.run_cases(&cases, Duration::from_secs(120))
        .await
        .unwrap();
    let ids: Vec<String> = cases.iter().map(|c| c.id.clone()).collect();
    let figures = env.figures(&ids, Duration::from_secs(1)).await.unwrap();
    sluice_tests::guarantee::record("bad-input matrix: 19 kinds among 1,000 mixed", 0, &figures);
    assert_eq!((figures.lost, figures.duplicated), (0, 0), "{figures:?}");
    let stats = env.stats().await.unwrap();
    assert_eq!(stats["received"], 1_000);
    assert_eq!(stats["ok"] + stats["error"], 1_000);
    assert_eq!(
        env.stream_len().await.unwrap(),
        1_000,
        "one stream entry per message"
    );

    stop.cancel();
    let summary = dispatcher.await.unwrap().unwrap();
    assert_eq!(summary.abandoned, 0);
    env.cleanup().await.unwrap();
}

/// A `RUNNER_BIN` that logs each runner's start and end to `log`, then runs the real runner.
fn counting_runner(log: &std::path::Path) -> std::path::PathBuf {
    let script = log.with_extension("sh");
    let real = sluice_tests::binary("runner");
    let text = format!(
        "#!/bin/sh\necho start >> '{log}'\n'{real}'\nrc=$?\necho end >> '{log}'\nexit $rc\n",
        log = log.display(),
        real = real.display()
    );
    sluice_tests::write_script(&script, &text).unwrap();
    script
}

fn peak_concurrency(log: &std::path::Path) -> (usize, usize) {
    let text = std::fs::read_to_string(log).unwrap();
    let (mut running, mut peak, mut runs) = (0_usize, 0, 0);
    for line in text.lines() {
        if line == "start" {
            running += 1;
            runs += 1;
            peak = peak.max(running);
        } else {
            running -= 1;
        }
    }
    (peak, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_jobs_in_flight_caps_concurrent_runner_processes() {
    require_binaries().unwrap();
    let env = TestEnv::new("inflight").await.unwrap();
    let log = std::env::temp_dir().join(format!("{}.log", env.prefix));
    let script = counting_runner(&log);
    let script = script.display().to_string();
    let config = env
        .config(&[
            ("MAX_JOBS_IN_FLIGHT", "2"),
            ("BATCH_MAX_MESSAGES", "4"),
            ("BATCH_LINGER_MS", "50"),
            ("RUNNER_BIN", &script),
        ])
        .unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    let messages: Vec<Outgoing> = (0..40)
        .map(|i| {
            Outgoing::json(&json!({"id": format!("s{i}"), "kernel": "sleep", "input": {"ms": 150}}))
        })
        .collect();
    env.publish(&messages).await.unwrap();
    let ids: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
    env.wait_for_results(&ids, Duration::from_secs(60))
        .await
        .unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();

    let (peak, runs) = peak_concurrency(&log);
    assert_eq!(runs, 10, "40 messages in batches of 4");
    assert_eq!(
        peak, 2,
        "never more than MAX_JOBS_IN_FLIGHT runners, and the cap was reached"
    );
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&script);
    env.cleanup().await.unwrap();
}

/// Publishes `count` echo messages with one `crash` at `poison`, all in one batch, and waits
/// for every result. Returns the results, the dead list and the batches staged.
async fn run_with_poison(
    env: &TestEnv,
    count: usize,
    poison: usize,
) -> (HashMap<String, HashMap<String, String>>, Vec<String>, u64) {
    let batch = count.to_string();
    let config = env
        .config(&[
            ("BATCH_MAX_MESSAGES", &batch),
            ("BATCH_LINGER_MS", "3000"),
            ("JOB_BACKOFF_LIMIT", "1"),
        ])
        .unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    let ids: Vec<String> = (0..count)
        .map(|i| {
            if i == poison {
                "poison".into()
            } else {
                format!("e{i}")
            }
        })
        .collect();
    let messages: Vec<Outgoing> = ids
        .iter()
        .map(|id| {
            let kernel = if id == "poison" { "crash" } else { "echo" };
            Outgoing::json(&json!({"id": id, "kernel": kernel, "input": id}))
        })
        .collect();
    env.publish(&messages).await.unwrap();
    let results = env
        .wait_for_results(&ids, Duration::from_secs(120))
        .await
        .unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    let mut con = env.redis().await.unwrap();
    let dead: Vec<String> =
        redis::AsyncCommands::lrange(&mut con, format!("{}:dead", env.prefix), 0, -1)
            .await
            .unwrap();
    let batches = env.stats().await.unwrap()["batches"];
    (results, dead, batches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_its_runner_is_isolated_and_dead_lettered() {
    require_binaries().unwrap();
    let env = TestEnv::new("crash").await.unwrap();
    let (results, dead, _) = run_with_poison(&env, 6, 2).await;
    let poison = &results["poison"];
    assert_eq!(poison["status"], "dead", "{poison:?}");
    assert!(
        poison["error"].contains("BackoffLimitExceeded") && poison["error"].contains("signal 6"),
        "the reason names how the runner died: {poison:?}"
    );
    for (id, result) in results.iter().filter(|(id, _)| *id != "poison") {
        assert_eq!(result["status"], "ok", "{id} is not poison: {result:?}");
    }
    assert_eq!(dead.len(), 1);
    assert!(dead[0].contains("\"poison\""), "{dead:?}");
    // The message itself is in the dead-letter queue, as it was sent.
    let letters = env.dead_queue().await.unwrap();
    assert_eq!(letters.len(), 1, "one dead letter");
    let body = String::from_utf8_lossy(&letters[0].data);
    assert!(
        body.contains("\"poison\"") && body.contains("crash"),
        "{body}"
    );
    assert_eq!(
        env.stream_len().await.unwrap(),
        6,
        "one stream entry per message"
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_message_in_a_thousand_costs_at_most_2_log2_n_plus_1_extra_jobs() {
    require_binaries().unwrap();
    let env = TestEnv::new("bisect").await.unwrap();
    let (results, dead, batches) = run_with_poison(&env, 1_000, 617).await;
    let ok = results.values().filter(|r| r["status"] == "ok").count();
    assert_eq!((ok, dead.len()), (999, 1));
    assert_eq!(results["poison"]["status"], "dead");
    let extra_jobs = batches - 1;
    println!("bisection: 1 poison message in 1,000 isolated with {extra_jobs} extra Jobs");
    assert!(
        extra_jobs <= 2 * 10 + 1,
        "{extra_jobs} extra Jobs for one poison message in 1,000"
    );
    assert_eq!(env.stream_len().await.unwrap(), 1_000);
    let ids: Vec<String> = (0..1_000)
        .map(|i| {
            if i == 617 {
                "poison".into()
            } else {
                format!("e{i}")
            }
        })
        .collect();
    let figures = env.figures(&ids, Duration::from_secs(1)).await.unwrap();
    sluice_tests::guarantee::record("a poison message (crash) in a batch of 1,000", 1, &figures);
    assert_eq!(
        (figures.lost, figures.duplicated, figures.dead),
        (0, 0, 1),
        "{figures:?}"
    );
    env.cleanup().await.unwrap();
}
