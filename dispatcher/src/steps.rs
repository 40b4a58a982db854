//! What Redis holds of an open batch ([`BatchView`]), and the steps that move it on, each a
//! compare-and-set on its generation ([`crate::cas`]).
//!
//! The batch record (`{prefix}:batch:{id}`) carries, besides what users read (`state`, `size`,
//! `reason`, `kind`, `parent`, …): `gen`, bumped by every step; `owner`, the dispatcher whose
//! lease covers a launched batch; `not_before`, the Unix ms before which a batch retried after
//! an outage is not launched. Ids of the batches a step creates are derived from the parent and
//! the step ([`child_id`]), so a repeated decision creates the same children, not new ones.

use crate::cas::{MAX_VALUES, Step};
use crate::job;
use crate::reason::Failure;
use sha2::{Digest, Sha256};
use sluice_contract::record::unix_millis;
use sluice_contract::{BatchState, Keys};
use std::collections::HashMap;

/// An open batch as Redis records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchView {
    /// The batch id.
    pub id: String,
    /// Its state; `None` when the record holds none this version knows.
    pub state: Option<BatchState>,
    /// Its generation, as stored (empty for a record written before generations).
    pub generation: String,
    /// The dispatcher that launched or adopted it.
    pub owner: Option<String>,
    /// Not to be launched before this Unix ms (0: at once).
    pub not_before: u64,
    /// Messages staged.
    pub size: usize,
}

impl BatchView {
    /// The view of a record's fields; `None` when the record is gone.
    pub fn from_fields(id: &str, fields: &HashMap<String, String>) -> Option<Self> {
        if fields.is_empty() {
            return None;
        }
        let get = |name: &str| fields.get(name).map(String::as_str);
        Some(Self {
            id: id.to_owned(),
            state: get("state").and_then(BatchState::parse),
            generation: get("gen").unwrap_or_default().to_owned(),
            owner: get("owner").filter(|o| !o.is_empty()).map(str::to_owned),
            not_before: get("not_before").and_then(|v| v.parse().ok()).unwrap_or(0),
            size: get("size").and_then(|v| v.parse().ok()).unwrap_or(0),
        })
    }

    /// The generation a step on this view writes.
    pub fn next_generation(&self) -> String {
        (self.generation.parse::<u64>().unwrap_or(0) + 1).to_string()
    }
}

/// A batch a step creates: a split half, the innocents of a crash, a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// Its id, from [`child_id`].
    pub id: String,
    /// Its staged frames.
    pub frames: Vec<Vec<u8>>,
    /// Not to be launched before this Unix ms (0: at once).
    pub not_before: u64,
}

/// The id of the batch that step `step` of batch `parent` creates: the same for every
/// dispatcher that takes that step, a UUID-shaped hash so Job names stay short.
pub fn child_id(parent: &str, step: &str) -> String {
    let digest = Sha256::digest(format!("{parent}/{step}").as_bytes());
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(bytes).to_string()
}

fn push_frames(step: &mut Step, key: &str, frames: &[Vec<u8>]) {
    step.command(["DEL".as_bytes(), key.as_bytes()]);
    for chunk in frames.chunks(MAX_VALUES) {
        let head = ["RPUSH".as_bytes(), key.as_bytes()];
        step.command(head.into_iter().chain(chunk.iter().map(Vec::as_slice)));
    }
}

fn hset(step: &mut Step, key: &str, fields: &[(&str, &str)]) {
    let mut args = vec!["HSET", key];
    for (field, value) in fields {
        args.extend([*field, *value]);
    }
    step.command(args);
}

/// What the broker said of a fresh batch's deliveries, recorded on the batch: how many were
/// redelivered, and the highest `x-delivery-count` (quorum queues count returns against
/// their `x-delivery-limit`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redeliveries {
    /// Deliveries with the redelivered flag.
    pub redelivered: usize,
    /// The highest `x-delivery-count` header among them (0 when none has one).
    pub max_delivery_count: u64,
}

