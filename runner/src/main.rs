//! The `runner` binary: process the batch named by `BATCH_ID` with sluice's built-in kernels
//! (and the exec kernels of `KERNELS_FILE`), and exit.

fn main() -> std::process::ExitCode {
    sluice_runner::kernel::builtin(sluice_runner::Runner::new()).run()
}
