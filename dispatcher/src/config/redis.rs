//! Where batches and results live: the Redis connection, key prefix, result expiry and the
//! Secret that hands the Redis URL to runner pods.

use serde::Deserialize;
use sluice_contract::runner_env as defaults;
use sluice_contract::tls::{self, Service, TlsFiles};
use std::path::PathBuf;

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
    /// Consumption and launches pause once Redis's used memory reaches this percentage of its
    /// `maxmemory`, and resume below five points less ([`crate::memory`]).
    #[serde(default = "d::redis_pause_percent")]
    pub redis_pause_percent: u8,
    /// Approximate cap on the results stream.
    #[serde(default = "d::results_maxlen")]
    pub results_maxlen: u64,
    /// Most entries kept in the dead-letter index `{prefix}:dead` (the messages themselves
    /// are in the dead-letter queue).
    #[serde(default = "d::dead_index_max")]
    pub dead_index_max: u64,
    /// Secret holding the Redis URL for runner pods.
    #[serde(default = "d::redis_secret_name")]
    pub redis_secret_name: String,
    /// Key of the Redis URL inside that Secret.
    #[serde(default = "d::redis_secret_key")]
    pub redis_secret_key: String,
    /// PEM CA trusted for `rediss://` besides the system's roots.
    #[serde(default)]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    #[serde(default)]
    pub redis_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[serde(default)]
    pub redis_key_file: Option<PathBuf>,
}

impl Redis {
    /// The TLS files for Redis.
    pub fn tls(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.redis_ca_file.clone(),
            cert_file: self.redis_cert_file.clone(),
            key_file: self.redis_key_file.clone(),
        }
    }

    /// A client for `REDIS_URL` with the TLS files read now (so rotated files are picked up
    /// at the next connect).
    pub fn client(&self) -> crate::Result<redis::Client> {
        let pem = self
            .tls()
            .load(Service::Redis)
            .map_err(|e| crate::Error::InvalidConfig(e.to_string()))?;
        tls::redis_client(&self.redis_url, &pem)
            .map_err(crate::Error::redis("building the redis client"))
    }
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
    pub fn redis_pause_percent() -> u8 {
        90
    }
    pub fn dead_index_max() -> u64 {
        10_000
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
