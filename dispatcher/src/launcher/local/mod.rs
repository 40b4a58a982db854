//! The local launcher: runs a Job's container as a child process of `RUNNER_BIN`.
//!
//! It behaves like the Job controller where it matters: the process gets exactly the
//! container's environment (Secret references resolved from the dispatcher's own settings,
//! plus the `SLUICE_TEST_KERNELS` pass-through), a failed run is retried up to `backoffLimit`,
//! a runner that exits with an outage code fails the Job at once (the Job's `FailJob` rule),
//! and the whole Job is killed once `activeDeadlineSeconds` have passed.

use super::interface::{Cause, FailureKind, Launcher, Outcome, Running};
use crate::error::{Error, Result};
use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::Job;
use sluice_contract::kernels_file::find_executable;
use sluice_contract::retry::{Policy, retry_async};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

mod orphan;

/// What the local launcher needs besides the Job.
pub struct LocalLauncher {
    runner_bin: PathBuf,
    /// Values of `(secret name, key)` pairs the Job's environment refers to.
    secrets: BTreeMap<(String, String), String>,
    /// Extra variables passed through from the dispatcher's environment.
    pass_through: Vec<(String, String)>,
    startup_delay: Duration,
    /// Cancelled when the dispatcher gives up waiting for running Jobs.
    abandon: CancellationToken,
}

/// A Job reduced to what a local run needs.
struct RunSpec {
    name: String,
    /// The batch, as the runner's `BATCH_ID` says it.
    batch_id: String,
    env: Vec<(String, String)>,
    attempts: u32,
    deadline: Duration,
}

impl Launcher for LocalLauncher {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn launch<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<Running>> {
        Box::pin(async move { self.start(job) })
    }

    /// A runner that a lost dispatcher started on this machine is followed until it exits;
    /// with none, the batch is run again (the runner skips messages that have results).
    fn adopt<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<Running>> {
        Box::pin(async move {
            let spec = self.run_spec(job)?;
            match orphan::find(&spec.batch_id) {
                Some(pid) => Ok(orphan::follow(pid, spec.deadline, self.abandon.clone())),
                None => self.start(job),
            }
        })
    }

    fn outlives_dispatcher(&self) -> bool {
        false
    }

    /// A child process holds nothing once it has exited.
    fn finished<'a>(&'a self, _job_name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

impl LocalLauncher {
    /// A launcher running `runner_bin`, which must exist (a bare name is looked up in `PATH`
    /// now, since runners get no `PATH` of their own).
    pub fn new(
        runner_bin: &Path,
        secrets: BTreeMap<(String, String), String>,
        pass_through: Vec<(String, String)>,
        startup_delay: Duration,
        abandon: CancellationToken,
    ) -> Result<Self> {
        let runner_bin = find_executable(runner_bin, Path::new("")).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "RUNNER_BIN {} not found; build it with `cargo build --release` or set RUNNER_BIN",
                runner_bin.display()
            ))
        })?;
        Ok(Self {
            runner_bin,
            secrets,
            pass_through,
            startup_delay,
            abandon,
        })
    }

    /// Starts the Job; the returned future drives its runs, retries and deadline.
    pub fn start(&self, job: &Job) -> Result<Running> {
        let spec = self.run_spec(job)?;
        let command = self.command(&spec);
        let (startup_delay, abandon) = (self.startup_delay, self.abandon.clone());
        Ok(Box::pin(async move {
            let attempts = run_attempts(command, &spec, startup_delay);
            tokio::select! {
                // Cancellation-safe: dropping the attempts kills the child (kill_on_drop).
                () = abandon.cancelled() => Outcome::Abandoned,
                outcome = tokio::time::timeout(spec.deadline, attempts) => outcome.unwrap_or_else(|_| {
                    Outcome::failed(FailureKind::DeadlineExceeded, format!("DeadlineExceeded: still running after {}s", spec.deadline.as_secs()))
                }),
            }
        }))
    }

    fn command(&self, spec: &RunSpec) -> Command {
        let mut command = Command::new(&self.runner_bin);
        command
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .envs(self.pass_through.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Its own process group: a Ctrl-C in the terminal reaches the dispatcher only, which
        // then decides, as the Job controller would, whether runners finish or are stopped.
        #[cfg(unix)]
        command.process_group(0);
        command
    }

    fn run_spec(&self, job: &Job) -> Result<RunSpec> {
        let name = job.metadata.name.clone().unwrap_or_default();
        let invalid = |reason: &str| Error::Launch {
            job: name.clone(),
            reason: reason.into(),
        };
        let spec = job
            .spec
            .as_ref()
            .ok_or_else(|| invalid("the Job has no spec"))?;
        let container = spec
            .template
            .spec
            .as_ref()
            .and_then(|pod| pod.containers.first())
            .ok_or_else(|| invalid("the Job has no container"))?;
        let mut env = Vec::new();
        for var in container.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(source)) => self.resolve(source).ok_or_else(|| {
                    invalid(&format!(
                        "cannot resolve the source of variable {}",
                        var.name
                    ))
                })?,
                (None, None) => String::new(),
            };
            env.push((var.name.clone(), value));
        }
        let attempts = u32::try_from(spec.backoff_limit.unwrap_or(6)).unwrap_or(0) + 1;
        let deadline = Duration::from_secs(
            spec.active_deadline_seconds
                .map_or(u64::MAX / 4, |s| s.max(1) as u64),
        );
        let batch_id = env
            .iter()
            .find(|(k, _)| k == "BATCH_ID")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Ok(RunSpec {
            name,
            batch_id,
            env,
            attempts,
            deadline,
        })
    }

    fn resolve(&self, source: &k8s_openapi::api::core::v1::EnvVarSource) -> Option<String> {
        let secret = source.secret_key_ref.as_ref()?;
        self.secrets
            .get(&(secret.name.clone(), secret.key.clone()))
            .cloned()
    }
}

