//! The Switchyard guest SDK: what a module author writes against.
//!
//! A module is a [`Module`] value: a name, a version, and typed handlers
//! registered per command (`topic`, `subtopic`) and per event (`topic`,
//! `subtopic`). The SDK is the module's processor: it derives `describe` from
//! the registrations, parses each message body with serde into the handler's
//! type (a body that does not parse becomes [`Error::Invalid`] with serde's
//! message, which names the field), and serialises the handler's result.
//!
//! Everything a handler depends on comes from the host through [`Ctx`]:
//! typed repository access with versions, event emission, configuration,
//! logging and the clock. There is no envelope plumbing in module code.
//!
//! ```ignore
//! use switchyard_sdk::{Ctx, Error, Module};
//!
//! #[derive(serde::Deserialize)]
//! struct Restock { sku: String, qty: u64 }
//!
//! fn restock(ctx: &Ctx, cmd: Restock) -> Result<u64, Error> { Ok(cmd.qty) }
//!
//! fn module() -> Module {
//!     Module::new("inventory", env!("CARGO_PKG_VERSION")).command("inventory", "restock", restock)
//! }
//! switchyard_sdk::export_module!(module);
//! ```

extern crate self as switchyard_sdk;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Generated bindings for the `switchyard:module` world.
pub mod bindings {
    wit_bindgen::generate!({
        world: "module",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_guest",
        default_bindings_module: "switchyard_sdk::bindings",
        runtime_path: "switchyard_sdk::__wit_bindgen::rt",
    });
}

use bindings::switchyard::module::{
    clock, config, events, log as host_log, repository,
    types::{Descriptor, Envelope, HandleError},
};

pub use bindings::switchyard::module::events::EmitError;
pub use bindings::switchyard::module::repository::RepoError;

/// Why a handler failed; the host decides retries from the kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The message cannot be processed as it is (bad body, a call outside the
    /// module's grants): dead-lettered, not retried.
    Invalid(String),
    /// A business rule refused the command: not retried, not dead-lettered.
    Rejected(String),
    /// Worth another attempt: the host retries with backoff.
    Transient(String),
}

impl Error {
    pub fn invalid(message: impl fmt::Display) -> Self {
        Self::Invalid(message.to_string())
    }
    pub fn rejected(message: impl fmt::Display) -> Self {
        Self::Rejected(message.to_string())
    }
    pub fn transient(message: impl fmt::Display) -> Self {
        Self::Transient(message.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(m) => write!(f, "invalid: {m}"),
            Error::Rejected(m) => write!(f, "rejected: {m}"),
            Error::Transient(m) => write!(f, "transient: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// A readable sentence for a repository error (the generated `Display` is `Debug`).
pub fn repo_error_message(e: &RepoError) -> String {
    match e {
        RepoError::NotFound => "document not found".to_string(),
        RepoError::VersionConflict(current) => format!("version conflict (current version {current})"),
        RepoError::NotPermitted(m) => format!("not permitted: {m}"),
        RepoError::TooLarge(m) => format!("too large: {m}"),
        RepoError::Invalid(m) => format!("invalid: {m}"),
        RepoError::Unavailable(m) => format!("store unavailable: {m}"),
    }
}

/// A version conflict or an unavailable store is worth retrying (the host
/// re-runs the message on fresh state); anything else is a defect of the
/// module or its grants and goes to the dead letters for a later replay.
impl From<RepoError> for Error {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::VersionConflict(_) | RepoError::Unavailable(_) => {
                Error::Transient(format!("repository: {}", repo_error_message(&e)))
            }
            other => Error::Invalid(format!("repository: {}", repo_error_message(&other))),
        }
    }
}

/// A readable sentence for an emit error.
pub fn emit_error_message(e: &EmitError) -> String {
    match e {
        EmitError::NotPermitted(m) => format!("not permitted: {m}"),
        EmitError::TooLarge(m) => format!("too large: {m}"),
        EmitError::Invalid(m) => format!("invalid: {m}"),
    }
}

impl From<EmitError> for Error {
    fn from(e: EmitError) -> Self {
        Error::Invalid(format!("emit: {}", emit_error_message(&e)))
    }
}

/// A document read from the repository, with the version to pass back to
/// [`Ctx::put`] for an optimistic update.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: u64,
}

/// Log levels of the host's structured log.
pub use host_log::Level;

/// What a handler sees of the message being handled, and its capabilities.
pub struct Ctx {
    id: String,
    topic: String,
    subtopic: String,
    headers: Vec<(String, String)>,
}

impl Ctx {
    /// The message id (the idempotency key).
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn subtopic(&self) -> &str {
        &self.subtopic
    }
    /// A header of the message, e.g. `correlation-id` or `partition-key`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Reads one of this module's documents (this message's writes included).
    pub fn get<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<Versioned<T>>, Error> {
        decode_doc(collection, repository::get(collection, key)?)
    }

