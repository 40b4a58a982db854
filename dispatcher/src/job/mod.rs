//! The Kubernetes Job for one batch: the user's template (`JOB_TEMPLATE`, read and checked by
//! [`job_template`](crate::config::job_template)) with
//! what sluice's guarantees need filled in, as typed k8s-openapi structs.
//!
//! sluice owns the Job's name, namespace and labels, the batch environment, `restartPolicy:
//! Never`, `backoffLimit`, `activeDeadlineSeconds`, `ttlSecondsAfterFinished`, the pod failure
//! policy, `suspend` (Kueue) and the restricted security context ([`security`]). Everything
//! else comes from the template; fields it leaves unset fall back to `RUNNER_IMAGE`,
//! `RUNNER_CPU` and `RUNNER_MEMORY`.
//!
//! The same object is created in a cluster by the kube launcher, run as a child process by the
//! local launcher, and printed by `dispatcher render-job`.

pub mod security;

use crate::config::{Config, cpu_threads};
use k8s_openapi::api::batch::v1::{
    Job, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, PodSpec, ResourceRequirements, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_contract::exit;
use sluice_contract::runner_env::{RAYON_NUM_THREADS, REDIS_URL};
use std::collections::BTreeMap;

pub use security::RUNNER_UID;

/// Label carrying the batch id.
pub const BATCH_LABEL: &str = "sluice.dev/batch";
/// Selector matching every Job the dispatcher manages.
pub const MANAGED_SELECTOR: &str =
    "app.kubernetes.io/name=sluice,app.kubernetes.io/managed-by=sluice-dispatcher";
/// Name of the runner container.
pub const CONTAINER: &str = "runner";

/// The Job's name for a batch: a DNS-1123 label of at most 63 characters, the same on every
/// attempt, so a retried create meets 409 AlreadyExists instead of a second Job.
pub fn job_name(batch_id: &str) -> String {
    let cleaned: String = batch_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("sluice-{cleaned}");
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

/// Builds the Job for `batch_id` from the configured template.
pub fn build(config: &Config, batch_id: &str) -> Job {
    let template = (*config.job.job_template).clone();
    let sluice_labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "sluice".to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            "runner".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "sluice-dispatcher".to_owned(),
        ),
        (BATCH_LABEL.to_owned(), label_value(batch_id)),
    ]);
    let mut labels = merged(template.metadata.labels, &sluice_labels);
    if let Some(queue) = &config.job.kueue_queue {
        labels.insert("kueue.x-k8s.io/queue-name".to_owned(), queue.clone());
    }
    let mut spec = template.spec.unwrap_or_default();
    spec.parallelism = None;
    spec.completions = None;
    spec.backoff_limit = Some(i32::from(config.job.job_backoff_limit));
    spec.active_deadline_seconds = Some(i64::from(config.job.job_deadline_seconds));
    spec.ttl_seconds_after_finished =
        Some(i32::try_from(config.job.job_ttl_seconds).unwrap_or(i32::MAX));
    spec.pod_failure_policy = Some(failure_policy(&runner_name(&spec.template)));
    spec.suspend = config.job.kueue_queue.as_ref().map(|_| true);
    let pod_meta = spec
        .template
        .metadata
        .get_or_insert_with(ObjectMeta::default);
    pod_meta.labels = Some(merged(pod_meta.labels.take(), &sluice_labels));
    spec.template.spec = Some(pod_spec(
        config,
        batch_id,
        spec.template.spec.take().unwrap_or_default(),
    ));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(batch_id)),
            namespace: Some(config.job.namespace.clone()),
            labels: Some(labels),
            annotations: template.metadata.annotations,
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The runner container's name: the template's first container's, or [`CONTAINER`].
fn runner_name(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
    template
        .spec
        .as_ref()
        .and_then(|pod| pod.containers.first())
        .map(|c| c.name.clone())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| CONTAINER.to_owned())
}

/// The template's labels with sluice's on top (sluice's selectors must match).
fn merged(
    template: Option<BTreeMap<String, String>>,
    sluice: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = template.unwrap_or_default();
    labels.extend(sluice.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

fn pod_spec(config: &Config, batch_id: &str, mut pod: PodSpec) -> PodSpec {
    pod.restart_policy = Some("Never".into());
    pod.automount_service_account_token.get_or_insert(false);
    pod.enable_service_links.get_or_insert(false);
    pod.security_context = Some(security::pod(pod.security_context.take()));
    if pod.containers.is_empty() {
        pod.containers.push(Container::default());
    }
    for init in pod.init_containers.iter_mut().flatten() {
        init.security_context = Some(security::container(init.security_context.take()));
    }
    let runner = &mut pod.containers[0];
    if runner.name.is_empty() {
        CONTAINER.clone_into(&mut runner.name);
    }
    runner
        .image
        .get_or_insert_with(|| config.job.runner_image.clone());
    runner
        .image_pull_policy
        .get_or_insert_with(|| "IfNotPresent".into());
    runner
        .command
        .get_or_insert_with(|| vec!["/usr/local/bin/runner".into()]);
    let resources = runner.resources.get_or_insert_with(|| resources(config));
    let threads =
        cpu_limit(resources).map_or_else(|| config.runner_threads(), |cpu| cpu_threads(&cpu));
    let ours = env(config, batch_id, threads);
    // The template's own variables stay, unless sluice sets the same name.
    let mut vars: Vec<EnvVar> = runner.env.take().unwrap_or_default();
    vars.retain(|v| !ours.iter().any(|o| o.name == v.name));
    vars.extend(ours);
    runner.env = Some(vars);
    runner.security_context = Some(security::container(runner.security_context.take()));
    pod
}

fn cpu_limit(resources: &ResourceRequirements) -> Option<String> {
    let cpu = |amounts: &Option<BTreeMap<String, Quantity>>| {
        amounts.as_ref()?.get("cpu").map(|q| q.0.clone())
    };
    cpu(&resources.limits).or_else(|| cpu(&resources.requests))
}

fn env(config: &Config, batch_id: &str, threads: u32) -> Vec<EnvVar> {
    let plain = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    let mut vars: Vec<EnvVar> = config
        .runner_env(batch_id)
        .to_vars()
        .into_iter()
        .map(|(name, value)| plain(name, value))
        .collect();
    vars.push(plain(RAYON_NUM_THREADS, threads.to_string()));
    vars.push(plain("RUST_LOG", config.job.runner_log.clone()));
    vars.push(EnvVar {
        name: REDIS_URL.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: config.redis.redis_secret_name.clone(),
                key: config.redis.redis_secret_key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    });
    vars
}

fn resources(config: &Config) -> ResourceRequirements {
    let amounts = BTreeMap::from([
        ("cpu".to_owned(), Quantity(config.job.runner_cpu.clone())),
        (
            "memory".to_owned(),
            Quantity(config.job.runner_memory.clone()),
        ),
    ]);
    ResourceRequirements {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
        ..Default::default()
    }
}

/// Evictions, preemptions and node drains are not the batch's fault: they must not use up the
/// backoff limit that exists to stop poison messages. A runner that exits with an outage code
/// (it could not do its work: configuration, Redis) fails the Job at once, with the code in
/// the condition's message, so the dispatcher retries the batch whole, later, instead of
/// spending the backoff limit on a broken deployment.
fn failure_policy(container: &str) -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                }]),
                ..Default::default()
            },
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(container.to_owned()),
                    operator: "In".into(),
                    values: exit::OUTAGE_CODES.to_vec(),
                }),
                ..Default::default()
            },
        ],
    }
}

/// A label value: at most 63 characters of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
fn label_value(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

#[cfg(test)]
mod tests;
