//! The runner's configuration, read from the environment the dispatcher put in its Job.

use crate::error::{Error, Result};
use serde::Deserialize;
use sluice_contract::RunnerEnv;
use sluice_contract::tls::TlsFiles;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the runner needs to process one batch.
#[derive(Debug, Clone)]
pub struct Config {
    /// The contract's runner variables (`BATCH_ID`, `KEY_PREFIX`, …).
    pub env: RunnerEnv,
    /// `REDIS_URL`; default `redis://127.0.0.1:6379/`.
    pub redis_url: String,
    /// `SLUICE_TEST_KERNELS=1` enables `crash`, `panic` and `sleep` in a runner built with the
    /// `test-kernels` feature; without it the variable has no effect.
    pub test_kernels: bool,
    /// `RESULT_CHUNK`: results written per Redis round trip (default 256).
    pub result_chunk: usize,
    /// `RESULT_FLUSH_MS`: a result waits at most this long to be written (default 100); with the
    /// chunk size, what a crash can lose.
    pub flush_interval: Duration,
    /// `REDIS_RETRY_SECONDS`: how long to keep retrying Redis before giving up (default 30).
    pub redis_retry: Duration,
    /// `REDIS_CA_FILE`, `REDIS_CERT_FILE`, `REDIS_KEY_FILE`: TLS files for `rediss://`.
    pub redis_tls: TlsFiles,
}

/// What the runner reads besides the dispatcher's list ([`RunnerEnv`]).
#[derive(Deserialize)]
struct Options {
    #[serde(default = "default_redis_url")]
    redis_url: String,
    #[serde(default)]
    sluice_test_kernels: String,
    #[serde(default)]
    redis_ca_file: Option<PathBuf>,
    #[serde(default)]
    redis_cert_file: Option<PathBuf>,
    #[serde(default)]
    redis_key_file: Option<PathBuf>,
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379/".into()
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the given variables (tests pass their own).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let vars: Vec<_> = vars.into_iter().collect();
        let env: RunnerEnv = envy::from_iter(vars.clone()).map_err(Error::Config)?;
        let options: Options = envy::from_iter(vars).map_err(Error::Config)?;
        let config = Self {
            redis_url: options.redis_url,
            test_kernels: matches!(options.sluice_test_kernels.as_str(), "1" | "true"),
            result_chunk: env.result_chunk,
            flush_interval: Duration::from_millis(env.result_flush_ms),
            redis_retry: Duration::from_secs(env.redis_retry_seconds),
            redis_tls: TlsFiles {
                ca_file: options.redis_ca_file,
                cert_file: options.redis_cert_file,
                key_file: options.redis_key_file,
            },
            env,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let problem = if self.env.batch_id.is_empty() {
            "BATCH_ID must not be empty"
        } else if self.result_chunk == 0 {
            "RESULT_CHUNK must be at least 1"
        } else if self.env.key_prefix.is_empty() {
            "KEY_PREFIX must not be empty"
        } else {
            return Ok(());
        };
        Err(Error::InvalidConfig(problem.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_only_the_batch_is_given() {
        let c = Config::from_vars(vars(&[("BATCH_ID", "b1")])).unwrap();
        assert_eq!(c.env.key_prefix, "sluice");
        assert_eq!(c.env.result_ttl_seconds, 604_800);
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379/");
        assert!(!c.test_kernels);
        assert_eq!(c.result_chunk, 256);
    }

    #[test]
    fn missing_batch_id_and_bad_numbers_are_clear_errors() {
        let err = Config::from_vars(vars(&[])).unwrap_err().to_string();
        assert!(err.contains("batch_id"), "{err}");
        let err = Config::from_vars(vars(&[("BATCH_ID", "b"), ("RESULT_TTL_SECONDS", "soon")]));
        assert!(err.is_err());
        let err = Config::from_vars(vars(&[("BATCH_ID", "b"), ("RESULT_CHUNK", "0")]));
        assert!(err.unwrap_err().to_string().contains("RESULT_CHUNK"));
    }

    #[test]
    fn test_kernels_need_an_explicit_one() {
        let c =
            Config::from_vars(vars(&[("BATCH_ID", "b"), ("SLUICE_TEST_KERNELS", "1")])).unwrap();
        assert!(c.test_kernels);
    }
}
