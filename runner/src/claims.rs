//! Naming a crash's suspects: no message is worked on before its id is recorded in Redis.
//!
//! A runner killed by its work (a segfault, an OOM kill, a hang past the deadline) cannot say
//! what killed it. So the runner records ids in `{prefix}:batch:{id}:working` *before* handing
//! them to the workers, a window at a time; when its Job fails, the recorded ids still without
//! a result are the suspects, and only they feed poison isolation. Everything else is
//! innocent, and a runner that died before recording anything never reached its work at all:
//! an outage, not poison.
//!
//! The window adapts to the work: at least two messages per thread, and as many as the runner
//! finishes in [`AHEAD`], so fast kernels pay a Redis round trip every few milliseconds, not
//! every message, and slow ones leave few suspects. The workers pull tasks in order through
//! [`Claims::next`], which waits while the window is used up; the writer thread (which owns
//! the Redis connection) extends it with [`Claims::record_ahead`].

use crate::error::Result;
use crate::store::Store;
use sluice_contract::Keys;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How much work, in time, the window covers at the current pace.
const AHEAD: Duration = Duration::from_millis(20);

/// The ids of a batch's tasks, in the order the workers take them.
pub struct Claims {
    ids: Vec<String>,
    threads: usize,
    state: Mutex<State>,
    recorded_cv: Condvar,
    started: Instant,
}

#[derive(Default)]
struct State {
    /// Tasks `[..recorded]` are recorded as working and may be taken.
    recorded: usize,
    /// Tasks `[..taken]` have been handed to a worker.
    taken: usize,
    /// Results seen by the writer, for the pace.
    finished: usize,
    /// A worker is waiting for the window to grow.
    starved: bool,
    /// The writer gave up (Redis lost): hand out nothing more.
    closed: bool,
}

impl Claims {
    /// Claims for `ids`, worked on by `threads` workers.
    pub fn new(ids: Vec<String>, threads: usize) -> Self {
        Self {
            ids,
            threads: threads.max(1),
            state: Mutex::default(),
            recorded_cv: Condvar::new(),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Counters only: a panicking worker cannot leave them half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next task's index, once it is recorded; `None` when every task is taken or the
    /// writer gave up. `starving` is called (without the lock) when the worker must wait, to
    /// wake the writer.
    pub fn next(&self, starving: impl Fn()) -> Option<usize> {
        let mut state = self.lock();
        let index = state.taken;
        if index >= self.ids.len() || state.closed {
            return None;
        }
        state.taken += 1;
        while index >= state.recorded && !state.closed {
            if !state.starved {
                state.starved = true;
                drop(state);
                starving();
                state = self.lock();
                continue;
            }
            state = self
                .recorded_cv
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        (!state.closed).then_some(index)
    }

    /// One more result was written: the pace the window follows.
    pub fn finished_one(&self) {
        self.lock().finished += 1;
    }

    /// Records the next window of ids if the workers are close to its end; the first call
    /// also counts this run in the batch's `runs` field, which says the runner reached Redis
    /// and its batch.
    pub fn record_ahead(&self, store: &mut Store, keys: &Keys, batch_id: &str) -> Result<()> {
        let (from, to, first) = {
            let mut state = self.lock();
            state.starved = false;
            let window = self.window(state.finished);
            let low_water = state.taken + window / 2;
            if state.recorded >= self.ids.len() || state.recorded > low_water {
                return Ok(());
            }
            let to = (state.taken + window).min(self.ids.len());
            (state.recorded, to, state.recorded == 0)
        };
        let ids = &self.ids[from..to];
        let working = keys.batch_working(batch_id);
        store.call("recording the messages being worked on", |con| {
            redis::pipe().sadd(&working, ids).ignore().query::<()>(con)
        })?;
        if first {
            tracing::debug!(window = to - from, "first messages recorded as working");
        }
        self.lock().recorded = to;
        self.recorded_cv.notify_all();
        Ok(())
    }

    /// Counts this run in the batch's `runs` field: the runner reached Redis and its batch.
    pub fn start(store: &mut Store, keys: &Keys, batch_id: &str) -> Result<()> {
        let batch = keys.batch(batch_id);
        store.call("recording the run's start", |con| {
            redis::cmd("HINCRBY")
                .arg(&batch)
                .arg("runs")
                .arg(1)
                .query::<()>(con)
        })
    }

    /// Hands out nothing more; waiting workers return.
    pub fn close(&self) {
        self.lock().closed = true;
        self.recorded_cv.notify_all();
    }

    /// Ids to record ahead of the workers: two per thread, or [`AHEAD`] of work at the pace.
    fn window(&self, finished: usize) -> usize {
        let per_second = finished as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let paced = (per_second * AHEAD.as_secs_f64()) as usize;
        paced.max(2 * self.threads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_handed_out_before_it_is_recorded() {
        let claims = Claims::new(vec!["a".into(), "b".into()], 1);
        claims.close();
        assert_eq!(
            claims.next(|| {}),
            None,
            "a closed claim set hands out nothing"
        );
        let claims = Claims::new(vec!["a".into()], 1);
        claims.lock().recorded = 1;
        assert_eq!(claims.next(|| panic!("no wait needed")), Some(0));
        assert_eq!(claims.next(|| {}), None, "every task taken");
    }

    #[test]
    fn the_window_grows_with_the_pace() {
        let claims = Claims::new(vec![String::new(); 10_000], 2);
        assert_eq!(
            claims.window(0),
            4,
            "two per thread before any pace is known"
        );
        assert!(claims.window(1_000_000) > 4);
    }
}
