//! The kernels: pure, synchronous, deterministic functions from JSON input to JSON output.
//!
//! Each kernel validates its own input into a typed struct (unknown fields are rejected, so a
//! typo is an error rather than a silent default) and is parallel inside with rayon where its
//! work is large. No kernel does I/O, so each is unit-tested against known answers.
//!
//! The test kernels exist only in builds with the `test-kernels` feature (the test suites
//! enable it, the image does not) and, even there, only with `SLUICE_TEST_KERNELS=1`.

pub mod echo;
pub mod modsum;
pub mod pow;
pub mod primes;
#[cfg(feature = "test-kernels")]
pub mod testing;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a kernel produced no output. Both become `status=error` results.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// No kernel of that name (test kernels count only when compiled in and enabled).
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

/// Runs kernel `name` on `input`. Test kernels are only known when `test_kernels` is set and
/// the `test-kernels` feature compiled them in.
pub fn run(name: &str, input: Value, test_kernels: bool) -> Result<Value, KernelError> {
    match name {
        "modsum" => modsum::run(input),
        "pow" => pow::run(input),
        "primes" => primes::run(input),
        "echo" => Ok(echo::run(input)),
        "crash" | "panic" | "sleep" | "bug" if test_kernels => test_kernel(name, input),
        other => Err(unknown(other)),
    }
}

fn unknown(name: &str) -> KernelError {
    KernelError::Unknown(name.chars().take(64).collect())
}

#[cfg(feature = "test-kernels")]
fn test_kernel(name: &str, input: Value) -> Result<Value, KernelError> {
    testing::run(name, input)
}

/// Without the feature a test kernel is as unknown as any other name.
#[cfg(not(feature = "test-kernels"))]
fn test_kernel(name: &str, _input: Value) -> Result<Value, KernelError> {
    Err(unknown(name))
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

    /// The production build: `SLUICE_TEST_KERNELS=1` cannot bring back what was not compiled.
    #[cfg(not(feature = "test-kernels"))]
    #[test]
    fn without_the_feature_test_kernels_are_unknown_even_when_enabled() {
        for name in ["crash", "panic", "sleep", "bug"] {
            assert_eq!(
                run(name, json!({"ms": 0}), true),
                Err(KernelError::Unknown(name.into()))
            );
        }
    }

    /// The test build: enabled test kernels run (`crash` is left out: it aborts the process).
    #[cfg(feature = "test-kernels")]
    #[test]
    fn with_the_feature_enabled_test_kernels_run() {
        assert_eq!(
            run("sleep", json!({"ms": 1}), true),
            Ok(json!({"slept_ms": 1}))
        );
        let panicked = std::panic::catch_unwind(|| run("panic", json!(null), true));
        assert!(panicked.is_err());
    }
}
