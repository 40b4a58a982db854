//! Launchers turn a batch's Job object into running work and report how it ended.
//!
//! - [`interface`]: the [`Launcher`] trait every launcher implements, and [`Outcome`].
//! - [`local`]: a child process of `RUNNER_BIN` per Job, for machines without a cluster.
//! - [`kube`]: a `batch/v1` Job in the cluster, its outcome from the Job watch
//!   ([`kube::watch`]).

pub mod interface;
pub mod kube;
pub mod local;

pub use interface::{Cause, Failure, FailureKind, Launcher, Outcome, Running};

use crate::config::{Config, LauncherKind};
use crate::error::Result;
use crate::health::Health;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Builds the launcher `LAUNCHER` names. `abandon` stops waiting for running Jobs; `health`
/// hears of a launcher that cannot follow its Jobs.
pub async fn from_config(
    config: &Config,
    abandon: CancellationToken,
    health: Arc<Health>,
) -> Result<Box<dyn Launcher>> {
    match config.service.launcher {
        LauncherKind::Local => Ok(Box::new(local_from_config(config, abandon)?)),
        LauncherKind::Kube => Ok(Box::new(
            kube::KubeLauncher::connect(config, abandon, health).await?,
        )),
    }
}

fn local_from_config(config: &Config, abandon: CancellationToken) -> Result<local::LocalLauncher> {
    let secret = (
        config.redis.redis_secret_name.clone(),
        config.redis.redis_secret_key.clone(),
    );
    let secrets = BTreeMap::from([(secret, config.redis.redis_url.clone())]);
    let mut pass_through: Vec<(String, String)> = config
        .local
        .sluice_test_kernels
        .iter()
        .map(|v| {
            (
                sluice_contract::runner_env::TEST_KERNELS.to_owned(),
                v.clone(),
            )
        })
        .collect();
    // Local runners read the same TLS files; in a cluster the Job template mounts them.
    pass_through.extend(
        config
            .redis
            .tls()
            .vars(sluice_contract::tls::Service::Redis),
    );
    // Exec kernels' commands are looked up on PATH, as in an image whose PATH the runtime sets.
    if let Some(path) = std::env::var_os("PATH") {
        pass_through.push(("PATH".to_owned(), path.to_string_lossy().into_owned()));
    }
    let delay = Duration::from_millis(config.local.startup_delay_ms);
    local::LocalLauncher::new(&config.runner_bin(), secrets, pass_through, delay, abandon)
}
