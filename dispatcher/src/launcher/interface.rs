//! What every launcher is: something that turns a batch's Job object into running work and
//! reports how it ended. The serve loop and [`Flight`](crate::flight::Flight) see launchers
//! only through [`Launcher`], so a third one (another scheduler, a cloud batch service) needs
//! no change outside its own module.

use crate::error::Result;
use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::Job;

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

/// Starts Jobs and follows them to their outcome.
///
/// A launch either fails at once (the batch's deliveries are then not acked, and RabbitMQ
/// redelivers them) or returns a [`Running`] future that resolves to the Job's [`Outcome`].
pub trait Launcher: Send + Sync {
    /// A short name for logs (`local`, `kube`).
    fn kind(&self) -> &'static str;

    /// Starts `job`; a Job that already exists (a restarted dispatcher relaunching its open
    /// batches) is adopted, not duplicated.
    fn launch<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<Running>>;

    /// Releases what a finished Job holds, once its outcome is recorded.
    fn finished<'a>(&'a self, job_name: &'a str) -> BoxFuture<'a, Result<()>>;
}
