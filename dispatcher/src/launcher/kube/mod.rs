//! The kube launcher: one `batch/v1` Job per batch through the API server.
//!
//! Creates are idempotent by name (a retry after a crash meets 409 AlreadyExists and adopts the
//! Job), paced by a client-side rate limit, and retried with backoff on 429, 5xx and connection
//! errors. Outcomes come from the Job watch ([`watch`]), a task this launcher owns, and from the
//! pod watch ([`pods`]) for Jobs whose pods cannot run, and from direct checks ([`bound`]) for
//! Jobs whose outcome is late. Once a batch's outcome is recorded its Job is deleted, its pods
//! with it, unless it failed: a failed Job stays until its TTL (`JOB_TTL_SECONDS`) so that
//! `kubectl logs` can still show why.

pub mod bound;
pub mod pods;
pub mod watch;

use super::interface::{Failure, Launcher, Outcome, Running};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::health::Health;
use crate::job::MANAGED_SELECTOR;
use crate::retry::with_backoff;
use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::Writer;
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use watch::JobTracker;

/// How long an API call is retried before the batch's launch fails (its messages then return
/// to the queue).
const API_BUDGET: Duration = Duration::from_secs(120);

/// Launches Jobs in a cluster.
pub struct KubeLauncher {
    api: Api<Job>,
    tracker: Arc<JobTracker>,
    /// The runners' pods, as the pod watch sees them.
    pods: Store<Pod>,
    pacing: Mutex<Instant>,
    interval: Duration,
    abandon: CancellationToken,
    bounds: bound::Bounds,
    admission: Arc<bound::Admission>,
    /// Stops the watch task when the launcher is dropped.
    stop_watch: CancellationToken,
}

