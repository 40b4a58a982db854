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
    /// Every attempt failed, the deadline passed, or the Job could not run at all; the
    /// reason is recorded on the batch.
    Failed {
        /// Why, as Kubernetes would say it (`BackoffLimitExceeded: …`, `ErrImagePull: …`).
        reason: String,
        /// What the launcher could tell of the cause.
        cause: Cause,
    },
    /// The dispatcher stopped before the Job ended; the batch stays open and is relaunched on
    /// the next start.
    Abandoned,
}

/// What a launcher can tell of why a Job failed. [`crate::settle`] decides with what the runner
/// recorded in Redis too: a runner that never reached its batch is an outage whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The Job could not do its work, whatever its messages: the runner exited with an outage
    /// code ([`sluice_contract::exit`]), could not be started, its image could not be pulled,
    /// its pod was refused, evicted or never scheduled, or the Job vanished. Retried whole.
    Outage,
    /// The runner failed or hung while it may have been working: a signal, an OOM kill, a
    /// crash exit code, the deadline. The messages it was working on are suspects.
    Crash,
}

impl Outcome {
    /// A failed outcome.
    pub fn failed(cause: Cause, reason: impl Into<String>) -> Self {
        Self::Failed {
            reason: reason.into(),
            cause,
        }
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

    /// Releases what a finished Job holds, once its outcome is recorded.
    fn finished<'a>(&'a self, job_name: &'a str) -> BoxFuture<'a, Result<()>>;
}
