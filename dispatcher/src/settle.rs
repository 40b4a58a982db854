//! Recording how a batch's Job ended.
//!
//! A succeeded Job closes its batch. A failed Job (every retry used, or its deadline passed)
//! leaves some messages without a result: each of those is given a `dead` result with the
//! Job's failure reason and its envelope is pushed to `{prefix}:dead`, so no message is
//! silently lost.

use crate::error::Result;
use crate::launcher::Outcome;
use crate::stage::Stager;
use serde_json::json;
use sluice_contract::record::{WRITE_RESULT_LUA, unix_millis};
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

/// Records `outcome` for `batch_id`; returns how many messages were dead-lettered.
pub async fn settle(
    stager: &Stager,
    batch_id: &str,
    outcome: &Outcome,
    settings: DeadLetterSettings,
) -> Result<usize> {
    match outcome {
        Outcome::Succeeded => {
            stager.close(batch_id, BatchState::Succeeded, None).await?;
            Ok(0)
        }
        Outcome::Failed { reason } => {
            let dead = dead_letter_unfinished(stager, batch_id, reason, settings).await?;
            stager
                .close(batch_id, BatchState::Failed, Some(reason))
                .await?;
            Ok(dead)
        }
        Outcome::Abandoned => Ok(0),
    }
}

/// Gives every message of the batch that has no result a `dead` result.
async fn dead_letter_unfinished(
    stager: &Stager,
    batch_id: &str,
    reason: &str,
    settings: DeadLetterSettings,
) -> Result<usize> {
    let keys = stager.keys().clone();
    let mut seen = HashSet::new();
    let messages: Vec<(String, StagedMessage)> = stager
        .frames(batch_id)
        .await?
        .iter()
        .filter_map(|frame| StagedMessage::decode(frame).ok())
        .map(|m| {
            (
                m.resolve_id(Envelope::id_hint(&m.body).as_deref())
                    .to_owned(),
                m,
            )
        })
        .filter(|(id, _)| seen.insert(id.clone()))
        .collect();
    let done: Vec<bool> = stager
        .retry("checking results of a failed batch", |mut con| {
            let mut pipe = redis::pipe();
            for (id, _) in &messages {
                pipe.exists(keys.result(id));
            }
            async move { pipe.query_async(&mut con).await }
        })
        .await?;
    let unfinished: Vec<_> = messages
        .iter()
        .zip(done)
        .filter(|(_, done)| !done)
        .map(|(m, _)| m)
        .collect();
    if unfinished.is_empty() {
        return Ok(0);
    }
    let reason = format!("gave up after the Job failed: {reason}");
    stager
        .retry("dead-lettering messages", |mut con| {
            let mut pipe = redis::pipe();
            for (id, message) in &unfinished {
                let record = ResultRecord {
                    id: id.clone(),
                    status: Status::Dead,
                    detail: reason.clone(),
                    kernel: String::new(),
                    batch: batch_id.to_owned(),
                    duration_us: 0,
                    finished_at: unix_millis(),
                };
                pipe.cmd("EVAL")
                    .arg(WRITE_RESULT_LUA)
                    .arg(4)
                    .arg(&record.script_keys(&keys)[..]);
                pipe.arg(&record.script_args(settings.ttl_seconds, settings.stream_maxlen)[..])
                    .ignore();
                let entry = json!({
                    "id": id,
                    "batch": batch_id,
                    "reason": reason,
                    "body": String::from_utf8_lossy(&message.body),
                });
                pipe.lpush(keys.dead(), entry.to_string()).ignore();
            }
            async move { pipe.query_async::<()>(&mut con).await }
        })
        .await?;
    Ok(unfinished.len())
}
