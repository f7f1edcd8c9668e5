//! The envelope: one message as it travels through HTTP, streams and the
//! outbox, with the validation rules of SPEC §3.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Longest topic, subtopic, id or header name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Header names the host manages.
pub const CORRELATION_ID: &str = "correlation-id";
pub const CAUSATION_ID: &str = "causation-id";
pub const TIMESTAMP: &str = "timestamp";
pub const PARTITION_KEY: &str = "partition-key";

/// A validated message. `body` is kept as JSON text: the host never needs to
/// look inside it, and the module parses it into its own type.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope {
    pub id: String,
    pub topic: String,
    pub subtopic: String,
    pub headers: BTreeMap<String, String>,
    pub body: Box<RawValue>,
}

/// Why a message is not a valid envelope; the text says what and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("not a JSON envelope: {0}")]
    Json(String),
    #[error("field `{field}` {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("header `{name}` {problem}")]
    Header { name: String, problem: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope {
    #[serde(default)]
    id: Option<String>,
    topic: String,
    subtopic: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Box<RawValue>,
}

impl Envelope {
    /// Parses the JSON form. A missing id becomes `default_id()`.
    pub fn from_json(
        bytes: &[u8],
        default_id: impl FnOnce() -> String,
    ) -> Result<Self, EnvelopeError> {
        let wire: WireEnvelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Json(e.to_string()))?;
        let id = match wire.id {
            Some(id) => id,
            None => default_id(),
        };
        let envelope = Envelope {
            id,
            topic: wire.topic,
            subtopic: wire.subtopic,
            headers: wire.headers,
            body: wire.body,
        };
        envelope.validate()?;
        Ok(envelope)
    }

    /// Builds an envelope from parts (the body must already be JSON text).
    pub fn new(
        id: String,
        topic: String,
        subtopic: String,
        headers: BTreeMap<String, String>,
        body_json: &str,
    ) -> Result<Self, EnvelopeError> {
        let body =
            RawValue::from_string(body_json.to_string()).map_err(|e| EnvelopeError::Field {
                field: "body",
                problem: format!("is not JSON: {e}"),
            })?;
        let envelope = Envelope {
            id,
            topic,
            subtopic,
            headers,
            body,
        };
        envelope.validate()?;
        Ok(envelope)
    }

    /// Decodes a stream entry's fields (SPEC §6): one field `envelope` (the
    /// JSON form, whose topic must be the stream's), or the flat form
    /// `subtopic`, `body` (JSON text), optional `id`, every other field a
    /// header. A missing id becomes `default_id()` (where the entry sits).
    pub fn from_stream_fields(
        topic: &str,
        fields: &[(String, String)],
        default_id: impl FnOnce() -> String,
    ) -> Result<Self, EnvelopeError> {
        if let Some((_, json)) = fields.iter().find(|(k, _)| k == "envelope") {
            let envelope = Envelope::from_json(json.as_bytes(), default_id)?;
            if envelope.topic != topic {
                return Err(EnvelopeError::Field {
                    field: "topic",
                    problem: format!("'{}' does not match stream topic '{topic}'", envelope.topic),
                });
            }
            return Ok(envelope);
        }
        let mut subtopic = None;
        let mut body = None;
        let mut id = None;
        let mut headers = BTreeMap::new();
        for (k, v) in fields {
            match k.as_str() {
                "subtopic" => subtopic = Some(v.clone()),
                "body" => body = Some(v.as_str()),
                "id" => id = Some(v.clone()),
                _ => {
                    headers.insert(k.clone(), v.clone());
                }
            }
        }
        let subtopic = subtopic.ok_or_else(|| EnvelopeError::Field {
            field: "subtopic",
            problem: "is missing: the entry has neither an `envelope` field nor a `subtopic` field"
                .into(),
        })?;
        let body = body.ok_or_else(|| EnvelopeError::Field {
            field: "body",
            problem: "is missing from the flat entry".into(),
        })?;
        let id = id.unwrap_or_else(default_id);
        Envelope::new(id, topic.to_string(), subtopic, headers, body)
    }

    /// Checks the rules of SPEC §3.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        check_name("topic", &self.topic)?;
        check_name("subtopic", &self.subtopic)?;
        if self.id.is_empty() || self.id.len() > MAX_NAME_LEN {
            return Err(EnvelopeError::Field {
                field: "id",
                problem: format!("must be 1 to {MAX_NAME_LEN} bytes"),
            });
        }
        if self.id.chars().any(char::is_control) {
            return Err(EnvelopeError::Field {
                field: "id",
                problem: "must not contain control characters".into(),
            });
        }
        for name in self.headers.keys() {
            if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(is_header_byte) {
                return Err(EnvelopeError::Header {
                    name: name.chars().take(64).collect(),
                    problem: format!("must be 1 to {MAX_NAME_LEN} bytes of [A-Za-z0-9._-]"),
                });
            }
        }
        Ok(())
    }

    /// The body as JSON text.
    pub fn body_text(&self) -> &str {
        self.body.get()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The correlation id: kept from the header, else the message's own id.
    pub fn correlation_id(&self) -> &str {
        self.header(CORRELATION_ID).unwrap_or(&self.id)
    }

    pub fn to_json(&self) -> String {
        // Serialising strings, a string map and raw JSON cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Topic and subtopic names: non-empty, at most 255 bytes, `[A-Za-z0-9._-]`.
pub fn check_name(field: &'static str, value: &str) -> Result<(), EnvelopeError> {
    if value.is_empty() {
        return Err(EnvelopeError::Field {
            field,
            problem: "must not be empty".into(),
        });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(EnvelopeError::Field {
            field,
            problem: format!("is {} bytes, more than {MAX_NAME_LEN}", value.len()),
        });
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii() && is_name_byte(*c as u8)))
    {
        return Err(EnvelopeError::Field {
            field,
            problem: format!("contains {bad:?}; allowed are A-Z a-z 0-9 . _ -"),
        });
    }
    Ok(())
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn is_header_byte(b: u8) -> bool {
    is_name_byte(b)
}

/// A new message id: UUIDv7, so ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Now as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Envelope, EnvelopeError> {
        Envelope::from_json(s.as_bytes(), || "generated".to_string())
    }

    #[test]
    fn parses_and_fills_missing_id() {
        let e = parse(r#"{"topic":"orders","subtopic":"place","body":{"qty":2}}"#).expect("valid");
        assert_eq!(e.id, "generated");
        assert_eq!(e.body_text(), r#"{"qty":2}"#);
        assert_eq!(e.correlation_id(), "generated");
    }

    #[test]
    fn names_the_bad_field() {
        let err = parse(r#"{"topic":"or ders","subtopic":"place","body":1}"#)
            .expect_err("must be refused");
        assert!(err.to_string().contains("`topic`"), "{err}");
        let err =
            parse(r#"{"topic":"orders","subtopic":"","body":1}"#).expect_err("must be refused");
        assert!(
            err.to_string().contains("`subtopic` must not be empty"),
            "{err}"
        );
        let err = parse(r#"{"topic":"orders","body":1}"#).expect_err("must be refused");
        assert!(
            err.to_string().contains("missing field `subtopic`"),
            "{err}"
        );
        let err = parse(r#"{"topic":"orders","subtopic":"x","body":1,"extra":2}"#)
            .expect_err("must be refused");
        assert!(err.to_string().contains("unknown field `extra`"), "{err}");
        let long = "a".repeat(256);
        let err = parse(&format!(r#"{{"topic":"{long}","subtopic":"x","body":1}}"#))
            .expect_err("must be refused");
        assert!(err.to_string().contains("more than 255"), "{err}");
        let err = parse(r#"{"topic":"t","subtopic":"x","headers":{"a b":"1"},"body":1}"#)
            .expect_err("must be refused");
        assert!(err.to_string().contains("header `a b`"), "{err}");
    }

    #[test]
    fn stream_fields_flat_and_envelope_forms() {
        let fields = |f: &[(&str, &str)]| -> Vec<(String, String)> {
            f.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let e = Envelope::from_stream_fields(
            "orders",
            &fields(&[
                ("subtopic", "place"),
                ("body", "{}"),
                ("partition-key", "o1"),
            ]),
            || "redis:orders:1-0".into(),
        )
        .expect("valid");
        assert_eq!(
            (e.id.as_str(), e.header(PARTITION_KEY)),
            ("redis:orders:1-0", Some("o1"))
        );
        let err = Envelope::from_stream_fields("orders", &fields(&[("body", "{}")]), String::new)
            .expect_err("must be refused");
        assert!(err.to_string().contains("subtopic"), "{err}");
        let err = Envelope::from_stream_fields(
            "orders",
            &fields(&[("envelope", r#"{"topic":"other","subtopic":"s","body":1}"#)]),
            || "redis:orders:1-0".into(),
        )
        .expect_err("must be refused");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn round_trips_through_json() {
        let e = parse(
            r#"{"id":"m1","topic":"t","subtopic":"s","headers":{"k":"v"},"body":[1,{"a":null}]}"#,
        )
        .expect("valid");
        let again = parse(&e.to_json()).expect("valid");
        assert_eq!(again.id, "m1");
        assert_eq!(again.headers, e.headers);
        assert_eq!(again.body_text(), e.body_text());
    }
}

/// Round trips of arbitrary valid envelopes through both wire forms.
#[cfg(test)]
mod round_trips {
    use super::*;
    use proptest::prelude::*;

    /// Field names the flat stream form reserves; headers named so only
    /// travel in the JSON form.
    const FLAT_RESERVED: [&str; 4] = ["id", "subtopic", "body", "envelope"];

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    prop_compose! {
        fn envelope()(
            id in "[^\\p{Cc}]{1,60}",
            topic in "[A-Za-z0-9._-]{1,255}",
            subtopic in "[A-Za-z0-9._-]{1,40}",
            headers in prop::collection::btree_map("[A-Za-z0-9._-]{1,40}", any::<String>(), 0..6),
            body in json_value(),
        ) -> Envelope {
            Envelope::new(id, topic, subtopic, headers, &body.to_string()).expect("valid by construction")
        }
    }

    fn same(a: &Envelope, b: &Envelope) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.topic, b.topic);
        assert_eq!(a.subtopic, b.subtopic);
        assert_eq!(a.headers, b.headers);
        assert_eq!(a.body_text(), b.body_text());
    }

    proptest! {
        #[test]
        fn json_form_round_trips(e in envelope()) {
            let again = Envelope::from_json(e.to_json().as_bytes(), || unreachable!("id is set"))
                .expect("what the host writes, it reads");
            same(&e, &again);
        }

        #[test]
        fn flat_form_round_trips(mut e in envelope()) {
            e.headers.retain(|k, _| !FLAT_RESERVED.contains(&k.as_str()));
            let mut fields = vec![
                ("id".to_string(), e.id.clone()),
                ("subtopic".to_string(), e.subtopic.clone()),
                ("body".to_string(), e.body_text().to_string()),
            ];
            fields.extend(e.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
            let again = Envelope::from_stream_fields(&e.topic, &fields, || unreachable!("id is set"))
                .expect("the flat form of a valid envelope decodes");
            same(&e, &again);
        }

        #[test]
        fn envelope_field_form_round_trips(e in envelope()) {
            let fields = vec![("envelope".to_string(), e.to_json())];
            let again = Envelope::from_stream_fields(&e.topic, &fields, || unreachable!("id is set"))
                .expect("the envelope field of a valid envelope decodes");
            same(&e, &again);
        }

        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = Envelope::from_json(text.as_bytes(), String::new);
        }
    }
}
