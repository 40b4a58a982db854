//! # sluice runner
//!
//! The container of every sluice Job: it loads the batch named by `BATCH_ID` from Redis, runs
//! its messages in parallel with rayon-parallel kernels, writes each result once, marks the
//! batch finished and exits. Exit 0 means every message has a result (ok or error). The other
//! exit codes ([`sluice_contract::exit`]) say the runner could not do its work, an outage; a
//! crash while working leaves the ids it recorded as working ([`claims`]) as the suspects of
//! poison isolation. A retry skips the messages already done.
//!
//! # Layout
//! - [`config`]: the environment, read with envy.
//! - [`store`]: the Redis connection, with reconnects and backoff.
//! - [`batch`]: loading the staged batch and planning one task per distinct message id.
//! - [`claims`]: recording which messages are being worked on, so a crash names its suspects.
//! - [`execute`]: running tasks on the rayon pool, panics caught per message.
//! - [`kernel`]: `modsum`, `pow`, `primes`, `echo` and the test kernels (`test-kernels` feature).
//! - [`sink`]: writing results in pipelined chunks through the write-once script.
//! - [`error`]: the error type and its exit codes.

pub mod batch;
pub mod claims;
pub mod config;
pub mod error;
pub mod execute;
pub mod kernel;
pub mod sink;
pub mod store;

pub use config::Config;
pub use error::{Error, Result};

use batch::Task;
use claims::Claims;
use execute::Event;
use sink::{ResultSink, Tally};
use sluice_contract::record::unix_millis;
use sluice_contract::{BatchState, Keys};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use store::Store;

/// What one run did with its batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Messages (distinct ids) in the batch.
    pub messages: usize,
    /// Messages skipped because they already had a result.
    pub skipped: usize,
    /// Frames dropped as repeats of an id earlier in the batch.
    pub duplicates: usize,
    /// Frames that could not be decoded.
    pub corrupt: usize,
    /// What was written.
    pub written: Tally,
}

/// Processes the configured batch to the end.
///
/// Errors before the run is recorded in Redis (configuration, Redis unreachable, no batch)
/// mean the runner could not start; Redis errors after it are [`Error::LostRedis`]. Either way
/// the exit code tells the dispatcher it was an outage, not a poison message.
#[tracing::instrument(skip_all, fields(batch = %config.env.batch_id))]
pub fn run(config: &Config) -> Result<Summary> {
    let env = &config.env;
    let keys = Keys::new(&env.key_prefix);
    let mut store = Store::new(&config.redis_url, config.redis_retry)?;
    let started = std::time::Instant::now();
    if config.test_kernels && !cfg!(feature = "test-kernels") {
        tracing::warn!("SLUICE_TEST_KERNELS is set, but this runner has no test kernels");
    }

    let frames = batch::load(&mut store, &keys, &env.batch_id)?;
    let mut plan = batch::plan(&frames, env);
    drop(frames);
    let messages = plan.tasks.len();
    let skipped = batch::skip_done(&mut store, &keys, &mut plan.tasks)?;
    Claims::start(&mut store, &keys, &env.batch_id)?;
    tracing::info!(
        messages,
        skipped,
        duplicates = plan.duplicates,
        "batch loaded"
    );
    let written = work(config, &mut store, &keys, std::mem::take(&mut plan.tasks))
        .and_then(|written| {
            mark_finished(&mut store, &keys, &env.batch_id, started.elapsed())?;
            Ok(written)
        })
        .map_err(Error::while_working)?;
    let summary = Summary {
        messages,
        skipped,
        duplicates: plan.duplicates,
        corrupt: plan.corrupt,
        written,
    };
    tracing::info!(?summary, "batch finished");
    Ok(summary)
}

/// Runs the tasks on the rayon pool while this thread records claims and writes results.
fn work(config: &Config, store: &mut Store, keys: &Keys, tasks: Vec<Task>) -> Result<Tally> {
    let env = &config.env;
    let ids = tasks.iter().map(|t| t.id.clone()).collect();
    let claims = Claims::new(ids, rayon::current_num_threads());
    claims.record_ahead(store, keys, &env.batch_id)?;
    let mut sink = ResultSink::new(
        store,
        keys,
        env.result_ttl_seconds,
        env.results_maxlen,
        config.result_chunk,
    )
    .with_max_age(config.flush_interval);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let claims = &claims;
        scope.spawn(move || {
            execute::run_all(tasks, claims, &env.batch_id, config.test_kernels, &tx);
        });
        let written = write_as_completed(&rx, &mut sink, claims, config);
        // On an error the workers must stop before the scope can end.
        claims.close();
        written
    })
}

/// Writes results as they arrive (a full chunk at once, a partial one after the flush
/// interval) and keeps the claims ahead of the workers.
fn write_as_completed(
    rx: &Receiver<Event>,
    sink: &mut ResultSink<'_>,
    claims: &Claims,
    config: &Config,
) -> Result<Tally> {
    let batch_id = &config.env.batch_id;
    loop {
        match rx.recv_timeout(config.flush_interval) {
            Ok(Event::Result(record)) => {
                claims.finished_one();
                sink.push(record)?;
            }
            Ok(Event::Starving) => {}
            Err(RecvTimeoutError::Timeout) => sink.flush()?,
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let (store, keys) = sink.store();
        claims.record_ahead(store, keys, batch_id)?;
    }
    sink.flush()?;
    Ok(sink.tally)
}

/// Marks the batch succeeded, with the time its processing took (`work_us`: what adaptive
/// batching learns the cost per message from, free of pod start-up).
fn mark_finished(
    store: &mut Store,
    keys: &Keys,
    batch_id: &str,
    work: std::time::Duration,
) -> Result<()> {
    let key = keys.batch(batch_id);
    let now = unix_millis();
    let work_us = work.as_micros() as u64;
    store.call("marking the batch finished", |con| {
        redis::cmd("HSET")
            .arg(&key)
            .arg("state")
            .arg(BatchState::Succeeded.as_str())
            .arg("finished_at")
            .arg(now)
            .arg("work_us")
            .arg(work_us)
            .query::<()>(con)
    })
}
