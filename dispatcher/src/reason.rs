//! Why a batch's Job failed, as a typed kind beside the text a person reads.
//!
//! Launchers say what they saw ([`Failure`]); the reconciler decides with the kind, never by
//! matching the text. The kind is stored on the batch record (`kind`) next to `reason`, counted
//! in metrics by [`FailureKind::as_str`], and tells an outage (the Job could not do its work,
//! whatever its messages: retried whole) from a crash (its runner died while it may have been
//! working: the messages in hand are suspects).

use std::fmt;

/// Whether a failure is the deployment's fault or may be the work's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The Job could not do its work, whatever its messages. Retried whole.
    Outage,
    /// The runner failed or hung while it may have been working: the messages it was working
    /// on are suspects.
    Crash,
}

/// What went wrong, as far as the launcher could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The API server refused the create for good (403 quota, 404, 422), or did not take it
    /// within the retry budget.
    LaunchRefused,
    /// The Job was deleted before it finished (a watch event or a re-list said so).
    JobDeleted,
    /// The Job is gone and no watch event said so.
    JobLost,
    /// No outcome by the wait limit and the API server does not answer.
    JobUnknown,
    /// No outcome by the wait limit: a pod stuck terminating, or no Job controller.
    JobHung,
    /// Suspended until the wait limit: nothing (Kueue) admitted it.
    NotAdmitted,
    /// Its pod cannot run: an image that cannot be pulled, a missing Secret, unschedulable.
    PodStuck,
    /// The runner exited with an outage code (`sluice_contract::exit`), failing the Job at
    /// once through its `FailJob` rule.
    OutageExit,
    /// The process that ran the batch vanished while no dispatcher followed it (its
    /// dispatcher was lost), so how it ended is unknown.
    RunnerLost,
    /// Every attempt failed (`BackoffLimitExceeded`).
    BackoffLimitExceeded,
    /// The Job ran past `activeDeadlineSeconds`.
    DeadlineExceeded,
    /// Any other failure the Job's conditions report.
    JobFailed,
}

impl FailureKind {
    /// Every kind.
    pub const ALL: [Self; 12] = [
        Self::LaunchRefused,
        Self::JobDeleted,
        Self::JobLost,
        Self::JobUnknown,
        Self::JobHung,
        Self::NotAdmitted,
        Self::PodStuck,
        Self::OutageExit,
        Self::RunnerLost,
        Self::BackoffLimitExceeded,
        Self::DeadlineExceeded,
        Self::JobFailed,
    ];

    /// The name stored in the batch record's `kind` field and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LaunchRefused => "LaunchRefused",
            Self::JobDeleted => "JobDeleted",
            Self::JobLost => "JobLost",
            Self::JobUnknown => "JobUnknown",
            Self::JobHung => "JobHung",
            Self::NotAdmitted => "NotAdmitted",
            Self::PodStuck => "PodStuck",
            Self::OutageExit => "OutageExit",
            Self::RunnerLost => "RunnerLost",
            Self::BackoffLimitExceeded => "BackoffLimitExceeded",
            Self::DeadlineExceeded => "DeadlineExceeded",
            Self::JobFailed => "JobFailed",
        }
    }

    /// Parses a stored kind.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Outage or crash.
    pub fn cause(self) -> Cause {
        match self {
            Self::BackoffLimitExceeded | Self::DeadlineExceeded | Self::JobFailed => Cause::Crash,
            _ => Cause::Outage,
        }
    }

    /// Whether this says something about the runners' health. A run lost with its dispatcher
    /// is retried whole like an outage, but it is no reason to hold launches back.
    pub fn counts_against_runners(self) -> bool {
        self.cause() == Cause::Outage && self != Self::RunnerLost
    }

    /// The kind a Job's `Failed` condition reason maps to; `outage_exit` when its message
    /// names an outage exit code.
    pub fn of_condition(reason: &str, outage_exit: bool) -> Self {
        match reason {
            "PodFailurePolicy" if outage_exit => Self::OutageExit,
            "BackoffLimitExceeded" => Self::BackoffLimitExceeded,
            "DeadlineExceeded" => Self::DeadlineExceeded,
            _ => Self::JobFailed,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed Job: its kind and the text a person reads (`BackoffLimitExceeded: …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong.
    pub kind: FailureKind,
    /// Why, as Kubernetes or the launcher says it.
    pub reason: String,
}

impl Failure {
    /// A failure of `kind` with `reason`.
    pub fn new(kind: FailureKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }

    /// Outage or crash.
    pub fn cause(&self) -> Cause {
        self.kind.cause()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_split_into_outages_and_crashes() {
        for kind in FailureKind::ALL {
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(FailureKind::BackoffLimitExceeded.cause(), Cause::Crash);
        assert_eq!(FailureKind::JobLost.cause(), Cause::Outage);
        assert!(FailureKind::OutageExit.counts_against_runners());
        assert!(!FailureKind::RunnerLost.counts_against_runners());
        assert!(!FailureKind::DeadlineExceeded.counts_against_runners());
    }

    #[test]
    fn job_conditions_map_to_kinds() {
        use FailureKind as K;
        assert_eq!(K::of_condition("PodFailurePolicy", true), K::OutageExit);
        assert_eq!(K::of_condition("PodFailurePolicy", false), K::JobFailed);
        assert_eq!(
            K::of_condition("BackoffLimitExceeded", false),
            K::BackoffLimitExceeded
        );
        assert_eq!(
            K::of_condition("DeadlineExceeded", false),
            K::DeadlineExceeded
        );
    }
}
