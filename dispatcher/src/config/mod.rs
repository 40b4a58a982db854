//! The dispatcher's configuration: environment variables read with envy, each with a
//! documented default (see README.md), validated at start-up.
//!
//! Grouped by concern, each group documented where it is defined:
//! - [`broker`]: RabbitMQ, the queue, the largest staged body;
//! - [`redis`]: Redis, keys, result expiry, the runners' Redis Secret;
//! - [`batching`]: batch size, bytes, linger, the in-flight cap;
//! - [`job`]: the Job (template, image, resources, retries, deadline, TTL) and the API server,
//!   with [`job_template`] reading and checking the template users own;
//! - [`local`]: the local launcher;
//! - [`outages`]: retrying Jobs that could not do their work, and the circuit breaker;
//! - [`runner`]: settings only runners read, handed to every runner;
//! - [`replicas`]: several dispatchers: leases, batch ownership, the reconcile interval;
//! - [`validate`]: the start-up checks, one clear line per refused value;
//!
//! and, here, what the service itself needs: which launcher, the metrics address, the shutdown
//! grace and the test failpoint.

pub mod batching;
pub mod broker;
pub mod job;
pub mod job_template;
pub mod local;
pub mod outages;
pub mod redis;
pub mod replicas;
pub mod runner;
pub mod validate;

#[cfg(test)]
mod documented;

use crate::error::{Error, Result};
use serde::Deserialize;
use sluice_contract::RunnerEnv;
use std::path::PathBuf;
use std::time::Duration;

pub use batching::Batching;
pub use broker::Broker;
pub use job::JobSettings;
pub use local::LocalSettings;
pub use outages::Outages;
pub use redis::Redis;
pub use replicas::Replicas;
pub use runner::RunnerSettings;

/// Which launcher turns a batch's Job into running work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LauncherKind {
    /// Child processes of `RUNNER_BIN` on this machine.
    Local,
    /// Kubernetes Jobs through the API server.
    Kube,
}

/// Everything `dispatcher serve` and its subcommands read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// RabbitMQ.
    pub broker: Broker,
    /// Redis.
    pub redis: Redis,
    /// Batching and concurrency.
    pub batching: Batching,
    /// The Job.
    pub job: JobSettings,
    /// The local launcher.
    pub local: LocalSettings,
    /// Outages and the circuit breaker.
    pub outages: Outages,
    /// What runners read.
    pub runner: RunnerSettings,
    /// Several dispatchers.
    pub replicas: Replicas,
    /// The service itself.
    pub service: Service,
}

/// What the dispatcher process itself needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Service {
    /// `local` or `kube`; default `kube` inside a cluster, `local` elsewhere.
    #[serde(default = "d::launcher")]
    pub launcher: LauncherKind,
    /// Address of the `/metrics`, `/healthz`, `/readyz` server; empty disables it.
    #[serde(default = "d::metrics_addr")]
    pub metrics_addr: String,
    /// On SIGTERM, how long running Jobs may take to finish before the dispatcher exits.
    #[serde(default = "d::shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
    /// The dispatcher container's memory limit in bytes (the manifests pass it through the
    /// downward API); when set, settings whose worst case exceeds it are refused at start-up.
    #[serde(default)]
    pub dispatcher_memory_limit: Option<u64>,
    /// Tests only: `POINT@N` crashes the dispatcher at a dangerous point (see `failpoint`).
    #[serde(default)]
    pub sluice_failpoint: Option<String>,
}

