//! Redis's memory, watched: a full Redis is an outage that loses nothing.
//!
//! Every [`POLL`] the dispatcher reads `INFO memory`, exports `used_memory` and `maxmemory` as
//! metrics, and decides with [`is_full`] whether Redis is full: used memory at
//! `REDIS_PAUSE_PERCENT` of `maxmemory`, or a write refused for memory since the last look
//! (another client, a runner's results past the mark). While full, the [`Breaker`] holds
//! launches and consumption back (what the consumer holds is parked in the headroom left
//! below `maxmemory`; messages wait in RabbitMQ), `/readyz` says `redis-full` and
//! `sluice_redis_full` is 1. Five points below the mark, or once `maxmemory` is raised, it
//! lets everything through again, by itself.
//!
//! It also estimates what results at the rate they are written now need once the first expire
//! (`sluice_redis_results_need_bytes`), and warns, once, when that outgrows `maxmemory`
//! ([`Growth`]).

use crate::breaker::Breaker;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::stage::{Footprint, Stager};
use sluice_contract::memory::{Memory, human_bytes};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often Redis's memory is read.
pub const POLL: Duration = Duration::from_secs(1);
/// A full Redis has room again this many points below `REDIS_PAUSE_PERCENT`, so that a Redis
/// hovering at the mark does not pause and resume on every look.
pub const RESUME_POINTS: f64 = 5.0;
/// The window the result rate is measured over, and the least of it a warning needs.
const RATE_WINDOW: Duration = Duration::from_secs(60);
const RATE_MIN: Duration = Duration::from_secs(10);
/// Without `INFO memory`, how long after the last refusal Redis is taken to have room again.
const REFUSAL_HOLD: Duration = Duration::from_secs(10);
/// How often one result's footprint is sampled (`MEMORY USAGE`).
const FOOTPRINT_EVERY: Duration = Duration::from_secs(30);

/// Whether Redis is full: a write was `refused` for memory since the last look, or used memory
/// is at `pause_percent` of `maxmemory` (`RESUME_POINTS` less while it `was_full`). Without a
/// `maxmemory` only a refusal says so.
pub fn is_full(memory: &Memory, refused: bool, was_full: bool, pause_percent: u8) -> bool {
    let mark = f64::from(pause_percent) - if was_full { RESUME_POINTS } else { 0.0 };
    refused || memory.percent().is_some_and(|p| p >= mark)
}

/// How full Redis is, as readiness and the log say it.
pub fn describe(memory: &Memory, refused: bool, pause_percent: u8) -> String {
    let used = human_bytes(memory.used);
    let max = human_bytes(memory.max);
    let percent = memory.percent().unwrap_or(0.0);
    let how = format!("used {used} of maxmemory {max} ({percent:.0}%, pauses at {pause_percent}%)");
    if refused {
        format!("a write was refused for memory; {how}")
    } else {
        how
    }
}

