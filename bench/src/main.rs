//! `make bench`: sluice against the seed design's worker and against one Job per message, on
//! this machine, in one run, printed as one table. Figures are ratios measured side by side;
//! nothing here is a test.
//!
//! # Layout
//! - [`broker`]: publishing, draining, the raw broker ceiling, clean-up.
//! - [`baseline`]: the Python pika worker pool of the seed design.
//! - [`e2e`]: end-to-end scenarios through the release binaries.
//! - [`micro`]: criterion's kernel figures.
//! - [`plot`]: the throughput-against-batch-size chart.
//! - [`redis_memory`]: what a staged message and a result cost Redis, and the rate the
//!   manifests' Redis is sized for.
//! - [`users`]: users' own work: the exec protocol's cost, a Python function three ways.

mod baseline;
mod broker;
mod e2e;
mod micro;
mod plot;
mod redis_memory;
mod users;

use anyhow::Result;
use broker::Services;
use e2e::{Arrival, Scenario};
use micro::{Scaling, median};

/// One line of the report.
pub(crate) struct Row {
    section: &'static str,
    what: String,
    value: String,
    target: &'static str,
    holds: Option<bool>,
}

pub(crate) fn row(section: &'static str, what: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        section,
        what: what.into(),
        value: value.into(),
        target: "",
        holds: None,
    }
}

pub(crate) fn judged(
    section: &'static str,
    what: impl Into<String>,
    value: impl Into<String>,
    target: &'static str,
    holds: bool,
) -> Row {
    Row {
        section,
        what: what.into(),
        value: value.into(),
        target,
        holds: Some(holds),
    }
}

/// Whether section `letter` runs: all of them, unless `BENCH_ONLY` names some (e.g. `ce`).
fn wanted(letter: char) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.contains(letter))
}

/// Whether this is a quick smoke run (`BENCH_QUICK=1`): fewer messages and rounds.
fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some()
}

/// Rounds of the side-by-side comparisons in (a) and (e): 3, or 1 for a quick run.
fn rounds() -> usize {
    if quick() { 1 } else { 3 }
}

/// Scales message counts down for a quick smoke run.
pub(crate) fn size(n: usize) -> usize {
    if quick() { (n / 10).max(10) } else { n }
}