/// Defaults, one function per variable (serde's `default = "…"` needs a path).
mod d {
    use super::LauncherKind;
    pub fn launcher() -> LauncherKind {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            LauncherKind::Kube
        } else {
            LauncherKind::Local
        }
    }
    pub fn metrics_addr() -> String {
        "0.0.0.0:9090".into()
    }
    pub fn shutdown_grace_seconds() -> u64 {
        30
    }
}

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(std::env::vars())
    }

    /// Reads and validates the given variables; each group reads the variables it knows.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let read = || vars.iter().cloned();
        let mut config = Self {
            broker: envy::from_iter(read()).map_err(Error::Config)?,
            redis: envy::from_iter(read()).map_err(Error::Config)?,
            batching: envy::from_iter(read()).map_err(Error::Config)?,
            job: envy::from_iter(read()).map_err(Error::Config)?,
            local: envy::from_iter(read()).map_err(Error::Config)?,
            outages: envy::from_iter(read()).map_err(Error::Config)?,
            runner: envy::from_iter(read()).map_err(Error::Config)?,
            replicas: envy::from_iter(read()).map_err(Error::Config)?,
            service: envy::from_iter(read()).map_err(Error::Config)?,
        };
        if let Some(path) = &config.job.job_template_path {
            config.job.job_template = Box::new(job_template::load(path)?);
        }
        validate::check(&config).map_err(Error::InvalidConfig)?;
        // Local runners may start in another directory: hand them an absolute path.
        if config.service.launcher == LauncherKind::Local
            && let Some(file) = &mut config.runner.kernels_file
            && let Ok(absolute) = std::path::absolute(&*file)
        {
            *file = absolute.display().to_string();
        }
        Ok(config)
    }

    /// The launcher `LAUNCHER` names.
    pub fn launcher(&self) -> LauncherKind {
        self.service.launcher
    }

    /// The start-up a Job is expected to take before any has reported.
    pub fn job_startup_prior(&self) -> Duration {
        let seconds = self
            .batching
            .job_startup_seconds
            .unwrap_or(match self.launcher() {
                LauncherKind::Local => self.local.startup_delay_ms as f64 / 1000.0,
                LauncherKind::Kube => 1.5,
            });
        Duration::from_secs_f64(seconds.max(0.0))
    }

    /// How late past its deadline a Job's outcome may be, and how often it is then asked for.
    pub fn job_slack(&self) -> Duration {
        Duration::from_secs(self.job.job_slack_seconds)
    }

    /// The hard limit on waiting for one Job's outcome (`JOB_WAIT_SECONDS`).
    pub fn job_wait_limit(&self) -> Duration {
        let deadline = u64::from(self.job.job_deadline_seconds);
        Duration::from_secs(
            self.job
                .job_wait_seconds
                .unwrap_or(2 * deadline + self.job.job_slack_seconds),
        )
    }

    /// How long a batch may wait for more messages.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.batching.batch_linger_ms)
    }

    /// The channel prefetch: one batch being filled while the previous one is staged.
    pub fn prefetch(&self) -> u16 {
        self.batching.batch_max_messages.saturating_mul(2)
    }

    /// Whether local runners get the test kernels.
    pub fn test_kernels(&self) -> bool {
        matches!(
            self.local.sluice_test_kernels.as_deref(),
            Some("1" | "true")
        )
    }

    /// The contract variables every runner of `batch_id` gets.
    pub fn runner_env(&self, batch_id: &str) -> RunnerEnv {
        RunnerEnv {
            batch_id: batch_id.to_owned(),
            key_prefix: self.redis.key_prefix.clone(),
            result_ttl_seconds: self.redis.result_ttl_seconds,
            max_message_bytes: self.broker.max_message_bytes,
            default_kernel: self.job.default_kernel.clone(),
            results_maxlen: self.redis.results_maxlen,
            redis_retry_seconds: self.runner.redis_retry_seconds,
            result_chunk: self.runner.result_chunk,
            result_flush_ms: self.runner.result_flush_ms,
            kernels_file: self.runner.kernels_file.clone(),
        }
    }

    /// Whole CPUs a runner may use, for its rayon pool (at least 1).
    pub fn runner_threads(&self) -> u32 {
        cpu_threads(&self.job.runner_cpu)
    }

    /// The runner executable for the local launcher.
    pub fn runner_bin(&self) -> PathBuf {
        self.local.runner_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("runner")))
                .filter(|path| path.exists())
                .unwrap_or_else(|| PathBuf::from("runner"))
        })
    }
}

