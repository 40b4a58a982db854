//! The dispatcher's configuration: environment variables read with envy, each with a
//! documented default (see README.md), validated at start-up.

use crate::error::{Error, Result};
use serde::Deserialize;
use sluice_contract::RunnerEnv;
use sluice_contract::runner_env as defaults;
use std::path::PathBuf;
use std::time::Duration;

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
#[derive(Debug, Clone, Deserialize)]
#[allow(clippy::struct_excessive_bools)]
pub struct Config {
    /// RabbitMQ URL.
    #[serde(default = "d::amqp_url")]
    pub amqp_url: String,
    /// Queue to drain.
    #[serde(default = "d::queue")]
    pub queue: String,
    /// Redis URL (handed to runners through the Secret `REDIS_SECRET_NAME` in a cluster).
    #[serde(default = "d::redis_url")]
    pub redis_url: String,
    /// Prefix of every Redis key.
    #[serde(default = "d::key_prefix")]
    pub key_prefix: String,
    /// A batch closes at this many messages (the most an adaptive batch may hold).
    #[serde(default = "d::batch_max_messages")]
    pub batch_max_messages: u16,
    /// `adaptive` (batch size follows queue depth and cost per message) or `fixed`.
    #[serde(default = "d::batch_mode")]
    pub batch_mode: crate::sizer::BatchMode,
    /// Adaptive mode: a Job's expected start-up before any has reported, in seconds; default:
    /// `STARTUP_DELAY_MS` with the local launcher, 1.5 with kube.
    #[serde(default)]
    pub job_startup_seconds: Option<f64>,
    /// Adaptive mode: about this much work per Job, in seconds.
    #[serde(default = "d::target_job_seconds")]
    pub target_job_seconds: f64,
    /// A batch closes before its bodies exceed this many bytes.
    #[serde(default = "d::batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// A batch closes this long after its first message.
    #[serde(default = "d::batch_linger_ms")]
    pub batch_linger_ms: u64,
    /// Most Jobs running at once; beyond that, messages wait in RabbitMQ.
    #[serde(default = "d::max_jobs_in_flight")]
    pub max_jobs_in_flight: usize,
    /// `local` or `kube`; default `kube` inside a cluster, `local` elsewhere.
    #[serde(default = "d::launcher")]
    pub launcher: LauncherKind,
    /// Namespace of the Jobs.
    #[serde(default = "d::namespace")]
    pub namespace: String,
    /// Image of the runner container.
    #[serde(default = "d::runner_image")]
    pub runner_image: String,
    /// The runner executable for the local launcher; default: `runner` beside this binary.
    #[serde(default)]
    pub runner_bin: Option<PathBuf>,
    /// Failed runs retried per Job.
    #[serde(default = "d::job_backoff_limit")]
    pub job_backoff_limit: u16,
    /// A Job's wall-clock limit, all attempts together.
    #[serde(default = "d::job_deadline_seconds")]
    pub job_deadline_seconds: u32,
    /// How long a finished Job is kept by the cluster.
    #[serde(default = "d::job_ttl_seconds")]
    pub job_ttl_seconds: u32,
    /// CPU request and limit of a runner pod; its rayon pool gets as many threads.
    #[serde(default = "d::runner_cpu")]
    pub runner_cpu: String,
    /// Memory request and limit of a runner pod.
    #[serde(default = "d::runner_memory")]
    pub runner_memory: String,
    /// Address of the `/metrics`, `/healthz`, `/readyz` server; empty disables it.
    #[serde(default = "d::metrics_addr")]
    pub metrics_addr: String,
    /// Result expiry in seconds; 0 keeps results forever.
    #[serde(default = "d::result_ttl_seconds")]
    pub result_ttl_seconds: u64,
    /// Bodies larger than this are not staged and get an error result.
    #[serde(default = "d::max_message_bytes")]
    pub max_message_bytes: usize,
    /// Kernel for envelopes that name none.
    #[serde(default = "d::default_kernel")]
    pub default_kernel: String,
    /// Approximate cap on the results stream.
    #[serde(default = "d::results_maxlen")]
    pub results_maxlen: u64,
    /// Secret holding the Redis URL for runner pods.
    #[serde(default = "d::redis_secret_name")]
    pub redis_secret_name: String,
    /// Key of the Redis URL inside that Secret.
    #[serde(default = "d::redis_secret_key")]
    pub redis_secret_key: String,
    /// `RUST_LOG` given to runners.
    #[serde(default = "d::runner_log")]
    pub runner_log: String,
    /// On SIGTERM, how long running Jobs may take to finish before the dispatcher exits.
    #[serde(default = "d::shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
    /// Local launcher only: a delay before each run, to simulate pod start-up (benchmarks).
    #[serde(default)]
    pub startup_delay_ms: u64,
    /// Kubeconfig file for the kube launcher; unset: the usual places, then in-cluster.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Most Job creates per second the kube launcher sends.
    #[serde(default = "d::kube_api_qps")]
    pub kube_api_qps: f64,
    /// Kueue `LocalQueue` to submit Jobs to; when set, Jobs are created suspended for Kueue.
    #[serde(default)]
    pub kueue_queue: Option<String>,
    /// Tests only: `POINT@N` crashes the dispatcher at a dangerous point (see `failpoint`).
    #[serde(default)]
    pub sluice_failpoint: Option<String>,
    /// Passed through to local runners; enables the test kernels.
    #[serde(default)]
    pub sluice_test_kernels: Option<String>,
    /// The Job template file (`JOB_TEMPLATE`); unset: sluice's own defaults alone.
    #[serde(default, rename = "job_template")]
    pub job_template_path: Option<PathBuf>,
    /// The Job template, read and checked from `JOB_TEMPLATE` at start-up.
    #[serde(skip)]
    pub job_template: Box<k8s_openapi::api::batch::v1::Job>,
}

