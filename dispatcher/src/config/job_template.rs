//! The Job template users own: a YAML `batch/v1` Job (the shape `dispatcher render-job`
//! prints), named by `JOB_TEMPLATE`. It may hold anything a runner pod needs (image, pull
//! policy, resources, node selection, tolerations, affinity, volumes, env and envFrom,
//! imagePullSecrets, priority class, annotations, init containers); [`build`](crate::job::build)
//! fills in only what sluice's guarantees need.
//!
//! A template that would break a guarantee is refused at start-up with one line naming the
//! file and the problem, never discovered at the first launch.

use crate::error::{Error, Result};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};
use std::path::Path;

/// Reads and checks the template at `path`.
pub fn load(path: &Path) -> Result<Job> {
    let refuse = |problem: String| {
        Error::InvalidConfig(format!("JOB_TEMPLATE {}: {problem}", path.display()))
    };
    let text = std::fs::read_to_string(path).map_err(|e| refuse(format!("cannot read it: {e}")))?;
    let template: Job = serde_yaml_ng::from_str(&text)
        .map_err(|e| refuse(format!("not a batch/v1 Job in YAML: {e}")))?;
    check(&template).map_err(refuse)?;
    Ok(template)
}

/// Why `template` would break one of sluice's guarantees, if it would.
pub fn check(template: &Job) -> Result<(), String> {
    let Some(spec) = &template.spec else {
        return Ok(());
    };
    for (field, value) in [
        ("parallelism", spec.parallelism),
        ("completions", spec.completions),
    ] {
        if value.is_some_and(|n| n != 1) {
            return Err(format!("spec.{field} must be 1: one runner per batch"));
        }
    }
    let Some(pod) = &spec.template.spec else {
        return Ok(());
    };
    check_pod(pod)
}

fn check_pod(pod: &PodSpec) -> Result<(), String> {
    if pod.restart_policy.as_deref().is_some_and(|p| p != "Never") {
        return Err("restartPolicy must be Never: the Job's backoffLimit owns retries, and a restarted runner would hide its failures".into());
    }
    if pod.containers.len() > 1 {
        return Err("exactly one container, the runner: a second container that never exits keeps the Job running forever (use an init container with restartPolicy: Always, a native sidecar)".into());
    }
    for (field, on) in [
        ("hostNetwork", pod.host_network),
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
    ] {
        if on == Some(true) {
            return Err(format!(
                "{field} is refused: runner pods stay within Pod Security \"restricted\""
            ));
        }
    }
    if let Some(sc) = &pod.security_context {
        if sc.run_as_non_root == Some(false) || sc.run_as_user == Some(0) {
            return Err("the pod must not run as root (Pod Security \"restricted\")".into());
        }
        if sc
            .seccomp_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "Unconfined")
        {
            return Err(
                "seccompProfile Unconfined is refused (Pod Security \"restricted\")".into(),
            );
        }
    }
    let mut containers = pod.init_containers.iter().flatten().chain(&pod.containers);
    containers.try_for_each(check_container)
}

fn check_container(container: &Container) -> Result<(), String> {
    let Some(sc) = &container.security_context else {
        return Ok(());
    };
    let name = &container.name;
    if sc.privileged == Some(true) {
        return Err(format!("container {name} is privileged: refused"));
    }
    if not_restricted(sc) {
        return Err(format!(
            "container {name} is not Pod Security \"restricted\" (root, privilege escalation, added capabilities or seccomp Unconfined)"
        ));
    }
    Ok(())
}

/// Whether a container's own settings break Pod Security "restricted" (only `NET_BIND_SERVICE`
/// may be added).
fn not_restricted(sc: &SecurityContext) -> bool {
    let added = sc.capabilities.as_ref().and_then(|c| c.add.as_ref());
    sc.allow_privilege_escalation == Some(true)
        || sc.run_as_non_root == Some(false)
        || sc.run_as_user == Some(0)
        || added.is_some_and(|caps| caps.iter().any(|c| c != "NET_BIND_SERVICE"))
        || sc
            .seccomp_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "Unconfined")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(yaml: &str) -> Result<(), String> {
        let job: Job = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        check(&job)
    }

    #[test]
    fn a_template_with_what_users_need_is_accepted() {
        let yaml = r"
apiVersion: batch/v1
kind: Job
metadata: {annotations: {team: a}}
spec:
  template:
    metadata: {labels: {team: a}}
    spec:
      nodeSelector: {pool: cpu}
      tolerations: [{key: dedicated, operator: Exists}]
      imagePullSecrets: [{name: registry}]
      priorityClassName: batch-low
      volumes: [{name: scratch, emptyDir: {}}]
      initContainers:
        - {name: log-shipper, image: shipper:1, restartPolicy: Always}
      containers:
        - name: runner
          image: my-runner:1.2
          envFrom: [{configMapRef: {name: my-settings}}]
          volumeMounts: [{name: scratch, mountPath: /scratch}]
          securityContext: {readOnlyRootFilesystem: false}
";
        assert_eq!(template(yaml), Ok(()));
    }

    #[test]
    fn templates_that_break_a_guarantee_are_refused_with_the_reason() {
        let refused = |spec: &str| template(&format!("spec: {spec}")).unwrap_err();
        assert!(refused("{parallelism: 3, template: {}}").contains("parallelism must be 1"));
        assert!(
            refused("{template: {spec: {restartPolicy: Always, containers: []}}}")
                .contains("restartPolicy must be Never")
        );
        let two = "{template: {spec: {containers: [{name: runner}, {name: proxy}]}}}";
        assert!(refused(two).contains("exactly one container"));
        let privileged = "{template: {spec: {containers: [{name: runner, securityContext: {privileged: true}}]}}}";
        assert!(refused(privileged).contains("privileged"));
        let root = "{template: {spec: {securityContext: {runAsUser: 0}, containers: []}}}";
        assert!(refused(root).contains("root"));
        let caps = "{template: {spec: {containers: [{name: runner, securityContext: {capabilities: {add: [SYS_ADMIN]}}}]}}}";
        assert!(refused(caps).contains("restricted"));
        assert!(
            refused("{template: {spec: {hostNetwork: true, containers: []}}}")
                .contains("hostNetwork")
        );
    }

    #[test]
    fn a_missing_or_malformed_file_names_the_file() {
        let missing = load(Path::new("/nonexistent/job.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("JOB_TEMPLATE /nonexistent/job.yaml"),
            "{missing}"
        );
        let path =
            std::env::temp_dir().join(format!("sluice-template-{}.yaml", std::process::id()));
        std::fs::write(&path, "spec: [not, a, job]").unwrap();
        let malformed = load(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(malformed.contains("not a batch/v1 Job"), "{malformed}");
    }
}
