//! How one delivery is stored while its batch waits in Redis.
//!
//! A frame is a one-line JSON header, a newline, then the body's raw bytes. The body is kept
//! byte for byte (invalid UTF-8 included) so that the runner, not the dispatcher, judges it,
//! and no base64 inflates large bodies.

use serde::{Deserialize, Serialize};

/// One message of a staged batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedMessage {
    /// The AMQP `message_id` property, when the producer set one.
    #[serde(rename = "mid", default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The id the dispatcher assigned (UUID v7), used when no other id is given.
    #[serde(rename = "fid")]
    pub fallback_id: String,
    /// The AMQP `reply_to` property: where its result is published once written.
    #[serde(rename = "rt", default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The AMQP `correlation_id` property, handed back with the reply.
    #[serde(rename = "cid", default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Set when the body was over `MAX_MESSAGE_BYTES` and was not staged: its size in bytes.
    #[serde(rename = "dropped", default, skip_serializing_if = "Option::is_none")]
    pub dropped_size: Option<usize>,
    /// The body, unless dropped.
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// A staged frame that could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("staged message frame is corrupt: {0}")]
pub struct FrameError(String);

impl StagedMessage {
    /// Encodes the frame stored in Redis.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising a struct of strings and integers cannot fail.
        let header = serde_json::to_vec(self).unwrap_or_default();
        let mut frame = Vec::with_capacity(header.len() + 1 + self.body.len());
        frame.extend_from_slice(&header);
        frame.push(b'\n');
        frame.extend_from_slice(&self.body);
        frame
    }

    /// Decodes a frame read from Redis.
    pub fn decode(frame: &[u8]) -> Result<Self, FrameError> {
        let split = frame
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| FrameError("no header line".into()))?;
        let mut message: Self =
            serde_json::from_slice(&frame[..split]).map_err(|e| FrameError(e.to_string()))?;
        message.body = frame[split + 1..].to_vec();
        Ok(message)
    }

    /// Where its result is to be replied, if anywhere.
    pub fn reply(&self) -> Option<crate::record::Reply> {
        self.reply_to
            .as_ref()
            .filter(|to| !to.is_empty())
            .map(|to| crate::record::Reply {
                to: to.clone(),
                correlation_id: self.correlation_id.clone(),
            })
    }

    /// The id this message's result is keyed by.
    pub fn resolve_id<'a>(&'a self, envelope_id: Option<&'a str>) -> &'a str {
        crate::envelope::resolve_id(self.message_id.as_deref(), envelope_id, &self.fallback_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_any_bytes() {
        let m = StagedMessage {
            message_id: Some("m\n1".into()),
            fallback_id: "f".into(),
            reply_to: Some("amq.rabbitmq.reply-to.g1h2".into()),
            correlation_id: Some("c-1".into()),
            dropped_size: None,
            body: b"\xff\n{\"a\":1}\n".to_vec(),
        };
        assert_eq!(StagedMessage::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn frames_without_reply_fields_still_decode() {
        let m = StagedMessage::decode(b"{\"fid\":\"f\"}\nbody").unwrap();
        assert_eq!((m.reply(), m.body.as_slice()), (None, &b"body"[..]));
    }

    #[test]
    fn corrupt_frames_are_errors() {
        assert!(StagedMessage::decode(b"no newline").is_err());
        assert!(StagedMessage::decode(b"{bad}\nbody").is_err());
    }
}
