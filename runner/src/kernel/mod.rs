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

/// Why a kernel produced no output. All but [`KernelError::Unavailable`] become
/// `status=error` results.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// No kernel of that name (test kernels count only when compiled in and enabled).
    #[error("unknown kernel {name:?} (known: {known})")]
    Unknown {
        /// The name the message asked for (at most 64 characters of it).
        name: String,
        /// The kernels this runner has, comma-separated.
        known: String,
    },
    /// The input does not fit the kernel.
    #[error("invalid input for kernel {kernel}: {reason}")]
    BadInput {
        /// The kernel.
        kernel: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The input does not deserialise into a registered kernel's input type.
    #[error("invalid input for kernel {kernel}: {reason}")]
    Input {
        /// The kernel.
        kernel: String,
        /// serde's message.
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
    /// A registered kernel's own error, or an exec worker's failure on this message, as text.
    #[error("{0}")]
    Message(String),
    /// The kernel cannot run at all (its command cannot be started): an outage, not this
    /// message's fault. The runner stops with an outage exit code.
    #[error("kernel {kernel} cannot run: {reason}")]
    Unavailable {
        /// The kernel.
        kernel: String,
        /// Why.
        reason: String,
        /// Its program was not found (exit 127) rather than not runnable (exit 126).
        not_found: bool,
    },
}

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
