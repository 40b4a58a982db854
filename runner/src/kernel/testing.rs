//! Test kernels, enabled only by `SLUICE_TEST_KERNELS=1`: they simulate the failures sluice
//! must survive. `crash` aborts the whole process (as a segfault or an OOM kill would), `panic`
//! panics inside the kernel, `sleep` holds a worker for `{"ms": u64}`.

use super::{KernelError, parse_input};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepInput {
    ms: u64,
}

/// Runs test kernel `name`.
pub fn run(name: &str, input: Value) -> Result<Value, KernelError> {
    match name {
        "crash" => std::process::abort(),
        "panic" => panic!("test kernel `panic` panicked on purpose"),
        _ => {
            let SleepInput { ms } = parse_input("sleep", input)?;
            std::thread::sleep(Duration::from_millis(ms));
            Ok(json!({ "slept_ms": ms }))
        }
    }
}
