//! SIGTERM on the real `dispatcher` binary: exit 0, nothing lost.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sluice_tests::{Outgoing, TestEnv, binary, require_binaries, spawn_dispatcher};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_loses_nothing() {
    require_binaries().unwrap();
    let env = TestEnv::new("sigterm").await.unwrap();
    let total = 120;
    let ids: Vec<String> = (0..total).map(|i| format!("t{i}")).collect();
    let messages: Vec<Outgoing> = ids
        .iter()
        .map(|id| Outgoing::json(&json!({"id": id, "kernel": "sleep", "input": {"ms": 40}})))
        .collect();
    env.publish(&messages).await.unwrap();

    let mut child = tokio::process::Command::new(binary("dispatcher"))
        .arg("serve")
        .env_clear()
        .envs(env.vars())
        .envs([
            ("MAX_JOBS_IN_FLIGHT", "2"),
            ("BATCH_MAX_MESSAGES", "10"),
            ("SHUTDOWN_GRACE_SECONDS", "30"),
        ])
        .spawn()
        .unwrap();
    // Let it get going: wait until some, but not all, results exist.
    let mut con = env.redis().await.unwrap();
    let stats_key = format!("{}:stats", env.prefix);
    for _ in 0..200 {
        let ok: Option<u64> = redis::AsyncCommands::hget(&mut con, &stats_key, "ok")
            .await
            .unwrap();
        if ok.unwrap_or(0) >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "dispatcher exited with {status}");

    // Everything acked was finished before exit or is parked in Redis (staged, no owner, for
    // the next dispatcher); everything else is still in the queue, none of it returned.
    let done = env.stats().await.unwrap().get("ok").copied().unwrap_or(0);
    let waiting = u64::from(env.queue_depth().await.unwrap());
    let parked: u64 = sluice_tests::outage::batches(&env)
        .await
        .iter()
        .filter(|b| b["state"] == "staged")
        .inspect(|b| assert!(!b.contains_key("owner"), "parked with no owner: {b:?}"))
        .map(|b| b["size"].parse::<u64>().unwrap())
        .sum();
    assert!(
        done < total as u64,
        "SIGTERM came too late to test anything"
    );
    assert_eq!(
        done + parked + waiting,
        total as u64,
        "finished {done} + parked {parked} + queued {waiting} must be all {total}"
    );

    // A new dispatcher finishes the rest; each message ends with exactly one result.
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(env.config(&[]).unwrap(), stop.clone());
    env.wait_for_results(&ids, Duration::from_secs(60))
        .await
        .unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    assert_eq!(env.stream_len().await.unwrap(), total);
    assert_eq!(env.stats().await.unwrap()["ok"], total as u64);
    for batch in sluice_tests::outage::batches(&env).await {
        assert_eq!(batch["redelivered"], "0", "nothing went back: {batch:?}");
    }
    env.cleanup().await.unwrap();
}
