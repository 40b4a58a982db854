//! Recording how a batch's Job ended.
//!
//! A succeeded Job closes its batch. A failed Job (every retry used, or its deadline passed)
//! leaves some messages without a result, and one of them is probably poison: something that
//! kills the runner (a segfault, an OOM kill, a hang). The unfinished messages are split into
//! two halves staged as new batches, which are launched in turn, recursively, until the
//! culprit is alone; a message whose Job still fails alone gets a `dead` result with the Job's
//! failure reason, and its envelope is pushed to `{prefix}:dead`. One poison message among n
//! costs at most 2·⌈log2 n⌉ extra Jobs, and every other message ends with its own result.

use crate::error::Result;
use crate::launcher::Outcome;
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
    /// The batch was split into these staged batches, to be launched.
    Split {
        /// The two halves' batch ids.
        children: Vec<String>,
    },
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
    let reason = match outcome {
        Outcome::Succeeded => {
            stager.close(batch_id, BatchState::Succeeded, None).await?;
            return Ok(Settled::Closed { dead: 0 });
        }
        Outcome::Abandoned => return Ok(Settled::Closed { dead: 0 }),
        Outcome::Failed { reason } => reason,
    };
    let unfinished = unfinished(stager, batch_id).await?;
    if unfinished.len() > 1 {
        let (first, second) = unfinished.split_at(unfinished.len() / 2);
        let children: Vec<(String, Vec<Vec<u8>>)> = [first, second]
            .into_iter()
            .map(|half| {
                (
                    uuid::Uuid::now_v7().to_string(),
                    half.iter().map(|u| u.message.encode()).collect(),
                )
            })
            .collect();
        stager.split(batch_id, reason, &children).await?;
        return Ok(Settled::Split {
            children: children.into_iter().map(|(id, _)| id).collect(),
        });
    }
    let dead = dead_letter(stager, batch_id, reason, &unfinished, settings).await?;
    stager
        .close(batch_id, BatchState::Failed, Some(reason))
        .await?;
    Ok(Settled::Closed { dead })
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
