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
//! Inside a component (`wasm32`) [`Ctx`] calls the host's WIT imports. Built
//! for the machine you develop on, it calls the in-memory fake of
//! [`testing`], so handlers are unit-tested with a plain `cargo test` (see
//! [`testing::Kit`]); nothing else changes.
//!
//! ```
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//! use switchyard_sdk::{Ctx, Error, Module};
//!
//! /// Adds stock of one sku.
//! #[derive(Deserialize, JsonSchema)]
//! struct Restock { sku: String, qty: u64 }
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! struct Stock { sku: String, available: u64 }
//!
//! fn restock(ctx: &Ctx, cmd: Restock) -> Result<Stock, Error> {
//!     if cmd.qty == 0 {
//!         return Err(Error::rejected("qty must be at least 1"));
//!     }
//!     let current = ctx.get::<Stock>("stock", &cmd.sku)?;
//!     let (available, version) = current.map_or((0, 0), |s| (s.value.available, s.version));
//!     let stock = Stock { sku: cmd.sku, available: available + cmd.qty };
//!     // Some(version): refused if someone else wrote the document meanwhile.
//!     ctx.put("stock", &stock.sku, &stock, Some(version))?;
//!     ctx.emit("inventory.events", "restocked", &stock)?;
//!     Ok(stock)
//! }
//!
//! fn module() -> Module {
//!     Module::new("inventory", "0.1.0")
//!         .command("inventory", "restock", restock)
//!         .emits_event::<Stock>("inventory.events", "restocked")
//! }
//! // In the module crate: the component's `describe` and `handle`.
//! switchyard_sdk::export_module!(module);
//!
//! // In its tests: the same handlers against the in-memory host.
//! let kit = switchyard_sdk::testing::Kit::new(module());
//! let out = kit.command("inventory", "restock", serde_json::json!({"sku": "apple", "qty": 5}));
//! assert_eq!(out, Ok(serde_json::json!({"sku": "apple", "available": 5})));
//! assert!(kit.emitted("inventory.events", "restocked"));
//! ```

extern crate self as switchyard_sdk;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use schemars::Schema;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Generated bindings for the `switchyard:module` world.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "module",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_guest",
        default_bindings_module: "switchyard_sdk::bindings",
        runtime_path: "switchyard_sdk::__wit_bindgen::rt",
        // The imports are interfaces of the 0.1.0 package (a dependency).
        generate_all,
    });
}

#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

/// The imported interfaces (`switchyard:module@0.1.0`; WIT 0.2.0 changed
/// only `describe`).
use bindings::switchyard::module0_1_0 as imports;
use bindings::{Descriptor, Direction, Envelope, HandleError, MessageContract};
use imports::{
    log as host_log,
    repository::{self, Document},
};

pub use imports::events::EmitError;
pub use imports::repository::RepoError;
pub use schemars::JsonSchema;

