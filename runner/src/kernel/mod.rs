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

pub use crate::registry::KernelError;

/// Registers the built-in kernels on `runner`, as the shipped runner does: `modsum`, `pow`,
/// `primes`, `echo`, and the test kernels where the `test-kernels` feature compiled them in.
pub fn builtin(runner: crate::Runner) -> crate::Runner {
    let runner = runner
        .kernel("modsum", modsum::run)
        .kernel("pow", pow::run)
        .kernel("primes", primes::run)
        .kernel("echo", echo::run);
    #[cfg(feature = "test-kernels")]
    let runner = testing::register(runner);
    runner
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
