//! Service account tokens through the `TokenRequest` API, bound to the pod as the kubelet binds
//! them (the Node authorizer and `NodeRestriction` allow a node exactly that).

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

/// A token for the pod's service account, for `audience` (the API server's own when `None`),
/// valid `seconds`.
pub async fn request(
    client: &Client,
    pod: &Pod,
    audience: Option<&str>,
    seconds: i64,
) -> Result<String, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let request: TokenRequest = serde_json::from_value(json!({"spec": {
        "audiences": audience.into_iter().collect::<Vec<_>>(),
        "expirationSeconds": seconds,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid},
    }}))
    .map_err(|e| e.to_string())?;
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("requesting a token for service account {ns}/{sa}: {e}"))?;
    answer
        .status
        .map(|s| s.token)
        .ok_or_else(|| "the TokenRequest came back without a token".into())
}
