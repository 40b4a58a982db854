//! (i) What sluice costs Redis: the memory one staged message and one result take, measured on
//! what the release binaries wrote (the growth of Redis's `used_memory`, with `MEMORY USAGE`'s
//! split of a result between its hash and its stream entry), and the sustained rate that the
//! manifests' `maxmemory`, `RESULT_TTL_SECONDS` and `REDIS_PAUSE_PERCENT` allow (README, Sizing).

use crate::broker::{Services, wait_until};
use crate::e2e::{body, spawn_dispatcher};
use crate::{Row, row, size};
use anyhow::{Context, Result};
use std::time::Duration;

const SECTION: &str = "(i) redis memory";

/// Bytes per message, measured.
struct Cost {
    /// `used_memory` growth per message while every batch is staged and none has run.
    staged: f64,
    /// `used_memory` growth per result once every batch is settled.
    result: f64,
    /// `MEMORY USAGE` of one result's hash (mean over a sample).
    hash: f64,
    /// The results stream's `MEMORY USAGE` per entry.
    entry: f64,
}

/// Measures the seed's messages (plain text for the default kernel) and tiny echo envelopes,
/// then the rate the manifests are sized for.
pub async fn run(services: &Services, rows: &mut Vec<Row>) -> Result<()> {
    let mut seed = None;
    for kernel in ["seed", "echo"] {
        let cost = measure(services, kernel, size(20_000)).await?;
        rows.push(row(
            SECTION,
            format!("{kernel}: per staged message"),
            format!("{:.0} B", cost.staged),
        ));
        rows.push(row(
            SECTION,
            format!("{kernel}: per result"),
            format!(
                "{:.0} B (MEMORY USAGE: hash {:.0} B, stream entry {:.0} B)",
                cost.result, cost.hash, cost.entry
            ),
        ));
        if kernel == "seed" {
            seed = Some(cost);
        }
    }
    let cost = seed.context("the seed's figures")?;
    let sizing = Manifests::read()?;
    rows.push(row(
        SECTION,
        format!(
            "manifests: maxmemory {}mb, RESULT_TTL_SECONDS {}, REDIS_PAUSE_PERCENT {}",
            sizing.maxmemory_mb, sizing.ttl_seconds, sizing.pause_percent
        ),
        format!(
            "{:.0} msg/s sustained (seed's results)",
            sizing.rate(cost.result)
        ),
    ));
    Ok(())
}

async fn measure(services: &Services, kernel: &'static str, n: usize) -> Result<Cost> {
    let tag = format!(
        "bench-mem-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let mut con = services.redis().await?;
    let before = used_memory(&mut con).await?;
    services
        .publish(&tag, (0..n).map(|i| body(kernel, i)))
        .await?;
    // Every batch is staged and launched at once; its runner waits out a simulated start-up,
    // so for those seconds Redis holds every message staged and no result yet.
    let env = [
        ("BATCH_MODE", "fixed".to_owned()),
        ("BATCH_MAX_MESSAGES", "500".to_owned()),
        ("MAX_JOBS_IN_FLIGHT", "1000".to_owned()),
        ("STARTUP_DELAY_MS", "15000".to_owned()),
    ];
    let mut dispatcher = spawn_dispatcher(services, &tag, &env)?;
    let stats = format!("{tag}:stats");
    let counter = con.clone();
    let count = |fields: &'static [&'static str]| {
        let (mut con, stats) = (counter.clone(), stats.clone());
        async move {
            let counts: Vec<Option<usize>> = redis::cmd("HMGET")
                .arg(&stats)
                .arg(fields)
                .query_async(&mut con)
                .await?;
            Ok::<_, anyhow::Error>(counts.into_iter().flatten().sum::<usize>())
        }
    };
    wait_until(Duration::from_secs(60), || async {
        Ok(count(&["received"]).await? >= n)
    })
    .await?;
    let staged = used_memory(&mut con).await?;
    wait_until(Duration::from_secs(300), || async {
        Ok(count(&["ok", "error"]).await? >= n)
    })
    .await?;
    // Settled batches drop their staged messages: what stays is the results.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = used_memory(&mut con).await?;
    let (hash, entry) = usage(&mut con, &tag).await?;
    if let Some(pid) = dispatcher.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    dispatcher.wait().await?;
    services.cleanup(&tag, &tag).await?;
    let per = |bytes: u64| bytes.saturating_sub(before) as f64 / n as f64;
    Ok(Cost {
        staged: per(staged),
        result: per(settled),
        hash,
        entry,
    })
}

async fn used_memory(con: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(con).await?;
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix("used_memory:"))
        .and_then(|v| v.parse().ok())
        .context("used_memory in INFO memory")
}

/// Mean `MEMORY USAGE` of up to 1,000 result hashes, and the stream's per entry.
async fn usage(con: &mut redis::aio::MultiplexedConnection, tag: &str) -> Result<(f64, f64)> {
    let mut keys = Vec::new();
    {
        let pattern = format!("{tag}:result:*");
        let mut iter = redis::AsyncCommands::scan_match::<_, String>(con, pattern).await?;
        while let Some(key) = iter.next_item().await {
            keys.push(key?);
            if keys.len() == 1_000 {
                break;
            }
        }
    }
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0);
    }
    let sizes: Vec<u64> = pipe.query_async(con).await?;
    let stream = format!("{tag}:results");
    let (stream_bytes, entries): (u64, u64) = redis::pipe()
        .cmd("MEMORY")
        .arg("USAGE")
        .arg(&stream)
        .arg("SAMPLES")
        .arg(0)
        .xlen(&stream)
        .query_async(con)
        .await?;
    let mean = sizes.iter().sum::<u64>() as f64 / sizes.len().max(1) as f64;
    Ok((mean, stream_bytes as f64 / entries.max(1) as f64))
}

/// The sizing settings the shipped manifests carry.
struct Manifests {
    /// Redis's `mb`: 1024 × 1024 bytes.
    maxmemory_mb: u64,
    ttl_seconds: u64,
    pause_percent: u64,
}

impl Manifests {
    fn read() -> Result<Self> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let redis = std::fs::read_to_string(root.join("redis.yaml"))?;
        let dispatcher = std::fs::read_to_string(root.join("base/dispatcher.yaml"))?;
        let maxmemory = redis
            .split("--maxmemory,")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|v| v.trim().strip_suffix("mb"))
            .and_then(|mb| mb.parse::<u64>().ok())
            .context("--maxmemory in manifests/redis.yaml")?;
        let setting = |name: &str| -> Result<u64> {
            dispatcher
                .lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_matches('"').parse().ok())
                .with_context(|| format!("{name} in manifests/base/dispatcher.yaml"))
        };
        Ok(Self {
            maxmemory_mb: maxmemory,
            ttl_seconds: setting("RESULT_TTL_SECONDS")?,
            pause_percent: setting("REDIS_PAUSE_PERCENT")?,
        })
    }

    /// Results per second that fill `maxmemory` to the pause mark just as the first expire.
    fn rate(&self, bytes_per_result: f64) -> f64 {
        let room = (self.maxmemory_mb * 1024 * 1024) as f64 * self.pause_percent as f64 / 100.0;
        room / (self.ttl_seconds as f64 * bytes_per_result)
    }
}
