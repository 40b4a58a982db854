//! Letting go of every delivery the dispatcher holds without returning any to the broker.
//!
//! A returned delivery is not free: a quorum queue counts each return against its
//! `x-delivery-limit` (RabbitMQ 3.10–4.2 count every return, a channel closing included), and
//! RabbitMQ closes a channel whose oldest delivery waits unacked longer than
//! `consumer_timeout`. So when the dispatcher pauses (the breaker opened, or every slot stayed
//! busy for `UNACKED_MAX_SECONDS`) or stops, it cancels its consumer (`basic.cancel` returns
//! nothing), takes in what the broker had already sent, **parks** it in Redis as batches with
//! no owner and acks it. Whichever dispatcher has a slot first launches a parked batch. If
//! Redis or the channel fails meanwhile, what is not acked yet goes back to the queue as the
//! connection closes.

use crate::batcher::Batcher;
use crate::config::Config;
use crate::consumer::{Consumer, Cut, Pending};
use crate::error::{Error, Result};
use crate::reconcile::Reconciler;
use futures::{Stream, StreamExt};
use std::time::Duration;
use tokio::time::{Instant, timeout};

/// How long the broker may take to fill the prefetch window, and the deliveries already sent
/// to arrive after the cancel; whatever has not arrived by then goes back as the connection
/// closes.
const DRAIN: Duration = Duration::from_secs(10);

/// A pause with no delivery arriving: the queue has nothing more for this consumer now.
const QUIET: Duration = Duration::from_millis(500);

/// The deliveries held, in delivery order: closed batches, then what the batcher holds.
struct Held {
    batcher: Batcher<Pending>,
    closed: Vec<Vec<Pending>>,
}

/// How far [`Held::take_in`] goes.
#[derive(Clone, Copy)]
enum Until {
    /// The prefetch window is full (`prefetch` deliveries unacked: every earlier one is
    /// acked, batches being acked in delivery order), or the queue stays quiet.
    WindowFull(usize),
    /// The stream ends (after the cancel).
    End,
}

impl Held {
    /// Holds `batcher`'s deliveries, any closed batch it still has first.
    fn new(mut batcher: Batcher<Pending>) -> Self {
        let closed = batcher.take_ready().into_iter().collect();
        Self { batcher, closed }
    }

    /// Deliveries held.
    fn count(&self) -> usize {
        self.batcher.len() + self.closed.iter().map(Vec::len).sum::<usize>()
    }

    fn push(&mut self, delivery: Pending) {
        // In delivery order: the batch a push returns, then one it left waiting behind it.
        self.closed
            .extend(self.batcher.push(delivery, Instant::now()));
        self.closed.extend(self.batcher.take_ready());
    }

    /// Takes in deliveries as far as `until`, for [`DRAIN`] at most (what has not arrived by
    /// then goes back as the connection closes); an error if the channel failed.
    async fn take_in<S>(&mut self, stream: &mut S, until: Until) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Pending, lapin::Error>> + Unpin,
    {
        let taking = async {
            loop {
                let next = match until {
                    Until::WindowFull(prefetch) if self.count() >= prefetch => return true,
                    Until::WindowFull(_) => match timeout(QUIET, stream.next()).await {
                        Ok(next) => next,
                        Err(_) => return true,
                    },
                    Until::End => stream.next().await,
                };
                match next {
                    Some(Ok(delivery)) => self.push(delivery),
                    // An error: the channel is gone, nothing more can be acked on it.
                    Some(Err(_)) => return false,
                    None => return true,
                }
            }
        };
        match timeout(DRAIN, taking).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::ConsumerClosed {
                reason: "the channel failed while the consumer was pausing".into(),
            }),
            Err(_) => {
                tracing::warn!(after = ?DRAIN, "deliveries still coming while pausing go back to the queue");
                Ok(())
            }
        }
    }
}

/// Stops consuming, then parks and acks every delivery held: those in `batcher` and those
/// still coming on `deliveries`. Returns the parked batches' ids.
///
/// The cancel must not race deliveries in flight: a delivery the broker sends after its
/// `basic.cancel-ok` (one it sent for an ack just before the cancel, say) reaches no consumer
/// in the client, stays unacked and goes back as the connection closes. So the prefetch
/// window is filled first: with `prefetch` deliveries unacked the broker sends nothing more;
/// with fewer, the queue had nothing more to send when it stayed quiet.
pub async fn release<S>(
    consumer: &Consumer,
    batcher: Batcher<Pending>,
    deliveries: &mut S,
    reconciler: &Reconciler,
    config: &Config,
) -> Result<Vec<String>>
where
    S: Stream<Item = std::result::Result<Pending, lapin::Error>> + Unpin,
{
    let mut held = Held::new(batcher);
    let window = Until::WindowFull(usize::from(config.prefetch()));
    held.take_in(deliveries, window).await?;
    timeout(DRAIN, consumer.cancel())
        .await
        .map_err(|_| Error::ConsumerClosed {
            reason: format!("no basic.cancel-ok within {DRAIN:?}"),
        })??;
    held.take_in(deliveries, Until::End).await?;
    let Held {
        mut batcher,
        mut closed,
    } = held;
    while let Some(batch) = batcher.take() {
        closed.push(batch);
    }
    let mut parked = Vec::with_capacity(closed.len());
    for batch in closed {
        let cut = Cut::new(batch, &config.broker.queue)?;
        reconciler.park(&cut.fresh(Duration::ZERO)).await?;
        consumer.ack_through(cut.last_tag).await?;
        parked.push(cut.id);
    }
    if !parked.is_empty() {
        tracing::info!(
            batches = parked.len(),
            "parked the deliveries held in redis for the first dispatcher with a slot"
        );
    }
    Ok(parked)
}
