//! sluice on a real control plane (scripts/cluster.sh): upstream kube-apiserver,
//! kube-controller-manager and kube-scheduler over etcd, built from Kubernetes' own Go modules,
//! with the node agent running pods as local processes. The real manifests are applied
//! (tests/cluster drops only the RabbitMQ and Redis `StatefulSets`, for the machine's services),
//! so the dispatcher runs as a pod under its own `ServiceAccount` and RBAC in the `restricted`
//! namespace and each batch is a real Job whose pod the real Job controller creates.
//!
//! The tests share the one namespace and run one at a time ([`Cluster::get`]).

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sluice_tests::cases::mixed;
use sluice_tests::cluster::{Cluster, DISPATCHER_SA, NAMESPACE};
use sluice_tests::{Outgoing, TestEnv};
use std::time::Duration;

const RESULTS: Duration = Duration::from_secs(240);
const CLEAN: Duration = Duration::from_secs(120);
const POISON: Duration = Duration::from_secs(600);

/// `count` sleep messages of `ms` each, and their ids.
fn sleepers(tag: &str, count: usize, ms: u64) -> (Vec<String>, Vec<Outgoing>) {
    let ids: Vec<String> = (0..count).map(|i| format!("{tag}{i}")).collect();
    let messages = ids
        .iter()
        .map(|id| Outgoing::json(&json!({"id": id, "kernel": "sleep", "input": {"ms": ms}})))
        .collect();
    (ids, messages)
}

/// Every id has exactly one result, `ok`, and one stream entry.
async fn assert_each_ok_once(env: &TestEnv, ids: &[String]) {
    let results = env.wait_for_results(ids, RESULTS).await.unwrap();
    for (id, result) in &results {
        assert_eq!(result["status"], "ok", "{id}: {result:?}");
    }
    assert_eq!(env.stream_len().await.unwrap(), ids.len(), "one entry each");
}

