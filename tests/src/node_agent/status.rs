//! Pod status as the kubelet reports it, built from the agent's view of each container.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// Now, as a `metav1.Time` (whole seconds).
pub fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A container's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not running: `ContainerCreating`, `ErrImagePull`, `CrashLoopBackOff`, ...
    Waiting(String, Option<String>),
    /// Running since then.
    Running(String),
    /// Exited.
    Terminated {
        /// Exit code (128 + signal when killed by one).
        exit_code: i32,
        /// The signal that killed it.
        signal: Option<i32>,
        /// `Completed`, `Error` or `ContainerStatusUnknown`.
        reason: String,
        /// Started then, if it ever ran.
        started_at: Option<String>,
        /// Finished then.
        finished_at: String,
    },
}

impl State {
    /// Waiting for `reason`.
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        Self::Waiting(reason.to_owned(), message)
    }

    /// An exit, from a wait status's code or signal.
    pub fn exited(code: Option<i32>, signal: Option<i32>, started_at: Option<String>) -> Self {
        let exit_code = code.unwrap_or_else(|| 128 + signal.unwrap_or(9));
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        Self::Terminated {
            exit_code,
            signal,
            reason: reason.into(),
            started_at,
            finished_at: now(),
        }
    }

    /// The API's `ContainerState`.
    pub fn json(&self, id: Option<&String>) -> Value {
        match self {
            Self::Waiting(reason, message) => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            Self::Running(at) => json!({"running": {"startedAt": at}}),
            Self::Terminated {
                exit_code,
                signal,
                reason,
                started_at,
                finished_at,
            } => {
                let message = (reason == "ContainerStatusUnknown")
                    .then_some("The container could not be located when the pod was terminated");
                json!({"terminated": {"exitCode": exit_code, "signal": signal, "reason": reason,
                    "message": message, "startedAt": started_at, "finishedAt": finished_at,
                    "containerID": id}})
            }
        }
    }

    /// The exit code, once terminated.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Self::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }

    fn short(&self) -> String {
        match self {
            Self::Waiting(reason, _) => reason.clone(),
            Self::Running(_) => "Running".into(),
            Self::Terminated {
                reason, exit_code, ..
            } => format!("{reason}({exit_code})"),
        }
    }
}

/// What the status reports of one container.
#[derive(Debug, Clone)]
pub struct Ctr {
    /// Container name.
    pub name: String,
    /// Image as the spec names it.
    pub image: String,
    /// An init container.
    pub init: bool,
    /// Current state.
    pub state: State,
    /// The previous run's end.
    pub last: Option<State>,
    /// Restarts so far.
    pub restarts: i32,
    /// Passed its readiness probe (or has none and runs).
    pub ready: bool,
    /// The current (or last) process, as a container ID: `sluice-agent://<pid>`.
    pub id: Option<String>,
}

impl Ctr {
    fn json(&self) -> Value {
        let running = matches!(self.state, State::Running(_));
        json!({"name": self.name, "image": self.image, "imageID": format!("sluice-agent://{}", self.image),
            "ready": self.ready && running, "restartCount": self.restarts, "started": running,
            "state": self.state.json(self.id.as_ref()),
            "lastState": self.last.as_ref().map_or(json!({}), |s| s.json(None)), "containerID": self.id})
    }

    /// Exited 0 (an init container that is done).
    pub fn succeeded(&self) -> bool {
        self.state.exit_code() == Some(0)
    }
}

/// The pod phase: final pods succeed when every container exited 0; before that a pod is
/// Pending until its init containers are done and a container has run.
pub fn phase(ctrs: &[Ctr], final_: bool) -> &'static str {
    let main = || ctrs.iter().filter(|c| !c.init);
    if final_ {
        let all_done =
            ctrs.iter().filter(|c| c.init).all(Ctr::succeeded) && main().all(Ctr::succeeded);
        return if all_done { "Succeeded" } else { "Failed" };
    }
    let initialised = ctrs.iter().filter(|c| c.init).all(Ctr::succeeded);
    let ran = main()
        .any(|c| !matches!(c.state, State::Waiting(..)) || c.restarts > 0 || c.last.is_some());
    if initialised && ran {
        "Running"
    } else {
        "Pending"
    }
}

