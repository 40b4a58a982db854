//! End-to-end scenarios: the release `dispatcher` and `runner` binaries with the local
//! launcher, against the real RabbitMQ and Redis, one queue and key prefix per run.

use crate::broker::{Publisher, Services, unix_ms, wait_until};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How messages arrive.
#[derive(Clone, Copy, Debug)]
pub enum Arrival {
    /// All waiting in the queue before the dispatcher starts.
    Waiting,
    /// Published as fast as possible once the dispatcher is consuming.
    Burst,
    /// Published at this many messages per second once the dispatcher is consuming.
    Trickle(u32),
}

/// One scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Messages.
    pub messages: usize,
    /// `echo` or `pyecho` (with publish timestamps, for latency), `modsum` (defaults), or `seed`
    /// (plain text `data-<i>` for the default kernel).
    pub kernel: &'static str,
    /// How they arrive.
    pub arrival: Arrival,
    /// Extra dispatcher variables (`BATCH_MAX_MESSAGES`, `STARTUP_DELAY_MS`, `BATCH_MODE`, …).
    pub env: Vec<(&'static str, String)>,
}

/// What a scenario measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measured {
    /// Messages per second, first publish (or consumer start) to last result.
    pub rate: f64,
    /// Median publish-to-result latency, ms (echo only).
    pub p50_ms: f64,
    /// 99th percentile latency, ms (echo only).
    pub p99_ms: f64,
    /// Jobs launched.
    pub jobs: u64,
    /// The dispatcher's peak resident memory, MiB.
    pub peak_rss_mib: f64,
}

fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release")
        .join(name)
}

/// The release dispatcher with the local launcher on queue and key prefix `tag`, plus `env`.
pub fn spawn_dispatcher(
    services: &Services,
    tag: &str,
    env: &[(&'static str, String)],
) -> Result<tokio::process::Child> {
    tokio::process::Command::new(bin("dispatcher"))
        .arg("serve")
        .env_clear()
        .envs([
            ("AMQP_URL", services.amqp.as_str()),
            ("REDIS_URL", &services.redis),
            ("QUEUE", tag),
            ("KEY_PREFIX", tag),
            ("LAUNCHER", "local"),
            ("METRICS_ADDR", ""),
            ("RUST_LOG", "error"),
            ("RUNNER_LOG", "error"),
        ])
        .env("RUNNER_BIN", bin("runner"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .spawn()
        .context("starting target/release/dispatcher (run `make release`)")
}

/// Message `i` of a scenario with `kernel`.
pub fn body(kernel: &str, i: usize) -> Vec<u8> {
    // The pool manager's producers send plain text, to the default kernel.
    if kernel == "seed" {
        return format!("data-{i}").into_bytes();
    }
    let input = if kernel == "echo" || kernel == "pyecho" {
        json!({"t": unix_ms()})
    } else {
        Value::Null
    };
    json!({"id": format!("m{i}"), "kernel": kernel, "input": input})
        .to_string()
        .into_bytes()
}

/// Runs `scenario` and measures it.
pub async fn run(services: &Services, scenario: &Scenario) -> Result<Measured> {
    let tag = format!("bench-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let n = scenario.messages;
    let kernel = scenario.kernel;
    if matches!(scenario.arrival, Arrival::Waiting) {
        services
            .publish(&tag, (0..n).map(|i| body(kernel, i)))
            .await?;
    }
    let mut dispatcher = spawn_dispatcher(services, &tag, &scenario.env)?;
    let queue = tag.clone();
    wait_until(Duration::from_secs(30), || async {
        Ok(services.queue_state(&queue).await?.1 > 0)
    })
    .await?;
    let started = Instant::now();
    match scenario.arrival {
        Arrival::Waiting => {}
        Arrival::Burst => {
            services
                .publish(&tag, (0..n).map(|i| body(kernel, i)))
                .await?;
        }
        Arrival::Trickle(per_second) => trickle(services, &tag, kernel, n, per_second).await?,
    }
    let mut con = services.redis().await?;
    let stats = format!("{tag}:stats");
    wait_until(Duration::from_secs(900), || {
        let (mut con, stats) = (con.clone(), stats.clone());
        async move {
            let done: Vec<Option<usize>> = redis::cmd("HMGET")
                .arg(&stats)
                .arg("ok")
                .arg("error")
                .query_async(&mut con)
                .await?;
            Ok(done.into_iter().flatten().sum::<usize>() >= n)
        }
    })
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let peak_rss_mib = dispatcher.id().map_or(0.0, peak_rss_mib);
    if let Some(pid) = dispatcher.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    dispatcher.wait().await?;
    let jobs: u64 = redis::AsyncCommands::hget(&mut con, &stats, "batches").await?;
    let (p50_ms, p99_ms) = if kernel == "echo" || kernel == "pyecho" {
        latencies(&mut con, &tag, n).await?
    } else {
        (0.0, 0.0)
    };
    services.cleanup(&tag, &tag).await?;
    Ok(Measured {
        rate: n as f64 / elapsed,
        p50_ms,
        p99_ms,
        jobs,
        peak_rss_mib,
    })
}

async fn trickle(
    services: &Services,
    queue: &str,
    kernel: &str,
    n: usize,
    per_second: u32,
) -> Result<()> {
    let publisher = Publisher::open(services, queue).await?;
    let tick = Duration::from_millis(50);
    let per_tick = (per_second as usize / 20).max(1);
    let mut next = 0;
    let mut clock = tokio::time::interval(tick);
    while next < n {
        clock.tick().await;
        let end = (next + per_tick).min(n);
        publisher.send((next..end).map(|i| body(kernel, i))).await?;
        next = end;
    }
    publisher.close().await
}

/// p50 and p99 of `finished_at - t` over every echo result.
async fn latencies(
    con: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    n: usize,
) -> Result<(f64, f64)> {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("HMGET")
            .arg(format!("{prefix}:result:m{i}"))
            .arg("output")
            .arg("finished_at");
    }
    let rows: Vec<(Option<String>, Option<u64>)> = pipe.query_async(con).await?;
    let mut ms: Vec<f64> = rows
        .into_iter()
        .filter_map(|(output, finished)| {
            let t = serde_json::from_str::<Value>(&output?).ok()?["t"].as_u64()?;
            Some(finished?.saturating_sub(t) as f64)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        ms.get(((ms.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok((at(0.5), at(0.99)))
}

/// `VmHWM` (peak resident set) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
