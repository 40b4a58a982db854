//! Credentials never reach logs or rendered Jobs. The test creates its own RabbitMQ user and
//! Redis ACL user with unique passwords (and removes them), runs the real binaries at debug
//! log level, and searches everything they printed.

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sluice_tests::{Outgoing, TestEnv, binary, require_binaries};
use std::process::{Command, Stdio};
use std::time::Duration;

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "rabbitmqctl {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_appear_in_no_log_line_and_no_rendered_job() {
    require_binaries().unwrap();
    let env = TestEnv::new("secrets").await.unwrap();
    let user = env.prefix.clone();
    let amqp_pass = format!("amqp-{}", uuid::Uuid::now_v7().simple());
    let redis_pass = format!("redis-{}", uuid::Uuid::now_v7().simple());
    rabbitmqctl(&["add_user", &user, &amqp_pass]);
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
    let mut con = env.redis().await.unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{redis_pass}"))
        .arg(format!("~{}:*", env.prefix))
        .arg("+@all")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let amqp_url = format!("amqp://{user}:{amqp_pass}@127.0.0.1:5672/%2f");
    let redis_url = format!("redis://{user}:{redis_pass}@127.0.0.1:6379/");

    let ids: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    let messages: Vec<Outgoing> = ids
        .iter()
        .map(|id| Outgoing::json(&json!({"id": id, "kernel": "echo", "input": 1})))
        .collect();
    env.publish(&messages).await.unwrap();
    let child = tokio::process::Command::new(binary("dispatcher"))
        .env_clear()
        .envs(env.vars())
        .envs([
            ("AMQP_URL", amqp_url.as_str()),
            ("REDIS_URL", &redis_url),
            ("RUST_LOG", "debug"),
            ("RUNNER_LOG", "debug"),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_for_results(&ids, Duration::from_secs(60))
        .await
        .unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success());
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        logs.contains("dispatcher starting") && logs.contains("batch finished"),
        "debug logs were captured"
    );
    for secret in [&amqp_pass, &redis_pass] {
        assert!(
            !logs.contains(secret.as_str()),
            "a password reached the logs"
        );
    }

    let rendered = Command::new(binary("dispatcher"))
        .arg("render-job")
        .env_clear()
        .envs([("AMQP_URL", &amqp_url), ("REDIS_URL", &redis_url)])
        .output()
        .unwrap();
    let yaml = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        yaml.contains("secretKeyRef") && !yaml.contains(&redis_pass) && !yaml.contains(&amqp_pass),
        "{yaml}"
    );

    redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    rabbitmqctl(&["delete_user", &user]);
    env.cleanup().await.unwrap();
}
