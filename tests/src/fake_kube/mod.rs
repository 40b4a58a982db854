//! A fake Kubernetes API server for tests: the `batch/v1` Job endpoints exactly as `kube`
//! calls them, and a Job controller that runs each Job's container as a local process.
//!
//! Covered: create (409 AlreadyExists on a duplicate name, 422 Invalid for a bad name or a
//! container without an image), get, list and watch with `labelSelector` and
//! `resourceVersion` (line-delimited watch events, as the real server streams them), delete
//! (DELETED event, the pod killed). Status follows the real controller: `active`, `failed`,
//! `succeeded`, `startTime`, `completionTime`, and the conditions `SuccessCriteriaMet` +
//! `Complete` or `FailureTarget` + `Failed` (`BackoffLimitExceeded`, `DeadlineExceeded`,
//! `PodFailurePolicy` for a `FailJob` exit-code rule, with the real controller's message).
//! Pods: one per attempt, listed and watched at `/api/v1/namespaces/{ns}/pods`, labelled
//! `batch.kubernetes.io/job-name`, deleted with their Job.
//! Faults: [`FakeKube::fail_for`] makes every request answer 500 or 429 for a while;
//! [`FakeKube::images_missing`] leaves pods in `ErrImagePull`/`ImagePullBackOff`;
//! [`FakeKube::refuse_pods`] leaves Jobs without pods, as a quota does;
//! [`FakeKube::hold_pods`] holds new pods unschedulable or in a waiting reason;
//! [`FakeKube::evict_running_pods`] evicts (`DisruptionTarget`) as a node drain does;
//! [`FakeKube::refuse_creates`] answers creates 403, 404 or 422; Jobs created suspended stay
//! suspended until [`FakeKube::admit_suspended`]; [`FakeKube::lose_job`] removes a Job with no
//! watch event; [`FakeKube::pods_stuck_terminating`] keeps failed Jobs at `FailureTarget`.
//! Finished Jobs are deleted after their `ttlSecondsAfterFinished`, as the TTL controller does.

mod api;
mod controller;
mod pod;
mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use store::Store;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// State shared by the HTTP handlers and the controller tasks.
pub struct Shared {
    store: Mutex<Store>,
    /// Latest resource version, for watchers to wait on.
    changed: watch::Sender<u64>,
    runner_bin: PathBuf,
    secrets: HashMap<(String, String), String>,
    pass_through: Vec<(String, String)>,
    fault: Mutex<Option<(Instant, u16)>>,
    stats: Mutex<Stats>,
    active: AtomicI64,
    controllers: Mutex<HashMap<String, CancellationToken>>,
    /// Bumped to end every open watch stream.
    watch_cuts: watch::Sender<u64>,
    /// Watch requests are refused (503) until then.
    watch_outage: Mutex<Option<Instant>>,
    /// No pod can be created (admission or a quota refuses them).
    pods_refused: AtomicBool,
    /// Images cannot be pulled (a kind cluster the image was never loaded into).
    images_missing: AtomicBool,
    /// New pods are held in this waiting reason (or `Unschedulable`) until cleared.
    pods_held: Mutex<Option<String>>,
    /// Bumped to evict every running pod.
    evictions: watch::Sender<u64>,
    /// Suspended Jobs are admitted (as Kueue does); otherwise they stay suspended.
    admits_suspended: AtomicBool,
    /// Job creates are refused with this status code while set.
    creates_refused: Mutex<Option<u16>>,
    /// A failed Job's pod never confirms termination: the Job gets `FailureTarget`, never
    /// `Failed`, as with a pod stuck Terminating on a lost node.
    stuck_terminating: AtomicBool,
    stop: CancellationToken,
}

