//! The Job each batch runs as: namespace, template, image and resources (the template's
//! fallbacks), retries, deadline and TTL, the runner's own settings, and how the kube launcher
//! reaches the API server.

use serde::Deserialize;
use sluice_contract::runner_env as defaults;
use std::path::PathBuf;

/// Where a pod finds its own namespace (the service account's mount).
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The Job's settings.
#[derive(Debug, Clone, Deserialize)]
pub struct JobSettings {
    /// Namespace of the Jobs; default: the dispatcher pod's own.
    #[serde(default = "d::namespace")]
    pub namespace: String,
    /// The Job template file (`JOB_TEMPLATE`); unset: sluice's own defaults alone.
    #[serde(default, rename = "job_template")]
    pub job_template_path: Option<PathBuf>,
    /// The Job template, read and checked from `JOB_TEMPLATE` at start-up.
    #[serde(skip)]
    pub job_template: Box<k8s_openapi::api::batch::v1::Job>,
    /// Image of the runner container.
    #[serde(default = "d::runner_image")]
    pub runner_image: String,
    /// CPU request and limit of a runner pod; its rayon pool gets as many threads.
    #[serde(default = "d::runner_cpu")]
    pub runner_cpu: String,
    /// Memory request and limit of a runner pod.
    #[serde(default = "d::runner_memory")]
    pub runner_memory: String,
    /// Failed runs retried per Job.
    #[serde(default = "d::job_backoff_limit")]
    pub job_backoff_limit: u16,
    /// A Job's wall-clock limit, all attempts together.
    #[serde(default = "d::job_deadline_seconds")]
    pub job_deadline_seconds: u32,
    /// How long a finished Job is kept by the cluster.
    #[serde(default = "d::job_ttl_seconds")]
    pub job_ttl_seconds: u32,
    /// `RUST_LOG` given to runners.
    #[serde(default = "d::runner_log")]
    pub runner_log: String,
    /// Kernel for envelopes that name none.
    #[serde(default = "d::default_kernel")]
    pub default_kernel: String,
    /// Kubeconfig file for the kube launcher; unset: the usual places, then in-cluster.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Most Job creates per second the kube launcher sends.
    #[serde(default = "d::kube_api_qps")]
    pub kube_api_qps: f64,
    /// Kueue `LocalQueue` to submit Jobs to; when set, Jobs are created suspended for Kueue.
    #[serde(default)]
    pub kueue_queue: Option<String>,
    /// A runner pod stuck waiting (an image that cannot be pulled, a missing Secret) or
    /// unschedulable for this long fails its Job as an outage.
    #[serde(default = "d::pod_stuck_seconds")]
    pub pod_stuck_seconds: u64,
    /// A Job without any pod this long after its creation (admission or a quota refuses its
    /// pods) fails as an outage.
    #[serde(default = "d::pod_create_seconds")]
    pub pod_create_seconds: u64,
    /// How often the kube launcher asks the API server directly about a Job whose outcome has
    /// not arrived, and how late past its deadline an outcome may be before it is overdue; a
    /// Job still suspended (Kueue) this long after creation blocks readiness.
    #[serde(default = "d::job_slack_seconds")]
    pub job_slack_seconds: u64,
    /// The hard limit on waiting for one Job's outcome, from its creation; unset: twice
    /// `JOB_DEADLINE_SECONDS` plus `JOB_SLACK_SECONDS`. A Job still running or suspended then
    /// is deleted and its batch retried whole, as an outage.
    #[serde(default)]
    pub job_wait_seconds: Option<u64>,
}

/// Defaults, one function per variable (serde's `default = "…"` needs a path).
mod d {
    use super::defaults;
    /// The pod's own namespace inside a cluster (its service account's namespace file),
    /// else `sluice`.
    pub fn namespace() -> String {
        std::fs::read_to_string(super::SERVICE_ACCOUNT_NAMESPACE)
            .ok()
            .map(|ns| ns.trim().to_owned())
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "sluice".into())
    }
    pub fn runner_image() -> String {
        concat!("sluice:", env!("CARGO_PKG_VERSION")).into()
    }
    pub fn runner_cpu() -> String {
        "1".into()
    }
    pub fn runner_memory() -> String {
        "256Mi".into()
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
    pub fn runner_log() -> String {
        "info".into()
    }
    pub fn default_kernel() -> String {
        defaults::DEFAULT_KERNEL.into()
    }
    pub fn pod_stuck_seconds() -> u64 {
        30
    }
    pub fn pod_create_seconds() -> u64 {
        60
    }
    pub fn job_slack_seconds() -> u64 {
        60
    }
    pub fn kube_api_qps() -> f64 {
        20.0
    }
}
