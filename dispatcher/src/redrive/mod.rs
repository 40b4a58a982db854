//! `dispatcher redrive`: puts dead letters back on the queue, each exactly once, so that
//! messages that died of a bug since fixed run again.
//!
//! A dead letter is an entry of `{prefix}:dead` (`{"id","batch","reason","body"}`, written by
//! [`crate::settle`]) plus its message's `status=dead` result. Redriving one:
//! 1. one script moves the entry from `{prefix}:dead` to `{prefix}:redrive` and deletes the
//!    `dead` result (only if it is still `dead`), so no two runs take it and a crash leaves it
//!    in exactly one of the two lists;
//! 2. the body is published to `QUEUE` with `message_id` = the id, so the re-run's result is
//!    keyed as before, and the broker's confirm is awaited;
//! 3. the entry leaves `{prefix}:redrive`.
//!
//! A run first re-publishes what an interrupted run left in `{prefix}:redrive`, so publishing is
//! at least once: a crash between 2 and 3 publishes the message twice, and the write-once result
//! makes the second delivery a no-op. One run at a time holds the prefix's lease
//! (`{prefix}:redrive:lock`, renewed by every take), so a live run's taken entries are never
//! mistaken for leftovers. Counters are never decremented: `dead` keeps counting deaths, a
//! `redriven` counter counts messages taken back, and the dead list's length is what is dead now.
//!
//! [`plan`] reads what a run would do (the dry run); [`run`] does it.

mod run;
mod store;

pub use run::{Summary, run};
pub use store::LEASE;

use crate::config::Config;
use crate::error::Result;
use serde::Deserialize;
use sluice_contract::Keys;
use std::collections::{HashMap, HashSet};
use std::fmt;
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

/// One entry of `{prefix}:dead`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id its result is keyed by.
    pub id: String,
    /// The batch it died in (alone, after bisection).
    pub batch: String,
    /// Why it was given up on.
    pub reason: String,
    /// The message body as it arrived (as UTF-8 text).
    pub body: String,
    /// The entry exactly as stored: what the take script must match.
    pub entry: String,
}

