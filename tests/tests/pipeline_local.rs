//! The whole pipeline with the local launcher: RabbitMQ → dispatcher → runner → Redis.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_tests::{Outgoing, TestEnv, require_binaries, spawn_dispatcher};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a message's result must be.
enum Expect {
    Output(Value),
    /// An ok `pow` result: checked against a brute-force search.
    Pow {
        data: String,
        difficulty: u32,
    },
    Error(&'static str),
}

fn modsum(n: u64, m: u64) -> u64 {
    (1..n).map(|i| (i % m) * (i % m) % m).sum()
}

fn prime_counts(limit: usize) -> Vec<u64> {
    let mut composite = vec![false; limit + 1];
    let mut counts = vec![0; limit + 1];
    let mut count = 0;
    for k in 2..=limit {
        if !composite[k] {
            count += 1;
            (k * k..=limit).step_by(k).for_each(|j| composite[j] = true);
        }
        counts[k] = count;
    }
    counts
}

fn zero_bits(digest: &[u8]) -> u32 {
    let mut bits = 0;
    for &b in digest {
        if b != 0 {
            return bits + b.leading_zeros();
        }
        bits += 8;
    }
    bits
}

fn pow_nonce(data: &str, difficulty: u32) -> u64 {
    (0..u64::MAX)
        .find(|n| zero_bits(&Sha256::digest(format!("{data}{n}"))) >= difficulty)
        .unwrap()
}

/// Every kind of bad input the contract promises an error result for, keyed by message id.
fn bad_inputs() -> Vec<(Outgoing, Expect)> {
    let deep = format!(
        "{{\"kernel\":\"echo\",\"input\":{}{}}}",
        "[".repeat(500),
        "]".repeat(500)
    );
    let cases: Vec<(&str, Vec<u8>, &'static str)> = vec![
        ("bad-empty", vec![], "empty message body"),
        ("bad-utf8", b"\xff\xfe\xfd".to_vec(), "not valid UTF-8"),
        ("bad-json", br#"{"kernel": "#.to_vec(), "not valid JSON"),
        ("bad-array", b"[1,2,3]".to_vec(), "got an array"),
        ("bad-number", b"42".to_vec(), "got a number"),
        ("bad-string", br#""hi""#.to_vec(), "got a string"),
        (
            "bad-kernel",
            br#"{"kernel":"teleport"}"#.to_vec(),
            "unknown kernel",
        ),
        (
            "bad-kernel-type",
            br#"{"kernel":7}"#.to_vec(),
            "`kernel` must be a string",
        ),
        (
            "bad-missing",
            br#"{"kernel":"pow","input":{"data":"x"}}"#.to_vec(),
            "missing field `difficulty`",
        ),
        (
            "bad-type",
            br#"{"kernel":"modsum","input":{"n":"ten"}}"#.to_vec(),
            "invalid type: string",
        ),
        (
            "bad-negative",
            br#"{"kernel":"modsum","input":{"n":-1}}"#.to_vec(),
            "invalid value: integer `-1`",
        ),
        (
            "bad-overflow",
            br#"{"kernel":"primes","input":{"n":18446744073709551616}}"#.to_vec(),
            "invalid type",
        ),
        (
            "bad-m-zero",
            br#"{"kernel":"modsum","input":{"m":0}}"#.to_vec(),
            "m must be > 0",
        ),
        (
            "bad-difficulty",
            br#"{"kernel":"pow","input":{"data":"x","difficulty":65}}"#.to_vec(),
            "over the maximum",
        ),
        (
            "bad-primes-n",
            br#"{"kernel":"primes","input":{"n":10000000001}}"#.to_vec(),
            "over the limit",
        ),
        (
            "bad-oversize",
            format!(r#"{{"kernel":"echo","input":"{}"}}"#, "x".repeat(5000)).into_bytes(),
            "exceeds MAX_MESSAGE_BYTES",
        ),
        ("bad-deep", deep.into_bytes(), "recursion limit"),
        ("bad-panic", br#"{"kernel":"panic"}"#.to_vec(), "panicked"),
        (
            "bad-unknown-field",
            br#"{"kernel":"primes","input":{"n":5,"x":1}}"#.to_vec(),
            "unknown field",
        ),
    ];
    cases
        .into_iter()
        .map(|(id, body, err)| (Outgoing::raw(id, body), Expect::Error(err)))
        .collect()
}

fn good_inputs(count: usize) -> Vec<(Outgoing, Expect)> {
    let primes = prime_counts(100_000);
    (0..count)
        .map(|i| {
            let id = format!("good-{i}");
            let i64 = i as u64;
            let (kernel, input, expect) = match i % 4 {
                0 => {
                    let (n, m) = (1_000 + i64 * 37 % 50_000, 2 + i64 % 1_000);
                    (
                        "modsum",
                        json!({"n": n, "m": m}),
                        Expect::Output(json!({"sum": modsum(n, m)})),
                    )
                }
                1 => {
                    let (data, difficulty) = (format!("d{i}"), (i % 9) as u32);
                    (
                        "pow",
                        json!({"data": data, "difficulty": difficulty}),
                        Expect::Pow { data, difficulty },
                    )
                }
                2 => {
                    let n = i * 97 % 100_000;
                    (
                        "primes",
                        json!({"n": n}),
                        Expect::Output(json!({"count": primes[n]})),
                    )
                }
                _ => {
                    let input = json!({"i": i, "tags": ["a", "b"], "nested": {"ok": true}});
                    ("echo", input.clone(), Expect::Output(input))
                }
            };
            (
                Outgoing::json(&json!({"id": id, "kernel": kernel, "input": input})),
                expect,
            )
        })
        .collect()
}

fn check(id: &str, result: &HashMap<String, String>, expect: &Expect) {
    match expect {
        Expect::Output(value) => {
            assert_eq!(
                result.get("status").map(String::as_str),
                Some("ok"),
                "{id}: {result:?}"
            );
            let output: Value = serde_json::from_str(&result["output"]).unwrap();
            assert_eq!(&output, value, "{id}");
        }
        Expect::Pow { data, difficulty } => {
            let output: Value = serde_json::from_str(&result["output"]).unwrap();
            assert_eq!(
                output["nonce"],
                json!(pow_nonce(data, *difficulty)),
                "{id}: nonce not minimal"
            );
        }
        Expect::Error(text) => {
            assert_eq!(
                result.get("status").map(String::as_str),
                Some("error"),
                "{id}: {result:?}"
            );
            assert!(
                result["error"].contains(text),
                "{id}: expected {text:?} in {:?}",
                result["error"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mixed_messages_all_end_with_the_right_result() {
    require_binaries().unwrap();
    let env = TestEnv::new("mixed").await.unwrap();
    let mut cases = bad_inputs();
    let plain = (
        "plain-text",
        Outgoing::raw("plain-text", "run the classic job"),
    );
    cases.push((plain.1, Expect::Output(json!({"sum": 4_979_993_748_u64}))));
    let odd_id = "order 42: größe/ü";
    cases.push((
        Outgoing::raw(odd_id, r#"{"kernel":"echo","input":"odd id"}"#),
        Expect::Output(json!("odd id")),
    ));
    cases.extend(good_inputs(1_000 - cases.len()));
    assert_eq!(cases.len(), 1_000);
    let ids: Vec<String> = cases
        .iter()
        .map(|(m, _)| {
            m.message_id.clone().unwrap_or_else(|| {
                serde_json::from_slice::<Value>(&m.body).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
        })
        .collect();

    let config = env
        .config(&[
            ("BATCH_MAX_MESSAGES", "100"),
            ("BATCH_LINGER_MS", "100"),
            ("MAX_MESSAGE_BYTES", "4096"),
        ])
        .unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    let outgoing: Vec<Outgoing> = cases.iter().map(|(m, _)| m.clone()).collect();
    env.publish(&outgoing).await.unwrap();

    let results = env
        .wait_for_results(&ids, Duration::from_secs(120))
        .await
        .unwrap();
    for ((_, expect), id) in cases.iter().zip(&ids) {
        check(id, &results[id], expect);
    }
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
    std::fs::write(&script, text).unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_runner_keeps_crashing_dead_letters_what_is_unfinished() {
    require_binaries().unwrap();
    let env = TestEnv::new("crash").await.unwrap();
    let config = env
        .config(&[
            ("BATCH_MAX_MESSAGES", "6"),
            ("BATCH_LINGER_MS", "2000"),
            ("JOB_BACKOFF_LIMIT", "1"),
        ])
        .unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    let mut messages: Vec<Outgoing> = (0..5)
        .map(|i| Outgoing::json(&json!({"id": format!("e{i}"), "kernel": "echo", "input": i})))
        .collect();
    messages.insert(2, Outgoing::json(&json!({"id": "boom", "kernel": "crash"})));
    env.publish(&messages).await.unwrap();

    let ids: Vec<String> = ["e0", "e1", "boom", "e2", "e3", "e4"]
        .map(String::from)
        .to_vec();
    let results = env
        .wait_for_results(&ids, Duration::from_secs(60))
        .await
        .unwrap();
    let boom = &results["boom"];
    assert_eq!(boom["status"], "dead", "{boom:?}");
    assert!(
        boom["error"].contains("BackoffLimitExceeded") && boom["error"].contains("signal 6"),
        "{boom:?}"
    );
    let dead = results.values().filter(|r| r["status"] == "dead").count();
    let ok = results.values().filter(|r| r["status"] == "ok").count();
    assert_eq!(ok + dead, 6, "every message ends ok or dead: {results:?}");

    let mut con = env.redis().await.unwrap();
    let dead_list: Vec<String> =
        redis::AsyncCommands::lrange(&mut con, format!("{}:dead", env.prefix), 0, -1)
            .await
            .unwrap();
    assert_eq!(dead_list.len(), dead);
    assert!(dead_list.iter().any(|e| e.contains("\"boom\"")));
    assert_eq!(
        env.stream_len().await.unwrap(),
        6,
        "one stream entry per message"
    );
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}
