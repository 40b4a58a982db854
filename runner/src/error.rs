//! The runner's errors. Each maps to a process exit code the Job controller acts on.

/// Why the runner could not finish its batch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The environment could not be read into a configuration.
    #[error("invalid configuration: {0}")]
    Config(#[source] envy::Error),
    /// The configuration was read but is not usable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Redis failed, and kept failing through the retry budget.
    #[error("redis error while {context}: {source}")]
    Redis {
        /// What the runner was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: redis::RedisError,
    },
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
    /// The process exit code: 2 for configuration, 3 for a missing batch, 1 for Redis.
    /// Any non-zero code makes the Job retry (up to its backoff limit).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::InvalidConfig(_) => 2,
            Self::BatchNotFound { .. } => 3,
            Self::Redis { .. } => 1,
        }
    }

    /// Wraps a Redis error with what was being done.
    pub fn redis(context: &'static str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| Self::Redis { context, source }
    }
}

/// Whether a Redis error is worth retrying (connection trouble, server busy or loading).
pub fn is_transient(e: &redis::RedisError) -> bool {
    !matches!(e.retry_method(), redis::RetryMethod::NoRetry)
}
