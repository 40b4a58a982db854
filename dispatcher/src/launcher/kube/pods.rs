//! Watching the pods of sluice's Jobs, to recognise a Job that cannot run long before its
//! deadline.
//!
//! A pod whose image cannot be pulled, whose Secret or `ConfigMap` is missing, or that no node
//! can take stays Pending: its Job never fails by itself until `activeDeadlineSeconds`. A Job
//! whose pods are refused (admission, a quota) has no pod at all, and says so only in Events.
//! A reflector keeps the pods carrying sluice's labels; every few seconds each awaited Job is
//! judged:
//! - a pod waiting with a reason that needs a person (`ErrImagePull`, `ImagePullBackOff`,
//!   `InvalidImageName`, `CreateContainerConfigError`, …) for `POD_STUCK_SECONDS`, or
//!   unschedulable that long while no other runner pod holds a node (one that waits for
//!   capacity its siblings hold is not stuck: more Jobs in flight than the nodes fit is
//!   normal): the Job is an outage with that reason;
//! - no pod at all `POD_CREATE_SECONDS` after the Job was created (and the Job not
//!   suspended for Kueue): the Job cannot create its pods (`FailedCreate`), an outage.
//!
//! The waiter then resolves as an outage; the batch is retried whole later and the Job is
//! deleted (its pods with it) when the outcome is recorded. Nothing is judged while the pod
//! list is not complete, so a pod watch that fails (say, RBAC without `pods`) blocks
//! readiness instead of failing every Job.

use super::watch::JobTracker;
use crate::health::{self, Health};
use crate::launcher::interface::{FailureKind, Outcome};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Waiting reasons that will not resolve without a person.
const STUCK_WAITING: [&str; 7] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The label the Job controller puts on each of a Job's pods.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// How often awaited Jobs are judged.
const SWEEP: Duration = Duration::from_secs(2);

/// How long a Job may be stuck before it is given up on.
#[derive(Debug, Clone, Copy)]
pub struct Graces {
    /// A pod stuck waiting or unschedulable for this long fails its Job.
    pub stuck: Duration,
    /// A Job without any pod this long after its creation fails.
    pub create: Duration,
}

/// Why a pod cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// The reason and message, as the pod says them.
    pub reason: String,
    /// Unschedulable: capacity that running pods hold may free up.
    pub for_capacity: bool,
}

/// Why `pod` cannot run, if it is stuck for a reason that needs a person or capacity.
pub fn stuck(pod: &Pod) -> Option<Stuck> {
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for container in containers {
        let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if STUCK_WAITING.contains(&reason) {
            let message = waiting.message.as_deref().unwrap_or("no message");
            return Some(Stuck {
                reason: format!("{reason}: {message} (pod {})", pod.name_any()),
                for_capacity: false,
            });
        }
    }
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .filter(|c| c.reason.as_deref() == Some("Unschedulable"))
        .map(|c| {
            let message = c.message.as_deref().unwrap_or("no node fits");
            Stuck {
                reason: format!("Unschedulable: {message} (pod {})", pod.name_any()),
                for_capacity: true,
            }
        })
}

/// Bound to a node and not finished: it holds capacity that will free up.
fn holds_node(pod: &Pod) -> bool {
    let bound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    bound && matches!(phase, Some("Pending" | "Running"))
}

/// `reason` with how the Job's last pod ended, when the watch saw it: the Job's own
/// condition says only "Job has reached the specified backoff limit", the pod says why
/// (`exit code 134 (signal 6)`, `OOMKilled`).
pub fn with_last_exit(store: &Store<Pod>, job: &str, reason: String) -> String {
    let last = store
        .state()
        .iter()
        .filter(|p| p.labels().get(JOB_NAME_LABEL).map(String::as_str) == Some(job))
        .filter_map(|p| {
            let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
            let ended = statuses
                .iter()
                .find_map(|c| c.state.as_ref()?.terminated.clone())?;
            Some((ended.finished_at.clone(), p.name_any(), ended))
        })
        .max_by(|a, b| a.0.cmp(&b.0));
    let Some((_, pod, ended)) = last else {
        return reason;
    };
    let code = ended.exit_code;
    let signal = if code > 128 {
        format!(" (signal {})", code - 128)
    } else {
        String::new()
    };
    let why = ended.reason.unwrap_or_default();
    format!("{reason}; last pod {pod}: exit code {code}{signal} {why}")
        .trim_end()
        .to_owned()
}

