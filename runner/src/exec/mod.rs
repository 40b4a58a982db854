//! Exec kernels: workers in any language, named by the table in `KERNELS_FILE`
//! ([`sluice_contract::kernels_file`]) and spoken to through the exec protocol (docs/EXEC.md).
//!
//! Each kernel keeps a pool of up to `processes` worker processes for the batch, started as
//! the rayon workers first need them and stopped when the batch ends (stdin closed, a grace
//! period, then a kill). A worker serves one message at a time. A worker that exits, is
//! killed, exceeds `timeout`, or answers out of protocol fails exactly the message it was
//! working on (an `error` result with the reason) and is replaced; the batch goes on.
//!
//! What is an outage instead: a command that cannot be started at all, and fresh workers that
//! die before ever answering, on two different messages, while none of this kernel's workers
//! has answered anything yet (a worker that cannot import its function, say). The runner then
//! stops with an outage exit code and the batch is retried whole later; no message is blamed.

pub mod worker;

use crate::registry::Kernel;
use crate::registry::KernelError;
use serde_json::Value;
use sluice_contract::kernels_file::ExecSpec;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;
use worker::Worker;

/// How long a worker may take to exit once its stdin is closed at the end of a batch.
const GRACE: Duration = Duration::from_secs(2);
/// Fresh workers a message may use up before it is failed as its own fault.
const FRESH_TRIES: u32 = 3;

/// One exec kernel and its workers.
pub struct ExecKernel {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    processes: usize,
    timeout: Option<Duration>,
    pool: Mutex<Pool>,
    freed: Condvar,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Worker>,
    /// Workers started and not yet retired.
    live: usize,
    /// Some worker has answered a message in this run.
    proven: bool,
    /// Messages on which a fresh worker died before answering anything.
    fresh_deaths: BTreeSet<String>,
}

impl ExecKernel {
    /// The kernel `name` running `spec` from `dir`; `program` is its resolved executable and
    /// `threads` the default number of processes.
    pub fn new(
        name: &str,
        spec: &ExecSpec,
        program: PathBuf,
        dir: PathBuf,
        threads: usize,
    ) -> Self {
        Self {
            name: name.to_owned(),
            program,
            args: spec.command[1..].to_vec(),
            dir,
            processes: spec.processes.unwrap_or(threads).max(1),
            timeout: spec.timeout,
            pool: Mutex::default(),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle worker, a new one while under `processes`, or the next one freed.
    fn checkout(&self) -> Result<Worker, KernelError> {
        let mut pool = self.lock();
        loop {
            if let Some(worker) = pool.idle.pop() {
                return Ok(worker);
            }
            if pool.live < self.processes {
                pool.live += 1;
                drop(pool);
                return Worker::spawn(&self.name, &self.program, &self.args, &self.dir).map_err(
                    |e| {
                        self.retire();
                        KernelError::Unavailable {
                            kernel: self.name.clone(),
                            reason: format!("cannot start {}: {e}", self.program.display()),
                            not_found: e.kind() == std::io::ErrorKind::NotFound,
                        }
                    },
                );
            }
            pool = self
                .freed
                .wait(pool)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn checkin(&self, worker: Worker) {
        let mut pool = self.lock();
        pool.proven = true;
        pool.idle.push(worker);
        drop(pool);
        self.freed.notify_one();
    }

    fn retire(&self) {
        self.lock().live -= 1;
        self.freed.notify_one();
    }

    /// A fresh worker died on `id` before answering anything: whether that now looks like a
    /// kernel that cannot run at all rather than a message that kills it.
    fn cannot_run(&self, id: &str) -> bool {
        let mut pool = self.lock();
        if pool.proven {
            return false;
        }
        pool.fresh_deaths.insert(id.to_owned());
        pool.fresh_deaths.len() >= 2
    }
}

impl Kernel for ExecKernel {
    fn call(&self, id: &str, input: Value) -> Result<Value, KernelError> {
        let mut fresh_tries = 0;
        loop {
            let mut worker = self.checkout()?;
            let fresh = worker.answered == 0;
            match worker.ask(id, &input, self.timeout) {
                Ok(answer) => {
                    self.checkin(worker);
                    return answer.map_err(KernelError::Message);
                }
                Err(broken) => {
                    drop(worker);
                    self.retire();
                    tracing::warn!(kernel = %self.name, message = %id, reason = %broken.0, "exec worker failed; replacing it");
                    if !fresh {
                        return Err(KernelError::Message(broken.0));
                    }
                    fresh_tries += 1;
                    if self.cannot_run(id) {
                        return Err(KernelError::Unavailable {
                            kernel: self.name.clone(),
                            reason: format!(
                                "its workers die before answering anything ({})",
                                broken.0
                            ),
                            not_found: false,
                        });
                    }
                    if fresh_tries >= FRESH_TRIES {
                        return Err(KernelError::Message(broken.0));
                    }
                }
            }
        }
    }

    fn finish(&self) {
        let idle = std::mem::take(&mut self.lock().idle);
        let stoppers: Vec<_> = idle
            .into_iter()
            .map(|worker| std::thread::spawn(move || worker.stop(GRACE)))
            .collect();
        for stopper in stoppers {
            let _ = stopper.join();
        }
    }
}
