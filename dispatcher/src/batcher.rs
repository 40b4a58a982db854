//! Grouping deliveries into batches.
//!
//! A batch closes on whichever comes first: `BATCH_MAX_MESSAGES` messages, the next message
//! not fitting in `BATCH_MAX_BYTES`, or `BATCH_LINGER_MS` after the batch's first message.
//! The rules live in [`Batcher`], a plain state machine; [`Batcher::next_batch`] drives it from
//! a stream with a timer. Items stay inside the batcher between calls, so cancelling
//! `next_batch` (in a `select!`) loses nothing.

use futures::{Stream, StreamExt};
use std::time::Duration;
use tokio::time::Instant;

/// Limits that close a batch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most items per batch.
    pub max_messages: usize,
    /// Most bytes per batch (a single larger item still forms a batch of one).
    pub max_bytes: usize,
    /// Longest wait after a batch's first item.
    pub linger: Duration,
}

/// Something that can be batched by size.
pub trait Weighed {
    /// Bytes this item counts for.
    fn bytes(&self) -> usize;
}

/// How [`Batcher::next_batch`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    /// A batch closed.
    Batch(Vec<T>),
    /// The stream ended; what was collected so far is in the batcher (see [`Batcher::take`]).
    StreamEnded,
    /// The stream yielded an error.
    Failed(String),
}

/// The batch being filled.
///
/// Batches come out in delivery order, which the dispatcher's multiple-ack relies on.
#[derive(Debug)]
pub struct Batcher<T> {
    limits: Limits,
    items: Vec<T>,
    bytes: usize,
    deadline: Option<Instant>,
    /// A closed batch waiting behind the one [`Batcher::push`] returned (when one item both
    /// closed the open batch and filled the next by itself).
    ready: Option<Vec<T>>,
}

