//! What every launcher is: something that turns a batch's Job object into running work and
//! reports how it ended. The serve loop and [`Flight`](crate::flight::Flight) see launchers
//! only through [`Launcher`], so a third one (another scheduler, a cloud batch service) needs
//! no change outside its own module.

use crate::error::Result;
use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::Job;

pub use crate::reason::{Cause, Failure, FailureKind};

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The runner exited 0: every message has a result.
    Succeeded,
    /// Every attempt failed, the deadline passed, or the Job could not run at all; the kind
    /// and reason are recorded on the batch.
    Failed(Failure),
    /// The dispatcher stopped before the Job ended; the batch stays open for another
    /// dispatcher, or the next start, to adopt.
    Abandoned,
}

impl Outcome {
    /// A failed outcome.
    pub fn failed(kind: FailureKind, reason: impl Into<String>) -> Self {
        Self::Failed(Failure::new(kind, reason))
    }
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

    /// Follows a Job this dispatcher did not launch (its dispatcher was lost, or it stopped):
    /// the same Job, never a second one. The default launches it, which adopts an existing
    /// Job by name.
    fn adopt<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<Running>> {
        self.launch(job)
    }

    /// Whether a Job keeps running when its dispatcher stops following it (a cluster's Job
    /// does; a local child process is killed with the dispatcher's shutdown).
    fn outlives_dispatcher(&self) -> bool;

    /// Releases what a finished Job holds, once its outcome is recorded.
    fn finished<'a>(&'a self, job_name: &'a str) -> BoxFuture<'a, Result<()>>;
}
