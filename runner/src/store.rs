//! A Redis connection that reconnects and retries transient failures with backoff.
//!
//! Every Redis call the runner makes goes through [`Store::call`], so a Redis restart or a
//! dropped connection costs a retry, not the batch.

use crate::error::{Error, Result, is_transient};
use sluice_contract::retry::{Policy, retry_blocking};
use sluice_contract::tls::{self, Service, TlsFiles};
use std::time::Duration;

/// The runner's Redis handle.
pub struct Store {
    client: redis::Client,
    /// `host:port`, for the line a TLS failure becomes.
    host: String,
    con: Option<redis::Connection>,
    budget: Duration,
}

impl Store {
    /// A handle for `url` (over TLS with `tls`'s files for `rediss://`); connects lazily,
    /// retrying for up to `budget` per call.
    pub fn new(url: &str, tls: &TlsFiles, budget: Duration) -> Result<Self> {
        let pem = tls
            .load(Service::Redis)
            .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let client = tls::redis_client(url, &pem).map_err(Error::redis("parsing REDIS_URL"))?;
        Ok(Self {
            host: tls::redis_host(&client),
            client,
            con: None,
            budget,
        })
    }

    /// Runs `op` on a live connection, reconnecting and retrying transient errors.
    pub fn call<T>(
        &mut self,
        context: &'static str,
        mut op: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let policy = Policy::new(
            Duration::from_millis(50),
            Duration::from_secs(2),
            Some(self.budget),
        );
        let Self {
            client, con, host, ..
        } = self;
        retry_blocking(
            policy,
            || {
                if con.is_none() {
                    *con = Some(client.get_connection_with_timeout(Duration::from_secs(5))?);
                }
                let live = con.as_mut().ok_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Io, "no connection"))
                })?;
                op(live).inspect_err(|e| {
                    // A full Redis still answers: the connection is fine.
                    if is_transient(e) && !sluice_contract::memory::is_full(e) {
                        *con = None;
                    }
                })
            },
            is_transient,
            |e, delay| tracing::warn!(%e, ?delay, context, "redis unavailable, retrying"),
        )
        .map_err(|e| match tls::tls_failure(&e) {
            Some(failure) => Error::Tls(failure.line(Service::Redis, host)),
            None => Error::Redis { context, source: e },
        })
    }
}
