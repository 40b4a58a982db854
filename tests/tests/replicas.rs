//! Several dispatchers on one queue and key prefix, as a Deployment at two or more replicas
//! runs them: dispatcher processes `SIGKILL`ed and never restarted (a lost node), killed at
//! random under load, and a Redis outage longer than every retry budget. Each ends with the
//! guarantee checked message by message, exactly one dead-list entry for the poison message,
//! and no batch left open (see `dispatcher/src/reconcile`).

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use redis::AsyncCommands;
use serde_json::json;
use sluice_contract::Keys;
use sluice_dispatcher::metrics::Metrics;
use sluice_dispatcher::status;
use sluice_tests::guarantee::{Figures, record};
use sluice_tests::proxy::Proxy;
use sluice_tests::{Outgoing, TestEnv, binary, require_binaries, spawn_dispatcher_with};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const SETTLE: Duration = Duration::from_secs(180);
const POISON: &str = "poison";

/// Settings every case shares: small batches, so that each dispatcher has several in flight.
const SETTINGS: [(&str, &str); 6] = [
    ("BATCH_MAX_MESSAGES", "20"),
    ("MAX_JOBS_IN_FLIGHT", "4"),
    ("JOB_BACKOFF_LIMIT", "1"),
    ("OUTAGE_RETRY_SECONDS", "0.2"),
    ("OUTAGE_RETRY_MAX_SECONDS", "1"),
    ("REDIS_RETRY_SECONDS", "2"),
];

/// `count` sleep messages of `ms` each with one `crash` message (kills its runner) among them.
fn workload(tag: &str, count: usize, ms: u64) -> (Vec<String>, Vec<Outgoing>) {
    let mut ids: Vec<String> = (0..count).map(|i| format!("{tag}{i}")).collect();
    ids.insert(count / 3, POISON.to_owned());
    let messages = ids
        .iter()
        .map(|id| {
            let (kernel, input) = if id == POISON {
                ("crash", json!(null))
            } else {
                ("sleep", json!({"ms": ms}))
            };
            Outgoing::json(&json!({"id": id, "kernel": kernel, "input": input}))
        })
        .collect();
    (ids, messages)
}

