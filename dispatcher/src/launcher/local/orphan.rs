//! Runners a lost dispatcher left behind on this machine.
//!
//! A local runner is a child of the dispatcher that launched it; when that dispatcher is lost
//! (`SIGKILL`ed, its lease expired), the runner keeps working and writes its results. The
//! dispatcher adopting its batch finds it by its environment (`BATCH_ID`, readable in
//! `/proc/<pid>/environ` for processes of the same user) and waits for it to exit. How it
//! exited is unknown (it is not our child): the reconciler reads what it recorded in Redis.

use crate::launcher::interface::{FailureKind, Outcome, Running};
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often an adopted runner is checked for having exited.
const POLL: Duration = Duration::from_millis(200);

/// The pid of a live process whose environment says `BATCH_ID=batch_id`, if any.
pub fn find(batch_id: &str) -> Option<u32> {
    if batch_id.is_empty() {
        return None;
    }
    let wanted = format!("BATCH_ID={batch_id}");
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| runs(*pid, &wanted))
}

/// Whether process `pid` is alive (not a zombie) with `wanted` in its environment.
fn runs(pid: u32, wanted: &str) -> bool {
    let dir = Path::new("/proc").join(pid.to_string());
    let alive = std::fs::read_to_string(dir.join("stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name, which may itself hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    });
    alive
        && std::fs::read(dir.join("environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == wanted.as_bytes()))
}

/// Waits until runner `pid` has exited, at most `deadline` (its Job's deadline, counted from
/// the adoption); `Abandoned` if the dispatcher stops first.
pub fn follow(pid: u32, deadline: Duration, abandon: CancellationToken) -> Running {
    let wanted = std::fs::read(format!("/proc/{pid}/environ"))
        .ok()
        .and_then(|env| {
            env.split(|b| *b == 0)
                .find(|var| var.starts_with(b"BATCH_ID="))
                .map(|var| String::from_utf8_lossy(var).into_owned())
        })
        .unwrap_or_default();
    Box::pin(async move {
        let exited = async {
            while runs(pid, &wanted) {
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::select! {
            () = abandon.cancelled() => Outcome::Abandoned,
            ended = tokio::time::timeout(deadline, exited) => match ended {
                Ok(()) => Outcome::failed(
                    FailureKind::RunnerLost,
                    format!("RunnerLost: the runner (pid {pid}) a lost dispatcher started ended unseen"),
                ),
                Err(_) => Outcome::failed(
                    FailureKind::DeadlineExceeded,
                    format!("DeadlineExceeded: the adopted runner (pid {pid}) still ran after {}s", deadline.as_secs()),
                ),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_is_found_by_its_batch_and_followed_until_it_exits() {
        let batch = format!("orphan-test-{}", std::process::id());
        let mut child = tokio::process::Command::new("sleep")
            .arg("0.5")
            .env("BATCH_ID", &batch)
            .spawn()
            .expect("sleep runs");
        let pid = child.id().expect("a pid");
        // Until the child has exec'd, its /proc environ is still this test's: wait for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while find(&batch).is_none() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(find(&batch), Some(pid));
        assert_eq!(find("no-such-batch"), None);
        // Reaped by its parent (this test) as it exits, as an orphan is by init.
        let reaper = tokio::spawn(async move { child.wait().await });
        let outcome = follow(pid, Duration::from_secs(10), CancellationToken::new()).await;
        assert!(matches!(outcome, Outcome::Failed(f) if f.kind == FailureKind::RunnerLost));
        reaper.await.expect("joined").expect("waited");
        assert_eq!(find(&batch), None);
    }
}