/// The pod's status, conditions merged into `prev` (others' conditions kept, transition times
/// kept while a condition's status stays).
pub fn pod_status(
    ctrs: &[Ctr],
    (final_, sandbox): (bool, bool),
    (pod_ip, start_time): (&str, &str),
    prev: &[Value],
) -> Value {
    let names = |f: &dyn Fn(&Ctr) -> bool| {
        ctrs.iter()
            .filter(|c| f(c))
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
    };
    let uninit = names(&|c| c.init && !c.succeeded());
    let unready = names(&|c| !(c.init || c.ready && matches!(c.state, State::Running(_))));
    let ready = if final_ {
        ("False", Some("PodCompleted"), None)
    } else if unready.is_empty() {
        ("True", None, None)
    } else {
        (
            "False",
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let ours = [
        (
            "PodReadyToStartContainers",
            if sandbox { "True" } else { "False" },
            None,
            None,
        ),
        if uninit.is_empty() {
            ("Initialized", "True", None, None)
        } else {
            (
                "Initialized",
                "False",
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    uninit.join(" ")
                )),
            )
        },
        ("ContainersReady", ready.0, ready.1, ready.2.clone()),
        ("Ready", ready.0, ready.1, ready.2),
    ];
    let mut conditions: Vec<Value> = prev.to_vec();
    for (kind, status, reason, message) in ours {
        let old = conditions.iter().position(|c| c["type"] == kind);
        let since = old
            .map(|i| &conditions[i])
            .filter(|c| c["status"] == status)
            .map_or_else(|| json!(now()), |c| c["lastTransitionTime"].clone());
        let cond = json!({"type": kind, "status": status, "reason": reason, "message": message,
            "lastProbeTime": null, "lastTransitionTime": since});
        match old {
            Some(i) => conditions[i] = cond,
            None => conditions.push(cond),
        }
    }
    let statuses = |init: bool| {
        ctrs.iter()
            .filter(|c| c.init == init)
            .map(Ctr::json)
            .collect::<Vec<_>>()
    };
    let init = statuses(true);
    json!({"phase": phase(ctrs, final_), "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "startTime": start_time,
        "conditions": conditions, "containerStatuses": statuses(false),
        "initContainerStatuses": if init.is_empty() { Value::Null } else { Value::from(init) }})
}

/// One line for the log: phase and each container's state.
pub fn summary(ctrs: &[Ctr], final_: bool) -> String {
    let each = ctrs
        .iter()
        .map(|c| format!("{}={} restarts={}", c.name, c.state.short(), c.restarts));
    format!(
        "{} [{}]",
        phase(ctrs, final_),
        each.collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(name: &str, init: bool, state: State) -> Ctr {
        Ctr {
            name: name.into(),
            image: "i".into(),
            init,
            state,
            last: None,
            restarts: 0,
            ready: true,
            id: None,
        }
    }

    #[test]
    fn phases() {
        let creating = || State::waiting("ContainerCreating", None);
        let running = || State::Running(now());
        assert_eq!(phase(&[ctr("a", false, creating())], false), "Pending");
        assert_eq!(
            phase(
                &[ctr("i", true, running()), ctr("a", false, creating())],
                false
            ),
            "Pending"
        );
        let done = State::exited(Some(0), None, None);
        assert_eq!(
            phase(
                &[ctr("i", true, done.clone()), ctr("a", false, running())],
                false
            ),
            "Running"
        );
        assert_eq!(phase(&[ctr("a", false, done.clone())], true), "Succeeded");
        let killed = State::exited(None, Some(15), None);
        assert_eq!(killed.exit_code(), Some(143));
        assert_eq!(
            phase(&[ctr("a", false, done), ctr("b", false, killed)], true),
            "Failed"
        );
        let mut crashing = ctr("a", false, State::waiting("CrashLoopBackOff", None));
        crashing.restarts = 1;
        assert_eq!(phase(&[crashing], false), "Running");
    }

    #[test]
    fn conditions_merge_and_keep_transition_times() {
        let prev = vec![
            json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"}),
            json!({"type": "Ready", "status": "True", "lastTransitionTime": "t1"}),
        ];
        let mut c = [ctr("a", false, State::Running("t2".into()))];
        c[0].id = Some("sluice-agent://9".into());
        let s = pod_status(&c, (false, true), ("127.0.0.2", "t0"), &prev);
        let conds = s["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 5);
        assert_eq!(conds[0]["type"], "PodScheduled");
        assert_eq!(conds[1]["lastTransitionTime"], "t1");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["containerStatuses"][0]["containerID"], "sluice-agent://9");
        assert_eq!(
            s["containerStatuses"][0]["state"]["running"]["startedAt"],
            "t2"
        );
        assert!(s["initContainerStatuses"].is_null());

        let done = [ctr(
            "a",
            false,
            State::exited(Some(1), None, Some("t2".into())),
        )];
        let s = pod_status(&done, (true, true), ("127.0.0.2", "t0"), conds);
        assert_eq!(s["phase"], "Failed");
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("PodCompleted"))
        );
        assert_ne!(ready["lastTransitionTime"], "t1");
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Error"
        );
    }
}