/// Delays between a failed run and the next: 400 ms doubling to 6.4 s, plus jitter. Shorter than
/// the Job controller's (10 s doubling to 6 min), so local runs and tests do not crawl.
const RERUN: Policy = Policy::new(
    Duration::from_millis(400),
    Duration::from_millis(6_400),
    None,
);

/// Why one run failed.
#[derive(Debug)]
struct RunFailure {
    reason: String,
    cause: Cause,
}

/// Runs up to `spec.attempts` times; each retry waits a little longer, like the Job controller.
/// A run that could not do its work ends the Job at once, as the Job's `FailJob` rule does.
async fn run_attempts(command: Command, spec: &RunSpec, startup_delay: Duration) -> Outcome {
    // Each attempt's future spawns from the one command; the lock is held only to spawn.
    let command = &Mutex::new(command);
    let mut attempt = 0_u32;
    let run = || {
        attempt += 1;
        let attempt = attempt;
        async move {
            // Simulated pod start-up (benchmarks): the runner starts only after it.
            tokio::time::sleep(startup_delay).await;
            let spawned = command
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .spawn();
            let outcome = run_to_exit(spawned).await;
            if let Err(failure) = &outcome {
                tracing::warn!(job = %spec.name, attempt, attempts = spec.attempts, reason = %failure.reason, "runner failed");
            }
            outcome
        }
    };
    let policy = RERUN.with_max_retries(spec.attempts.saturating_sub(1) as usize);
    let crashed = |f: &RunFailure| f.cause == Cause::Crash;
    match retry_async(policy, run, crashed, |_, _| {}, tokio::time::sleep).await {
        Ok(()) => Outcome::Succeeded,
        Err(last) if last.cause == Cause::Outage => Outcome::failed(
            FailureKind::OutageExit,
            format!("PodFailurePolicy: {}", last.reason),
        ),
        Err(last) => Outcome::failed(
            FailureKind::BackoffLimitExceeded,
            format!("BackoffLimitExceeded: {}", last.reason),
        ),
    }
}

/// Lines of a failed runner's output kept for its failure reason.
const TAIL_LINES: usize = 3;

/// Waits for one run of the runner: `Ok` on exit code 0, else why it failed, with the last
/// lines it wrote (what a user reads first when runners cannot start).
async fn run_to_exit(spawned: std::io::Result<Child>) -> std::result::Result<(), RunFailure> {
    let outage = |reason: String| RunFailure {
        reason,
        cause: Cause::Outage,
    };
    let mut child = spawned.map_err(|e| outage(format!("cannot start runner: {e}")))?;
    let tail = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(forward(stderr)));
    let status = child
        .wait()
        .await
        .map_err(|e| outage(format!("cannot wait for runner: {e}")))?;
    if status.success() {
        return Ok(());
    }
    let mut failure = describe(status);
    // A process the runner left behind may hold the pipe open: do not wait for it long.
    let tail = match tail {
        Some(task) => tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    if !tail.is_empty() {
        failure.reason = format!("{}; last output: {}", failure.reason, tail.join(" | "));
    }
    Err(failure)
}

/// Copies the runner's stderr to the dispatcher's, line by line, keeping the last few lines.
async fn forward(stderr: tokio::process::ChildStderr) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut tail = std::collections::VecDeque::with_capacity(TAIL_LINES);
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{line}");
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    tail.into()
}

fn describe(status: ExitStatus) -> RunFailure {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return RunFailure {
                reason: format!("runner killed by signal {signal}"),
                cause: Cause::Crash,
            };
        }
    }
    match status.code() {
        Some(code) if sluice_contract::exit::is_outage(code) => RunFailure {
            reason: format!("the runner could not do its work: exit code {code}"),
            cause: Cause::Outage,
        },
        Some(code) => RunFailure {
            reason: format!("exit code {code}"),
            cause: Cause::Crash,
        },
        None => RunFailure {
            reason: "runner ended without an exit code".into(),
            cause: Cause::Crash,
        },
    }
}