/// Whole CPUs in a quantity such as `2` or `1500m`, for a rayon pool (at least 1).
pub fn cpu_threads(quantity: &str) -> u32 {
    let cpus = match quantity.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
        None => quantity.parse::<f64>(),
    };
    cpus.map_or(1, |c| c.floor().max(1.0) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config> {
        Config::from_vars(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    #[test]
    fn defaults_match_the_readme() {
        let c = config(&[]).unwrap();
        assert_eq!(c.broker.queue, "jobs");
        assert_eq!(
            (
                c.batching.batch_max_messages,
                c.batching.batch_linger_ms,
                c.batching.max_jobs_in_flight
            ),
            (500, 200, 4)
        );
        assert_eq!(c.prefetch(), 1000);
        assert_eq!(c.batching.batch_mode, crate::sizer::BatchMode::Adaptive);
        assert!((c.batching.target_job_seconds - 5.0).abs() < f64::EPSILON);
        assert_eq!(c.runner_threads(), 1);
        assert_eq!(c.batching.unacked_max(), Duration::from_secs(180));
    }

    #[test]
    fn zero_limits_and_bad_quantities_are_rejected() {
        assert!(config(&[("BATCH_MAX_MESSAGES", "0")]).is_err());
        assert!(config(&[("BATCH_MODE", "sometimes")]).is_err());
        assert!(config(&[("TARGET_JOB_SECONDS", "0")]).is_err());
        assert!(config(&[("MAX_JOBS_IN_FLIGHT", "0")]).is_err());
        assert!(config(&[("RUNNER_CPU", "lots")]).is_err());
        assert!(config(&[("LAUNCHER", "docker")]).is_err());
        assert!(config(&[("BATCH_MODE", "sometimes")]).is_err());
        assert!(config(&[("TARGET_JOB_SECONDS", "0")]).is_err());
    }

    #[test]
    fn values_the_api_server_would_refuse_are_refused_at_start_naming_the_variable() {
        for (var, value) in [
            ("RUNNER_MEMORY", "256MB"),
            ("RUNNER_MEMORY", "0"),
            ("RUNNER_CPU", "-1"),
            ("JOB_DEADLINE_SECONDS", "0"),
            ("KUEUE_QUEUE", "team a"),
            ("NAMESPACE", "Sluice"),
            ("KUBE_API_QPS", "0"),
            ("JOB_SLACK_SECONDS", "0"),
            ("JOB_WAIT_SECONDS", "30"),
            ("RUNNER_IMAGE", ""),
            ("UNACKED_MAX_SECONDS", "0.1"),
            ("UNACKED_MAX_SECONDS", "NaN"),
        ] {
            let error = config(&[(var, value)]).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(var), "{var}={value}: {error}");
            assert_eq!(error.lines().count(), 1, "one line: {error}");
        }
        assert!(config(&[("RUNNER_MEMORY", "1.5Gi"), ("KUEUE_QUEUE", "team-a")]).is_ok());
    }

    #[test]
    fn a_template_quantity_the_api_server_would_refuse_is_refused_at_start() {
        let path = std::env::temp_dir().join(format!("sluice-bad-{}.yaml", std::process::id()));
        let template = "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers:\n        - name: runner\n          resources: {limits: {memory: 256MB}}\n";
        std::fs::write(&path, template).unwrap();
        let error = config(&[("JOB_TEMPLATE", &path.display().to_string())])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_file(&path);
        assert!(error.contains("resources.limits.memory"), "{error}");
    }

    #[test]
    fn a_memory_limit_below_the_worst_case_is_refused_with_the_formula() {
        let limit = |bytes: &str| config(&[("DISPATCHER_MEMORY_LIMIT", bytes)]);
        // Defaults: 64 MiB + 1,000 × 1 MiB + 3 × 8 MiB.
        let need = validate::worst_case_memory(&config(&[]).unwrap());
        assert_eq!(need, (64 + 1000 + 24) << 20);
        let error = limit(&(need - 1).to_string()).unwrap_err().to_string();
        assert!(error.contains("BATCH_MAX_MESSAGES 500"), "{error}");
        assert!(limit(&need.to_string()).is_ok());
    }

    #[test]
    fn runner_threads_follow_the_cpu_limit() {
        assert_eq!(config(&[("RUNNER_CPU", "2")]).unwrap().runner_threads(), 2);
        assert_eq!(
            config(&[("RUNNER_CPU", "2500m")]).unwrap().runner_threads(),
            2
        );
        assert_eq!(
            config(&[("RUNNER_CPU", "500m")]).unwrap().runner_threads(),
            1
        );
    }
}