/// What [`Ctx`] calls: the WIT imports inside a component, the in-memory
/// fake of [`testing`] natively. The signatures are the WIT functions'.
pub(crate) trait Imports {
    fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, RepoError>;
    fn put(
        &self,
        collection: &str,
        key: &str,
        value: &str,
        expected: Option<u64>,
    ) -> Result<u64, RepoError>;
    fn delete(&self, collection: &str, key: &str, expected: Option<u64>)
    -> Result<bool, RepoError>;
    fn scan(&self, collection: &str, prefix: &str, limit: u32) -> Result<Vec<Document>, RepoError>;
    fn read(&self, owner: &str, collection: &str, key: &str)
    -> Result<Option<Document>, RepoError>;
    fn read_scan(
        &self,
        owner: &str,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<Document>, RepoError>;
    fn emit(
        &self,
        topic: &str,
        subtopic: &str,
        body: &str,
        headers: &[(String, String)],
    ) -> Result<String, EmitError>;
    fn config(&self, key: &str) -> Option<String>;
    fn config_all(&self) -> Vec<(String, String)>;
    fn log(&self, level: Level, message: &str);
    fn now_ms(&self) -> u64;
}

/// The host a [`Ctx`] talks to on this target.
#[cfg(target_arch = "wasm32")]
type Backend = host::Host;
/// The host a [`Ctx`] talks to on this target.
#[cfg(not(target_arch = "wasm32"))]
type Backend = testing::FakeHost;

/// Why a handler failed; the host decides what happens next from the kind
/// (SPEC §7).
///
/// | kind | HTTP | retried | failure event | dead letter |
/// |---|---|---|---|---|
/// | `Invalid` | 422 | no | yes | yes |
/// | `Rejected` | 409 | no | yes | no |
/// | `Transient` | 503 after the last attempt | yes, with backoff up to `max-attempts` | after the last | after the last |
///
/// In every case the message's writes and events are discarded.
///
/// ```
/// use switchyard_sdk::Error;
///
/// let e = Error::rejected(format!("unknown sku '{}'", "durian"));
/// assert_eq!(e.to_string(), "rejected: unknown sku 'durian'");
/// ```
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
    /// [`Error::Invalid`] with a message.
    pub fn invalid(message: impl fmt::Display) -> Self {
        Self::Invalid(message.to_string())
    }
    /// [`Error::Rejected`] with a message.
    pub fn rejected(message: impl fmt::Display) -> Self {
        Self::Rejected(message.to_string())
    }
    /// [`Error::Transient`] with a message.
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
        RepoError::VersionConflict(current) => {
            format!("version conflict (current version {current})")
        }
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

/// Every emit error is a defect (a topic outside the grants, an oversized or
/// malformed event): dead-lettered, not retried.
impl From<EmitError> for Error {
    fn from(e: EmitError) -> Self {
        Error::Invalid(format!("emit: {}", emit_error_message(&e)))
    }
}

/// A document read from the repository, with the version to pass back to
/// [`Ctx::put`] for an optimistic update.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The document, decoded.
    pub value: T,
    /// Starts at 1 and grows by one with every committed write.
    pub version: u64,
}

/// Log levels of the host's structured log.
pub use host_log::Level;

/// What a handler sees of the message being handled, and its capabilities.
///
/// Every call goes through the message's unit of work: reads see this
/// message's own writes, and writes and events reach the store only if the
/// handler returns `Ok`.
pub struct Ctx {
    id: String,
    topic: String,
    subtopic: String,
    headers: Vec<(String, String)>,
    backend: Backend,
}

impl Ctx {
    /// The message id (the idempotency key).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The message's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// The message's subtopic (the action or event name).
    pub fn subtopic(&self) -> &str {
        &self.subtopic
    }
    /// A header of the message, e.g. `correlation-id` or `partition-key`
    /// (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Every header of the message.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Reads one of this module's documents (this message's writes included).
    pub fn get<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<Versioned<T>>, Error> {
        decode_doc(collection, self.backend.get(collection, key)?)
    }

    /// Writes a document. `expected`: `None` = whatever is there, `Some(0)` =
    /// must not exist yet, `Some(n)` = must still be at version `n` (else
    /// [`RepoError::VersionConflict`], which converts into
    /// [`Error::Transient`]). Returns the new version.
    ///
    /// ```
    /// use switchyard_sdk::{testing::Kit, Ctx, Error, Module, RepoError};
    ///
    /// fn create(ctx: &Ctx, id: String) -> Result<u64, Error> {
    ///     match ctx.put("items", &id, &serde_json::json!({"id": id}), Some(0)) {
    ///         Err(Error::Transient(_)) => Err(Error::rejected(format!("'{id}' exists"))),
    ///         other => other,
    ///     }
    /// }
    /// let kit = Kit::new(Module::new("items", "0.1.0").command("items", "create", create));
    /// assert_eq!(kit.command("items", "create", "a"), Ok(serde_json::json!(1)));
    /// assert_eq!(kit.command("items", "create", "a"), Err(Error::rejected("'a' exists")));
    /// ```
    pub fn put<T: Serialize>(
        &self,
        collection: &str,
        key: &str,
        value: &T,
        expected: Option<u64>,
    ) -> Result<u64, Error> {
        let text = serde_json::to_string(value)
            .map_err(|e| Error::invalid(format!("cannot serialise {collection}/{key}: {e}")))?;
        Ok(self.backend.put(collection, key, &text, expected)?)
    }

    /// Deletes a document; returns whether it existed. `expected` as in
    /// [`Ctx::put`].
    pub fn delete(
        &self,
        collection: &str,
        key: &str,
        expected: Option<u64>,
    ) -> Result<bool, Error> {
        Ok(self.backend.delete(collection, key, expected)?)
    }

