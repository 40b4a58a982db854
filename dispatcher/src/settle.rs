//! Settling how a batch's Job ended, and telling an outage from a poison message.
//!
//! A succeeded Job closes its batch. A failed one is judged by its [`FailureKind`] and by
//! what the runner recorded in Redis before it died (see the runner's `claims`): how many runs
//! reached the batch, and which ids they were working on. [`plan`] decides, without I/O;
//! [`settle`] reads its inputs and applies its plan as one compare-and-set step.
//!
//! - **Outage**: the Job could not do its work (an outage exit code, an image that cannot be
//!   pulled, a refused or evicted pod, a vanished Job, a run lost with its dispatcher), or no
//!   runner ever reached the batch, or it died with nothing attributable in hand. The
//!   unfinished messages are staged again, whole, as one new batch, to be launched after a
//!   backoff ([`crate::breaker`]); the failed batch is closed as `retried`. Never split, never
//!   dead-lettered.
//! - **Crash**: a runner died (or hung) while working. The *suspects* are the ids it recorded
//!   as working that still have no result; every other unfinished message is innocent and is
//!   staged again as a batch of its own. The suspects are split in two halves, recursively,
//!   until the culprit is alone; a message whose Job still fails alone gets a `dead` result
//!   with the Job's failure reason, after the message is published to the dead-letter queue
//!   ([`crate::dead_letters`]); `{prefix}:dead` indexes it. One poison
//!   message costs about 2·⌈log2 s⌉ + 1 extra Jobs for s suspects.
//!
//! Children's ids are derived from the parent and the step ([`child_id`]), so two dispatchers
//! settling the same outcome converge on one set of children, one dead-list entry (and, at worst, two copies of the dead letter in its queue).

use crate::cas::Applied;
use crate::dead_letters::{DeadLetter, DeadLetters};
use crate::error::Result;
use crate::launcher::Outcome;
use crate::reason::{Cause, Failure};
use crate::stage::Stager;
use crate::steps::{self, BatchView, Child, child_id};
use sluice_contract::dead::IndexEntry;
use sluice_contract::record::{ResultWrite, unix_millis};
use sluice_contract::{BatchState, Envelope, ResultRecord, StagedMessage, Status};
use std::collections::HashSet;

/// Settings the dead-letter records need, and where dead letters are published.
#[derive(Clone, Copy)]
pub struct DeadLetterSettings<'a> {
    /// Result expiry in seconds (0 = keep).
    pub ttl_seconds: u64,
    /// Approximate results stream cap.
    pub stream_maxlen: u64,
    /// Most entries of the dead-letter index.
    pub index_max: u64,
    /// The dead-letter queue.
    pub queue: &'a DeadLetters,
}

/// What settling an outcome led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The batch is closed; `dead` messages were given up on.
    Closed {
        /// Messages dead-lettered.
        dead: usize,
    },
    /// The batch was split to isolate a poison message: these staged batches are to be
    /// launched.
    Split {
        /// The new batches' ids: the innocent messages' (if any), then the suspects' halves.
        children: Vec<String>,
    },
    /// The Job could not do its work: its unfinished messages are staged again, whole, as
    /// `child`.
    Retry {
        /// The new batch's id.
        child: String,
        /// Why the Job could not do its work.
        failure: Failure,
    },
    /// Another dispatcher (or an earlier pass) settled the batch first; nothing was done.
    Stale,
}

impl Settled {
    /// Whether the Job's runner reached its work (anything but an outage).
    pub fn reached_work(&self) -> bool {
        matches!(self, Self::Closed { .. } | Self::Split { .. })
    }
}

/// A message of a failed batch that has no result yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    /// Its id.
    pub id: String,
    /// What was staged.
    pub message: StagedMessage,
}

/// What the runners recorded of a failed batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    /// How many runs reached the batch.
    pub runs: u64,
    /// The ids they recorded as working.
    pub working: HashSet<String>,
}