impl<T: Weighed> Batcher<T> {
    /// An empty batcher.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            items: Vec::new(),
            bytes: 0,
            deadline: None,
            ready: None,
        }
    }

    /// Adds an item; returns a batch when this item closes one.
    pub fn push(&mut self, item: T, now: Instant) -> Option<Vec<T>> {
        let size = item.bytes();
        let mut closed = None;
        if !self.items.is_empty() && self.bytes + size > self.limits.max_bytes {
            closed = self.close_open();
        }
        if self.items.is_empty() {
            self.deadline = Some(now + self.limits.linger);
        }
        self.bytes += size;
        self.items.push(item);
        if self.items.len() >= self.limits.max_messages || self.bytes >= self.limits.max_bytes {
            let full = self.close_open();
            if closed.is_some() {
                self.ready = full;
            } else {
                closed = full;
            }
        }
        closed
    }

    /// Changes the count limit for batches from now on (adaptive sizing); an open batch already
    /// at the new limit closes on its next item.
    pub fn set_max_messages(&mut self, max_messages: usize) {
        self.limits.max_messages = max_messages.max(1);
    }

    /// When the open batch must close, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Hands out a closed batch waiting behind the one [`Batcher::push`] returned, if any: it
    /// must go before any batch a later push closes.
    pub fn take_ready(&mut self) -> Option<Vec<T>> {
        self.ready.take()
    }

    /// Hands out the oldest closed batch, else closes the open one.
    pub fn take(&mut self) -> Option<Vec<T>> {
        self.ready.take().or_else(|| self.close_open())
    }

    fn close_open(&mut self) -> Option<Vec<T>> {
        self.bytes = 0;
        self.deadline = None;
        let batch = std::mem::take(&mut self.items);
        (!batch.is_empty()).then_some(batch)
    }

    /// Items held, for shutdown accounting.
    pub fn len(&self) -> usize {
        self.items.len() + self.ready.as_ref().map_or(0, Vec::len)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the next batch from `stream`. Cancellation-safe: items already received stay
    /// in the batcher.
    pub async fn next_batch<S, E>(&mut self, stream: &mut S) -> Next<T>
    where
        S: Stream<Item = Result<T, E>> + Unpin,
        E: std::fmt::Display,
    {
        loop {
            if let Some(batch) = self.ready.take() {
                return Next::Batch(batch);
            }
            let linger = async {
                match self.deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Cancellation-safe: a timer holds no items.
                () = linger => {
                    if let Some(batch) = self.take() {
                        return Next::Batch(batch);
                    }
                }
                // Cancellation-safe: StreamExt::next drops no item when cancelled.
                item = stream.next() => match item {
                    Some(Ok(item)) => {
                        if let Some(batch) = self.push(item, Instant::now()) {
                            return Next::Batch(batch);
                        }
                    }
                    Some(Err(e)) => return Next::Failed(e.to_string()),
                    None => return Next::StreamEnded,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;

    impl Weighed for usize {
        fn bytes(&self) -> usize {
            *self
        }
    }

    const LIMITS: Limits = Limits {
        max_messages: 3,
        max_bytes: 100,
        linger: Duration::from_millis(200),
    };

    #[test]
    fn closes_on_count() {
        let mut b = Batcher::new(LIMITS);
        let now = Instant::now();
        assert_eq!(b.push(1, now), None);
        assert_eq!(b.push(1, now), None);
        assert_eq!(b.push(1, now), Some(vec![1, 1, 1]));
        assert!(b.is_empty());
    }

    #[test]
    fn closes_before_bytes_overflow_and_carries_the_item_over() {
        let mut b = Batcher::new(LIMITS);
        let now = Instant::now();
        assert_eq!(b.push(60, now), None);
        assert_eq!(b.push(50, now), Some(vec![60]));
        assert_eq!(b.len(), 1);
        assert_eq!(b.push(50, now), Some(vec![50, 50]));
    }

    #[test]
    fn an_item_over_the_byte_limit_is_a_batch_of_its_own_in_delivery_order() {
        let mut b = Batcher::new(LIMITS);
        let now = Instant::now();
        assert_eq!(b.push(500, now), Some(vec![500]));
        assert_eq!(b.push(10, now), None);
        assert_eq!(b.push(500, now), Some(vec![10]));
        assert_eq!(b.push(1, now), None);
        assert_eq!(b.take(), Some(vec![500]));
        assert_eq!(b.take(), Some(vec![1]));
        assert!(b.is_empty());
    }

    #[test]
    fn a_batch_waiting_behind_the_returned_one_is_taken_before_later_ones() {
        let mut b = Batcher::new(LIMITS);
        let now = Instant::now();
        assert_eq!(b.push(10, now), None);
        assert_eq!(b.push(500, now), Some(vec![10]));
        assert_eq!(b.take_ready(), Some(vec![500]));
        assert_eq!(b.take_ready(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn closes_on_linger_measured_from_the_first_message() {
        let (tx, mut rx) = mpsc::unbounded::<Result<usize, String>>();
        let mut b = Batcher::new(LIMITS);
        tx.unbounded_send(Ok(1)).unwrap();
        let started = Instant::now();
        let feeder = {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                tx.unbounded_send(Ok(2)).unwrap();
            })
        };
        assert_eq!(b.next_batch(&mut rx).await, Next::Batch(vec![1, 2]));
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        feeder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_waits_without_closing_an_empty_batch() {
        let (tx, mut rx) = mpsc::unbounded::<Result<usize, String>>();
        let mut b = Batcher::new(LIMITS);
        let waiting = tokio::time::timeout(Duration::from_secs(10), b.next_batch(&mut rx)).await;
        assert!(waiting.is_err(), "no batch without messages");
        drop(tx);
        assert_eq!(b.next_batch(&mut rx).await, Next::StreamEnded);
    }

    #[tokio::test(start_paused = true)]
    async fn stream_errors_are_reported() {
        let (tx, mut rx) = mpsc::unbounded::<Result<usize, String>>();
        tx.unbounded_send(Err("connection reset".into())).unwrap();
        let mut b = Batcher::new(LIMITS);
        assert_eq!(
            b.next_batch(&mut rx).await,
            Next::Failed("connection reset".into())
        );
    }
}
