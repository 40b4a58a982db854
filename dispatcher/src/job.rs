//! The Kubernetes Job for one batch, built from typed k8s-openapi structs.
//!
//! The same object is created in a cluster by the kube launcher, run as a child process by the
//! local launcher, and printed by `dispatcher render-job`.

use crate::config::Config;
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_contract::runner_env::{RAYON_NUM_THREADS, REDIS_URL};
use std::collections::BTreeMap;

/// Label carrying the batch id.
pub const BATCH_LABEL: &str = "sluice.dev/batch";
/// Selector matching every Job the dispatcher manages.
pub const MANAGED_SELECTOR: &str =
    "app.kubernetes.io/name=sluice,app.kubernetes.io/managed-by=sluice-dispatcher";
/// The numeric non-root user the runner image runs as.
pub const RUNNER_UID: i64 = 65_532;
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

/// Builds the Job for `batch_id`.
pub fn build(config: &Config, batch_id: &str) -> Job {
    let name = job_name(batch_id);
    let mut labels = BTreeMap::from([
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
    let pod_labels = labels.clone();
    if let Some(queue) = &config.kueue_queue {
        labels.insert("kueue.x-k8s.io/queue-name".to_owned(), queue.clone());
    }
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(i32::from(config.job_backoff_limit)),
            active_deadline_seconds: Some(i64::from(config.job_deadline_seconds)),
            ttl_seconds_after_finished: Some(
                i32::try_from(config.job_ttl_seconds).unwrap_or(i32::MAX),
            ),
            pod_failure_policy: Some(ignore_disruptions()),
            suspend: config.kueue_queue.as_ref().map(|_| true),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(pod_spec(config, batch_id)),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn pod_spec(config: &Config, batch_id: &str) -> PodSpec {
    PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUNNER_UID),
            run_as_group: Some(RUNNER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        containers: vec![Container {
            name: CONTAINER.into(),
            image: Some(config.runner_image.clone()),
            image_pull_policy: Some("IfNotPresent".into()),
            command: Some(vec!["/usr/local/bin/runner".into()]),
            env: Some(env(config, batch_id)),
            resources: Some(resources(config)),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn env(config: &Config, batch_id: &str) -> Vec<EnvVar> {
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
    vars.push(plain(
        RAYON_NUM_THREADS,
        config.runner_threads().to_string(),
    ));
    vars.push(plain("RUST_LOG", config.runner_log.clone()));
    vars.push(EnvVar {
        name: REDIS_URL.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: config.redis_secret_name.clone(),
                key: config.redis_secret_key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    });
    vars
}

fn resources(config: &Config) -> ResourceRequirements {
    let amounts = BTreeMap::from([
        ("cpu".to_owned(), Quantity(config.runner_cpu.clone())),
        ("memory".to_owned(), Quantity(config.runner_memory.clone())),
    ]);
    ResourceRequirements {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
        ..Default::default()
    }
}

/// Evictions, preemptions and node drains are not the batch's fault: they must not use up the
/// backoff limit that exists to stop poison messages.
fn ignore_disruptions() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![PodFailurePolicyRule {
            action: "Ignore".into(),
            on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
            }]),
            ..Default::default()
        }],
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
mod tests {
    use super::*;

    fn config(extra: &[(&str, &str)]) -> Config {
        Config::from_vars(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .unwrap()
    }

    #[test]
    fn job_names_are_dns_labels() {
        assert_eq!(job_name("0193-ABC_def"), "sluice-0193-abc-def");
        let long = job_name(&"x".repeat(100));
        assert!(long.len() <= 63 && !long.ends_with('-'));
        assert_eq!(job_name("abc"), job_name("abc"));
    }

    #[test]
    fn job_carries_labels_limits_and_policies() {
        let job = build(
            &config(&[("RUNNER_CPU", "2"), ("JOB_BACKOFF_LIMIT", "3")]),
            "b-1",
        );
        let labels = job.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[BATCH_LABEL], "b-1");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "sluice-dispatcher");
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(
            (spec.backoff_limit, spec.active_deadline_seconds),
            (Some(3), Some(600))
        );
        assert_eq!(spec.suspend, None);
        assert_eq!(
            spec.pod_failure_policy.as_ref().unwrap().rules[0].action,
            "Ignore"
        );
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let container = &pod.containers[0];
        let limits = container
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap();
        assert_eq!(limits["cpu"], Quantity("2".into()));
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(
            (sc.read_only_root_filesystem, sc.allow_privilege_escalation),
            (Some(true), Some(false))
        );
    }

    #[test]
    fn env_names_the_batch_and_takes_redis_from_a_secret() {
        let job = build(
            &config(&[
                ("REDIS_URL", "redis://:hunter2@redis:6379/"),
                ("RUNNER_CPU", "2"),
            ]),
            "b-1",
        );
        let env = job.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        let get = |name: &str| env.iter().find(|v| v.name == name).cloned().unwrap();
        assert_eq!(get("BATCH_ID").value.as_deref(), Some("b-1"));
        assert_eq!(get("RAYON_NUM_THREADS").value.as_deref(), Some("2"));
        let redis = get("REDIS_URL");
        assert_eq!(redis.value, None);
        assert_eq!(
            redis.value_from.unwrap().secret_key_ref.unwrap().name,
            "sluice-redis"
        );
        let yaml = serde_yaml_ng::to_string(&build(
            &config(&[("REDIS_URL", "redis://:hunter2@r/")]),
            "b",
        ))
        .unwrap();
        assert!(!yaml.contains("hunter2"));
    }

    #[test]
    fn kueue_jobs_are_labelled_and_created_suspended() {
        let job = build(&config(&[("KUEUE_QUEUE", "team-a")]), "b");
        assert_eq!(
            job.metadata.labels.unwrap()["kueue.x-k8s.io/queue-name"],
            "team-a"
        );
        assert_eq!(job.spec.unwrap().suspend, Some(true));
    }
}
