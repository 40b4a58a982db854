//! The fake API server's object store: Jobs and their pods by name, one resource version
//! counter, and the log of watch events every watcher replays from.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The kinds of object the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `batch/v1` Jobs.
    Jobs,
    /// `v1` Pods.
    Pods,
}

/// One entry of the watch log.
#[derive(Clone)]
pub struct Event {
    /// The resource version this event produced.
    pub rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// What kind of object changed.
    pub resource: Resource,
    /// Its namespace and labels, for watch filters.
    pub meta: ObjectMeta,
    /// The object after the change.
    pub object: Value,
}

/// Jobs, pods and their history.
#[derive(Default)]
pub struct Store {
    rv: u64,
    /// Jobs by namespace and name.
    pub jobs: BTreeMap<(String, String), Job>,
    /// Pods by namespace and name.
    pub pods: BTreeMap<(String, String), Pod>,
    /// Every change, in order.
    pub events: Vec<Event>,
    /// Watches from a version older than this get 410 Gone (etcd compacted the history).
    pub compacted: u64,
}

impl Store {
    /// The latest resource version.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    fn log(&mut self, kind: &'static str, resource: Resource, meta: &ObjectMeta, object: Value) {
        self.events.push(Event {
            rv: self.rv,
            kind,
            resource,
            meta: meta.clone(),
            object,
        });
    }

    /// Stores a new or changed Job, stamping its resource version and logging the event.
    pub fn put(&mut self, kind: &'static str, mut job: Job) -> Job {
        self.rv += 1;
        job.metadata.resource_version = Some(self.rv.to_string());
        self.jobs.insert(key_of(&job.metadata), job.clone());
        self.log(kind, Resource::Jobs, &job.metadata, json!(job));
        job
    }

    /// Removes a Job, logging its deletion.
    pub fn remove(&mut self, ns: &str, name: &str) -> Option<Job> {
        let mut job = self.jobs.remove(&(ns.to_owned(), name.to_owned()))?;
        self.rv += 1;
        job.metadata.resource_version = Some(self.rv.to_string());
        job.metadata.deletion_timestamp = Some(now());
        self.log("DELETED", Resource::Jobs, &job.metadata, json!(job));
        Some(job)
    }

    /// Stores a new or changed pod.
    pub fn put_pod(&mut self, kind: &'static str, mut pod: Pod) -> Pod {
        self.rv += 1;
        pod.metadata.resource_version = Some(self.rv.to_string());
        self.pods.insert(key_of(&pod.metadata), pod.clone());
        self.log(kind, Resource::Pods, &pod.metadata, json!(pod));
        pod
    }

    /// Removes a pod, logging its deletion.
    pub fn remove_pod(&mut self, ns: &str, name: &str) {
        if let Some(mut pod) = self.pods.remove(&(ns.to_owned(), name.to_owned())) {
            self.rv += 1;
            pod.metadata.resource_version = Some(self.rv.to_string());
            self.log("DELETED", Resource::Pods, &pod.metadata, json!(pod));
        }
    }

    /// The objects of `resource` in `ns` matching `selector`, as JSON.
    pub fn list(&self, resource: Resource, ns: &str, selector: &Selector) -> Vec<Value> {
        let here =
            |meta: &ObjectMeta| meta.namespace.as_deref() == Some(ns) && selector.matches(meta);
        match resource {
            Resource::Jobs => self
                .jobs
                .values()
                .filter(|j| here(&j.metadata))
                .map(|j| json!(j))
                .collect(),
            Resource::Pods => self
                .pods
                .values()
                .filter(|p| here(&p.metadata))
                .map(|p| json!(p))
                .collect(),
        }
    }

    /// Applies `change` to a stored Job, if it still exists, as a MODIFIED event.
    pub fn modify(&mut self, ns: &str, name: &str, change: impl FnOnce(&mut Job)) -> Option<Job> {
        let mut job = self.jobs.get(&(ns.to_owned(), name.to_owned()))?.clone();
        change(&mut job);
        Some(self.put("MODIFIED", job))
    }
}

fn key_of(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The current time, as the API server stamps it.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// A `labelSelector` of equality terms: `a=b`, `a==b`, `a!=b`, or a bare key.
pub struct Selector(Vec<(String, Option<(bool, String)>)>);

impl Selector {
    /// Parses a selector; an empty one matches everything.
    pub fn parse(text: Option<&str>) -> Self {
        let terms = text
            .unwrap_or_default()
            .split(',')
            .filter(|t| !t.is_empty())
            .map(|term| {
                if let Some((k, v)) = term.split_once("!=") {
                    (k.trim().to_owned(), Some((false, v.trim().to_owned())))
                } else if let Some((k, v)) = term.split_once('=') {
                    (
                        k.trim().to_owned(),
                        Some((true, v.trim_start_matches('=').trim().to_owned())),
                    )
                } else {
                    (term.trim().to_owned(), None)
                }
            })
            .collect();
        Self(terms)
    }

    /// Whether an object's labels match.
    pub fn matches(&self, meta: &ObjectMeta) -> bool {
        let labels = meta.labels.clone().unwrap_or_default();
        self.0.iter().all(|(key, want)| match want {
            None => labels.contains_key(key),
            Some((true, value)) => labels.get(key) == Some(value),
            Some((false, value)) => labels.get(key) != Some(value),
        })
    }
}

/// A `Status` body, as the API server answers errors.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"group": "batch", "kind": "jobs"},
        "code": code,
    })
}
