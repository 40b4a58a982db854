//! Adaptive batch sizing (`BATCH_MODE=adaptive`, the default).
//!
//! Each batch's size limit is the smaller of two wishes, bounded by `BATCH_MAX_MESSAGES`:
//! - **by time**: about `TARGET_JOB_SECONDS` of work per Job, from the observed work cost per
//!   message (the runner reports its own processing time, so pod start-up does not distort
//!   it) — heavy messages make small batches that spread over many Jobs;
//! - **by spread**: a backlog shared across `MAX_JOBS_IN_FLIGHT` slots, so a burst uses every
//!   slot; a shallow queue (no more than one message per slot waiting) takes what comes, and the
//!   linger bound closes its batch, so latency stays low without tiny Jobs;
//! - but never so small that a Job's fixed overhead (pod start-up: its duration minus the
//!   runner's work) outweighs its work: at least overhead ÷ cost per message.
//!
//! The linger bound still closes a batch early when messages trickle in. `fixed` always uses
//! `BATCH_MAX_MESSAGES`.

use serde::Deserialize;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How batch sizes are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchMode {
    /// Follow queue depth and observed cost, bounded by the maximum.
    Adaptive,
    /// Always `BATCH_MAX_MESSAGES`.
    Fixed,
}

/// Chooses batch sizes and learns from finished Jobs.
#[derive(Debug)]
pub struct Sizer {
    mode: BatchMode,
    max: usize,
    target: Duration,
    slots: usize,
    /// Expected start-up of a Job before any has reported.
    startup_prior: Duration,
    /// Smoothed (work seconds per message, overhead seconds per Job); `None` until a Job reports.
    learned: Mutex<Option<(f64, f64)>>,
}

/// Weight of the newest observation in the smoothed cost.
const SMOOTHING: f64 = 0.3;
/// Work per message assumed before any Job has reported (1 ms): with the start-up prior it
/// sets the first batches' floor.
const COST_PRIOR: f64 = 0.001;

impl Sizer {
    /// A sizer for `slots` concurrent Jobs expected to take `startup_prior` to start.
    pub fn new(
        mode: BatchMode,
        max: usize,
        target: Duration,
        slots: usize,
        startup_prior: Duration,
    ) -> Self {
        Self {
            mode,
            max: max.max(1),
            target,
            slots: slots.max(1),
            startup_prior,
            learned: Mutex::new(None),
        }
    }

    /// The size limit for the next batch, with `depth` messages waiting (broker and client).
    pub fn size(&self, depth: usize) -> usize {
        if self.mode == BatchMode::Fixed {
            return self.max;
        }
        // A shallow queue: take what comes and let the linger bound close the batch.
        let spread = if depth <= self.slots {
            self.max
        } else {
            depth.div_ceil(self.slots)
        };
        let (cost, overhead) = self
            .learned()
            .filter(|(cost, _)| *cost > 0.0)
            .unwrap_or((COST_PRIOR, self.startup_prior.as_secs_f64()));
        let by_time = (self.target.as_secs_f64() / cost).floor() as usize;
        let amortized = (overhead / cost).ceil() as usize;
        spread.max(amortized).min(by_time).clamp(1, self.max)
    }

    /// Learns from a finished Job: `messages` took `work` of processing in a Job that lasted
    /// `job` from launch to outcome.
    pub fn observe(&self, messages: usize, work: Duration, job: Duration) {
        if messages == 0 {
            return;
        }
        let cost = work.as_secs_f64() / messages as f64;
        let overhead = job.saturating_sub(work).as_secs_f64();
        let smooth = |old: f64, new: f64| old + SMOOTHING * (new - old);
        let mut learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
        *learned = Some(learned.map_or((cost, overhead), |(c, o)| {
            (smooth(c, cost), smooth(o, overhead))
        }));
    }

    fn learned(&self) -> Option<(f64, f64)> {
        *self.learned.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adaptive() -> Sizer {
        Sizer::new(
            BatchMode::Adaptive,
            1_000,
            Duration::from_secs(5),
            4,
            Duration::ZERO,
        )
    }

    #[test]
    fn fixed_mode_always_uses_the_maximum() {
        let sizer = Sizer::new(
            BatchMode::Fixed,
            100,
            Duration::from_secs(5),
            4,
            Duration::ZERO,
        );
        assert_eq!((sizer.size(0), sizer.size(1_000_000)), (100, 100));
    }

    #[test]
    fn a_burst_is_spread_over_every_slot_up_to_the_maximum() {
        let sizer = adaptive();
        assert_eq!(sizer.size(400), 100);
        assert_eq!(sizer.size(100_000), 1_000);
    }

    #[test]
    fn a_shallow_queue_leaves_closing_to_linger_and_a_backlog_is_spread() {
        assert_eq!(adaptive().size(0), 1_000);
        assert_eq!(adaptive().size(4), 1_000);
        assert_eq!(adaptive().size(6), 2);
    }

    #[test]
    fn heavy_messages_make_batches_of_about_the_target_time() {
        let sizer = adaptive();
        let (work, job) = (Duration::from_secs(1), Duration::from_millis(1_010));
        sizer.observe(100, work, job); // 10 ms a message, 10 ms of start-up
        assert_eq!(sizer.size(100_000), 500); // 5 s ÷ 10 ms
        assert_eq!(sizer.size(40), 10); // a small backlog still uses every slot
        assert_eq!(sizer.size(0), 500); // a shallow queue: the time target still caps it
        sizer.observe(100, Duration::from_secs(10), Duration::from_secs(10)); // now 100 ms a message
        assert!(sizer.size(100_000) < 500);
    }

    #[test]
    fn a_known_slow_start_up_makes_full_batches_before_any_job_reports() {
        let sizer = Sizer::new(
            BatchMode::Adaptive,
            1_000,
            Duration::from_secs(5),
            4,
            Duration::from_millis(1_500),
        );
        assert_eq!(
            sizer.size(6_000),
            1_000,
            "not 6,000 ÷ 4 slots: each Job would be mostly start-up"
        );
    }

    #[test]
    fn a_costly_start_up_is_amortised_even_on_a_shallow_queue() {
        let sizer = adaptive();
        // 20 µs of work a message, 1.5 s of pod start-up: a batch of one would be all overhead.
        sizer.observe(100, Duration::from_millis(2), Duration::from_millis(1_502));
        assert_eq!(sizer.size(0), 1_000);
    }
}
