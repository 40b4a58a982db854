//! Retrying one dispatcher operation (a Redis call, an API request) with the shared retry helper
//! (`sluice_contract::retry`) on the tokio clock.

use crate::error::{Error, Result};
use sluice_contract::retry::{Policy, retry_async};
use std::future::Future;
use std::time::Duration;

/// Retries transient failures of `op` for up to `budget` (`None`: until it succeeds or fails
/// permanently), logging each retry under `what`. Delays double from 100 ms to 10 s, with jitter.
pub async fn with_backoff<T, Op, Fut>(
    what: &'static str,
    budget: Option<Duration>,
    op: Op,
) -> Result<T>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    with_backoff_while(what, budget, op, Error::is_transient).await
}

/// [`with_backoff`], retrying only the failures `retry` accepts.
pub async fn with_backoff_while<T, Op, Fut>(
    what: &'static str,
    budget: Option<Duration>,
    op: Op,
    retry: impl Fn(&Error) -> bool,
) -> Result<T>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let policy = Policy::new(Duration::from_millis(100), Duration::from_secs(10), budget);
    retry_async(
        policy,
        op,
        retry,
        |e, delay| tracing::warn!(error = %e, ?delay, what, "retrying"),
        tokio::time::sleep,
    )
    .await
}
