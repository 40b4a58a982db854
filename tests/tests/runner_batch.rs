//! The runner against a batch staged in real Redis: results, skips, idempotent re-runs.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sluice_contract::{Keys, StagedMessage};
use sluice_dispatcher::stage::Stager;
use sluice_tests::TestEnv;

fn frame(id: &str, body: &[u8]) -> Vec<u8> {
    StagedMessage {
        message_id: Some(id.into()),
        fallback_id: format!("f-{id}"),
        reply_to: None,
        correlation_id: None,
        dropped_size: None,
        body: body.to_vec(),
    }
    .encode()
}

fn runner_config(env: &TestEnv, batch: &str) -> sluice_runner::Config {
    let vars = [
        ("BATCH_ID", batch),
        ("KEY_PREFIX", env.prefix.as_str()),
        ("REDIS_URL", env.redis_url.as_str()),
        ("SLUICE_TEST_KERNELS", "1"),
        ("RESULT_CHUNK", "3"),
    ];
    sluice_runner::Config::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
        .unwrap()
}

async fn run_runner(config: sluice_runner::Config) -> sluice_runner::Summary {
    tokio::task::spawn_blocking(move || sluice_runner::run(&config))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn runner_writes_ok_and_error_results_and_skips_finished_ids() {
    let env = TestEnv::new("runner").await.unwrap();
    let stager = Stager::connect(env.redis_client().unwrap(), Keys::new(&env.prefix), 0)
        .await
        .unwrap();
    let frames = vec![
        frame("sum", br#"{"kernel":"modsum","input":{"n":1000,"m":7}}"#),
        frame("echo", br#"{"kernel":"echo","input":{"x":[1,2]}}"#),
        frame("bad-json", b"{nope"),
        frame("panics", br#"{"kernel":"panic"}"#),
        frame("done-before", br#"{"kernel":"echo","input":"new"}"#),
        frame("echo", br#"{"kernel":"echo","input":"duplicate id"}"#),
    ];
    stager.stage("b1", "sluice-b1", &frames).await.unwrap();
    // A result written by an earlier attempt must survive untouched.
    let mut con = env.redis().await.unwrap();
    redis::cmd("HSET")
        .arg(format!("{}:result:done-before", env.prefix))
        .arg("status")
        .arg("ok")
        .arg("output")
        .arg("\"old\"")
        .query_async::<()>(&mut con)
        .await
        .unwrap();

    let summary = run_runner(runner_config(&env, "b1")).await;
    assert_eq!(
        (summary.messages, summary.skipped, summary.duplicates),
        (5, 1, 1)
    );
    assert_eq!((summary.written.ok, summary.written.errors), (2, 2));

    let sum = env.result("sum").await.unwrap();
    let expected: u64 = (1..1000_u64).map(|i| i * i % 7).sum();
    assert_eq!(sum["status"], "ok");
    assert_eq!(sum["output"], json!({"sum": expected}).to_string());
    assert_eq!(
        (sum["kernel"].as_str(), sum["batch"].as_str()),
        ("modsum", "b1")
    );
    assert!(sum.contains_key("duration_us") && sum.contains_key("finished_at"));
    assert_eq!(
        env.result("echo").await.unwrap()["output"],
        r#"{"x":[1,2]}"#
    );
    let bad = env.result("bad-json").await.unwrap();
    assert_eq!(bad["status"], "error");
    assert!(bad["error"].contains("not valid JSON"), "{bad:?}");
    assert!(env.result("panics").await.unwrap()["error"].contains("panicked"));
    assert_eq!(
        env.result("done-before").await.unwrap()["output"],
        "\"old\""
    );

    let batch: std::collections::HashMap<String, String> =
        redis::AsyncCommands::hgetall(&mut con, format!("{}:batch:b1", env.prefix))
            .await
            .unwrap();
    assert_eq!(
        (
            batch["state"].as_str(),
            batch["ok"].as_str(),
            batch["errors"].as_str()
        ),
        ("succeeded", "2", "2")
    );
    assert_eq!(env.stream_len().await.unwrap(), 4);
    // The run is recorded, and every message it worked on was recorded before it was started:
    // what names a crash's suspects.
    assert_eq!(batch["runs"], "1");
    let working: std::collections::BTreeSet<String> =
        redis::AsyncCommands::smembers(&mut con, format!("{}:batch:b1:working", env.prefix))
            .await
            .unwrap();
    let expected: std::collections::BTreeSet<String> = ["sum", "echo", "bad-json", "panics"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(working, expected, "the skipped message was never worked on");
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_second_run_over_the_same_batch_writes_nothing_new() {
    let env = TestEnv::new("rerun").await.unwrap();
    let stager = Stager::connect(env.redis_client().unwrap(), Keys::new(&env.prefix), 0)
        .await
        .unwrap();
    let frames: Vec<_> = (0..20)
        .map(|i| {
            frame(
                &format!("m{i}"),
                format!(r#"{{"kernel":"echo","input":{i}}}"#).as_bytes(),
            )
        })
        .collect();
    stager.stage("b2", "sluice-b2", &frames).await.unwrap();

    let first = run_runner(runner_config(&env, "b2")).await;
    assert_eq!(first.written.ok, 20);
    let before = (env.stream_len().await.unwrap(), env.stats().await.unwrap());
    let first_result = env.result("m7").await.unwrap();

    let second = run_runner(runner_config(&env, "b2")).await;
    assert_eq!(
        (
            second.skipped,
            second.written.ok,
            second.written.already_written
        ),
        (20, 0, 0)
    );
    assert_eq!(
        (env.stream_len().await.unwrap(), env.stats().await.unwrap()),
        before
    );
    assert_eq!(env.result("m7").await.unwrap(), first_result);
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn racing_runners_write_each_result_once() {
    let env = TestEnv::new("race").await.unwrap();
    let stager = Stager::connect(env.redis_client().unwrap(), Keys::new(&env.prefix), 0)
        .await
        .unwrap();
    let frames: Vec<_> = (0..200)
        .map(|i| {
            frame(
                &format!("r{i}"),
                br#"{"kernel":"modsum","input":{"n":20000}}"#,
            )
        })
        .collect();
    stager.stage("b3", "sluice-b3", &frames).await.unwrap();
    let (a, b) = tokio::join!(
        run_runner(runner_config(&env, "b3")),
        run_runner(runner_config(&env, "b3"))
    );
    let written = a.written.ok + b.written.ok;
    assert_eq!(
        written, 200,
        "each result written by exactly one runner: {a:?} {b:?}"
    );
    assert_eq!(env.stream_len().await.unwrap(), 200);
    assert_eq!(env.stats().await.unwrap()["ok"], 200);
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_missing_batch_exits_with_the_no_batch_code() {
    let env = TestEnv::new("missing").await.unwrap();
    let config = runner_config(&env, "never-staged");
    let err = tokio::task::spawn_blocking(move || sluice_runner::run(&config))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(i32::from(err.exit_code()), sluice_contract::exit::NO_BATCH);
    assert!(sluice_contract::exit::is_outage(i32::from(err.exit_code())));
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_runner_that_cannot_reach_redis_exits_as_unavailable_and_records_nothing() {
    let env = TestEnv::new("unreachable").await.unwrap();
    let mut config = runner_config(&env, "b1");
    // A port nothing listens on (a closed listener's), and a short retry budget.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.redis_url = format!("redis://127.0.0.1:{port}/");
    config.redis_retry = std::time::Duration::from_millis(300);
    let err = tokio::task::spawn_blocking(move || sluice_runner::run(&config))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        i32::from(err.exit_code()),
        sluice_contract::exit::UNAVAILABLE,
        "{err}"
    );
    env.cleanup().await.unwrap();
}

/// A private Redis on a free port, so the test can start from an empty script cache without
/// touching the shared server's.
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (make services)");
        let url = format!("redis://127.0.0.1:{port}/");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { child, url }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn results_are_written_when_redis_has_never_seen_the_script() {
    let redis = PrivateRedis::start();
    let stager = Stager::connect(
        redis::Client::open(redis.url.as_str()).unwrap(),
        Keys::new("fresh"),
        0,
    )
    .await
    .unwrap();
    let frames: Vec<_> = (0..5)
        .map(|i| frame(&format!("n{i}"), br#"{"kernel":"echo","input":1}"#))
        .collect();
    stager
        .stage("b-fresh", "sluice-b-fresh", &frames)
        .await
        .unwrap();
    let vars = [
        ("BATCH_ID", "b-fresh"),
        ("KEY_PREFIX", "fresh"),
        ("REDIS_URL", redis.url.as_str()),
    ];
    let config = sluice_runner::Config::from_vars(
        vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    )
    .unwrap();
    let summary = run_runner(config).await;
    assert_eq!(
        summary.written.ok, 5,
        "NOSCRIPT was answered by loading the script"
    );
}