/// Where a fresh batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement<'a> {
    /// Launched by `owner` now, if fewer than `cap` batches are in flight.
    Running {
        /// The dispatcher launching it.
        owner: &'a str,
        /// The shared in-flight cap.
        cap: usize,
    },
    /// Parked: staged with no owner, for whichever dispatcher has a slot first (its
    /// deliveries could not wait unacked any longer, or the dispatcher is pausing).
    Parked,
}

/// Stages a fresh batch (it must not exist yet) as `placement` says.
pub fn stage_fresh(
    keys: &Keys,
    batch_id: &str,
    frames: &[Vec<u8>],
    placement: Placement<'_>,
    history: Redeliveries,
) -> Step {
    let batch = keys.batch(batch_id);
    let mut step = Step::new(batch.clone(), "");
    if let Placement::Running { cap, .. } = placement {
        step = step.under_cap(keys.running_batches(), cap);
    }
    push_frames(&mut step, &keys.batch_messages(batch_id), frames);
    let (size, now) = (frames.len().to_string(), unix_millis().to_string());
    let job = job::job_name(batch_id);
    let redelivered = history.redelivered.to_string();
    let delivery_count = history.max_delivery_count.to_string();
    let mut fields = vec![
        ("gen", "1"),
        ("size", &size),
        ("job", &job),
        ("created_at", &now),
        ("redelivered", &redelivered),
        ("delivery_count_max", &delivery_count),
    ];
    match placement {
        Placement::Running { owner, .. } => {
            fields.extend([("state", BatchState::Running.as_str()), ("owner", owner)]);
        }
        Placement::Parked => fields.push(("state", BatchState::Staged.as_str())),
    }
    hset(&mut step, &batch, &fields);
    step.command(["SADD", &keys.open_batches(), batch_id]);
    if matches!(placement, Placement::Running { .. }) {
        step.command(["SADD", &keys.running_batches(), batch_id]);
    }
    step.command(["HINCRBY", &keys.stats(), "received", &size])
        .command(["HINCRBY", &keys.stats(), "batches", "1"]);
    step
}

/// A staged batch launched by `owner`, if fewer than `cap` are in flight.
pub fn launch(keys: &Keys, view: &BatchView, owner: &str, cap: usize) -> Step {
    let batch = keys.batch(&view.id);
    let mut step =
        Step::new(batch.clone(), &view.generation).under_cap(keys.running_batches(), cap);
    hset(
        &mut step,
        &batch,
        &[
            ("state", BatchState::Running.as_str()),
            ("gen", &view.next_generation()),
            ("owner", owner),
        ],
    );
    step.command(["SADD", &keys.running_batches(), &view.id]);
    step
}

/// A launched batch whose owner is gone, now followed by `owner`.
pub fn adopt(keys: &Keys, view: &BatchView, owner: &str) -> Step {
    let batch = keys.batch(&view.id);
    let mut step = Step::new(batch.clone(), &view.generation);
    hset(
        &mut step,
        &batch,
        &[("gen", &view.next_generation()), ("owner", owner)],
    );
    // Launched batches hold a slot; one that lost it (an older version's) takes it again.
    step.command(["SADD", &keys.running_batches(), &view.id]);
    step
}

/// A launched batch whose runner was stopped with its dispatcher: staged again, for anyone.
pub fn requeue(keys: &Keys, view: &BatchView) -> Step {
    let batch = keys.batch(&view.id);
    let mut step = Step::new(batch.clone(), &view.generation);
    hset(
        &mut step,
        &batch,
        &[
            ("state", BatchState::Staged.as_str()),
            ("gen", &view.next_generation()),
        ],
    );
    step.command(["HDEL", &batch, "owner"])
        .command(["SREM", &keys.running_batches(), &view.id]);
    step
}

/// Closes the batch as `state`, with the failure it ended on, if any.
pub fn close(
    keys: &Keys,
    view: &BatchView,
    state: BatchState,
    failure: Option<&Failure>,
    ttl_seconds: u64,
) -> Step {
    let mut step = Step::new(keys.batch(&view.id), &view.generation);
    close_into(&mut step, keys, view, state, failure, ttl_seconds);
    step
}

