//! The reconciler's decision for one open batch: a pure function of what Redis records of it
//! ([`BatchView`]), what this dispatcher's launcher observes of its Job ([`Observation`]) and
//! a few facts of the moment ([`Facts`]). No I/O, so every branch is a unit test.

use crate::launcher::Outcome;
use crate::steps::BatchView;
use sluice_contract::BatchState;

/// What this dispatcher's launcher knows of the batch's Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// This dispatcher does not follow the batch's Job (in the batch's current generation).
    NotFollowed,
    /// It follows the Job, which has not ended yet.
    Running,
    /// It follows the Job, which ended so.
    Ended(Outcome),
}

/// The moment's facts a decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts<'a> {
    /// This dispatcher's id.
    pub me: &'a str,
    /// Whether the batch's owner (when another dispatcher) holds its lease.
    pub owner_alive: bool,
    /// Unix ms now.
    pub now_ms: u64,
    /// This dispatcher is shutting down: it settles what it follows, takes on nothing new.
    pub stopping: bool,
}

/// The one step to take now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something changes (another dispatcher's Job is running, a Job is
    /// followed and has not ended).
    Wait,
    /// Nothing before this Unix ms (a retry's backoff).
    WaitUntil(u64),
    /// Launch the staged batch's Job (through the breaker and the in-flight cap).
    Launch,
    /// Take over a launched batch whose owner is gone and follow its Job, the same Job.
    Adopt,
    /// Record the followed Job's outcome.
    Settle(Outcome),
    /// The runner marked the batch succeeded while no live dispatcher followed it: close it.
    Close,
    /// Not an open batch any more (its record is gone, or it already ended): drop it from the
    /// open and running sets.
    Forget,
}

