//! Running tasks: each message on the rayon pool, in order, only once its id is recorded
//! ([`Claims`]), panics caught per message.

use crate::batch::Task;
use crate::claims::Claims;
use crate::kernel::{self, KernelError};
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
}

/// Runs every task on rayon's pool, one worker per pool thread taking tasks in order as
/// `claims` hands them out, and sends each result as soon as it is ready.
pub fn run_all(
    tasks: Vec<Task>,
    claims: &Claims,
    batch: &str,
    test_kernels: bool,
    events: &Sender<Event>,
) {
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
                    if events
                        .send(Event::Result(run_one(task, batch, test_kernels)))
                        .is_err()
                    {
                        claims.close();
                        return;
                    }
                }
            });
        }
    });
}

/// Runs one task into its result record. Never panics.
pub fn run_one(task: Task, batch: &str, test_kernels: bool) -> ResultRecord {
    run_with(task, batch, |name, input| {
        kernel::run(name, input, test_kernels)
    })
}

/// [`run_one`] with the kernels passed in, so a test can panic in any build (the `panic` kernel
/// exists only with the `test-kernels` feature).
fn run_with(
    task: Task,
    batch: &str,
    kernels: impl Fn(&str, Value) -> Result<Value, KernelError>,
) -> ResultRecord {
    let started = Instant::now();
    let outcome = match task.work {
        Err(reason) => Err(reason),
        Ok(input) => {
            let kernel_name = task.kernel.as_str();
            match catch_unwind(AssertUnwindSafe(|| kernels(kernel_name, input))) {
                Ok(Ok(output)) => Ok(output.to_string()),
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
    ResultRecord {
        id: task.id,
        status,
        detail,
        kernel: task.kernel,
        batch: batch.to_owned(),
        duration_us: started.elapsed().as_micros() as u64,
        finished_at: unix_millis(),
    }
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
        }
    }

    #[test]
    fn ok_results_carry_the_output_as_json() {
        let r = run_one(task("echo", json!({"a": [1]})), "b", false);
        assert_eq!((r.status, r.detail.as_str()), (Status::Ok, r#"{"a":[1]}"#));
    }

    #[cfg(feature = "test-kernels")]
    #[test]
    fn a_kernel_panic_is_an_error_result() {
        let r = run_one(task("panic", json!(null)), "b", true);
        assert_eq!(r.status, Status::Error);
        assert!(r.detail.contains("panicked on purpose"), "{}", r.detail);
    }

    #[test]
    fn any_kernel_panic_is_caught_into_an_error_result() {
        let r = run_with(task("boom", json!(null)), "b", |_, _| {
            panic!("boom on purpose")
        });
        assert_eq!(
            (r.status, r.detail.as_str()),
            (Status::Error, "kernel boom panicked: boom on purpose")
        );
    }

    #[cfg(not(feature = "test-kernels"))]
    #[test]
    fn without_the_feature_the_panic_kernel_is_unknown() {
        let r = run_one(task("panic", json!(null)), "b", true);
        assert_eq!(r.status, Status::Error);
        assert!(
            r.detail.starts_with("unknown kernel \"panic\""),
            "{}",
            r.detail
        );
    }

    #[test]
    fn invalid_tasks_keep_their_reason() {
        let t = Task {
            id: "x".into(),
            kernel: String::new(),
            work: Err("empty message body".into()),
        };
        let r = run_one(t, "b", false);
        assert_eq!(
            (r.status, r.detail.as_str()),
            (Status::Error, "empty message body")
        );
    }
}
