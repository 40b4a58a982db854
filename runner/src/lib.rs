//! # sluice runner
//!
//! The container of every sluice Job, and a library for building your own: a runner loads the
//! batch named by `BATCH_ID` from Redis, runs its messages in parallel on rayon's pool with
//! the kernel each names, writes each result once, marks the batch finished and exits. Exit 0
//! means every message has a result (ok or error). The other exit codes
//! ([`sluice_contract::exit`]) say the runner could not do its work, an outage; a crash while
//! working leaves the ids it recorded as working ([`claims`]) as the suspects of poison
//! isolation. A retry skips the messages already done.
//!
//! # Your own kernels
//! A kernel is a named, typed function: serde input in, serde output or an error out. Register
//! it on a [`Runner`] and hand `main` to the library:
//!
//! ```no_run
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Input {
//!     text: String,
//! }
//!
//! fn shout(input: Input) -> Result<String, std::convert::Infallible> {
//!     Ok(input.text.to_uppercase())
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     // Your kernels beside sluice's own: modsum, pow, primes, echo.
//!     sluice_runner::kernel::builtin(sluice_runner::Runner::new())
//!         .kernel("shout", shout)
//!         .run()
//! }
//! ```
//!
//! Workers in any other language are exec kernels: a table in `KERNELS_FILE` names their
//! commands, and the runner speaks the exec protocol with them (docs/EXEC.md, [`exec`]).
//!
//! # Layout
//! - [`builder`]: [`Runner`], the public entry point.
//! - [`config`]: the environment, read with envy.
//! - [`store`]: the Redis connection, with reconnects and backoff.
//! - [`batch`]: loading the staged batch and planning one task per distinct message id.
//! - [`claims`]: recording which messages are being worked on, so a crash names its suspects.
//! - [`execute`]: running tasks on the rayon pool, panics caught per message.
//! - `registry`: the kernels by name, typed functions and exec kernels alike.
//! - [`kernel`]: `modsum`, `pow`, `primes`, `echo` and the test kernels (`test-kernels` feature).
//! - [`exec`]: exec kernels, their worker processes and the protocol.
//! - [`sink`]: writing results in pipelined chunks through the write-once script.
//! - [`error`]: the error type and its exit codes.

pub mod batch;
pub mod builder;
pub mod claims;
pub mod config;
pub mod error;
pub mod exec;
pub mod execute;
pub mod kernel;
mod registry;
pub mod sink;
pub mod store;

pub use builder::Runner;
pub use config::Config;
pub use error::{Error, Result};

use batch::Task;
use claims::Claims;
use execute::{Event, Work};
use registry::Kernels;
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

/// Processes the configured batch to the end with the built-in kernels, as the shipped runner
/// does ([`kernel::builtin`]).
///
/// # Errors
/// See [`Runner::run_batch`].
pub fn run(config: &Config) -> Result<Summary> {
    kernel::builtin(Runner::new()).run_batch(config)
}

/// Processes the configured batch to the end with `kernels`.
///
/// Errors before the run is recorded in Redis (configuration, Redis unreachable, no batch)
/// mean the runner could not start; Redis errors after it are [`Error::LostRedis`]. Either way
/// the exit code tells the dispatcher it was an outage, not a poison message.
#[tracing::instrument(skip_all, fields(batch = %config.env.batch_id))]
fn process(config: &Config, kernels: &Kernels) -> Result<Summary> {
    let env = &config.env;
    let keys = Keys::new(&env.key_prefix);
    let mut store = Store::new(&config.redis_url, &config.redis_tls, config.redis_retry)?;
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
    let tasks = std::mem::take(&mut plan.tasks);
    let written = work(config, kernels, &mut store, &keys, tasks)
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
fn work(
    config: &Config,
    kernels: &Kernels,
    store: &mut Store,
    keys: &Keys,
    tasks: Vec<Task>,
) -> Result<Tally> {
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
        let work = Work {
            batch: &env.batch_id,
            kernels,
            test_kernels: config.test_kernels,
        };
        scope.spawn(move || execute::run_all(tasks, claims, work, &tx));
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
            Ok(Event::Unavailable(e)) => {
                // What was computed so far is kept; the rest is retried whole later.
                sink.flush()?;
                return Err(Error::KernelUnavailable(e));
            }
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
