//! Running tasks: each message on the rayon pool, in order, only once its id is recorded
//! ([`Claims`]), panics caught per message.

use crate::batch::Task;
use crate::claims::Claims;
use crate::registry::KernelError;
use crate::registry::Kernels;
use serde_json::Value;
use sluice_contract::record::unix_millis;
use sluice_contract::{ResultRecord, Status};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// What the workers tell the writer thread.
#[derive(Debug)]
pub enum Event {
    /// A message's result, to be written.
    Result(ResultRecord),
    /// A worker waits for more ids to be recorded as working.
    Starving,
    /// A kernel cannot run at all (its command cannot start): the runner stops, an outage.
    Unavailable(KernelError),
}

/// What the workers run tasks with.
#[derive(Clone, Copy)]
pub struct Work<'a> {
    /// The batch's id, for the records.
    pub batch: &'a str,
    /// The kernels.
    pub(crate) kernels: &'a Kernels,
    /// Whether the test kernels are enabled.
    pub test_kernels: bool,
}

/// Runs every task on rayon's pool, one worker per pool thread taking tasks in order as
/// `claims` hands them out, and sends each result as soon as it is ready.
pub fn run_all(tasks: Vec<Task>, claims: &Claims, work: Work<'_>, events: &Sender<Event>) {
    let slots: Vec<Mutex<Option<Task>>> = tasks.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let slots = &slots;
    rayon::scope(|scope| {
        for _ in 0..rayon::current_num_threads() {
            let events = events.clone();
            scope.spawn(move |_| {
                let starving = || {
                    let _ = events.send(Event::Starving);
                };
                while let Some(index) = claims.next(starving) {
                    let task = slots[index]
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    let Some(task) = task else { continue };
                    // A closed receiver means the writer gave up and the process will exit
                    // non-zero: stop starting new work rather than compute results nobody writes.
                    let event = match run_one(task, work) {
                        Ok(record) => Event::Result(record),
                        Err(unavailable) => {
                            // No result for this message: the batch is retried whole later.
                            claims.close();
                            let _ = events.send(Event::Unavailable(unavailable));
                            return;
                        }
                    };
                    if events.send(event).is_err() {
                        claims.close();
                        return;
                    }
                }
            });
        }
    });
}

/// Runs one task into its result record, or the error of a kernel that cannot run at all.
/// Never panics.
pub(crate) fn run_one(task: Task, work: Work<'_>) -> Result<ResultRecord, KernelError> {
    run_with(task, work.batch, |id, name, input| {
        work.kernels.get(name, work.test_kernels)?.call(id, input)
    })
}

/// [`run_one`] with the kernels passed in, so a test can panic in any build.
fn run_with(
    task: Task,
    batch: &str,
    kernels: impl Fn(&str, &str, Value) -> Result<Value, KernelError>,
) -> Result<ResultRecord, KernelError> {
    let started = Instant::now();
    let outcome = match task.work {
        Err(reason) => Err(reason),
        Ok(input) => {
            let kernel_name = task.kernel.as_str();
            match catch_unwind(AssertUnwindSafe(|| kernels(&task.id, kernel_name, input))) {
                Ok(Ok(output)) => Ok(output.to_string()),
                Ok(Err(e @ KernelError::Unavailable { .. })) => return Err(e),
                Ok(Err(e)) => Err(e.to_string()),
                Err(panic) => Err(format!(
                    "kernel {kernel_name} panicked: {}",
                    panic_text(&*panic)
                )),
            }
        }
    };
    let (status, detail) = match outcome {
        Ok(output) => (Status::Ok, output),
        Err(reason) => (Status::Error, reason),
    };
    Ok(ResultRecord {
        id: task.id,
        status,
        detail,
        kernel: task.kernel,
        batch: batch.to_owned(),
        duration_us: started.elapsed().as_micros() as u64,
        finished_at: unix_millis(),
        reply: task.reply,
    })
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(kernel: &str, input: serde_json::Value) -> Task {
        Task {
            id: "x".into(),
            kernel: kernel.into(),
            work: Ok(input),
            reply: None,
        }
    }

    fn builtin() -> Kernels {
        crate::kernel::builtin(crate::Runner::new())
            .kernels()
            .clone()
    }

    fn run(task: Task, test_kernels: bool) -> ResultRecord {
        let kernels = builtin();
        let work = Work {
            batch: "b",
            kernels: &kernels,
            test_kernels,
        };
        run_one(task, work).unwrap()
    }

    #[test]
    fn ok_results_carry_the_output_as_json() {
        let r = run(task("echo", json!({"a": [1]})), false);
        assert_eq!((r.status, r.detail.as_str()), (Status::Ok, r#"{"a":[1]}"#));
    }

    #[cfg(feature = "test-kernels")]
    #[test]
    fn a_kernel_panic_is_an_error_result() {
        let r = run(task("panic", json!(null)), true);
        assert_eq!(r.status, Status::Error);
        assert!(r.detail.contains("panicked on purpose"), "{}", r.detail);
    }

    #[test]
    fn any_kernel_panic_is_caught_into_an_error_result() {
        let r = run_with(task("boom", json!(null)), "b", |_, _, _| {
            panic!("boom on purpose")
        })
        .unwrap();
        assert_eq!(
            (r.status, r.detail.as_str()),
            (Status::Error, "kernel boom panicked: boom on purpose")
        );
    }

    #[test]
    fn unknown_and_hidden_test_kernels_are_error_results_naming_the_known_ones() {
        for (name, enabled) in [("nope", true), ("crash", false)] {
            let r = run(task(name, json!(null)), enabled);
            assert_eq!(r.status, Status::Error);
            let known = format!("unknown kernel \"{name}\" (known: ");
            assert!(r.detail.starts_with(&known), "{}", r.detail);
            assert!(r.detail.contains("modsum, "), "{}", r.detail);
            let with_tests = enabled && cfg!(feature = "test-kernels");
            let listed = r.detail.split_once("(known: ").map(|(_, l)| l.to_owned());
            let lists_crash = listed.is_some_and(|l| l.contains("crash"));
            assert_eq!(lists_crash, with_tests, "{}", r.detail);
        }
    }

    #[test]
    fn a_kernel_that_cannot_run_is_no_result_at_all() {
        let unavailable = run_with(task("w", json!(null)), "b", |_, _, _| {
            Err(KernelError::Unavailable {
                kernel: "w".into(),
                reason: "cannot start".into(),
                not_found: true,
            })
        });
        assert!(unavailable.is_err());
    }

    #[test]
    fn invalid_tasks_keep_their_reason() {
        let t = Task {
            id: "x".into(),
            kernel: String::new(),
            work: Err("empty message body".into()),
            reply: None,
        };
        let r = run(t, false);
        assert_eq!(
            (r.status, r.detail.as_str()),
            (Status::Error, "empty message body")
        );
    }
}