pub(crate) fn scenario(
    messages: usize,
    kernel: &'static str,
    arrival: Arrival,
    env: &[(&'static str, &str)],
) -> Scenario {
    Scenario {
        messages,
        kernel,
        arrival,
        env: env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let services = Services::from_env();
    let mut rows = Vec::new();
    // (b) first: right after end-to-end runs the broker's schedulers are still busy-waiting,
    // and two threads of a kernel would share the cores with them.
    if wanted('b') {
        kernels(&mut rows)?;
    }
    if wanted('a') {
        seed_kernel(&services, &mut rows).await?;
    }
    let mut plain = Vec::new();
    if wanted('c') {
        plain = batch_sweep(&services, &mut rows, "0", "(c) echo, burst").await?;
    }
    let mut delayed = Vec::new();
    if wanted('d') {
        delayed = batch_sweep(&services, &mut rows, "1500", "(d) echo, 1.5 s start-up").await?;
    }
    if wanted('e') {
        broker_ceiling(&services, &mut rows).await?;
    }
    if wanted('f') {
        memory(&services, &mut rows).await?;
    }
    if wanted('g') {
        adaptive(&services, &mut rows).await?;
    }
    if wanted('h') {
        users::run(&services, &mut rows).await?;
    }
    if wanted('i') {
        redis_memory::run(&services, &mut rows).await?;
    }
    rows.sort_by_key(|r| r.section.get(..3).unwrap_or_default().to_owned());
    print(&rows);
    if plain.is_empty() || delayed.is_empty() {
        return Ok(());
    }
    let png = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/perf/throughput-vs-batch.png");
    std::fs::create_dir_all(png.parent().unwrap_or(std::path::Path::new(".")))?;
    let series = [
        ("no start-up delay", plain),
        ("1.5 s simulated pod start-up", delayed),
    ];
    match plot::throughput(&png, "sluice: echo throughput against batch size", &series) {
        Ok(()) => println!("\nplot: {}", png.display()),
        Err(e) => println!("\nplot skipped: {e}"),
    }
    Ok(())
}

/// (a) The seed kernel: the Python pool against sluice, draining waiting messages, in
/// alternating rounds so that a change in the shared host's speed hits both sides alike.
async fn seed_kernel(services: &Services, rows: &mut Vec<Row>) -> Result<()> {
    let (mut python, mut sluice, mut ratios, mut jobs) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..rounds() {
        let baseline = baseline::run(services, size(24)).await?;
        let ours = e2e::run(
            services,
            &scenario(size(1_000), "modsum", Arrival::Waiting, &[]),
        )
        .await?;
        python.push(baseline);
        sluice.push(ours.rate);
        ratios.push(ours.rate / baseline);
        jobs = ours.jobs;
    }
    let ratio = median(&mut ratios);
    rows.push(row(
        "(a) seed kernel",
        "Python pika pool (1 worker/core, prefetch 1)",
        format!("{:.1} msg/s", median(&mut python)),
    ));
    rows.push(row(
        "(a) seed kernel",
        "sluice, defaults",
        format!("{:.1} msg/s ({jobs} Jobs)", median(&mut sluice)),
    ));
    rows.push(judged(
        "(a) seed kernel",
        "sluice ÷ baseline (median of rounds)",
        format!("{ratio:.0}×"),
        "≥ 40×",
        ratio >= 40.0,
    ));
    Ok(())
}

/// (b) Kernels on one thread against every core: criterion's mean times, and the efficiency
/// judged from interleaved runs, beside what the host gives independent copies (see
/// [`micro::scaling`]).
fn kernels(rows: &mut Vec<Row>) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let triples = if quick() { 3 } else { 21 };
    let scaling = micro::scaling(&micro::KERNELS.map(|(_, k)| k), cores, triples)?;
    for ((bench, _), Scaling { rayon, copies }) in micro::KERNELS.into_iter().zip(scaling) {
        let one = micro::mean_ms(bench, 1)?;
        let all = micro::mean_ms(bench, cores)?;
        let value = format!(
            "criterion {one:.1} ms → {all:.1} ms on {cores} threads; interleaved: {:.0}% \
             (the host, {cores} single-thread copies at once: {:.0}%)",
            rayon * 100.0,
            copies * 100.0
        );
        rows.push(if bench.starts_with("modsum") {
            judged(
                "(b) kernels",
                bench,
                value,
                "≥ 90% efficiency",
                rayon >= 0.9,
            )
        } else {
            row("(b) kernels", bench, value)
        });
    }
    Ok(())
}

/// (c)/(d) `echo` in a burst at several batch sizes; returns (batch, msg/s) points.
async fn batch_sweep(
    services: &Services,
    rows: &mut Vec<Row>,
    delay: &str,
    section: &'static str,
) -> Result<Vec<(f64, f64)>> {
    let delayed = delay != "0";
    let sizes: &[(usize, usize)] = if delayed {
        &[
            (1, 40),
            (10, 400),
            (100, 4_000),
            (500, 10_000),
            (1_000, 10_000),
        ]
    } else {
        &[(1, 2_000), (10, 5_000), (100, 20_000), (1_000, 20_000)]
    };
    let mut points = Vec::new();
    for &(batch, n) in sizes {
        let b = batch.to_string();
        let env = [
            ("BATCH_MAX_MESSAGES", b.as_str()),
            ("STARTUP_DELAY_MS", delay),
            ("BATCH_MODE", "fixed"),
        ];
        let m = e2e::run(services, &scenario(size(n), "echo", Arrival::Burst, &env)).await?;
        let value = format!(
            "{:.0} msg/s, p50 {:.0} ms, p99 {:.0} ms ({} Jobs)",
            m.rate, m.p50_ms, m.p99_ms, m.jobs
        );
        rows.push(row(section, format!("batch {batch}"), value));
        points.push((batch as f64, m.rate));
    }
    if delayed {
        let rate = |b: f64| {
            points
                .iter()
                .find(|(x, _)| (*x - b).abs() < 0.5)
                .map_or(0.0, |(_, y)| *y)
        };
        let ratio = rate(500.0) / rate(1.0).max(f64::MIN_POSITIVE);
        rows.push(judged(
            section,
            "batch 500 ÷ batch 1",
            format!("{ratio:.0}×"),
            "≥ 100×",
            ratio >= 100.0,
        ));
    }
    Ok(points)
}

/// (e) The raw broker ceiling against sluice's `echo` at batch 1000, both draining waiting
/// messages, in alternating rounds.
async fn broker_ceiling(services: &Services, rows: &mut Vec<Row>) -> Result<()> {
    let n = size(50_000);
    let (mut single, mut multiple, mut sluice, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds() {
        let mut ceilings = Vec::new();
        for ack_every in [1, 1_000] {
            let queue = format!(
                "bench-raw-{}",
                &uuid::Uuid::now_v7().simple().to_string()[20..]
            );
            let bodies =
                (0..n).map(|i| format!("{{\"id\":\"m{i}\",\"kernel\":\"echo\"}}").into_bytes());
            services.publish(&queue, bodies).await?;
            ceilings.push(services.raw_drain(&queue, n, 1_000, ack_every).await?);
            services.cleanup(&queue, &queue).await?;
        }
        let env = [("BATCH_MAX_MESSAGES", "1000"), ("BATCH_MODE", "fixed")];
        let ours = e2e::run(services, &scenario(n, "echo", Arrival::Waiting, &env)).await?;
        ratios.push(ours.rate / ceilings[0].max(ceilings[1]));
        single.push(ceilings[0]);
        multiple.push(ceilings[1]);
        sluice.push(ours.rate);
    }
    let fraction = median(&mut ratios);
    rows.push(row(
        "(e) broker ceiling",
        "plain lapin loop, one ack per message",
        format!("{:.0} msg/s", median(&mut single)),
    ));
    rows.push(row(
        "(e) broker ceiling",
        "plain lapin loop, one multiple-ack per 1,000",
        format!("{:.0} msg/s", median(&mut multiple)),
    ));
    rows.push(row(
        "(e) broker ceiling",
        "sluice echo, batch 1000",
        format!("{:.0} msg/s", median(&mut sluice)),
    ));
    rows.push(judged(
        "(e) broker ceiling",
        "sluice ÷ the faster ceiling (median of rounds)",
        format!("{:.0}%", fraction * 100.0),
        "≥ 50%",
        fraction >= 0.5,
    ));
    Ok(())
}

/// (f) The dispatcher's peak memory while 100,000 messages wait.
async fn memory(services: &Services, rows: &mut Vec<Row>) -> Result<()> {
    let env = [("BATCH_MAX_MESSAGES", "1000"), ("BATCH_MODE", "fixed")];
    let m = e2e::run(
        services,
        &scenario(size(100_000), "echo", Arrival::Waiting, &env),
    )
    .await?;
    let value = format!(
        "{:.1} MiB peak RSS (drained at {:.0} msg/s)",
        m.peak_rss_mib, m.rate
    );
    rows.push(judged(
        "(f) memory",
        "dispatcher, 100,000 waiting",
        value,
        "≤ 64 MiB",
        m.peak_rss_mib <= 64.0,
    ));
    Ok(())
}

/// One adaptive-against-fixed comparison: section, messages, kernel, arrival, start-up delay
/// (ms), and the fixed sizes to compare with.
type Comparison = (
    &'static str,
    usize,
    &'static str,
    Arrival,
    &'static str,
    &'static [usize],
);

/// (g) Adaptive batching against fixed sizes, on a burst and on a trickle.
async fn adaptive(services: &Services, rows: &mut Vec<Row>) -> Result<()> {
    let cases: [Comparison; 3] = [
        (
            "(g) adaptive: heavy burst",
            1_000,
            "modsum",
            Arrival::Waiting,
            "0",
            &[10, 100, 1_000],
        ),
        (
            "(g) adaptive: burst, 1.5 s start-up",
            10_000,
            "echo",
            Arrival::Burst,
            "1500",
            &[100, 1_000],
        ),
        (
            "(g) adaptive: trickle 50 msg/s, 1.5 s start-up",
            500,
            "echo",
            Arrival::Trickle(50),
            "1500",
            &[10, 100, 1_000],
        ),
    ];
    for (section, n, kernel, arrival, delay, fixed) in cases {
        let mut best: Option<(usize, e2e::Measured)> = None;
        for &batch in fixed {
            let b = batch.to_string();
            let env = [
                ("BATCH_MAX_MESSAGES", b.as_str()),
                ("STARTUP_DELAY_MS", delay),
                ("BATCH_MODE", "fixed"),
            ];
            let m = e2e::run(services, &scenario(size(n), kernel, arrival, &env)).await?;
            rows.push(row(section, format!("fixed {batch}"), describe(&m)));
            if best.is_none_or(|(_, b)| better(&m, &b, arrival)) {
                best = Some((batch, m));
            }
        }
        let env = [
            ("BATCH_MAX_MESSAGES", "1000"),
            ("STARTUP_DELAY_MS", delay),
            ("BATCH_MODE", "adaptive"),
        ];
        let m = e2e::run(services, &scenario(size(n), kernel, arrival, &env)).await?;
        rows.push(row(section, "adaptive (max 1000)", describe(&m)));
        let Some((batch, b)) = best else { continue };
        let (ratio, holds) = if matches!(arrival, Arrival::Trickle(_)) {
            (
                b.p50_ms.max(1.0) / m.p50_ms.max(1.0),
                m.p50_ms <= b.p50_ms * 1.1 + 50.0,
            )
        } else {
            (m.rate / b.rate, m.rate >= b.rate * 0.9)
        };
        let what = format!("adaptive vs best fixed ({batch})");
        rows.push(judged(
            section,
            what,
            format!("{ratio:.2}×"),
            "as well (±10%)",
            holds,
        ));
    }
    Ok(())
}

/// Trickles are judged by latency (all keep the pace or not), bursts by throughput.
fn better(m: &e2e::Measured, than: &e2e::Measured, arrival: Arrival) -> bool {
    match arrival {
        Arrival::Trickle(_) => m.p50_ms < than.p50_ms,
        _ => m.rate > than.rate,
    }
}

fn describe(m: &e2e::Measured) -> String {
    if m.p50_ms > 0.0 {
        format!(
            "{:.0} msg/s, p50 {:.0} ms, p99 {:.0} ms ({} Jobs)",
            m.rate, m.p50_ms, m.p99_ms, m.jobs
        )
    } else {
        format!("{:.1} msg/s ({} Jobs)", m.rate, m.jobs)
    }
}

fn print(rows: &[Row]) {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!("\nsluice benchmark — {cores} cores, one run, all rows side by side\n");
    println!("| section | measurement | result | target | holds |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let holds = match r.holds {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            r.section, r.what, r.value, r.target, holds
        );
    }
}
