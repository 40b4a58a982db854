//! A test-only node agent: a kubelet stand-in for a real control plane (kube-apiserver,
//! controller manager, scheduler) that runs the pods bound to its Node as local processes.
//!
//! It registers a Node and keeps it Ready ([`node`]), watches the pods bound to it ([`pods`]) and
//! runs each one ([`pod`]): images come from a table of host binaries ([`images`]), environment
//! and volumes are resolved like the kubelet does ([`env`], [`resources`], [`volumes`],
//! [`token`]), containers run in their own mount namespace as their own user ([`containers`],
//! [`process`], [`probe`]), and status goes to the API server as the kubelet reports it
//! ([`status`], [`report`]). It authenticates as `system:node:<name>`, so the Node authorizer and the
//! `NodeRestriction` admission plugin hold it to a kubelet's rights.
//!
//! Configuration, from the environment:
//! - `KUBECONFIG`: the node's kubeconfig (client certificate CN=system:node:<name>,
//!   O=system:nodes).
//! - `NODE_NAME` (default `sluice-node`); `NODE_CPU` (cores, default this machine's);
//!   `NODE_MEMORY` (a quantity such as `8Gi`, default this machine's memory); `NODE_PODS`
//!   (default 110): the Node's capacity and allocatable.
//! - `NODE_STATE_DIR` (default `./node-agent`): per-pod directories
//!   `pods/<ns>_<pod>_<uid>/`, with each container's stdout and stderr in `<container>.log`
//!   and volumes under `volumes/` (removed when the pod ends; logs are kept). While the file
//!   `notready` exists there, the node stops renewing its Lease and reports Ready=False.
//! - `NODE_IMAGES`: the JSON image table, re-read on every pull (see [`images`]).
//! - `API_HOST`, `API_PORT` (default 127.0.0.1, 6443): how pods reach the API server, given to
//!   every container as `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT` and
//!   `KUBERNETES_SERVICE_PORT_HTTPS`.
//!
//! Not modelled: image contents (only argv\[0\] is mapped to a host file), cgroups and resource
//! limits, OOM kills, networking (every pod shares the host's network namespace, with its own
//! loopback address as its `podIP`: [`env::pod_ip`]), `NetworkPolicy`,
//! liveness and startup probes, exec/tcp readiness probes, ephemeral containers,
//! activeDeadlineSeconds, and volume types other than the ones listed in [`volumes`].

mod containers;
pub mod env;
pub mod images;
mod node;
mod pod;
mod pods;
mod probe;
pub mod process;
mod report;
pub mod resources;
mod signals;
pub mod status;
mod token;
mod volumes;

pub use process::exec_helper_if_requested;

use anyhow::{Context, Result};
use kube::Client;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// The agent's configuration (see the module doc).
#[derive(Debug, Clone)]
pub struct Config {
    /// Node name.
    pub node_name: String,
    /// Capacity: cores.
    pub cpu: u32,
    /// Capacity: memory in bytes.
    pub memory: u64,
    /// Capacity: pods.
    pub pods: u32,
    /// Per-pod files and the `notready` switch.
    pub state_dir: PathBuf,
    /// The image table.
    pub images: PathBuf,
    /// The API server's address as pods see it.
    pub api_host: String,
    /// The API server's port as pods see it.
    pub api_port: u16,
}

impl Config {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let memory = match var("NODE_MEMORY") {
            Some(v) => resources::parse_quantity(&v)
                .and_then(|n| u64::try_from(n / 1_000_000_000).ok())
                .with_context(|| format!("NODE_MEMORY={v}"))?,
            None => machine_memory().unwrap_or(8 << 30),
        };
        Ok(Self {
            node_name: var("NODE_NAME").unwrap_or_else(|| "sluice-node".into()),
            cpu: parse("NODE_CPU")?.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            }),
            memory,
            pods: parse("NODE_PODS")?.unwrap_or(110),
            state_dir: var("NODE_STATE_DIR")
                .unwrap_or_else(|| "node-agent".into())
                .into(),
            images: var("NODE_IMAGES")
                .context("NODE_IMAGES (the image table) is not set")?
                .into(),
            api_host: var("API_HOST").unwrap_or_else(|| "127.0.0.1".into()),
            api_port: parse("API_PORT")?.unwrap_or(6443),
        })
    }
}

fn parse<T: std::str::FromStr>(k: &str) -> Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let v = std::env::var(k).ok().filter(|v| !v.is_empty());
    v.map(|v| v.parse().with_context(|| format!("{k}={v}")))
        .transpose()
}

fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?;
    kib.trim().parse::<u64>().ok().map(|k| k * 1024)
}

/// What every task of the agent shares.
pub(crate) struct Ctx {
    client: Client,
    config: Config,
    /// When the agent started (the Node's conditions' first transition).
    started: String,
}

/// Registers the Node, then keeps it alive and runs its pods until `stop`; then stops every
/// pod's processes (TERM, KILL after 5 s) and returns, leaving the Node as it is.
pub async fn run(config: Config, stop: CancellationToken) -> Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the API server (KUBECONFIG)")?;
    std::fs::create_dir_all(config.state_dir.join("pods")).context("creating NODE_STATE_DIR")?;
    let config = Config {
        state_dir: std::fs::canonicalize(&config.state_dir)?,
        ..config
    };
    let ctx = std::sync::Arc::new(Ctx {
        client,
        config,
        started: status::now(),
    });
    let node_uid = node::register(&ctx).await?;
    let heartbeat = tokio::spawn(node::heartbeat(ctx.clone(), node_uid, stop.clone()));
    pods::run(ctx, stop).await;
    heartbeat.await.context("heartbeat task")
}
