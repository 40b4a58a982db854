//! The message envelope: `{"id": …, "kernel": …, "input": …}`, or plain text.
//!
//! Decoding never panics: every way a body can be wrong is an [`EnvelopeError`] whose text is
//! stored as the message's `error` result, so it must read well to a user.

use serde_json::Value;

/// Longest accepted message id, in bytes. Ids become part of Redis keys and stream entries.
pub const MAX_ID_BYTES: usize = 256;

/// A decoded message, ready for a kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The id the body names, if any (the AMQP `message_id` property still wins over it).
    pub id: Option<String>,
    /// The kernel to run; `None` means the default kernel.
    pub kernel: Option<String>,
    /// The kernel's input; `Value::Null` when the envelope had none.
    pub input: Value,
}

/// Why a body could not be decoded into an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The body has no bytes at all.
    #[error("empty message body")]
    Empty,
    /// The body is larger than `MAX_MESSAGE_BYTES`.
    #[error("message body of {size} bytes exceeds MAX_MESSAGE_BYTES ({limit})")]
    TooLarge {
        /// The body's size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The body is not UTF-8 text.
    #[error("message body is not valid UTF-8 (invalid byte at offset {offset})")]
    InvalidUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The body looks like JSON but does not parse.
    #[error("message body is not valid JSON: {reason}")]
    InvalidJson {
        /// The JSON parser's description, with line and column.
        reason: String,
    },
    /// The body is valid JSON but not an object.
    #[error("envelope must be a JSON object, got {found}")]
    NotAnObject {
        /// What was found instead: "an array", "a number", ….
        found: &'static str,
    },
    /// A field of the envelope has the wrong type.
    #[error("envelope field `{field}` must be {expected}, got {found}")]
    FieldType {
        /// The field name.
        field: &'static str,
        /// The expected type.
        expected: &'static str,
        /// The JSON type found.
        found: &'static str,
    },
    /// The id is empty, too long, or holds control characters.
    #[error("invalid message id {id:?}: {reason}")]
    InvalidId {
        /// The id as received (truncated for display).
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Envelope {
    /// Decodes a message body.
    ///
    /// A body that is not JSON at all (plain text, as a classic pika producer sends) becomes an
    /// envelope for the default kernel with the text as its input. A body that *is* JSON must be
    /// an object: a JSON array, number, string or literal is rejected rather than guessed at.
    pub fn decode(body: &[u8], max_bytes: usize) -> Result<Self, EnvelopeError> {
        if body.is_empty() {
            return Err(EnvelopeError::Empty);
        }
        if body.len() > max_bytes {
            return Err(EnvelopeError::TooLarge {
                size: body.len(),
                limit: max_bytes,
            });
        }
        let text = std::str::from_utf8(body).map_err(|e| EnvelopeError::InvalidUtf8 {
            offset: e.valid_up_to(),
        })?;
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            let value: Value =
                serde_json::from_str(text).map_err(|e| EnvelopeError::InvalidJson {
                    reason: e.to_string(),
                })?;
            return Self::from_object(value);
        }
        match serde_json::from_str::<Value>(text) {
            Ok(value) => Err(EnvelopeError::NotAnObject {
                found: json_type(&value),
            }),
            Err(e) if trimmed.starts_with('[') || trimmed.starts_with('"') => {
                Err(EnvelopeError::InvalidJson {
                    reason: e.to_string(),
                })
            }
            Err(_) => Ok(Self {
                id: None,
                kernel: None,
                input: Value::String(text.to_owned()),
            }),
        }
    }

    fn from_object(value: Value) -> Result<Self, EnvelopeError> {
        let Value::Object(mut map) = value else {
            return Err(EnvelopeError::NotAnObject {
                found: json_type(&value),
            });
        };
        let id = optional_string(map.remove("id"), "id")?;
        if let Some(id) = &id {
            validate_id(id)?;
        }
        let kernel = optional_string(map.remove("kernel"), "kernel")?;
        let input = map.remove("input").unwrap_or(Value::Null);
        Ok(Self { id, kernel, input })
    }

    /// Reads just the id a body names, for keying a result even when the rest is invalid.
    pub fn id_hint(body: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(body).ok()?;
        if !text.trim_start().starts_with('{') {
            return None;
        }
        let Value::Object(mut map) = serde_json::from_str(text).ok()? else {
            return None;
        };
        match map.remove("id") {
            Some(Value::String(id)) if validate_id(&id).is_ok() => Some(id),
            _ => None,
        }
    }
}

/// The id a message's result is keyed by: the AMQP `message_id` property, else the envelope's
/// `id`, else the id the dispatcher assigned when it staged the message.
pub fn resolve_id<'a>(
    message_id: Option<&'a str>,
    envelope_id: Option<&'a str>,
    fallback: &'a str,
) -> &'a str {
    message_id
        .filter(|id| validate_id(id).is_ok())
        .or(envelope_id)
        .unwrap_or(fallback)
}

