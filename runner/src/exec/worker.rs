//! One worker process of an exec kernel, and the protocol spoken with it (docs/EXEC.md): one
//! JSON line in on its stdin per message, one JSON line back on its stdout.
//!
//! Two threads per process keep the runner from ever blocking on it in the wrong place: one
//! reads stdout lines into a channel (so an answer can be waited for with a timeout), one
//! forwards stderr to the runner's log line by line and keeps the last lines for error
//! reasons (so a chatty worker never blocks on a full stderr pipe).

use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The protocol version, given to workers as `SLUICE_EXEC_PROTOCOL`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Stderr lines kept for an error reason.
const TAIL: usize = 3;
/// How much of a bad line an error quotes.
const QUOTE: usize = 80;

/// A running worker process.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<std::io::Result<String>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Disconnects when the stderr thread has read to the end: a reason waits for it, so the
    /// line a worker wrote just before exiting is in the reason.
    stderr_done: Option<Receiver<()>>,
    /// Messages answered so far.
    pub answered: u64,
}

/// The runner's line for one message.
#[derive(serde::Serialize)]
struct Request<'a> {
    id: &'a str,
    input: &'a Value,
}

/// Why a worker can no longer be used; the message it was on fails with this reason.
#[derive(Debug)]
pub struct Broken(pub String);

impl Worker {
    /// Starts `program` with `args` in `dir` for kernel `kernel`.
    pub fn spawn(
        kernel: &str,
        program: &Path,
        args: &[String],
        dir: &Path,
    ) -> std::io::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .current_dir(dir)
            // The runner's Redis credentials are not the worker's business.
            .env_remove(sluice_contract::runner_env::REDIS_URL)
            .env("SLUICE_EXEC_PROTOCOL", PROTOCOL_VERSION.to_string())
            .env("SLUICE_KERNEL", kernel)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut stderr_done = None;
        if let Some(stderr) = child.stderr.take() {
            let (tail, kernel, pid) = (Arc::clone(&tail), kernel.to_owned(), child.id());
            let (done, waiter) = mpsc::channel::<()>();
            stderr_done = Some(waiter);
            std::thread::spawn(move || {
                forward_stderr(stderr, &kernel, pid, &tail);
                drop(done);
            });
        }
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            lines,
            tail,
            stderr_done,
            answered: 0,
        })
    }

    /// Sends one message and waits for its answer: `Ok(Ok(output))`, `Ok(Err(error))` as the
    /// worker said it, or `Err` if the worker broke (exited, timed out, spoke out of turn).
    pub fn ask(
        &mut self,
        id: &str,
        input: &Value,
        timeout: Option<Duration>,
    ) -> Result<Result<Value, String>, Broken> {
        // Serialised from borrows: a large input is not copied once more for its line.
        let mut line = serde_json::to_vec(&Request { id, input })
            .map_err(|e| Broken(format!("exec message could not be encoded: {e}")))?;
        line.push(b'\n');
        let sent = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(&line).and_then(|()| stdin.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        drop(line);
        if sent.is_err() {
            return Err(self.died());
        }
        let received = match timeout {
            Some(limit) => self.lines.recv_timeout(limit),
            None => self
                .lines
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        let answer = match received {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(self.broken(&format!("its stdout failed: {e}"))),
            Err(RecvTimeoutError::Timeout) => {
                let limit = timeout.unwrap_or_default();
                return Err(self.broken(&format!("timed out after {}", human(limit))));
            }
            Err(RecvTimeoutError::Disconnected) => return Err(self.died()),
        };
        let parsed = parse_answer(id, &answer).map_err(|why| self.broken(&why))?;
        self.answered += 1;
        Ok(parsed)
    }

    /// The worker broke for `why`: it is killed, and the reason carries its last stderr lines.
    fn broken(&mut self, why: &str) -> Broken {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Broken(format!("exec worker {why}{}", self.tail_text()))
    }

    /// Its stdout or stdin closed: it exited (or is about to); say how.
    fn died(&mut self) -> Broken {
        let deadline = Instant::now() + Duration::from_millis(500);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => break None,
            }
        };
        match status {
            Some(status) => Broken(format!(
                "exec worker {}{}",
                describe(status),
                self.tail_text()
            )),
            None => self.broken("closed its stdout"),
        }
    }

    /// The last stderr lines of a worker that has exited or been killed. Its stderr reaches
    /// its end once the process is gone; a grandchild still holding the pipe open only costs
    /// the bound.
    fn tail_text(&mut self) -> String {
        if let Some(done) = self.stderr_done.take() {
            let _ = done.recv_timeout(Duration::from_millis(500));
        }
        let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.is_empty() {
            String::new()
        } else {
            format!("; last stderr: {}", Vec::from(tail.clone()).join(" | "))
        }
    }

    /// Closes its stdin, gives it `grace` to exit, then kills it.
    pub fn stop(mut self, grace: Duration) {
        drop(self.stdin.take());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(
            pid = self.child.id(),
            "exec worker did not exit after its stdin closed; killing it"
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Never leave a process behind, whatever path dropped it.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `{"id": id, "output": …}` or `{"id": id, "error": "…"}`, nothing else.
fn parse_answer(id: &str, line: &str) -> Result<Result<Value, String>, String> {
    let quoted = || {
        let start: String = line.chars().take(QUOTE).collect();
        let more = if line.chars().count() > QUOTE {
            "…"
        } else {
            ""
        };
        format!("{start}{more}")
    };
    let Ok(Value::Object(mut answer)) = serde_json::from_str::<Value>(line) else {
        return Err(format!(
            "wrote a line that is not a JSON object: {:?}",
            quoted()
        ));
    };
    match answer.get("id").and_then(Value::as_str) {
        Some(answered) if answered == id => {}
        Some(other) => {
            let other: String = other.chars().take(QUOTE).collect();
            return Err(format!("answered id {other:?} while working on {id:?}"));
        }
        None => {
            return Err(format!(
                "wrote a line without a string \"id\": {:?}",
                quoted()
            ));
        }
    }
    match (answer.remove("output"), answer.remove("error")) {
        (Some(output), None) => Ok(Ok(output)),
        (None, Some(Value::String(error))) => Ok(Err(error)),
        _ => Err(format!(
            "wrote a line with neither exactly one \"output\" nor a string \"error\": {:?}",
            quoted()
        )),
    }
}

fn forward_stderr(
    stderr: std::process::ChildStderr,
    kernel: &str,
    pid: u32,
    tail: &Mutex<VecDeque<String>>,
) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { return };
        tracing::info!(kernel, pid, "{line}");
        let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.len() == TAIL {
            tail.pop_front();
        }
        tail.push_back(line.chars().take(200).collect());
    }
}

