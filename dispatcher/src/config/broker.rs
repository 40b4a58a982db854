//! Where messages come from: the RabbitMQ connection, the work queue and the largest body
//! that is staged.

use serde::Deserialize;
use sluice_contract::runner_env as defaults;

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
