//! Following the dispatcher's Jobs in the cluster and turning their conditions into outcomes.
//!
//! A `kube::runtime::reflector` keeps a store of every Job with the dispatcher's labels, fed by
//! one watcher. Each launch registers interest in its Job's name *before* creating it, and
//! marks it created once the API server has it, so no outcome is missed:
//! - a Job seen finished resolves its waiter (an adopted Job that finished earlier resolves at
//!   registration, from the store);
//! - a Job deleted before it finished fails its batch rather than leaving it waiting;
//! - a Job that finished or vanished while the watch was down is settled when the watcher's
//!   re-list completes (`InitDone`): the store then holds exactly what the cluster has, so a
//!   created Job missing from it is gone. Only Jobs created before that re-list began are
//!   judged, since a list already under way may not include a Job created meanwhile.
//!
//! Each waiter is resolved once and then dropped, so every outcome is delivered exactly once.
//! [`supervise`] owns the watch task: it restarts it with backoff if it ever ends, and blocks
//! the dispatcher's readiness while the watch fails.

use crate::health::{self, Health};
use crate::launcher::interface::{FailureKind, Outcome};
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use sluice_contract::retry::Policy;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How quickly an ended watch is restarted: never given up on.
const RESTARTS: Policy = Policy::new(Duration::from_millis(200), Duration::from_secs(30), None);

/// The reason a batch fails with when its Job disappears before finishing.
const DELETED: &str = "JobDeleted: the Job was deleted before it finished";

/// What the watch knows of each Job, and who waits for which.
pub struct JobTracker {
    store: Store<Job>,
    namespace: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiters: HashMap<String, Waiter>,
    /// Re-lists begun so far (each watcher `Init`).
    relists: u64,
}

struct Waiter {
    tx: oneshot::Sender<Outcome>,
    /// The re-list count when the API server confirmed the Job; `None` until then.
    created_at: Option<u64>,
    /// When the API server confirmed the Job.
    created: Option<std::time::Instant>,
}

impl JobTracker {
    /// A tracker reading the Jobs of `namespace` from `store` (the reflector's reader).
    pub fn new(store: Store<Job>, namespace: &str) -> Self {
        Self {
            store,
            namespace: namespace.to_owned(),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Single inserts and removes: a panic elsewhere cannot leave the map half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stored(&self, name: &str) -> Option<Arc<Job>> {
        self.store
            .get(&ObjectRef::new(name).within(&self.namespace))
    }

    fn finished(&self, name: &str) -> Option<Outcome> {
        let job = self.stored(name)?;
        outcome_of(&job)
    }

    /// Waits for the Job `name` to finish; resolves at once if the store has it finished.
    pub fn register(&self, name: &str) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        if let Some(outcome) = self.finished(name) {
            let _ = tx.send(outcome);
        } else {
            let waiter = Waiter {
                tx,
                created_at: None,
                created: None,
            };
            self.lock().waiters.insert(name.to_owned(), waiter);
        }
        rx
    }

    /// The API server has the Job `name` (created, or found existing and adopted).
    pub fn created(&self, name: &str) {
        let mut state = self.lock();
        let relists = state.relists;
        if let Some(waiter) = state.waiters.get_mut(name) {
            waiter.created_at = Some(relists);
            waiter.created = Some(std::time::Instant::now());
        }
        drop(state);
        // Adopted after it finished, and its last event already went by.
        if let Some(outcome) = self.finished(name) {
            self.resolve(name, outcome);
        }
    }

    /// Jobs created and still awaited, with when they were created, and whether the store
    /// holds them suspended (Kueue): what [`super::pods`] checks for Jobs that cannot run.
    pub fn waiting(&self) -> Vec<(String, std::time::Instant, bool)> {
        let names: Vec<(String, std::time::Instant)> = self
            .lock()
            .waiters
            .iter()
            .filter_map(|(name, w)| w.created.map(|at| (name.clone(), at)))
            .collect();
        names
            .into_iter()
            .map(|(name, at)| {
                let suspended = self
                    .stored(&name)
                    .and_then(|job| job.spec.as_ref()?.suspend)
                    .unwrap_or(false);
                (name, at, suspended)
            })
            .collect()
    }

    /// Ends the wait for Job `name` with `outcome`, decided outside the Job's own conditions
    /// (its pods cannot run).
    pub fn give_up(&self, name: &str, outcome: Outcome) {
        self.resolve(name, outcome);
    }

    /// The Job `name` as the watch last saw it.
    pub fn get(&self, name: &str) -> Option<Arc<Job>> {
        self.stored(name)
    }

    /// Forgets a Job the dispatcher has finished with.
    pub fn forget(&self, name: &str) {
        self.lock().waiters.remove(name);
    }

    /// Jobs the cluster reports as not finished.
    pub fn active(&self) -> usize {
        self.store
            .state()
            .iter()
            .filter(|job| outcome_of(job).is_none())
            .count()
    }

    fn resolve(&self, name: &str, outcome: Outcome) {
        if let Some(waiter) = self.lock().waiters.remove(name) {
            let _ = waiter.tx.send(outcome);
        }
    }

    /// Applies one watcher event, after the reflector has applied it to the store.
    pub fn observe(&self, event: &watcher::Event<Job>) {
        match event {
            watcher::Event::Apply(job) | watcher::Event::InitApply(job) => {
                if let (Some(name), Some(outcome)) = (job.metadata.name.as_deref(), outcome_of(job))
                {
                    self.resolve(name, outcome);
                }
            }
            watcher::Event::Delete(job) => {
                if let Some(name) = job.metadata.name.as_deref() {
                    let outcome = outcome_of(job).unwrap_or_else(|| failed(DELETED));
                    self.resolve(name, outcome);
                }
            }
            watcher::Event::Init => {
                let mut state = self.lock();
                state.relists += 1;
                // The first list is the start; any later one means the watch could not resume.
                if state.relists > 1 {
                    tracing::info!(relists = state.relists - 1, "re-listing jobs");
                }
            }
            watcher::Event::InitDone => self.settle_after_relist(),
        }
    }

    /// After a complete re-list the store is the cluster's truth: resolve every waiter whose
    /// Job finished, or vanished, while the watch was not looking.
    fn settle_after_relist(&self) {
        let judged: Vec<String> = {
            let state = self.lock();
            state
                .waiters
                .iter()
                .filter(|(_, w)| w.created_at.is_some_and(|at| at < state.relists))
                .map(|(name, _)| name.clone())
                .collect()
        };
        for name in judged {
            if let Some(job) = self.stored(&name) {
                if let Some(outcome) = outcome_of(&job) {
                    self.resolve(&name, outcome);
                }
            } else {
                tracing::warn!(job = %name, "job vanished while the watch was down");
                self.resolve(&name, failed(DELETED));
            }
        }
    }
}

/// A Job that vanished before it finished never had its chance: an outage, retried whole.
fn failed(reason: &str) -> Outcome {
    Outcome::failed(FailureKind::JobDeleted, reason)
}

/// The outcome a Job's conditions say, if it has finished.
pub fn outcome_of(job: &Job) -> Option<Outcome> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let done = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    // Since Kubernetes 1.31 the controller writes `SuccessCriteriaMet` / `FailureTarget` at
    // once and `Complete` / `Failed` only after every pod has terminated: a pod stuck
    // Terminating on a lost node must not hold the outcome back.
    if done("Complete")
        .or_else(|| done("SuccessCriteriaMet"))
        .is_some()
    {
        return Some(Outcome::Succeeded);
    }
    done("Failed").or_else(|| done("FailureTarget")).map(|c| {
        let message = c.message.as_deref().unwrap_or("the Job failed");
        let reason = c.reason.as_deref().unwrap_or("Failed");
        Outcome::failed(kind_of(reason, message), format!("{reason}: {message}"))
    })
}