/// What the fake saw, for assertions.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Successful creates per Job name.
    pub creates: HashMap<String, u32>,
    /// Creates answered 409.
    pub conflicts: u32,
    /// Requests answered with an injected fault.
    pub faults: u32,
    /// Runner processes started per Job name.
    pub pods: HashMap<String, u32>,
    /// Most pods running at once.
    pub peak_active: i64,
    /// Deletes of existing Jobs.
    pub deletes: u32,
    /// Watches answered 410 Gone (their version was compacted).
    pub gone: u32,
    /// Watch requests refused during a watch outage.
    pub watch_refusals: u32,
    /// Creates refused on purpose ([`FakeKube::refuse_creates`]).
    pub refused_creates: u32,
    /// Direct reads of one Job (GET).
    pub gets: u32,
    /// Running pods evicted.
    pub evicted: u32,
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn modify(
        &self,
        ns: &str,
        name: &str,
        change: impl FnOnce(&mut k8s_openapi::api::batch::v1::Job),
    ) {
        let rv = {
            let mut store = self.store();
            store.modify(ns, name, change);
            store.rv()
        };
        self.changed.send_replace(rv);
    }

    fn pods_refused(&self) -> bool {
        self.pods_refused.load(Ordering::SeqCst)
    }

    fn images_missing(&self) -> bool {
        self.images_missing.load(Ordering::SeqCst)
    }

    fn pods_held(&self) -> Option<String> {
        self.pods_held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stores a pod and wakes the watchers.
    fn put_pod(
        &self,
        kind: &'static str,
        pod: k8s_openapi::api::core::v1::Pod,
    ) -> k8s_openapi::api::core::v1::Pod {
        let (pod, rv) = {
            let mut store = self.store();
            let pod = store.put_pod(kind, pod);
            (pod, store.rv())
        };
        self.changed.send_replace(rv);
        pod
    }

    /// Deletes a Job as the API server would (an event; its pods are stopped and deleted, as
    /// the garbage collector does with propagation).
    fn delete_job(&self, ns: &str, name: &str) -> Option<k8s_openapi::api::batch::v1::Job> {
        let (removed, rv) = {
            let mut store = self.store();
            let removed = store.remove(ns, name);
            let pods: Vec<String> = store
                .pods
                .iter()
                .filter(|((n, _), p)| {
                    n == ns
                        && p.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(pod::JOB_NAME_LABEL))
                            .is_some_and(|job| job == name)
                })
                .map(|((_, pod), _)| pod.clone())
                .collect();
            for pod in pods {
                store.remove_pod(ns, &pod);
            }
            (removed, store.rv())
        };
        let job = removed?;
        self.changed.send_replace(rv);
        self.stats().deletes += 1;
        self.stop_controller(name);
        Some(job)
    }

    fn admits_suspended(&self) -> bool {
        self.admits_suspended.load(Ordering::SeqCst)
    }

    fn stuck_terminating(&self) -> bool {
        self.stuck_terminating.load(Ordering::SeqCst)
    }

    fn creates_refused(&self) -> Option<u16> {
        *self
            .creates_refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn stop_controller(&self, name: &str) {
        if let Some(token) = self
            .controllers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
        {
            token.cancel();
        }
    }

    fn watch_refused(&self) -> bool {
        let mut outage = self
            .watch_outage
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *outage {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *outage = None;
                false
            }
            None => false,
        }
    }

    fn pod_started(this: &Arc<Self>, name: &str) -> ActivePod {
        let now = this.active.fetch_add(1, Ordering::SeqCst) + 1;
        let mut stats = this.stats();
        *stats.pods.entry(name.to_owned()).or_default() += 1;
        stats.peak_active = stats.peak_active.max(now);
        ActivePod(Arc::clone(this))
    }

    fn injected_fault(&self) -> Option<u16> {
        let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        match *fault {
            Some((until, code)) if Instant::now() < until => Some(code),
            Some(_) => {
                *fault = None;
                None
            }
            None => None,
        }
    }
}

/// Counts a running pod until dropped.
struct ActivePod(Arc<Shared>);

impl Drop for ActivePod {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running fake API server.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeKube {
    /// Starts a server on `127.0.0.1:0` whose pods run `runner_bin`, resolving Secret
    /// references from `secrets` and adding `pass_through` to every pod's environment.
    pub async fn start(
        runner_bin: &Path,
        secrets: HashMap<(String, String), String>,
        pass_through: Vec<(String, String)>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            store: Mutex::default(),
            changed: watch::channel(0).0,
            runner_bin: runner_bin.to_path_buf(),
            secrets,
            pass_through,
            fault: Mutex::default(),
            stats: Mutex::default(),
            active: AtomicI64::new(0),
            controllers: Mutex::default(),
            watch_cuts: watch::channel(0).0,
            watch_outage: Mutex::default(),
            pods_refused: AtomicBool::new(false),
            images_missing: AtomicBool::new(false),
            pods_held: Mutex::default(),
            evictions: watch::channel(0).0,
            admits_suspended: AtomicBool::new(false),
            creates_refused: Mutex::default(),
            stuck_terminating: AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = api::router(Arc::clone(&shared));
        let stop = shared.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(Self { addr, shared })
    }

    /// A fake cluster for one test: pods run `runner` with the test kernels, the runners'
    /// Redis Secret resolves to `env`'s Redis; returns it with the dispatcher's variables for
    /// it (the kube launcher, a kubeconfig pointing at it, `namespace`).
    pub async fn for_test(
        env: &crate::TestEnv,
        runner: &Path,
        namespace: &str,
    ) -> std::io::Result<(Self, Vec<(String, String)>)> {
        let secrets = HashMap::from([(
            ("sluice-redis".to_owned(), "url".to_owned()),
            env.redis_url.clone(),
        )]);
        let pass_through = vec![("SLUICE_TEST_KERNELS".to_owned(), "1".to_owned())];
        let fake = Self::start(runner, secrets, pass_through).await?;
        let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", env.prefix));
        fake.write_kubeconfig(&kubeconfig, namespace)?;
        let vars = [
            ("LAUNCHER", "kube"),
            ("KUBECONFIG", &kubeconfig.display().to_string()),
            ("NAMESPACE", namespace),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        Ok((fake, vars.to_vec()))
    }

    /// The server's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at this server, with `namespace` as the default.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\ncurrent-context: fake\n",
            self.url()
        );
        std::fs::write(path, text)
    }

