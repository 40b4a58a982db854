//! What a redrive would do: the dead letters it selects from the index and the dead-letter
//! queue, and the dry run's listing.

use super::queue::DeadQueue;
use super::store::Store;
use super::{Candidate, DeadLetter, Selector, connect, select};
use crate::config::Config;
use crate::error::Result;
use std::collections::HashSet;
use std::fmt;

/// What a redrive would do, read without changing anything.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The queue messages go back on.
    pub queue: String,
    /// The dead-letter queue they are taken from.
    pub dead_queue: String,
    /// The selected dead letters, oldest first.
    pub selected: Vec<Candidate>,
    /// Entries an interrupted run took and never saw confirmed; re-published first.
    pub leftover: Vec<DeadLetter>,
    /// Requested ids with no entry in the dead list.
    pub not_dead: Vec<String>,
    /// Selected ids still dead whose message is not in the dead-letter queue (removed there
    /// by hand): left as they are.
    pub missing: Vec<String>,
    /// Entries of the dead list without an id, never redriven.
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
    let copies = DeadQueue::read(config).await?;
    let plan = read_plan(&mut store, selector, &config.broker.queue, &copies).await;
    copies.close().await;
    let mut plan = plan?;
    plan.running = running;
    Ok(plan)
}

/// Reads the dead-letter index, the copies in the dead-letter queue and the redrive list, and
/// selects from the first two.
pub(super) async fn read_plan(
    store: &mut Store,
    selector: &Selector,
    queue: &str,
    copies: &DeadQueue,
) -> Result<Plan> {
    let entries = store.dead_entries().await?;
    let entries_total = entries.len();
    let mut letters: Vec<DeadLetter> = entries.into_iter().filter_map(DeadLetter::parse).collect();
    let unreadable = entries_total - letters.len();
    let mut known: HashSet<(String, String)> = letters
        .iter()
        .map(|l| (l.id.clone(), l.batch.clone()))
        .collect();
    for copy in copies.copies.iter().filter(|c| !c.id.is_empty()) {
        if known.insert((copy.id.clone(), copy.batch.clone())) {
            letters.push(DeadLetter::unindexed(copy));
        }
    }
    let dead_total = letters.len() + unreadable;
    let (letters, not_dead) = select(store, selector, letters).await?;
    let ids: Vec<&str> = letters.iter().map(|l| l.id.as_str()).collect();
    let statuses = store.statuses(&ids).await?;
    let (selected, missing): (Vec<Candidate>, Vec<Candidate>) = letters
        .into_iter()
        .zip(statuses)
        .map(|(letter, status)| Candidate { letter, status })
        .partition(|c| {
            !c.publishes()
                || c.letter.body.is_some()
                || copies.of(&c.letter.id, &c.letter.batch).next().is_some()
        });
    let leftover = store
        .redrive_entries()
        .await?
        .into_iter()
        .filter_map(DeadLetter::parse)
        .collect();
    Ok(Plan {
        queue: queue.to_owned(),
        dead_queue: copies.name.clone(),
        selected,
        leftover,
        not_dead,
        missing: missing.into_iter().map(|c| c.letter.id).collect(),
        unreadable,
        dead_total,
        running: false,
    })
}

/// Text for one line: reasons may hold newlines and tabs, which would break the listing.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r', '\t'], " ")
}

/// "1 message", "2 messages".
pub(super) fn messages(n: usize) -> String {
    format!("{n} message{}", if n == 1 { "" } else { "s" })
}

/// "1 unreadable dead-list entry", "2 unreadable dead-list entries".
pub(super) fn unreadable(n: usize) -> String {
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
        if !self.missing.is_empty() {
            writeln!(
                f,
                "redrive (dry run): not in the dead-letter queue {}, left as they are: {}",
                self.dead_queue,
                self.missing.join(", ")
            )?;
        }
        if self.unreadable > 0 {
            writeln!(
                f,
                "redrive (dry run): {} (no id) never redriven",
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
    fn entries_parse_as_settle_writes_them_and_old_ones_keep_their_body() {
        let entry = r#"{"id":"a:1","batch":"b","reason":"gave up","attempts":2}"#;
        let letter = DeadLetter::parse(entry.to_owned()).expect("a settle entry parses");
        assert_eq!(
            (letter.id.as_str(), letter.batch.as_str(), letter.body),
            ("a:1", "b", None)
        );
        assert_eq!(letter.entry, entry, "kept byte for byte, for LREM");
        let old = r#"{"id":"a:1","batch":"b","reason":"gave up","body":"{\"kernel\":\"echo\"}"}"#;
        let old = DeadLetter::parse(old.to_owned()).expect("a 0.1 entry parses");
        assert_eq!(old.body.as_deref(), Some(r#"{"kernel":"echo"}"#));
        assert!(DeadLetter::parse(r#"{"batch":"b","body":"x"}"#.into()).is_none());
        assert!(DeadLetter::parse("not json".into()).is_none());
    }

    fn candidate(id: &str, status: Option<&str>) -> Candidate {
        Candidate {
            letter: DeadLetter {
                id: id.into(),
                batch: "b".into(),
                reason: "line one\nline two".into(),
                body: Some("{}".into()),
                entry: String::new(),
                indexed: true,
            },
            status: status.map(str::to_owned),
        }
    }

    #[test]
    fn a_dry_run_counts_each_id_once_and_not_the_finished_ones() {
        let plan = Plan {
            queue: "jobs".into(),
            dead_queue: "jobs.dead".into(),
            selected: vec![
                candidate("a", Some("dead")),
                candidate("a", Some("dead")),
                candidate("b", None),
                candidate("c", Some("ok")),
            ],
            leftover: Vec::new(),
            not_dead: vec!["zz".into()],
            missing: vec!["gone".into()],
            unreadable: 0,
            dead_total: 5,
            running: false,
        };
        assert_eq!(plan.would_publish(), 2);
        let text = plan.to_string();
        assert!(text.starts_with("a\tb\tline one line two\n"), "{text}");
        assert!(text.contains("c\tb\tline one line two\t(has an ok result now"));
        assert!(text.contains("not in the dead list: zz"));
        assert!(text.contains("not in the dead-letter queue jobs.dead, left as they are: gone"));
        assert!(text.ends_with(
            "2 messages would go back on jobs (4 selected of 5 dead letters); nothing changed\n"
        ));
    }
}
