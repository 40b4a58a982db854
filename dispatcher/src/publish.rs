//! `dispatcher publish`: push messages with publisher confirms and a progress bar.

use crate::amqp::{connect, ensure_queue};
use crate::config::broker::Broker;
use crate::error::{Error, Result};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Unconfirmed messages allowed in flight: enough to keep the broker busy, bounded memory.
const CONFIRM_WINDOW: usize = 1024;

/// What to publish.
pub enum Source<R> {
    /// `count` envelopes for `kernel` with `input`, ids `{id_prefix}-{i}`.
    Generated {
        /// How many.
        count: u64,
        /// The kernel.
        kernel: String,
        /// Its input.
        input: Value,
        /// Ids are this prefix, a dash and the message's index.
        id_prefix: String,
    },
    /// One message per non-empty line, sent as is.
    Lines(R),
}

/// Publishes every message of `source` to `queue`, each confirmed by the broker.
/// Returns how many were published.
pub async fn publish<R: AsyncBufRead + Unpin>(broker: &Broker, source: Source<R>) -> Result<u64> {
    let queue = broker.queue.as_str();
    let connection = connect(broker, "sluice-publish").await?;
    ensure_queue(&connection, broker).await?;
    let channel = crate::amqp::confirming_channel(&connection).await?;
    let progress = progress_bar(&source);
    let mut pending = FuturesUnordered::new();
    let mut published = 0;
    let mut bodies = Bodies::new(source);
    while let Some(body) = bodies.next().await? {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .map_err(Error::amqp("publishing"))?;
        pending.push(confirm);
        published += 1;
        if pending.len() >= CONFIRM_WINDOW {
            confirm_one(&mut pending, &progress).await?;
        }
    }
    while !pending.is_empty() {
        confirm_one(&mut pending, &progress).await?;
    }
    progress.finish_with_message("published");
    let _ = connection.close(200, "published".into()).await;
    Ok(published)
}

async fn confirm_one(
    pending: &mut FuturesUnordered<lapin::PublisherConfirm>,
    progress: &ProgressBar,
) -> Result<()> {
    if let Some(confirm) = pending.next().await {
        let confirmation = confirm.map_err(Error::amqp("waiting for a publisher confirm"))?;
        if !confirmation.is_ack() {
            return Err(Error::ConsumerClosed {
                reason: "the broker refused (nacked) a message".into(),
            });
        }
        progress.inc(1);
    }
    Ok(())
}

fn progress_bar<R>(source: &Source<R>) -> ProgressBar {
    styled(match source {
        Source::Generated { count, .. } => ProgressBar::new(*count),
        Source::Lines(_) => ProgressBar::new_spinner(),
    })
}

/// The commands' progress bar style. indicatif draws on stderr and hides the bar when stderr is
/// not a terminal, so piped or logged output stays clean.
pub(crate) fn styled(bar: ProgressBar) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// The message bodies of a source, one at a time.
struct Bodies<R> {
    source: Source<R>,
    next_index: u64,
}

impl<R: AsyncBufRead + Unpin> Bodies<R> {
    fn new(source: Source<R>) -> Self {
        Self {
            source,
            next_index: 0,
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<u8>>> {
        match &mut self.source {
            Source::Generated {
                count,
                kernel,
                input,
                id_prefix,
            } => {
                if self.next_index >= *count {
                    return Ok(None);
                }
                let id = format!("{id_prefix}-{}", self.next_index);
                self.next_index += 1;
                Ok(Some(
                    json!({"id": id, "kernel": kernel, "input": input})
                        .to_string()
                        .into_bytes(),
                ))
            }
            Source::Lines(reader) => loop {
                let mut line = String::new();
                if reader
                    .read_line(&mut line)
                    .await
                    .map_err(Error::io("reading messages"))?
                    == 0
                {
                    return Ok(None);
                }
                let line = line.trim_end_matches(['\r', '\n']);
                if !line.trim().is_empty() {
                    return Ok(Some(line.as_bytes().to_vec()));
                }
            },
        }
    }
}