    /// This module's documents whose key starts with `prefix`, in key order,
    /// at most `limit` (the host caps it at 1,000).
    pub fn scan<T: DeserializeOwned>(
        &self,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<(String, Versioned<T>)>, Error> {
        self.backend
            .scan(collection, prefix, limit)?
            .into_iter()
            .map(|d| decode(collection, &d).map(|v| (d.key, v)))
            .collect()
    }

    /// Reads a document of another module (needs `reads = ["owner"]` in the
    /// module's manifest entry; without it [`RepoError::NotPermitted`]).
    ///
    /// ```
    /// use switchyard_sdk::{testing::Kit, Ctx, Error, Module};
    ///
    /// fn exists(ctx: &Ctx, sku: String) -> Result<bool, Error> {
    ///     Ok(ctx.read::<serde_json::Value>("inventory", "stock", &sku)?.is_some())
    /// }
    /// let module = || Module::new("orders", "0.1.0").command("orders", "exists", exists);
    /// let kit = Kit::new(module()).reads("inventory");
    /// kit.seed_for("inventory", "stock", "apple", &serde_json::json!({"available": 5}));
    /// assert_eq!(kit.command("orders", "exists", "apple"), Ok(serde_json::json!(true)));
    ///
    /// let ungranted = Kit::new(module());
    /// assert!(matches!(ungranted.command("orders", "exists", "apple"), Err(Error::Invalid(_))));
    /// ```
    pub fn read<T: DeserializeOwned>(
        &self,
        owner: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<Versioned<T>>, Error> {
        decode_doc(collection, self.backend.read(owner, collection, key)?)
    }

    /// Scans a collection of another module (needs `reads = ["owner"]`).
    pub fn read_scan<T: DeserializeOwned>(
        &self,
        owner: &str,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<(String, Versioned<T>)>, Error> {
        self.backend
            .read_scan(owner, collection, prefix, limit)?
            .into_iter()
            .map(|d| decode(collection, &d).map(|v| (d.key, v)))
            .collect()
    }

    /// Emits an event; it is published only if this message's handling
    /// succeeds. `topic` must be among the module's `emits`. Returns the
    /// event id.
    pub fn emit<T: Serialize>(
        &self,
        topic: &str,
        subtopic: &str,
        body: &T,
    ) -> Result<String, Error> {
        self.emit_with_headers(topic, subtopic, body, &[])
    }

    /// [`Ctx::emit`] with extra headers, e.g. a `partition-key`. The host
    /// sets `correlation-id`, `causation-id` and `timestamp` itself.
    pub fn emit_with_headers<T: Serialize>(
        &self,
        topic: &str,
        subtopic: &str,
        body: &T,
        headers: &[(&str, &str)],
    ) -> Result<String, Error> {
        let text = serde_json::to_string(body).map_err(|e| {
            Error::invalid(format!("cannot serialise event {topic}/{subtopic}: {e}"))
        })?;
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(self.backend.emit(topic, subtopic, &text, &headers)?)
    }

    /// A value of the module's `config` table in plugins.toml: strings as
    /// they are, other TOML values as JSON text.
    pub fn config(&self, key: &str) -> Option<String> {
        self.backend.config(key)
    }

    /// Every key of the module's `config` table.
    pub fn config_all(&self) -> Vec<(String, String)> {
        self.backend.config_all()
    }

    /// Writes to the host's log, tagged with this message's ids.
    pub fn log(&self, level: Level, message: impl AsRef<str>) {
        self.backend.log(level, message.as_ref());
    }

    /// [`Ctx::log`] at `info`.
    pub fn info(&self, message: impl AsRef<str>) {
        self.log(Level::Info, message);
    }

    /// [`Ctx::log`] at `warn`.
    pub fn warn(&self, message: impl AsRef<str>) {
        self.log(Level::Warn, message);
    }

    /// Wall-clock milliseconds since the Unix epoch, from the host.
    pub fn now_ms(&self) -> u64 {
        self.backend.now_ms()
    }
}

fn decode<T: DeserializeOwned>(
    collection: &str,
    doc: &repository::Document,
) -> Result<Versioned<T>, Error> {
    let value = serde_json::from_str(&doc.value).map_err(|e| {
        Error::invalid(format!(
            "stored document {collection}/{} does not decode: {e}",
            doc.key
        ))
    })?;
    Ok(Versioned {
        value,
        version: doc.version,
    })
}

fn decode_doc<T: DeserializeOwned>(
    collection: &str,
    doc: Option<repository::Document>,
) -> Result<Option<Versioned<T>>, Error> {
    doc.map(|d| decode(collection, &d)).transpose()
}

type Handler = Box<dyn Fn(&Ctx, &str) -> Result<String, Error>>;

/// Makes a JSON Schema; called only by `describe`, so building a
/// [`Module`] for each message costs nothing for the schemas.
type SchemaFn = fn() -> Schema;

fn schema_of<T: JsonSchema>() -> Schema {
    schemars::schema_for!(T)
}

struct Route {
    topic: String,
    subtopic: String,
    handler: Handler,
    body: SchemaFn,
    answer: Option<SchemaFn>,
}

/// An event the module declares it emits, with its body's type.
struct Emitted {
    topic: String,
    subtopic: String,
    body: SchemaFn,
}

/// A module: its identity and its typed handlers.
///
/// Build it in a `fn() -> Module` and export it with [`export_module!`]; the
/// host calls that function once per message (every message runs in a fresh
/// instance), so keep it cheap: registrations only.
pub struct Module {
    name: String,
    version: String,
    commands: Vec<Route>,
    events: Vec<Route>,
    emits: Vec<String>,
    emitted: Vec<Emitted>,
}

impl Module {
    /// A module with no handlers yet; `version` is usually
    /// `env!("CARGO_PKG_VERSION")`.
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.to_string(),
            version: version.to_string(),
            commands: Vec::new(),
            events: Vec::new(),
            emits: Vec::new(),
            emitted: Vec::new(),
        }
    }

    /// Handles command `topic`/`subtopic`; the module owns `topic` (no other
    /// module may). The body is parsed into `C`; a body that does not parse
    /// is [`Error::Invalid`]. The handler's `R` is the command's answer.
    ///
    /// `describe` declares the JSON Schemas of `C` and `R` (derive
    /// [`JsonSchema`] beside `Deserialize`; doc comments become
    /// descriptions, the first line of `C`'s the command's summary): the
    /// host refuses a body that does not match before it runs the module,
    /// and publishes the schemas in its AsyncAPI and OpenAPI documents.
    pub fn command<C, R, F>(mut self, topic: &str, subtopic: &str, handler: F) -> Self
    where
        C: DeserializeOwned + JsonSchema,
        R: Serialize + JsonSchema,
        F: Fn(&Ctx, C) -> Result<R, Error> + 'static,
    {
        let mut route = route(topic, subtopic, handler);
        route.answer = Some(schema_of::<R>);
        self.commands.push(route);
        self
    }

    /// Handles event `topic`/`subtopic`; the module subscribes to `topic`.
    /// Other subtopics of a subscribed topic are acknowledged and ignored.
    /// `describe` declares `E`'s schema, as for a command's body.
    pub fn on_event<E, R, F>(mut self, topic: &str, subtopic: &str, handler: F) -> Self
    where
        E: DeserializeOwned + JsonSchema,
        R: Serialize,
        F: Fn(&Ctx, E) -> Result<R, Error> + 'static,
    {
        self.events.push(route(topic, subtopic, handler));
        self
    }

    /// Declares event `topic`/`subtopic` with a body of type `T` (and the
    /// topic among [`Module::emits`]): `describe` publishes its schema and
    /// the host checks every such event the module emits against it, failing
    /// the message as [`Error::Invalid`] when one does not match.
    pub fn emits_event<T: JsonSchema>(mut self, topic: &str, subtopic: &str) -> Self {
        self = self.emits(topic);
        self.emitted.push(Emitted {
            topic: topic.to_string(),
            subtopic: subtopic.to_string(),
            body: schema_of::<T>,
        });
        self
    }

    /// Declares a topic this module emits to (the manifest's `emits` must
    /// grant it too; `switchyard check` compares them).
    pub fn emits(mut self, topic: &str) -> Self {
        if !self.emits.iter().any(|t| t == topic) {
            self.emits.push(topic.to_string());
        }
        self
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Topics declared with [`Module::emits`].
    pub fn declared_emits(&self) -> &[String] {
        &self.emits
    }

    #[doc(hidden)]
    pub fn __describe(&self) -> Descriptor {
        let routes = |routes: &[Route], direction: Direction| {
            routes
                .iter()
                .map(|r| {
                    contract(
                        direction,
                        &r.topic,
                        &r.subtopic,
                        (r.body)(),
                        r.answer.map(|a| a()),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut messages = routes(&self.commands, Direction::Command);
        messages.extend(routes(&self.events, Direction::Consumes));
        messages.extend(
            self.emitted
                .iter()
                .map(|e| contract(Direction::Emits, &e.topic, &e.subtopic, (e.body)(), None)),
        );
        Descriptor {
            name: self.name.clone(),
            version: self.version.clone(),
            topics: distinct_topics(&self.commands),
            subscribes: distinct_topics(&self.events),
            emits: self.emits.clone(),
            messages,
        }
    }

    /// The JSON Schema `describe` declares for a command's or event's body
    /// (`answer`: for a command's answer), if the module declares one.
    pub fn schema(&self, topic: &str, subtopic: &str, answer: bool) -> Option<serde_json::Value> {
        let route = self
            .commands
            .iter()
            .chain(&self.events)
            .find(|r| r.topic == topic && r.subtopic == subtopic);
        let schema = match (route, answer) {
            (Some(r), false) => Some((r.body)()),
            (Some(r), true) => r.answer.map(|a| a()),
            (None, false) => self
                .emitted
                .iter()
                .find(|e| e.topic == topic && e.subtopic == subtopic)
                .map(|e| (e.body)()),
            (None, true) => None,
        };
        schema.map(Schema::to_value)
    }

    #[doc(hidden)]
    pub fn __handle(&self, message: Envelope) -> Result<String, HandleError> {
        let body = message.body;
        let ctx = Ctx {
            id: message.id,
            topic: message.topic,
            subtopic: message.subtopic,
            headers: message.headers,
            backend: Backend::default(),
        };
        self.dispatch(&ctx, &body).map_err(|e| match e {
            Error::Invalid(m) => HandleError::Invalid(m),
            Error::Rejected(m) => HandleError::Rejected(m),
            Error::Transient(m) => HandleError::Transient(m),
        })
    }

    /// Routes one message to its handler, as the component's `handle` does.
    pub(crate) fn dispatch(&self, ctx: &Ctx, body: &str) -> Result<String, Error> {
        if let Some(handler) = find(&self.commands, ctx).or_else(|| find(&self.events, ctx)) {
            handler(ctx, body)
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
            Err(Error::invalid(format!(
                "module {} does not handle topic '{}'",
                self.name, ctx.topic
            )))
        }
    }
}

/// One entry of `describe`'s `messages`.
fn contract(
    direction: Direction,
    topic: &str,
    subtopic: &str,
    body: Schema,
    answer: Option<Schema>,
) -> MessageContract {
    // The body type's doc comment, first line.
    let summary = body
        .get("description")
        .and_then(serde_json::Value::as_str)
        .and_then(|d| d.lines().next())
        .unwrap_or("")
        .trim()
        .to_string();
    MessageContract {
        direction,
        topic: topic.to_string(),
        subtopic: subtopic.to_string(),
        summary,
        body_schema: Some(body.to_value().to_string()),
        answer_schema: answer.map(|a| a.to_value().to_string()),
    }
}

fn route<C, R, F>(topic: &str, subtopic: &str, handler: F) -> Route
where
    C: DeserializeOwned + JsonSchema,
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
        body: schema_of::<C>,
        answer: None,
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
/// `describe` and `handle`. Use it once, at the root of the module crate.
///
/// Natively (for `cargo test`) the export exists but is never called: tests
/// run the same `fn() -> Module` through [`testing::Kit`].
#[macro_export]
macro_rules! export_module {
    ($build:path) => {
        struct __SwitchyardModule;

        impl $crate::bindings::Guest for __SwitchyardModule {
            fn describe() -> $crate::bindings::Descriptor {
                $build().__describe()
            }

            fn handle(
                message: $crate::bindings::Envelope,
            ) -> ::core::result::Result<::std::string::String, $crate::bindings::HandleError>
            {
                $build().__handle(message)
            }
        }

        $crate::bindings::__export_guest!(__SwitchyardModule);
    };
}
