//! Crash points for fault-injection tests: `SLUICE_FAILPOINT=POINT@N` makes the dispatcher
//! SIGKILL itself the Nth time it reaches POINT (N defaults to 1). Production never sets it;
//! like `SLUICE_TEST_KERNELS`, it exists so tests can crash the process exactly where a crash
//! is most dangerous.
//!
//! Points: `before-stage` (a batch closed, nothing in Redis yet), `before-launch` (staged, no
//! Job), `before-ack` (Job launched, deliveries not acked), `after-ack` (Jobs running); in
//! `dispatcher redrive`, `redrive-taken` (a chunk of dead letters moved to `{prefix}:redrive`,
//! not published) and `redrive-published` (published and confirmed, still in `{prefix}:redrive`).

use std::sync::atomic::{AtomicU32, Ordering};

/// The configured crash point, if any.
#[derive(Debug, Default)]
pub struct Failpoint {
    point: Option<(String, u32)>,
    hits: AtomicU32,
}

impl Failpoint {
    /// Parses `POINT@N` or `POINT`; `None` or an empty string means no crash point.
    pub fn parse(spec: Option<&str>) -> Self {
        let point = spec
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once('@') {
                Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
                None => (s.to_owned(), 1),
            });
        Self {
            point,
            hits: AtomicU32::new(0),
        }
    }

    /// Crashes the process (SIGKILL: no destructors, no graceful close) if `name` is the
    /// configured point and this is its Nth hit.
    pub fn hit(&self, name: &str) {
        let Some((point, nth)) = &self.point else {
            return;
        };
        if point == name && self.hits.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            tracing::warn!(point = name, "failpoint reached: killing the dispatcher");
            let pid = std::process::id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
            // `kill` may be missing; abort is the next most abrupt end.
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_and_without_a_count() {
        assert_eq!(
            Failpoint::parse(Some("before-ack@3")).point,
            Some(("before-ack".into(), 3))
        );
        assert_eq!(
            Failpoint::parse(Some("after-ack")).point,
            Some(("after-ack".into(), 1))
        );
        assert_eq!(Failpoint::parse(Some("")).point, None);
        Failpoint::parse(Some("before-ack@2")).hit("other"); // not this point: nothing happens
    }
}
