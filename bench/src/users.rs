//! (h) Users' own work: the exec protocol's overhead per message (a Python worker returning its
//! input against the built-in Rust `echo`, on the same messages), and the pool manager's plain
//! Python function (`examples/python/cpu_task.py`) run three ways on the same cores: alone in a
//! `multiprocessing.Pool` of one process per core (what the function itself can do), by the
//! pool manager's pika workers, and by sluice as an exec kernel.

use crate::broker::Services;
use crate::e2e::{self, Arrival};
use crate::{Row, judged, row, scenario, size};
use anyhow::{Context, Result, bail};

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs section (h) into `rows`.
pub async fn run(services: &Services, rows: &mut Vec<Row>) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let path = std::env::var("PATH").unwrap_or_default();
    let cpu = cores.to_string();
    overhead(services, rows, &path, &cpu).await?;
    function(services, rows, &path, &cpu, cores).await
}

async fn overhead(services: &Services, rows: &mut Vec<Row>, path: &str, cpu: &str) -> Result<()> {
    let table = repo("bench/exec/kernels.toml");
    let env = [
        ("BATCH_MAX_MESSAGES", "1000"),
        ("BATCH_MODE", "fixed"),
        ("RUNNER_CPU", cpu),
        ("KERNELS_FILE", table.as_str()),
        ("PATH", path),
    ];
    let n = size(20_000);
    let rust = e2e::run(services, &scenario(n, "echo", Arrival::Waiting, &env)).await?;
    let python = e2e::run(services, &scenario(n, "pyecho", Arrival::Waiting, &env)).await?;
    let per_message_us = (1.0 / python.rate - 1.0 / rust.rate) * 1e6;
    let section = "(h) users' work: exec overhead";
    rows.push(row(
        section,
        "echo, built-in Rust kernel, batch 1000",
        format!("{:.0} msg/s", rust.rate),
    ));
    rows.push(row(
        section,
        "echo, Python exec worker (sluice_worker), same messages",
        format!("{:.0} msg/s", python.rate),
    ));
    rows.push(row(
        section,
        "exec protocol's cost per message (wall time, all cores)",
        format!("{per_message_us:.0} µs"),
    ));
    Ok(())
}

async fn function(
    services: &Services,
    rows: &mut Vec<Row>,
    path: &str,
    cpu: &str,
    cores: usize,
) -> Result<()> {
    let n = size(cores * 40);
    let alone = alone(n, cores)?;
    let pool = crate::baseline::run_task(services, n, Some("cpu_task")).await?;
    let table = repo("examples/python/kernels.toml");
    let env = [
        ("DEFAULT_KERNEL", "seed"),
        ("RUNNER_CPU", cpu),
        ("KERNELS_FILE", table.as_str()),
        ("PATH", path),
    ];
    let ours = e2e::run(services, &scenario(n, "seed", Arrival::Waiting, &env)).await?;
    let section = "(h) users' work: cpu_intensive_task";
    rows.push(row(
        section,
        format!("the function alone, multiprocessing.Pool({cores})"),
        format!("{alone:.2} msg/s"),
    ));
    rows.push(row(
        section,
        "pool manager: pika workers (1/core, prefetch 1), same function",
        format!("{pool:.2} msg/s ({:.0}% of alone)", pool / alone * 100.0),
    ));
    rows.push(row(
        section,
        "sluice exec kernel (sluice_worker), same function",
        format!(
            "{:.2} msg/s ({} Jobs); {:.2}× the pika pool",
            ours.rate,
            ours.jobs,
            ours.rate / pool
        ),
    ));
    let fraction = ours.rate / alone;
    rows.push(judged(
        section,
        "sluice ÷ the function alone",
        format!("{:.0}%", fraction * 100.0),
        "≥ 95%",
        fraction >= 0.95,
    ));
    Ok(())
}

/// Messages per second of `cpu_intensive_task` over `n` bodies in a pool of `cores` processes.
fn alone(n: usize, cores: usize) -> Result<f64> {
    let script = format!(
        "import multiprocessing, time, cpu_task\n\
         bodies = [f'data-{{i}}' for i in range({n})]\n\
         with multiprocessing.Pool({cores}) as pool:\n\
         \x20   pool.map(cpu_task.cpu_intensive_task, bodies[:{cores}])\n\
         \x20   started = time.perf_counter()\n\
         \x20   pool.map(cpu_task.cpu_intensive_task, bodies, chunksize=1)\n\
         \x20   print({n} / (time.perf_counter() - started))\n"
    );
    let output = std::process::Command::new("python3")
        .args(["-c", &script])
        .current_dir(repo("examples/python"))
        .output()
        .context("running python3 for the function alone")?;
    if !output.status.success() {
        bail!(
            "the function alone failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}