/// Checks that an id is safe to embed in Redis keys and stream entries.
pub fn validate_id(id: &str) -> Result<(), EnvelopeError> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_ID_BYTES {
        "it is longer than 256 bytes"
    } else if id.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    let shown: String = id.chars().take(64).collect();
    Err(EnvelopeError::InvalidId { id: shown, reason })
}

fn optional_string(
    value: Option<Value>,
    field: &'static str,
) -> Result<Option<String>, EnvelopeError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(EnvelopeError::FieldType {
            field,
            expected: "a string",
            found: json_type(&other),
        }),
    }
}

/// A JSON value's type, as an error message names it.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = 1 << 20;

    #[test]
    fn full_envelope_decodes() {
        let env = Envelope::decode(br#"{"id":"a-1","kernel":"pow","input":{"x":1}}"#, MAX).unwrap();
        assert_eq!(env.id.as_deref(), Some("a-1"));
        assert_eq!(env.kernel.as_deref(), Some("pow"));
        assert_eq!(env.input, json!({"x": 1}));
    }

    #[test]
    fn plain_text_goes_to_the_default_kernel_as_a_string() {
        let env = Envelope::decode(b"Hello World!", MAX).unwrap();
        assert_eq!(
            env,
            Envelope {
                id: None,
                kernel: None,
                input: json!("Hello World!")
            }
        );
    }

    #[test]
    fn json_that_is_not_an_object_is_rejected() {
        for (body, found) in [
            ("[1,2]", "an array"),
            ("42", "a number"),
            ("\"s\"", "a string"),
            ("null", "null"),
        ] {
            let err = Envelope::decode(body.as_bytes(), MAX).unwrap_err();
            assert_eq!(err, EnvelopeError::NotAnObject { found }, "{body}");
        }
    }

    #[test]
    fn broken_json_is_an_error_not_plain_text() {
        for body in [r#"{"id": "#, "[1,", r#""open"#] {
            let err = Envelope::decode(body.as_bytes(), MAX).unwrap_err();
            assert!(
                matches!(err, EnvelopeError::InvalidJson { .. }),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn empty_oversized_and_non_utf8_bodies_are_errors() {
        assert_eq!(Envelope::decode(b"", MAX), Err(EnvelopeError::Empty));
        assert_eq!(
            Envelope::decode(b"abcdef", 4),
            Err(EnvelopeError::TooLarge { size: 6, limit: 4 })
        );
        assert_eq!(
            Envelope::decode(b"ab\xffcd", MAX),
            Err(EnvelopeError::InvalidUtf8 { offset: 2 })
        );
    }

    #[test]
    fn wrong_typed_fields_are_named() {
        let err = Envelope::decode(br#"{"kernel": 7}"#, MAX).unwrap_err();
        assert_eq!(
            err.to_string(),
            "envelope field `kernel` must be a string, got a number"
        );
    }

    #[test]
    fn deeply_nested_json_is_rejected_without_overflowing_the_stack() {
        let body = format!("{{\"input\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let err = Envelope::decode(body.as_bytes(), MAX).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }

    #[test]
    fn message_id_property_wins_over_the_envelope_id() {
        assert_eq!(resolve_id(Some("prop"), Some("body"), "fallback"), "prop");
        assert_eq!(resolve_id(None, Some("body"), "fallback"), "body");
        assert_eq!(resolve_id(None, None, "fallback"), "fallback");
        assert_eq!(resolve_id(Some(""), Some("body"), "fallback"), "body");
    }

    #[test]
    fn ids_with_spaces_colons_and_unicode_are_fine_but_control_characters_are_not() {
        assert!(validate_id("order 42:été✓").is_ok());
        assert!(validate_id("a\nb").is_err());
        assert!(validate_id(&"x".repeat(MAX_ID_BYTES + 1)).is_err());
    }

    #[test]
    fn id_hint_reads_the_id_of_an_otherwise_invalid_envelope() {
        assert_eq!(
            Envelope::id_hint(br#"{"id":"x","kernel":5}"#).as_deref(),
            Some("x")
        );
        assert_eq!(Envelope::id_hint(b"plain"), None);
    }
}