    /// Answers every request with `code` (500 or 429) for `duration`.
    pub fn fail_for(&self, code: u16, duration: Duration) {
        *self
            .shared
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((Instant::now() + duration, code));
    }

    /// Ends every open watch stream and refuses new watch requests (503) for `duration`, as
    /// an API server restart or a network cut does.
    pub fn cut_watches_for(&self, duration: Duration) {
        *self
            .shared
            .watch_outage
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + duration);
        self.shared.watch_cuts.send_modify(|n| *n += 1);
    }

    /// Ends a watch outage: watch requests are answered again.
    pub fn restore_watches(&self) {
        *self
            .shared
            .watch_outage
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// While `refused`, no pod can be created, as with a quota that is used up or an
    /// admission webhook that says no: Jobs stay active without pods.
    pub fn refuse_pods(&self, refused: bool) {
        self.shared.pods_refused.store(refused, Ordering::SeqCst);
    }

    /// While `missing`, images cannot be pulled: pods wait in `ErrImagePull`, then
    /// `ImagePullBackOff`, and start once the images are there.
    pub fn images_missing(&self, missing: bool) {
        self.shared.images_missing.store(missing, Ordering::SeqCst);
    }

    /// While `Some(reason)`, pods are held before their container starts: `Unschedulable`, or
    /// a container waiting reason such as `InvalidImageName` or `CreateContainerConfigError`.
    pub fn hold_pods(&self, reason: Option<&str>) {
        *self
            .shared
            .pods_held
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = reason.map(str::to_owned);
    }

    /// Evicts every running pod, as a node drain does: the container is killed and the pod
    /// fails with the condition `DisruptionTarget`, which the Job's policy may ignore.
    pub fn evict_running_pods(&self) {
        self.shared.evictions.send_modify(|n| *n += 1);
    }

    /// While `admit`, Jobs created suspended are admitted and run, as Kueue does; otherwise
    /// they stay suspended, as where no Kueue or `LocalQueue` exists.
    pub fn admit_suspended(&self, admit: bool) {
        self.shared.admits_suspended.store(admit, Ordering::SeqCst);
    }

    /// While `Some(code)`, Job creates are refused: 403 as a used-up quota or a terminating
    /// namespace says it, 422 as an invalid Job, 404 as a missing namespace.
    pub fn refuse_creates(&self, code: Option<u16>) {
        *self
            .shared
            .creates_refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = code;
    }

    /// While `stuck`, failed Jobs keep a pod that never confirms termination: they get
    /// `FailureTarget` and never `Failed` (nor their TTL).
    pub fn pods_stuck_terminating(&self, stuck: bool) {
        self.shared.stuck_terminating.store(stuck, Ordering::SeqCst);
    }

    /// Removes the Job `name` without any watch event, as a delete the watch missed; its pod
    /// is stopped. Only a direct read (GET) can tell it is gone.
    pub fn lose_job(&self, ns: &str, name: &str) -> bool {
        let removed = self
            .shared
            .store()
            .jobs
            .remove(&(ns.to_owned(), name.to_owned()))
            .is_some();
        self.shared.stop_controller(name);
        removed
    }

    /// Whether the stored Job `name` in `ns` has the condition `kind` true.
    pub fn has_condition(&self, ns: &str, name: &str, kind: &str) -> bool {
        self.shared
            .store()
            .jobs
            .get(&(ns.to_owned(), name.to_owned()))
            .and_then(|j| j.status.as_ref()?.conditions.clone())
            .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
    }

    /// Forgets the event history up to now: a watch resuming from an older version gets 410
    /// Gone and must re-list.
    pub fn compact(&self) {
        let mut store = self.shared.store();
        store.compacted = store.rv();
    }

    /// Deletes the Job `name` in `ns` directly (as `kubectl delete job` would).
    pub fn delete_job(&self, ns: &str, name: &str) -> bool {
        self.shared.delete_job(ns, name).is_some()
    }

    /// Names of the Jobs stored now.
    pub fn job_names(&self) -> Vec<String> {
        self.shared
            .store()
            .jobs
            .keys()
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// What the server has seen so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats().clone()
    }

    /// Jobs currently stored.
    pub fn job_count(&self) -> usize {
        self.shared.store().jobs.len()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        for token in self
            .shared
            .controllers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            token.cancel();
        }
    }
}
