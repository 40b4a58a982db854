//! The fake Job controller: one pod per attempt, whose container runs as a local process;
//! updates the Job's status and conditions as the real controller does, and honours
//! `backoffLimit`, `activeDeadlineSeconds` and `podFailurePolicy`'s `FailJob` exit-code rules.

use super::store::now;
use super::{Shared, pod};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Runs the Job `ns/name` until it completes, fails, or `cancel` (its deletion) fires.
pub async fn run_job(
    shared: Arc<Shared>,
    ns: String,
    name: String,
    job: Job,
    cancel: CancellationToken,
) {
    let spec = job.spec.clone().unwrap_or_default();
    let attempts = u32::try_from(spec.backoff_limit.unwrap_or(6)).unwrap_or(0) + 1;
    let deadline = Duration::from_secs(
        spec.active_deadline_seconds
            .map_or(3600, |s| s.max(1) as u64),
    );
    let Some(mut command) = command_for(&shared, &job) else {
        return finish(
            &shared,
            &ns,
            &name,
            false,
            "CreateContainerConfigError",
            "cannot resolve env",
        );
    };
    if spec.suspend == Some(true) && !wait_for_admission(&shared, &ns, &name, &cancel).await {
        return;
    }
    shared.modify(&ns, &name, |j| status(j).start_time = Some(now()));
    let container = pod::runner_container(&job);
    let run = async {
        let mut attempt = 0;
        while attempt < attempts {
            attempt += 1;
            let code = match run_attempt(&shared, &ns, &name, &job, attempt, &mut command).await {
                // The Job's Ignore rule on DisruptionTarget: the pod is replaced, not counted.
                Ran::Evicted if pod::ignores_disruptions(&job) => {
                    attempt -= 1;
                    continue;
                }
                Ran::Evicted => 137,
                Ran::Exited(code) => code,
            };
            if code == 0 {
                return End::Succeeded;
            }
            shared.modify(&ns, &name, |j| {
                let s = status(j);
                s.active = Some(0);
                s.failed = Some(s.failed.unwrap_or(0) + 1);
            });
            if let Some(index) = pod::fail_job_rule(&job, &container, code) {
                return End::FailJob(format!(
                    "Container {container} for pod {ns}/{name} failed with exit code {code} matching FailJob rule at index {index}"
                ));
            }
            if attempt < attempts {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        End::BackoffLimit
    };
    tokio::select! {
        () = cancel.cancelled() => return,
        outcome = tokio::time::timeout(deadline, run) => match outcome {
            Ok(End::Succeeded) => finish(&shared, &ns, &name, true, "CompletionsReached", "Reached expected number of succeeded pods"),
            Ok(End::BackoffLimit) => finish(&shared, &ns, &name, false, "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
            Ok(End::FailJob(message)) => finish(&shared, &ns, &name, false, "PodFailurePolicy", &message),
            Err(_) => finish(&shared, &ns, &name, false, "DeadlineExceeded", "Job was active longer than specified deadline"),
        },
    }
    reap_after_ttl(
        &shared,
        &ns,
        &name,
        spec.ttl_seconds_after_finished,
        &cancel,
    )
    .await;
}

/// Holds a suspended Job until it is admitted ([`Shared::admits_suspended`]), as Kueue does;
/// false if it was deleted meanwhile.
async fn wait_for_admission(
    shared: &Shared,
    ns: &str,
    name: &str,
    cancel: &CancellationToken,
) -> bool {
    shared.modify(ns, name, |j| {
        status(j).conditions = Some(vec![condition(
            "Suspended",
            "JobSuspended",
            "Job suspended",
        )]);
    });
    while !shared.admits_suspended() {
        tokio::select! {
            () = cancel.cancelled() => return false,
            () = tokio::time::sleep(POLL) => {}
        }
    }
    shared.modify(ns, name, |j| {
        if let Some(spec) = j.spec.as_mut() {
            spec.suspend = Some(false);
        }
        status(j).conditions = None;
    });
    true
}

/// The TTL controller: a finished Job (not one stuck at `FailureTarget`) is deleted once
/// `ttl` seconds have passed.
async fn reap_after_ttl(
    shared: &Shared,
    ns: &str,
    name: &str,
    ttl: Option<i32>,
    cancel: &CancellationToken,
) {
    let key = (ns.to_owned(), name.to_owned());
    let finished = shared.store().jobs.get(&key).is_some_and(|j| {
        j.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Complete" || c.type_ == "Failed")
            })
    });
    let Some(ttl) = ttl.filter(|_| finished) else {
        return;
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(u64::try_from(ttl).unwrap_or(0))) => {
            shared.delete_job(ns, name);
        }
    }
}

