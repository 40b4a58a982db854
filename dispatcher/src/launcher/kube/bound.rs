//! Bounded waits: no batch waits for its Job's outcome forever.
//!
//! The Job watch ([`super::watch`]) delivers outcomes, but a real cluster can keep one from
//! ever arriving: a Job deleted while the watch was away and missed by its re-list, a Job
//! created suspended for Kueue where no Kueue (or no `LocalQueue`) admits it, a pod stuck
//! Terminating on a lost node that keeps the Job controller from writing `Failed`. So every
//! `JOB_SLACK_SECONDS` a Job's outcome has not arrived, the launcher asks the API server for
//! the Job itself (a GET) and acts on what it finds:
//! - finished: its outcome, even if no watch event said so;
//! - gone: an outage (the Job never had its chance), retried whole;
//! - suspended: readiness is blocked ([`health::ADMISSION`]) naming Kueue, while it waits;
//! - running past its deadline plus slack: overdue, logged once;
//! - running or suspended at the hard limit (`JOB_WAIT_SECONDS`), or unanswered by then: the
//!   Job is deleted (its pods with it) and the batch retried whole, as an outage.

use super::watch::{JobTracker, outcome_of};
use crate::health::{self, Health};
use crate::launcher::interface::{FailureKind, Outcome};
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::{DeleteParams, PropagationPolicy};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How long a Job's outcome may take, from its creation.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Between direct checks; also how long a Job may stay suspended before readiness says so.
    pub slack: Duration,
    /// The Job's own deadline (`activeDeadlineSeconds`) plus `slack`: later is overdue.
    pub overdue: Duration,
    /// The hard limit: the Job is given up on.
    pub limit: Duration,
}

/// The Jobs waiting for admission longer than `slack`, behind one readiness block.
pub struct Admission {
    waiting: Mutex<BTreeSet<String>>,
    health: Arc<Health>,
    /// The `KUEUE_QUEUE` the Jobs name, for the message.
    queue: Option<String>,
}

impl Admission {
    /// Nothing waiting yet.
    pub fn new(health: Arc<Health>, queue: Option<String>) -> Self {
        Self {
            waiting: Mutex::default(),
            health,
            queue,
        }
    }

    fn update(&self, job: &str, waiting: bool, since: Duration) {
        let mut jobs = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = if waiting {
            jobs.insert(job.to_owned())
        } else {
            jobs.remove(job)
        };
        if !changed {
            return;
        }
        if jobs.is_empty() {
            self.health.clear(health::ADMISSION);
            return;
        }
        let queue = self.queue.as_deref().unwrap_or("(KUEUE_QUEUE is unset)");
        self.health.block(
            health::ADMISSION,
            format!(
                "{} Job(s) suspended and not admitted for {}s or more (first: {}): is Kueue installed, and does LocalQueue {queue} exist in this namespace with quota?",
                jobs.len(),
                since.as_secs(),
                jobs.first().map_or("", String::as_str),
            ),
        );
    }
}

/// Removes a Job from [`Admission`] however its wait ends (resolved, abandoned, dropped).
struct Watched<'a> {
    admission: &'a Admission,
    job: &'a str,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.admission.update(self.job, false, Duration::ZERO);
    }
}

/// Checks on Job `name` every `bounds.slack` until it has an outcome or is given up on; runs
/// beside the watch's own wait, which usually wins.
pub async fn watch_over(
    api: Api<Job>,
    name: String,
    bounds: Bounds,
    admission: &Admission,
    tracker: &JobTracker,
) -> Outcome {
    let _watched = Watched {
        admission,
        job: &name,
    };
    let created = Instant::now();
    let mut overdue_logged = false;
    loop {
        tokio::time::sleep(bounds.slack).await;
        let waited = created.elapsed();
        let found = api.get_opt(&name).await;
        let at_limit = waited >= bounds.limit;
        let job = match found {
            Ok(Some(job)) => job,
            Ok(None) => {
                tracing::warn!(job = %name, "the job is gone and no watch event said so");
                return Outcome::failed(
                    FailureKind::JobLost,
                    "JobLost: the Job was deleted before it finished, unseen by the watch",
                );
            }
            Err(e) if at_limit => {
                let reason = format!(
                    "JobUnknown: no outcome after {}s and the API server does not answer ({e})",
                    waited.as_secs()
                );
                return give_up(&api, tracker, &name, FailureKind::JobUnknown, reason).await;
            }
            Err(e) => {
                tracing::warn!(job = %name, error = %e, "could not check on the job");
                continue;
            }
        };
        if let Some(outcome) = outcome_of(&job) {
            return outcome;
        }
        let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
        admission.update(&name, suspended, waited);
        if at_limit {
            let (kind, reason) = if suspended {
                (
                    FailureKind::NotAdmitted,
                    format!(
                        "NotAdmitted: the Job stayed suspended for {}s; nothing (Kueue) admitted it",
                        waited.as_secs()
                    ),
                )
            } else {
                (
                    FailureKind::JobHung,
                    format!(
                        "JobHung: no outcome {}s after creation, past its deadline (a pod stuck terminating, or no Job controller)",
                        waited.as_secs()
                    ),
                )
            };
            return give_up(&api, tracker, &name, kind, reason).await;
        }
        if !suspended && waited >= bounds.overdue && !overdue_logged {
            overdue_logged = true;
            tracing::warn!(job = %name, waited = waited.as_secs(), "the job is past its deadline and has no outcome yet");
        }
    }
}

/// Deletes the Job (its pods with it) so it cannot run later, and fails it as an outage. The
/// watch's wait is dropped first: the delete's own event must not answer for this reason.
async fn give_up(
    api: &Api<Job>,
    tracker: &JobTracker,
    name: &str,
    kind: FailureKind,
    reason: String,
) -> Outcome {
    tracing::warn!(job = %name, %reason, "giving up on the job");
    tracker.forget(name);
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    if let Err(e) = api.delete(name, &params).await {
        // The batch is retried as a new Job either way; this one may linger until its TTL.
        tracing::warn!(job = %name, error = %e, "could not delete the job given up on");
    }
    Outcome::failed(kind, reason)
}
