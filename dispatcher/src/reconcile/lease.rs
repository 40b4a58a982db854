//! This dispatcher's lease: `{prefix}:dispatcher:{id}`, set with an expiry of `LEASE_SECONDS`
//! and renewed every third of that, the Redis pattern `dispatcher redrive` uses for its lock.
//!
//! While the lease is held, the batches this dispatcher owns are left to it; once it expires
//! (the process was killed by `SIGKILL`, its node lost, or Redis unreachable from it alone for that
//! long) any other dispatcher adopts them. A dispatcher whose lease lapsed simply sets it
//! again: the batches taken over meanwhile have moved to a newer generation, so its own
//! follow-ups of them no longer apply. Renewal is also the Redis health probe: while it fails,
//! `/readyz` is blocked under `redis` and `sluice_redis_up` is 0.

use crate::health;
use crate::metrics::Metrics;
use crate::stage::Stager;
use sluice_contract::retry::Policy;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Delays between attempts to take the lease at start-up: 400 ms doubling to 12.8 s, plus
/// jitter, for as long as Redis does not answer.
const RETAKE: Policy = Policy::new(
    Duration::from_millis(400),
    Duration::from_millis(12_800),
    None,
);

/// Holds the lease of dispatcher `id` until `stop` is cancelled, then releases it so that
/// other dispatchers adopt what it leaves at once.
pub async fn hold(
    stager: Stager,
    id: String,
    ttl: Duration,
    metrics: std::sync::Arc<Metrics>,
    stop: CancellationToken,
) {
    let every = ttl / 3;
    loop {
        match stager.renew_lease(&id, ttl).await {
            Ok(()) => {
                metrics.redis_up.set(1);
                metrics.health().clear(health::REDIS);
            }
            // A full Redis answers: the memory watch says it is full.
            Err(e) if e.is_redis_full() => metrics.error(e.metric_label()),
            Err(e) => {
                metrics.redis_up.set(0);
                metrics.error(e.metric_label());
                metrics
                    .health()
                    .block(health::REDIS, format!("redis does not answer: {e}"));
            }
        }
        tokio::select! {
            // A timer holds nothing: dropping it is safe.
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    if let Err(e) = stager.release_lease(&id).await {
        tracing::warn!(error = %e, "could not release the lease; it expires by itself");
    }
}

/// Sets this dispatcher's lease before it launches anything, retrying while Redis does not
/// answer; `false` if `shutdown` comes first.
pub async fn take(
    stager: &Stager,
    me: &str,
    ttl: Duration,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = RETAKE.backoff();
    loop {
        match stager.renew_lease(me, ttl).await {
            Ok(()) => {
                metrics.health().clear(health::REDIS);
                metrics.health().clear(health::REDIS_FULL);
                metrics.redis_full.set(0);
                return true;
            }
            Err(e) => {
                if e.is_redis_full() {
                    metrics.health().block(health::REDIS_FULL, e.to_string());
                    metrics.redis_full.set(1);
                }
                let delay = backoff.next_delay().unwrap_or(RETAKE.max_delay());
                tracing::warn!(error = %e, ?delay, "cannot take the dispatcher's lease; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