    /// Writes a document. `expected`: `Some(0)` = must not exist yet,
    /// `Some(n)` = must still be at version `n`. Returns the new version.
    pub fn put<T: Serialize>(
        &self,
        collection: &str,
        key: &str,
        value: &T,
        expected: Option<u64>,
    ) -> Result<u64, Error> {
        let text = serde_json::to_string(value)
            .map_err(|e| Error::invalid(format!("cannot serialise {collection}/{key}: {e}")))?;
        Ok(repository::put(collection, key, &text, expected)?)
    }

    /// Deletes a document; returns whether it existed.
    pub fn delete(&self, collection: &str, key: &str, expected: Option<u64>) -> Result<bool, Error> {
        Ok(repository::delete(collection, key, expected)?)
    }

    /// This module's documents whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(
        &self,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<(String, Versioned<T>)>, Error> {
        repository::scan(collection, prefix, limit)?
            .into_iter()
            .map(|d| decode(collection, &d).map(|v| (d.key, v)))
            .collect()
    }

    /// Reads a document of another module (needs `reads = ["owner"]`).
    pub fn read<T: DeserializeOwned>(
        &self,
        owner: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<Versioned<T>>, Error> {
        decode_doc(collection, repository::read(owner, collection, key)?)
    }

    /// Scans a collection of another module (needs `reads = ["owner"]`).
    pub fn read_scan<T: DeserializeOwned>(
        &self,
        owner: &str,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<(String, Versioned<T>)>, Error> {
        repository::read_scan(owner, collection, prefix, limit)?
            .into_iter()
            .map(|d| decode(collection, &d).map(|v| (d.key, v)))
            .collect()
    }

    /// Emits an event; it is published only if this message's handling
    /// succeeds. Returns the event id.
    pub fn emit<T: Serialize>(&self, topic: &str, subtopic: &str, body: &T) -> Result<String, Error> {
        self.emit_with_headers(topic, subtopic, body, &[])
    }

    /// [`Ctx::emit`] with extra headers, e.g. a `partition-key`.
    pub fn emit_with_headers<T: Serialize>(
        &self,
        topic: &str,
        subtopic: &str,
        body: &T,
        headers: &[(&str, &str)],
    ) -> Result<String, Error> {
        let text = serde_json::to_string(body)
            .map_err(|e| Error::invalid(format!("cannot serialise event {topic}/{subtopic}: {e}")))?;
        let headers: Vec<(String, String)> =
            headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Ok(events::emit(topic, subtopic, &text, &headers)?)
    }

    /// A value of the module's `config` table in plugins.toml.
    pub fn config(&self, key: &str) -> Option<String> {
        config::get(key)
    }

    /// Every key of the module's `config` table.
    pub fn config_all(&self) -> Vec<(String, String)> {
        config::get_all()
    }

    /// Writes to the host's log, tagged with this message's ids.
    pub fn log(&self, level: Level, message: impl AsRef<str>) {
        host_log::log(level, message.as_ref());
    }

    pub fn info(&self, message: impl AsRef<str>) {
        self.log(Level::Info, message);
    }

    pub fn warn(&self, message: impl AsRef<str>) {
        self.log(Level::Warn, message);
    }

    /// Wall-clock milliseconds since the Unix epoch, from the host.
    pub fn now_ms(&self) -> u64 {
        clock::now_ms()
    }
}

fn decode<T: DeserializeOwned>(collection: &str, doc: &repository::Document) -> Result<Versioned<T>, Error> {
    let value = serde_json::from_str(&doc.value).map_err(|e| {
        Error::invalid(format!("stored document {collection}/{} does not decode: {e}", doc.key))
    })?;
    Ok(Versioned { value, version: doc.version })
}

fn decode_doc<T: DeserializeOwned>(
    collection: &str,
    doc: Option<repository::Document>,
) -> Result<Option<Versioned<T>>, Error> {
    doc.map(|d| decode(collection, &d)).transpose()
}

type Handler = Box<dyn Fn(&Ctx, &str) -> Result<String, Error>>;

struct Route {
    topic: String,
    subtopic: String,
    handler: Handler,
}

/// A module: its identity and its typed handlers.
pub struct Module {
    name: String,
    version: String,
    commands: Vec<Route>,
    events: Vec<Route>,
    emits: Vec<String>,
}

impl Module {
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.to_string(),
            version: version.to_string(),
            commands: Vec::new(),
            events: Vec::new(),
            emits: Vec::new(),
        }
    }

