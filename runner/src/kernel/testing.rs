//! Test kernels, compiled in only with the `test-kernels` feature and enabled only by
//! `SLUICE_TEST_KERNELS=1`: they simulate the failures sluice must survive. `crash` aborts the
//! whole process (as a segfault or an OOM kill would), `panic` panics inside the kernel, `sleep`
//! holds a worker for `{"ms": u64}`, and `bug` echoes its input unless the runner runs with
//! `SLUICE_TEST_BUG=1`, when it aborts like `crash`: a runner bug that a later build fixes
//! (the redrive suite).
//!
//! `scripts/image-check.sh` fails if the image's runner contains [`PANIC_MESSAGE`]: it is the
//! evidence that this module was compiled in.

use super::{KernelError, parse_input};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepInput {
    ms: u64,
}

/// What `panic` panics with; the image check's marker for this module (keep it unique).
pub const PANIC_MESSAGE: &str = "test kernel `panic` panicked on purpose";

/// Registers the test kernels on `runner`; they are known only with `SLUICE_TEST_KERNELS=1`.
pub fn register(runner: crate::Runner) -> crate::Runner {
    ["crash", "panic", "sleep", "bug"]
        .into_iter()
        .fold(runner, |runner, name| {
            runner.test_kernel(name, move |input: Value| run(name, input))
        })
}

/// Runs test kernel `name`.
pub fn run(name: &str, input: Value) -> Result<Value, KernelError> {
    match name {
        "crash" => std::process::abort(),
        "panic" => panic!("{PANIC_MESSAGE}"),
        "bug" if std::env::var_os("SLUICE_TEST_BUG").is_some_and(|v| v == "1") => {
            std::process::abort()
        }
        "bug" => Ok(input),
        _ => {
            let SleepInput { ms } = parse_input("sleep", input)?;
            std::thread::sleep(Duration::from_millis(ms));
            Ok(json!({ "slept_ms": ms }))
        }
    }
}
