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
use sluice_tests::cases::{mixed, sleepers};
use sluice_tests::cluster::{Cluster, DISPATCHER_SA, NAMESPACE};
use sluice_tests::outage::{SETTINGS, fix_and_check, publish_workload, wait_until_held_back};
use sluice_tests::{Outgoing, TestEnv};
use std::path::PathBuf;
use std::time::Duration;

const RESULTS: Duration = Duration::from_secs(240);
const CLEAN: Duration = Duration::from_secs(120);
const POISON: Duration = Duration::from_secs(600);
/// How long the outage cases may take to open the breaker on a real cluster.
const OUTAGE: Duration = Duration::from_secs(300);
/// The outage case's quota's name (teardown deletes it whatever happened).
const QUOTA: &str = "sluice-test-no-room";

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
    // Isolating the poison message takes a few levels among its runner's suspects, and on a
    // real cluster each failing level costs the Job controller's pod back-off (10 s, then 20 s,
    // with the manifests' JOB_BACKOFF_LIMIT of 2): about half a minute a level.
    env.run_cases(&cases, POISON).await.unwrap();
    let results = env
        .wait_for_results(&["poison".to_owned()], POISON)
        .await
        .unwrap();
    let dead = &results["poison"];
    assert_eq!(dead["status"], "dead", "{dead:?}");
    // The real Job controller's Failed condition says only that the back-off limit was hit; the
    // runner's exit code is on its pods, which the dispatcher's pod watch adds.
    assert!(
        dead["error"].contains("BackoffLimitExceeded")
            && dead["error"].contains("exit code 134 (signal 6)"),
        "the reason is the Job's and its last pod's: {dead:?}"
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

/// The manifests' two replicas: one pod deleted mid-run (a node drain) and not waited for; the
/// other replica goes on consuming and adopts what the deleted one leaves unsettled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatcher_replicas_one_deleted_mid_run_the_other_finishes_and_nothing_is_lost() {
    let (cluster, _serial) = Cluster::get().await.unwrap();
    let env = TestEnv::new("real-replicas").await.unwrap();
    cluster.teardown().await.unwrap();
    cluster
        .deploy(
            &env,
            &[("BATCH_MAX_MESSAGES", "20"), ("BATCH_MODE", "fixed")],
        )
        .await
        .unwrap();
    let pods = cluster.dispatcher_pods().await.unwrap();
    assert_eq!(pods.len(), 2, "the manifests run two replicas: {pods:?}");
    let (ids, messages) = sleepers("r", 300, 100);
    env.publish(&messages).await.unwrap();
    wait_for_jobs(&cluster, 3).await;
    cluster.delete_pod(&pods[0]).await.unwrap();
    assert_each_ok_once(&env, &ids).await;
    let logs = cluster.dispatcher_logs();
    assert!(
        !logs.contains("two dispatchers share an id"),
        "each replica has its own id"
    );
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

/// The outage settings, with short graces for stuck pods and pod-less Jobs.
fn outage_settings() -> Vec<(&'static str, &'static str)> {
    let mut settings = SETTINGS.to_vec();
    settings.extend([("POD_STUCK_SECONDS", "5"), ("POD_CREATE_SECONDS", "10")]);
    settings
}

/// Puts a file back as it was when dropped, whatever the test did.
struct Restore(PathBuf, Vec<u8>);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, &self.1);
    }
}

/// The runner image disappears from the node (a kind cluster it was never loaded into): its
/// pods wait in `ErrImagePull`; nothing is dead-lettered, and once the image is back every
/// message but the poison one ends `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_is_an_outage_that_ends_when_the_image_is_there() {
    let (cluster, _serial) = Cluster::get().await.unwrap();
    let env = TestEnv::new("real-image").await.unwrap();
    cluster.teardown().await.unwrap();
    cluster.deploy(&env, &outage_settings()).await.unwrap();
    // The dispatcher's pod runs already; only new containers pull.
    let table = cluster.kubeconfig().with_file_name("images.json");
    let original = std::fs::read(&table).unwrap();
    let restore = Restore(table.clone(), original.clone());
    let mut images: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&original).unwrap();
    images.remove("sluice:0.1.0").unwrap();
    std::fs::write(&table, serde_json::to_vec(&images).unwrap()).unwrap();

    let config = env.config(&[]).unwrap();
    let ids = publish_workload(&env).await;
    let name = "real cluster: runner image cannot be pulled";
    wait_until_held_back(name, &env, &config, "ImagePull", OUTAGE).await;
    fix_and_check(name, &env, &config, &ids, || drop(restore)).await;
    cluster.wait_until_clean(CLEAN).await.unwrap();
    cluster.teardown().await.unwrap();
    env.cleanup().await.unwrap();
}

/// A quota with no room for runner pods: the Job controller cannot create them
/// (`FailedCreate`); nothing is dead-lettered, and once the quota is gone every message but
/// the poison one ends `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_that_refuses_pods_is_an_outage_that_ends_when_it_has_room() {
    // The dispatcher's own pod uses the one pod the quota allows.
    let name = "real cluster: quota refuses runner pods";
    quota_then_fix("real-quota", name, "pods: \"1\"", "FailedCreate").await;
}

/// A quota with no room for Jobs: the API server refuses each create with 403 Forbidden. The
/// refusal settles its batch (retried whole behind the breaker), the dispatcher goes on, and
/// once the quota is gone every message but the poison one ends `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_that_refuses_jobs_is_an_outage_not_a_crash_loop() {
    let name = "real cluster: quota refuses Job creates (403)";
    quota_then_fix(
        "real-job-quota",
        name,
        "count/jobs.batch: \"0\"",
        "exceeded quota",
    )
    .await;
}

/// Runs the outage workload into a `ResourceQuota` with `hard`, expects `expected` in the
/// runners' health, then deletes the quota and checks every message.
async fn quota_then_fix(test: &str, name: &str, hard: &str, expected: &str) {
    let (cluster, _serial) = Cluster::get().await.unwrap();
    let env = TestEnv::new(test).await.unwrap();
    cluster.teardown().await.unwrap();
    cluster.deploy(&env, &outage_settings()).await.unwrap();
    let quota = std::env::temp_dir().join(format!("{}-quota.yaml", env.prefix));
    std::fs::write(
        &quota,
        format!("apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: {QUOTA}, namespace: {NAMESPACE}}}\nspec: {{hard: {{{hard}}}}}\n"),
    )
    .unwrap();
    cluster
        .kubectl(&["apply", "-f", &quota.display().to_string()])
        .await
        .unwrap();

    let config = env.config(&[]).unwrap();
    let ids = publish_workload(&env).await;
    wait_until_held_back(name, &env, &config, expected, OUTAGE).await;
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let remove_quota = || {
        let deleted = std::process::Command::new("kubectl")
            .args(["--kubeconfig", &kubeconfig, "-n", NAMESPACE])
            .args(["delete", "resourcequota", QUOTA])
            .status()
            .unwrap();
        assert!(deleted.success());
    };
    fix_and_check(name, &env, &config, &ids, remove_quota).await;
    cluster.wait_until_clean(CLEAN).await.unwrap();
    cluster.teardown().await.unwrap();
    let _ = std::fs::remove_file(quota);
    env.cleanup().await.unwrap();
}
