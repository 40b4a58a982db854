//! A container's environment, resolved the way the kubelet does: `envFrom`, then `env` in order
//! (`$(VAR)` expanded from earlier variables), then the `kubernetes` Service's variables.

use super::resources::resource;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashMap};

/// The kind of a referenced object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A `ConfigMap`.
    ConfigMap,
    /// A Secret.
    Secret,
}

/// The `ConfigMap`s and `Secret`s a pod refers to, fetched up front: `None` for one that is absent.
pub type Refs = HashMap<(Kind, String), Option<BTreeMap<String, Vec<u8>>>>;

/// Everything resolution needs besides the container.
pub struct PodCtx<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The node's address (status.hostIP).
    pub host_ip: &'a str,
    /// Node allocatable cpu (cores) and memory (bytes): the default limits.
    pub node: (u32, u64),
    /// Referenced objects.
    pub refs: &'a Refs,
    /// The `kubernetes` Service's variables.
    pub service: &'a [(String, String)],
}

/// Fetches every `ConfigMap` and `Secret` the pod's containers and volumes name.
pub async fn fetch(client: &Client, pod: &Pod) -> Result<Refs, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut names = Vec::new();
    let spec = pod.spec.as_ref();
    let containers = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers));
    for c in containers {
        for f in c.env_from.iter().flatten() {
            names.extend(
                f.config_map_ref
                    .as_ref()
                    .map(|r| (Kind::ConfigMap, r.name.clone())),
            );
            names.extend(
                f.secret_ref
                    .as_ref()
                    .map(|r| (Kind::Secret, r.name.clone())),
            );
        }
        for from in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            names.extend(
                from.config_map_key_ref
                    .as_ref()
                    .map(|r| (Kind::ConfigMap, r.name.clone())),
            );
            names.extend(
                from.secret_key_ref
                    .as_ref()
                    .map(|r| (Kind::Secret, r.name.clone())),
            );
        }
    }
    for v in spec.into_iter().flat_map(|s| s.volumes.iter().flatten()) {
        names.extend(
            v.config_map
                .as_ref()
                .map(|c| (Kind::ConfigMap, c.name.clone())),
        );
        names.extend(
            v.secret
                .as_ref()
                .and_then(|s| s.secret_name.clone())
                .map(|n| (Kind::Secret, n)),
        );
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            names.extend(
                p.config_map
                    .as_ref()
                    .map(|c| (Kind::ConfigMap, c.name.clone())),
            );
            names.extend(p.secret.as_ref().map(|s| (Kind::Secret, s.name.clone())));
        }
    }
    let mut refs = Refs::new();
    for key in names {
        if refs.contains_key(&key) {
            continue;
        }
        let data = match key.0 {
            Kind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(&key.1)
                .await
                .map_err(|e| e.to_string())?
                .map(|cm| {
                    let text = cm
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()));
                    text.chain(
                        cm.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    )
                    .collect()
                }),
            Kind::Secret => Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(&key.1)
                .await
                .map_err(|e| e.to_string())?
                .map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect()
                }),
        };
        refs.insert(key, data);
    }
    Ok(refs)
}

/// The kubelet's message for an absent object.
pub fn not_found(kind: Kind, name: &str) -> String {
    match kind {
        Kind::ConfigMap => format!("configmap \"{name}\" not found"),
        Kind::Secret => format!("secret \"{name}\" not found"),
    }
}

/// `$(VAR)` → its value when defined (else left as is), `$$` → `$`, as Kubernetes expands.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|s| s.split_once(')')) {
            out.push_str(&lookup(name).unwrap_or_else(|| format!("$({name})")));
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out + rest
}

