//! A loaded module's contract: what its `describe` declared (WIT 0.2.0),
//! with one compiled JSON Schema validator per declared body, built at load
//! so a message pays only for the check itself. Dispatch checks a command's
//! (or consumed event's) body before it creates an instance, and each
//! emitted event before its unit of work commits.

use std::collections::HashMap;

use crate::sandbox::bindings::{WorldVersion, v2};
use switchyard_model::contract::{Direction, MessageContract, ModuleContract};

/// Errors reported at most per refused body: the first few say enough.
const MAX_REPORTED: usize = 3;

/// The declared contract and its compiled validators.
pub struct Contract {
    pub declared: ModuleContract,
    /// By direction, topic and subtopic: looked up with the message's own
    /// strings, nothing allocated per message.
    validators: HashMap<Direction, HashMap<String, HashMap<String, jsonschema::Validator>>>,
}

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract")
            .field("declared", &self.declared)
            .finish_non_exhaustive()
    }
}

impl Contract {
    /// Reads what `describe` returned: every schema must be JSON and a
    /// valid JSON Schema, every (direction, topic, subtopic) declared once,
    /// commands only on declared topics, events only on declared
    /// subscriptions or emits.
    pub fn from_descriptor(
        descriptor: &v2::Descriptor,
        world: WorldVersion,
    ) -> Result<Self, String> {
        let mut messages = Vec::with_capacity(descriptor.messages.len());
        let mut validators = HashMap::new();
        for m in &descriptor.messages {
            let direction = match m.direction {
                v2::Direction::Command => Direction::Command,
                v2::Direction::Consumes => Direction::Consumes,
                v2::Direction::Emits => Direction::Emits,
            };
            let label = format!("{} {}/{}", direction.as_str(), m.topic, m.subtopic);
            let declared_topics = match direction {
                Direction::Command => &descriptor.topics,
                Direction::Consumes => &descriptor.subscribes,
                Direction::Emits => &descriptor.emits,
            };
            if !declared_topics.contains(&m.topic) {
                return Err(format!(
                    "describe declares {label}, but '{}' is not among its {}",
                    m.topic,
                    match direction {
                        Direction::Command => "topics",
                        Direction::Consumes => "subscribes",
                        Direction::Emits => "emits",
                    }
                ));
            }
            if m.subtopic.is_empty() {
                return Err(format!("describe declares {label} with an empty subtopic"));
            }
            let twice = messages.iter().any(|x: &MessageContract| {
                x.direction == direction && x.topic == m.topic && x.subtopic == m.subtopic
            });
            if twice {
                return Err(format!("describe declares {label} twice"));
            }
            let body = parse_schema(&label, "body", m.body_schema.as_deref())?;
            let answer = parse_schema(&label, "answer", m.answer_schema.as_deref())?;
            if let Some(schema) = &body {
                let validator = jsonschema::validator_for(schema).map_err(|e| {
                    format!("describe declares a body schema for {label} that is not a valid JSON Schema: {e}")
                })?;
                validators
                    .entry(direction)
                    .or_insert_with(HashMap::new)
                    .entry(m.topic.clone())
                    .or_insert_with(HashMap::new)
                    .insert(m.subtopic.clone(), validator);
            }
            if let Some(schema) = &answer {
                jsonschema::validator_for(schema).map_err(|e| {
                    format!("describe declares an answer schema for {label} that is not a valid JSON Schema: {e}")
                })?;
            }
            messages.push(MessageContract {
                direction,
                topic: m.topic.clone(),
                subtopic: m.subtopic.clone(),
                summary: first_line(&m.summary),
                body,
                answer,
            });
        }
        Ok(Self {
            declared: ModuleContract {
                module: descriptor.name.clone(),
                version: descriptor.version.clone(),
                typed: world == WorldVersion::V2,
                topics: descriptor.topics.clone(),
                subscribes: descriptor.subscribes.clone(),
                emits: descriptor.emits.clone(),
                messages,
            },
            validators,
        })
    }

    /// Whether any body is checked at all (an untyped module: never).
    pub fn validates(&self) -> bool {
        !self.validators.is_empty()
    }

    /// Checks `body` against the schema declared for it, if any: the
    /// refusal names each failing JSON path and rule, e.g.
    /// `/qty: -1 is less than the minimum of 0`.
    pub fn check(
        &self,
        direction: Direction,
        topic: &str,
        subtopic: &str,
        body: &str,
    ) -> Result<(), String> {
        if self.validators.is_empty() {
            return Ok(());
        }
        let validator = self
            .validators
            .get(&direction)
            .and_then(|by_topic| by_topic.get(topic))
            .and_then(|by_subtopic| by_subtopic.get(subtopic));
        let Some(validator) = validator else {
            return Ok(());
        };
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))?;
        let problems: Vec<String> = validator
            .iter_errors(&value)
            .take(MAX_REPORTED)
            .map(|e| {
                let path = e.instance_path().to_string();
                let path = if path.is_empty() {
                    "body".to_string()
                } else {
                    path
                };
                format!("{path}: {e}")
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

fn parse_schema(
    label: &str,
    what: &str,
    text: Option<&str>,
) -> Result<Option<serde_json::Value>, String> {
    text.map(|t| {
        serde_json::from_str(t).map_err(|e| {
            format!("describe declares a {what} schema for {label} that is not JSON: {e}")
        })
    })
    .transpose()
}

/// Summaries are one line; a longer text keeps its first.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}