/// Waits until at least `count` runner Jobs exist.
async fn wait_for_jobs(cluster: &Cluster, count: usize) {
    for _ in 0..600 {
        let jobs = cluster
            .names("jobs", "app.kubernetes.io/component=runner")
            .await
            .unwrap();
        if jobs.len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {count} runner Jobs after 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_messages_and_a_poison_message_run_as_real_jobs_and_are_cleaned_up() {
    let (cluster, _serial) = Cluster::get().await.unwrap();
    let env = TestEnv::new("real-mixed").await.unwrap();
    cluster.teardown().await.unwrap();
    cluster
        .deploy(
            &env,
            &[
                ("BATCH_MAX_MESSAGES", "40"),
                ("BATCH_MODE", "fixed"),
                // The mixed cases' oversize message is over this limit.
                ("MAX_MESSAGE_BYTES", "4096"),
            ],
        )
        .await
        .unwrap();
    let cases = mixed(200);
    let poison = Outgoing::json(&json!({"id": "poison", "kernel": "crash", "input": "x"}));
    env.publish(&[poison]).await.unwrap();
    // Isolating the poison message takes about 7 bisection levels of 40 messages, and on a real
    // cluster each failing level costs the Job controller's pod back-off (10 s, then 20 s, with
    // the manifests' JOB_BACKOFF_LIMIT of 2): about half a minute a level.
    env.run_cases(&cases, POISON).await.unwrap();
    let results = env
        .wait_for_results(&["poison".to_owned()], POISON)
        .await
        .unwrap();
    let dead = &results["poison"];
    assert_eq!(dead["status"], "dead", "{dead:?}");
    // The real Job controller's Failed condition says only that the back-off limit was hit; the
    // runner's exit code is on its pods, which the dispatcher does not read yet.
    assert!(
        dead["error"].contains("BackoffLimitExceeded"),
        "the reason is the Job's: {dead:?}"
    );
    assert_eq!(
        env.stream_len().await.unwrap(),
        201,
        "one entry per message"
    );
    cluster.wait_until_clean(CLEAN).await.unwrap();
    cluster.teardown().await.unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_pod_deleted_mid_run_is_replaced_and_nothing_is_lost() {
    let (cluster, _serial) = Cluster::get().await.unwrap();
    let env = TestEnv::new("real-podkill").await.unwrap();
    cluster.teardown().await.unwrap();
    cluster
        .deploy(
            &env,
            &[("BATCH_MAX_MESSAGES", "20"), ("BATCH_MODE", "fixed")],
        )
        .await
        .unwrap();
    let (ids, messages) = sleepers("d", 200, 100);
    env.publish(&messages).await.unwrap();
    wait_for_jobs(&cluster, 2).await;
    cluster.delete_dispatcher_pod().await.unwrap();
    assert_each_ok_once(&env, &ids).await;
    cluster.wait_until_clean(CLEAN).await.unwrap();
    cluster.teardown().await.unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restarted_mid_run_costs_time_and_nothing_else() {
    let (cluster, _serial) = Cluster::get().await.unwrap();
    let env = TestEnv::new("real-apiserver").await.unwrap();
    cluster.teardown().await.unwrap();
    cluster
        .deploy(
            &env,
            &[("BATCH_MAX_MESSAGES", "20"), ("BATCH_MODE", "fixed")],
        )
        .await
        .unwrap();
    let (ids, messages) = sleepers("a", 200, 100);
    env.publish(&messages).await.unwrap();
    wait_for_jobs(&cluster, 2).await;
    cluster.script("restart-apiserver").await.unwrap();
    assert_each_ok_once(&env, &ids).await;
    cluster.wait_until_clean(CLEAN).await.unwrap();
    cluster.teardown().await.unwrap();
    env.cleanup().await.unwrap();
}

/// While the API server is down, etcd is compacted past every revision the dispatcher has
/// seen: its watch cannot resume (410 Gone) and must re-list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_expires_during_an_outage_is_relisted_and_nothing_is_lost() {
    let (cluster, _serial) = Cluster::get().await.unwrap();
    let env = TestEnv::new("real-expiry").await.unwrap();
    cluster.teardown().await.unwrap();
    cluster
        .deploy(
            &env,
            &[("BATCH_MAX_MESSAGES", "20"), ("BATCH_MODE", "fixed")],
        )
        .await
        .unwrap();
    let (ids, messages) = sleepers("x", 200, 100);
    env.publish(&messages).await.unwrap();
    wait_for_jobs(&cluster, 2).await;
    cluster.script("expire-watches").await.unwrap();
    assert_each_ok_once(&env, &ids).await;
    let logs = cluster.dispatcher_logs();
    assert!(
        logs.contains("re-listing jobs"),
        "the dispatcher's watch re-listed after the outage; its log:\n{logs}"
    );
    cluster.wait_until_clean(CLEAN).await.unwrap();
    cluster.teardown().await.unwrap();
    env.cleanup().await.unwrap();
}

/// What the dispatcher's `ServiceAccount` may do: exactly the Job verbs the code calls, and
/// reading its runners' pods, in its own namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatchers_service_account_can_do_what_it_needs_and_nothing_more() {
    let (cluster, _serial) = Cluster::get().await.unwrap();
    let env = TestEnv::new("real-rbac").await.unwrap();
    cluster.teardown().await.unwrap();
    cluster.deploy(&env, &[]).await.unwrap();
    let can = |verb: &'static str, resource: &'static str, namespace: &'static str| {
        let cluster = &cluster;
        async move {
            let out = cluster
                .kubectl_output(&[
                    "auth",
                    "can-i",
                    verb,
                    resource,
                    "-n",
                    namespace,
                    &format!("--as={DISPATCHER_SA}"),
                ])
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim() == "yes"
        }
    };
    for verb in ["create", "get", "list", "watch", "delete"] {
        assert!(can(verb, "jobs.batch", NAMESPACE).await, "{verb} jobs");
    }
    for verb in ["get", "list", "watch"] {
        assert!(can(verb, "pods", NAMESPACE).await, "{verb} pods");
    }
    for (verb, resource) in [
        ("update", "jobs.batch"),
        ("patch", "jobs.batch"),
        ("create", "pods"),
        ("delete", "pods"),
        ("get", "secrets"),
        ("list", "configmaps"),
        ("create", "deployments.apps"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
    ] {
        assert!(!can(verb, resource, NAMESPACE).await, "{verb} {resource}");
    }
    for verb in ["create", "list"] {
        assert!(
            !can(verb, "jobs.batch", "default").await,
            "{verb} jobs elsewhere"
        );
    }
    assert!(!can("list", "nodes", "default").await, "list nodes");
    cluster.teardown().await.unwrap();
    env.cleanup().await.unwrap();
}

/// The namespace enforces Pod Security `restricted`: a pod that asks to run as root is refused
/// by the API server's admission itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_is_not_restricted_is_refused_in_the_namespace() {
    let (cluster, _serial) = Cluster::get().await.unwrap();
    let env = TestEnv::new("real-psa").await.unwrap();
    cluster.deploy(&env, &[]).await.unwrap();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "not-restricted", "namespace": NAMESPACE},
        "spec": {"containers": [{"name": "c", "image": "sluice:0.1.0",
            "securityContext": {"runAsUser": 0}}]}
    });
    let file = std::env::temp_dir().join(format!("{}.json", env.prefix));
    std::fs::write(&file, pod.to_string()).unwrap();
    let out = cluster
        .kubectl_output(&["create", "-f", &file.display().to_string()])
        .await
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the pod was admitted");
    assert!(
        stderr.contains("violates PodSecurity \"restricted:"),
        "refused by Pod Security: {stderr}"
    );
    cluster.teardown().await.unwrap();
    env.cleanup().await.unwrap();
}
