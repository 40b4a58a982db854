//! The deliveries the broker has already pushed to this consumer but no batch holds yet.
//!
//! Adaptive sizing needs the whole backlog: the broker's ready count misses everything inside
//! the prefetch window, which is all of it once the backlog is smaller than the window. This
//! stream wrapper can pull every delivery already buffered in the client, without waiting,
//! and count it; it then hands them out first, in delivery order.

use futures::{FutureExt, Stream, StreamExt};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A stream with a look-ahead buffer.
pub struct Backlog<S: Stream> {
    buffered: VecDeque<S::Item>,
    inner: S,
}

impl<S: Stream + Unpin> Backlog<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            buffered: VecDeque::new(),
            inner,
        }
    }

    /// Moves every item `inner` can yield right now into the buffer; returns the buffer's
    /// length. Cancellation-safe: a `next()` that is not ready loses nothing when dropped.
    pub fn fill(&mut self) -> usize {
        while let Some(Some(item)) = self.inner.next().now_or_never() {
            self.buffered.push_back(item);
        }
        self.buffered.len()
    }
}

impl<S> Stream for Backlog<S>
where
    S: Stream + Unpin,
    S::Item: Unpin,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(item) = this.buffered.pop_front() {
            return Poll::Ready(Some(item));
        }
        this.inner.poll_next_unpin(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fill_counts_what_is_ready_and_order_is_kept() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        for i in 0..3 {
            tx.unbounded_send(i).unwrap();
        }
        let mut backlog = Backlog::new(rx);
        assert_eq!(backlog.fill(), 3);
        tx.unbounded_send(3).unwrap();
        let first_two: Vec<i32> = (&mut backlog).take(2).collect().await;
        assert_eq!(first_two, [0, 1]);
        assert_eq!(backlog.fill(), 2);
        drop(tx);
        assert_eq!(backlog.collect::<Vec<_>>().await, [2, 3]);
    }
}
