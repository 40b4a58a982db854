//! # sluice dispatcher
//!
//! Drains a RabbitMQ queue in batches, stages each batch in Redis and launches one Job per
//! batch, never more than `MAX_JOBS_IN_FLIGHT` at once. A message goes, in file order:
//!
//! # Layout
//! - [`consumer`]: RabbitMQ connection, prefetch, manual acks; a delivery becomes a staged frame
//!   ([`amqp`]: connecting and declaring, shared with the `publish` and `status` commands).
//! - [`batcher`]: closes batches on count, bytes or linger; [`sizer`] picks the count from the
//!   [`backlog`] (queue depth plus deliveries already pushed to the consumer).
//! - [`stage`]: stores the batch in Redis atomically and records its state.
//! - [`job`]: the typed Kubernetes Job for the batch.
//! - [`launcher`]: starts the Job (`local`: a child process; `kube`: a Job in the cluster, its
//!   outcome from a supervised watch of the cluster's Jobs) and reports its outcome.
//! - [`flight`]: the in-flight cap; follows each Job to its outcome.
//! - [`settle`]: records the outcome; tells an outage (retried whole, later) from a crash
//!   while working (its suspects split to isolate the poison message, which is dead-lettered
//!   once it fails alone).
//! - [`breaker`]: backoff for outages; after several in a row, holds launches and consumption
//!   back and probes with one Job at a time until runners work again.
//! - [`serve`]: the loop tying these together, recovery of open batches, graceful shutdown.
//!
//! Around them: [`config`] (environment), [`error`], [`health`] (readiness with reasons),
//! [`retry`] (Redis and API calls through the
//! shared retry helper), [`failpoint`] (crash points for tests), [`metrics`] (Prometheus and
//! health endpoints), [`shutdown`] (signals), and the [`publish`], [`status`] and [`redrive`]
//! (dead letters back on the queue, each once) commands.

pub mod amqp;
pub mod backlog;
pub mod batcher;
pub mod breaker;
pub mod config;
pub mod consumer;
pub mod error;
pub mod failpoint;
pub mod flight;
pub mod health;
pub mod job;
pub mod launcher;
pub mod metrics;
pub mod publish;
pub mod redrive;
pub mod retry;
pub mod serve;
pub mod settle;
pub mod shutdown;
pub mod sizer;
pub mod stage;
pub mod status;

pub use config::Config;
pub use error::{Error, Result};
