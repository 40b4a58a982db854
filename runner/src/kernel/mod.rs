//! The kernels: pure, synchronous, deterministic functions from JSON input to JSON output.
//!
//! Each kernel validates its own input into a typed struct (unknown fields are rejected, so a
//! typo is an error rather than a silent default) and is parallel inside with rayon where its
//! work is large. No kernel does I/O, so each is unit-tested against known answers.

pub mod echo;
pub mod modsum;
pub mod pow;
pub mod primes;
pub mod testing;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a kernel produced no output. Both become `status=error` results.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// No kernel of that name (test kernels count only with `SLUICE_TEST_KERNELS=1`).
    #[error("unknown kernel {0:?} (known: modsum, pow, primes, echo)")]
    Unknown(String),
    /// The input does not fit the kernel.
    #[error("invalid input for kernel {kernel}: {reason}")]
    BadInput {
        /// The kernel.
        kernel: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The computation itself cannot produce a valid output (such as an overflow).
    #[error("kernel {kernel} failed: {reason}")]
    Failed {
        /// The kernel.
        kernel: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// Runs kernel `name` on `input`. Test kernels are only known when `test_kernels` is set.
pub fn run(name: &str, input: Value, test_kernels: bool) -> Result<Value, KernelError> {
    match name {
        "modsum" => modsum::run(input),
        "pow" => pow::run(input),
        "primes" => primes::run(input),
        "echo" => Ok(echo::run(input)),
        "crash" | "panic" | "sleep" if test_kernels => testing::run(name, input),
        other => Err(KernelError::Unknown(other.chars().take(64).collect())),
    }
}

/// Deserialises a kernel's typed input, turning serde's message into a [`KernelError`].
pub(crate) fn parse_input<T: DeserializeOwned>(
    kernel: &'static str,
    input: Value,
) -> Result<T, KernelError> {
    // serde would happily read a struct from a JSON array; inputs are objects only.
    if !input.is_object() {
        let found = sluice_contract::envelope::json_type(&input);
        return Err(KernelError::BadInput {
            kernel,
            reason: format!("input must be an object, got {found}"),
        });
    }
    serde_json::from_value(input).map_err(|e| KernelError::BadInput {
        kernel,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_kernels_and_hidden_test_kernels_are_errors() {
        assert_eq!(
            run("nope", json!(null), false),
            Err(KernelError::Unknown("nope".into()))
        );
        assert_eq!(
            run("crash", json!(null), false),
            Err(KernelError::Unknown("crash".into()))
        );
    }
}
