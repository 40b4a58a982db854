//! `dispatcher redrive`: dead letters back on the queue, each exactly once.
//!
//! Real dead letters come from a runner build with a bug: it aborts while working on a
//! "tricky" message (the test kernel `bug`), so poison isolation dead-letters those messages. The bug is then "fixed" (the dispatcher runs the real runner) and the dead letters
//! are redriven, as a user would after deploying a fixed runner image.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use redis::AsyncCommands;
use serde_json::json;
use sluice_contract::Keys;
use sluice_contract::dead;
use sluice_dispatcher::redrive::{self, Selector};
use sluice_tests::dead::{buggy_runner, header};
use sluice_tests::{Outgoing, TestEnv, binary, require_binaries, spawn_dispatcher};
use std::process::Output;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// An echo message; "tricky" ones go to the test kernel `bug`, which the buggy runner dies on.
fn echo(id: &str) -> Outgoing {
    let kernel = if id.starts_with("tricky") {
        "bug"
    } else {
        "echo"
    };
    Outgoing::json(&json!({"id": id, "kernel": kernel, "input": id}))
}

/// Publishes `ids` (echo messages, in batches of `batch_size`) to a dispatcher running the
/// buggy runner and waits until every one has a result: "tricky" ones `dead`, others `ok`.
async fn dead_letter_with_buggy_runner(env: &TestEnv, ids: &[&str], batch_size: usize) {
    let script = buggy_runner(env).unwrap();
    let (size, bin) = (batch_size.to_string(), script.display().to_string());
    let config = env
        .config(&[
            ("RUNNER_BIN", &bin),
            ("BATCH_MAX_MESSAGES", &size),
            ("BATCH_LINGER_MS", "3000"),
            ("JOB_BACKOFF_LIMIT", "0"),
        ])
        .unwrap();
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher(config, stop.clone());
    let messages: Vec<Outgoing> = ids.iter().map(|id| echo(id)).collect();
    env.publish(&messages).await.unwrap();
    let ids: Vec<String> = ids.iter().map(|&id| id.to_owned()).collect();
    let results = env
        .wait_for_results(&ids, Duration::from_secs(120))
        .await
        .unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    let _ = std::fs::remove_file(&script);
    for (id, result) in &results {
        let expected = if id.starts_with("tricky") {
            "dead"
        } else {
            "ok"
        };
        assert_eq!(result["status"], expected, "{id}: {result:?}");
    }
}

/// Each of `ids` is in the dead-letter queue, and nothing else: its body as sent, and why in
/// headers.
async fn assert_in_dead_letter_queue(env: &TestEnv, ids: &[&str]) {
    let letters = env.dead_queue().await.unwrap();
    let mut in_queue: Vec<String> = letters
        .iter()
        .map(|d| header(d, dead::ID).unwrap())
        .collect();
    in_queue.sort();
    assert_eq!(in_queue, ids);
    for letter in &letters {
        let id = header(letter, dead::ID).unwrap();
        assert_eq!(letter.data, echo(&id).body, "{id}: the body byte for byte");
        assert_eq!(
            header(letter, dead::BATCH).unwrap(),
            env.dead_batch(&id).await.unwrap()
        );
        assert!(
            header(letter, dead::REASON).unwrap().contains("signal 6"),
            "{id}"
        );
        let attempts: u64 = header(letter, dead::ATTEMPTS).unwrap().parse().unwrap();
        assert_eq!(
            attempts, 1,
            "{id}: JOB_BACKOFF_LIMIT 0 runs its Job's pod once"
        );
    }
}

type Dispatcher =
    tokio::task::JoinHandle<sluice_dispatcher::Result<sluice_dispatcher::serve::Summary>>;

/// A dispatcher with the real runner: the bug is fixed.
fn fixed_dispatcher(env: &TestEnv) -> (CancellationToken, Dispatcher) {
    let config = env.config(&[("BATCH_LINGER_MS", "50")]).unwrap();
    let stop = CancellationToken::new();
    (stop.clone(), spawn_dispatcher(config, stop))
}

