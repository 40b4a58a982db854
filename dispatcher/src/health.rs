//! Readiness with reasons: each part of the dispatcher that can stop it from taking work (the
//! consumer, the Job watch, …) blocks readiness under its own name with a human-readable
//! reason, and clears it when it recovers. `/readyz` answers 503 with every reason while any
//! block stands; each change of state is logged once, not on every check.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// The consumer is not connected to RabbitMQ (set at start until the first session opens).
pub const CONSUMER: &str = "consumer";
/// The kube launcher's Job watch is down (its outcomes may arrive late).
pub const JOB_WATCH: &str = "job-watch";
/// The kube launcher's watch of its runners' pods is down (Jobs that cannot run are then
/// only noticed at their deadline).
pub const POD_WATCH: &str = "pod-watch";
/// Runners keep failing to do their work; launches are held back ([`crate::breaker`]).
pub const RUNNER: &str = "runner";
/// Redis does not answer: nothing can be staged, launched or settled until it does.
pub const REDIS: &str = "redis";
/// Redis refuses writes for memory, or is about to: consumption and launches wait
/// ([`crate::memory`]).
pub const REDIS_FULL: &str = "redis-full";
/// Jobs created suspended (Kueue) are not admitted: more work would only wait behind them.
pub const ADMISSION: &str = "admission";

/// What stops the dispatcher from being ready, by part; and, for liveness, the waits that
/// must have ended by a time.
#[derive(Debug)]
pub struct Health {
    blocks: Mutex<BTreeMap<&'static str, String>>,
    /// Each followed Job's outcome is due by its hard limit plus slack ([`Health::expect`]).
    due: Mutex<BTreeMap<String, Instant>>,
}

impl Default for Health {
    /// Not ready until the consumer's first session opens.
    fn default() -> Self {
        let blocks = BTreeMap::from([(CONSUMER, "not connected to RabbitMQ yet".to_owned())]);
        Self {
            blocks: Mutex::new(blocks),
            due: Mutex::default(),
        }
    }
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        // Single inserts and removes: a panic elsewhere cannot leave the map half-written.
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `part` stops the dispatcher from being ready, because of `reason`.
    pub fn block(&self, part: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        let previous = self.lock().insert(part, reason.clone());
        if previous.is_none() {
            tracing::warn!(part, %reason, "not ready");
        }
    }

    /// `part` no longer stops the dispatcher from being ready.
    pub fn clear(&self, part: &'static str) {
        if self.lock().remove(part).is_some() {
            tracing::info!(part, "recovered");
        }
    }

    /// `Ok` when nothing blocks readiness, else every reason, one `part: reason` per line.
    pub fn ready(&self) -> Result<(), String> {
        let blocks = self.lock();
        if blocks.is_empty() {
            return Ok(());
        }
        let reasons: Vec<String> = blocks.iter().map(|(p, r)| format!("{p}: {r}")).collect();
        Err(reasons.join("\n"))
    }

    /// `what` must be over by `by`; until [`Health::met`], liveness fails after that. Every
    /// wait the dispatcher makes is bounded, so one still open past its bound means the
    /// dispatcher no longer makes progress, which a restart cures (open batches are recovered).
    pub fn expect(&self, what: String, by: Instant) {
        self.due
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(what, by);
    }

    /// `what` is over.
    pub fn met(&self, what: &str) {
        self.due
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(what);
    }

    /// `Ok` unless some expected wait is overdue at `now`; else the overdue ones.
    pub fn live(&self, now: Instant) -> Result<(), String> {
        let due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        let overdue: Vec<String> = due
            .iter()
            .filter(|(_, by)| **by <= now)
            .map(|(what, by)| format!("{what}: overdue by {}s", now.duration_since(*by).as_secs()))
            .collect();
        if overdue.is_empty() {
            Ok(())
        } else {
            Err(overdue.join("\n"))
        }
    }

    /// Whether `part` blocks readiness now.
    pub fn is_blocked(&self, part: &str) -> bool {
        self.lock().contains_key(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_every_block_until_each_clears() {
        let health = Health::default();
        assert!(
            health.ready().is_err(),
            "not ready before the consumer connects"
        );
        health.clear(CONSUMER);
        assert_eq!(health.ready(), Ok(()));
        health.block(JOB_WATCH, "watch failed: 500");
        health.block(CONSUMER, "connection refused");
        assert_eq!(
            health.ready(),
            Err("consumer: connection refused\njob-watch: watch failed: 500".into())
        );
        health.clear(JOB_WATCH);
        assert!(!health.is_blocked(JOB_WATCH));
        assert_eq!(health.ready(), Err("consumer: connection refused".into()));
    }

    #[test]
    fn liveness_fails_only_while_an_expected_wait_is_overdue() {
        let health = Health::default();
        let now = Instant::now();
        assert_eq!(health.live(now), Ok(()));
        health.expect(
            "job for batch b".into(),
            now + std::time::Duration::from_secs(5),
        );
        assert_eq!(health.live(now), Ok(()), "not due yet");
        let later = now + std::time::Duration::from_secs(7);
        assert_eq!(
            health.live(later),
            Err("job for batch b: overdue by 2s".into())
        );
        health.met("job for batch b");
        assert_eq!(health.live(later), Ok(()));
    }
}
