//! One pod's life on the node: image pull, volumes and environment, its containers
//! ([`super::containers`]), status reports, and deletion the way the kubelet confirms it.

use super::containers::Run;
use super::env::{self, PodCtx, Refs};
use super::images::{self, Image, PullError};
use super::process::Launch;
use super::signals::{Signals, Stop};
use super::status::{self, State};
use super::{Config, Ctx, volumes};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;
/// One pod's task.
pub struct PodRun {
    pub(super) ctx: Arc<Ctx>,
    pub(super) api: Api<Pod>,
    pub(super) signals: Signals,
    pub(super) key: String,
    pub(super) dir: PathBuf,
    /// The pod's address ([`super::env::pod_ip`]).
    pub(super) ip: String,
    pub(super) ctrs: Vec<Run>,
    pub(super) policy: String,
    pub(super) start_time: String,
    pub(super) sandbox: bool,
    pub(super) final_: bool,
    pub(super) published: Value,
    pub(super) logged: String,
    pub(super) ours: Vec<Value>,
    pub(super) dirty: bool,
    pub(super) refresh_at: Option<Instant>,
    pub(super) exit_tx: mpsc::UnboundedSender<(usize, ExitStatus)>,
    pub(super) exit_rx: mpsc::UnboundedReceiver<(usize, ExitStatus)>,
}

impl PodRun {
    pub(super) fn new(
        ctx: Arc<Ctx>,
        rx: watch::Receiver<Pod>,
        gone: CancellationToken,
        stop: CancellationToken,
    ) -> Self {
        let pod = rx.borrow().clone();
        let (ns, name) = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let dir = ctx
            .config
            .state_dir
            .join("pods")
            .join(format!("{ns}_{name}_{uid}"));
        let spec = pod.spec.clone().unwrap_or_default();
        let has_init = spec.init_containers.as_ref().is_some_and(|i| !i.is_empty());
        let init = spec.init_containers.iter().flatten().map(|c| (c, true));
        let ctrs = init.chain(spec.containers.iter().map(|c| (c, false)));
        let waiting = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        let ctrs = ctrs
            .map(|(c, init)| Run::new(c.clone(), init, State::waiting(waiting, None)))
            .collect();
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .and_then(|t| serde_json::to_value(t).ok());
        Self {
            api: Api::namespaced(ctx.client.clone(), &ns),
            ctx,
            signals: Signals { rx, gone, stop },
            key: format!("{ns}/{name}"),
            dir,
            ip: super::env::pod_ip(uid),
            ctrs,
            policy: spec.restart_policy.unwrap_or_else(|| "Always".into()),
            start_time: start_time
                .and_then(|t| t.as_str().map(str::to_owned))
                .unwrap_or_else(status::now),
            sandbox: false,
            final_: false,
            published: Value::Null,
            logged: String::new(),
            ours: Vec::new(),
            dirty: false,
            refresh_at: None,
            exit_tx,
            exit_rx,
        }
    }

    /// The latest pod object.
    pub fn pod(&self) -> Pod {
        self.signals.rx.borrow().clone()
    }