/// Runs the real `dispatcher` binary with this environment and `args`.
async fn dispatcher_cli(env: &TestEnv, extra: &[(&str, &str)], args: &[&str]) -> Output {
    tokio::process::Command::new(binary("dispatcher"))
        .args(args)
        .env_clear()
        .envs(env.vars())
        .envs(extra.iter().copied())
        .output()
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_killed_by_a_since_fixed_runner_bug_is_redriven_by_id_once_and_ends_ok() {
    require_binaries().unwrap();
    let env = TestEnv::new("redrive-id").await.unwrap();
    let config = env.config(&[]).unwrap();
    dead_letter_with_buggy_runner(&env, &["plain-1", "tricky-1", "plain-2", "tricky-2"], 4).await;
    let before = env.dead_list().await.unwrap();
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(
        before.iter().all(|e| !e.contains("body")),
        "the index keeps no body: {before:?}"
    );
    assert_in_dead_letter_queue(&env, &["tricky-1", "tricky-2"]).await;

    // The dry run lists exactly the one and changes nothing.
    let one = Selector::Ids(vec!["tricky-1".into()]);
    let plan = redrive::plan(&config, &one).await.unwrap();
    let listed: Vec<&str> = plan.selected.iter().map(|c| c.letter.id.as_str()).collect();
    assert_eq!((listed, plan.would_publish()), (vec!["tricky-1"], 1));
    assert!(
        plan.selected[0].letter.reason.contains("signal 6"),
        "{plan:?}"
    );
    assert_eq!(env.dead_list().await.unwrap(), before);
    assert_eq!(env.result("tricky-1").await.unwrap()["status"], "dead");
    assert_eq!(env.queue_depth().await.unwrap(), 0);

    let (stop, dispatcher) = fixed_dispatcher(&env);
    let summary = redrive::run(&config, &one).await.unwrap();
    assert_eq!((summary.requeued, summary.left_dead), (1, 1), "{summary:?}");
    let results = env
        .wait_for_results(&["tricky-1".into()], Duration::from_secs(60))
        .await
        .unwrap();
    let result = &results["tricky-1"];
    assert_eq!(
        (result["status"].as_str(), result["output"].as_str()),
        ("ok", "\"tricky-1\""),
        "{result:?}"
    );
    assert_eq!(
        env.stream_statuses("tricky-1").await.unwrap(),
        ["dead", "ok"],
        "one stream entry for the death, exactly one for the re-run"
    );
    let after = env.dead_list().await.unwrap();
    assert!(
        after.len() == 1 && after[0].contains("tricky-2"),
        "only tricky-1 left the dead list: {after:?}"
    );
    assert_eq!(env.result("tricky-2").await.unwrap()["status"], "dead");
    let left: Vec<String> = env
        .dead_queue()
        .await
        .unwrap()
        .iter()
        .map(|d| header(d, dead::ID).unwrap())
        .collect();
    assert_eq!(
        left,
        ["tricky-2"],
        "the redriven one left the dead-letter queue"
    );

    // Exactly once: a second redrive of the same id finds nothing to do.
    let again = redrive::run(&config, &one).await.unwrap();
    assert_eq!(
        (again.requeued, again.not_dead.as_slice()),
        (0, &["tricky-1".to_owned()][..])
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.stream_statuses("tricky-1").await.unwrap(),
        ["dead", "ok"]
    );
    let stats = env.stats().await.unwrap();
    assert_eq!(
        (stats["dead"], stats["redriven"], stats["ok"]),
        (2, 1, 3),
        "counters count events: 2 deaths, 1 redrive, 3 ok results"
    );
    assert!(env.redrive_list().await.unwrap().is_empty());

    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_redrives_by_arrival_batch_then_all_and_a_bare_redrive_only_prints_usage() {
    require_binaries().unwrap();
    let env = TestEnv::new("redrive-cli").await.unwrap();
    // Two batches of two: [tricky-a, plain-a], [tricky-b, plain-b].
    dead_letter_with_buggy_runner(&env, &["tricky-a", "plain-a", "tricky-b", "plain-b"], 2).await;
    let before = env.dead_list().await.unwrap();
    // tricky-a died alone in a half of the batch it arrived in; --batch names the arrival one.
    let died_in = env.dead_batch("tricky-a").await.unwrap();
    let arrived_in = env.root_batch(&died_in).await.unwrap();
    assert_ne!(died_in, arrived_in, "bisection split the batch");
    let b_died_in = env.dead_batch("tricky-b").await.unwrap();
    assert_ne!(env.root_batch(&b_died_in).await.unwrap(), arrived_in);

    let bare = dispatcher_cli(&env, &[], &["redrive"]).await;
    assert_eq!(bare.status.code(), Some(2), "{bare:?}");
    assert!(String::from_utf8_lossy(&bare.stderr).contains("Usage: dispatcher redrive"));

    let dry = dispatcher_cli(&env, &[], &["redrive", "--batch", &arrived_in, "--dry-run"]).await;
    assert!(dry.status.success(), "{dry:?}");
    let listing = stdout(&dry);
    assert!(
        listing.starts_with(&format!("tricky-a\t{died_in}\t"))
            && listing.contains("1 message would go back on"),
        "{listing}"
    );
    assert_eq!(
        env.dead_list().await.unwrap(),
        before,
        "the dry run changed nothing"
    );

    let (stop, dispatcher) = fixed_dispatcher(&env);
    let by_batch = dispatcher_cli(&env, &[], &["redrive", "--batch", &arrived_in]).await;
    assert!(by_batch.status.success(), "{by_batch:?}");
    assert_eq!(
        stdout(&by_batch),
        format!("redrive: 1 message back on {} (1 left dead)\n", env.queue)
    );
    env.wait_for_results(&["tricky-a".into()], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(env.result("tricky-a").await.unwrap()["status"], "ok");
    assert_eq!(env.result("tricky-b").await.unwrap()["status"], "dead");
    let status = stdout(&dispatcher_cli(&env, &[], &["status"]).await);
    assert!(
        status.contains("dead 2, redriven 1")
            && status.contains("dead letters: 1 indexed\n")
            && status.contains(&format!(
                "dead-letter queue {}.dead: 1 message(s)\n",
                env.queue
            )),
        "{status}"
    );

    let all = dispatcher_cli(&env, &[], &["redrive", "--all"]).await;
    assert!(all.status.success(), "{all:?}");
    assert_eq!(
        stdout(&all),
        format!("redrive: 1 message back on {} (0 left dead)\n", env.queue)
    );
    env.wait_for_results(&["tricky-b".into()], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(env.result("tricky-b").await.unwrap()["status"], "ok");
    for id in ["tricky-a", "tricky-b"] {
        assert_eq!(
            env.stream_statuses(id).await.unwrap(),
            ["dead", "ok"],
            "{id}"
        );
    }
    assert!(env.dead_list().await.unwrap().is_empty());

    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

/// Stands in for the 30 s a killed run's lease takes to expire.
async fn expire_lease(env: &TestEnv) {
    let mut con = env.redis().await.unwrap();
    let removed: u64 = con
        .del(Keys::new(&env.prefix).redrive_lock())
        .await
        .unwrap();
    assert_eq!(removed, 1, "the killed run still held its lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_killed_after_taking_is_completed_by_the_next_run() {
    require_binaries().unwrap();
    let env = TestEnv::new("redrive-taken").await.unwrap();
    let ids = ["d1", "d2", "d3"];
    env.dead_letter_directly(&ids).await.unwrap();

    let killed = dispatcher_cli(
        &env,
        &[("SLUICE_FAILPOINT", "redrive-taken")],
        &["redrive", "--all"],
    )
    .await;
    assert!(!killed.status.success(), "{killed:?}");
    // Taken, results deleted, nothing published: only the redrive list knows them now.
    assert_eq!(env.redrive_list().await.unwrap().len(), 3);
    assert!(env.dead_list().await.unwrap().is_empty());
    assert_eq!(
        env.dead_queue().await.unwrap().len(),
        3,
        "the killed run's copies went back to the dead-letter queue"
    );
    assert!(env.result("d1").await.unwrap().is_empty());
    assert_eq!(env.queue_depth().await.unwrap(), 0);

    // While the killed run's lease lasts, a new run refuses, and says why.
    let refused = dispatcher_cli(&env, &[], &["redrive", "--all"]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("another `dispatcher redrive` is running"),
        "{refused:?}"
    );

    expire_lease(&env).await;
    let next = dispatcher_cli(&env, &[], &["redrive", "--all"]).await;
    assert!(next.status.success(), "{next:?}");
    assert_eq!(
        stdout(&next),
        format!(
            "redrive: 3 messages taken by an interrupted redrive re-published\n\
             redrive: 3 messages back on {} (0 left dead)\n",
            env.queue
        )
    );
    assert!(env.redrive_list().await.unwrap().is_empty());
    assert!(env.dead_queue().await.unwrap().is_empty());

    let (stop, dispatcher) = fixed_dispatcher(&env);
    let ids: Vec<String> = ids.iter().map(|&id| id.to_owned()).collect();
    let results = env
        .wait_for_results(&ids, Duration::from_secs(60))
        .await
        .unwrap();
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    for id in &ids {
        assert_eq!(results[id]["status"], "ok", "{id}");
        assert_eq!(
            env.stream_statuses(id).await.unwrap(),
            ["dead", "ok"],
            "{id}"
        );
    }
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_killed_after_publishing_publishes_again_yet_each_message_gets_one_result() {
    require_binaries().unwrap();
    let env = TestEnv::new("redrive-published").await.unwrap();
    let ids = ["p1", "p2"];
    env.dead_letter_directly(&ids).await.unwrap();

    let killed = dispatcher_cli(
        &env,
        &[("SLUICE_FAILPOINT", "redrive-published")],
        &["redrive", "--all"],
    )
    .await;
    assert!(!killed.status.success(), "{killed:?}");
    assert_eq!(
        env.queue_depth().await.unwrap(),
        2,
        "published and confirmed"
    );
    assert_eq!(
        env.redrive_list().await.unwrap().len(),
        2,
        "but not yet released"
    );

    // The next run cannot know the publish got through: it publishes again (at least once).
    expire_lease(&env).await;
    let next = dispatcher_cli(&env, &[], &["redrive", "--all"]).await;
    assert!(next.status.success(), "{next:?}");
    assert_eq!(env.queue_depth().await.unwrap(), 4, "each message twice");

    // The write-once result makes the second delivery harmless.
    let (stop, dispatcher) = fixed_dispatcher(&env);
    let ids: Vec<String> = ids.iter().map(|&id| id.to_owned()).collect();
    env.wait_for_results(&ids, Duration::from_secs(60))
        .await
        .unwrap();
    // Both copies of each are staged; a graceful stop lets their Jobs finish.
    for _ in 0..200 {
        if env.stats().await.unwrap().get("received") == Some(&4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    assert_eq!(env.queue_depth().await.unwrap(), 0);
    for id in &ids {
        assert_eq!(env.result(id).await.unwrap()["status"], "ok", "{id}");
        assert_eq!(
            env.stream_statuses(id).await.unwrap(),
            ["dead", "ok"],
            "{id}"
        );
    }
    let stats = env.stats().await.unwrap();
    assert_eq!((stats["received"], stats["ok"]), (4, 2), "{stats:?}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_stale_and_unreadable_dead_letters_are_published_once_or_left_alone() {
    let env = TestEnv::new("redrive-odd").await.unwrap();
    let config = env.config(&[]).unwrap();
    // "twice" was dead-lettered twice (as a replayed settle can do); "stale" died, yet has
    // an ok result by now; one entry is not a dead letter at all; "old" was dead-lettered by
    // sluice 0.1, with its body in the index and no copy in the queue.
    // "trimmed" is in the dead-letter queue only: the index's cap dropped its entry.
    env.dead_letter_directly(&["twice", "stale", "trimmed"])
        .await
        .unwrap();
    env.dead_letter_old_style("old").await.unwrap();
    let mut con = env.redis().await.unwrap();
    let keys = Keys::new(&env.prefix);
    let twice = env
        .dead_list()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.contains("\"twice\""))
        .unwrap();
    let _: () = con
        .lpush(keys.dead(), &[twice.as_str(), "not json"])
        .await
        .unwrap();
    let _: () = con
        .hset(keys.result("stale"), "status", "ok")
        .await
        .unwrap();
    let trimmed = env
        .dead_list()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.contains("\"trimmed\""))
        .unwrap();
    let _: () = con.lrem(keys.dead(), 1, trimmed).await.unwrap();

    let plan = redrive::plan(&config, &Selector::All).await.unwrap();
    assert_eq!(
        (plan.selected.len(), plan.would_publish(), plan.unreadable),
        (5, 3, 1),
        "{plan:?}"
    );
    let summary = redrive::run(&config, &Selector::All).await.unwrap();
    assert_eq!(
        (
            summary.requeued,
            summary.finished,
            summary.unreadable,
            summary.left_dead
        ),
        (3, 1, 1, 1),
        "{summary:?}"
    );
    assert_eq!(
        env.queue_depth().await.unwrap(),
        3,
        "twice goes out once, old and trimmed once each"
    );
    assert_eq!(env.dead_list().await.unwrap(), ["not json"]);
    assert!(
        env.dead_queue().await.unwrap().is_empty(),
        "the copies of the redriven and of the stale one are acked"
    );
    assert!(env.redrive_list().await.unwrap().is_empty());
    assert_eq!(env.result("stale").await.unwrap()["status"], "ok");
    env.cleanup().await.unwrap();
}
