//! Outages: how a Job that could not do its work is retried, and when launches stop.

use serde::Deserialize;
use std::time::Duration;

/// Outage settings (see [`crate::breaker`]).
#[derive(Debug, Clone, Deserialize)]
pub struct Outages {
    /// After this many outages in a row, launches stop and one probe Job at a time tests
    /// whether the cause is fixed.
    #[serde(default = "d::outage_threshold")]
    pub outage_threshold: u32,
    /// The first delay before a batch whose Job met an outage is launched again; it doubles
    /// with each further outage in a row, with jitter.
    #[serde(default = "d::outage_retry_seconds")]
    pub outage_retry_seconds: f64,
    /// The longest such delay, also the longest wait between two probes.
    #[serde(default = "d::outage_retry_max_seconds")]
    pub outage_retry_max_seconds: f64,
}

impl Outages {
    /// The first retry delay.
    pub fn first_delay(&self) -> Duration {
        Duration::from_secs_f64(self.outage_retry_seconds.max(0.0))
    }

    /// The longest retry delay.
    pub fn max_delay(&self) -> Duration {
        Duration::from_secs_f64(self.outage_retry_max_seconds.max(self.outage_retry_seconds))
    }
}

mod d {
    pub fn outage_threshold() -> u32 {
        3
    }
    pub fn outage_retry_seconds() -> f64 {
        2.0
    }
    pub fn outage_retry_max_seconds() -> f64 {
        300.0
    }
}
