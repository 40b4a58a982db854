//! Launchers turn a batch's Job object into running work and report how it ended.
//!
//! - [`local`]: a child process of `RUNNER_BIN` per Job, for machines without a cluster.
//! - [`kube`]: a `batch/v1` Job in the cluster, its outcome from the Job watcher.
//!
//! A launch either fails at once (the batch's deliveries are then not acked, and RabbitMQ
//! redelivers them) or returns a [`Running`] future that resolves to the Job's [`Outcome`].

pub mod kube;
pub mod local;

use crate::config::{Config, LauncherKind};
use crate::error::Result;
use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::Job;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The runner exited 0: every message has a result.
    Succeeded,
    /// Every attempt failed, or the deadline passed; the reason is recorded on the batch.
    Failed {
        /// Why, as Kubernetes would say it (`BackoffLimitExceeded: exit code 134`, …).
        reason: String,
    },
    /// The dispatcher stopped before the Job ended; the batch stays open and is relaunched on
    /// the next start.
    Abandoned,
}

/// A launched Job, resolving when it ends.
pub type Running = BoxFuture<'static, Outcome>;

/// The configured launcher.
pub enum Launcher {
    /// Child processes on this machine.
    Local(local::LocalLauncher),
    /// Jobs in a Kubernetes cluster.
    Kube(Box<kube::KubeLauncher>),
}

impl Launcher {
    /// Starts `job` (a Job that already exists is adopted, not duplicated).
    pub async fn launch(&self, job: &Job) -> Result<Running> {
        match self {
            Self::Local(local) => local.launch(job),
            Self::Kube(kube) => kube.launch(job).await,
        }
    }

    /// Releases what a finished Job holds, once its outcome is recorded.
    pub async fn finished(&self, job_name: &str) -> Result<()> {
        match self {
            Self::Local(_) => Ok(()),
            Self::Kube(kube) => kube.remove(job_name).await,
        }
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::Kube(_) => "kube",
        }
    }
}

/// Builds the launcher `LAUNCHER` names. `abandon` stops waiting for running Jobs.
pub async fn from_config(config: &Config, abandon: CancellationToken) -> Result<Launcher> {
    match config.launcher {
        LauncherKind::Local => {
            let secrets = BTreeMap::from([(
                (
                    config.redis_secret_name.clone(),
                    config.redis_secret_key.clone(),
                ),
                config.redis_url.clone(),
            )]);
            let pass_through = config
                .sluice_test_kernels
                .iter()
                .map(|v| {
                    (
                        sluice_contract::runner_env::TEST_KERNELS.to_owned(),
                        v.clone(),
                    )
                })
                .collect();
            let delay = Duration::from_millis(config.startup_delay_ms);
            Ok(Launcher::Local(local::LocalLauncher::new(
                &config.runner_bin(),
                secrets,
                pass_through,
                delay,
                abandon,
            )?))
        }
        LauncherKind::Kube => Ok(Launcher::Kube(Box::new(
            kube::KubeLauncher::connect(config, abandon).await?,
        ))),
    }
}