/// Decides the next step for the batch Redis records as `view` (`None`: no record).
pub fn decide(view: Option<&BatchView>, observed: &Observation, facts: Facts<'_>) -> Action {
    let Some(view) = view else {
        return Action::Forget;
    };
    let mine = view.owner.as_deref() == Some(facts.me);
    let orphaned = !(mine || view.owner.is_some() && facts.owner_alive);
    match (view.state, observed) {
        (Some(BatchState::Failed | BatchState::Split | BatchState::Retried), _) => Action::Forget,
        (Some(BatchState::Running | BatchState::Succeeded), Observation::Ended(outcome)) => {
            Action::Settle(outcome.clone())
        }
        (_, Observation::Running) => Action::Wait,
        (Some(BatchState::Staged), _) if facts.stopping => Action::Wait,
        (Some(BatchState::Staged), _) if view.not_before > facts.now_ms => {
            Action::WaitUntil(view.not_before)
        }
        (Some(BatchState::Staged), _) => Action::Launch,
        // The runner marks its own success; with no live follower, that is the outcome.
        (Some(BatchState::Succeeded), _) if mine || orphaned => Action::Close,
        (Some(BatchState::Running), _) if (mine || orphaned) && !facts.stopping => Action::Adopt,
        // Another live dispatcher's, or a state this version does not know: leave it.
        _ => Action::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::FailureKind;

    const ME: &str = "me";

    fn view(state: BatchState, owner: Option<&str>) -> BatchView {
        BatchView {
            id: "b".into(),
            state: Some(state),
            generation: "3".into(),
            owner: owner.map(str::to_owned),
            not_before: 0,
            size: 4,
        }
    }

    fn facts(owner_alive: bool) -> Facts<'static> {
        Facts {
            me: ME,
            owner_alive,
            now_ms: 1_000,
            stopping: false,
        }
    }

    fn lost() -> Outcome {
        Outcome::failed(FailureKind::JobLost, "JobLost: gone")
    }

    #[test]
    fn a_missing_record_or_an_ended_batch_is_forgotten() {
        assert_eq!(
            decide(None, &Observation::NotFollowed, facts(true)),
            Action::Forget
        );
        for state in [BatchState::Failed, BatchState::Split, BatchState::Retried] {
            let v = view(state, Some(ME));
            assert_eq!(
                decide(Some(&v), &Observation::Running, facts(true)),
                Action::Forget
            );
        }
    }

    #[test]
    fn a_staged_batch_is_launched_by_anyone_once_its_backoff_has_passed() {
        let mut v = view(BatchState::Staged, None);
        assert_eq!(
            decide(Some(&v), &Observation::NotFollowed, facts(false)),
            Action::Launch
        );
        v.not_before = 5_000;
        assert_eq!(
            decide(Some(&v), &Observation::NotFollowed, facts(false)),
            Action::WaitUntil(5_000)
        );
        v.not_before = 1_000;
        assert_eq!(
            decide(Some(&v), &Observation::NotFollowed, facts(false)),
            Action::Launch
        );
    }

    #[test]
    fn a_stopping_dispatcher_launches_and_adopts_nothing() {
        let stopping = Facts {
            stopping: true,
            ..facts(false)
        };
        let staged = view(BatchState::Staged, None);
        assert_eq!(
            decide(Some(&staged), &Observation::NotFollowed, stopping),
            Action::Wait
        );
        let orphan = view(BatchState::Running, Some("gone"));
        assert_eq!(
            decide(Some(&orphan), &Observation::NotFollowed, stopping),
            Action::Wait
        );
        let ended = Observation::Ended(Outcome::Succeeded);
        let mine = view(BatchState::Running, Some(ME));
        assert_eq!(
            decide(Some(&mine), &ended, stopping),
            Action::Settle(Outcome::Succeeded),
            "what it follows it still settles"
        );
    }

    #[test]
    fn a_followed_job_is_waited_for_then_settled() {
        let v = view(BatchState::Running, Some(ME));
        assert_eq!(
            decide(Some(&v), &Observation::Running, facts(true)),
            Action::Wait
        );
        assert_eq!(
            decide(Some(&v), &Observation::Ended(lost()), facts(true)),
            Action::Settle(lost())
        );
    }

    #[test]
    fn a_runner_marked_success_waits_for_the_followed_outcome() {
        let v = view(BatchState::Succeeded, Some(ME));
        assert_eq!(
            decide(Some(&v), &Observation::Running, facts(true)),
            Action::Wait
        );
        assert_eq!(
            decide(
                Some(&v),
                &Observation::Ended(Outcome::Succeeded),
                facts(true)
            ),
            Action::Settle(Outcome::Succeeded)
        );
    }

    #[test]
    fn a_runner_marked_success_with_no_live_follower_is_closed() {
        let orphan = view(BatchState::Succeeded, Some("gone"));
        assert_eq!(
            decide(Some(&orphan), &Observation::NotFollowed, facts(false)),
            Action::Close
        );
        let mine = view(BatchState::Succeeded, Some(ME));
        assert_eq!(
            decide(Some(&mine), &Observation::NotFollowed, facts(false)),
            Action::Close
        );
        let theirs = view(BatchState::Succeeded, Some("peer"));
        assert_eq!(
            decide(Some(&theirs), &Observation::NotFollowed, facts(true)),
            Action::Wait
        );
    }

    #[test]
    fn a_live_peer_keeps_its_batches() {
        let v = view(BatchState::Running, Some("peer"));
        assert_eq!(
            decide(Some(&v), &Observation::NotFollowed, facts(true)),
            Action::Wait
        );
    }

    #[test]
    fn a_lost_owners_batch_is_adopted() {
        let v = view(BatchState::Running, Some("gone"));
        assert_eq!(
            decide(Some(&v), &Observation::NotFollowed, facts(false)),
            Action::Adopt
        );
        let ownerless = view(BatchState::Running, None);
        assert_eq!(
            decide(Some(&ownerless), &Observation::NotFollowed, facts(true)),
            Action::Adopt,
            "a launched batch with no owner (an older version's) belongs to nobody alive"
        );
    }

    #[test]
    fn a_batch_of_mine_that_i_do_not_follow_is_adopted_again() {
        let v = view(BatchState::Running, Some(ME));
        assert_eq!(
            decide(Some(&v), &Observation::NotFollowed, facts(true)),
            Action::Adopt
        );
    }

    #[test]
    fn an_unknown_state_is_left_alone() {
        let mut v = view(BatchState::Running, Some("gone"));
        v.state = None;
        assert_eq!(
            decide(Some(&v), &Observation::NotFollowed, facts(false)),
            Action::Wait
        );
    }
}
