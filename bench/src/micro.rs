//! Kernel micro-benchmark figures: criterion's estimates (`cargo bench -p sluice-runner
//! --bench kernels` writes them first), and parallel efficiency from paired runs.

use anyhow::{Context, Result};
use sluice_runner::kernel::{modsum, pow, primes};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

/// Mean time of one criterion benchmark, in milliseconds.
pub fn mean_ms(bench: &str, threads: usize) -> Result<f64> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/criterion/kernels")
        .join(bench)
        .join(threads.to_string())
        .join("new/estimates.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} (run `cargo bench -p sluice-runner --bench kernels`)",
            path.display()
        )
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    json["mean"]["point_estimate"]
        .as_f64()
        .map(|ns| ns / 1e6)
        .context("no mean in criterion estimates")
}

/// A kernel call, as the paired measurement runs it.
pub type Kernel = fn();

/// The kernels (b) measures, with the criterion names they are reported under.
pub const KERNELS: [(&str, Kernel); 4] = [
    ("modsum-1e8", || {
        black_box(modsum::modsum(black_box(100_000_000), black_box(997)));
    }),
    ("pow-20bits", || {
        black_box(pow::solve(black_box(b"sluice-bench"), black_box(20)));
    }),
    ("primes-1e8", || {
        black_box(primes::count_primes(black_box(100_000_000)));
    }),
    // Not a kernel: independent register-only loops, no memory, no reduction to speak of. What
    // two threads of this host can give at best, measured alongside the kernels.
    ("host ceiling (spin)", || {
        use rayon::prelude::*;
        let sum: u64 = (0..64u64)
            .into_par_iter()
            .map(|c| {
                let mut x = black_box(c);
                for _ in 0..1_000_000 {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                }
                x
            })
            .sum();
        black_box(sum);
    }),
];

/// Parallel efficiency of each of `kernels` on `cores` threads: per kernel, the median over
/// `pairs` of t(1 thread) ÷ (cores × t(every core)). A pair runs back to back, in alternating
/// order, and the kernels take turns pair by pair, so that the shared host slowing down or
/// speeding up hits both sides of a ratio, and every kernel, alike (criterion measures one side
/// for seconds, then the other).
pub fn paired_efficiencies(kernels: &[Kernel], cores: usize, pairs: usize) -> Result<Vec<f64>> {
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let all = rayon::ThreadPoolBuilder::new().num_threads(cores).build()?;
    let time = |pool: &rayon::ThreadPool, kernel: Kernel| {
        let started = Instant::now();
        pool.install(kernel);
        started.elapsed().as_secs_f64()
    };
    let mut ratios = vec![Vec::with_capacity(pairs); kernels.len()];
    for round in 0..=pairs {
        for (k, &kernel) in kernels.iter().enumerate() {
            let (t1, tn) = if round % 2 == 0 {
                let t1 = time(&one, kernel);
                (t1, time(&all, kernel))
            } else {
                let tn = time(&all, kernel);
                (time(&one, kernel), tn)
            };
            // Round 0 warms up.
            if round > 0 {
                ratios[k].push(t1 / (cores as f64 * tn));
            }
        }
    }
    Ok(ratios
        .into_iter()
        .map(|mut r| {
            r.sort_by(f64::total_cmp);
            r.get(r.len() / 2).copied().unwrap_or(0.0)
        })
        .collect())
}
