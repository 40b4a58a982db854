//! Recording how a batch's Job ended, and telling an outage from a poison message.
//!
//! A succeeded Job closes its batch. A failed one is judged by what the launcher saw
//! ([`Cause`]) and by what the runner recorded in Redis before it died (see the runner's
//! `claims`): how many runs reached the batch, and which ids they were working on.
//!
//! - **Outage**: the Job could not do its work (an outage exit code, an image that cannot be
//!   pulled, a refused or evicted pod, a vanished Job), or no runner ever reached the batch, or
//!   it died with nothing attributable in hand. The unfinished messages are staged again,
//!   whole, as one new batch, to be launched after a backoff ([`crate::breaker`]); the failed
//!   batch is closed as `retried`. Never split, never dead-lettered.
//! - **Crash**: a runner died (or hung) while working. The *suspects* are the ids it recorded
//!   as working that still have no result; every other unfinished message is innocent and is
//!   staged again as a batch of its own. The suspects are split in two halves, recursively,
//!   until the culprit is alone; a message whose Job still fails alone gets a `dead` result
//!   with the Job's failure reason, and its envelope is pushed to `{prefix}:dead`. The
//!   suspects are the few messages in hand (two per runner thread for slow kernels), so one
//!   poison message costs about 2·⌈log2 s⌉ + 1 extra Jobs for s suspects, not 2·⌈log2 n⌉ for a
//!   batch of n.

use crate::error::Result;
use crate::launcher::{Cause, Outcome};
use crate::stage::Stager;
use serde_json::json;
use sluice_contract::record::{ResultWrite, WRITE_RESULTS_LUA, unix_millis};
use sluice_contract::{BatchState, Envelope, ResultRecord, StagedMessage, Status};
use std::collections::HashSet;

/// Settings the dead-letter records need.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterSettings {
    /// Result expiry in seconds (0 = keep).
    pub ttl_seconds: u64,
    /// Approximate results stream cap.
    pub stream_maxlen: u64,
}

/// What recording an outcome led to.
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
    /// `child`, to be launched after a backoff.
    Retry {
        /// The new batch's id.
        child: String,
        /// Why the Job could not do its work.
        reason: String,
    },
}

impl Settled {
    /// Whether the Job's runner reached its work (anything but an outage).
    pub fn reached_work(&self) -> bool {
        !matches!(self, Self::Retry { .. })
    }
}

/// A message of a failed batch that has no result yet.
struct Unfinished {
    id: String,
    message: StagedMessage,
}

/// Records `outcome` for `batch_id`.
pub async fn settle(
    stager: &Stager,
    batch_id: &str,
    outcome: &Outcome,
    settings: DeadLetterSettings,
) -> Result<Settled> {
    let (reason, cause) = match outcome {
        Outcome::Succeeded => {
            stager.close(batch_id, BatchState::Succeeded, None).await?;
            return Ok(Settled::Closed { dead: 0 });
        }
        Outcome::Abandoned => return Ok(Settled::Closed { dead: 0 }),
        Outcome::Failed { reason, cause } => (reason.as_str(), *cause),
    };
    let unfinished = unfinished(stager, batch_id).await?;
    if unfinished.is_empty() {
        // Every message has its result: whatever failed afterwards cost nothing.
        stager
            .close(batch_id, BatchState::Succeeded, Some(reason))
            .await?;
        return Ok(Settled::Closed { dead: 0 });
    }
    let whole = frames(&unfinished, &[]);
    let (runs, working) = stager.attribution(batch_id).await?;
    let working: HashSet<String> = working.into_iter().collect();
    let (suspects, innocents): (Vec<Unfinished>, Vec<Unfinished>) = unfinished
        .into_iter()
        .partition(|u| working.contains(&u.id));
    if cause == Cause::Outage || runs == 0 || suspects.is_empty() {
        let why = match (cause, runs) {
            (Cause::Outage, _) => reason.to_owned(),
            (_, 0) => format!("{reason} (its runner never reached the batch)"),
            _ => format!("{reason} (with no message in hand)"),
        };
        let child = (uuid::Uuid::now_v7().to_string(), whole);
        stager
            .replace(
                batch_id,
                BatchState::Retried,
                &why,
                std::slice::from_ref(&child),
            )
            .await?;
        return Ok(Settled::Retry {
            child: child.0,
            reason: why,
        });
    }
    if suspects.len() == 1 && innocents.is_empty() {
        let dead = dead_letter(stager, batch_id, reason, &suspects, settings).await?;
        stager
            .close(batch_id, BatchState::Failed, Some(reason))
            .await?;
        return Ok(Settled::Closed { dead });
    }
    let mut groups: Vec<&[Unfinished]> = Vec::new();
    if !innocents.is_empty() {
        groups.push(&innocents);
    }
    if suspects.len() > 1 {
        let (first, second) = suspects.split_at(suspects.len() / 2);
        groups.extend([first, second]);
    } else {
        groups.push(&suspects);
    }
    let children: Vec<(String, Vec<Vec<u8>>)> = groups
        .into_iter()
        .map(|group| (uuid::Uuid::now_v7().to_string(), frames(group, &[])))
        .collect();
    stager
        .replace(batch_id, BatchState::Split, reason, &children)
        .await?;
    Ok(Settled::Split {
        children: children.into_iter().map(|(id, _)| id).collect(),
    })
}