/// The container's environment, or the message of a `CreateContainerConfigError`.
pub fn resolve(p: &PodCtx, c: &Container) -> Result<Vec<(String, String)>, String> {
    let ns = p.pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |out: &mut Vec<(String, String)>, k: String, v: String| match out
        .iter_mut()
        .find(|(n, _)| *n == k)
    {
        Some(slot) => slot.1 = v,
        None => out.push((k, v)),
    };
    for from in c.env_from.iter().flatten() {
        let (kind, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => (Kind::ConfigMap, &r.name, r.optional),
            (None, Some(r)) => (Kind::Secret, &r.name, r.optional),
            (None, None) => continue,
        };
        match p.refs.get(&(kind, name.clone())).cloned().flatten() {
            Some(data) => {
                let prefix = from.prefix.as_deref().unwrap_or("");
                for (k, v) in data {
                    set(
                        &mut out,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if optional == Some(true) => {}
            None => return Err(not_found(kind, name)),
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => {
                let lookup = |k: &str| {
                    let known = out.iter().chain(p.service).rev().find(|(n, _)| n == k);
                    known.map(|(_, v)| v.clone())
                };
                expand(e.value.as_deref().unwrap_or(""), &lookup)
            }
            Some(from) => {
                let key_ref = match (&from.config_map_key_ref, &from.secret_key_ref) {
                    (Some(r), _) => Some((Kind::ConfigMap, &r.name, &r.key, r.optional)),
                    (None, Some(r)) => Some((Kind::Secret, &r.name, &r.key, r.optional)),
                    (None, None) => None,
                };
                if let Some(f) = &from.field_ref {
                    field(p.pod, &f.field_path, p.host_ip)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource(p, c, r)?
                } else if let Some((kind, name, key, optional)) = key_ref {
                    let (label, object) = if kind == Kind::Secret {
                        ("Secret", "secret")
                    } else {
                        ("ConfigMap", "configmap")
                    };
                    match p.refs.get(&(kind, name.clone())).cloned().flatten() {
                        Some(data) => match data.get(key) {
                            Some(v) => String::from_utf8_lossy(v).into_owned(),
                            None if optional == Some(true) => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {key} in {label} {ns}/{name}"
                                ));
                            }
                        },
                        None if optional == Some(true) => continue,
                        None => return Err(format!("{object} \"{name}\" not found")),
                    }
                } else {
                    return Err(format!("env {}: unsupported valueFrom", e.name));
                }
            }
        };
        set(&mut out, e.name.clone(), value);
    }
    for (k, v) in p.service {
        if !out.iter().any(|(n, _)| n == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

/// The pod's own address: pods share the host's network namespace here, so each gets its own
/// loopback address (all of 127/8 reaches `lo`), derived from its uid, as its `podIP`. A
/// container that listens binds to it (`$(POD_IP)`) so that two replicas' ports do not
/// collide; probes connect to it, as the kubelet's do to the pod's IP.
pub fn pod_ip(uid: &str) -> String {
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    let h = uid.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!(
        "127.{}.{}.{}",
        1 + h % 254,
        (h >> 8) % 256,
        1 + (h >> 16) % 254
    )
}

/// A `fieldRef`'s value (the paths the kubelet supports for env and downward API volumes).
pub fn field(pod: &Pod, path: &str, host_ip: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map = |m: &Option<BTreeMap<String, String>>, key: Option<&str>| {
        if let Some(k) = key {
            return m
                .as_ref()
                .and_then(|m| m.get(k))
                .cloned()
                .unwrap_or_default();
        }
        let lines = m
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", serde_json::Value::from(v.as_str())));
        lines.collect::<Vec<_>>().join("\n")
    };
    let subscript = |prefix: &str| {
        let inner = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(inner.to_owned())
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map(&meta.labels, None),
        "metadata.annotations" => map(&meta.annotations, None),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_owned(),
        "status.podIP" | "status.podIPs" => pod_ip(meta.uid.as_deref().unwrap_or_default()),
        _ => match (
            subscript("metadata.labels"),
            subscript("metadata.annotations"),
        ) {
            (Some(k), _) => map(&meta.labels, Some(&k)),
            (None, Some(k)) => map(&meta.annotations, Some(&k)),
            _ => return Err(format!("unsupported fieldPath: {path}")),
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "x", "b": "q\""}},
            "spec": {"nodeName": "n", "serviceAccountName": "sa", "containers": [{"name": "c"}]}
        }))
        .unwrap()
    }

    pub(crate) fn container(mut v: serde_json::Value) -> Container {
        v["name"] = json!("c");
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn expansion_matches_kubernetes() {
        let lookup = |k: &str| (k == "A").then(|| "1".to_owned());
        assert_eq!(
            expand("$(A)-$(B)-$$(A)-$$-$-$(A", &lookup),
            "1-$(B)-$(A)-$-$-$(A"
        );
        assert_eq!(expand("x$", &lookup), "x$");
    }

    #[test]
    fn resolves_in_order_with_sources() {
        let pod = pod();
        let refs: Refs = [
            (
                (Kind::ConfigMap, "cm".to_owned()),
                Some(
                    [
                        ("K".to_owned(), b"v".to_vec()),
                        ("A".to_owned(), b"cm".to_vec()),
                    ]
                    .into(),
                ),
            ),
            (
                (Kind::Secret, "s".to_owned()),
                Some([("pw".to_owned(), b"hunter2".to_vec())].into()),
            ),
            ((Kind::Secret, "gone".to_owned()), None),
        ]
        .into();
        let service = [("KUBERNETES_SERVICE_HOST".to_owned(), "127.0.0.1".to_owned())];
        let p = PodCtx {
            pod: &pod,
            host_ip: "127.0.0.1",
            node: (2, 1 << 30),
            refs: &refs,
            service: &service,
        };
        let c = container(json!({
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "P_"}, {"secretRef": {"name": "gone", "optional": true}}],
            "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}},
            "env": [
                {"name": "A", "value": "a"},
                {"name": "B", "value": "$(A)/$(P_K)/$(KUBERNETES_SERVICE_HOST)/$(Z)"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope", "optional": true}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            ]
        }));
        let env: HashMap<_, _> = resolve(&p, &c).unwrap().into_iter().collect();
        assert_eq!(env["P_K"], "v");
        assert_eq!(env["B"], "a/v/127.0.0.1/$(Z)");
        // The pod's own loopback address, not the node's.
        let ip = pod_ip(pod.metadata.uid.as_deref().unwrap_or_default());
        assert_ne!(ip, "127.0.0.1");
        assert_eq!(
            (env["POD"].as_str(), env["APP"].as_str(), env["IP"].as_str()),
            ("p", "x", ip.as_str())
        );
        assert_eq!(env["PW"], "hunter2");
        assert!(!env.contains_key("OPT"));
        assert_eq!(
            (
                env["CPU"].as_str(),
                env["REQ"].as_str(),
                env["MEM"].as_str()
            ),
            ("2", "250", "64")
        );
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "127.0.0.1");

        let missing = |v| resolve(&p, &container(json!({"env": [v]}))).unwrap_err();
        assert_eq!(
            missing(json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})),
            "couldn't find key k in Secret ns/s"
        );
        assert_eq!(
            missing(
                json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "no", "key": "k"}}})
            ),
            "configmap \"no\" not found"
        );
        assert_eq!(
            field(&pod, "metadata.labels", "").unwrap(),
            "app=\"x\"\nb=\"q\\\"\""
        );
    }
}
