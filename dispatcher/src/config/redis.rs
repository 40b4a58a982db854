//! Where batches and results live: the Redis connection, key prefix, result expiry and the
//! Secret that hands the Redis URL to runner pods.

use serde::Deserialize;
use sluice_contract::runner_env as defaults;

/// Redis settings.
#[derive(Debug, Clone, Deserialize)]
pub struct Redis {
    /// Redis URL (handed to runners through the Secret `REDIS_SECRET_NAME` in a cluster).
    #[serde(default = "d::redis_url")]
    pub redis_url: String,
    /// Prefix of every Redis key.
    #[serde(default = "d::key_prefix")]
    pub key_prefix: String,
    /// Result expiry in seconds; 0 keeps results forever.
    #[serde(default = "d::result_ttl_seconds")]
    pub result_ttl_seconds: u64,
    /// Approximate cap on the results stream.
    #[serde(default = "d::results_maxlen")]
    pub results_maxlen: u64,
    /// Secret holding the Redis URL for runner pods.
    #[serde(default = "d::redis_secret_name")]
    pub redis_secret_name: String,
    /// Key of the Redis URL inside that Secret.
    #[serde(default = "d::redis_secret_key")]
    pub redis_secret_key: String,
}

/// Defaults, one function per variable (serde's `default = "…"` needs a path).
mod d {
    use super::defaults;
    pub fn redis_url() -> String {
        "redis://127.0.0.1:6379/".into()
    }
    pub fn key_prefix() -> String {
        defaults::DEFAULT_KEY_PREFIX.into()
    }
    pub fn result_ttl_seconds() -> u64 {
        defaults::DEFAULT_RESULT_TTL_SECONDS
    }
    pub fn results_maxlen() -> u64 {
        defaults::DEFAULT_RESULTS_MAXLEN
    }
    pub fn redis_secret_name() -> String {
        "sluice-redis".into()
    }
    pub fn redis_secret_key() -> String {
        "url".into()
    }
}
