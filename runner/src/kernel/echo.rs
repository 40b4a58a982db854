//! `echo`: returns its input unchanged, for measuring sluice's own overhead.

use serde_json::Value;

/// Returns `input`.
///
/// # Errors
/// Never.
pub fn run(input: Value) -> Result<Value, std::convert::Infallible> {
    Ok(input)
}
