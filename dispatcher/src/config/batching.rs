//! How deliveries become batches and how many Jobs run at once: batch size (fixed or adaptive),
//! bytes, linger, the in-flight cap, and how long deliveries may wait unacked.

use serde::Deserialize;

/// Batching and concurrency settings.
#[derive(Debug, Clone, Deserialize)]
pub struct Batching {
    /// A batch closes at this many messages (the most an adaptive batch may hold).
    #[serde(default = "d::batch_max_messages")]
    pub batch_max_messages: u16,
    /// `adaptive` (batch size follows queue depth and cost per message) or `fixed`.
    #[serde(default = "d::batch_mode")]
    pub batch_mode: crate::sizer::BatchMode,
    /// Adaptive mode: a Job's expected start-up before any has reported, in seconds; default:
    /// `STARTUP_DELAY_MS` with the local launcher, 1.5 with kube.
    #[serde(default)]
    pub job_startup_seconds: Option<f64>,
    /// Adaptive mode: about this much work per Job, in seconds.
    #[serde(default = "d::target_job_seconds")]
    pub target_job_seconds: f64,
    /// A batch closes before its bodies exceed this many bytes.
    #[serde(default = "d::batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// A batch closes this long after its first message.
    #[serde(default = "d::batch_linger_ms")]
    pub batch_linger_ms: u64,
    /// Most Jobs running at once; beyond that, messages wait in RabbitMQ.
    #[serde(default = "d::max_jobs_in_flight")]
    pub max_jobs_in_flight: usize,
    /// The longest a delivery waits unacked in the dispatcher (for a slot under the cap, or
    /// through a pause); then its batch is parked in Redis and acked, and consumption stops
    /// until a slot frees. Keep it well below the broker's `consumer_timeout`.
    #[serde(default = "d::unacked_max_seconds")]
    pub unacked_max_seconds: f64,
}

impl Batching {
    /// [`Batching::unacked_max_seconds`] as a duration (validated positive and finite).
    pub fn unacked_max(&self) -> std::time::Duration {
        std::time::Duration::try_from_secs_f64(self.unacked_max_seconds).unwrap_or_default()
    }
}

/// Defaults, one function per variable (serde's `default = "…"` needs a path).
mod d {
    pub fn batch_max_messages() -> u16 {
        500
    }
    pub fn batch_mode() -> crate::sizer::BatchMode {
        crate::sizer::BatchMode::Adaptive
    }
    pub fn target_job_seconds() -> f64 {
        5.0
    }
    pub fn batch_max_bytes() -> usize {
        8 << 20
    }
    pub fn batch_linger_ms() -> u64 {
        200
    }
    pub fn max_jobs_in_flight() -> usize {
        4
    }
    /// A tenth of RabbitMQ's default `consumer_timeout` (30 minutes).
    pub fn unacked_max_seconds() -> f64 {
        180.0
    }
}