/// The decision for one outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Close the batch as `state`.
    Close {
        /// `succeeded` (every message has its result).
        state: BatchState,
        /// The failure it ended on, if one came after the last result.
        failure: Option<Failure>,
    },
    /// Stage the unfinished messages again, whole, as one batch (an outage).
    Retry {
        /// Why, with the judgement added.
        failure: Failure,
        /// The messages.
        messages: Vec<Unfinished>,
    },
    /// Give the one suspect up: it failed alone.
    DeadLetter {
        /// The Job's failure.
        failure: Failure,
        /// The message.
        message: Unfinished,
    },
    /// Split: the innocents (if any) and the suspects' halves, each staged as a batch.
    Split {
        /// The Job's failure.
        failure: Failure,
        /// Each group with the step name its id derives from.
        groups: Vec<(&'static str, Vec<Unfinished>)>,
    },
}

/// Decides what a failed Job means for its batch's `unfinished` messages.
pub fn plan(failure: &Failure, unfinished: Vec<Unfinished>, attribution: &Attribution) -> Plan {
    if unfinished.is_empty() {
        // Every message has its result: whatever failed afterwards cost nothing.
        return Plan::Close {
            state: BatchState::Succeeded,
            failure: Some(failure.clone()),
        };
    }
    let (suspects, innocents): (Vec<Unfinished>, Vec<Unfinished>) = unfinished
        .iter()
        .cloned()
        .partition(|u| attribution.working.contains(&u.id));
    let why = match (failure.cause(), attribution.runs) {
        (Cause::Outage, _) => None,
        (_, 0) => Some("its runner never reached the batch"),
        _ if suspects.is_empty() => Some("with no message in hand"),
        _ => {
            return split(failure, suspects, innocents);
        }
    };
    let failure = match why {
        Some(why) => Failure::new(failure.kind, format!("{} ({why})", failure.reason)),
        None => failure.clone(),
    };
    Plan::Retry {
        failure,
        messages: unfinished,
    }
}

fn split(failure: &Failure, mut suspects: Vec<Unfinished>, innocents: Vec<Unfinished>) -> Plan {
    let failure = failure.clone();
    if suspects.len() == 1 && innocents.is_empty() {
        let message = suspects.remove(0);
        return Plan::DeadLetter { failure, message };
    }
    let mut groups = Vec::new();
    if !innocents.is_empty() {
        groups.push(("innocents", innocents));
    }
    if suspects.len() > 1 {
        let second = suspects.split_off(suspects.len() / 2);
        groups.extend([("half-0", suspects), ("half-1", second)]);
    } else {
        groups.push(("suspect", suspects));
    }
    Plan::Split { failure, groups }
}

/// Settles `outcome` for the batch as `view` saw it. `retry_at` gives the Unix ms before which
/// a batch retried after `failure` may not launch (the breaker's backoff). Applied once, by
/// compare-and-set: a dispatcher that settles second gets [`Settled::Stale`].
pub async fn settle(
    stager: &Stager,
    view: &BatchView,
    outcome: &Outcome,
    settings: DeadLetterSettings<'_>,
    retry_at: impl FnOnce(&Failure) -> u64,
) -> Result<Settled> {
    let keys = stager.keys();
    let ttl = settings.ttl_seconds;
    let failure = match outcome {
        Outcome::Succeeded => {
            let step = steps::close(keys, view, BatchState::Succeeded, None, ttl);
            return Ok(closed(stager.apply(&step, "closing a batch").await?, 0));
        }
        // Not an outcome of the batch: whoever adopts it follows the Job on.
        Outcome::Abandoned => return Ok(Settled::Stale),
        Outcome::Failed(failure) => failure,
    };
    let unfinished = unfinished(stager, &view.id).await?;
    let (runs, working) = stager.attribution(&view.id).await?;
    let attribution = Attribution {
        runs,
        working: working.into_iter().collect(),
    };
    match plan(failure, unfinished, &attribution) {
        Plan::Close { state, failure } => {
            let step = steps::close(keys, view, state, failure.as_ref(), ttl);
            Ok(closed(stager.apply(&step, "closing a batch").await?, 0))
        }
        Plan::Retry { failure, messages } => {
            let child = Child {
                id: child_id(&view.id, "retry"),
                frames: frames(&messages),
                not_before: retry_at(&failure),
            };
            let step = steps::replace(
                keys,
                view,
                BatchState::Retried,
                &failure,
                std::slice::from_ref(&child),
                ttl,
            );
            Ok(match stager.apply(&step, "retrying a batch whole").await? {
                Applied::Yes => Settled::Retry {
                    child: child.id,
                    failure,
                },
                _ => Settled::Stale,
            })
        }
        Plan::DeadLetter { failure, message } => {
            dead_letter(stager, view, &failure, (&message, runs), settings).await
        }
        Plan::Split { failure, groups } => {
            let children: Vec<Child> = groups
                .into_iter()
                .map(|(step, group)| Child {
                    id: child_id(&view.id, step),
                    frames: frames(&group),
                    not_before: 0,
                })
                .collect();
            let step = steps::replace(keys, view, BatchState::Split, &failure, &children, ttl);
            Ok(match stager.apply(&step, "splitting a batch").await? {
                Applied::Yes => Settled::Split {
                    children: children.into_iter().map(|c| c.id).collect(),
                },
                _ => Settled::Stale,
            })
        }
    }
}