/// `exited with code 3`, `was killed by signal 9 (SIGKILL)`.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended".to_owned(),
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_must_be_one_object_for_the_same_id() {
        assert_eq!(
            parse_answer("a", r#"{"id":"a","output":[1]}"#),
            Ok(Ok(json!([1])))
        );
        assert_eq!(
            parse_answer("a", r#"{"id":"a","error":"no"}"#),
            Ok(Err("no".into()))
        );
        for (line, expected) in [
            ("hello", "not a JSON object"),
            (
                r#"{"id":"b","output":1}"#,
                "answered id \"b\" while working on \"a\"",
            ),
            (r#"{"output":1}"#, "without a string \"id\""),
            (r#"{"id":"a"}"#, "neither exactly one"),
            (
                r#"{"id":"a","output":1,"error":"x"}"#,
                "neither exactly one",
            ),
            (r#"{"id":"a","error":5}"#, "neither exactly one"),
        ] {
            let why = parse_answer("a", line).unwrap_err();
            assert!(why.contains(expected), "{line}: {why}");
        }
        let long = "x".repeat(500);
        assert!(parse_answer("a", &long).unwrap_err().len() < 150);
    }

    #[test]
    fn the_last_line_a_worker_wrote_before_exiting_is_in_the_reason() {
        // Many times over: the line and the exit race the stderr thread each time.
        for _ in 0..50 {
            let script = "read line; echo one >&2; echo going down on purpose >&2; exit 3";
            let args = ["-c".to_owned(), script.to_owned()];
            let mut worker =
                Worker::spawn("sh", Path::new("/bin/sh"), &args, Path::new("/")).unwrap();
            let Err(Broken(why)) = worker.ask("a", &json!("x"), Some(Duration::from_secs(5)))
            else {
                panic!("the worker exits without answering");
            };
            assert!(why.starts_with("exec worker exited with code 3"), "{why}");
            assert!(why.ends_with("one | going down on purpose"), "{why}");
        }
    }
}
