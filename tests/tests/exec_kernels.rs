//! Exec kernels as a user meets them: the shipped runner binary, a `KERNELS_FILE` table, and
//! workers written with the Python package (`sdk/python`), against a batch staged in real
//! Redis. A worker that exits, hangs past its timeout, or speaks out of protocol fails exactly
//! the message it was on and is replaced; a table with a problem, or workers that cannot run
//! at all, stop the runner with an outage exit code and no message blamed.

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use sluice_contract::{Keys, StagedMessage};
use sluice_dispatcher::stage::Stager;
use sluice_tests::{TestEnv, binary, require_binaries};
use std::path::{Path, PathBuf};
use std::process::Output;

/// A Python worker built on the SDK, misbehaving on purpose for some inputs.
const WORKER: &str = r#"
import os, sys, time
from sluice_worker import serve

def work(text):
    if text == "exit":
        sys.stderr.write("going down on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    if text == "slow":
        time.sleep(30)
    if text == "garble":
        sys.__stdout__.write("this is not json\n")
        sys.__stdout__.flush()
        time.sleep(30)
    if text == "raise":
        raise ValueError("bad value")
    if text == "print":
        print("noise that must not reach the protocol")
    sys.stderr.write(f"worked on {text}\n")
    return {"upper": text.upper(), "pid": os.getpid()}

serve(work)
"#;

fn frame(id: &str, body: &str) -> Vec<u8> {
    StagedMessage {
        message_id: Some(id.into()),
        fallback_id: format!("f-{id}"),
        reply_to: None,
        correlation_id: None,
        dropped_size: None,
        body: body.as_bytes().to_vec(),
    }
    .encode()
}

/// A directory holding `worker.py` and a table with `table` as its kernel entry.
fn kernels_dir(env: &TestEnv, table: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{}-kernels", env.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("worker.py"), WORKER).unwrap();
    std::fs::write(dir.join("kernels.toml"), table).unwrap();
    dir
}

/// Stages `messages` (id, plain-text body) as `batch` and runs the runner binary on it with
/// the table in `dir`; the default kernel is `py`.
async fn run(env: &TestEnv, batch: &str, messages: &[(String, String)], dir: &Path) -> Output {
    let stager = Stager::connect(env.redis_client().unwrap(), Keys::new(&env.prefix), 0)
        .await
        .unwrap();
    let frames: Vec<Vec<u8>> = messages.iter().map(|(id, body)| frame(id, body)).collect();
    stager.stage(batch, batch, &frames).await.unwrap();
    let sdk = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/python/src");
    let mut command = std::process::Command::new(binary("runner"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PYTHONPATH", sdk)
        .env("BATCH_ID", batch)
        .env("KEY_PREFIX", &env.prefix)
        .env("REDIS_URL", &env.redis_url)
        .env("DEFAULT_KERNEL", "py")
        .env("RAYON_NUM_THREADS", "2")
        .env("KERNELS_FILE", dir.join("kernels.toml"));
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

async fn results(env: &TestEnv) -> usize {
    let mut con = env.redis().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:result:*", env.prefix))
        .query_async(&mut con)
        .await
        .unwrap();
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_fails_only_its_message_and_the_batch_goes_on() {
    require_binaries().unwrap();
    let env = TestEnv::new("exec-mixed").await.unwrap();
    let dir = kernels_dir(
        &env,
        "[kernel.py]\ncommand = [\"python3\", \"worker.py\"]\nprocesses = 2\ntimeout = \"2s\"\n",
    );
    // Enough good messages first that the workers have answered before the bad ones.
    let mut messages: Vec<(String, String)> = (0..20)
        .map(|i| (format!("ok-{i}"), format!("text {i} ✓")))
        .collect();
    for bad in ["exit", "slow", "garble", "raise", "print"] {
        messages.push((bad.to_owned(), bad.to_owned()));
        messages.push((format!("after-{bad}"), format!("after {bad}")));
    }
    let output = run(&env, "exec-b1", &messages, &dir).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("worked on text 3 ✓"),
        "worker stderr reaches the runner's log"
    );

    for (id, body) in &messages {
        let result = env.result(id).await.unwrap();
        let expected_error = match id.as_str() {
            "exit" => Some("exec worker exited with code 3; last stderr: "),
            "slow" => Some("exec worker timed out after 2s"),
            "garble" => {
                Some("exec worker wrote a line that is not a JSON object: \"this is not json\"")
            }
            "raise" => Some("ValueError: bad value"),
            _ => None,
        };
        if let Some(error) = expected_error {
            assert_eq!(result["status"], "error", "{id}: {result:?}");
            assert!(result["error"].starts_with(error), "{id}: {result:?}");
            if id == "exit" {
                assert!(
                    result["error"].ends_with("going down on purpose"),
                    "{result:?}"
                );
            }
        } else {
            assert_eq!(result["status"], "ok", "{id}: {result:?}");
            let output: serde_json::Value = serde_json::from_str(&result["output"]).unwrap();
            assert_eq!(output["upper"], body.to_uppercase(), "{id}");
        }
    }
    assert_eq!(
        results(&env).await,
        messages.len(),
        "one result per message"
    );
    assert_eq!(env.stream_len().await.unwrap(), messages.len());
    let _ = std::fs::remove_dir_all(dir);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_naming_a_missing_command_stops_the_runner_at_start_as_an_outage() {
    require_binaries().unwrap();
    let env = TestEnv::new("exec-missing").await.unwrap();
    let dir = kernels_dir(
        &env,
        "[kernel.py]\ncommand = [\"no-such-interpreter\", \"worker.py\"]\n",
    );
    let messages = [("m1".to_owned(), "hello".to_owned())];
    let output = run(&env, "exec-b2", &messages, &dir).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(sluice_contract::exit::CONFIG),
        "{stderr}"
    );
    assert!(
        stderr.contains("kernel py: command \"no-such-interpreter\" not found on PATH"),
        "{stderr}"
    );
    assert_eq!(results(&env).await, 0, "no message blamed");
    let _ = std::fs::remove_dir_all(dir);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_die_before_answering_anything_are_an_outage_not_errors() {
    require_binaries().unwrap();
    let env = TestEnv::new("exec-broken").await.unwrap();
    // The function cannot even be imported: every worker dies at once.
    let table = "[kernel.py]\ncommand = [\"python3\", \"-m\", \"sluice_worker\", \"no_such_module:work\"]\n";
    let dir = kernels_dir(&env, table);
    let messages: Vec<(String, String)> =
        (0..6).map(|i| (format!("m{i}"), format!("x{i}"))).collect();
    let output = run(&env, "exec-b3", &messages, &dir).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(sluice_contract::exit::CANNOT_EXECUTE),
        "{stderr}"
    );
    assert!(
        stderr.contains("No module named 'no_such_module'"),
        "{stderr}"
    );
    assert_eq!(
        results(&env).await,
        0,
        "no message blamed for a broken worker"
    );
    let _ = std::fs::remove_dir_all(dir);
    env.cleanup().await.unwrap();
}
