//! How handling one message ended: the answer of a processed message, or a
//! typed failure. Every ingress, the metrics and the span export read these.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// How handling ended, as seen by an ingress.
#[derive(Debug)]
pub enum Outcome {
    Processed(Answer),
    /// The id was processed before; this is the first answer.
    Duplicate(Answer),
    Failed(Failure),
}

impl Outcome {
    /// The failure, if handling failed.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Outcome::Failed(f) => Some(f),
            Outcome::Processed(_) | Outcome::Duplicate(_) => None,
        }
    }
}

/// What a processed message answers (and what its duplicates answer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub output: Box<RawValue>,
    pub events: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The module said the message cannot be processed as it is.
    Invalid,
    /// A business rule refused it.
    Rejected,
    /// The module asked for a retry and the attempts ran out.
    Transient,
    /// The module trapped (panic, memory, bad output).
    Trap,
    /// The module ran past its time.
    Timeout,
    /// The store was unreachable; nothing was recorded, try again later.
    Unavailable,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Invalid => "invalid",
            FailureKind::Rejected => "rejected",
            FailureKind::Transient => "transient",
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::Unavailable => "unavailable",
        }
    }

    /// Whether the failure policy tries the message again (up to the
    /// module's `max-attempts`).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            FailureKind::Transient | FailureKind::Trap | FailureKind::Timeout
        )
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    pub module: String,
    pub attempts: u32,
}

/// The id of the failure event of `module` handling `message_id`: the same
/// for every failed attempt, so `GET /v1/messages/{id}` can find it.
pub fn failure_event_id(module: &str, message_id: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{module}\n{message_id}").as_bytes(),
    )
    .to_string()
}