fn closed(applied: Applied, dead: usize) -> Settled {
    match applied {
        Applied::Yes => Settled::Closed { dead },
        _ => Settled::Stale,
    }
}

fn frames(messages: &[Unfinished]) -> Vec<Vec<u8>> {
    messages.iter().map(|u| u.message.encode()).collect()
}

/// The batch's messages without a result, one per id, in staged order.
async fn unfinished(stager: &Stager, batch_id: &str) -> Result<Vec<Unfinished>> {
    let mut seen = HashSet::new();
    let messages: Vec<Unfinished> = stager
        .frames(batch_id)
        .await?
        .iter()
        .filter_map(|frame| StagedMessage::decode(frame).ok())
        .map(|message| {
            let id = message
                .resolve_id(Envelope::id_hint(&message.body).as_deref())
                .to_owned();
            Unfinished { id, message }
        })
        .filter(|u| seen.insert(u.id.clone()))
        .collect();
    let ids: Vec<&str> = messages.iter().map(|u| u.id.as_str()).collect();
    let done = stager.results_exist(&ids).await?;
    Ok(messages
        .into_iter()
        .zip(done)
        .filter(|(_, done)| !done)
        .map(|(u, _)| u)
        .collect())
}

/// Publishes the message to the dead-letter queue (confirmed), then gives it a `dead` result,
/// indexes it in `{prefix}:dead` and closes the batch as `failed`, in one step.
async fn dead_letter(
    stager: &Stager,
    view: &BatchView,
    failure: &Failure,
    (message, runs): (&Unfinished, u64),
    settings: DeadLetterSettings<'_>,
) -> Result<Settled> {
    let reason = format!("gave up: the message's Job failed on its own: {failure}");
    settings
        .queue
        .publish(&DeadLetter {
            id: &message.id,
            batch: &view.id,
            reason: &reason,
            attempts: runs,
            message_id: message.message.message_id.as_deref(),
            body: &message.message.body,
        })
        .await?;
    let records = [ResultRecord {
        id: message.id.clone(),
        status: Status::Dead,
        detail: reason.clone(),
        kernel: String::new(),
        batch: view.id.clone(),
        duration_us: 0,
        finished_at: unix_millis(),
        reply: message.message.reply(),
    }];
    let results = ResultWrite::new(
        stager.keys(),
        &view.id,
        &records,
        settings.ttl_seconds,
        settings.stream_maxlen,
    );
    let entry = IndexEntry {
        id: message.id.clone(),
        batch: view.id.clone(),
        reason,
        attempts: runs,
        body: None,
    };
    let step = steps::dead_letter(
        stager.keys(),
        view,
        failure,
        &[entry.to_json()],
        (settings.ttl_seconds, settings.index_max),
    );
    let applied = stager
        .apply_with_results(&step, &results, "dead-lettering a message")
        .await?;
    Ok(closed(applied, 1))
}

#[cfg(test)]
mod tests;
