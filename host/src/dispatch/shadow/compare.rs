//! What one version did with one message, and how two of them differ:
//! the outcome kind, the answer (JSON, compared structurally), the writes
//! and the events, without the headers and ids the host sets.

use serde_json::{Value, json};

use switchyard_model::envelope::{CAUSATION_ID, CORRELATION_ID, Envelope, TIMESTAMP};
use switchyard_model::outcome::FailureKind;
use switchyard_model::trace::TRACEPARENT;
use switchyard_store::Write;

/// Longest side of a compact difference, in characters.
const MAX_DIFF_TEXT: usize = 240;

/// One version's handling of one message, normalised for comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// `ok`, or the failure kind.
    pub outcome: &'static str,
    /// The answer (`ok`) or `{"error": message}`.
    pub answer: Value,
    /// (collection, key, value; `null` = deleted), in key order.
    pub writes: Vec<(String, String, Value)>,
    /// (topic, subtopic, headers the module set, body), in emit order.
    pub events: Vec<(String, String, Value, Value)>,
}

impl Observed {
    pub fn ok(answer: &str, writes: &[Write], events: &[Envelope]) -> Self {
        Self {
            outcome: "ok",
            answer: parse(answer),
            writes: writes.iter().map(write).collect(),
            events: events.iter().map(event).collect(),
        }
    }

    pub fn failed(kind: FailureKind, message: &str) -> Self {
        Self {
            outcome: kind.as_str(),
            answer: json!({"error": message}),
            writes: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Trapped or ran past its time: the version itself broke.
    pub fn broke(&self) -> bool {
        self.outcome == FailureKind::Trap.as_str() || self.outcome == FailureKind::Timeout.as_str()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "outcome": self.outcome,
            "answer": self.answer,
            "writes": self.writes.iter().map(|(c, k, v)| json!({
                "collection": c, "key": k, "value": v, "delete": v.is_null(),
            })).collect::<Vec<_>>(),
            "events": self.events.iter().map(|(t, s, h, b)| json!({
                "topic": t, "subtopic": s, "headers": h, "body": b,
            })).collect::<Vec<_>>(),
        })
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn write(w: &Write) -> (String, String, Value) {
    match w {
        Write::Put {
            collection,
            key,
            value,
            ..
        } => (collection.clone(), key.clone(), parse(value)),
        Write::Delete {
            collection, key, ..
        } => (collection.clone(), key.clone(), Value::Null),
    }
}

/// The headers the host sets on every event (ids, time, trace) are left out.
fn event(e: &Envelope) -> (String, String, Value, Value) {
    let headers: serde_json::Map<String, Value> = e
        .headers
        .iter()
        .filter(|(k, _)| {
            ![CORRELATION_ID, CAUSATION_ID, TIMESTAMP, TRACEPARENT].contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    (
        e.topic.clone(),
        e.subtopic.clone(),
        Value::Object(headers),
        parse(e.body_text()),
    )
}

/// Which parts of a handling differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Outcome,
    Answer,
    Writes,
    Events,
}

impl Part {
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Outcome => "outcome",
            Part::Answer => "answer",
            Part::Writes => "writes",
            Part::Events => "events",
        }
    }
}

/// The parts in which `candidate` did otherwise than `live`.
pub fn differences(live: &Observed, candidate: &Observed) -> Vec<Part> {
    let mut parts = Vec::new();
    if live.outcome != candidate.outcome {
        parts.push(Part::Outcome);
    }
    if live.answer != candidate.answer {
        parts.push(Part::Answer);
    }
    if live.writes != candidate.writes {
        parts.push(Part::Writes);
    }
    if live.events != candidate.events {
        parts.push(Part::Events);
    }
    parts
}

/// One line per differing part: `answer: {...} -> {...}`.
pub fn compact(live: &Observed, candidate: &Observed, parts: &[Part]) -> String {
    let side = |v: Value| {
        let text = v.to_string();
        if text.chars().count() > MAX_DIFF_TEXT {
            let cut: String = text.chars().take(MAX_DIFF_TEXT).collect();
            format!("{cut}...")
        } else {
            text
        }
    };
    let sides = |o: &Observed, part: Part| match part {
        Part::Outcome => Value::String(o.outcome.to_string()),
        Part::Answer => o.answer.clone(),
        Part::Writes => o.to_json()["writes"].clone(),
        Part::Events => o.to_json()["events"].clone(),
    };
    parts
        .iter()
        .map(|p| {
            format!(
                "{}: {} -> {}",
                p.as_str(),
                side(sides(live, *p)),
                side(sides(candidate, *p))
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Write {
        Write::Put {
            collection: "stock".into(),
            key: key.into(),
            value: value.into(),
            base_version: 1,
        }
    }

    #[test]
    fn json_is_compared_structurally_and_host_headers_are_ignored() {
        let a = Observed::ok(r#"{"sku":"a","n":1}"#, &[put("a", r#"{"x":1,"y":2}"#)], &[]);
        let b = Observed::ok(
            r#"{ "n": 1, "sku": "a" }"#,
            &[put("a", r#"{"y":2,"x":1}"#)],
            &[],
        );
        assert!(differences(&a, &b).is_empty());

        let event = |correlation: &str, key: &str| {
            let headers = [
                (CORRELATION_ID.to_string(), correlation.to_string()),
                ("partition-key".to_string(), key.to_string()),
            ];
            Envelope::new(
                format!("id-{correlation}"),
                "inventory.events".into(),
                "restocked".into(),
                headers.into_iter().collect(),
                r#"{"sku":"a"}"#,
            )
            .expect("envelope")
        };
        let a = Observed::ok("1", &[], &[event("c1", "a")]);
        let b = Observed::ok("1", &[], &[event("c2", "a")]);
        assert!(differences(&a, &b).is_empty(), "host-set ids differ only");
        let c = Observed::ok("1", &[], &[event("c1", "b")]);
        assert_eq!(differences(&a, &c), [Part::Events]);
    }

    #[test]
    fn each_part_is_named_with_both_sides() {
        let live = Observed::ok(r#"{"available":5}"#, &[put("a", "5")], &[]);
        let candidate = Observed::failed(FailureKind::Rejected, "qty over 100");
        let parts = differences(&live, &candidate);
        assert_eq!(parts, [Part::Outcome, Part::Answer, Part::Writes]);
        let text = compact(&live, &candidate, &parts);
        assert!(text.contains(r#"outcome: "ok" -> "rejected""#), "{text}");
        assert!(
            text.contains(r#"answer: {"available":5} -> {"error":"qty over 100"}"#),
            "{text}"
        );
    }
}
