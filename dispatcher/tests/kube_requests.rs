//! The exact requests the kube launcher and its Job watcher send, checked against a
//! `tower_test` mock of the API server.

// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::batch::v1::Job;
use kube::client::Body;
use serde_json::{Value, json};
use sluice_dispatcher::launcher::Launcher;
use sluice_dispatcher::launcher::kube::KubeLauncher;
use sluice_dispatcher::{Config, Error, job};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower_test::mock::{self, Handle, SendResponse};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn config() -> Config {
    Config::from_vars([
        ("NAMESPACE".to_owned(), "sluice".to_owned()),
        ("KUBE_API_QPS".to_owned(), "1000".to_owned()),
    ])
    .unwrap()
}

fn launcher() -> (KubeLauncher, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (
        KubeLauncher::with_client(
            client,
            &config(),
            CancellationToken::new(),
            std::sync::Arc::default(),
        ),
        handle,
    )
}

fn respond(send: SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
    let response = Response::builder()
        .status(code)
        .body(Body::from(body.to_string().into_bytes()))
        .unwrap();
    send.send_response(response);
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": reason, "code": code})
}

/// The next request that is not the Job or pod watchers' list or watch (answered here: an
/// empty list, and a watch left open); the watchers' selectors are checked on the way.
async fn next_call(
    handle: &mut ApiHandle,
    held: &mut Vec<SendResponse<Response<Body>>>,
) -> (Request<Body>, SendResponse<Response<Body>>) {
    loop {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .expect("a request within 5 s")
            .expect("the client is alive");
        let query = request.uri().query().unwrap_or_default().to_owned();
        let path = request.uri().path();
        let watched = match path {
            "/apis/batch/v1/namespaces/sluice/jobs" => Some(("batch/v1", "JobList")),
            "/api/v1/namespaces/sluice/pods" => Some(("v1", "PodList")),
            _ => None,
        };
        if let (&Method::GET, Some((api_version, kind))) = (request.method(), watched) {
            assert!(
                query.contains("labelSelector=app.kubernetes.io%2Fname%3Dsluice%2Capp.kubernetes.io%2Fmanaged-by%3Dsluice-dispatcher"),
                "the watchers select only the dispatcher's objects: {path}?{query}"
            );
            if query.contains("watch=true") {
                held.push(send);
            } else {
                let list = json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": []});
                respond(send, StatusCode::OK, &list);
            }
            continue;
        }
        return (request, send);
    }
}

async fn body_json(request: Request<Body>) -> Value {
    serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn launch_posts_the_job_to_its_namespace() {
    let (launcher, mut handle) = launcher();
    let job = job::build(&config(), "b-1");
    let mut held = Vec::new();
    let server = async {
        let (request, send) = next_call(&mut handle, &mut held).await;
        assert_eq!(request.method(), Method::POST);
        assert_eq!(
            request.uri().path(),
            "/apis/batch/v1/namespaces/sluice/jobs"
        );
        let body = body_json(request).await;
        assert_eq!(body["metadata"]["name"], "sluice-b-1");
        assert_eq!(body["metadata"]["labels"]["sluice.dev/batch"], "b-1");
        assert_eq!(body["spec"]["template"]["spec"]["restartPolicy"], "Never");
        respond(send, StatusCode::CREATED, &body);
    };
    let (outcome, ()) = tokio::join!(launcher.launch(&job), server);
    assert!(outcome.is_ok());
}

#[tokio::test]
async fn a_conflict_on_create_adopts_the_existing_job() {
    let (launcher, mut handle) = launcher();
    let job = job::build(&config(), "b-2");
    let mut held = Vec::new();
    let server = async {
        let (request, send) = next_call(&mut handle, &mut held).await;
        assert_eq!(request.method(), Method::POST);
        respond(send, StatusCode::CONFLICT, &status(409, "AlreadyExists"));
    };
    let (outcome, ()) = tokio::join!(launcher.launch(&job), server);
    assert!(outcome.is_ok(), "409 means the Job exists: adopt it");
}

#[tokio::test]
async fn an_invalid_job_is_a_permanent_launch_error_without_retries() {
    let (launcher, mut handle) = launcher();
    let job = job::build(&config(), "b-3");
    let mut held = Vec::new();
    let server = async {
        let (_, send) = next_call(&mut handle, &mut held).await;
        respond(
            send,
            StatusCode::UNPROCESSABLE_ENTITY,
            &status(422, "Invalid"),
        );
        // No retry follows a 422.
        let retry = tokio::time::timeout(
            Duration::from_millis(500),
            next_call(&mut handle, &mut held),
        )
        .await;
        assert!(retry.is_err(), "an invalid Job is not retried");
    };
    let (outcome, ()) = tokio::join!(launcher.launch(&job), server);
    assert!(matches!(outcome, Err(Error::Launch { .. })));
}

#[tokio::test]
async fn server_errors_on_create_are_retried() {
    let (launcher, mut handle) = launcher();
    let job = job::build(&config(), "b-4");
    let mut held = Vec::new();
    let server = async {
        for code in [500, 429] {
            let (_, send) = next_call(&mut handle, &mut held).await;
            let status_code = StatusCode::from_u16(code).unwrap();
            respond(send, status_code, &status(code, "InternalError"));
        }
        let (request, send) = next_call(&mut handle, &mut held).await;
        let body = body_json(request).await;
        respond(send, StatusCode::CREATED, &body);
    };
    let (outcome, ()) = tokio::join!(launcher.launch(&job), server);
    assert!(outcome.is_ok());
}

#[tokio::test]
async fn finished_jobs_are_deleted_with_background_propagation() {
    let (launcher, mut handle) = launcher();
    let mut held = Vec::new();
    let server = async {
        let (request, send) = next_call(&mut handle, &mut held).await;
        assert_eq!(request.method(), Method::DELETE);
        assert_eq!(
            request.uri().path(),
            "/apis/batch/v1/namespaces/sluice/jobs/sluice-b-5"
        );
        let body = body_json(request).await;
        assert_eq!(body["propagationPolicy"], "Background");
        let job = serde_json::to_value(Job::default()).unwrap();
        respond(send, StatusCode::OK, &job);
    };
    let (removed, ()) = tokio::join!(launcher.finished("sluice-b-5"), server);
    removed.unwrap();
}
