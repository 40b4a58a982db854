//! One redrive run: take the lease, re-publish an interrupted run's leftovers, then take,
//! publish and release the selected dead letters a chunk at a time.

use super::store::{Lease, Store, Take};
use super::{Candidate, DeadLetter, Plan, Selector, connect, messages, read_plan, unreadable};
use crate::amqp::{connect as amqp_connect, ensure_queue};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::failpoint::Failpoint;
use crate::publish::styled;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::ProgressBar;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
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

/// The run, once the lease is held: only now are entries in `{prefix}:redrive` leftovers.
async fn leased(
    config: &Config,
    selector: &Selector,
    store: &mut Store,
    lease: &Lease,
) -> Result<Summary> {
    let plan = read_plan(store, selector, &config.broker.queue).await?;
    let requeue = Requeue::connect(config).await?;
    let progress = styled(ProgressBar::new(
        (plan.leftover.len() + plan.selected.len()) as u64,
    ));
    let mut run = Run {
        store,
        lease,
        requeue: &requeue,
        progress: &progress,
        failpoint: Failpoint::parse(config.service.sluice_failpoint.as_deref()),
        published: HashSet::new(),
        summary: Summary {
            queue: plan.queue.clone(),
            not_dead: plan.not_dead.clone(),
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

    /// Re-publishes entries an interrupted run took; one whose message has a result by now
    /// (the interrupted run's publish got through and ran) is only released.
    async fn recover(&mut self, chunk: &[DeadLetter]) -> Result<()> {
        self.store.renew(self.lease).await?;
        let ids: Vec<&str> = chunk.iter().map(|l| l.id.as_str()).collect();
        let statuses = self.store.statuses(&ids).await?;
        let mut publish = Vec::new();
        for (letter, status) in chunk.iter().zip(statuses) {
            if status.is_some() {
                self.summary.finished += 1;
                self.progress.inc(1);
            } else if self.published.insert(letter.id.clone()) {
                publish.push(letter);
            } else {
                self.progress.inc(1);
            }
        }
        self.summary.recovered += publish.len();
        let release = chunk.iter().map(|l| l.entry.as_str()).collect();
        self.publish_and_release(&publish, release).await
    }

    /// Takes a chunk of selected entries, publishes the taken ones and releases them.
    async fn redrive(&mut self, chunk: &[Candidate]) -> Result<()> {
        let entries: Vec<(&str, &str)> = chunk
            .iter()
            .map(|c| (c.letter.id.as_str(), c.letter.entry.as_str()))
            .collect();
        let outcomes = self.store.take(self.lease, &entries).await?;
        self.failpoint.hit("redrive-taken");
        let mut publish = Vec::new();
        let mut taken = Vec::new();
        for (candidate, take) in chunk.iter().zip(outcomes) {
            let letter = &candidate.letter;
            match take {
                Take::Taken => {
                    taken.push(letter.entry.as_str());
                    if self.published.insert(letter.id.clone()) {
                        publish.push(letter);
                        continue;
                    }
                }
                Take::Finished => self.summary.finished += 1,
                Take::Gone => self.summary.gone += 1,
            }
            self.progress.inc(1);
        }
        self.publish_and_release(&publish, taken).await
    }

    /// Publishes `publish` and, once every one is confirmed, removes the `release` entries
    /// (theirs and any duplicates') from `{prefix}:redrive`.
    async fn publish_and_release(
        &mut self,
        publish: &[&DeadLetter],
        release: Vec<&str>,
    ) -> Result<()> {
        self.requeue.publish(publish, self.progress).await?;
        self.summary.requeued += publish.len();
        self.failpoint.hit("redrive-published");
        self.store.release(&release).await
    }
}

/// The channel dead letters are published on, with publisher confirms.
struct Requeue {
    connection: Connection,
    channel: Channel,
    queue: String,
}

impl Requeue {
    async fn connect(config: &Config) -> Result<Self> {
        let connection = amqp_connect(&config.broker, "sluice-redrive").await?;
        ensure_queue(&connection, &config.broker).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(Error::amqp("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(Error::amqp("enabling publisher confirms"))?;
        Ok(Self {
            connection,
            channel,
            queue: config.broker.queue.clone(),
        })
    }

    /// Publishes each letter's body, persistent and mandatory (a message the broker cannot
    /// route comes back as an error rather than vanishing), and waits for every confirm.
    async fn publish(&self, letters: &[&DeadLetter], progress: &ProgressBar) -> Result<()> {
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut pending = FuturesUnordered::new();
        for letter in letters {
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    mandatory,
                    letter.body.as_bytes(),
                    properties(letter),
                )
                .await
                .map_err(Error::amqp("publishing a dead letter"))?;
            pending.push(confirm);
        }
        while let Some(confirm) = pending.next().await {
            self.check(confirm.map_err(Error::amqp("waiting for a publisher confirm"))?)?;
            progress.inc(1);
        }
        Ok(())
    }

    /// A confirm is only an ack without a returned message: a mandatory publish that could not
    /// be routed is acked too, and comes back.
    fn check(&self, confirmation: Confirmation) -> Result<()> {
        let reason = if !confirmation.is_ack() {
            "nacked".to_owned()
        } else if confirmation.take_message().is_some() {
            format!("returned: queue {} does not exist", self.queue)
        } else {
            return Ok(());
        };
        Err(Error::BrokerRefused { reason })
    }

    async fn close(&self) {
        if let Err(e) = self.connection.close(200, "redriven".into()).await {
            tracing::debug!(error = %e, "closing the rabbitmq connection");
        }
    }
}

/// Persistent, keyed by the letter's id so the re-run's result is keyed as before. An id too
/// long for the property (over 255 bytes) can only have come from the body's `id`, which still
/// carries it.
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
        if self.unreadable > 0 {
            writeln!(
                f,
                "redrive: {} (no id or body) left as is",
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
