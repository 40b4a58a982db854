//! One redrive run: take the lease, fetch the dead-letter queue's copies, re-publish an
//! interrupted run's leftovers, then take, publish, ack and release the selected dead letters
//! a chunk at a time.

use super::plan::{messages, read_plan, unreadable};
use super::queue::DeadQueue;
use super::requeue::{Outgoing, Requeue};
use super::store::{Lease, Store, Take};
use super::{Candidate, DeadLetter, Plan, Selector, connect};
use crate::config::Config;
use crate::error::Result;
use crate::failpoint::Failpoint;
use crate::publish::styled;
use indicatif::ProgressBar;
use lapin::BasicProperties;
use lapin::types::ShortString;
use std::collections::HashSet;
use std::fmt;

/// Entries taken, published and released together: one script call and one confirm wait per
/// chunk, while a crash leaves at most this many to re-publish.
const CHUNK: usize = 256;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The queue messages went back on.
    pub queue: String,
    /// Messages published and confirmed, once per id.
    pub requeued: usize,
    /// Of those, messages an interrupted run had taken.
    pub recovered: usize,
    /// Entries whose message already had a result (`ok` or `error` for a dead-list entry; any
    /// for a leftover, whose first publish got through): removed, not published.
    pub finished: usize,
    /// Entries that left the dead list (by hand) between reading and taking.
    pub gone: usize,
    /// Requested ids with no entry in the dead list.
    pub not_dead: Vec<String>,
    /// Selected ids still dead with no copy in the dead-letter queue, left as they are.
    pub missing: Vec<String>,
    /// Unreadable dead-list entries, left where they are.
    pub unreadable: usize,
    /// Entries in the dead list when the run ended.
    pub left_dead: u64,
}

/// Redrives the dead letters `selector` picks; see the module docs for the guarantees.
pub async fn run(config: &Config, selector: &Selector) -> Result<Summary> {
    let mut store = connect(config).await?;
    let lease = store.lease().await?;
    let outcome = leased(config, selector, &mut store, &lease).await;
    if let Err(e) = store.end(lease).await {
        tracing::warn!(error = %e, "could not end the redrive lease; it expires by itself");
    }
    outcome
}

/// The run, once the lease is held: only now are entries in `{prefix}:redrive` leftovers, and
/// the copies fetched from the dead-letter queue are this run's until it closes them.
async fn leased(
    config: &Config,
    selector: &Selector,
    store: &mut Store,
    lease: &Lease,
) -> Result<Summary> {
    let copies = DeadQueue::read(config).await?;
    let outcome = with_copies(config, selector, store, lease, &copies).await;
    copies.close().await;
    outcome
}

async fn with_copies(
    config: &Config,
    selector: &Selector,
    store: &mut Store,
    lease: &Lease,
    copies: &DeadQueue,
) -> Result<Summary> {
    let plan = read_plan(store, selector, &config.broker.queue, copies).await?;
    let requeue = Requeue::connect(config).await?;
    let progress = styled(ProgressBar::new(
        (plan.leftover.len() + plan.selected.len()) as u64,
    ));
    let mut run = Run {
        store,
        lease,
        requeue: &requeue,
        copies,
        progress: &progress,
        failpoint: Failpoint::parse(config.service.sluice_failpoint.as_deref()),
        published: HashSet::new(),
        summary: Summary {
            queue: plan.queue.clone(),
            not_dead: plan.not_dead.clone(),
            missing: plan.missing.clone(),
            unreadable: plan.unreadable,
            ..Summary::default()
        },
    };
    let outcome = run.all(&plan).await;
    progress.finish_and_clear();
    requeue.close().await;
    outcome?;
    run.summary.left_dead = run.store.dead_len().await?;
    Ok(run.summary)
}

struct Run<'a> {
    store: &'a mut Store,
    lease: &'a Lease,
    requeue: &'a Requeue,
    copies: &'a DeadQueue,
    progress: &'a ProgressBar,
    failpoint: Failpoint,
    /// Ids published by this run: an id listed twice (dead-lettered twice) goes out once.
    published: HashSet<String>,
    summary: Summary,
}

