//! [`Runner`]: the public entry point. A user's runner binary registers its kernels and calls
//! [`Runner::run`]; everything else (the batch, rayon, write-once results, retries, exec
//! workers from `KERNELS_FILE`, exit codes) is the library's.

use crate::Summary;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::exec::ExecKernel;
use crate::registry::Kernels;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_contract::kernels_file::{KERNELS_FILE, KernelTable};
use std::fmt::Display;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// A sluice runner: the kernels it knows, and the loop that runs one batch with them.
///
/// ```no_run
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct Text {
///     text: String,
/// }
///
/// #[derive(Serialize)]
/// struct Counts {
///     words: usize,
///     lines: usize,
/// }
///
/// fn counts(input: Text) -> Result<Counts, String> {
///     Ok(Counts {
///         words: input.text.split_whitespace().count(),
///         lines: input.text.lines().count(),
///     })
/// }
///
/// fn main() -> std::process::ExitCode {
///     sluice_runner::Runner::new().kernel("counts", counts).run()
/// }
/// ```
#[derive(Default)]
#[must_use]
pub struct Runner {
    kernels: Kernels,
    /// A registration mistake, reported when the runner starts (a name taken twice).
    problem: Option<String>,
}

impl Runner {
    /// A runner with no kernels (add the built-in ones with [`crate::kernel::builtin`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` as the kernel `name`: messages naming it get `f(input)` with their
    /// `input` deserialised into `I`; `Ok(output)` is serialised into an `ok` result,
    /// `Err(e)` becomes an `error` result with `e`'s text, and input that does not
    /// deserialise an `error` result saying why (`invalid input for kernel NAME: …`). `f` runs
    /// on rayon's pool, one message per thread at a time, and may use rayon inside. A panic
    /// is caught into an `error` result. Registering a name twice stops the runner at
    /// start-up.
    pub fn kernel<I, O, E, F>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(I) -> std::result::Result<O, E> + Send + Sync + 'static,
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        E: Display + 'static,
    {
        if let Err(problem) = self.kernels.typed(name.into(), f) {
            self.problem.get_or_insert(problem);
        }
        self
    }

    /// A kernel known only with `SLUICE_TEST_KERNELS=1` (sluice's own test suites).
    #[doc(hidden)]
    pub fn test_kernel<O, E, F>(self, name: &str, f: F) -> Self
    where
        F: Fn(serde_json::Value) -> std::result::Result<O, E> + Send + Sync + 'static,
        O: Serialize + 'static,
        E: Display + 'static,
    {
        let mut runner = self.kernel(name, f);
        runner.kernels.test_only(name);
        runner
    }

    #[cfg(test)]
    pub(crate) fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// The whole runner process: logs to stderr (`RUST_LOG`), reads the environment, runs
    /// the batch named by `BATCH_ID`, and returns the exit code the dispatcher reads: 0 when
    /// every message has a result, an outage code ([`sluice_contract::exit`]) when the runner
    /// could not do its work.
    pub fn run(self) -> ExitCode {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
        // Kernel panics are caught and recorded as error results; log them once, briefly.
        std::panic::set_hook(Box::new(|info| tracing::warn!(%info, "kernel panicked")));
        match Config::from_env().and_then(|config| self.run_batch(&config)) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "runner failed");
                ExitCode::from(e.exit_code())
            }
        }
    }

    /// Runs the batch `config` names with these kernels and those of its `KERNELS_FILE`.
    ///
    /// # Errors
    /// The runner could not do its work: see [`Error`] and its exit codes.
    pub fn run_batch(&self, config: &Config) -> Result<Summary> {
        if let Some(problem) = &self.problem {
            return Err(Error::InvalidConfig(problem.clone()));
        }
        let mut kernels = self.kernels.clone();
        if let Some(file) = &config.env.kernels_file {
            add_exec_kernels(&mut kernels, Path::new(file))?;
        }
        let summary = crate::process(config, &kernels);
        kernels.finish();
        summary
    }
}

/// Adds the exec kernels of the table at `path`; any problem stops the runner at start-up.
fn add_exec_kernels(kernels: &mut Kernels, path: &Path) -> Result<()> {
    let table = KernelTable::load(path).map_err(Error::InvalidConfig)?;
    let threads = rayon::current_num_threads();
    for (name, spec) in &table.kernels {
        let taken = || {
            Error::InvalidConfig(format!(
                "{KERNELS_FILE} {}: kernel {name}: the name is taken by a kernel of the runner itself",
                path.display()
            ))
        };
        if kernels.contains(name) {
            return Err(taken());
        }
        let program = table.program(&spec.command[0]).ok_or_else(taken)?;
        let kernel = ExecKernel::new(name, spec, program, table.dir.clone(), threads);
        kernels
            .add(name.clone(), Arc::new(kernel))
            .map_err(|_| taken())?;
    }
    Ok(())
}
