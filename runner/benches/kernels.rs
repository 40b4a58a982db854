//! Kernel micro-benchmarks: each kernel on one thread and on every core, so `make bench` can
//! report rayon's parallel efficiency (time on 1 thread ÷ (threads × time on all threads)).

// Benchmarks fail by panicking like tests.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice_runner::kernel::{modsum, pow, primes};
use std::hint::black_box;
use std::time::Duration;

fn pools() -> Vec<(usize, rayon::ThreadPool)> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut sizes = vec![1, cores];
    sizes.dedup();
    sizes
        .into_iter()
        .map(|n| {
            (
                n,
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap(),
            )
        })
        .collect()
}

fn kernels(c: &mut Criterion) {
    let pools = pools();
    let mut group = c.benchmark_group("kernels");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    // Each kernel's pools run back to back, so a change in the shared host's speed between
    // kernels does not show up as parallel (in)efficiency.
    for (threads, pool) in &pools {
        group.bench_with_input(BenchmarkId::new("modsum-1e8", threads), threads, |b, _| {
            b.iter(|| pool.install(|| modsum::modsum(black_box(100_000_000), black_box(997))));
        });
    }
    for (threads, pool) in &pools {
        group.bench_with_input(BenchmarkId::new("pow-20bits", threads), threads, |b, _| {
            b.iter(|| pool.install(|| pow::solve(black_box(b"sluice-bench"), black_box(20))));
        });
    }
    for (threads, pool) in &pools {
        group.bench_with_input(BenchmarkId::new("primes-1e8", threads), threads, |b, _| {
            b.iter(|| pool.install(|| primes::count_primes(black_box(100_000_000))));
        });
    }
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
