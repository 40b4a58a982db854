//! The one retry helper: exponential backoff with jitter for transient failures.
//!
//! `backoff` is unmaintained upstream, so it is used here and nowhere else; swapping it means
//! changing this file only. The async variant takes its sleep function as a parameter, so this
//! crate stays free of any runtime.

use std::future::Future;
use std::time::Duration;

use backoff::backoff::Backoff as _;

/// A retry schedule: delays grow from `initial` to `max_interval` until `max_elapsed` is spent.
#[derive(Debug, Clone)]
pub struct Policy {
    inner: backoff::ExponentialBackoff,
}

impl Policy {
    /// A schedule giving up after `max_elapsed` (`None`: never).
    pub fn new(initial: Duration, max_interval: Duration, max_elapsed: Option<Duration>) -> Self {
        let inner = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(initial)
            .with_max_interval(max_interval)
            .with_max_elapsed_time(max_elapsed)
            .build();
        Self { inner }
    }

    /// The delay before the next attempt, or `None` once the schedule is spent.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.inner.next_backoff()
    }
}

/// Runs `op` until it succeeds, fails permanently (`is_transient` says no) or the policy is spent.
/// `on_retry` sees each transient error and the delay before the next try, for logging.
pub fn retry_blocking<T, E>(
    mut policy: Policy,
    mut op: impl FnMut() -> Result<T, E>,
    is_transient: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, E> {
    loop {
        match op() {
            Err(e) if is_transient(&e) => match policy.next_delay() {
                Some(delay) => {
                    on_retry(&e, delay);
                    std::thread::sleep(delay);
                }
                None => return Err(e),
            },
            done => return done,
        }
    }
}

/// The async twin of [`retry_blocking`]; `sleep` is the runtime's sleep function.
pub async fn retry_async<T, E, Op, OpFut, Sleep, SleepFut>(
    mut policy: Policy,
    mut op: Op,
    is_transient: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, Duration),
    sleep: Sleep,
) -> Result<T, E>
where
    Op: FnMut() -> OpFut,
    OpFut: Future<Output = Result<T, E>>,
    Sleep: Fn(Duration) -> SleepFut,
    SleepFut: Future<Output = ()>,
{
    loop {
        match op().await {
            Err(e) if is_transient(&e) => match policy.next_delay() {
                Some(delay) => {
                    on_retry(&e, delay);
                    sleep(delay).await;
                }
                None => return Err(e),
            },
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Policy {
        Policy::new(
            Duration::from_millis(1),
            Duration::from_millis(2),
            Some(Duration::from_secs(5)),
        )
    }

    #[test]
    fn transient_errors_are_retried_until_success() {
        let mut calls = 0;
        let out = retry_blocking(
            quick(),
            || {
                calls += 1;
                if calls < 3 { Err("flaky") } else { Ok(calls) }
            },
            |_| true,
            |_, _| {},
        );
        assert_eq!(out, Ok(3));
    }

    #[test]
    fn permanent_errors_stop_at_once() {
        let mut calls = 0;
        let out: Result<(), _> = retry_blocking(
            quick(),
            || {
                calls += 1;
                Err("bad")
            },
            |_| false,
            |_, _| {},
        );
        assert_eq!((out, calls), (Err("bad"), 1));
    }
}
