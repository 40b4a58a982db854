//! The fake Job controller: runs a Job's container as a local process, updates the Job's
//! status and conditions as the real controller does, and honours `backoffLimit` and
//! `activeDeadlineSeconds`.

use super::Shared;
use super::store::now;
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
    shared.modify(&ns, &name, |j| status(j).start_time = Some(now()));
    let run = async {
        for attempt in 1..=attempts {
            shared.modify(&ns, &name, |j| status(j).active = Some(1));
            let active = Shared::pod_started(&shared, &name);
            let ok = match command.spawn() {
                Ok(mut child) => child.wait().await.is_ok_and(|s| s.success()),
                Err(_) => false,
            };
            drop(active);
            if ok {
                return true;
            }
            shared.modify(&ns, &name, |j| {
                let s = status(j);
                s.active = Some(0);
                s.failed = Some(s.failed.unwrap_or(0) + 1);
            });
            if attempt < attempts {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        false
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        outcome = tokio::time::timeout(deadline, run) => match outcome {
            Ok(true) => finish(&shared, &ns, &name, true, "CompletionsReached", "Reached expected number of succeeded pods"),
            Ok(false) => finish(&shared, &ns, &name, false, "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
            Err(_) => finish(&shared, &ns, &name, false, "DeadlineExceeded", "Job was active longer than specified deadline"),
        },
    }
}

fn finish(shared: &Shared, ns: &str, name: &str, succeeded: bool, reason: &str, message: &str) {
    let condition = |kind: &str| JobCondition {
        type_: kind.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(now()),
        last_probe_time: Some(now()),
    };
    shared.modify(ns, name, |j| {
        let s = status(j);
        s.active = Some(0);
        if succeeded {
            s.succeeded = Some(1);
            s.completion_time = Some(now());
            s.conditions = Some(vec![condition("SuccessCriteriaMet"), condition("Complete")]);
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
