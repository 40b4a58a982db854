//! Users' own work, end to end through RabbitMQ, the dispatcher (local launcher) and Redis:
//! a Rust crate of the user's that depends on the runner library alone
//! (`examples/rust-textstats`, built by `make examples`), and the pool manager's plain Python
//! function run unchanged as an exec kernel (`examples/python`), published as plain text by a
//! pika producer to the default kernel.

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use sluice_tests::{Outgoing, TestEnv, require_binaries, spawn_dispatcher};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_rust_crate_runs_its_own_kernel_beside_the_built_in_ones() {
    require_binaries().unwrap();
    let runner = repo("target/examples/debug/textstats-runner");
    assert!(
        runner.is_file(),
        "{} is missing: run `make examples` (make test does)",
        runner.display()
    );
    let env = TestEnv::new("user-crate").await.unwrap();
    let mut messages: Vec<Outgoing> = (0..30)
        .map(|i| {
            let text = format!("line one {i}\nthe the end");
            Outgoing::json(&json!({"id": format!("t{i}"), "kernel": "textstats", "input": {"text": text, "top": 1}}))
        })
        .collect();
    messages.push(Outgoing::json(
        &json!({"id": "too-many", "kernel": "textstats", "input": {"text": "a", "top": 101}}),
    ));
    messages.push(Outgoing::json(
        &json!({"id": "typo", "kernel": "textstats", "input": {"txt": "a"}}),
    ));
    messages.push(Outgoing::json(
        &json!({"id": "builtin", "kernel": "modsum", "input": {"n": 1000, "m": 7}}),
    ));
    env.publish(&messages).await.unwrap();
    let runner_bin = runner.display().to_string();
    let config = env.config(&[("RUNNER_BIN", runner_bin.as_str())]).unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    let ids: Vec<String> = (0..30)
        .map(|i| format!("t{i}"))
        .chain(["too-many", "typo", "builtin"].map(String::from))
        .collect();
    env.wait_for_results(&ids, Duration::from_secs(120))
        .await
        .unwrap();

    let t7 = env.result("t7").await.unwrap();
    assert_eq!(t7["status"], "ok", "{t7:?}");
    let stats: Value = serde_json::from_str(&t7["output"]).unwrap();
    assert_eq!(stats["lines"], 2);
    assert_eq!(stats["words"], 6);
    assert_eq!(stats["top_words"], json!([["the", 2]]));
    let too_many = env.result("too-many").await.unwrap();
    assert_eq!(too_many["error"], "top must be at most 100, got 101");
    let typo = env.result("typo").await.unwrap();
    assert!(
        typo["error"].starts_with("invalid input for kernel textstats: unknown field `txt`"),
        "{typo:?}"
    );
    assert_eq!(env.result("builtin").await.unwrap()["status"], "ok");
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

/// What `cpu_intensive_task` answers for each body, computed by Python alone.
fn expected_by_python(bodies: &[String]) -> Vec<i64> {
    let script = format!(
        "import json, cpu_task; print(json.dumps([cpu_task.cpu_intensive_task(b) for b in {}]))",
        serde_json::to_string(bodies).unwrap()
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .current_dir(repo("examples/python"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_managers_python_function_runs_unchanged_as_an_exec_kernel() {
    require_binaries().unwrap();
    let env = TestEnv::new("python-fn").await.unwrap();
    // The pool-manager design's producer: plain text, classic pika, ids seed-1..seed-12.
    let published = Command::new("python3")
        .arg(repo("examples/python/publish.py"))
        .args([env.queue.as_str(), "12"])
        .env("AMQP_URL", &env.amqp_url)
        .output()
        .unwrap();
    assert!(
        published.status.success(),
        "{published:?} (is .venv/bin on PATH?)"
    );
    let table = repo("examples/python/kernels.toml").display().to_string();
    let settings = [
        ("KERNELS_FILE", table.as_str()),
        ("DEFAULT_KERNEL", "seed"),
        ("RUNNER_CPU", "2"),
    ];
    let config = env.config(&settings).unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    let ids: Vec<String> = (1..=12).map(|i| format!("seed-{i}")).collect();
    env.wait_for_results(&ids, Duration::from_secs(180))
        .await
        .unwrap();
    let bodies: Vec<String> = (1..=12).map(|i| format!("data-{i}")).collect();
    let expected = expected_by_python(&bodies);
    for (id, want) in ids.iter().zip(expected) {
        let result = env.result(id).await.unwrap();
        assert_eq!(result["status"], "ok", "{id}: {result:?}");
        assert_eq!(result["kernel"], "seed");
        assert_eq!(result["output"], want.to_string(), "{id}");
    }
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

/// RabbitMQ's tutorial six, unchanged but for the queue: `examples/python/rpc_client.py`
/// publishes plain text with `reply_to` and waits for its replies, over direct reply-to and over
/// a named queue; each reply is the Redis result of its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_six_rpc_client_gets_each_result_as_its_reply() {
    require_binaries().unwrap();
    let env = TestEnv::new("python-rpc").await.unwrap();
    env.publish(&[]).await.unwrap(); // the queue, as the dispatcher would declare it
    let table = repo("examples/python/kernels.toml").display().to_string();
    let settings = [
        ("KERNELS_FILE", table.as_str()),
        ("DEFAULT_KERNEL", "seed"),
        ("BATCH_LINGER_MS", "100"),
    ];
    let config = env.config(&settings).unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    let bodies: Vec<String> = (1..=6).map(|i| format!("data-{i}")).collect();
    let expected = expected_by_python(&bodies);
    for how in [&[][..], &["--named"][..]] {
        let client = tokio::process::Command::new("python3")
            .arg(repo("examples/python/rpc_client.py"))
            .args([env.queue.as_str(), "6"])
            .args(how)
            .env("AMQP_URL", &env.amqp_url)
            .output()
            .await
            .unwrap();
        assert!(client.status.success(), "{how:?}: {client:?}");
        let lines: Vec<Value> = String::from_utf8_lossy(&client.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 6, "{how:?}: one reply per request");
        for (line, want) in lines.iter().zip(&expected) {
            let reply = &line["reply"];
            let result = env.result(reply["id"].as_str().unwrap()).await.unwrap();
            assert_eq!(reply["status"], "ok", "{how:?}: {line}");
            assert_eq!(reply["kernel"], "seed");
            assert_eq!(reply["output"], *want, "{how:?}: in publish order");
            assert_eq!(
                result["output"],
                want.to_string(),
                "the reply is the result"
            );
        }
    }
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn the_dispatcher_refuses_to_start_with_a_kernel_table_its_runners_would_refuse() {
    let env = TestEnv::new("bad-table").await.unwrap();
    let path = std::env::temp_dir().join(format!("{}-kernels.toml", env.prefix));
    std::fs::write(&path, "[kernel.seed]\ncommand = [\"python9\", \"w.py\"]\n").unwrap();
    let file = path.display().to_string();
    let error = env
        .config(&[("KERNELS_FILE", file.as_str())])
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!(
            "KERNELS_FILE {file}: kernel seed: command \"python9\" not found on PATH"
        )),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1, "{error}");
    let _ = std::fs::remove_file(path);
}