    /// Handles command `topic`/`subtopic`; the module owns `topic`.
    pub fn command<C, R, F>(mut self, topic: &str, subtopic: &str, handler: F) -> Self
    where
        C: DeserializeOwned,
        R: Serialize,
        F: Fn(&Ctx, C) -> Result<R, Error> + 'static,
    {
        self.commands.push(route(topic, subtopic, handler));
        self
    }

    /// Handles event `topic`/`subtopic`; the module subscribes to `topic`.
    /// Other subtopics of a subscribed topic are acknowledged and ignored.
    pub fn on_event<E, R, F>(mut self, topic: &str, subtopic: &str, handler: F) -> Self
    where
        E: DeserializeOwned,
        R: Serialize,
        F: Fn(&Ctx, E) -> Result<R, Error> + 'static,
    {
        self.events.push(route(topic, subtopic, handler));
        self
    }

    /// Declares a topic this module emits to.
    pub fn emits(mut self, topic: &str) -> Self {
        if !self.emits.iter().any(|t| t == topic) {
            self.emits.push(topic.to_string());
        }
        self
    }

    #[doc(hidden)]
    pub fn __describe(&self) -> Descriptor {
        Descriptor {
            name: self.name.clone(),
            version: self.version.clone(),
            topics: distinct_topics(&self.commands),
            subscribes: distinct_topics(&self.events),
            emits: self.emits.clone(),
        }
    }

    #[doc(hidden)]
    pub fn __handle(&self, message: Envelope) -> Result<String, HandleError> {
        let ctx = Ctx {
            id: message.id,
            topic: message.topic,
            subtopic: message.subtopic,
            headers: message.headers,
        };
        let outcome = if let Some(handler) = find(&self.commands, &ctx).or_else(|| find(&self.events, &ctx)) {
            handler(&ctx, &message.body)
        } else if self.commands.iter().any(|r| r.topic == ctx.topic) {
            let known: Vec<&str> = self
                .commands
                .iter()
                .filter(|r| r.topic == ctx.topic)
                .map(|r| r.subtopic.as_str())
                .collect();
            Err(Error::invalid(format!(
                "unknown subtopic '{}' for topic '{}' (known: {})",
                ctx.subtopic,
                ctx.topic,
                known.join(", ")
            )))
        } else if self.events.iter().any(|r| r.topic == ctx.topic) {
            // An event this module has no interest in.
            Ok("null".to_string())
        } else {
            Err(Error::invalid(format!("module {} does not handle topic '{}'", self.name, ctx.topic)))
        };
        outcome.map_err(|e| match e {
            Error::Invalid(m) => HandleError::Invalid(m),
            Error::Rejected(m) => HandleError::Rejected(m),
            Error::Transient(m) => HandleError::Transient(m),
        })
    }
}

fn route<C, R, F>(topic: &str, subtopic: &str, handler: F) -> Route
where
    C: DeserializeOwned,
    R: Serialize,
    F: Fn(&Ctx, C) -> Result<R, Error> + 'static,
{
    let label = format!("{topic}/{subtopic}");
    Route {
        topic: topic.to_string(),
        subtopic: subtopic.to_string(),
        handler: Box::new(move |ctx, body| {
            let command: C = serde_json::from_str(body)
                .map_err(|e| Error::invalid(format!("body of {label}: {e}")))?;
            let output = handler(ctx, command)?;
            serde_json::to_string(&output)
                .map_err(|e| Error::invalid(format!("result of {label} does not serialise: {e}")))
        }),
    }
}

fn find<'r>(routes: &'r [Route], ctx: &Ctx) -> Option<&'r Handler> {
    routes
        .iter()
        .find(|r| r.topic == ctx.topic && r.subtopic == ctx.subtopic)
        .map(|r| &r.handler)
}

fn distinct_topics(routes: &[Route]) -> Vec<String> {
    let mut topics: Vec<String> = Vec::new();
    for r in routes {
        if !topics.contains(&r.topic) {
            topics.push(r.topic.clone());
        }
    }
    topics
}

/// Exports a module built by `$build` (a `fn() -> Module`) as the component's
/// `describe` and `handle`.
#[macro_export]
macro_rules! export_module {
    ($build:path) => {
        struct __SwitchyardModule;

        impl $crate::bindings::Guest for __SwitchyardModule {
            fn describe() -> $crate::bindings::switchyard::module::types::Descriptor {
                $build().__describe()
            }

            fn handle(
                message: $crate::bindings::switchyard::module::types::Envelope,
            ) -> ::core::result::Result<
                ::std::string::String,
                $crate::bindings::switchyard::module::types::HandleError,
            > {
                $build().__handle(message)
            }
        }

        $crate::bindings::__export_guest!(__SwitchyardModule);
    };
}
