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
//! - [`reconcile`]: owns every open batch, whoever launched it: on each event and every
//!   `RECONCILE_SECONDS` it decides one step per batch with a pure function and applies it as
//!   a compare-and-set ([`cas`], [`steps`]); follows Jobs to their outcome, adopts the batches
//!   of dispatchers whose lease expired, holds the in-flight cap across every dispatcher.
//! - [`settle`]: decides what an outcome means ([`reason`]: why a Job failed, typed); tells an
//!   outage (retried whole, later) from a crash while working (its suspects split to isolate
//!   the poison message, which is dead-lettered once it fails alone: [`dead_letters`]
//!   publishes it to the dead-letter queue in RabbitMQ before its result says `dead`).
//! - [`breaker`]: backoff for outages; after several in a row, holds launches and consumption
//!   back and probes with one Job at a time until runners work again.
//! - [`memory`]: Redis's memory watched: a full Redis holds launches and consumption back
//!   behind the breaker until it has room, and a rate that would outgrow it is warned of.
//! - [`reply`]: a result whose message had `reply_to` is published there (RabbitMQ's RPC
//!   pattern), read from the results stream by every dispatcher in one consumer group.
//! - [`release`]: pausing or stopping holds nothing: the deliveries held are parked in Redis
//!   and acked, never returned to the broker.
//! - [`serve`]: the consume loop tying these together, graceful shutdown.
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
pub mod cas;
pub mod config;
pub mod consumer;
pub mod dead_letters;
pub mod error;
pub mod failpoint;
pub mod health;
pub mod job;
pub mod launcher;
pub mod memory;
pub mod metrics;
pub mod publish;
pub mod reason;
pub mod reconcile;
pub mod redrive;
pub mod release;
pub mod reply;
pub mod retry;
pub mod serve;
pub mod settle;
pub mod shutdown;
pub mod sizer;
pub mod stage;
pub mod status;
pub mod steps;

pub use config::Config;
pub use error::{Error, Result};
