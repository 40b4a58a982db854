//! The pods bound to this node: one watch (`spec.nodeName=<node>`), and one task per pod
//! ([`super::pod`]), told of each change, of the pod's disappearance and of the agent's stop.

use super::Ctx;
use super::pod::PodRun;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Watches the node's pods and runs each until `stop`; then waits for every pod task to stop
/// its processes.
pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("spec.nodeName={}", ctx.config.node_name);
    let mut events = std::pin::pin!(
        watcher(api, watcher::Config::default().fields(&selector)).default_backoff()
    );
    let mut pods: HashMap<String, (watch::Sender<Pod>, CancellationToken)> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut listed = HashSet::new();
    let upsert = |pod: Pod,
                  tasks: &mut JoinSet<()>,
                  pods: &mut HashMap<_, (watch::Sender<Pod>, CancellationToken)>| {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some((tx, _)) = pods.get(&uid) {
            tx.send_replace(pod);
        } else {
            let (tx, rx) = watch::channel(pod);
            let gone = CancellationToken::new();
            tasks.spawn(PodRun::new(ctx.clone(), rx, gone.clone(), stop.clone()).run());
            pods.insert(uid, (tx, gone));
        }
    };
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            e = events.next() => e,
        };
        match event {
            None => break,
            Some(Err(e)) => warn!("watching pods: {e}"),
            Some(Ok(watcher::Event::Init)) => listed.clear(),
            Some(Ok(watcher::Event::InitApply(pod))) => {
                listed.insert(pod.metadata.uid.clone().unwrap_or_default());
                upsert(pod, &mut tasks, &mut pods);
            }
            Some(Ok(watcher::Event::Apply(pod))) => upsert(pod, &mut tasks, &mut pods),
            Some(Ok(watcher::Event::InitDone)) => pods.retain(|uid, (_, gone)| {
                let keep = listed.contains(uid);
                if !keep {
                    gone.cancel();
                }
                keep
            }),
            Some(Ok(watcher::Event::Delete(pod))) => {
                if let Some((_, gone)) =
                    pods.remove(pod.metadata.uid.as_deref().unwrap_or_default())
                {
                    gone.cancel();
                }
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}
