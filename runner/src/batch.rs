//! Loading a staged batch and turning its frames into tasks.
//!
//! Every frame becomes exactly one task keyed by its resolved id, or is dropped as a duplicate
//! of an earlier id in the same batch. Invalid bodies become tasks that are already errors, so
//! they get a result like any other message.

use crate::error::{Error, Result};
use crate::store::Store;
use serde_json::Value;
use sluice_contract::record::Reply;
use sluice_contract::{Envelope, EnvelopeError, Keys, RunnerEnv, StagedMessage};
use std::collections::HashSet;

/// One message to run, or one already judged invalid.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The id its result is keyed by.
    pub id: String,
    /// The kernel it names (or the default); empty when the body could not be read.
    pub kernel: String,
    /// The kernel's input, or the reason the message is invalid.
    pub work: Result<Value, String>,
    /// Where its result is replied (its `reply_to`), if anywhere.
    pub reply: Option<Reply>,
}

/// What a batch's frames became.
#[derive(Debug, Default)]
pub struct Plan {
    /// Tasks with distinct ids.
    pub tasks: Vec<Task>,
    /// Frames whose id repeated an earlier one in the batch (one result per id).
    pub duplicates: usize,
    /// Frames that could not be decoded at all (a dispatcher bug; logged).
    pub corrupt: usize,
}

/// Reads the batch's frames from Redis.
pub fn load(store: &mut Store, keys: &Keys, batch_id: &str) -> Result<Vec<Vec<u8>>> {
    let list = keys.batch_messages(batch_id);
    let state = keys.batch(batch_id);
    let (frames, exists): (Vec<Vec<u8>>, bool) = store.call("loading the batch", |con| {
        redis::pipe().lrange(&list, 0, -1).exists(&state).query(con)
    })?;
    if frames.is_empty() && !exists {
        return Err(Error::BatchNotFound {
            batch_id: batch_id.to_owned(),
        });
    }
    Ok(frames)
}

/// Decodes frames into tasks, one per distinct id.
pub fn plan(frames: &[Vec<u8>], env: &RunnerEnv) -> Plan {
    let mut plan = Plan::default();
    let mut seen = HashSet::new();
    for frame in frames {
        let Ok(message) = StagedMessage::decode(frame) else {
            tracing::error!(batch = %env.batch_id, "skipping a corrupt staged frame");
            plan.corrupt += 1;
            continue;
        };
        let task = task_for(&message, env);
        if seen.insert(task.id.clone()) {
            plan.tasks.push(task);
        } else {
            plan.duplicates += 1;
        }
    }
    plan
}

fn task_for(message: &StagedMessage, env: &RunnerEnv) -> Task {
    if let Some(size) = message.dropped_size {
        let hint = Envelope::id_hint(&message.body);
        let reason = EnvelopeError::TooLarge {
            size,
            limit: env.max_message_bytes,
        };
        return invalid(message, hint.as_deref(), &reason);
    }
    match Envelope::decode(&message.body, env.max_message_bytes) {
        Ok(envelope) => Task {
            id: message.resolve_id(envelope.id.as_deref()).to_owned(),
            kernel: envelope
                .kernel
                .unwrap_or_else(|| env.default_kernel.clone()),
            work: Ok(envelope.input),
            reply: message.reply(),
        },
        Err(e) => {
            let hint = Envelope::id_hint(&message.body);
            invalid(message, hint.as_deref(), &e)
        }
    }
}

fn invalid(message: &StagedMessage, hint: Option<&str>, reason: &EnvelopeError) -> Task {
    Task {
        id: message.resolve_id(hint).to_owned(),
        kernel: String::new(),
        work: Err(reason.to_string()),
        reply: message.reply(),
    }
}

/// Drops the tasks whose id already has a result; returns how many were dropped.
pub fn skip_done(store: &mut Store, keys: &Keys, tasks: &mut Vec<Task>) -> Result<usize> {
    if tasks.is_empty() {
        return Ok(0);
    }
    let done: Vec<bool> = store.call("checking for existing results", |con| {
        let mut pipe = redis::pipe();
        for task in tasks.iter() {
            pipe.exists(keys.result(&task.id));
        }
        pipe.query(con)
    })?;
    let before = tasks.len();
    let mut flags = done.into_iter();
    tasks.retain(|_| !flags.next().unwrap_or(false));
    Ok(before - tasks.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> RunnerEnv {
        sluice_contract::RunnerEnv {
            batch_id: "b".into(),
            key_prefix: "t".into(),
            result_ttl_seconds: 0,
            max_message_bytes: 64,
            default_kernel: "modsum".into(),
            results_maxlen: 10,
            redis_retry_seconds: 1,
            result_chunk: 1,
            result_flush_ms: 1,
            kernels_file: None,
        }
    }

    fn frame(mid: Option<&str>, fid: &str, body: &[u8]) -> Vec<u8> {
        StagedMessage {
            message_id: mid.map(str::to_owned),
            fallback_id: fid.into(),
            reply_to: None,
            correlation_id: None,
            dropped_size: None,
            body: body.to_vec(),
        }
        .encode()
    }

    #[test]
    fn valid_invalid_and_duplicate_messages_are_planned() {
        let frames = vec![
            frame(None, "f1", br#"{"id":"a","kernel":"echo","input":1}"#),
            frame(Some("a"), "f2", b"plain"),
            frame(None, "f3", b"\xff"),
            frame(None, "f4", br#"{"id":"c","kernel":5}"#),
            b"garbage".to_vec(),
        ];
        let plan = plan(&frames, &env());
        assert_eq!((plan.duplicates, plan.corrupt), (1, 1));
        assert_eq!(
            plan.tasks[0],
            Task {
                id: "a".into(),
                kernel: "echo".into(),
                work: Ok(json!(1)),
                reply: None,
            }
        );
        assert_eq!(plan.tasks[1].id, "f3");
        assert!(plan.tasks[1].work.as_ref().unwrap_err().contains("UTF-8"));
        assert_eq!(plan.tasks[2].id, "c");
    }

    #[test]
    fn dropped_oversized_bodies_become_errors_with_their_size() {
        let mut m = StagedMessage::decode(&frame(Some("big"), "f", b"")).unwrap();
        m.dropped_size = Some(5000);
        let plan = plan(&[m.encode()], &env());
        assert_eq!(plan.tasks[0].id, "big");
        assert!(
            plan.tasks[0]
                .work
                .as_ref()
                .unwrap_err()
                .contains("5000 bytes")
        );
    }
}
