//! The pods of the fake Job controller: one per attempt, labelled and owned as the real
//! controller does, with the status a kubelet would report (waiting with a reason, running,
//! terminated with an exit code).

use super::store::now;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The label the Job controller puts on each of a Job's pods.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// A new pod for `job`'s attempt `attempt`: Pending, scheduled, its container not started.
pub fn new(job: &Job, attempt: u32) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
    labels.insert(JOB_NAME_LABEL.into(), name.clone());
    labels.insert("job-name".into(), name.clone());
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[27..];
    let mut pod = Pod {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{attempt}-{suffix}")),
            namespace: job.metadata.namespace.clone(),
            uid: Some(uuid::Uuid::now_v7().to_string()),
            creation_timestamp: Some(now()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name,
                uid: job.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    pod.status = Some(PodStatus {
        phase: Some("Pending".into()),
        conditions: Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "True".into(),
            last_transition_time: Some(now()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    pod
}

fn container_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

/// The pod's (first container's) image.
pub fn image(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn set_state(pod: &mut Pod, phase: &str, state: ContainerState) {
    let name = container_name(pod);
    let image = image(pod);
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status.phase = Some(phase.into());
    status.container_statuses = Some(vec![ContainerStatus {
        name,
        image,
        ready: state.running.is_some(),
        started: Some(state.running.is_some()),
        state: Some(state),
        ..Default::default()
    }]);
}

/// The container waits for a reason (`ErrImagePull`, `ImagePullBackOff`, …).
pub fn waiting(pod: &mut Pod, reason: &str, message: &str) {
    let state = ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message: Some(message.into()),
        }),
        ..Default::default()
    };
    set_state(pod, "Pending", state);
}

/// The pod is held before its container starts: `Unschedulable` (its `PodScheduled`
/// condition false) or a container waiting reason (`InvalidImageName`,
/// `CreateContainerConfigError`, …).
pub fn held(pod: &mut Pod, reason: &str) {
    if reason == "Unschedulable" {
        let status = pod.status.get_or_insert_with(PodStatus::default);
        status.conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/1 nodes are available: 1 Insufficient cpu.".into()),
            last_transition_time: Some(now()),
            ..Default::default()
        }]);
    } else {
        waiting(pod, reason, "held by the fake API server");
    }
}

/// The pod was evicted while running: `DisruptionTarget` true, the container killed.
pub fn evicted(pod: &mut Pod) {
    terminated(pod, 137);
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("EvictionByEvictionAPI".into()),
            message: Some("Eviction API: evicting".into()),
            last_transition_time: Some(now()),
            ..Default::default()
        });
}

/// Whether the Job's `podFailurePolicy` ignores pods failed by a disruption.
pub fn ignores_disruptions(job: &Job) -> bool {
    job.spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
        .is_some_and(|p| {
            p.rules.iter().any(|r| {
                r.action == "Ignore"
                    && r.on_pod_conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
            })
        })
}

/// The container runs.
pub fn running(pod: &mut Pod) {
    let state = ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(now()),
        }),
        ..Default::default()
    };
    set_state(pod, "Running", state);
}

/// The container ended with `exit_code` (128 + n for a signal n, as kubelets report).
pub fn terminated(pod: &mut Pod, exit_code: i32) {
    let state = ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code,
            reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.into()),
            finished_at: Some(now()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let phase = if exit_code == 0 {
        "Succeeded"
    } else {
        "Failed"
    };
    set_state(pod, phase, state);
}

/// The index of the Job's `FailJob` rule matching a container's exit code, as the real
/// controller applies `podFailurePolicy` (rules in order; the first match decides).
pub fn fail_job_rule(job: &Job, container: &str, exit_code: i32) -> Option<usize> {
    let rules = &job.spec.as_ref()?.pod_failure_policy.as_ref()?.rules;
    for (index, rule) in rules.iter().enumerate() {
        let Some(codes) = &rule.on_exit_codes else {
            continue;
        };
        if codes
            .container_name
            .as_deref()
            .is_some_and(|name| name != container)
        {
            continue;
        }
        let listed = codes.values.contains(&exit_code);
        let matched = if codes.operator == "In" {
            listed
        } else {
            !listed && exit_code != 0
        };
        if matched {
            return (rule.action == "FailJob").then_some(index);
        }
    }
    None
}

/// The runner container's name in `job`.
pub fn runner_container(job: &Job) -> String {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default()
}