/// Follows the pods matching `selector` into `writer`'s store until `stop`, giving up on
/// awaited Jobs that cannot run. Readiness is blocked ([`health::POD_WATCH`]) while the pod
/// watch fails.
pub async fn watch(
    api: Api<Pod>,
    selector: &str,
    (store, writer): (Store<Pod>, reflector::store::Writer<Pod>),
    tracker: Arc<JobTracker>,
    graces: Graces,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let config = watcher::Config::default().labels(selector);
    let mut events = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .boxed();
    let mut judge = Judge {
        store,
        tracker,
        graces,
        stuck_since: HashMap::new(),
        complete: false,
    };
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = sweep.tick() => judge.sweep(Instant::now()),
            event = events.next() => match event {
                Some(Ok(watcher::Event::InitDone)) => {
                    judge.complete = true;
                    health.clear(health::POD_WATCH);
                }
                Some(Ok(watcher::Event::Init)) => judge.complete = false,
                Some(Ok(_)) => health.clear(health::POD_WATCH),
                Some(Err(e)) => {
                    judge.complete = false;
                    health.block(health::POD_WATCH, format!("watching the runners' pods failed: {e}"));
                }
                None => return,
            },
        }
    }
}

/// The judging state of [`watch`].
struct Judge {
    store: Store<Pod>,
    tracker: Arc<JobTracker>,
    graces: Graces,
    /// When each Job was first seen stuck, and why.
    stuck_since: HashMap<String, Instant>,
    /// The pod list is complete (the watcher's initial list is done and it has not failed).
    complete: bool,
}

impl Judge {
    fn sweep(&mut self, now: Instant) {
        if !self.complete {
            return;
        }
        let pods = self.store.state();
        let any_running = pods.iter().any(|p| holds_node(p));
        let waiting = self.tracker.waiting();
        self.stuck_since
            .retain(|name, _| waiting.iter().any(|(w, _, _)| w == name));
        for (job, created, suspended) in waiting {
            if suspended {
                continue;
            }
            let mine: Vec<&Arc<Pod>> = pods
                .iter()
                .filter(|p| p.labels().get(JOB_NAME_LABEL) == Some(&job))
                .collect();
            let stuck = mine
                .iter()
                .filter_map(|p| stuck(p))
                .find(|s| !(s.for_capacity && any_running));
            let verdict = match stuck.map(|s| s.reason) {
                Some(reason) => {
                    let since = *self.stuck_since.entry(job.clone()).or_insert(now);
                    (now.duration_since(since) >= self.graces.stuck).then_some(reason)
                }
                None if mine.is_empty() && now.duration_since(created) >= self.graces.create => {
                    Some(format!(
                        "FailedCreate: the Job has created no pod in {}s; admission or a quota may refuse its pods (kubectl describe job {job})",
                        self.graces.create.as_secs()
                    ))
                }
                None => {
                    self.stuck_since.remove(&job);
                    None
                }
            };
            if let Some(reason) = verdict {
                tracing::warn!(%job, %reason, "the job cannot run; giving up on it");
                self.stuck_since.remove(&job);
                self.tracker
                    .give_up(&job, Outcome::failed(FailureKind::PodStuck, reason));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };

    fn waiting(reason: &str) -> Pod {
        let state = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some("details".into()),
            }),
            ..Default::default()
        };
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "runner".into(),
                state: Some(state),
                ..Default::default()
            }]),
            ..Default::default()
        });
        pod
    }

    #[allow(clippy::unwrap_used)]
    #[test]
    fn waiting_reasons_that_need_a_person_are_stuck_and_others_are_not() {
        for reason in STUCK_WAITING {
            let why = stuck(&waiting(reason)).unwrap();
            assert!(
                why.reason.starts_with(reason) && !why.for_capacity,
                "{why:?}"
            );
        }
        assert_eq!(stuck(&waiting("ContainerCreating")), None);
        assert_eq!(stuck(&Pod::default()), None);
    }

    #[allow(clippy::unwrap_used)]
    #[test]
    fn an_unschedulable_pod_is_stuck() {
        let pod = Pod {
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some("0/1 nodes are available: 1 Insufficient cpu.".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let why = stuck(&pod).unwrap();
        assert!(
            why.reason.starts_with("Unschedulable: 0/1 nodes"),
            "{why:?}"
        );
        assert!(why.for_capacity, "waits for capacity its siblings may free");
    }
}
