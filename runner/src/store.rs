//! A Redis connection that reconnects and retries transient failures with backoff.
//!
//! Every Redis call the runner makes goes through [`Store::call`], so a Redis restart or a
//! dropped connection costs a retry, not the batch.

use crate::error::{Error, Result, is_transient};
use sluice_contract::retry::{Policy, retry_blocking};
use std::time::Duration;

/// The runner's Redis handle.
pub struct Store {
    client: redis::Client,
    con: Option<redis::Connection>,
    budget: Duration,
}

impl Store {
    /// A handle for `url`; connects lazily, retrying for up to `budget` per call.
    pub fn new(url: &str, budget: Duration) -> Result<Self> {
        let client = redis::Client::open(url).map_err(Error::redis("parsing REDIS_URL"))?;
        Ok(Self {
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
        let Self { client, con, .. } = self;
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
                    if is_transient(e) {
                        *con = None;
                    }
                })
            },
            is_transient,
            |e, delay| tracing::warn!(%e, ?delay, context, "redis unavailable, retrying"),
        )
        .map_err(Error::redis(context))
    }
}
