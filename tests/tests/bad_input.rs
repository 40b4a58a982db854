//! The bad-input matrix beyond the mixed suite: repeated ids in one batch, and a flood of
//! 10,000 messages published at once. Both end with the guarantee checked per message.

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sluice_tests::cases::echoes;
use sluice_tests::guarantee::record;
use sluice_tests::{Outgoing, TestEnv, require_binaries, spawn_dispatcher};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messages_with_the_same_id_in_one_batch_get_one_result() {
    require_binaries().unwrap();
    let env = TestEnv::new("dup-ids").await.unwrap();
    let stop = CancellationToken::new();
    let config = env
        .config(&[("BATCH_MAX_MESSAGES", "6"), ("BATCH_LINGER_MS", "2000")])
        .unwrap();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    let messages: Vec<Outgoing> = ["same", "other-1", "same", "other-2", "same", "other-3"]
        .iter()
        .enumerate()
        .map(|(i, id)| Outgoing::json(&json!({"id": id, "kernel": "echo", "input": i})))
        .collect();
    env.publish(&messages).await.unwrap();
    let ids: Vec<String> = ["same", "other-1", "other-2", "other-3"]
        .map(String::from)
        .to_vec();
    let figures = env.figures(&ids, Duration::from_secs(60)).await.unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    record("the same id three times in one batch", 2, &figures);
    assert_eq!((figures.lost, figures.duplicated), (0, 0), "{figures:?}");
    // The first occurrence in the batch wins.
    assert_eq!(env.result("same").await.unwrap()["output"], "0");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_published_at_once_all_get_one_result() {
    require_binaries().unwrap();
    let env = TestEnv::new("flood").await.unwrap();
    let (ids, messages) = echoes("m", 10_000);
    env.publish(&messages).await.unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(
        env.config(&[("BATCH_MAX_MESSAGES", "500")]).unwrap(),
        stop.clone(),
    );
    let figures = env.figures(&ids, Duration::from_secs(120)).await.unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    record("10,000 messages published at once", 0, &figures);
    assert_eq!((figures.lost, figures.duplicated), (0, 0), "{figures:?}");
    env.cleanup().await.unwrap();
}
