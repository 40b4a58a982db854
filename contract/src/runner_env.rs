//! The runner's environment: written by the dispatcher into each Job, read by the runner.
//!
//! Both sides use [`RunnerEnv`], so a variable cannot be renamed on one side only.
//! `REDIS_URL` is deliberately not part of it: in a Job it comes from a Secret.

use serde::{Deserialize, Serialize};

/// Name of the variable holding the Redis URL (from a Secret in a Job).
pub const REDIS_URL: &str = "REDIS_URL";
/// Name of the variable that enables the test kernels (`crash`, `panic`, `sleep`).
pub const TEST_KERNELS: &str = "SLUICE_TEST_KERNELS";
/// Name of the variable that sizes rayon's pool.
pub const RAYON_NUM_THREADS: &str = "RAYON_NUM_THREADS";

/// Default key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "sluice";
/// Default result expiry: 7 days.
pub const DEFAULT_RESULT_TTL_SECONDS: u64 = 604_800;
/// Default largest accepted body: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Default kernel for envelopes that name none.
pub const DEFAULT_KERNEL: &str = "modsum";
/// Default approximate cap on the results stream.
pub const DEFAULT_RESULTS_MAXLEN: u64 = 100_000;
/// Default time a runner keeps retrying Redis before giving up, in seconds.
pub const DEFAULT_REDIS_RETRY_SECONDS: u64 = 30;
/// Default results written per Redis round trip.
pub const DEFAULT_RESULT_CHUNK: usize = 256;
/// Default longest wait of a result before it is written, in milliseconds.
pub const DEFAULT_RESULT_FLUSH_MS: u64 = 100;

/// The settings the dispatcher hands to every runner (besides the Redis URL).
///
/// Field names are the variables' names in lower case, as envy matches them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerEnv {
    /// The batch to process.
    pub batch_id: String,
    /// Prefix of every Redis key.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Expiry of result hashes in seconds; 0 keeps them forever.
    #[serde(default = "default_ttl")]
    pub result_ttl_seconds: u64,
    /// Bodies larger than this are answered with an error result.
    #[serde(default = "default_max_bytes")]
    pub max_message_bytes: usize,
    /// Kernel for envelopes (and plain-text bodies) that name none.
    #[serde(default = "default_kernel")]
    pub default_kernel: String,
    /// Approximate cap on the results stream.
    #[serde(default = "default_maxlen")]
    pub results_maxlen: u64,
    /// How long the runner keeps retrying Redis before it gives up (an outage exit code).
    #[serde(default = "default_redis_retry")]
    pub redis_retry_seconds: u64,
    /// Results written per Redis round trip.
    #[serde(default = "default_chunk")]
    pub result_chunk: usize,
    /// A result waits at most this long to be written; with the chunk, what a crash can lose.
    #[serde(default = "default_flush_ms")]
    pub result_flush_ms: u64,
    /// The exec kernel table (`KERNELS_FILE`), as a path in the runner's filesystem.
    #[serde(default)]
    pub kernels_file: Option<String>,
}

fn default_prefix() -> String {
    DEFAULT_KEY_PREFIX.to_owned()
}
fn default_ttl() -> u64 {
    DEFAULT_RESULT_TTL_SECONDS
}
fn default_max_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}
fn default_kernel() -> String {
    DEFAULT_KERNEL.to_owned()
}
fn default_maxlen() -> u64 {
    DEFAULT_RESULTS_MAXLEN
}
fn default_redis_retry() -> u64 {
    DEFAULT_REDIS_RETRY_SECONDS
}
fn default_chunk() -> usize {
    DEFAULT_RESULT_CHUNK
}
fn default_flush_ms() -> u64 {
    DEFAULT_RESULT_FLUSH_MS
}

impl RunnerEnv {
    /// The variables as (name, value) pairs, in a stable order, for a container's `env`.
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("BATCH_ID", self.batch_id.clone()),
            ("KEY_PREFIX", self.key_prefix.clone()),
            ("RESULT_TTL_SECONDS", self.result_ttl_seconds.to_string()),
            ("MAX_MESSAGE_BYTES", self.max_message_bytes.to_string()),
            ("DEFAULT_KERNEL", self.default_kernel.clone()),
            ("RESULTS_MAXLEN", self.results_maxlen.to_string()),
            ("REDIS_RETRY_SECONDS", self.redis_retry_seconds.to_string()),
            ("RESULT_CHUNK", self.result_chunk.to_string()),
            ("RESULT_FLUSH_MS", self.result_flush_ms.to_string()),
        ];
        if let Some(file) = &self.kernels_file {
            vars.push(("KERNELS_FILE", file.clone()));
        }
        vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_use_the_names_serde_reads() {
        let env = RunnerEnv {
            batch_id: "b".into(),
            key_prefix: "p".into(),
            result_ttl_seconds: 1,
            max_message_bytes: 2,
            default_kernel: "echo".into(),
            results_maxlen: 3,
            redis_retry_seconds: 4,
            result_chunk: 5,
            result_flush_ms: 6,
            kernels_file: Some("k.toml".into()),
        };
        let mut written: Vec<String> = env
            .to_vars()
            .into_iter()
            .map(|(name, _)| name.to_lowercase())
            .collect();
        let json = serde_json::to_value(&env).unwrap();
        let mut read: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        written.sort_unstable();
        read.sort_unstable();
        assert_eq!(written, read);
    }
}
