//! A pod's containers as processes: init containers one by one, then the others; restarts as
//! the restartPolicy says, with crash-loop backoff (immediately, then 10 s doubling to 5 min);
//! readiness ([`super::probe`]); stopping on deletion.

use super::images::{self, Image};
use super::pod::PodRun;
use super::process::{self, Launch};
use super::signals::Stop;
use super::status::{self, State};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nix::sys::signal::Signal;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// One container of a pod, as the agent runs it.
pub struct Run {
    /// What its status reports.
    pub s: status::Ctr,
    /// Its spec.
    pub spec: Container,
    /// Its image, once pulled.
    pub image: Option<Image>,
    /// How to start it and its environment, once configured.
    pub launch: Option<(Launch, Vec<(String, String)>)>,
    pub(super) pid: Option<u32>,
    started: Option<Instant>,
    next_start: Option<Instant>,
    backoff: Duration,
    /// Will not run again.
    done: bool,
    pub(super) probe_at: Option<Instant>,
    pub(super) fails: i32,
}

pub(super) fn secs(n: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(default))
}

fn time(t: Option<&Time>) -> Option<String> {
    serde_json::to_value(t?).ok()?.as_str().map(str::to_owned)
}

impl Run {
    /// A container not started yet.
    pub fn new(spec: Container, init: bool, state: State) -> Self {
        let s = status::Ctr {
            name: spec.name.clone(),
            image: spec.image.clone().unwrap_or_default(),
            init,
            state,
            last: None,
            restarts: 0,
            ready: false,
            id: None,
        };
        Self {
            s,
            spec,
            image: None,
            launch: None,
            pid: None,
            started: None,
            next_start: None,
            backoff: Duration::ZERO,
            done: false,
            probe_at: None,
            fails: 0,
        }
    }

    /// uid and gid (container securityContext, else the pod's, else the image's user) and the
    /// supplementary groups (supplementalGroups and fsGroup).
    pub fn user(&self, pod: &Pod) -> (Option<(u32, u32)>, Vec<u32>) {
        let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let csc = self.spec.security_context.as_ref();
        let image = self.image.as_ref().and_then(images::user);
        let id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
        let uid = id(csc
            .and_then(|c| c.run_as_user)
            .or(psc.and_then(|p| p.run_as_user)))
        .or(image.map(|u| u.0));
        let gid = id(csc
            .and_then(|c| c.run_as_group)
            .or(psc.and_then(|p| p.run_as_group)))
        .or(image.map(|u| u.1));
        let groups = psc.iter().flat_map(|p| {
            p.supplemental_groups
                .iter()
                .flatten()
                .copied()
                .chain(p.fs_group)
        });
        (
            uid.map(|u| (u, gid.unwrap_or(0))),
            groups.filter_map(|g| u32::try_from(g).ok()).collect(),
        )
    }
}

