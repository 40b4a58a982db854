//! The dispatcher's errors, shaped around the caller's decision: retry (broker, Redis or API
//! server trouble) or give up (bad configuration, an object the cluster rejects).

/// What went wrong in the dispatcher.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The environment could not be read into a configuration.
    #[error("invalid configuration: {0}")]
    Config(#[source] envy::Error),
    /// The configuration was read but is not usable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// RabbitMQ failed (connection, channel or protocol).
    #[error("rabbitmq error while {context}: {source}")]
    Amqp {
        /// What the dispatcher was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: lapin::Error,
    },
    /// The work queue is a stream queue: its unacked deliveries are never returned, so a
    /// batch that failed would be skipped rather than redelivered. Not retried.
    #[error(
        "queue {queue} is a stream queue, which sluice cannot consume: a stream never returns unacked deliveries, so a failed batch would be skipped; use a quorum or classic queue"
    )]
    StreamQueue {
        /// The queue.
        queue: String,
    },
    /// The consumer's stream ended or failed: the broker cancelled it or the connection closed.
    #[error("the rabbitmq consumer stopped: {reason}")]
    ConsumerClosed {
        /// What the stream reported.
        reason: String,
    },
    /// The broker confirmed a publish negatively, or returned it as unroutable.
    #[error("rabbitmq did not take a message: {reason}")]
    BrokerRefused {
        /// What the broker answered.
        reason: String,
    },
    /// Redis failed.
    #[error("redis error while {context}: {source}")]
    Redis {
        /// What the dispatcher was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: redis::RedisError,
    },
    /// A TLS session to RabbitMQ or Redis could not be opened: one line naming the server and
    /// what failed. Retried, as a certificate can be fixed on either side while we wait.
    #[error("{line}")]
    Tls {
        /// Which server.
        service: sluice_contract::tls::Service,
        /// `TLS to redis at host:port failed: …`.
        line: String,
    },
    /// The Kubernetes API server failed or refused a request.
    #[error("kubernetes error while {context}: {source}")]
    Kube {
        /// What the dispatcher was doing.
        context: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A Job could not be launched and retrying will not help.
    #[error("cannot launch job {job}: {reason}")]
    Launch {
        /// The Job's name.
        job: String,
        /// Why.
        reason: String,
    },
    /// Another `dispatcher redrive` holds the key prefix's redrive lease, or this run lost it.
    #[error("redrive stopped: {reason}")]
    RedriveLease {
        /// Which, and what to do about it.
        reason: String,
    },
    /// Local I/O failed (spawning a runner, binding the metrics port, reading input).
    #[error("{context}: {source}")]
    Io {
        /// What the dispatcher was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The dispatcher's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            // A lease ends within seconds, whether its run finishes or died.
            Self::Amqp { .. }
            | Self::ConsumerClosed { .. }
            | Self::BrokerRefused { .. }
            | Self::Io { .. }
            | Self::Tls { .. }
            | Self::RedriveLease { .. } => true,
            // A full Redis frees memory as results expire or maxmemory is raised.
            Self::Redis { source, .. } => {
                !matches!(source.retry_method(), redis::RetryMethod::NoRetry)
                    || sluice_contract::memory::is_full(source)
            }
            Self::Kube { source, .. } => match source {
                kube::Error::Api(status) => status.code == 429 || status.code >= 500,
                kube::Error::HyperError(_)
                | kube::Error::Service(_)
                | kube::Error::ReadEvents(_) => true,
                _ => false,
            },
            Self::Config(_)
            | Self::InvalidConfig(_)
            | Self::Launch { .. }
            | Self::StreamQueue { .. } => false,
        }
    }

    /// Whether Redis refused a write because `maxmemory` is reached: an outage of Redis
    /// ([`crate::memory`]), not an answer about the batch.
    pub fn is_redis_full(&self) -> bool {
        matches!(self, Self::Redis { source, .. } if sluice_contract::memory::is_full(source))
    }

    /// A short label for the `sluice_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Config(_) | Self::InvalidConfig(_) => "config",
            Self::Amqp { .. }
            | Self::ConsumerClosed { .. }
            | Self::BrokerRefused { .. }
            | Self::StreamQueue { .. } => "amqp",
            Self::Redis { .. } => "redis",
            Self::Tls { service, .. } => service.name(),
            Self::Kube { .. } => "kube",
            Self::Launch { .. } => "launch",
            Self::Io { .. } => "io",
            Self::RedriveLease { .. } => "redrive",
        }
    }

    /// Wraps a lapin error with what was being done.
    pub fn amqp(context: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Amqp { context, source }
    }

    /// Wraps a Redis error with what was being done.
    pub fn redis(context: &'static str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| Self::Redis { context, source }
    }

    /// Wraps a driver's error from connecting to `service` at `host`: the TLS line when TLS
    /// failed, else what `other` makes of it.
    pub fn or_tls<E: std::error::Error + 'static>(
        service: sluice_contract::tls::Service,
        host: String,
        other: impl FnOnce(E) -> Self,
    ) -> impl FnOnce(E) -> Self {
        move |source| match sluice_contract::tls::tls_failure(&source) {
            Some(failure) => Self::Tls {
                service,
                line: failure.line(service, &host),
            },
            None => other(source),
        }
    }

    /// Wraps an error from connecting `client` to Redis: the TLS line naming its server when
    /// TLS failed.
    pub fn redis_connect(client: &redis::Client) -> impl FnOnce(redis::RedisError) -> Self + use<> {
        Self::or_tls(
            sluice_contract::tls::Service::Redis,
            sluice_contract::tls::redis_host(client),
            Self::redis("connecting"),
        )
    }

    /// Wraps a Kubernetes client error with what was being done.
    pub fn kube(context: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Kube { context, source }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