/// Watches Redis's memory until `stop`, holding work back behind the reconciler's breaker
/// while Redis is full.
pub async fn watch(
    stager: Stager,
    reconciler: Reconciler,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let breaker = reconciler.breaker();
    let pause = config.redis.redis_pause_percent;
    let mut growth = Growth::new(&config);
    let (mut warned_eviction, mut warned_info) = (false, false);
    let mut last_refusal = None;
    loop {
        // Taken before the look, so a refusal during it is counted at the next one.
        let refused = stager.take_refused();
        if refused {
            last_refusal = Some(Instant::now());
        }
        match stager.memory().await {
            Ok(memory) => {
                export(&metrics, &memory);
                if memory.evicts() && !std::mem::replace(&mut warned_eviction, true) {
                    tracing::warn!(policy = %memory.policy, "redis evicts keys at maxmemory: staged batches and results may vanish; sluice needs maxmemory-policy noeviction");
                }
                apply(breaker, &memory, refused, pause);
                growth.look(&stager, &memory, &metrics).await;
            }
            Err(e) => {
                if !e.is_transient() && !std::mem::replace(&mut warned_info, true) {
                    tracing::warn!(error = %e, "cannot read INFO memory (grant the info command): a full Redis is then seen only when it refuses a write");
                }
                blind(breaker, refused, last_refusal);
            }
        }
        tokio::select! {
            // A timer holds nothing: dropping it is safe.
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Without `INFO` (Redis unreachable, or the command not granted), a refusal is all there is
/// to go by: full on one, room again once none came for [`REFUSAL_HOLD`].
fn blind(breaker: &Breaker, refused: bool, last_refusal: Option<Instant>) {
    if refused {
        breaker.redis_full("a write was refused for memory (INFO memory cannot be read)");
    } else if breaker.is_redis_full()
        && last_refusal.is_some_and(|at| at + REFUSAL_HOLD <= Instant::now())
    {
        breaker.redis_room();
    }
}

fn export(metrics: &Metrics, memory: &Memory) {
    metrics
        .redis_used_memory
        .set(i64::try_from(memory.used).unwrap_or(i64::MAX));
    metrics
        .redis_max_memory
        .set(i64::try_from(memory.max).unwrap_or(i64::MAX));
}

fn apply(breaker: &Breaker, memory: &Memory, refused: bool, pause: u8) {
    if is_full(memory, refused, breaker.is_redis_full(), pause) {
        breaker.redis_full(&describe(memory, refused, pause));
    } else {
        breaker.redis_room();
    }
}

/// Whether results, written at the rate observed now and kept `RESULT_TTL_SECONDS`, fit in
/// `maxmemory`: one warning when they do not.
pub struct Growth {
    ttl_seconds: u64,
    stream_maxlen: u64,
    pause_percent: u8,
    /// (when, results written by then), oldest first, over [`RATE_WINDOW`].
    counts: VecDeque<(Instant, u64)>,
    /// Bytes one result holds, with its stream entry, and when that was sampled.
    footprint: Option<(Footprint, Instant)>,
    warned: bool,
}

impl Growth {
    fn new(config: &Config) -> Self {
        Self {
            ttl_seconds: config.redis.result_ttl_seconds,
            stream_maxlen: config.redis.results_maxlen,
            pause_percent: config.redis.redis_pause_percent,
            counts: VecDeque::new(),
            footprint: None,
            warned: false,
        }
    }

    async fn look(&mut self, stager: &Stager, memory: &Memory, metrics: &Metrics) {
        if memory.max == 0 {
            return;
        }
        let now = Instant::now();
        let Ok(written) = stager.results_written().await else {
            return;
        };
        self.counts.push_back((now, written));
        while self.counts.len() > 2 && self.counts[1].0 + RATE_WINDOW <= now {
            self.counts.pop_front();
        }
        let due = self
            .footprint
            .is_none_or(|(_, at)| at + FOOTPRINT_EVERY <= now);
        if due && let Ok(Some(footprint)) = stager.result_footprint().await {
            self.footprint = Some((footprint, now));
        }
        let (Some(rate), Some((footprint, _))) = (self.rate(), self.footprint) else {
            return;
        };
        let need = needed(rate, self.ttl_seconds, self.stream_maxlen, footprint);
        let bytes = need.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
        metrics.redis_results_need.set(bytes);
        let room = memory.max / 100 * u64::from(self.pause_percent);
        if !self.warned && need.is_none_or(|need| need > room) {
            self.warned = true;
            warn(rate, self.ttl_seconds, footprint, need, memory, room);
        }
    }

    /// Results per second over the window, once it spans [`RATE_MIN`].
    fn rate(&self) -> Option<f64> {
        let ((first, a), (last, b)) = (self.counts.front()?, self.counts.back()?);
        let span = last.duration_since(*first);
        (span >= RATE_MIN).then(|| b.saturating_sub(*a) as f64 / span.as_secs_f64())
    }
}

/// Bytes results written at `rate` per second need once the first of them expire after
/// `ttl_seconds`; `None` (no bound) when they are kept for ever and keep coming.
pub fn needed(
    rate: f64,
    ttl_seconds: u64,
    stream_maxlen: u64,
    footprint: Footprint,
) -> Option<u64> {
    if ttl_seconds == 0 {
        return (rate <= 0.0).then_some(0);
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a non-negative estimate
    let held = (rate * ttl_seconds as f64) as u64;
    let stream = held.min(stream_maxlen).saturating_mul(footprint.entry);
    Some(held.saturating_mul(footprint.hash).saturating_add(stream))
}

fn warn(
    rate: f64,
    ttl_seconds: u64,
    footprint: Footprint,
    need: Option<u64>,
    memory: &Memory,
    room: u64,
) {
    let per_second = rate * footprint.hash as f64;
    let left = room.saturating_sub(memory.used) as f64;
    let full_in = Duration::from_secs_f64(if per_second > 0.0 {
        left / per_second
    } else {
        0.0
    });
    tracing::warn!(
        rate = format!("{rate:.1}/s"),
        result_bytes = footprint.hash + footprint.entry,
        ttl_seconds,
        need = %need.map_or_else(|| "all of it: results are kept for ever".into(), human_bytes),
        maxmemory = %human_bytes(memory.max),
        full_in = ?Duration::from_secs(full_in.as_secs()),
        "results at this rate outgrow redis's maxmemory before RESULT_TTL_SECONDS expires them: it will be full and pause consumption; raise maxmemory or lower RESULT_TTL_SECONDS (README, Sizing)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(percent: u64) -> Memory {
        Memory {
            used: percent,
            max: 100,
            policy: "noeviction".into(),
        }
    }

    #[test]
    fn full_at_the_mark_with_room_again_five_points_below() {
        assert!(!is_full(&at(89), false, false, 90));
        assert!(is_full(&at(90), false, false, 90));
        assert!(
            is_full(&at(86), false, true, 90),
            "still full above the resume mark"
        );
        assert!(!is_full(&at(84), false, true, 90));
    }

    #[test]
    fn a_refused_write_is_full_whatever_the_numbers_and_no_limit_is_never_full_by_itself() {
        assert!(is_full(&at(10), true, false, 90));
        let unlimited = Memory {
            used: 1 << 40,
            max: 0,
            policy: "noeviction".into(),
        };
        assert!(!is_full(&unlimited, false, true, 90));
        assert_eq!(
            describe(&at(95), true, 90),
            "a write was refused for memory; used 95 B of maxmemory 100 B (95%, pauses at 90%)"
        );
    }

    fn growth() -> Growth {
        Growth {
            ttl_seconds: 3600,
            stream_maxlen: 100_000,
            pause_percent: 90,
            counts: VecDeque::new(),
            footprint: None,
            warned: false,
        }
    }

    #[test]
    fn the_rate_needs_ten_seconds_of_counts() {
        let mut g = growth();
        let start = Instant::now();
        g.counts.push_back((start, 1_000));
        g.counts.push_back((start + Duration::from_secs(5), 1_500));
        assert_eq!(g.rate(), None, "five seconds are not a rate");
        g.counts.push_back((start + Duration::from_secs(20), 3_000));
        assert_eq!(g.rate(), Some(100.0));
    }

    #[test]
    fn results_need_rate_times_ttl_hashes_and_a_capped_stream() {
        let footprint = Footprint {
            hash: 200,
            entry: 20,
        };
        assert_eq!(needed(10.0, 100, 1_000_000, footprint), Some(1000 * 220));
        assert_eq!(needed(10.0, 100, 10, footprint), Some(1000 * 200 + 10 * 20));
        assert_eq!(
            needed(1.0, 0, 10, footprint),
            None,
            "kept for ever: no bound"
        );
        assert_eq!(needed(0.0, 0, 10, footprint), Some(0));
    }
}
