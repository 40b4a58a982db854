//! The one retry helper: exponential backoff with jitter for transient failures.
//!
//! Every retry and reconnect loop in sluice takes its delays from a [`Policy`] here: through
//! [`retry_blocking`] or [`retry_async`], or, for a loop that restarts its schedule itself (the
//! dispatcher's reconnects, which start over after each good session), through a [`Backoff`].
//! The one exception is the dispatcher's Job watcher, which keeps kube's own
//! `watcher(..).default_backoff()`: kube restarts the watch itself, on backon too.
//!
//! The delays come from backon's `ExponentialBuilder`. backon is maintained and was already in
//! the dependency tree (kube's runtime and redis use it), so it adds no crate; the `backoff`
//! crate used before is unmaintained (RUSTSEC-2025-0012). The async variant takes its sleep
//! function as a parameter, so this crate stays free of any runtime.
//!
//! # Schedule
//! Retry `n` (from 0) waits `min(initial * 2^n, max_delay)` plus a random jitter of up to as
//! much again (backon's jitter turns a delay `d` into one in `[d, 2d)`), so clients that failed
//! together do not come back in step. A budget ends the schedule once the time since the first
//! attempt plus the next delay would pass it.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};

/// A retry schedule: delays doubling from `initial` up to `max_delay`, with jitter, until the
/// budget or the retry limit is spent. `Copy` and `const`, so a schedule can be a named constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    initial: Duration,
    max_delay: Duration,
    budget: Option<Duration>,
    max_retries: Option<usize>,
}

impl Policy {
    /// Delays doubling from `initial` to `max_delay`, giving up once `budget` would be passed
    /// (`None`: never, as far as time goes).
    pub const fn new(initial: Duration, max_delay: Duration, budget: Option<Duration>) -> Self {
        Self {
            initial,
            max_delay,
            budget,
            max_retries: None,
        }
    }

    /// The same schedule, also giving up after `retries` retries (`retries + 1` attempts).
    #[must_use]
    pub const fn with_max_retries(mut self, retries: usize) -> Self {
        self.max_retries = Some(retries);
        self
    }

    /// The longest delay before jitter; one sleep can last up to twice this.
    pub const fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// Starts one run of the schedule; its budget counts from now.
    pub fn backoff(&self) -> Backoff {
        let builder = ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.initial)
            .with_max_delay(self.max_delay)
            .with_total_delay(self.budget);
        let builder = match self.max_retries {
            Some(retries) => builder.with_max_times(retries),
            None => builder.without_max_times(),
        };
        Backoff {
            delays: builder.build(),
            budget: self.budget,
            started: Instant::now(),
        }
    }
}

/// One run of a [`Policy`]: the delays before each retry, until the policy is spent.
#[derive(Debug)]
pub struct Backoff {
    delays: ExponentialBackoff,
    budget: Option<Duration>,
    started: Instant,
}

impl Backoff {
    /// The delay before the next attempt, or `None` once the schedule is spent.
    pub fn next_delay(&mut self) -> Option<Duration> {
        // backon's total delay (set in `Policy::backoff`) sums the sleeps alone, which a fake or
        // paused clock sees too; the wall clock adds the time the attempts themselves took (a
        // Redis call waiting on its timeout), which is what a caller waiting on the outcome sees.
        let delay = self.delays.next()?;
        match self.budget {
            Some(budget) if self.started.elapsed().saturating_add(delay) > budget => None,
            _ => Some(delay),
        }
    }
}

/// Runs `op` until it succeeds, fails permanently (`is_transient` says no) or the policy is spent,
/// sleeping on the calling thread between attempts. `on_retry` sees each transient error and the
/// delay before the next try, for logging.
pub fn retry_blocking<T, E>(
    policy: Policy,
    op: impl FnMut() -> Result<T, E>,
    is_transient: impl Fn(&E) -> bool,
    on_retry: impl FnMut(&E, Duration),
) -> Result<T, E> {
    retry_with_sleep(policy, op, is_transient, on_retry, std::thread::sleep)
}

/// [`retry_blocking`] with the sleep as a parameter, so tests can record delays instead of waiting.
fn retry_with_sleep<T, E>(
    policy: Policy,
    mut op: impl FnMut() -> Result<T, E>,
    is_transient: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, Duration),
    mut sleep: impl FnMut(Duration),
) -> Result<T, E> {
    let mut backoff = policy.backoff();
    loop {
        let error = match op() {
            Err(e) if is_transient(&e) => e,
            done => return done,
        };
        let Some(delay) = backoff.next_delay() else {
            return Err(error);
        };
        on_retry(&error, delay);
        sleep(delay);
    }
}