impl Run<'_> {
    async fn all(&mut self, plan: &Plan) -> Result<()> {
        for chunk in plan.leftover.chunks(CHUNK) {
            self.recover(chunk).await?;
        }
        for chunk in plan.selected.chunks(CHUNK) {
            self.redrive(chunk).await?;
        }
        Ok(())
    }

    /// What re-publishing `letter` sends: its copy in the dead-letter queue, else the body an
    /// index entry of sluice 0.1 kept; `None` when neither is there.
    fn outgoing<'l>(copies: &'l DeadQueue, letter: &'l DeadLetter) -> Option<Outgoing<'l>> {
        if let Some(copy) = copies.of(&letter.id, &letter.batch).next() {
            return Some(Outgoing {
                id: &letter.id,
                body: &copy.body,
                properties: copy.properties.clone(),
            });
        }
        letter.body.as_ref().map(|body| Outgoing {
            id: &letter.id,
            body: body.as_bytes(),
            properties: properties(letter),
        })
    }

    /// Re-publishes entries an interrupted run took. One whose message has a result by now
    /// (the interrupted run's publish got through and ran), or whose copy is gone from the
    /// dead-letter queue (acked only once its publish was confirmed), is only released.
    async fn recover(&mut self, chunk: &[DeadLetter]) -> Result<()> {
        self.store.renew(self.lease).await?;
        let ids: Vec<&str> = chunk.iter().map(|l| l.id.as_str()).collect();
        let statuses = self.store.statuses(&ids).await?;
        let mut publish = Vec::new();
        for (letter, status) in chunk.iter().zip(statuses) {
            let outgoing = Self::outgoing(self.copies, letter);
            match outgoing {
                Some(outgoing) if status.is_none() && self.published.insert(letter.id.clone()) => {
                    publish.push(outgoing);
                    continue;
                }
                Some(_) if status.is_none() => {}
                _ => self.summary.finished += 1,
            }
            self.progress.inc(1);
        }
        self.summary.recovered += publish.len();
        self.publish_and_release(publish, chunk.iter().collect())
            .await
    }

    /// Takes a chunk of selected entries (putting back in the index those only the queue
    /// had), publishes the taken ones and releases them.
    async fn redrive(&mut self, chunk: &[Candidate]) -> Result<()> {
        let unindexed: Vec<&str> = chunk
            .iter()
            .filter(|c| !c.letter.indexed)
            .map(|c| c.letter.entry.as_str())
            .collect();
        self.store.restore(&unindexed).await?;
        let entries: Vec<(&str, &str)> = chunk
            .iter()
            .map(|c| (c.letter.id.as_str(), c.letter.entry.as_str()))
            .collect();
        let outcomes = self.store.take(self.lease, &entries).await?;
        self.failpoint.hit("redrive-taken");
        let mut publish = Vec::new();
        let mut done = Vec::new();
        for (candidate, take) in chunk.iter().zip(outcomes) {
            let letter = &candidate.letter;
            match take {
                Take::Taken => {
                    done.push(letter);
                    if self.published.insert(letter.id.clone())
                        && let Some(outgoing) = Self::outgoing(self.copies, letter)
                    {
                        publish.push(outgoing);
                        continue;
                    }
                }
                Take::Finished => {
                    self.summary.finished += 1;
                    done.push(letter);
                }
                Take::Gone => self.summary.gone += 1,
            }
            self.progress.inc(1);
        }
        self.publish_and_release(publish, done).await
    }

    /// Publishes `publish` and, once every one is confirmed, acks the copies in the dead-letter
    /// queue of `done` and removes their entries from `{prefix}:redrive`.
    async fn publish_and_release(
        &mut self,
        publish: Vec<Outgoing<'_>>,
        done: Vec<&DeadLetter>,
    ) -> Result<()> {
        self.requeue.publish(&publish, self.progress).await?;
        self.summary.requeued += publish.len();
        self.failpoint.hit("redrive-published");
        let letters: Vec<(&str, &str)> = done
            .iter()
            .map(|l| (l.id.as_str(), l.batch.as_str()))
            .collect();
        self.copies.ack(&letters).await?;
        let entries: Vec<&str> = done.iter().map(|l| l.entry.as_str()).collect();
        self.store.release(&entries).await
    }
}

/// For a 0.1 index entry's body: persistent, keyed by the letter's id so the re-run's result
/// is keyed as before. An id too long for the property (over 255 bytes) can only have come
/// from the body's `id`, which still carries it.
fn properties(letter: &DeadLetter) -> BasicProperties {
    let properties = BasicProperties::default().with_delivery_mode(2);
    match ShortString::try_new(letter.id.as_str()) {
        Ok(id) => properties.with_message_id(id),
        Err(_) => properties,
    }
}

/// Notes when there are any, then the summary line, last.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.recovered > 0 {
            writeln!(
                f,
                "redrive: {} taken by an interrupted redrive re-published",
                messages(self.recovered)
            )?;
        }
        if self.finished > 0 {
            writeln!(
                f,
                "redrive: {} already had a result: removed, not re-published",
                messages(self.finished)
            )?;
        }
        if self.gone > 0 {
            writeln!(
                f,
                "redrive: {} left the dead list while this ran",
                messages(self.gone)
            )?;
        }
        if !self.not_dead.is_empty() {
            writeln!(
                f,
                "redrive: not in the dead list: {}",
                self.not_dead.join(", ")
            )?;
        }
        if !self.missing.is_empty() {
            writeln!(
                f,
                "redrive: not in the dead-letter queue, left as they are: {}",
                self.missing.join(", ")
            )?;
        }
        if self.unreadable > 0 {
            writeln!(
                f,
                "redrive: {} (no id) left as is",
                unreadable(self.unreadable)
            )?;
        }
        writeln!(
            f,
            "redrive: {} back on {} ({} left dead)",
            messages(self.requeued),
            self.queue,
            self.left_dead
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_comes_last() {
        let summary = Summary {
            queue: "jobs".into(),
            requeued: 1,
            finished: 2,
            not_dead: vec!["x".into()],
            left_dead: 3,
            ..Summary::default()
        };
        assert_eq!(
            summary.to_string(),
            "redrive: 2 messages already had a result: removed, not re-published\n\
             redrive: not in the dead list: x\n\
             redrive: 1 message back on jobs (3 left dead)\n"
        );
    }
}