fn frames(first: &[Unfinished], then: &[Unfinished]) -> Vec<Vec<u8>> {
    first
        .iter()
        .chain(then)
        .map(|u| u.message.encode())
        .collect()
}

/// The batch's messages without a result, one per id, in staged order.
async fn unfinished(stager: &Stager, batch_id: &str) -> Result<Vec<Unfinished>> {
    let keys = stager.keys().clone();
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
    let done: Vec<bool> = stager
        .retry("checking results of a failed batch", |mut con| {
            let mut pipe = redis::pipe();
            for u in &messages {
                pipe.exists(keys.result(&u.id));
            }
            async move { pipe.query_async(&mut con).await }
        })
        .await?;
    Ok(messages
        .into_iter()
        .zip(done)
        .filter(|(_, done)| !done)
        .map(|(u, _)| u)
        .collect())
}

/// Gives each message a `dead` result and pushes its envelope to `{prefix}:dead`.
async fn dead_letter(
    stager: &Stager,
    batch_id: &str,
    reason: &str,
    messages: &[Unfinished],
    settings: DeadLetterSettings,
) -> Result<usize> {
    if messages.is_empty() {
        return Ok(0);
    }
    let keys = stager.keys().clone();
    let reason = format!("gave up: the message's Job failed on its own: {reason}");
    let finished_at = unix_millis();
    let records: Vec<ResultRecord> = messages
        .iter()
        .map(|Unfinished { id, .. }| ResultRecord {
            id: id.clone(),
            status: Status::Dead,
            detail: reason.clone(),
            kernel: String::new(),
            batch: batch_id.to_owned(),
            duration_us: 0,
            finished_at,
        })
        .collect();
    let call = ResultWrite::new(
        &keys,
        batch_id,
        &records,
        settings.ttl_seconds,
        settings.stream_maxlen,
    );
    let dead: Vec<String> = messages
        .iter()
        .map(|Unfinished { id, message }| {
            json!({
                "id": id,
                "batch": batch_id,
                "reason": reason,
                "body": String::from_utf8_lossy(&message.body),
            })
            .to_string()
        })
        .collect();
    stager
        .retry("dead-lettering messages", |mut con| {
            let mut pipe = redis::pipe();
            pipe.cmd("EVAL")
                .arg(WRITE_RESULTS_LUA)
                .arg(call.keys.len())
                .arg(&call.keys[..])
                .arg(&call.args[..])
                .ignore()
                .lpush(keys.dead(), &dead[..])
                .ignore();
            async move { pipe.query_async::<()>(&mut con).await }
        })
        .await?;
    Ok(messages.len())
}
