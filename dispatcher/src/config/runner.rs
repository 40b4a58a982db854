//! Settings only runners read, passed by the dispatcher to every runner it launches (local
//! processes and Jobs alike) through [`sluice_contract::RunnerEnv`], the one list both sides
//! share: a runner never falls back to a default the dispatcher was told otherwise.

use serde::Deserialize;
use sluice_contract::runner_env as defaults;

/// Runner settings.
#[derive(Debug, Clone, Deserialize)]
pub struct RunnerSettings {
    /// How long a runner keeps retrying Redis before it gives up with an outage exit code.
    #[serde(default = "d::redis_retry_seconds")]
    pub redis_retry_seconds: u64,
    /// Results a runner writes per Redis round trip.
    #[serde(default = "d::result_chunk")]
    pub result_chunk: usize,
    /// The longest a result waits in a runner before it is written, in milliseconds.
    #[serde(default = "d::result_flush_ms")]
    pub result_flush_ms: u64,
    /// The exec kernel table (`KERNELS_FILE`), a path in the runners' filesystem: workers in
    /// any language (docs/EXEC.md). Checked at start-up where the dispatcher can see it.
    #[serde(default)]
    pub kernels_file: Option<String>,
}

mod d {
    use super::defaults;
    pub fn redis_retry_seconds() -> u64 {
        defaults::DEFAULT_REDIS_RETRY_SECONDS
    }
    pub fn result_chunk() -> usize {
        defaults::DEFAULT_RESULT_CHUNK
    }
    pub fn result_flush_ms() -> u64 {
        defaults::DEFAULT_RESULT_FLUSH_MS
    }
}