/// The Job controller fails a Job at once through the `FailJob` rule when its runner exits
/// with an outage code, saying so in the condition: `PodFailurePolicy: Container runner for
/// pod ns/name failed with exit code 69 matching FailJob rule at index 1`. Everything else
/// (`BackoffLimitExceeded`, `DeadlineExceeded`) may be the work's fault.
fn kind_of(reason: &str, message: &str) -> FailureKind {
    let code = message
        .split_once("exit code ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|code| code.parse::<i32>().ok());
    let outage_exit = code.is_some_and(sluice_contract::exit::is_outage);
    FailureKind::of_condition(reason, outage_exit)
}

/// Whether the Job has its `Failed` condition: the cluster then deletes it after its TTL.
pub fn has_failed(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Failed" && c.status == "True"))
}

/// Watcher events, as [`supervise`] consumes them.
pub type Events = BoxStream<'static, watcher::Result<watcher::Event<Job>>>;

/// Follows the Jobs matching `selector`, retrying failed requests with kube's default backoff
/// (a 410 Gone or a dropped watch becomes a re-list).
pub fn job_events(api: Api<Job>, selector: &str) -> impl Fn() -> Events + Send + 'static {
    let config = watcher::Config::default().labels(selector);
    move || {
        watcher(api.clone(), config.clone())
            .default_backoff()
            .boxed()
    }
}

/// Runs the Job watch into the store and `tracker` until `stop`: a task of its own, restarted
/// with backoff if it ever ends or panics, with readiness blocked ([`health::JOB_WATCH`]) while
/// it fails or is down.
pub async fn supervise(
    events: impl Fn() -> Events + Send + 'static,
    writer: Writer<Job>,
    tracker: Arc<JobTracker>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    // Shared with each run, so the store survives a run that panics.
    let writer = Arc::new(Mutex::new(writer));
    let mut restarts = RESTARTS.backoff();
    loop {
        let run = follow(
            events(),
            Arc::clone(&writer),
            Arc::clone(&tracker),
            Arc::clone(&health),
            stop.clone(),
        );
        let ended = tokio::spawn(run).await;
        if stop.is_cancelled() {
            return;
        }
        let why = match ended {
            Ok(()) => "the job watch ended".to_owned(),
            Err(e) => format!("the job watch task failed: {e}"),
        };
        // RESTARTS has neither budget nor retry limit: its schedule never runs out.
        let delay = restarts.next_delay().unwrap_or(RESTARTS.max_delay());
        tracing::error!(%why, ?delay, "restarting the job watch");
        health.block(health::JOB_WATCH, format!("{why}; restarting it"));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One run of the watch: applies each event to the store, then to the tracker.
async fn follow(
    mut events: Events,
    writer: Arc<Mutex<Writer<Job>>>,
    tracker: Arc<JobTracker>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            // Cancellation-safe: the watcher resumes from its last resource version.
            event = events.next() => event,
        };
        match event {
            Some(Ok(event)) => {
                writer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .apply_watcher_event(&event);
                tracker.observe(&event);
                // An `Init` only starts a re-list, which may still fail.
                if !matches!(event, watcher::Event::Init) {
                    health.clear(health::JOB_WATCH);
                }
            }
            Some(Err(e)) => {
                health.block(health::JOB_WATCH, format!("watching jobs failed: {e}"));
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests;
