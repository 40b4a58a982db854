//! Containers as local processes.
//!
//! The agent starts each container as a copy of its own binary with [`HELPER_ARG`] (so
//! `main` must call [`exec_helper_if_requested`] first). That helper, a fresh single-threaded
//! process already in its own process group, with the container's clean environment, working
//! directory and log file, enters a new mount namespace (`/` made rprivate), bind-mounts each
//! volume onto its mountPath (read-only ones remounted so), drops to the container's
//! uid/gid/groups and execs argv, so the container keeps the helper's pid. This replaces a
//! `pre_exec` closure: the workspace forbids unsafe code, and `nix` wraps these calls safely.
//! A mount point needs something to mount on: a mountPath missing on the host is created there
//! (an empty directory, or an empty file for a file subPath) and left behind.

use anyhow::{Context, Result, bail};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid, setgid, setgroups, setuid};
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The helper's first argument; the second is the [`Launch`] as JSON.
pub const HELPER_ARG: &str = "--sluice-node-agent-exec";

/// What the helper does before exec.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Launch {
    /// Program (a host path, or a name looked up in the container's PATH) and arguments.
    pub argv: Vec<String>,
    /// Bind mounts inside the container's mount namespace.
    pub mounts: Vec<Mount>,
    /// uid and gid to run as; `None` keeps root.
    pub user: Option<(u32, u32)>,
    /// Supplementary groups (supplementalGroups, fsGroup).
    pub groups: Vec<u32>,
}

/// One volume mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mount {
    /// The materialised volume on the host.
    pub source: PathBuf,
    /// The container's mountPath.
    pub target: PathBuf,
    /// Remount read-only.
    pub read_only: bool,
}

/// Starts a container: stdout and stderr appended to `log`, in a process group of its own.
pub fn spawn(
    launch: &Launch,
    env: &[(String, String)],
    cwd: &Path,
    log: &Path,
) -> Result<tokio::process::Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let child = tokio::process::Command::new("/proc/self/exe")
        .arg(HELPER_ARG)
        .arg(serde_json::to_string(launch)?)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .context("spawning the container helper")?;
    Ok(child)
}

/// Sends `signal` to the process group led by `pid` (errors, e.g. it is gone, are ignored).
pub fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// In the helper process (see the module doc): sets the container up and execs it; never
/// returns then. Anywhere else: returns at once.
pub fn exec_helper_if_requested() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some(HELPER_ARG) {
        return;
    }
    let launch = args
        .next()
        .context("no launch spec")
        .and_then(|a| Ok(serde_json::from_str::<Launch>(&a)?));
    let Err(e) = launch.and_then(|l| enter(&l)) else {
        unreachable!("enter returns only on error")
    };
    eprintln!("node-agent: cannot start the container: {e:#}");
    std::process::exit(128);
}

fn enter(l: &Launch) -> Result<()> {
    if !l.mounts.is_empty() {
        let none = None::<&str>;
        unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
            .context("making / rprivate")?;
        for m in &l.mounts {
            if m.source.is_dir() {
                std::fs::create_dir_all(&m.target)?;
            } else if !m.target.exists() {
                std::fs::create_dir_all(m.target.parent().unwrap_or(Path::new("/")))?;
                std::fs::write(&m.target, b"")?;
            }
            let what = || {
                format!(
                    "bind-mounting {} on {}",
                    m.source.display(),
                    m.target.display()
                )
            };
            mount(
                Some(&m.source),
                &m.target,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            )
            .with_context(what)?;
            if m.read_only {
                let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                mount(none, &m.target, none, flags, none).with_context(what)?;
            }
        }
    }
    if let Some((uid, gid)) = l.user {
        let groups: Vec<Gid> = std::iter::once(gid)
            .chain(l.groups.iter().copied())
            .map(Gid::from_raw)
            .collect();
        setgroups(&groups).context("setgroups")?;
        setgid(Gid::from_raw(gid)).context("setgid")?;
        setuid(Uid::from_raw(uid)).context("setuid")?;
    }
    let Some((program, args)) = l.argv.split_first() else {
        bail!("empty argv")
    };
    let err = std::process::Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("exec {program}"))
}