    pub(super) async fn run(mut self) {
        let phase = self.pod().status.and_then(|s| s.phase).unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return self.after_terminal().await;
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            warn!(pod = %self.key, "creating {}: {e}", self.dir.display());
        }
        self.adopt();
        // Pending with hostIP, startTime and ContainerCreating at once, as the kubelet reports.
        self.publish().await;
        let outcome = if self.finished() {
            None
        } else if let Some(grace) = self.signals.deleting() {
            Some(Stop::Deleted(grace))
        } else {
            match self.prepare().await {
                Ok(()) => self.supervise().await,
                Err(stop) => Some(stop),
            }
        };
        match outcome {
            None => {
                self.final_ = true;
                self.publish_surely().await;
                self.cleanup();
                self.after_terminal().await;
            }
            Some(Stop::Deleted(grace)) => {
                self.kill_all(Some(Duration::from_secs(grace.max(0).unsigned_abs())))
                    .await;
                self.final_ = true;
                self.publish_surely().await;
                self.cleanup();
                self.confirm_deletion().await;
            }
            Some(Stop::Gone) => {
                self.kill_all(None).await;
                self.cleanup();
            }
            Some(Stop::Shutdown) => self.kill_all(Some(Duration::from_secs(5))).await,
        }
    }

    /// A terminal pod: nothing runs; once it is deleted, confirm that.
    async fn after_terminal(mut self) {
        if let Stop::Deleted(_) = self.wait_reporting().await {
            self.confirm_deletion().await;
        }
    }

    /// Pulls every image, then materialises volumes and resolves each container's environment,
    /// retrying as the kubelet does; `Err` if the pod is interrupted meanwhile.
    async fn prepare(&mut self) -> Result<(), Stop> {
        let mut backoff = Duration::from_secs(5);
        loop {
            let (mut missing, mut invalid) = (false, false);
            for r in self.ctrs.iter_mut().filter(|r| r.image.is_none()) {
                match images::pull(&self.ctx.config.images, &r.s.image) {
                    Ok(image) => r.image = Some(image),
                    Err(PullError::Invalid(m)) => {
                        (invalid, r.s.state) = (true, State::waiting("InvalidImageName", Some(m)));
                    }
                    Err(PullError::NotFound(m)) => {
                        (missing, r.s.state) = (true, State::waiting("ErrImagePull", Some(m)));
                    }
                }
            }
            if invalid {
                self.publish().await;
                return Err(self.wait_reporting().await);
            }
            if !missing {
                break;
            }
            self.publish().await;
            if let Some(stop) = self.signals.pause(Duration::from_secs(2)).await {
                return Err(stop);
            }
            for r in self.ctrs.iter_mut().filter(|r| r.image.is_none()) {
                r.s.state = State::waiting(
                    "ImagePullBackOff",
                    Some(format!("Back-off pulling image \"{}\"", r.s.image)),
                );
            }
            self.publish().await;
            if let Some(stop) = self.signals.pause(backoff).await {
                return Err(stop);
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
        loop {
            let Err((which, reason, message)) = self.configure().await else {
                let reason = if self.ctrs.iter().any(|r| r.s.init) {
                    "PodInitializing"
                } else {
                    "ContainerCreating"
                };
                for r in self
                    .ctrs
                    .iter_mut()
                    .filter(|r| matches!(r.s.state, State::Waiting(..)))
                {
                    r.s.state = State::waiting(reason, None);
                }
                return Ok(());
            };
            warn!(pod = %self.key, "{reason}: {message}");
            for (i, r) in self.ctrs.iter_mut().enumerate() {
                if which.is_none_or(|w| w == i) {
                    r.s.state = State::waiting(reason, Some(message.clone()));
                }
            }
            self.publish().await;
            if let Some(stop) = self.signals.pause(Duration::from_secs(10)).await {
                return Err(stop);
            }
        }
    }

    /// Fetches what the pod refers to and materialises its volumes (the pod's "sandbox");
    /// returns the referenced objects for the containers' environment.
    async fn sandbox(&mut self, pod: &Pod) -> Result<Refs, String> {
        let refs = env::fetch(&self.ctx.client, pod).await?;
        let p = pod_ctx(&self.ctx.config, pod, &refs, &[]);
        let owner = self
            .ctrs
            .iter()
            .find(|r| !r.s.init)
            .and_then(|r| r.user(pod).0);
        let dir = self.dir.join("volumes");
        let refresh = volumes::materialise(&self.ctx.client, &p, &dir, owner).await?;
        self.refresh_at = refresh.map(|d| Instant::now() + d);
        self.sandbox = true;
        Ok(refs)
    }

    /// Re-materialises the volumes (fresh tokens, current `ConfigMap`s and `Secret`s).
    pub(super) async fn refresh_volumes(&mut self) {
        let pod = self.pod();
        if let Err(e) = self.sandbox(&pod).await {
            warn!(pod = %self.key, "refreshing volumes: {e}");
            self.refresh_at = Some(Instant::now() + Duration::from_secs(30));
        }
    }

    /// The sandbox, then each container's environment, argv, user and mounts.
    async fn configure(&mut self) -> Result<(), (Option<usize>, &'static str, String)> {
        let pod = self.pod();
        let refs = self
            .sandbox(&pod)
            .await
            .map_err(|e| (None, "ContainerCreating", e))?;
        let c = &self.ctx.config;
        let service: Vec<_> = [
            ("HOST", &c.api_host),
            ("PORT", &c.api_port.to_string()),
            ("PORT_HTTPS", &c.api_port.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("KUBERNETES_SERVICE_{k}"), v.clone()))
        .collect();
        let p = pod_ctx(c, &pod, &refs, &service);
        let dir = self.dir.join("volumes");
        let base = [
            ("PATH", PATH),
            ("HOSTNAME", pod.metadata.name.as_deref().unwrap_or_default()),
        ];
        for (i, r) in self.ctrs.iter_mut().enumerate() {
            let fail = |e| (Some(i), "CreateContainerConfigError", e);
            let resolved = env::resolve(&p, &r.spec).map_err(fail)?;
            // The image's ENV sits under the container's own variables, which override it.
            let image_env = r.image.iter().flat_map(|i| i.env.clone());
            let env: Vec<_> = base
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .chain(image_env)
                .chain(resolved)
                .collect();
            let argv = images::argv(r.image.as_ref().unwrap_or(&Image::default()), &r.spec, &env)
                .map_err(fail)?;
            let (user, groups) = r.user(&pod);
            let mounts = volumes::mounts(&p, &r.spec, &dir);
            r.launch = Some((
                Launch {
                    argv,
                    mounts,
                    user,
                    groups,
                },
                env,
            ));
        }
        Ok(())
    }

    /// Removes the pod's volumes; its logs stay.
    fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(self.dir.join("volumes"));
    }
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn pod_ctx<'a>(
    c: &Config,
    pod: &'a Pod,
    refs: &'a Refs,
    service: &'a [(String, String)],
) -> PodCtx<'a> {
    PodCtx {
        pod,
        host_ip: "127.0.0.1",
        node: (c.cpu, c.memory),
        refs,
        service,
    }
}
