//! `echo`: returns its input unchanged, for measuring sluice's own overhead.

use serde_json::Value;

/// Returns `input`.
pub fn run(input: Value) -> Value {
    input
}
