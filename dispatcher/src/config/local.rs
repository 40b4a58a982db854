//! The local launcher (`LAUNCHER=local`): which runner executable it starts, a simulated
//! start-up delay, and the test kernels it passes through.

use serde::Deserialize;
use std::path::PathBuf;

/// Local launcher settings.
#[derive(Debug, Clone, Deserialize)]
pub struct LocalSettings {
    /// The runner executable for the local launcher; default: `runner` beside this binary.
    #[serde(default)]
    pub runner_bin: Option<PathBuf>,
    /// Local launcher only: a delay before each run, to simulate pod start-up (benchmarks).
    #[serde(default)]
    pub startup_delay_ms: u64,
    /// Passed through to local runners; enables the test kernels.
    #[serde(default)]
    pub sluice_test_kernels: Option<String>,
}
