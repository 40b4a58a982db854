//! Several dispatchers on one queue and key prefix: who owns which batch, and how often every
//! open batch is looked at again (see [`crate::reconcile`]).

use serde::Deserialize;
use std::time::Duration;

/// Ownership and reconciliation settings.
#[derive(Debug, Clone, Deserialize)]
pub struct Replicas {
    /// This dispatcher's name in its lease and in the batches it owns. The manifests set the
    /// pod's name; unset, each run picks `{hostname}-{random}`, so two dispatchers never share
    /// one. Two live dispatchers must never be given the same id.
    #[serde(default)]
    pub dispatcher_id: Option<String>,
    /// How long a dispatcher's lease lasts without renewal (it is renewed every third of
    /// that). The open batches of a dispatcher whose lease expired are adopted by another.
    #[serde(default = "d::lease_seconds")]
    pub lease_seconds: f64,
    /// How often every open batch is reconciled even when nothing happened to it: the bound
    /// on how long a batch waits for a lost dispatcher's lease, a Redis outage's end or another
    /// dispatcher's freed slot to be noticed.
    #[serde(default = "d::reconcile_seconds")]
    pub reconcile_seconds: f64,
}

impl Replicas {
    /// The lease's time to live.
    pub fn lease(&self) -> Duration {
        Duration::from_secs_f64(self.lease_seconds.max(0.3))
    }

    /// The periodic reconciliation interval.
    pub fn reconcile_every(&self) -> Duration {
        Duration::from_secs_f64(self.reconcile_seconds.max(0.05))
    }

    /// The configured id, or a fresh one unique to this run.
    pub fn id_or_generate(&self) -> String {
        self.dispatcher_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_or_else(|_| "dispatcher".into(), |h| h.trim().to_owned());
            let unique = uuid::Uuid::now_v7().simple().to_string();
            // The v7 uuid's last characters are random; its first ones are the time.
            format!("{host}-{}", &unique[unique.len() - 8..])
        })
    }
}

mod d {
    pub fn lease_seconds() -> f64 {
        15.0
    }
    pub fn reconcile_seconds() -> f64 {
        5.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_differ_and_a_configured_one_is_kept() {
        let unset = Replicas {
            dispatcher_id: None,
            lease_seconds: 15.0,
            reconcile_seconds: 5.0,
        };
        assert_ne!(unset.id_or_generate(), unset.id_or_generate());
        let set = Replicas {
            dispatcher_id: Some("pod-a".into()),
            ..unset
        };
        assert_eq!(set.id_or_generate(), "pod-a");
    }
}
