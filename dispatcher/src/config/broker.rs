//! Where messages come from: the RabbitMQ connection and its TLS files, the work queue (and
//! the arguments it is declared with when it does not exist) and the largest body staged.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
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
    /// The queue dead letters are kept in and `dispatcher redrive` reads (default
    /// `<QUEUE>.dead`); declared durable when missing, unless an exchange is given.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
    /// The exchange dead letters are published to, when it is not the default one: by
    /// default the `x-dead-letter-exchange` of `QUEUE_ARGUMENTS`, with its
    /// `x-dead-letter-routing-key` (else the queue's name) as RabbitMQ routes its own.
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
}

/// Where dead letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRoute {
    /// Exchange ("" for the default one).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// The queue they are read back from.
    pub queue: String,
}

impl DeadLetterRoute {
    /// Whether sluice declares the queue when it is missing: only when it publishes straight
    /// to it (a user's exchange routes to queues the user binds).
    pub fn declares_queue(&self) -> bool {
        self.exchange.is_empty()
    }
}

impl Broker {
    /// Where dead letters are published and read back from.
    pub fn dead_letter_route(&self) -> Result<DeadLetterRoute, String> {
        let queue = self
            .dead_letter_queue
            .clone()
            .filter(|q| !q.is_empty())
            .unwrap_or_else(|| format!("{}.dead", self.queue));
        let arguments = queue_arguments(self.queue_arguments.as_deref())?;
        let argument = |name: &str| match arguments.inner().get(name) {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            _ => None,
        };
        let exchange = self
            .dead_letter_exchange
            .clone()
            .or_else(|| argument("x-dead-letter-exchange"))
            .unwrap_or_default();
        let routing_key = if exchange.is_empty() {
            queue.clone()
        } else {
            argument("x-dead-letter-routing-key").unwrap_or_else(|| self.queue.clone())
        };
        Ok(DeadLetterRoute {
            exchange,
            routing_key,
            queue,
        })
    }

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

/// `QUEUE_ARGUMENTS` as the field table RabbitMQ takes: a JSON object of strings, integers,
/// booleans and numbers. Stream queues are refused: their deliveries are never returned, so
/// an unacked batch would be skipped rather than redelivered.
pub fn queue_arguments(json: Option<&str>) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    let Some(json) = json.filter(|j| !j.trim().is_empty()) else {
        return Ok(table);
    };
    let refuse = |why: String| format!("QUEUE_ARGUMENTS {json}: {why}");
    let serde_json::Value::Object(fields) =
        serde_json::from_str(json).map_err(|e| refuse(format!("not JSON: {e}")))?
    else {
        return Err(refuse("must be a JSON object".into()));
    };
    for (name, value) in fields {
        let value = match value {
            serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s)),
            serde_json::Value::Bool(b) => AMQPValue::Boolean(b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => AMQPValue::LongLongInt(i),
                (None, Some(f)) => AMQPValue::Double(f),
                _ => return Err(refuse(format!("{name}: {n} is out of range"))),
            },
            other => {
                return Err(refuse(format!(
                    "{name}: {other} is not a string, number or boolean"
                )));
            }
        };
        if name == "x-queue-type"
            && matches!(&value, AMQPValue::LongString(t) if t.to_string() == "stream")
        {
            return Err(refuse(
                "stream queues cannot work: their unacked deliveries are never returned".into(),
            ));
        }
        table.insert(ShortString::from(name), value);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_arguments_are_typed_and_streams_refused() {
        let table = queue_arguments(Some(
            r#"{"x-queue-type":"quorum","x-delivery-limit":5,"x-single-active-consumer":false}"#,
        ))
        .unwrap();
        let inner = table.inner();
        assert_eq!(
            inner.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            inner.get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(5))
        );
        assert_eq!(
            inner.get("x-single-active-consumer"),
            Some(&AMQPValue::Boolean(false))
        );
        assert!(queue_arguments(None).unwrap().inner().is_empty());
        for bad in ["[1]", "{\"a\":[1]}", "nope", r#"{"x-queue-type":"stream"}"#] {
            assert!(queue_arguments(Some(bad)).is_err(), "{bad}");
        }
    }

    fn broker(queue_arguments: Option<&str>, exchange: Option<&str>) -> Broker {
        Broker {
            amqp_url: d::amqp_url(),
            queue: "jobs".into(),
            max_message_bytes: 1,
            amqp_ca_file: None,
            amqp_cert_file: None,
            amqp_key_file: None,
            queue_arguments: queue_arguments.map(str::to_owned),
            dead_letter_queue: None,
            dead_letter_exchange: exchange.map(str::to_owned),
        }
    }

    #[test]
    fn dead_letters_go_to_the_queue_s_own_exchange_else_straight_to_their_queue() {
        let own = broker(None, None).dead_letter_route().unwrap();
        assert_eq!(
            (
                own.exchange.as_str(),
                own.routing_key.as_str(),
                own.queue.as_str()
            ),
            ("", "jobs.dead", "jobs.dead")
        );
        assert!(own.declares_queue());
        let dlx = broker(Some(r#"{"x-dead-letter-exchange":"dlx"}"#), None)
            .dead_letter_route()
            .unwrap();
        assert_eq!(
            (dlx.exchange.as_str(), dlx.routing_key.as_str()),
            ("dlx", "jobs")
        );
        assert!(!dlx.declares_queue());
        let keyed = broker(
            Some(r#"{"x-dead-letter-exchange":"dlx","x-dead-letter-routing-key":"k"}"#),
            Some("theirs"),
        )
        .dead_letter_route()
        .unwrap();
        assert_eq!(
            (keyed.exchange.as_str(), keyed.routing_key.as_str()),
            ("theirs", "k")
        );
    }
}
