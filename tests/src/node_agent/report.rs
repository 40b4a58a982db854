//! What the agent tells the API server about a pod: its status (pods/status) and, once its
//! containers are gone after a deletion, the confirming delete.

use super::pod::PodRun;
use super::signals::Stop;
use super::status;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use std::time::Duration;
use tracing::{info, warn};

impl PodRun {
    /// Waits for an interruption, re-sending a status the API server has not taken yet.
    pub(super) async fn wait_reporting(&mut self) -> Stop {
        while self.dirty {
            tokio::select! {
                stop = self.signals.wait() => return stop,
                () = tokio::time::sleep(Duration::from_secs(5)) => self.publish().await,
            }
        }
        self.signals.wait().await
    }

    /// Publishes a final status until the API server takes it (an outage, such as an API
    /// server restart, must not lose a pod's end), unless the pod is gone or the agent stops.
    pub(super) async fn publish_surely(&mut self) {
        self.publish().await;
        while self.dirty && !self.signals.stop.is_cancelled() && !self.signals.gone.is_cancelled() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            self.publish().await;
        }
    }

    /// Reports the status if it changed (pods/status, JSON merge patch: lists are replaced
    /// whole, so no stale container state survives), retrying transient errors.
    pub(super) async fn publish(&mut self) {
        let ctrs: Vec<_> = self.ctrs.iter().map(|r| r.s.clone()).collect();
        let conditions = self.pod().status.and_then(|s| s.conditions);
        let mut prev: Vec<Value> = conditions
            .into_iter()
            .flatten()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        for ours in &self.ours {
            match prev.iter_mut().find(|c| c["type"] == ours["type"]) {
                Some(slot) => *slot = ours.clone(),
                None => prev.push(ours.clone()),
            }
        }
        let status = status::pod_status(
            &ctrs,
            (self.final_, self.sandbox),
            (&self.ip, &self.start_time),
            &prev,
        );
        if status == self.published {
            return;
        }
        let patch = Patch::Merge(json!({"status": status}));
        let name = self.key.split_once('/').map_or("", |(_, n)| n).to_owned();
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=5 {
            match self
                .api
                .patch_status(&name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => {
                    let summary = status::summary(&ctrs, self.final_);
                    if summary != self.logged {
                        info!(pod = %self.key, "{summary}");
                        self.logged = summary;
                    }
                    self.ours = status["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|c| c["type"] != "PodScheduled")
                        .cloned()
                        .collect();
                    self.published = status;
                    self.dirty = false;
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) => warn!(pod = %self.key, attempt, "reporting status: {e}"),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        self.dirty = true;
    }

    /// Deletes the pod with grace 0 and a uid precondition, as the kubelet confirms that its
    /// containers are gone; finalizers (the Job controller's) may keep it a while longer.
    pub(super) async fn confirm_deletion(&self) {
        let uid = self.signals.rx.borrow().metadata.uid.clone();
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let name = self.key.split_once('/').map_or("", |(_, n)| n);
        let mut delay = Duration::from_secs(1);
        while !self.signals.stop.is_cancelled() && !self.signals.gone.is_cancelled() {
            match self.api.delete(name, &dp).await {
                Ok(_) => return info!(pod = %self.key, "deletion confirmed"),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
                Err(e) => warn!(pod = %self.key, "confirming deletion: {e}"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}