impl DeadLetter {
    /// Reads an entry; `None` if it lacks an id or a body (nothing a redrive could publish).
    pub fn parse(entry: String) -> Option<Self> {
        #[derive(Deserialize)]
        struct Fields {
            id: String,
            #[serde(default)]
            batch: String,
            #[serde(default)]
            reason: String,
            body: String,
        }
        let fields: Fields = serde_json::from_str(&entry).ok()?;
        Some(Self {
            id: fields.id,
            batch: fields.batch,
            reason: fields.reason,
            body: fields.body,
            entry,
        })
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

/// What a redrive would do, read without changing anything.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The queue messages go back on.
    pub queue: String,
    /// The selected dead letters, oldest first.
    pub selected: Vec<Candidate>,
    /// Entries an interrupted run took and never saw confirmed; re-published first.
    pub leftover: Vec<DeadLetter>,
    /// Requested ids with no entry in the dead list.
    pub not_dead: Vec<String>,
    /// Entries of the dead list without an id or body, never redriven.
    pub unreadable: usize,
    /// Entries in the dead list.
    pub dead_total: usize,
    /// Whether a redrive is running now.
    pub running: bool,
}

impl Plan {
    /// Messages a run would publish: selected ones still dead, once per id.
    pub fn would_publish(&self) -> usize {
        let mut ids = HashSet::new();
        self.selected
            .iter()
            .filter(|c| c.publishes())
            .filter(|c| ids.insert(c.letter.id.as_str()))
            .count()
    }
}

/// Reads what a redrive of `selector` would do (`dispatcher redrive --dry-run`).
pub async fn plan(config: &Config, selector: &Selector) -> Result<Plan> {
    let mut store = connect(config).await?;
    let running = store.leased().await?;
    let mut plan = read_plan(&mut store, selector, &config.broker.queue).await?;
    plan.running = running;
    Ok(plan)
}

async fn connect(config: &Config) -> Result<Store> {
    Store::connect(config.redis.client()?, Keys::new(&config.redis.key_prefix)).await
}

/// Reads the dead and redrive lists and selects from the dead one.
async fn read_plan(store: &mut Store, selector: &Selector, queue: &str) -> Result<Plan> {
    let entries = store.dead_entries().await?;
    let dead_total = entries.len();
    let letters: Vec<DeadLetter> = entries.into_iter().filter_map(DeadLetter::parse).collect();
    let unreadable = dead_total - letters.len();
    let (letters, not_dead) = select(store, selector, letters).await?;
    let ids: Vec<&str> = letters.iter().map(|l| l.id.as_str()).collect();
    let statuses = store.statuses(&ids).await?;
    let selected = letters
        .into_iter()
        .zip(statuses)
        .map(|(letter, status)| Candidate { letter, status })
        .collect();
    let leftover = store
        .redrive_entries()
        .await?
        .into_iter()
        .filter_map(DeadLetter::parse)
        .collect();
    Ok(Plan {
        queue: queue.to_owned(),
        selected,
        leftover,
        not_dead,
        unreadable,
        dead_total,
        running: false,
    })
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

/// Text for one line: reasons may hold newlines and tabs, which would break the listing.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r', '\t'], " ")
}

/// "1 message", "2 messages".
fn messages(n: usize) -> String {
    format!("{n} message{}", if n == 1 { "" } else { "s" })
}

/// "1 unreadable dead-list entry", "2 unreadable dead-list entries".
fn unreadable(n: usize) -> String {
    format!(
        "{n} unreadable dead-list entr{}",
        if n == 1 { "y" } else { "ies" }
    )
}

/// The dry run's listing: one `id<TAB>batch<TAB>reason` line per selected dead letter, notes,
/// then a count.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.selected {
            let l = &c.letter;
            write!(f, "{}\t{}\t{}", l.id, l.batch, one_line(&l.reason))?;
            match c.status.as_deref() {
                Some(status) if !c.publishes() => writeln!(
                    f,
                    "\t(has an {status} result now: only removed from the dead list)"
                )?,
                _ => writeln!(f)?,
            }
        }
        if !self.leftover.is_empty() {
            writeln!(
                f,
                "redrive (dry run): {} taken by an interrupted redrive would be re-published first{}",
                messages(self.leftover.len()),
                if self.running {
                    " (or a redrive is running now)"
                } else {
                    ""
                }
            )?;
        }
        if !self.not_dead.is_empty() {
            writeln!(
                f,
                "redrive (dry run): not in the dead list: {}",
                self.not_dead.join(", ")
            )?;
        }
        if self.unreadable > 0 {
            writeln!(
                f,
                "redrive (dry run): {} (no id or body) never redriven",
                unreadable(self.unreadable)
            )?;
        }
        writeln!(
            f,
            "redrive (dry run): {} would go back on {} ({} selected of {} dead letters); nothing changed",
            messages(self.would_publish()),
            self.queue,
            self.selected.len(),
            self.dead_total
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_as_settle_writes_them_and_unusable_ones_do_not() {
        let entry = r#"{"id":"a:1","batch":"b","reason":"gave up","body":"{\"kernel\":\"echo\"}"}"#;
        let letter = DeadLetter::parse(entry.to_owned()).expect("a settle entry parses");
        assert_eq!(
            (
                letter.id.as_str(),
                letter.batch.as_str(),
                letter.body.as_str()
            ),
            ("a:1", "b", r#"{"kernel":"echo"}"#)
        );
        assert_eq!(letter.entry, entry, "kept byte for byte, for LREM");
        assert!(DeadLetter::parse(r#"{"batch":"b","body":"x"}"#.into()).is_none());
        assert!(DeadLetter::parse(r#"{"id":"a"}"#.into()).is_none());
        assert!(DeadLetter::parse("not json".into()).is_none());
    }

    fn candidate(id: &str, status: Option<&str>) -> Candidate {
        Candidate {
            letter: DeadLetter {
                id: id.into(),
                batch: "b".into(),
                reason: "line one\nline two".into(),
                body: "{}".into(),
                entry: String::new(),
            },
            status: status.map(str::to_owned),
        }
    }

    #[test]
    fn a_dry_run_counts_each_id_once_and_not_the_finished_ones() {
        let plan = Plan {
            queue: "jobs".into(),
            selected: vec![
                candidate("a", Some("dead")),
                candidate("a", Some("dead")),
                candidate("b", None),
                candidate("c", Some("ok")),
            ],
            leftover: Vec::new(),
            not_dead: vec!["zz".into()],
            unreadable: 0,
            dead_total: 5,
            running: false,
        };
        assert_eq!(plan.would_publish(), 2);
        let text = plan.to_string();
        assert!(text.starts_with("a\tb\tline one line two\n"), "{text}");
        assert!(text.contains("c\tb\tline one line two\t(has an ok result now"));
        assert!(text.contains("not in the dead list: zz"));
        assert!(text.ends_with(
            "2 messages would go back on jobs (4 selected of 5 dead letters); nothing changed\n"
        ));
    }
}