/// The async twin of [`retry_blocking`]; `sleep` is the runtime's sleep function.
pub async fn retry_async<T, E, Op, OpFut, Sleep, SleepFut>(
    policy: Policy,
    mut op: Op,
    is_transient: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, Duration),
    sleep: Sleep,
) -> Result<T, E>
where
    // A closure returning a future rather than an async closure: the future of an
    // `AsyncFnMut` cannot be required to be `Send`, and the dispatcher spawns these.
    Op: FnMut() -> OpFut,
    OpFut: Future<Output = Result<T, E>>,
    Sleep: Fn(Duration) -> SleepFut,
    SleepFut: Future<Output = ()>,
{
    let mut backoff = policy.backoff();
    loop {
        let error = match op().await {
            Err(e) if is_transient(&e) => e,
            done => return done,
        };
        let Some(delay) = backoff.next_delay() else {
            return Err(error);
        };
        on_retry(&error, delay);
        sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    const MS: Duration = Duration::from_millis(1);

    fn quick() -> Policy {
        Policy::new(MS, 2 * MS, Some(Duration::from_secs(5)))
    }

    /// Always fails with a transient error, recording the sleeps instead of waiting them.
    fn delays_until_spent(policy: Policy) -> Vec<Duration> {
        let mut slept = Vec::new();
        let out: Result<(), _> = retry_with_sleep(
            policy,
            || Err("down"),
            |_| true,
            |_, _| {},
            |d| slept.push(d),
        );
        assert_eq!(out, Err("down"), "the last error comes back");
        slept
    }

    /// Drives a future whose sleeps are fake, so it completes on its first poll.
    fn block_on<F: Future>(fut: F) -> F::Output {
        let mut cx = Context::from_waker(Waker::noop());
        match pin!(fut).poll(&mut cx) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("fake sleeps never wait"),
        }
    }

    /// Asserts `delay` is in `[base, 2 * base)`, give or take backon's f32 rounding.
    fn assert_jittered(delay: Duration, base: Duration) {
        let slack = Duration::from_micros(10);
        assert!(
            delay + slack >= base && delay < 2 * base + slack,
            "{delay:?} outside [{base:?}, {:?})",
            2 * base
        );
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
        let (mut calls, mut slept) = (0, Vec::new());
        let out: Result<(), _> = retry_with_sleep(
            quick(),
            || {
                calls += 1;
                Err("bad")
            },
            |_| false,
            |_, _| panic!("a permanent error is not retried"),
            |d| slept.push(d),
        );
        assert_eq!((out, calls, slept), (Err("bad"), 1, vec![]));
    }

    #[test]
    fn jitter_keeps_each_delay_between_its_base_and_twice_it() {
        let policy = Policy::new(100 * MS, 1600 * MS, None).with_max_retries(8);
        let bases = [100, 200, 400, 800, 1600, 1600, 1600, 1600].map(|ms| ms * MS);
        let mut jittered = 0;
        for _ in 0..50 {
            let delays = delays_until_spent(policy);
            assert_eq!(delays.len(), bases.len());
            for (&delay, &base) in delays.iter().zip(&bases) {
                assert_jittered(delay, base);
                jittered += usize::from(delay > base + MS);
            }
        }
        assert!(jittered > 0, "jitter moved no delay off its base");
    }

    #[test]
    fn the_budget_ends_the_schedule_before_it_is_passed() {
        let budget = Duration::from_secs(1);
        let delays = delays_until_spent(Policy::new(10 * MS, 80 * MS, Some(budget)));
        let slept: Duration = delays.iter().sum();
        assert!(slept <= budget, "slept {slept:?}, over the budget");
        // The next delay (at most 2 * 80 ms with jitter) is what would have passed it.
        assert!(slept + 160 * MS > budget, "gave up early, after {slept:?}");
    }

    #[test]
    fn time_spent_in_attempts_counts_against_the_budget() {
        let mut backoff = Policy::new(MS, MS, Some(Duration::from_secs(1))).backoff();
        assert!(backoff.next_delay().is_some());
        // As if the attempts so far had taken two seconds.
        backoff.started -= Duration::from_secs(2);
        assert_eq!(backoff.next_delay(), None);
    }

    #[test]
    fn the_retry_limit_caps_the_attempts() {
        let mut calls = 0;
        let out: Result<(), _> = retry_with_sleep(
            quick().with_max_retries(3),
            || {
                calls += 1;
                Err("down")
            },
            |_| true,
            |_, _| {},
            |_| {},
        );
        assert_eq!((out, calls), (Err("down"), 4));
    }

    #[test]
    fn without_budget_or_limit_the_schedule_never_ends_and_stays_capped() {
        let policy = Policy::new(MS, 8 * MS, None);
        let mut backoff = policy.backoff();
        for _ in 0..1000 {
            let delay = backoff.next_delay().expect("an endless schedule");
            assert!(
                delay < 2 * policy.max_delay() + MS,
                "{delay:?} over the cap"
            );
        }
    }

    #[test]
    fn async_retries_sleep_through_the_given_function_and_report_each_retry() {
        let slept = RefCell::new(Vec::new());
        let (mut calls, mut reported) = (0, Vec::new());
        let out = block_on(retry_async(
            quick(),
            || {
                calls += 1;
                std::future::ready(if calls < 3 { Err(calls) } else { Ok(calls) })
            },
            |_| true,
            |e, d| reported.push((*e, d)),
            |d| {
                slept.borrow_mut().push(d);
                std::future::ready(())
            },
        ));
        assert_eq!(out, Ok(3));
        let slept = slept.into_inner();
        assert_eq!(slept.len(), 2);
        assert_eq!(reported, vec![(1, slept[0]), (2, slept[1])]);
    }

    #[test]
    fn async_permanent_errors_stop_at_once() {
        let mut calls = 0;
        let out: Result<(), _> = block_on(retry_async(
            quick(),
            || {
                calls += 1;
                std::future::ready(Err("bad"))
            },
            |_| false,
            |_, _| panic!("a permanent error is not retried"),
            |_| -> std::future::Ready<()> { panic!("a permanent error is not slept on") },
        ));
        assert_eq!((out, calls), (Err("bad"), 1));
    }

    #[test]
    fn async_retries_honour_the_budget() {
        let budget = Duration::from_secs(1);
        let slept = RefCell::new(Duration::ZERO);
        let out: Result<(), _> = block_on(retry_async(
            Policy::new(10 * MS, 80 * MS, Some(budget)),
            || std::future::ready(Err("down")),
            |_| true,
            |_, _| {},
            |d| {
                *slept.borrow_mut() += d;
                std::future::ready(())
            },
        ));
        let slept = slept.into_inner();
        assert_eq!(out, Err("down"));
        assert!(
            slept <= budget && slept + 160 * MS > budget,
            "slept {slept:?}"
        );
    }
}
