//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use crate::health::Health;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

type Labels = Vec<(&'static str, &'static str)>;

/// The dispatcher's metrics.
pub struct Metrics {
    registry: Registry,
    /// Messages staged.
    pub messages: Counter,
    /// Batches launched.
    pub launched: Counter,
    /// Batches ended, by outcome.
    pub batches: Family<Labels, Counter>,
    /// Jobs running now.
    pub in_flight: Gauge,
    /// Seconds from launch to outcome.
    pub job_duration: Histogram,
    /// Messages given up on.
    pub dead_letters: Counter,
    /// Errors, by kind.
    pub errors: Family<Labels, Counter>,
    /// Jobs that could not do their work (outages), their batches retried whole.
    pub outages: Counter,
    /// 1 while runners work, 0 while the circuit breaker holds launches back.
    pub runner_healthy: Gauge,
    /// Job creates the API server refused (403, 404, 422…) or did not take within the retry
    /// budget; their batches are retried whole.
    pub launch_refusals: Counter,
    /// 1 while Redis answers this dispatcher, 0 while it does not.
    pub redis_up: Gauge,
    /// Batches this dispatcher adopted from a dispatcher that was lost or stopped.
    pub adopted: Counter,
    /// Compare-and-set steps another dispatcher (or an earlier decision) had already taken.
    pub stale_steps: Counter,
    /// Batches parked in Redis with no owner instead of holding their deliveries unacked.
    pub parked: Counter,
    /// Redis's `used_memory`, bytes.
    pub redis_used_memory: Gauge,
    /// Redis's `maxmemory`, bytes (0: no limit).
    pub redis_max_memory: Gauge,
    /// 1 while Redis is full (consumption and launches paused), 0 while it has room.
    pub redis_full: Gauge,
    /// Bytes results need at the observed rate once the first expire (the largest value when
    /// they are kept for ever).
    pub redis_results_need: Gauge,
    /// Results published to their message's `reply_to`, by outcome (`sent`, `unroutable`:
    /// no such queue any more, `failed`: the broker did not take it, tried again).
    pub replies: Family<Labels, Counter>,
    health: Arc<Health>,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let m = Self {
            messages: Counter::default(),
            launched: Counter::default(),
            batches: Family::default(),
            in_flight: Gauge::default(),
            job_duration: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            dead_letters: Counter::default(),
            errors: Family::default(),
            outages: Counter::default(),
            runner_healthy: Gauge::default(),
            launch_refusals: Counter::default(),
            redis_up: Gauge::default(),
            adopted: Counter::default(),
            stale_steps: Counter::default(),
            parked: Counter::default(),
            redis_used_memory: Gauge::default(),
            redis_max_memory: Gauge::default(),
            redis_full: Gauge::default(),
            redis_results_need: Gauge::default(),
            replies: Family::default(),
            health: Arc::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_received",
            "Messages staged into batches",
            m.messages.clone(),
        );
        registry.register(
            "batches_launched",
            "Batches whose Job was launched",
            m.launched.clone(),
        );
        registry.register("batches", "Batches ended, by outcome", m.batches.clone());
        registry.register("jobs_in_flight", "Jobs running now", m.in_flight.clone());
        registry.register(
            "job_duration_seconds",
            "Time from launch to outcome",
            m.job_duration.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages given up on",
            m.dead_letters.clone(),
        );
        registry.register("errors", "Errors, by kind", m.errors.clone());
        registry.register(
            "outages",
            "Jobs that could not do their work (image, configuration, Redis, cluster), retried whole",
            m.outages.clone(),
        );
        registry.register(
            "runner_healthy",
            "1 while runners work, 0 while launches are held back after repeated outages",
            m.runner_healthy.clone(),
        );
        registry.register(
            "launch_refusals",
            "Job creates refused by the API server or not taken within the retry budget; their batches retried whole",
            m.launch_refusals.clone(),
        );
        registry.register(
            "redis_up",
            "1 while Redis answers this dispatcher, 0 while it does not",
            m.redis_up.clone(),
        );
        registry.register(
            "batches_adopted",
            "Batches adopted from a dispatcher whose lease expired or that stopped",
            m.adopted.clone(),
        );
        registry.register(
            "stale_steps",
            "Batch steps not applied because the batch had changed since the decision (another dispatcher took it)",
            m.stale_steps.clone(),
        );
        registry.register(
            "batches_parked",
            "Batches staged with no owner and acked instead of waiting unacked (every slot busy past UNACKED_MAX_SECONDS, a pause, a shutdown)",
            m.parked.clone(),
        );
        m.register_redis_memory(&mut registry);
        registry.register(
            "replies",
            "Results published to their message's reply_to, by outcome (sent, unroutable, failed)",
            m.replies.clone(),
        );
        m.runner_healthy.set(1);
        m.redis_up.set(1);
        Self { registry, ..m }
    }

    /// Registers the gauges of Redis's memory ([`crate::memory`]).
    fn register_redis_memory(&self, registry: &mut Registry) {
        registry.register(
            "redis_used_memory_bytes",
            "Redis's used_memory as INFO memory reports it",
            self.redis_used_memory.clone(),
        );
        registry.register(
            "redis_max_memory_bytes",
            "Redis's maxmemory (0: no limit)",
            self.redis_max_memory.clone(),
        );
        registry.register(
            "redis_full",
            "1 while Redis is full and consumption and launches are paused (REDIS_PAUSE_PERCENT of maxmemory reached, or a write refused for memory)",
            self.redis_full.clone(),
        );
        registry.register(
            "redis_results_need_bytes",
            "Redis memory results need at the rate observed now once the first expire (RESULT_TTL_SECONDS); more than maxmemory means Redis will be full",
            self.redis_results_need.clone(),
        );
    }

    /// Counts `n` replies that ended with `outcome`.
    pub fn replied(&self, outcome: &'static str, n: u64) {
        self.replies
            .get_or_create(&vec![("outcome", outcome)])
            .inc_by(n);
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&vec![("kind", kind)]).inc();
    }

    /// Counts a batch ending with `outcome`.
    pub fn batch_ended(&self, outcome: &'static str) {
        self.batches
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    /// What stops the dispatcher from being ready (served at `/readyz`).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Starts timing a Job; the time is recorded when the guard drops.
    pub fn time_job(self: &Arc<Self>) -> JobTimer {
        self.in_flight.inc();
        JobTimer {
            metrics: Arc::clone(self),
            started: Instant::now(),
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Records a Job's duration and in-flight count when dropped.
pub struct JobTimer {
    metrics: Arc<Metrics>,
    started: Instant,
}

impl Drop for JobTimer {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        self.metrics
            .job_duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Binds `METRICS_ADDR` (at start-up, so a taken port is a start-up error).
pub async fn bind(addr: &str) -> crate::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(crate::Error::io(format!("binding METRICS_ADDR {addr}")))?;
    let local = listener
        .local_addr()
        .map_or_else(|_| addr.to_owned(), |a| a.to_string());
    tracing::info!(addr = %local, "metrics listening");
    Ok(listener)
}

/// Serves the endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> crate::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(crate::Error::io("serving metrics"))
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

async fn live(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.health.live(std::time::Instant::now()) {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(overdue) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not making progress\n{overdue}\n"),
        ),
    }
}

async fn ready(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.health.ready() {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{reasons}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_conventional_names() {
        let m = Arc::new(Metrics::new());
        m.messages.inc_by(3);
        m.batch_ended("succeeded");
        drop(m.time_job());
        let text = m.render();
        assert!(text.contains("sluice_messages_received_total 3"), "{text}");
        assert!(
            text.contains("sluice_batches_total{outcome=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_job_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("sluice_jobs_in_flight 0"), "{text}");
    }
}