fn condition(kind: &str, reason: &str, message: &str) -> JobCondition {
    JobCondition {
        type_: kind.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(now()),
        last_probe_time: Some(now()),
    }
}

/// How a Job's attempts ended.
enum End {
    Succeeded,
    BackoffLimit,
    /// A `FailJob` rule matched; the condition's message.
    FailJob(String),
}

/// How one attempt's pod ended.
enum Ran {
    /// Its container exited with this code (as a kubelet reports it: 128 + n for signal n).
    Exited(i32),
    /// It was evicted while running (condition `DisruptionTarget`).
    Evicted,
}

/// One attempt: a pod is created (once pods are no longer refused), its image pulled (once
/// images are there), it waits while pods are held in a waiting reason, its container runs
/// until it exits or the pod is evicted.
async fn run_attempt(
    shared: &Arc<Shared>,
    ns: &str,
    job_name: &str,
    job: &Job,
    attempt: u32,
    command: &mut Command,
) -> Ran {
    // As the real controller: pods refused by admission or a quota are retried, the Job
    // staying active with no pod (its FailedCreate shows only in Events).
    while shared.pods_refused() {
        tokio::time::sleep(POLL).await;
    }
    let mut pod = shared.put_pod("ADDED", pod::new(job, attempt));
    let image = pod::image(&pod);
    let mut reason = "";
    while shared.images_missing() {
        // A kubelet tries once (ErrImagePull), then backs off (ImagePullBackOff).
        let next = if reason.is_empty() {
            "ErrImagePull"
        } else {
            "ImagePullBackOff"
        };
        if next != reason {
            reason = next;
            let message = format!("failed to pull image \"{image}\": not found");
            pod::waiting(&mut pod, reason, &message);
            pod = shared.put_pod("MODIFIED", pod);
        }
        tokio::time::sleep(POLL).await;
    }
    let mut held = None;
    while let Some(reason) = shared.pods_held() {
        if held.as_ref() != Some(&reason) {
            pod::held(&mut pod, &reason);
            pod = shared.put_pod("MODIFIED", pod);
            held = Some(reason);
        }
        tokio::time::sleep(POLL).await;
    }
    pod::running(&mut pod);
    let mut pod = shared.put_pod("MODIFIED", pod);
    shared.modify(ns, job_name, |j| status(j).active = Some(1));
    let active = Shared::pod_started(shared, job_name);
    let mut evictions = shared.evictions.subscribe();
    let ran = match command.spawn() {
        Ok(mut child) => tokio::select! {
            status = child.wait() => Ran::Exited(status.map_or(1, exit_code)),
            _ = evictions.changed() => {
                let _ = child.kill().await;
                shared.stats().evicted += 1;
                Ran::Evicted
            }
        },
        // The runtime cannot start the command: the kubelet's StartError, code 128.
        Err(_) => Ran::Exited(128),
    };
    drop(active);
    match ran {
        Ran::Exited(code) => pod::terminated(&mut pod, code),
        Ran::Evicted => pod::evicted(&mut pod),
    }
    shared.put_pod("MODIFIED", pod);
    ran
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(9))
}

/// How often a stuck attempt checks whether its fault was removed.
const POLL: Duration = Duration::from_millis(200);

fn finish(shared: &Shared, ns: &str, name: &str, succeeded: bool, reason: &str, message: &str) {
    let condition = |kind: &str| condition(kind, reason, message);
    let stuck = shared.stuck_terminating();
    shared.modify(ns, name, |j| {
        let s = status(j);
        s.active = Some(0);
        if succeeded {
            s.succeeded = Some(1);
            s.completion_time = Some(now());
            s.conditions = Some(vec![condition("SuccessCriteriaMet"), condition("Complete")]);
        } else if stuck {
            // The real controller writes Failed only once every pod has terminated.
            s.conditions = Some(vec![condition("FailureTarget")]);
        } else {
            s.conditions = Some(vec![condition("FailureTarget"), condition("Failed")]);
        }
    });
}

fn status(job: &mut Job) -> &mut JobStatus {
    job.status.get_or_insert_with(JobStatus::default)
}

/// The pod's process: the configured runner binary with exactly the container's environment.
fn command_for(shared: &Shared, job: &Job) -> Option<Command> {
    let container = job
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?;
    let mut command = Command::new(&shared.runner_bin);
    command
        .env_clear()
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(source)) => {
                let secret = source.secret_key_ref.as_ref()?;
                shared
                    .secrets
                    .get(&(secret.name.clone(), secret.key.clone()))?
                    .clone()
            }
            (None, None) => String::new(),
        };
        command.env(&var.name, value);
    }
    command.envs(shared.pass_through.iter().map(|(k, v)| (k, v)));
    Some(command)
}
