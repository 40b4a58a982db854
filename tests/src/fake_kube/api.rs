//! The HTTP side of the fake API server: the `batch/v1` Job endpoints, and list and watch of
//! the Jobs' pods.

use super::Shared;
use super::controller::run_job;
use super::store::{Resource, Selector, now, status};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

type Shared_ = State<Arc<Shared>>;
type Params = Query<HashMap<String, String>>;

/// The API routes, behind the fault-injection layer.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs",
            get(list_or_watch_jobs).post(create),
        )
        .route("/api/v1/namespaces/{ns}/pods", get(list_or_watch_pods))
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
            get(get_one).delete(delete),
        )
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), faults))
        .with_state(shared)
}

fn reply(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response {
    reply(code, &status(code.as_u16(), reason, message))
}

async fn faults(State(shared): Shared_, request: Request, next: Next) -> Response {
    let Some(code) = shared.injected_fault() else {
        return next.run(request).await;
    };
    shared.stats().faults += 1;
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = failure(code, "InternalError", "injected fault");
    if code == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

async fn create(State(shared): Shared_, Path(ns): Path<String>, body: Bytes) -> Response {
    let mut job: Job = match serde_json::from_slice(&body) {
        Ok(job) => job,
        Err(e) => return failure(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    if job.metadata.namespace.as_ref().is_some_and(|n| *n != ns) {
        let message =
            "the namespace of the provided object does not match the namespace sent on the request";
        return failure(StatusCode::BAD_REQUEST, "BadRequest", message);
    }
    if let Err(message) = validate(&job) {
        return failure(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &message);
    }
    let name = job.metadata.name.clone().unwrap_or_default();
    if let Some(code) = shared.creates_refused() {
        shared.stats().refused_creates += 1;
        return refused(code, &ns, &name);
    }
    job.metadata.namespace = Some(ns.clone());
    job.metadata.uid = Some(uuid::Uuid::now_v7().to_string());
    job.metadata.creation_timestamp = Some(now());
    job.metadata.generation = Some(1);
    job.status = Some(JobStatus::default());
    let (stored, rv) = {
        let mut store = shared.store();
        if store.jobs.contains_key(&(ns.clone(), name.clone())) {
            drop(store);
            shared.stats().conflicts += 1;
            let message = format!("jobs.batch \"{name}\" already exists");
            return failure(StatusCode::CONFLICT, "AlreadyExists", &message);
        }
        let stored = store.put("ADDED", job);
        (stored, store.rv())
    };
    shared.changed.send_replace(rv);
    *shared.stats().creates.entry(name.clone()).or_default() += 1;
    let cancel = shared.stop.child_token();
    shared
        .controllers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name.clone(), cancel.clone());
    tokio::spawn(run_job(
        Arc::clone(&shared),
        ns,
        name,
        stored.clone(),
        cancel,
    ));
    reply(StatusCode::CREATED, &json!(stored))
}

/// A refused create, worded as the real API server words each case.
fn refused(code: u16, ns: &str, name: &str) -> Response {
    let (status, reason, message) = match code {
        404 => (
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("namespaces \"{ns}\" not found"),
        ),
        422 => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "Job.batch \"{name}\" is invalid: spec.template.spec.containers[0].resources.limits: Invalid value: \"2\": must be less than or equal to cpu limit of 1"
            ),
        ),
        _ => (
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "jobs.batch \"{name}\" is forbidden: exceeded quota: sluice-jobs, requested: count/jobs.batch=1, used: count/jobs.batch=4, limited: count/jobs.batch=4"
            ),
        ),
    };
    failure(status, reason, &message)
}

/// The checks the real API server makes that sluice's Jobs could fail.
fn validate(job: &Job) -> Result<(), String> {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let label_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !label_ok {
        return Err(format!(
            "Job.batch \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must be no more than 63 characters"
        ));
    }
    let pod = job.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let containers = pod.map(|p| p.containers.as_slice()).unwrap_or_default();
    if containers.is_empty() {
        return Err(format!(
            "Job.batch \"{name}\" is invalid: spec.template.spec.containers: Required value"
        ));
    }
    if containers
        .iter()
        .any(|c| c.image.as_deref().unwrap_or_default().is_empty())
    {
        return Err(format!(
            "Job.batch \"{name}\" is invalid: spec.template.spec.containers[0].image: Required value"
        ));
    }
    match pod.and_then(|p| p.restart_policy.as_deref()) {
        Some("Never" | "OnFailure") => Ok(()),
        other => Err(format!(
            "Job.batch \"{name}\" is invalid: spec.template.spec.restartPolicy: Unsupported value: {other:?}: supported values: \"OnFailure\", \"Never\""
        )),
    }
}