impl PodRun {
    /// A pod this agent ran before it restarted: its processes are gone. Running containers
    /// become terminated `ContainerStatusUnknown` (exit 137), ending the pod under restartPolicy
    /// Never, restarted otherwise; finished init containers stay finished.
    pub(super) fn adopt(&mut self) {
        let Some(st) = self.pod().status else { return };
        let old: Vec<_> = st
            .init_container_statuses
            .into_iter()
            .flatten()
            .chain(st.container_statuses.into_iter().flatten())
            .collect();
        for r in &mut self.ctrs {
            let Some(o) = old.iter().find(|o| o.name == r.s.name) else {
                continue;
            };
            let state = o.state.as_ref();
            r.s.restarts = o.restart_count;
            if let Some(running) = state.and_then(|s| s.running.as_ref()) {
                warn!(pod = %self.key, container = %r.s.name, "its process is gone (the node agent restarted)");
                let lost = State::Terminated {
                    exit_code: 137,
                    signal: None,
                    reason: "ContainerStatusUnknown".into(),
                    started_at: time(running.started_at.as_ref()),
                    finished_at: status::now(),
                };
                r.s.id.clone_from(&o.container_id);
                if self.policy == "Never" {
                    (r.s.state, r.done) = (lost, true);
                } else {
                    r.s.last = Some(lost);
                }
            } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
                let ended = State::Terminated {
                    exit_code: t.exit_code,
                    signal: t.signal,
                    reason: t.reason.clone().unwrap_or_default(),
                    started_at: time(t.started_at.as_ref()),
                    finished_at: time(t.finished_at.as_ref()).unwrap_or_default(),
                };
                let keeps = self.policy == "Never"
                    || (t.exit_code == 0 && (r.s.init || self.policy == "OnFailure"));
                if keeps {
                    (r.s.state, r.done) = (ended, true);
                }
            }
        }
    }

    /// Nothing will run any more: an init container failed for good, or every container ended.
    pub(super) fn finished(&self) -> bool {
        self.ctrs
            .iter()
            .any(|r| r.s.init && r.done && !r.s.succeeded())
            || self.ctrs.iter().filter(|r| !r.s.init).all(|r| r.done)
    }

    /// Runs the containers until the pod is finished (`None`) or interrupted.
    pub(super) async fn supervise(&mut self) -> Option<Stop> {
        loop {
            if self.finished() {
                return None;
            }
            self.start_due();
            self.publish().await;
            let waiting = self
                .ctrs
                .iter()
                .filter(|r| r.pid.is_none() && !r.done)
                .filter_map(|r| r.next_start);
            let probes = self
                .ctrs
                .iter()
                .filter(|r| r.pid.is_some())
                .filter_map(|r| r.probe_at);
            let retry = self.dirty.then(|| Instant::now() + Duration::from_secs(5));
            let wake = waiting
                .chain(probes)
                .chain(self.refresh_at)
                .chain(retry)
                .min();
            let wake = wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                Some((i, status)) = self.exit_rx.recv() => self.exited(i, status, false),
                () = tokio::time::sleep_until(wake) => {
                    if self.refresh_at.is_some_and(|t| t <= Instant::now()) {
                        self.refresh_volumes().await;
                    }
                    self.probe().await;
                }
                stop = self.signals.wait() => return Some(stop),
            }
        }
    }

    /// Starts what is due: the first unfinished init container, or else every other container.
    fn start_due(&mut self) {
        let now = Instant::now();
        let due = |r: &Run| r.pid.is_none() && !r.done && r.next_start.is_none_or(|t| t <= now);
        let which: Vec<usize> = match self.ctrs.iter().position(|r| r.s.init && !r.s.succeeded()) {
            Some(i) => vec![i],
            None => (0..self.ctrs.len())
                .filter(|&i| !self.ctrs[i].s.init)
                .collect(),
        };
        let which: Vec<usize> = which.into_iter().filter(|&i| due(&self.ctrs[i])).collect();
        for i in which {
            self.start(i);
        }
    }

    fn start(&mut self, i: usize) {
        let r = &mut self.ctrs[i];
        let Some((launch, env)) = &r.launch else {
            return;
        };
        let log = self.dir.join(format!("{}.log", r.spec.name));
        let cwd = r
            .spec
            .working_dir
            .as_deref()
            .map(Path::new)
            .filter(|p| p.is_dir())
            .unwrap_or(&self.dir);
        r.next_start = None;
        match process::spawn(launch, env, cwd, &log) {
            Ok(mut child) => {
                if r.s.last.is_some() {
                    r.s.restarts += 1;
                }
                r.pid = child.id();
                r.s.id = r.pid.map(|p| format!("sluice-agent://{p}"));
                r.s.state = State::Running(status::now());
                r.started = Some(Instant::now());
                let probe = r
                    .spec
                    .readiness_probe
                    .as_ref()
                    .filter(|p| p.http_get.is_some() || p.tcp_socket.is_some());
                r.s.ready = probe.is_none();
                r.probe_at = probe.map(|p| Instant::now() + secs(p.initial_delay_seconds, 0));
                r.fails = 0;
                let (tx, pid) = (self.exit_tx.clone(), r.pid);
                tokio::spawn(async move {
                    let status = child
                        .wait()
                        .await
                        .unwrap_or_else(|_| ExitStatus::from_raw(9));
                    // The container ends with its first process: whatever it left behind goes too.
                    if let Some(p) = pid {
                        process::signal_group(p, Signal::SIGKILL);
                    }
                    let _ = tx.send((i, status));
                });
            }
            Err(e) => {
                warn!(pod = %self.key, container = %r.s.name, "starting: {e:#}");
                r.s.state = State::waiting("RunContainerError", Some(format!("{e:#}")));
                r.next_start = Some(Instant::now() + Duration::from_secs(10));
            }
        }
    }

    /// A container's process ended: record it, and schedule a restart if the policy wants one
    /// (never while `stopping`).
    fn exited(&mut self, i: usize, status: ExitStatus, stopping: bool) {
        let key = self.key.clone();
        let r = &mut self.ctrs[i];
        (r.pid, r.s.ready, r.probe_at) = (None, false, None);
        let started_at = if let State::Running(at) = &r.s.state {
            Some(at.clone())
        } else {
            None
        };
        let state = State::exited(status.code(), status.signal(), started_at);
        let code = state.exit_code().unwrap_or(1);
        let policy = self.policy.as_str();
        let restart = !stopping
            && if r.s.init {
                code != 0 && policy != "Never"
            } else {
                policy == "Always" || (policy == "OnFailure" && code != 0)
            };
        if !restart {
            (r.s.state, r.done) = (state, true);
            return;
        }
        if r.started
            .is_some_and(|t| t.elapsed() > Duration::from_secs(600))
        {
            r.backoff = Duration::ZERO;
        }
        let delay = r.backoff;
        r.backoff = (r.backoff * 2).clamp(Duration::from_secs(10), Duration::from_secs(300));
        r.next_start = Some(Instant::now() + delay);
        r.s.last = Some(state.clone());
        r.s.state = if delay.is_zero() {
            state
        } else {
            let message = format!(
                "back-off {}s restarting failed container={} pod={key}",
                delay.as_secs(),
                r.s.name
            );
            State::waiting("CrashLoopBackOff", Some(message))
        };
    }

    /// Stops every running container: TERM to each process group, KILL after `grace` (at once
    /// without one), and records the exits.
    pub(super) async fn kill_all(&mut self, grace: Option<Duration>) {
        let running = |ctrs: &[Run]| ctrs.iter().filter_map(|r| r.pid).collect::<Vec<_>>();
        if running(&self.ctrs).is_empty() {
            return;
        }
        info!(pod = %self.key, grace = ?grace, "stopping containers");
        for (signal, wait) in [
            (Signal::SIGTERM, grace),
            (Signal::SIGKILL, Some(Duration::from_secs(10))),
        ] {
            let Some(wait) = wait else { continue };
            for pid in running(&self.ctrs) {
                process::signal_group(pid, signal);
            }
            let deadline = Instant::now() + wait;
            while !running(&self.ctrs).is_empty() {
                tokio::select! {
                    Some((i, status)) = self.exit_rx.recv() => self.exited(i, status, true),
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
    }
}
