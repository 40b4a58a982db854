//! The real control plane for the `kube_real` suite: `scripts/cluster.sh up` (etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler built from Kubernetes' own Go
//! modules, and the node agent), the real manifests applied through `tests/cluster`, and the
//! `kubectl` calls a test makes. Every test of the suite shares the one `sluice` namespace the
//! manifests name, so [`Cluster::get`] also hands out a lock that runs them one at a time.

use crate::TestEnv;
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::{Mutex, MutexGuard, OnceCell};

/// The namespace the manifests deploy into.
pub const NAMESPACE: &str = "sluice";
/// The dispatcher's `ServiceAccount`, as the API server names it in `--as`.
pub const DISPATCHER_SA: &str = "system:serviceaccount:sluice:sluice-dispatcher";
const DISPATCHER: &str = "app.kubernetes.io/component=dispatcher";
const RUNNER: &str = "app.kubernetes.io/component=runner";

static UP: OnceCell<std::result::Result<PathBuf, String>> = OnceCell::const_new();
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A running test cluster and its admin kubeconfig.
pub struct Cluster {
    kubeconfig: PathBuf,
    root: PathBuf,
}

/// The workspace's root directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

impl Cluster {
    /// Starts the cluster once per test process (a no-op when it is already up) and waits for
    /// the other tests of the suite to finish with it.
    pub async fn get() -> Result<(Self, MutexGuard<'static, ()>)> {
        let guard = SERIAL.lock().await;
        let up = UP
            .get_or_init(|| async {
                let out = Command::new(root().join("scripts/cluster.sh"))
                    .arg("up")
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .await
                    .map_err(|e| format!("scripts/cluster.sh: {e}"))?;
                if !out.status.success() {
                    return Err(format!("scripts/cluster.sh up failed: {}", out.status));
                }
                Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
            })
            .await;
        let kubeconfig = up.clone().map_err(anyhow::Error::msg)?;
        let cluster = Self {
            kubeconfig,
            root: root(),
        };
        Ok((cluster, guard))
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs `kubectl` as the cluster's admin and returns its stdout; fails with its stderr.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl_output(args).await?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `kubectl` and returns its whole output, whatever its exit status.
    pub async fn kubectl_output(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
            .await
            .context("kubectl")
    }

    /// Runs one of `scripts/cluster.sh`'s fault commands (`restart-apiserver`, `compact`).
    pub async fn script(&self, command: &str) -> Result<()> {
        let status = Command::new(self.root.join("scripts/cluster.sh"))
            .arg(command)
            .status()
            .await?;
        if !status.success() {
            bail!("scripts/cluster.sh {command}: {status}");
        }
        Ok(())
    }

    /// Applies the real manifests (through `tests/cluster`) with this test's queue, key prefix
    /// and service URLs, plus `settings` for the dispatcher's `ConfigMap`, and waits until the
    /// dispatcher's pod is ready.
    pub async fn deploy(&self, env: &TestEnv, settings: &[(&str, &str)]) -> Result<()> {
        let credentials = Command::new(self.root.join("scripts/credentials.sh"))
            .status()
            .await?;
        if !credentials.success() {
            bail!("scripts/credentials.sh: {credentials}");
        }
        let layer = self.root.join("target/cluster/runs").join(&env.prefix);
        std::fs::create_dir_all(&layer)?;
        std::fs::write(layer.join("kustomization.yaml"), run_layer(env, settings))?;
        let layer = layer.display().to_string();
        self.kubectl(&["apply", "-k", &layer]).await?;
        self.kubectl(&[
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            "deployment/sluice-dispatcher",
            "--timeout=180s",
        ])
        .await?;
        Ok(())
    }

    /// Deletes the dispatcher, then every runner Job, and waits until their pods are gone;
    /// quotas a test left behind go too.
    pub async fn teardown(&self) -> Result<()> {
        self.kubectl(&["-n", NAMESPACE, "delete", "resourcequotas", "--all"])
            .await?;
        self.kubectl(&[
            "-n",
            NAMESPACE,
            "delete",
            "deployment",
            "sluice-dispatcher",
            "--ignore-not-found",
            // Foreground: the call returns once its pods are gone, so no dispatcher is left
            // to react to the Jobs deleted next.
            "--cascade=foreground",
            "--wait",
        ])
        .await?;
        self.kubectl(&[
            "-n",
            NAMESPACE,
            "delete",
            "jobs",
            "-l",
            RUNNER,
            "--cascade=foreground",
            "--wait",
        ])
        .await?;
        self.wait_for_no("pods", "", Duration::from_secs(120)).await
    }

    /// Names of the objects of `kind` in the namespace matching `selector` ("" for all).
    pub async fn names(&self, kind: &str, selector: &str) -> Result<Vec<String>> {
        let mut args = vec!["-n", NAMESPACE, "get", kind, "-o", "name"];
        if !selector.is_empty() {
            args.extend(["-l", selector]);
        }
        let out = self.kubectl(&args).await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Waits until no object of `kind` matches `selector`, or fails naming what is left.
    pub async fn wait_for_no(&self, kind: &str, selector: &str, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.names(kind, selector).await?;
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("after {timeout:?}, {kind} still there: {left:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Runner Jobs and their pods are all gone: the dispatcher deleted each finished Job, and
    /// the garbage collector its pods.
    pub async fn wait_until_clean(&self, timeout: Duration) -> Result<()> {
        self.wait_for_no("jobs", RUNNER, timeout).await?;
        self.wait_for_no("pods", RUNNER, timeout).await
    }

    /// Deletes the dispatcher's pod, as a node drain or `kubectl delete pod` would.
    pub async fn delete_dispatcher_pod(&self) -> Result<()> {
        self.kubectl(&[
            "-n",
            NAMESPACE,
            "delete",
            "pod",
            "-l",
            DISPATCHER,
            "--wait=false",
        ])
        .await?;
        Ok(())
    }

    /// The dispatcher's pods (`pod/<name>`), as the Deployment's replicas run them now.
    pub async fn dispatcher_pods(&self) -> Result<Vec<String>> {
        self.names("pods", DISPATCHER).await
    }

    /// Deletes one pod (`pod/<name>`), as a node drain does, without waiting for it to end.
    pub async fn delete_pod(&self, pod: &str) -> Result<()> {
        self.kubectl(&["-n", NAMESPACE, "delete", pod, "--wait=false"])
            .await?;
        Ok(())
    }

    /// Everything the dispatcher's pods wrote, oldest pod first (the node agent keeps each
    /// container's output under target/cluster/node/pods).
    pub fn dispatcher_logs(&self) -> String {
        let pods = self.root.join("target/cluster/node/pods");
        let mut logs: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(&pods)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&format!("{NAMESPACE}_sluice-dispatcher-"))
            })
            .filter_map(|e| {
                let log = e.path().join("dispatcher.log");
                let modified = std::fs::metadata(&log).and_then(|m| m.modified()).ok()?;
                Some((modified, std::fs::read_to_string(log).ok()?))
            })
            .collect();
        logs.sort();
        logs.into_iter().map(|(_, text)| text).collect()
    }
}

/// The kustomization that layers one test's settings over `tests/cluster`.
fn run_layer(env: &TestEnv, settings: &[(&str, &str)]) -> String {
    // Failed Jobs are kept for their logs until their TTL: short here, so that each test
    // ends with a clean namespace.
    let mut data = format!(
        "        QUEUE: {:?}\n        KEY_PREFIX: {:?}\n        JOB_TTL_SECONDS: \"5\"\n",
        env.queue, env.prefix
    );
    for (key, value) in settings {
        let _ = writeln!(data, "        {key}: {value:?}");
    }
    format!(
        "# Written by tests/src/cluster.rs for one test: its queue, prefix and settings.
resources: [../../../../tests/cluster]
patches:
  - patch: |-
      apiVersion: v1
      kind: ConfigMap
      metadata: {{name: sluice-dispatcher, namespace: {NAMESPACE}}}
      data:
{data}generatorOptions: {{disableNameSuffixHash: true}}
secretGenerator:
  - {{name: sluice-rabbitmq, namespace: {NAMESPACE}, behavior: replace, literals: [{amqp:?}]}}
  - {{name: sluice-redis, namespace: {NAMESPACE}, behavior: replace, literals: [{redis:?}]}}
",
        amqp = format!("url={}", env.amqp_url),
        redis = format!("url={}", env.redis_url),
    )
}
