//! The Node: registered (or adopted) at start, kept alive by renewing its Lease every 10 s and
//! refreshing its conditions every 30 s (the node lifecycle controller's grace period is 40 s).
//! While `<state>/notready` exists the Lease goes stale and Ready turns False.

use super::Ctx;
use super::status::now;
use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Creates the Node, or adopts an existing one of that name, and reports it Ready. Returns its
/// uid (the Lease's owner). Retries for a minute while the API server is unreachable.
pub async fn register(ctx: &Ctx) -> Result<String> {
    let name = &ctx.config.node_name;
    let api: Api<Node> = Api::all(ctx.client.clone());
    let arch = arch();
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch, "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": arch}},
        "status": status(ctx, true, &ctx.started, &ctx.started),
    }))?;
    let mut attempt = 0;
    let uid = loop {
        match api.create(&PostParams::default(), &node).await {
            Ok(n) => {
                info!(node = %name, "registered the Node");
                break n.metadata.uid;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                info!(node = %name, "adopting the existing Node");
                break api
                    .get(name)
                    .await
                    .context("reading the existing Node")?
                    .metadata
                    .uid;
            }
            Err(e) if attempt < 30 => warn!(node = %name, "registering the Node: {e}"),
            Err(e) => return Err(e).context("registering the Node"),
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let patch = json!({"status": status(ctx, true, &ctx.started, &ctx.started)});
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .context("reporting the Node's status")?;
    Ok(uid.unwrap_or_default())
}

/// Renews the Lease and refreshes the conditions until `stop`, honouring the `notready` switch.
pub async fn heartbeat(ctx: Arc<Ctx>, node_uid: String, stop: CancellationToken) {
    let name = ctx.config.node_name.clone();
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
    let switch = ctx.config.state_dir.join("notready");
    let (mut ready, mut since, mut reported) = (true, ctx.started.clone(), Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let want = !switch.exists();
        if want && let Err(e) = renew(&leases, &name, &node_uid).await {
            warn!(node = %name, "renewing the Lease: {e:#}");
        }
        if want == ready && reported.elapsed() < Duration::from_secs(30) {
            continue;
        }
        let when = if want == ready { since.clone() } else { now() };
        let patch = Patch::Strategic(json!({"status": status(&ctx, want, &when, &ctx.started)}));
        match nodes
            .patch_status(&name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                if want != ready {
                    info!(node = %name, "node {}", if want { "Ready" } else { "NotReady (switch file present)" });
                }
                (ready, since, reported) = (want, when, Instant::now());
            }
            Err(e) => warn!(node = %name, "reporting the Node's status: {e}"),
        }
    }
}

async fn renew(leases: &Api<Lease>, name: &str, node_uid: &str) -> Result<()> {
    let spec = json!({"holderIdentity": name, "leaseDurationSeconds": 40,
        "renewTime": serde_json::to_value(MicroTime(Timestamp::now()))?});
    match leases
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": LEASE_NAMESPACE, "ownerReferences":
                    [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}]},
                "spec": spec,
            }))?;
            leases.create(&PostParams::default(), &lease).await?;
            Ok(())
        }
        other => other.map(drop).map_err(Into::into),
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The Node's status: capacity, addresses, node info, and conditions heartbeating now, Ready
/// having changed at `since`, the others at `started`.
fn status(ctx: &Ctx, ready: bool, since: &str, started: &str) -> Value {
    let c = &ctx.config;
    let resources = json!({"cpu": c.cpu.to_string(), "memory": format!("{}Ki", c.memory / 1024), "pods": c.pods.to_string()});
    let now = now();
    let cond = |kind: &str, status: &str, reason: &str, message: &str, at: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": at})
    };
    let ready = if ready {
        cond(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
            since,
        )
    } else {
        cond(
            "Ready",
            "False",
            "KubeletNotReady",
            "node agent: the notready switch file is present",
            since,
        )
    };
    json!({
        "capacity": resources, "allocatable": resources,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": c.node_name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "kubeProxyVersion": "",
            "osImage": "sluice node agent", "containerRuntimeVersion": "sluice-agent://0.1.0",
            "kubeletVersion": "v1.33.0-sluice-node-agent", "operatingSystem": "linux", "architecture": arch()},
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available", started),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", started),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available", started),
            ready,
        ],
    })
}
