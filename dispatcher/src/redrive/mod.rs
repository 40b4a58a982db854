//! `dispatcher redrive`: puts dead letters back on the queue, each exactly once, so that
//! messages that died of a bug since fixed run again.
//!
//! A dead letter is a message in the dead-letter queue (published there by
//! [`crate::dead_letters`], headers [`sluice_contract::dead`]), an entry of the index
//! `{prefix}:dead` and its message's `status=dead` result. A run fetches every copy in the
//! queue unacked ([`queue`]); for each selected dead letter:
//! 1. one script moves the entry from `{prefix}:dead` to `{prefix}:redrive` and deletes the
//!    `dead` result (only if it is still `dead`), so no two runs take it and a crash leaves it
//!    in exactly one of the two lists (a copy whose entry the index's cap dropped is put back
//!    in the index first);
//! 2. the message is published to `QUEUE` as it arrived, and the broker's confirm is awaited;
//! 3. its copies are acked, then the entry leaves `{prefix}:redrive`.
//!
//! A run first re-publishes what an interrupted run left in `{prefix}:redrive` (from its copy,
//! which the interrupted run never acked; one without a copy was confirmed and acked, and is
//! only released), so publishing is at least once: a crash between 2 and 3 publishes the
//! message twice, and the write-once result makes the second delivery a no-op. One run at a
//! time holds the prefix's lease (`{prefix}:redrive:lock`, renewed by every take), so a live
//! run's taken entries are never mistaken for leftovers. Counters are never decremented: `dead`
//! keeps counting deaths, a `redriven` counter counts messages taken back, and the index's
//! length is what is dead now. Index entries of sluice 0.1 hold the body and have no copy:
//! they are published from the body.
//!
//! [`plan`] reads what a run would do (the dry run); [`run`] does it.

mod plan;
mod queue;
mod requeue;
mod run;
mod store;

pub use plan::{Plan, plan};
pub use run::{Summary, run};
pub use store::LEASE;

use crate::config::Config;
use crate::error::Result;
use queue::Copy;
use sluice_contract::Keys;
use sluice_contract::dead::IndexEntry;
use std::collections::{HashMap, HashSet};
use store::Store;

/// Longest split chain followed for `--batch`: bisection of any real batch is far shallower.
const MAX_LINEAGE: usize = 64;

/// Which dead letters to redrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every one.
    All,
    /// Those of these message ids.
    Ids(Vec<String>),
    /// Those that died in these batches, or in batches split from them: the batch a message
    /// died in alone is a descendant of the batch it arrived in.
    Batches(Vec<String>),
}

/// A dead letter: an entry of `{prefix}:dead`, or a copy in the dead-letter queue whose
/// entry is no longer in the index (it keeps only the newest `DEAD_INDEX_MAX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id its result is keyed by.
    pub id: String,
    /// The batch it died in (alone, after bisection).
    pub batch: String,
    /// Why it was given up on.
    pub reason: String,
    /// The body, only in index entries of sluice 0.1 (later ones are in the queue).
    pub body: Option<String>,
    /// The entry exactly as stored: what the take script must match.
    pub entry: String,
    /// Whether `entry` is in the index (else a take puts it back first).
    pub indexed: bool,
}

impl DeadLetter {
    /// Reads an index entry; `None` if it lacks an id.
    pub fn parse(entry: String) -> Option<Self> {
        let fields = IndexEntry::parse(&entry)?;
        Some(Self {
            id: fields.id,
            batch: fields.batch,
            reason: fields.reason,
            body: fields.body,
            entry,
            indexed: true,
        })
    }

    /// A copy in the queue with no index entry.
    fn unindexed(copy: &Copy) -> Self {
        let entry = IndexEntry {
            id: copy.id.clone(),
            batch: copy.batch.clone(),
            reason: copy.reason.clone(),
            attempts: copy.attempts,
            body: None,
        };
        Self {
            id: copy.id.clone(),
            batch: copy.batch.clone(),
            reason: copy.reason.clone(),
            body: None,
            entry: entry.to_json(),
            indexed: false,
        }
    }
}

/// A selected dead letter and its message's result status now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The entry.
    pub letter: DeadLetter,
    /// `Some("dead")` as expected; `ok`/`error` if the message finished since (the entry is
    /// stale and is only removed); `None` if its result expired.
    pub status: Option<String>,
}

impl Candidate {
    /// Whether redriving it publishes it (rather than only dropping a stale entry).
    pub fn publishes(&self) -> bool {
        self.status.as_deref().is_none_or(|s| s == "dead")
    }
}

/// The letters `selector` picks, and the requested ids that have none.
async fn select(
    store: &mut Store,
    selector: &Selector,
    letters: Vec<DeadLetter>,
) -> Result<(Vec<DeadLetter>, Vec<String>)> {
    match selector {
        Selector::All => Ok((letters, Vec::new())),
        Selector::Ids(ids) => {
            let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
            let picked: Vec<DeadLetter> = letters
                .into_iter()
                .filter(|l| wanted.contains(l.id.as_str()))
                .collect();
            let found: HashSet<&str> = picked.iter().map(|l| l.id.as_str()).collect();
            let mut not_dead: Vec<String> = Vec::new();
            for id in ids {
                if !found.contains(id.as_str()) && !not_dead.contains(id) {
                    not_dead.push(id.clone());
                }
            }
            Ok((picked, not_dead))
        }
        Selector::Batches(batches) => {
            let wanted: HashSet<&str> = batches.iter().map(String::as_str).collect();
            let mut parents = HashMap::new();
            let mut picked = Vec::new();
            for letter in letters {
                if descends(store, &mut parents, &letter.batch, &wanted).await? {
                    picked.push(letter);
                }
            }
            Ok((picked, Vec::new()))
        }
    }
}

/// Whether `batch` or a batch it was split from is in `wanted`, following `parent` fields
/// (known parents cached in `parents`) while the batches' state hashes live.
async fn descends(
    store: &mut Store,
    parents: &mut HashMap<String, Option<String>>,
    batch: &str,
    wanted: &HashSet<&str>,
) -> Result<bool> {
    let mut current = batch.to_owned();
    for _ in 0..MAX_LINEAGE {
        if wanted.contains(current.as_str()) {
            return Ok(true);
        }
        let parent = if let Some(known) = parents.get(&current) {
            known.clone()
        } else {
            let parent = store.parent(&current).await?;
            parents.insert(current.clone(), parent.clone());
            parent
        };
        match parent {
            Some(parent) => current = parent,
            None => return Ok(false),
        }
    }
    Ok(false)
}

async fn connect(config: &Config) -> Result<Store> {
    Store::connect(config.redis.client()?, Keys::new(&config.redis.key_prefix)).await
}
