//! Kernel micro-benchmark figures: criterion's estimates (`cargo bench -p sluice-runner
//! --bench kernels` writes them first), and parallel efficiency from interleaved runs.

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

/// A kernel call, as the interleaved measurement runs it.
pub type Kernel = fn();

/// The kernels (b) measures, with the criterion names they are reported under.
pub const KERNELS: [(&str, Kernel); 3] = [
    ("modsum-1e8", || {
        black_box(modsum::modsum(black_box(100_000_000), black_box(997)));
    }),
    ("pow-20bits", || {
        black_box(pow::solve(black_box(b"sluice-bench"), black_box(20)));
    }),
    ("primes-1e8", || {
        black_box(primes::count_primes(black_box(100_000_000)));
    }),
];

/// A kernel's scaling on every core, each figure the median over the triples.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scaling {
    /// rayon's parallel efficiency: t(1 thread) ÷ (cores × t(one run on every core)).
    pub rayon: f64,
    /// What the host gives this work: t(1 thread) ÷ t(`cores` independent single-thread copies
    /// at once). No rayon, no sharing; on a shared VM often below 1, because busy sibling
    /// vCPUs slow each other down.
    pub copies: f64,
}

/// Measures each of `kernels` on one thread, on every core with rayon, and as `cores`
/// independent copies at once, `triples` times. Each triple's runs are back to back, in
/// rotating order, and the kernels take turns triple by triple, so that the shared host slowing
/// down or speeding up hits every side of a ratio alike (criterion measures one side for
/// seconds, then the other).
pub fn scaling(kernels: &[Kernel], cores: usize, triples: usize) -> Result<Vec<Scaling>> {
    let singles = (0..cores)
        .map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
        .collect::<Result<Vec<_>, _>>()?;
    let all = rayon::ThreadPoolBuilder::new().num_threads(cores).build()?;
    let timed = |run: &dyn Fn()| {
        let started = Instant::now();
        run();
        started.elapsed().as_secs_f64()
    };
    let mut samples = vec![(Vec::new(), Vec::new()); kernels.len()];
    for round in 0..=triples {
        for (k, &kernel) in kernels.iter().enumerate() {
            let mut t = [0.0; 3];
            for step in 0..3 {
                let which = (round + step) % 3;
                t[which] = match which {
                    0 => timed(&|| singles[0].install(kernel)),
                    1 => timed(&|| all.install(kernel)),
                    _ => timed(&|| {
                        std::thread::scope(|scope| {
                            for pool in &singles {
                                scope.spawn(|| pool.install(kernel));
                            }
                        });
                    }),
                };
            }
            // Round 0 warms up.
            if round > 0 {
                samples[k].0.push(t[0] / (cores as f64 * t[1]));
                samples[k].1.push(t[0] / t[2]);
            }
        }
    }
    Ok(samples
        .into_iter()
        .map(|(mut rayon, mut copies)| Scaling {
            rayon: median(&mut rayon),
            copies: median(&mut copies),
        })
        .collect())
}

/// The median of `values` (the upper one of an even count); 0 when empty.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