fn close_into(
    step: &mut Step,
    keys: &Keys,
    view: &BatchView,
    state: BatchState,
    failure: Option<&Failure>,
    ttl_seconds: u64,
) {
    let batch = keys.batch(&view.id);
    let now = unix_millis().to_string();
    let next = view.next_generation();
    let mut fields = vec![
        ("state", state.as_str()),
        ("gen", next.as_str()),
        ("finished_at", now.as_str()),
    ];
    if let Some(failure) = failure {
        fields.extend([
            ("reason", failure.reason.as_str()),
            ("kind", failure.kind.as_str()),
        ]);
    }
    hset(step, &batch, &fields);
    step.command(["SREM", &keys.open_batches(), &view.id])
        .command(["SREM", &keys.running_batches(), &view.id])
        .command(["DEL", &keys.batch_messages(&view.id)])
        .command(["DEL", &keys.batch_working(&view.id)]);
    if ttl_seconds > 0 {
        step.command(["EXPIRE", &batch, &ttl_seconds.to_string()]);
    }
}

/// Replaces a failed batch by `children` (staged, `parent` naming it) and closes it as `state`
/// (`split` to isolate a poison message, `retried` after an outage).
pub fn replace(
    keys: &Keys,
    view: &BatchView,
    state: BatchState,
    failure: &Failure,
    children: &[Child],
    ttl_seconds: u64,
) -> Step {
    let mut step = Step::new(keys.batch(&view.id), &view.generation);
    let now = unix_millis().to_string();
    for child in children {
        let batch = keys.batch(&child.id);
        push_frames(&mut step, &keys.batch_messages(&child.id), &child.frames);
        let (size, job) = (child.frames.len().to_string(), job::job_name(&child.id));
        let not_before = child.not_before.to_string();
        hset(
            &mut step,
            &batch,
            &[
                ("state", BatchState::Staged.as_str()),
                ("gen", "1"),
                ("size", &size),
                ("job", &job),
                ("created_at", &now),
                ("parent", &view.id),
                ("not_before", &not_before),
            ],
        );
        step.command(["SADD", &keys.open_batches(), &child.id])
            .command(["HINCRBY", &keys.stats(), "batches", "1"]);
    }
    close_into(&mut step, keys, view, state, Some(failure), ttl_seconds);
    step
}

/// Closes a batch whose one message is given up on, pushing its dead-index `entries` (the
/// index keeps its newest `index_max`); the `dead` result is written by the same script
/// ([`crate::stage::Stager::apply_with_results`]).
pub fn dead_letter(
    keys: &Keys,
    view: &BatchView,
    failure: &Failure,
    entries: &[String],
    (ttl_seconds, index_max): (u64, u64),
) -> Step {
    let mut step = Step::new(keys.batch(&view.id), &view.generation);
    let dead = keys.dead();
    step.command(
        ["LPUSH", dead.as_str()]
            .into_iter()
            .chain(entries.iter().map(String::as_str)),
    );
    let last = index_max.saturating_sub(1).to_string();
    step.command(["LTRIM", dead.as_str(), "0", last.as_str()]);
    close_into(
        &mut step,
        keys,
        view,
        BatchState::Failed,
        Some(failure),
        ttl_seconds,
    );
    step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_ids_follow_from_parent_and_step() {
        assert_eq!(child_id("b1", "retry"), child_id("b1", "retry"));
        assert_ne!(child_id("b1", "retry"), child_id("b1", "half-0"));
        assert_ne!(child_id("b1", "retry"), child_id("b2", "retry"));
        let name = job::job_name(&child_id("b1", "retry"));
        assert!(name.len() <= 63, "{name}");
    }

    #[test]
    fn a_view_reads_its_fields_and_a_missing_record_is_none() {
        assert_eq!(BatchView::from_fields("b", &HashMap::new()), None);
        let fields: HashMap<String, String> = [
            ("state", "running"),
            ("gen", "4"),
            ("owner", "d1"),
            ("size", "3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let view = BatchView::from_fields("b", &fields).expect("a view");
        assert_eq!(view.state, Some(BatchState::Running));
        assert_eq!(
            (view.generation.as_str(), view.next_generation().as_str()),
            ("4", "5")
        );
        assert_eq!(view.owner.as_deref(), Some("d1"));
        assert_eq!((view.size, view.not_before), (3, 0));
    }
}
