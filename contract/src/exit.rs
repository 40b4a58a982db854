//! The runner's exit codes, and what the dispatcher concludes from them.
//!
//! The codes follow BSD's `sysexits.h`, so that a runner written in another language can use
//! its standard library's names for them. What matters to sluice is one distinction: a runner
//! that **could not do its work** (its configuration, Redis, a missing command) is an outage,
//! retried whole later and never blamed on a message; a runner that **died while working**
//! (any other non-zero code, a signal, an OOM kill) may have met a poison message, and the
//! messages it was working on become suspects.
//!
//! | code | name | meaning |
//! |---|---|---|
//! | 0 | `OK` | every message of the batch has a result |
//! | 66 | `NO_BATCH` | the batch is not staged (state lost or expired): nothing to do |
//! | 69 | `UNAVAILABLE` | Redis could not be reached before the batch started |
//! | 75 | `TEMPFAIL` | Redis was lost while working; done results are kept |
//! | 78 | `CONFIG` | the configuration is invalid (environment, kernels) |
//! | 126, 127 | — | the shell's "cannot execute" and "command not found" |
//! | anything else | — | the runner crashed while working |

/// Every message of the batch has a result.
pub const OK: i32 = 0;
/// The batch is not staged in Redis.
pub const NO_BATCH: i32 = 66;
/// Redis could not be reached before the batch started.
pub const UNAVAILABLE: i32 = 69;
/// Redis was lost while working.
pub const TEMPFAIL: i32 = 75;
/// The runner's configuration is invalid.
pub const CONFIG: i32 = 78;
/// A shell's "found but cannot execute".
pub const CANNOT_EXECUTE: i32 = 126;
/// A shell's "command not found".
pub const NOT_FOUND: i32 = 127;

/// The codes that mean the runner could not do its work, whatever its messages: an outage.
pub const OUTAGE_CODES: [i32; 6] = [
    NO_BATCH,
    UNAVAILABLE,
    TEMPFAIL,
    CONFIG,
    CANNOT_EXECUTE,
    NOT_FOUND,
];

/// Whether a runner that exited with `code` could not do its work (an outage), rather than
/// dying while working.
///
/// ```
/// use sluice_contract::exit;
/// assert!(exit::is_outage(exit::CONFIG));
/// assert!(!exit::is_outage(134)); // SIGABRT, as a shell reports it: a crash
/// ```
pub fn is_outage(code: i32) -> bool {
    OUTAGE_CODES.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crashes_and_panics_are_not_outages() {
        for code in [1, 2, 101, 134, 137, 139] {
            assert!(!is_outage(code), "{code}");
        }
        for code in OUTAGE_CODES {
            assert!(is_outage(code), "{code}");
        }
    }
}
