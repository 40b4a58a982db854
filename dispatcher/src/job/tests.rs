//! The Job for a batch: names, labels, limits, environment, Kueue, and a user's template.
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

#[test]
fn a_users_template_is_kept_and_sluice_fills_in_what_it_owns() {
    let mut config = config(&[("RUNNER_IMAGE", "sluice:ignored")]);
    config.job.job_template = serde_yaml_ng::from_str(
        r"
metadata: {labels: {team: a, app.kubernetes.io/name: theirs}, annotations: {owner: a}}
spec:
  backoffLimit: 99
  template:
    metadata: {annotations: {sidecar.istio.io/inject: 'false'}}
    spec:
      nodeSelector: {pool: cpu}
      priorityClassName: batch-low
      containers:
        - name: work
          image: registry.example/my-runner:1.2
          command: [/app/runner]
          env: [{name: MODEL, value: small}, {name: BATCH_ID, value: spoofed}]
          resources: {limits: {cpu: '3', memory: 1Gi}}
",
    )
    .unwrap();
    let job = build(&config, "b-7");
    let labels = job.metadata.labels.as_ref().unwrap();
    assert_eq!(
        (
            labels["team"].as_str(),
            labels["app.kubernetes.io/name"].as_str()
        ),
        ("a", "sluice")
    );
    assert_eq!(job.metadata.annotations.as_ref().unwrap()["owner"], "a");
    let spec = job.spec.unwrap();
    assert_eq!(spec.backoff_limit, Some(2), "sluice owns retries");
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.priority_class_name.as_deref(), Some("batch-low"));
    assert_eq!(pod.node_selector.unwrap()["pool"], "cpu");
    let runner = &pod.containers[0];
    assert_eq!(runner.name, "work");
    assert_eq!(
        runner.image.as_deref(),
        Some("registry.example/my-runner:1.2")
    );
    assert_eq!(runner.command, Some(vec!["/app/runner".to_owned()]));
    let env = runner.env.as_ref().unwrap();
    let get = |name: &str| {
        env.iter()
            .find(|v| v.name == name)
            .and_then(|v| v.value.clone())
    };
    assert_eq!(get("MODEL").as_deref(), Some("small"));
    assert_eq!(
        get("BATCH_ID").as_deref(),
        Some("b-7"),
        "sluice's batch environment wins"
    );
    assert_eq!(env.iter().filter(|v| v.name == "BATCH_ID").count(), 1);
    assert_eq!(
        get("RAYON_NUM_THREADS").as_deref(),
        Some("3"),
        "threads follow the template's CPU"
    );
    let sc = runner.security_context.as_ref().unwrap();
    assert_eq!(
        (sc.allow_privilege_escalation, sc.run_as_non_root),
        (Some(false), Some(true))
    );
}
