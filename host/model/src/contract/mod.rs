//! What a module declares about the messages it takes and sends: per
//! command, per consumed event and per emitted event, a JSON Schema of the
//! body (and of a command's answer) and a one-line summary. Modules built
//! against WIT `switchyard:module@0.1.0` declare none: they are *untyped*,
//! nothing is validated and the documents show their topics without payloads.
//!
//! - [`compat`]: whether a new version still accepts what the serving one did
//!   (a reload that would refuse such bodies is refused);
//! - [`document`]: the AsyncAPI 3.0 and OpenAPI 3.1 documents of the loaded modules.

pub mod compat;
pub mod document;

use serde::{Deserialize, Serialize};

/// Which way a message goes, seen from the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// A command on a topic the module owns.
    Command,
    /// An event on a topic the module subscribes to.
    Consumes,
    /// An event the module emits.
    Emits,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Command => "command",
            Direction::Consumes => "consumes",
            Direction::Emits => "emits",
        }
    }
}

/// One message kind (topic, subtopic) a module takes or sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageContract {
    pub direction: Direction,
    pub topic: String,
    pub subtopic: String,
    /// One line for people; may be empty.
    pub summary: String,
    /// JSON Schema of the body; `None`: anything goes.
    pub body: Option<serde_json::Value>,
    /// JSON Schema of a command's answer; `None`: not declared.
    pub answer: Option<serde_json::Value>,
}

/// Everything one loaded module version declares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleContract {
    pub module: String,
    pub version: String,
    /// False for a module built against WIT 0.1.0 (no schemas at all).
    pub typed: bool,
    /// Command topics it owns, event topics it subscribes to, topics it may
    /// emit to: also for an untyped module, which declares no subtopics.
    pub topics: Vec<String>,
    pub subscribes: Vec<String>,
    pub emits: Vec<String>,
    pub messages: Vec<MessageContract>,
}

impl ModuleContract {
    /// The declaration of `topic`/`subtopic` in `direction`, if any.
    pub fn find(
        &self,
        direction: Direction,
        topic: &str,
        subtopic: &str,
    ) -> Option<&MessageContract> {
        self.messages
            .iter()
            .find(|m| m.direction == direction && m.topic == topic && m.subtopic == subtopic)
    }
}
