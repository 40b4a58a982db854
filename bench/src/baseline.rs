//! The seed design as the baseline: one Python pika worker per core, prefetch 1, manual ack.

use crate::broker::Services;
use anyhow::{Context, Result, bail};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Drains `n` waiting plain-text messages with one worker per core running the seed kernel;
/// returns messages/second.
pub async fn run(services: &Services, n: usize) -> Result<f64> {
    run_task(services, n, None).await
}

/// [`run`] with the workers running `task` (`BASELINE_TASK`: `cpu_task` is the user function
/// of examples/python) on bodies `data-<i>`.
pub async fn run_task(services: &Services, n: usize, task: Option<&str>) -> Result<f64> {
    let queue = format!(
        "bench-baseline-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    services
        .publish(&queue, (0..n).map(|i| format!("data-{i}").into_bytes()))
        .await?;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/baseline/worker.py");
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for _ in 0..cores {
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg(&queue)
            .env("AMQP_URL", &services.amqp)
            .env("BASELINE_TASK", task.unwrap_or(""))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the Python baseline (python3 with pika: `make tools`)")?;
        let mut lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(_)) = lines.next_line().await {
                let _ = tx.send(());
            }
        });
        workers.push(child);
    }
    // Only the workers' readers hold a sender now: if every worker dies (pika missing, the
    // broker gone), `recv` ends at once instead of waiting out the timeout.
    drop(tx);
    for _ in 0..n {
        if tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .ok()
            .flatten()
            .is_none()
        {
            bail!("the baseline workers stopped answering");
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(workers);
    services.cleanup(&queue, &queue).await?;
    Ok(rate)
}