async fn get_one(State(shared): Shared_, Path((ns, name)): Path<(String, String)>) -> Response {
    shared.stats().gets += 1;
    match shared.store().jobs.get(&(ns, name.clone())) {
        Some(job) => reply(StatusCode::OK, &json!(job)),
        None => failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("jobs.batch \"{name}\" not found"),
        ),
    }
}

async fn delete(State(shared): Shared_, Path((ns, name)): Path<(String, String)>) -> Response {
    match shared.delete_job(&ns, &name) {
        Some(job) => reply(StatusCode::OK, &json!(job)),
        None => failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("jobs.batch \"{name}\" not found"),
        ),
    }
}

async fn list_or_watch_jobs(state: Shared_, ns: Path<String>, params: Params) -> Response {
    list_or_watch(state, ns, params, Resource::Jobs)
}

async fn list_or_watch_pods(state: Shared_, ns: Path<String>, params: Params) -> Response {
    list_or_watch(state, ns, params, Resource::Pods)
}

fn list_or_watch(
    State(shared): Shared_,
    Path(ns): Path<String>,
    Query(params): Params,
    resource: Resource,
) -> Response {
    let selector = Selector::parse(params.get("labelSelector").map(String::as_str));
    if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) {
        let since = params
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&v| v > 0);
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1800);
        if shared.watch_refused() {
            shared.stats().watch_refusals += 1;
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "watch outage",
            );
        }
        if let Some(rv) = since
            && rv < shared.store().compacted
        {
            // The real server answers 200 with one ERROR event, then ends the stream.
            shared.stats().gone += 1;
            let gone = status(410, "Expired", &format!("too old resource version: {rv}"));
            return (
                [(header::CONTENT_TYPE, "application/json")],
                format!("{}\n", json!({"type": "ERROR", "object": gone})),
            )
                .into_response();
        }
        let target = Target {
            resource,
            ns,
            selector,
        };
        return watch(shared, target, since, Duration::from_secs(timeout));
    }
    let store = shared.store();
    let (api_version, kind) = match resource {
        Resource::Jobs => ("batch/v1", "JobList"),
        Resource::Pods => ("v1", "PodList"),
    };
    let list = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"resourceVersion": store.rv().to_string()},
        "items": store.list(resource, &ns, &selector),
    });
    reply(StatusCode::OK, &list)
}

/// What one watch follows.
struct Target {
    resource: Resource,
    ns: String,
    selector: Selector,
}

/// Streams watch events, one JSON object per line, from `since` (or from the current state,
/// as synthetic ADDED events, when no version is given) until `timeout`.
fn watch(shared: Arc<Shared>, target: Target, since: Option<u64>, timeout: Duration) -> Response {
    let changed = shared.changed.subscribe();
    let cuts = shared.watch_cuts.subscribe();
    let (cursor, pending) = {
        let store = shared.store();
        if let Some(rv) = since {
            (rv, Vec::new())
        } else {
            let current = store
                .list(target.resource, &target.ns, &target.selector)
                .iter()
                .map(|object| line("ADDED", object))
                .collect();
            (store.rv(), current)
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let state = Watch {
        shared,
        target,
        changed,
        cuts,
        cursor,
        pending,
        deadline,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), state))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| {
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "cannot stream",
            )
        })
}

/// One watch connection's position in the event log.
struct Watch {
    shared: Arc<Shared>,
    target: Target,
    changed: tokio::sync::watch::Receiver<u64>,
    cuts: tokio::sync::watch::Receiver<u64>,
    cursor: u64,
    pending: Vec<Bytes>,
    deadline: tokio::time::Instant,
}

impl Watch {
    /// The next batch of event lines; `None` ends the stream (timeout or server stop).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            // A cut stream delivers nothing more, not even events that raced with the cut.
            if self.cuts.has_changed().unwrap_or(true) {
                return None;
            }
            self.collect();
            if !self.pending.is_empty() {
                return Some(Bytes::from(std::mem::take(&mut self.pending).concat()));
            }
            tokio::select! {
                () = self.shared.stop.cancelled() => return None,
                () = tokio::time::sleep_until(self.deadline) => return None,
                _ = self.cuts.changed() => return None,
                result = self.changed.changed() => result.ok()?,
            }
        }
    }

    fn collect(&mut self) {
        let store = self.shared.store();
        let since = self.cursor;
        for event in store.events.iter().filter(|e| e.rv > since) {
            self.cursor = event.rv;
            let target = &self.target;
            let here = event.resource == target.resource
                && event.meta.namespace.as_deref() == Some(target.ns.as_str());
            if here && target.selector.matches(&event.meta) {
                self.pending.push(line(event.kind, &event.object));
            }
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}
