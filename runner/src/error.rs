//! The runner's errors. Each maps to a process exit code the Job controller acts on.

use sluice_contract::exit;

/// Why the runner could not finish its batch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The environment could not be read into a configuration.
    #[error("invalid configuration: {0}")]
    Config(#[source] envy::Error),
    /// The configuration was read but is not usable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Redis failed before the batch started, and kept failing through the retry budget.
    #[error("redis error while {context}: {source}")]
    Redis {
        /// What the runner was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis was lost while working, through the retry budget. Results written so far stay;
    /// the batch is retried whole and the next run skips them.
    #[error("lost redis while working ({context}): {source}")]
    LostRedis {
        /// What the runner was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: redis::RedisError,
    },
    /// A TLS session to Redis could not be opened through the retry budget: one line naming
    /// the server and what failed.
    #[error("{0}")]
    Tls(String),
    /// A kernel cannot run at all: its command cannot be started, or its workers die before
    /// answering anything. No message is blamed; the batch is retried whole later.
    #[error("{0}")]
    KernelUnavailable(crate::registry::KernelError),
    /// The batch is not staged in Redis (never staged, or expired).
    #[error("batch {batch_id} is not staged in Redis")]
    BatchNotFound {
        /// The batch id from `BATCH_ID`.
        batch_id: String,
    },
}

/// The runner's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code ([`sluice_contract::exit`]): each of these errors means the runner
    /// could not do its work, which the dispatcher treats as an outage, never as poison.
    pub fn exit_code(&self) -> u8 {
        let code = match self {
            Self::Config(_) | Self::InvalidConfig(_) => exit::CONFIG,
            Self::BatchNotFound { .. } => exit::NO_BATCH,
            Self::Redis { .. } | Self::Tls(_) => exit::UNAVAILABLE,
            Self::LostRedis { .. } => exit::TEMPFAIL,
            Self::KernelUnavailable(crate::registry::KernelError::Unavailable {
                not_found: true,
                ..
            }) => exit::NOT_FOUND,
            Self::KernelUnavailable(_) => exit::CANNOT_EXECUTE,
        };
        u8::try_from(code).unwrap_or(1)
    }

    /// The same error, met after the batch started: Redis was lost while working.
    #[must_use]
    pub fn while_working(self) -> Self {
        match self {
            Self::Redis { context, source } => Self::LostRedis { context, source },
            other => other,
        }
    }

    /// Wraps a Redis error with what was being done.
    pub fn redis(context: &'static str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| Self::Redis { context, source }
    }
}

/// Whether a Redis error is worth retrying (connection trouble, server busy or loading, or
/// full: memory frees as results expire or `maxmemory` is raised).
pub fn is_transient(e: &redis::RedisError) -> bool {
    !matches!(e.retry_method(), redis::RetryMethod::NoRetry) || sluice_contract::memory::is_full(e)
}
