//! What interrupts a pod's task: its deletion, its disappearance, the agent's stop.

use k8s_openapi::api::core::v1::Pod;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a pod's run was cut short.
pub enum Stop {
    /// Deleted: stop its containers within this grace period, report, confirm the deletion.
    Deleted(i64),
    /// Gone from the API: kill its processes at once.
    Gone,
    /// The agent stops: TERM, KILL after 5 s, no report.
    Shutdown,
}

/// What interrupts a pod: the latest object, its disappearance, the agent's stop.
pub struct Signals {
    pub(super) rx: watch::Receiver<Pod>,
    pub(super) gone: CancellationToken,
    pub(super) stop: CancellationToken,
}

impl Signals {
    /// The deletion grace period, once the pod is being deleted.
    pub fn deleting(&self) -> Option<i64> {
        let pod = self.rx.borrow();
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
        pod.metadata.deletion_timestamp.is_some().then_some(grace)
    }

    /// Waits until the pod is being deleted (at once if it is), vanishes, or the agent stops.
    pub async fn wait(&mut self) -> Stop {
        loop {
            self.rx.mark_unchanged();
            if let Some(grace) = self.deleting() {
                return Stop::Deleted(grace);
            }
            tokio::select! {
                () = self.gone.cancelled() => return Stop::Gone,
                () = self.stop.cancelled() => return Stop::Shutdown,
                changed = self.rx.changed() => if changed.is_err() { return Stop::Gone },
            }
        }
    }

    /// Sleeps for `d` unless interrupted first.
    pub async fn pause(&mut self, d: Duration) -> Option<Stop> {
        tokio::select! {
            () = tokio::time::sleep(d) => None,
            stop = self.wait() => Some(stop),
        }
    }
}
