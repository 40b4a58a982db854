//! The public contract between sluice's producers, dispatcher, runner and users.
//!
//! Everything here is described in `CONTRACT.md`/`README.md` and shared by both binaries, so
//! the dispatcher and the runner can never disagree on a key name, a frame layout or an
//! environment variable.
//!
//! # Layout
//! - [`envelope`]: the message body producers send, and how a message id is chosen.
//! - [`staged`]: the frame a delivery is stored as while its batch waits in Redis.
//! - [`keys`]: every Redis key name.
//! - [`dead`]: dead letters: the headers they carry in RabbitMQ, their index in Redis.
//! - [`kernels_file`]: the exec kernel table (`KERNELS_FILE`): workers in any language.
//! - [`exit`]: the runner's exit codes, and which of them mean an outage.
//! - [`record`]: the result record users read back, and batch states.
//! - [`memory`]: Redis's memory: a write refused at `maxmemory`, what `INFO memory` says.
//! - [`retry`]: the one retry helper (exponential backoff with jitter, on backon) that every
//!   reconnect and retry goes through.
//! - [`tls`]: TLS to RabbitMQ and Redis (CA and client files, the Redis client, failures).
//! - [`runner_env`]: the runner's environment, produced by the dispatcher, read by the runner.

pub mod dead;
pub mod envelope;
pub mod exit;
pub mod kernels_file;
pub mod keys;
pub mod memory;
pub mod record;
pub mod retry;
pub mod runner_env;
pub mod staged;
pub mod tls;

pub use envelope::{Envelope, EnvelopeError};
pub use keys::Keys;
pub use record::{BatchState, ResultRecord, Status};
pub use runner_env::RunnerEnv;
pub use staged::StagedMessage;