/// Defaults, one function per variable (serde's `default = "…"` needs a path).
mod d {
    use super::{LauncherKind, defaults};
    pub fn amqp_url() -> String {
        "amqp://guest:guest@127.0.0.1:5672/%2f".into()
    }
    pub fn queue() -> String {
        "jobs".into()
    }
    pub fn redis_url() -> String {
        "redis://127.0.0.1:6379/".into()
    }
    pub fn key_prefix() -> String {
        defaults::DEFAULT_KEY_PREFIX.into()
    }
    pub fn batch_max_messages() -> u16 {
        500
    }
    pub fn batch_mode() -> crate::sizer::BatchMode {
        crate::sizer::BatchMode::Adaptive
    }
    pub fn target_job_seconds() -> f64 {
        5.0
    }
    pub fn batch_max_bytes() -> usize {
        8 << 20
    }
    pub fn batch_linger_ms() -> u64 {
        200
    }
    pub fn max_jobs_in_flight() -> usize {
        4
    }
    pub fn launcher() -> LauncherKind {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            LauncherKind::Kube
        } else {
            LauncherKind::Local
        }
    }
    pub fn namespace() -> String {
        "sluice".into()
    }
    pub fn runner_image() -> String {
        concat!("sluice:", env!("CARGO_PKG_VERSION")).into()
    }
    pub fn job_backoff_limit() -> u16 {
        2
    }
    pub fn job_deadline_seconds() -> u32 {
        600
    }
    pub fn job_ttl_seconds() -> u32 {
        300
    }
    pub fn runner_cpu() -> String {
        "1".into()
    }
    pub fn runner_memory() -> String {
        "256Mi".into()
    }
    pub fn metrics_addr() -> String {
        "0.0.0.0:9090".into()
    }
    pub fn result_ttl_seconds() -> u64 {
        defaults::DEFAULT_RESULT_TTL_SECONDS
    }
    pub fn max_message_bytes() -> usize {
        defaults::DEFAULT_MAX_MESSAGE_BYTES
    }
    pub fn default_kernel() -> String {
        defaults::DEFAULT_KERNEL.into()
    }
    pub fn results_maxlen() -> u64 {
        defaults::DEFAULT_RESULTS_MAXLEN
    }
    pub fn redis_secret_name() -> String {
        "sluice-redis".into()
    }
    pub fn redis_secret_key() -> String {
        "url".into()
    }
    pub fn runner_log() -> String {
        "info".into()
    }
    pub fn kube_api_qps() -> f64 {
        20.0
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

    /// Reads and validates the given variables.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut config: Self = envy::from_iter(vars).map_err(Error::Config)?;
        config.validate()?;
        if let Some(path) = &config.job_template_path {
            config.job_template = Box::new(crate::job::template::load(path)?);
        }
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let problem = if self.batch_max_messages == 0 {
            "BATCH_MAX_MESSAGES must be at least 1"
        } else if self.batch_max_bytes == 0 {
            "BATCH_MAX_BYTES must be at least 1"
        } else if !self.target_job_seconds.is_finite() || self.target_job_seconds <= 0.0 {
            "TARGET_JOB_SECONDS must be a positive number of seconds"
        } else if self.max_jobs_in_flight == 0 {
            "MAX_JOBS_IN_FLIGHT must be at least 1"
        } else if self.queue.is_empty() || self.key_prefix.is_empty() {
            "QUEUE and KEY_PREFIX must not be empty"
        } else if self.runner_cpu.parse::<f64>().is_err() && !self.runner_cpu.ends_with('m') {
            "RUNNER_CPU must be a CPU quantity such as 1, 2 or 500m"
        } else {
            return Ok(());
        };
        Err(Error::InvalidConfig(problem.into()))
    }

    /// The start-up a Job is expected to take before any has reported.
    pub fn job_startup_prior(&self) -> Duration {
        let seconds = self.job_startup_seconds.unwrap_or(match self.launcher {
            LauncherKind::Local => self.startup_delay_ms as f64 / 1000.0,
            LauncherKind::Kube => 1.5,
        });
        Duration::from_secs_f64(seconds.max(0.0))
    }

    /// How long a batch may wait for more messages.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }

    /// The channel prefetch: one batch being filled while the previous one is staged.
    pub fn prefetch(&self) -> u16 {
        self.batch_max_messages.saturating_mul(2)
    }

    /// Whether local runners get the test kernels.
    pub fn test_kernels(&self) -> bool {
        matches!(self.sluice_test_kernels.as_deref(), Some("1" | "true"))
    }

    /// The contract variables every runner of `batch_id` gets.
    pub fn runner_env(&self, batch_id: &str) -> RunnerEnv {
        RunnerEnv {
            batch_id: batch_id.to_owned(),
            key_prefix: self.key_prefix.clone(),
            result_ttl_seconds: self.result_ttl_seconds,
            max_message_bytes: self.max_message_bytes,
            default_kernel: self.default_kernel.clone(),
            results_maxlen: self.results_maxlen,
        }
    }

    /// Whole CPUs a runner may use, for its rayon pool (at least 1).
    pub fn runner_threads(&self) -> u32 {
        cpu_threads(&self.runner_cpu)
    }

    /// The runner executable for the local launcher.
    pub fn runner_bin(&self) -> PathBuf {
        self.runner_bin.clone().unwrap_or_else(|| {
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
        assert_eq!(c.queue, "jobs");
        assert_eq!(
            (
                c.batch_max_messages,
                c.batch_linger_ms,
                c.max_jobs_in_flight
            ),
            (500, 200, 4)
        );
        assert_eq!(c.prefetch(), 1000);
        assert_eq!(c.batch_mode, crate::sizer::BatchMode::Adaptive);
        assert!((c.target_job_seconds - 5.0).abs() < f64::EPSILON);
        assert_eq!(c.runner_threads(), 1);
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
