//! The Job watch's tracking, fed event by event, and its supervisor.
use super::*;
use crate::reason::Cause;
use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use watcher::Event;

fn job(name: &str, condition: Option<(&str, &str)>) -> Job {
    let condition = condition.map(|(kind, reason)| JobCondition {
        type_: kind.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some("details".into()),
        ..Default::default()
    });
    Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        status: Some(JobStatus {
            conditions: condition.map(|c| vec![c]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A store and tracker fed by hand, event by event, as `follow` feeds them.
struct Fed {
    writer: Writer<Job>,
    tracker: JobTracker,
}

impl Fed {
    fn new() -> Self {
        let writer = Writer::default();
        let tracker = JobTracker::new(writer.as_reader(), "ns");
        Self { writer, tracker }
    }

    fn feed(&mut self, event: &Event<Job>) {
        self.writer.apply_watcher_event(event);
        self.tracker.observe(event);
    }

    fn relist(&mut self, jobs: Vec<Job>) {
        self.feed(&Event::Init);
        for job in jobs {
            self.feed(&Event::InitApply(job));
        }
        self.feed(&Event::InitDone);
    }
}

fn deleted(outcome: Result<Outcome, oneshot::error::TryRecvError>) -> bool {
    matches!(outcome, Ok(Outcome::Failed(f)) if f.kind == FailureKind::JobDeleted)
}

#[test]
fn conditions_map_to_outcomes() {
    assert_eq!(outcome_of(&job("a", None)), None);
    assert_eq!(
        outcome_of(&job("a", Some(("Complete", "CompletionsReached")))),
        Some(Outcome::Succeeded)
    );
    assert_eq!(
        outcome_of(&job("a", Some(("Failed", "DeadlineExceeded")))),
        Some(Outcome::failed(
            FailureKind::DeadlineExceeded,
            "DeadlineExceeded: details"
        ))
    );
}

#[test]
fn the_fail_job_rule_on_an_outage_code_is_an_outage_and_other_failures_are_crashes() {
    let mut failed = job("a", Some(("Failed", "PodFailurePolicy")));
    let message = |code: i32| {
        format!(
            "Container runner for pod ns/a-x failed with exit code {code} matching FailJob rule at index 1"
        )
    };
    failed.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].message = Some(message(69));
    assert_eq!(
        outcome_of(&failed),
        Some(Outcome::failed(
            FailureKind::OutageExit,
            format!("PodFailurePolicy: {}", message(69))
        ))
    );
    failed.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].message = Some(message(139));
    assert!(matches!(
        outcome_of(&failed),
        Some(Outcome::Failed(f)) if f.cause() == Cause::Crash
    ));
    let backoff = job("a", Some(("Failed", "BackoffLimitExceeded")));
    assert!(matches!(
        outcome_of(&backoff),
        Some(Outcome::Failed(f)) if f.kind == FailureKind::BackoffLimitExceeded
    ));
}

#[test]
fn waiters_hear_of_finished_jobs_whenever_they_register() {
    let mut fed = Fed::new();
    fed.relist(vec![]);
    let mut early = fed.tracker.register("a");
    fed.tracker.created("a");
    fed.feed(&Event::Apply(job("a", None)));
    assert_eq!(fed.tracker.active(), 1);
    assert!(early.try_recv().is_err(), "still running");
    fed.feed(&Event::Apply(job("a", Some(("Complete", "x")))));
    assert_eq!(early.try_recv(), Ok(Outcome::Succeeded));
    assert_eq!(fed.tracker.active(), 0);
    // A restarted dispatcher adopting a Job that already finished.
    fed.feed(&Event::Apply(job(
        "b",
        Some(("Failed", "BackoffLimitExceeded")),
    )));
    let mut adopted = fed.tracker.register("b");
    assert!(matches!(adopted.try_recv(), Ok(Outcome::Failed(_))));
}

#[test]
fn a_job_deleted_while_running_fails_its_waiter() {
    let mut fed = Fed::new();
    let mut waiting = fed.tracker.register("c");
    fed.tracker.created("c");
    fed.feed(&Event::Apply(job("c", None)));
    fed.feed(&Event::Delete(job("c", None)));
    assert!(deleted(waiting.try_recv()));
}

#[test]
fn a_relist_settles_jobs_that_finished_or_vanished_while_the_watch_was_down() {
    let mut fed = Fed::new();
    fed.relist(vec![]);
    let (mut gone, mut done, mut running) = (
        fed.tracker.register("gone"),
        fed.tracker.register("done"),
        fed.tracker.register("running"),
    );
    for name in ["gone", "done", "running"] {
        fed.tracker.created(name);
        fed.feed(&Event::Apply(job(name, None)));
    }
    // The watch drops; meanwhile "gone" is deleted and "done" completes, unseen. The
    // watcher's re-list (after a 410 Gone, say) shows what is left.
    fed.relist(vec![
        job("done", Some(("Complete", "x"))),
        job("running", None),
    ]);
    assert!(deleted(gone.try_recv()));
    assert_eq!(done.try_recv(), Ok(Outcome::Succeeded));
    assert!(running.try_recv().is_err(), "a running Job keeps waiting");
    assert_eq!(fed.tracker.active(), 1);
}

#[test]
fn a_job_created_during_a_relist_is_not_judged_by_it() {
    let mut fed = Fed::new();
    fed.feed(&Event::Init);
    let mut fresh = fed.tracker.register("fresh");
    fed.tracker.created("fresh");
    // The list was taken before the create: it does not show the Job.
    fed.feed(&Event::InitDone);
    assert!(fresh.try_recv().is_err(), "not yet judged");
    // The next re-list is judged: the Job was created before it began.
    fed.relist(vec![]);
    assert!(deleted(fresh.try_recv()));
}

#[tokio::test(start_paused = true)]
async fn an_ended_watch_is_restarted_with_readiness_blocked_meanwhile() {
    let writer = Writer::default();
    let tracker = Arc::new(JobTracker::new(writer.as_reader(), "ns"));
    let health = Arc::new(Health::default());
    let stop = CancellationToken::new();
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let events = {
        let runs = Arc::clone(&runs);
        move || -> Events {
            // The first run ends at once; the second reports the Job finished.
            if runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                futures::stream::empty().boxed()
            } else {
                let finished = job("a", Some(("Complete", "x")));
                futures::stream::iter([Ok(Event::Apply(finished))])
                    .chain(futures::stream::pending())
                    .boxed()
            }
        }
    };
    let waiting = tracker.register("a");
    tracker.created("a");
    let task = tokio::spawn(supervise(
        events,
        writer,
        Arc::clone(&tracker),
        Arc::clone(&health),
        stop.clone(),
    ));
    tokio::task::yield_now().await;
    assert!(
        health.is_blocked(health::JOB_WATCH),
        "blocked while restarting"
    );
    assert_eq!(waiting.await, Ok(Outcome::Succeeded));
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(!health.is_blocked(health::JOB_WATCH));
    stop.cancel();
    task.await.expect("the supervisor stops on cancel");
}
