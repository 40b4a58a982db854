//! Kernel micro-benchmark figures, read from criterion's estimates
//! (`cargo bench -p sluice-runner --bench kernels` writes them first).

use anyhow::{Context, Result};
use std::path::PathBuf;

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
