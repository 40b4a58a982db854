//! Watching the dispatcher's Jobs in the cluster and turning their conditions into outcomes.
//!
//! One `kube::runtime::watcher` follows every Job with the dispatcher's labels. Each launch
//! registers interest in its Job's name *before* creating it, so no event is missed; a Job seen
//! finished before anyone asked (a restarted dispatcher adopting it) is remembered, so adopting
//! it resolves at once. The count of Jobs seen active is the in-flight count the cluster
//! reports, independent of this process's memory.

use crate::launcher::Outcome;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// What the watcher knows of each Job, and who waits for which.
#[derive(Default)]
pub struct JobTracker {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Jobs seen, by name: `None` while running, the outcome once finished.
    seen: HashMap<String, Option<Outcome>>,
    waiters: HashMap<String, oneshot::Sender<Outcome>>,
}

impl JobTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent (single inserts).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the Job `name` to finish; resolves at once if it already has.
    pub fn register(&self, name: &str) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        match state.seen.get(name) {
            Some(Some(outcome)) => {
                let _ = tx.send(outcome.clone());
            }
            _ => {
                state.waiters.insert(name.to_owned(), tx);
            }
        }
        rx
    }

    /// Records the Job's latest state.
    pub fn observe(&self, job: &Job) {
        let Some(name) = job.metadata.name.clone() else {
            return;
        };
        let outcome = outcome_of(job);
        let mut state = self.lock();
        if let Some(outcome) = &outcome
            && let Some(waiter) = state.waiters.remove(&name)
        {
            let _ = waiter.send(outcome.clone());
        }
        state.seen.insert(name, outcome);
    }

    /// Records that the Job is gone. A Job deleted before it finished (by hand, or by a
    /// namespace deletion) fails its batch rather than leaving it waiting forever.
    pub fn deleted(&self, job: &Job) {
        let Some(name) = job.metadata.name.as_deref() else {
            return;
        };
        let mut state = self.lock();
        let finished = matches!(state.seen.remove(name), Some(Some(_)));
        if let Some(waiter) = state.waiters.remove(name) {
            let outcome = outcome_of(job)
                .filter(|_| finished)
                .unwrap_or_else(|| Outcome::Failed {
                    reason: "JobDeleted: the Job was deleted before it finished".into(),
                });
            let _ = waiter.send(outcome);
        }
    }

    /// Forgets a Job the dispatcher has finished with.
    pub fn forget(&self, name: &str) {
        let mut state = self.lock();
        state.seen.remove(name);
        state.waiters.remove(name);
    }

    /// Jobs the cluster reports as not finished.
    pub fn active(&self) -> usize {
        self.lock().seen.values().filter(|o| o.is_none()).count()
    }
}

/// The outcome a Job's conditions say, if it has finished.
pub fn outcome_of(job: &Job) -> Option<Outcome> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let done = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    if done("Complete").is_some() {
        return Some(Outcome::Succeeded);
    }
    done("Failed").map(|c| Outcome::Failed {
        reason: format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or("Failed"),
            c.message.as_deref().unwrap_or("the Job failed")
        ),
    })
}

/// Follows the Jobs matching `selector` into `tracker` until `stop`.
pub async fn watch(
    api: Api<Job>,
    selector: &str,
    tracker: Arc<JobTracker>,
    stop: CancellationToken,
) {
    let config = watcher::Config::default().labels(selector);
    let mut events = watcher(api, config).default_backoff().boxed();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            // Cancellation-safe: the watcher resumes from its last resource version.
            event = events.next() => event,
        };
        match event {
            Some(Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job))) => {
                tracker.observe(&job);
            }
            Some(Ok(watcher::Event::Delete(job))) => tracker.deleted(&job),
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
            Some(Err(e)) => tracing::warn!(error = %e, "job watch failed; retrying with backoff"),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn job(name: &str, condition: Option<(&str, &str)>) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(JobStatus {
                conditions: condition.map(|(kind, reason)| {
                    vec![JobCondition {
                        type_: kind.into(),
                        status: "True".into(),
                        reason: Some(reason.into()),
                        message: Some("details".into()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn conditions_map_to_outcomes() {
        assert_eq!(outcome_of(&job("a", None)), None);
        assert_eq!(
            outcome_of(&job("a", Some(("Complete", "CompletionsReached")))),
            Some(Outcome::Succeeded)
        );
        assert_eq!(
            outcome_of(&job("a", Some(("Failed", "DeadlineExceeded")))),
            Some(Outcome::Failed {
                reason: "DeadlineExceeded: details".into()
            })
        );
    }

    #[tokio::test]
    async fn waiters_hear_of_finished_jobs_whenever_they_register() {
        let tracker = JobTracker::default();
        let early = tracker.register("a");
        tracker.observe(&job("a", None));
        assert_eq!(tracker.active(), 1);
        tracker.observe(&job("a", Some(("Complete", "x"))));
        assert_eq!(early.await.unwrap(), Outcome::Succeeded);
        assert_eq!(tracker.active(), 0);
        // A restarted dispatcher adopting a Job that already finished.
        tracker.observe(&job("b", Some(("Failed", "BackoffLimitExceeded"))));
        assert!(matches!(
            tracker.register("b").await.unwrap(),
            Outcome::Failed { .. }
        ));
    }

    #[tokio::test]
    async fn a_job_deleted_while_running_fails_its_waiter() {
        let tracker = JobTracker::default();
        let waiting = tracker.register("c");
        tracker.observe(&job("c", None));
        tracker.deleted(&job("c", None));
        assert!(
            matches!(waiting.await.unwrap(), Outcome::Failed { reason } if reason.starts_with("JobDeleted"))
        );
    }
}