/// A dispatcher process named `id`, as a replica of a Deployment runs.
fn replica(env: &TestEnv, id: &str) -> Child {
    Command::new(binary("dispatcher"))
        .env_clear()
        .envs(env.vars())
        .envs(SETTINGS)
        .env("DISPATCHER_ID", id)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// SIGKILLs a replica (a lost node: no shutdown, no lease released) and reaps it.
async fn kill(child: &mut Child) {
    child.start_kill().unwrap();
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
}

/// Waits until dispatcher `id` owns at least one open batch.
async fn owns_open_batches(env: &TestEnv, id: &str, within: Duration) {
    let config = env.config(&[]).unwrap();
    let deadline = Instant::now() + within;
    loop {
        let report = status::report(&config).await.unwrap();
        let stored = report.redis.as_ref().unwrap();
        if stored.owners.get(id).is_some_and(|(n, _)| *n > 0) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never owned a batch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The guarantee, the poison message's single dead-list entry, and nothing left open.
async fn check(env: &TestEnv, fault: &str, injected: usize, figures: &Figures) {
    record(fault, injected, figures);
    assert_eq!(
        (figures.lost, figures.duplicated),
        (0, 0),
        "{fault}: {figures:?}"
    );
    assert_eq!(
        figures.dead, 1,
        "{fault}: only the poison message: {figures:?}"
    );
    let dead = env.dead_list().await.unwrap();
    assert_eq!(dead.len(), 1, "{fault}: one dead-list entry: {dead:?}");
    assert!(
        dead[0].contains(&format!("\"id\":\"{POISON}\"")),
        "{dead:?}"
    );
    let keys = Keys::new(&env.prefix);
    let mut con = env.redis().await.unwrap();
    // Settling is the last step after the last result: give it its reconcile pass.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open: usize = con.scard(keys.open_batches()).await.unwrap();
        let running: usize = con.scard(keys.running_batches()).await.unwrap();
        if (open, running) == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{fault}: {open} batch(es) left open, {running} counted running"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops replicas gracefully (SIGTERM), as a rollout does, and checks they exit 0.
async fn stop_all(children: &mut [Child]) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for child in children.iter_mut() {
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "a replica stopped with {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_sigkilled_and_never_restarted_the_other_finishes_every_batch() {
    require_binaries().unwrap();
    let env = TestEnv::new("two-replicas").await.unwrap();
    let (ids, messages) = workload("m", 400, 40);
    env.publish(&messages).await.unwrap();
    let mut lost = replica(&env, "lost");
    let mut survivor = replica(&env, "survivor");
    owns_open_batches(&env, "lost", Duration::from_secs(60)).await;
    kill(&mut lost).await;
    let figures = env.figures(&ids, SETTLE).await.unwrap();
    check(
        &env,
        "one of two replicas SIGKILLed, never restarted",
        1,
        &figures,
    )
    .await;
    let adopted = status::report(&env.config(&[]).unwrap()).await.unwrap();
    assert!(
        adopted.redis.unwrap().owners.is_empty(),
        "no batch left to anyone"
    );
    stop_all(std::slice::from_mut(&mut survivor)).await;
    env.cleanup().await.unwrap();
}

/// A small deterministic generator: the seed is printed, so a failure can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sigkilled_at_random_under_load_lose_and_duplicate_nothing() {
    require_binaries().unwrap();
    let env = TestEnv::new("random-kills").await.unwrap();
    let (ids, messages) = workload("r", 800, 30);
    env.publish(&messages).await.unwrap();
    let seed = u64::from(std::process::id()) ^ sluice_contract::record::unix_millis();
    println!("random kills: seed {seed}");
    let mut dice = Dice(seed);
    let mut started = 0;
    let mut next_id = || {
        started += 1;
        format!("replica-{started}")
    };
    let mut replicas: Vec<Child> = (0..3).map(|_| replica(&env, &next_id())).collect();
    let kills = 5;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(500 + dice.roll(1_500))).await;
        let victim = dice.roll(replicas.len() as u64) as usize;
        kill(&mut replicas[victim]).await;
        replicas[victim] = replica(&env, &next_id());
    }
    let figures = env.figures(&ids, SETTLE).await.unwrap();
    check(&env, "three replicas, SIGKILLed at random", kills, &figures).await;
    stop_all(&mut replicas).await;
    env.cleanup().await.unwrap();
}

/// Polls until `ready` holds of the dispatcher's readiness, at most `within`.
async fn wait_readiness(
    metrics: &Metrics,
    within: Duration,
    ready: impl Fn(&Result<(), String>) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let now = metrics.health().ready();
        if ready(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "readiness stayed {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_longer_than_every_retry_budget_then_back_settles_every_batch_without_a_restart()
{
    require_binaries().unwrap();
    let env = TestEnv::new("redis-cut").await.unwrap();
    let target = env.redis_url.trim_start_matches("redis://");
    let proxy = Proxy::start(target.trim_end_matches('/').parse().unwrap())
        .await
        .unwrap();
    let url = format!("redis://127.0.0.1:{}/", proxy.port());
    let mut vars = SETTINGS.to_vec();
    vars.push(("REDIS_URL", &url));
    let config = env.config(&vars).unwrap();
    let (ids, messages) = workload("c", 300, 20);
    let (before, during) = messages.split_at(messages.len() / 2);
    env.publish(before).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let dispatcher = spawn_dispatcher_with(config.clone(), Arc::clone(&metrics), stop.clone());
    wait_readiness(&metrics, Duration::from_secs(30), Result::is_ok).await;
    let _ = env
        .wait_for_results(&ids[..10], Duration::from_secs(60))
        .await;

    // Longer than the dispatcher's per-call Redis budget and the runners' REDIS_RETRY_SECONDS.
    let cut = sluice_dispatcher::stage::REDIS_BUDGET + Duration::from_secs(10);
    let cut_at = Instant::now();
    proxy.cut(cut);
    env.publish(during).await.unwrap();
    wait_readiness(&metrics, Duration::from_secs(30), |r| {
        r.as_ref().is_err_and(|e| e.contains("redis:"))
    })
    .await;
    assert!(metrics.render().contains("sluice_redis_up 0"));
    let report = status::report(&config).await.unwrap();
    assert!(
        report.to_string().contains("redis: UNREACHABLE"),
        "{report}"
    );
    // Until just before the proxy lets connections through again by itself.
    while cut_at.elapsed() + Duration::from_secs(2) < cut {
        // Liveness holds throughout: the dispatcher makes progress as soon as Redis is back.
        assert_eq!(metrics.health().live(Instant::now()), Ok(()));
        assert!(
            metrics
                .health()
                .ready()
                .is_err_and(|e| e.contains("redis:"))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    proxy.restore();

    let figures = env.figures(&ids, SETTLE).await.unwrap();
    check(&env, "Redis cut past every retry budget", 1, &figures).await;
    wait_readiness(&metrics, Duration::from_secs(30), Result::is_ok).await;
    assert!(metrics.render().contains("sluice_redis_up 1"));
    stop.cancel();
    dispatcher.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}
