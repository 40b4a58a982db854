//! The example's runner binary: sluice's built-in kernels and `textstats`, registered through
//! the library's one entry point.

fn main() -> std::process::ExitCode {
    sluice_runner::kernel::builtin(sluice_runner::Runner::new())
        .kernel("textstats", textstats_runner::textstats)
        .run()
}
