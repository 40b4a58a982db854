//! The `runner` binary: process the batch named by `BATCH_ID` and exit.

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Kernel panics are caught and recorded as error results; log them once, briefly.
    std::panic::set_hook(Box::new(|info| tracing::warn!(%info, "kernel panicked")));

    let outcome = sluice_runner::Config::from_env().and_then(|config| sluice_runner::run(&config));
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "runner failed");
            ExitCode::from(e.exit_code())
        }
    }
}
