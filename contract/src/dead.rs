//! Dead letters: a message given up on (its Job failed with it alone) is published to the
//! dead-letter queue in RabbitMQ with the headers below, and indexed in `{prefix}:dead`.
//!
//! The queue holds the message itself (its body byte for byte, its `message_id`); Redis holds
//! its `dead` result and an [`IndexEntry`] per dead letter, capped in length, without the
//! body. `dispatcher redrive` reads both.

use serde::{Deserialize, Serialize};

/// Header: the message id its result is keyed by.
pub const ID: &str = "x-sluice-id";
/// Header: the batch it died in (alone, after bisection); one dead letter per such batch.
pub const BATCH: &str = "x-sluice-batch";
/// Header: why it was given up on (the Job's failure).
pub const REASON: &str = "x-sluice-reason";
/// Header: runner runs that reached its last batch (that Job's pods which started work).
pub const ATTEMPTS: &str = "x-sluice-attempts";

/// One entry of `{prefix}:dead`, newest first, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The message id.
    pub id: String,
    /// The batch it died in.
    #[serde(default)]
    pub batch: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// Runner runs that reached its last batch.
    #[serde(default)]
    pub attempts: u64,
    /// The body, only in entries written before dead letters went to RabbitMQ (sluice 0.1):
    /// a redrive still publishes those from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl IndexEntry {
    /// The entry as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored entry; `None` if it is not one.
    pub fn parse(entry: &str) -> Option<Self> {
        serde_json::from_str(entry).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_without_a_body_and_old_ones_keep_theirs() {
        let entry = IndexEntry {
            id: "a".into(),
            batch: "b".into(),
            reason: "gave up".into(),
            attempts: 2,
            body: None,
        };
        let json = entry.to_json();
        assert!(!json.contains("body"), "{json}");
        assert_eq!(IndexEntry::parse(&json), Some(entry));
        let old = IndexEntry::parse(r#"{"id":"a","batch":"b","reason":"r","body":"{}"}"#);
        assert_eq!(old.and_then(|e| e.body).as_deref(), Some("{}"));
        assert_eq!(IndexEntry::parse(r#"{"batch":"b"}"#), None);
    }
}