impl KubeLauncher {
    /// Connects (kubeconfig from `KUBECONFIG`, else the usual places, else in-cluster) and
    /// starts watching the dispatcher's Jobs in `NAMESPACE`.
    pub async fn connect(
        config: &Config,
        abandon: CancellationToken,
        health: Arc<Health>,
    ) -> Result<Self> {
        let client = match &config.job.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    Error::InvalidConfig(format!("KUBECONFIG {}: {e}", path.display()))
                })?;
                let options = kube::config::KubeConfigOptions::default();
                let client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| {
                        Error::InvalidConfig(format!("KUBECONFIG {}: {e}", path.display()))
                    })?;
                Client::try_from(client_config).map_err(Error::kube("building the client"))?
            }
            None => Client::try_default()
                .await
                .map_err(Error::kube("finding a cluster"))?,
        };
        Ok(Self::with_client(client, config, abandon, health))
    }

    /// A launcher on an existing client (tests pass a mock).
    pub fn with_client(
        client: Client,
        config: &Config,
        abandon: CancellationToken,
        health: Arc<Health>,
    ) -> Self {
        let api: Api<Job> = Api::namespaced(client.clone(), &config.job.namespace);
        let writer = Writer::default();
        let tracker = Arc::new(JobTracker::new(writer.as_reader(), &config.job.namespace));
        let stop_watch = CancellationToken::new();
        // Owned through `stop_watch`: the supervisor restarts the watch until it is cancelled.
        tokio::spawn(watch::supervise(
            watch::job_events(api.clone(), MANAGED_SELECTOR),
            writer,
            Arc::clone(&tracker),
            Arc::clone(&health),
            stop_watch.clone(),
        ));
        let graces = pods::Graces {
            stuck: Duration::from_secs(config.job.pod_stuck_seconds),
            create: Duration::from_secs(config.job.pod_create_seconds),
        };
        let (pods, pod_writer) = kube::runtime::reflector::store();
        tokio::spawn(pods::watch(
            Api::namespaced(client, &config.job.namespace),
            MANAGED_SELECTOR,
            (pods.clone(), pod_writer),
            Arc::clone(&tracker),
            graces,
            Arc::clone(&health),
            stop_watch.clone(),
        ));
        let slack = config.job_slack();
        let bounds = bound::Bounds {
            slack,
            overdue: Duration::from_secs(u64::from(config.job.job_deadline_seconds)) + slack,
            limit: config.job_wait_limit(),
        };
        let admission = Arc::new(bound::Admission::new(
            health,
            config.job.kueue_queue.clone(),
        ));
        Self {
            api,
            tracker,
            pods,
            pacing: Mutex::new(Instant::now()),
            interval: Duration::from_secs_f64(1.0 / config.job.kube_api_qps.max(0.1)),
            abandon,
            bounds,
            admission,
            stop_watch,
        }
    }

    /// Creates (or adopts) the Job and returns a future for its outcome.
    async fn start(&self, job: &Job) -> Result<Running> {
        let name = job.metadata.name.clone().unwrap_or_default();
        let outcome = self.tracker.register(&name);
        if let Err(e) = self.create(job, &name).await {
            self.tracker.forget(&name);
            return Err(e);
        }
        self.tracker.created(&name);
        let (abandon, pods) = (self.abandon.clone(), self.pods.clone());
        let (api, bounds, admission) = (self.api.clone(), self.bounds, Arc::clone(&self.admission));
        let tracker = Arc::clone(&self.tracker);
        Ok(Box::pin(async move {
            let outcome = tokio::select! {
                // The Job keeps running in the cluster; the next dispatcher adopts it.
                () = abandon.cancelled() => Outcome::Abandoned,
                // A wait the tracker dropped (given up on below) leaves the answer to the bound.
                Ok(outcome) = outcome => outcome,
                outcome = bound::watch_over(api, name.clone(), bounds, &admission, &tracker) => {
                    tracker.forget(&name);
                    outcome
                }
            };
            match outcome {
                Outcome::Failed(Failure { kind, reason }) => Outcome::Failed(Failure {
                    reason: pods::with_last_exit(&pods, &name, reason),
                    kind,
                }),
                other => other,
            }
        }))
    }

    async fn create(&self, job: &Job, name: &str) -> Result<()> {
        self.pace().await;
        let created = with_backoff("creating a job", Some(API_BUDGET), || async {
            match self.api.create(&PostParams::default(), job).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    tracing::info!(job = %name, "job already exists; adopting it");
                    Ok(())
                }
                Err(e) => Err(Error::Kube {
                    context: "creating a job",
                    source: e,
                }),
            }
        })
        .await;
        created.map_err(|e| match e {
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } => Error::Launch {
                job: name.to_owned(),
                reason: format!("{} ({})", status.message, status.reason),
            },
            other => other,
        })
    }

    /// Spaces creates by the configured rate, so a burst of batches does not flood the API.
    async fn pace(&self) {
        let slot = {
            let mut next = self.pacing.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Deletes a finished Job (and its pods) once its outcome is recorded; a failed one is
    /// left to its TTL, for its logs.
    async fn remove(&self, name: &str) -> Result<()> {
        self.tracker.forget(name);
        if self
            .tracker
            .get(name)
            .is_some_and(|job| watch::has_failed(&job))
        {
            return Ok(());
        }
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        with_backoff("deleting a job", Some(API_BUDGET), || async {
            match self.api.delete(name, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(e) => Err(Error::Kube {
                    context: "deleting a job",
                    source: e,
                }),
            }
        })
        .await
    }
}

impl Launcher for KubeLauncher {
    fn kind(&self) -> &'static str {
        "kube"
    }

    fn launch<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<Running>> {
        Box::pin(self.start(job))
    }

    fn finished<'a>(&'a self, job_name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.remove(job_name))
    }

    fn outlives_dispatcher(&self) -> bool {
        true
    }
}

impl Drop for KubeLauncher {
    fn drop(&mut self) {
        self.stop_watch.cancel();
    }
}
