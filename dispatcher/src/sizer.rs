//! Adaptive batch sizing (`BATCH_MODE=adaptive`, the default).
//!
//! Each batch's size limit is the smaller of two wishes, bounded by `BATCH_MAX_MESSAGES`:
//! - **by time**: about `TARGET_JOB_SECONDS` of work per Job, from the observed work cost per
//!   message (the runner reports its own processing time, so pod start-up does not distort
//!   it) — heavy messages make small batches that spread over many Jobs;
//! - **by spread**: the queue's depth shared across `MAX_JOBS_IN_FLIGHT` slots, so a burst
//!   uses every slot and a shallow queue does not wait to fill a large batch.
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
    /// Smoothed work seconds per message; `None` until a Job reports.
    cost: Mutex<Option<f64>>,
}

/// Weight of the newest observation in the smoothed cost.
const SMOOTHING: f64 = 0.3;

impl Sizer {
    /// A sizer for `slots` concurrent Jobs.
    pub fn new(mode: BatchMode, max: usize, target: Duration, slots: usize) -> Self {
        Self {
            mode,
            max: max.max(1),
            target,
            slots: slots.max(1),
            cost: Mutex::new(None),
        }
    }

    /// The size limit for the next batch, with `depth` messages ready in the queue.
    pub fn size(&self, depth: usize) -> usize {
        if self.mode == BatchMode::Fixed {
            return self.max;
        }
        let spread = depth.div_ceil(self.slots).max(1);
        let by_time = self.cost().filter(|c| *c > 0.0).map_or(usize::MAX, |c| {
            (self.target.as_secs_f64() / c).floor() as usize
        });
        spread.min(by_time).clamp(1, self.max)
    }

    /// Learns from a finished Job: `messages` took `work` of processing.
    pub fn observe(&self, messages: usize, work: Duration) {
        if messages == 0 {
            return;
        }
        let sample = work.as_secs_f64() / messages as f64;
        let mut cost = self.cost.lock().unwrap_or_else(PoisonError::into_inner);
        *cost = Some(cost.map_or(sample, |c| c + SMOOTHING * (sample - c)));
    }

    fn cost(&self) -> Option<f64> {
        *self.cost.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adaptive() -> Sizer {
        Sizer::new(BatchMode::Adaptive, 1_000, Duration::from_secs(5), 4)
    }

    #[test]
    fn fixed_mode_always_uses_the_maximum() {
        let sizer = Sizer::new(BatchMode::Fixed, 100, Duration::from_secs(5), 4);
        assert_eq!((sizer.size(0), sizer.size(1_000_000)), (100, 100));
    }

    #[test]
    fn a_burst_is_spread_over_every_slot_up_to_the_maximum() {
        let sizer = adaptive();
        assert_eq!(sizer.size(400), 100);
        assert_eq!(sizer.size(100_000), 1_000);
    }

    #[test]
    fn a_shallow_queue_makes_small_batches() {
        assert_eq!(adaptive().size(0), 1);
        assert_eq!(adaptive().size(6), 2);
    }

    #[test]
    fn heavy_messages_make_batches_of_about_the_target_time() {
        let sizer = adaptive();
        sizer.observe(100, Duration::from_secs(1)); // 10 ms a message
        assert_eq!(sizer.size(100_000), 500); // 5 s ÷ 10 ms
        sizer.observe(100, Duration::from_secs(10)); // now 100 ms: the estimate moves towards it
        assert!(sizer.size(100_000) < 500);
    }
}
