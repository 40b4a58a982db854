//! A producer that is not ours: Python pika's plain `basic_publish`, read back with redis-cli.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use sluice_tests::{TestEnv, require_binaries, spawn_dispatcher};
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn redis_cli_hgetall(env: &TestEnv, id: &str) -> String {
    let out = Command::new("redis-cli")
        .args([
            "-u",
            &env.redis_url,
            "HGETALL",
            &format!("{}:result:{id}", env.prefix),
        ])
        .output()
        .expect("redis-cli must be installed (make services installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_producers_get_results_that_redis_cli_shows() {
    require_binaries().unwrap();
    let env = TestEnv::new("pika").await.unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(
        env.config(&[("BATCH_LINGER_MS", "50")]).unwrap(),
        stop.clone(),
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/pika/producer.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&env.queue)
        .env("AMQP_URL", &env.amqp_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the pika producer failed (is pika installed? `pip install pika`): {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ids = ["pika-json", "pika-text", "pika-prop"].map(String::from);
    env.wait_for_results(&ids, Duration::from_secs(60))
        .await
        .unwrap();
    let primes = redis_cli_hgetall(&env, "pika-json");
    assert!(
        primes.contains("status\nok\n") && primes.contains(r#"{"count":78498}"#),
        "{primes}"
    );
    let text = redis_cli_hgetall(&env, "pika-text");
    assert!(
        text.contains(r#"{"sum":4979993748}"#),
        "plain text runs the default kernel: {text}"
    );
    let prop = redis_cli_hgetall(&env, "pika-prop");
    assert!(prop.contains("[1,2]"), "{prop}");
    assert!(
        env.result("ignored").await.unwrap().is_empty(),
        "message_id property wins over the body id"
    );

    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}
