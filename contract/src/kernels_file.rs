//! The exec kernel table: the TOML file named by `KERNELS_FILE`, naming workers in any
//! language that speak the exec protocol (docs/EXEC.md).
//!
//! ```toml
//! [kernel.seed]
//! command = ["python3", "worker.py"]  # argv, no shell, run in the directory of this file
//! processes = 2                       # optional; default: the runner's threads
//! timeout = "30s"                     # optional limit per message
//! ```
//!
//! The runner reads it at start-up and the dispatcher when it starts; both refuse a table that
//! does not parse, names no command, or names a command that does not exist, with one line
//! naming the file, the kernel and the problem.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The variable naming the table.
pub const KERNELS_FILE: &str = "KERNELS_FILE";

/// One exec kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// The program and its arguments; a program with a `/` is relative to the table's
    /// directory, a bare name is looked up in `PATH`.
    pub command: Vec<String>,
    /// Worker processes; `None`: as many as the runner has threads.
    pub processes: Option<usize>,
    /// The longest one message may take.
    pub timeout: Option<Duration>,
}

/// A parsed, checked table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTable {
    /// The directory the workers run in: the table's own.
    pub dir: PathBuf,
    /// Kernels by name.
    pub kernels: BTreeMap<String, ExecSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    kernel: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    command: Vec<String>,
    processes: Option<usize>,
    timeout: Option<String>,
}

impl KernelTable {
    /// Reads and checks the table at `path` (commands included); the error is one line naming
    /// the file, the kernel and the problem.
    pub fn load(path: &Path) -> Result<Self, String> {
        let table = Self::read(path)?;
        table.check_commands(path)?;
        Ok(table)
    }

    /// Reads and parses the table at `path` without looking for its commands (the dispatcher
    /// of a cluster, whose runners have their own filesystem).
    pub fn read(path: &Path) -> Result<Self, String> {
        let at = |problem: String| format!("{KERNELS_FILE} {}: {problem}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| at(format!("cannot read it: {e}")))?;
        let file: File = toml::from_str(&text).map_err(|e| {
            let first = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_owned();
            let line = e.span().map(|s| text[..s.start].lines().count().max(1));
            at(match line {
                Some(line) => format!("line {line}: {first}"),
                None => first,
            })
        })?;
        if file.kernel.is_empty() {
            return Err(at("no [kernel.NAME] table".into()));
        }
        let mut kernels = BTreeMap::new();
        for (name, entry) in file.kernel {
            let spec = spec(entry).map_err(|problem| at(format!("kernel {name}: {problem}")))?;
            kernels.insert(name, spec);
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Ok(Self { dir, kernels })
    }

    /// Fails on the first kernel whose program cannot be found or is not executable.
    pub fn check_commands(&self, path: &Path) -> Result<(), String> {
        for (name, spec) in &self.kernels {
            let program = &spec.command[0];
            if self.program(program).is_none() {
                let wherein = if program.contains('/') {
                    format!("in {}", self.dir.display())
                } else {
                    "on PATH".to_owned()
                };
                return Err(format!(
                    "{KERNELS_FILE} {}: kernel {name}: command {program:?} not found {wherein}",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    /// The executable `program` names: relative to the table's directory if it has a `/`,
    /// else the first match on `PATH` ([`find_executable`]).
    pub fn program(&self, program: &str) -> Option<PathBuf> {
        find_executable(Path::new(program), &self.dir)
    }
}

/// The executable `program` names, as `exec` finds it: a path with a `/` taken relative to
/// `base` (an absolute one as it is), a bare name looked up on `PATH` (a default one if unset).
/// The kernel table's commands and the local launcher's `RUNNER_BIN` are found this way.
pub fn find_executable(program: &Path, base: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 || program.is_absolute() {
        return Some(base.join(program)).filter(|p| is_executable(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn spec(entry: Entry) -> Result<ExecSpec, String> {
    if entry.command.first().is_none_or(String::is_empty) {
        return Err(
            "command is missing: give the argv, such as command = [\"python3\", \"worker.py\"]"
                .into(),
        );
    }
    if entry.processes == Some(0) {
        return Err("processes must be at least 1".into());
    }
    let timeout = entry.timeout.as_deref().map(parse_duration).transpose()?;
    Ok(ExecSpec {
        command: entry.command,
        processes: entry.processes,
        timeout,
    })
}

/// `"30s"`, `"500ms"`, `"2m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("timeout {text:?} is not a duration such as \"30s\", \"500ms\" or \"2m\"");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(bad()),
    };
    if duration.is_zero() {
        return Err(format!("timeout {text:?} must be more than zero"));
    }
    Ok(duration)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<KernelTable, String> {
        let dir = std::env::temp_dir().join(format!("sluice-kt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!(
            "{:x}.toml",
            text.len() * 31 + text.bytes().map(usize::from).sum::<usize>()
        ));
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        KernelTable::load(&path)
    }

    #[test]
    fn a_table_parses_with_its_defaults() {
        let t = table("[kernel.seed]\ncommand = [\"sh\", \"-c\", \"cat\"]\ntimeout = \"30s\"\n")
            .unwrap();
        let seed = &t.kernels["seed"];
        assert_eq!(seed.command, ["sh", "-c", "cat"]);
        assert_eq!(
            (seed.processes, seed.timeout),
            (None, Some(Duration::from_secs(30)))
        );
    }

    #[test]
    fn each_problem_is_one_line_naming_the_file_the_kernel_and_the_problem() {
        for (text, expected) in [
            ("[kernel.seed\n", "line 1"),
            (
                "[kernel.seed]\nprocesses = 2\n",
                "kernel seed: command is missing",
            ),
            (
                "[kernel.seed]\ncommand = [\"no-such-program-here\"]\n",
                "kernel seed: command \"no-such-program-here\" not found on PATH",
            ),
            (
                "[kernel.seed]\ncommand = [\"./worker.py\"]\n",
                "not found in",
            ),
            (
                "[kernel.seed]\ncommand = [\"sh\"]\ntimeout = \"soon\"\n",
                "kernel seed: timeout \"soon\"",
            ),
            (
                "[kernel.seed]\ncommand = [\"sh\"]\nprocesses = 0\n",
                "processes must be at least 1",
            ),
            (
                "[kernel.seed]\ncommand = [\"sh\"]\nshell = true\n",
                "unknown field",
            ),
            ("", "no [kernel.NAME] table"),
        ] {
            let error = table(text).unwrap_err();
            assert!(error.starts_with("KERNELS_FILE "), "{error}");
            assert!(error.contains(expected), "{text:?}: {error}");
            assert_eq!(error.lines().count(), 1, "{error}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5").is_err());
    }
}
