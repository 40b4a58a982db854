//! Where messages come from: the RabbitMQ connection and its TLS files, the work queue (and
//! the arguments it is declared with when it does not exist) and the largest body staged.

use serde::Deserialize;
use sluice_contract::runner_env as defaults;
use sluice_contract::tls::TlsFiles;
use std::path::PathBuf;

/// RabbitMQ settings.
#[derive(Debug, Clone, Deserialize)]
pub struct Broker {
    /// RabbitMQ URL.
    #[serde(default = "d::amqp_url")]
    pub amqp_url: String,
    /// Queue to drain.
    #[serde(default = "d::queue")]
    pub queue: String,
    /// Bodies larger than this are not staged and get an error result.
    #[serde(default = "d::max_message_bytes")]
    pub max_message_bytes: usize,
    /// PEM CA trusted for `amqps://` besides the system's roots.
    #[serde(default)]
    pub amqp_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    #[serde(default)]
    pub amqp_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[serde(default)]
    pub amqp_key_file: Option<PathBuf>,
    /// JSON object of arguments for declaring the queue when it does not exist (an existing
    /// queue is used as it is), such as `{"x-queue-type":"quorum"}`.
    #[serde(default)]
    pub queue_arguments: Option<String>,
}

impl Broker {
    /// The TLS files for the broker.
    pub fn tls(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.amqp_ca_file.clone(),
            cert_file: self.amqp_cert_file.clone(),
            key_file: self.amqp_key_file.clone(),
        }
    }
}

/// Defaults, one function per variable (serde's `default = "…"` needs a path).
mod d {
    use super::defaults;
    pub fn amqp_url() -> String {
        "amqp://guest:guest@127.0.0.1:5672/%2f".into()
    }
    pub fn queue() -> String {
        "jobs".into()
    }
    pub fn max_message_bytes() -> usize {
        defaults::DEFAULT_MAX_MESSAGE_BYTES
    }
}
