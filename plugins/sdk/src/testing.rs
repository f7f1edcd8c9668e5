//! The native test kit: a module's handlers run under a plain `cargo test`,
//! against an in-memory host that behaves like the real one.
//!
//! Built for the machine you develop on (not `wasm32`), [`Ctx`] talks to the
//! [`FakeHost`] of a [`Kit`] instead of the WIT imports. The fake keeps the
//! host's rules, so a test that passes here means the same thing in a host:
//!
//! - one unit of work per message: writes and emitted events are kept only
//!   if the handler returns `Ok`, and are all discarded on an error;
//! - versions start at 1 and grow by one per committed write; `expected`
//!   versions are checked (`Some(0)` = must not exist), a stale one is a
//!   [`RepoError::VersionConflict`] carrying the current version;
//! - reading another module's collection needs [`Kit::reads`] (the
//!   manifest's `reads`); emitting needs the topic among the module's
//!   [`Module::emits`] (the manifest's `emits`);
//! - the host's limits on names, keys, values, scans and events;
//! - a message id already handled is answered with its first answer and
//!   changes nothing (the inbox);
//! - emitted events carry `correlation-id` and `causation-id` as the host
//!   sets them; config comes from [`Kit::config`], time from a clock the test
//!   sets ([`Kit::clock`]), log lines are kept ([`Kit::logged`]) and printed
//!   to the test's output.
//!
//! Run a module's tests with the host's target, since the modules' workspace
//! builds for `wasm32-wasip2` by default:
//!
//! ```text
//! cd plugins && cargo test-native -p orders
//! # the alias (plugins/.cargo/config.toml) for:
//! cargo test --target x86_64-unknown-linux-gnu -p orders
//! ```
//!
//! ```
//! use serde_json::json;
//! use switchyard_sdk::{testing::Kit, Ctx, Error, Module};
//!
//! fn place(ctx: &Ctx, order: serde_json::Value) -> Result<(), Error> {
//!     ctx.put("orders", order["id"].as_str().unwrap_or_default(), &order, Some(0))?;
//!     ctx.emit("orders.events", "placed", &order)?;
//!     Ok(())
//! }
//! let kit = Kit::new(Module::new("orders", "0.1.0").command("orders", "place", place).emits("orders.events"));
//! kit.command("orders", "place", json!({"id": "o-1"})).unwrap();
//! assert!(kit.emitted("orders.events", "placed"));
//! assert_eq!(kit.doc("orders", "o-1"), Some(json!({"id": "o-1"})));
//! assert_eq!(kit.version("orders", "o-1"), 1);
//! // The same order again: Some(0) finds version 1, a conflict; nothing is emitted.
//! kit.clear_events();
//! assert!(matches!(kit.command("orders", "place", json!({"id": "o-1"})), Err(Error::Transient(_))));
//! assert!(kit.events().is_empty());
//! ```

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Ctx, Error, Level, Module, Versioned};

mod fake;
mod rules;
#[cfg(test)]
mod tests;

pub use fake::FakeHost;
use fake::{Stored, Uow};

pub use rules::{
    MAX_COLLECTION_LEN, MAX_EVENTS, MAX_KEY_LEN, MAX_SCAN_BYTES, MAX_SCAN_LIMIT, MAX_TOPIC_LEN,
    MAX_VALUE_BYTES, MAX_WRITE_BYTES, MAX_WRITES,
};

/// The clock's reading until a test sets it: 2026-01-01T00:00:00Z.
pub const DEFAULT_NOW_MS: u64 = 1_767_225_600_000;

/// An event a handled message emitted (and whose unit of work committed).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's id, `evt-1`, `evt-2`, ... in emission order.
    pub id: String,
    /// The topic it was emitted to.
    pub topic: String,
    /// Its subtopic.
    pub subtopic: String,
    /// The module's headers plus `correlation-id` and `causation-id`.
    pub headers: BTreeMap<String, String>,
    /// The JSON body.
    pub body: Value,
}

/// A message to hand to a [`Kit`], for when the id or headers matter;
/// [`Kit::command`] and [`Kit::event`] are the short forms.
#[derive(Debug, Clone)]
pub struct Message {
    id: Option<String>,
    topic: String,
    subtopic: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Message {
    /// A message whose body is `body` serialised to JSON.
    ///
    /// # Panics
    /// If `body` does not serialise (a bug in the test).
    pub fn new(topic: &str, subtopic: &str, body: impl Serialize) -> Self {
        let body = match serde_json::to_string(&body) {
            Ok(text) => text,
            Err(e) => panic!("the body of {topic}/{subtopic} does not serialise: {e}"),
        };
        Self::raw(topic, subtopic, body)
    }

    /// A message whose body text is taken as it is (e.g. to test a body
    /// that is not JSON).
    pub fn raw(topic: &str, subtopic: &str, body: impl Into<String>) -> Self {
        Self {
            id: None,
            topic: topic.to_string(),
            subtopic: subtopic.to_string(),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The message id (otherwise `msg-1`, `msg-2`, ...).
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.to_string());
        self
    }

    /// Adds a header, e.g. `partition-key`.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// One line the module logged.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub message: String,
}

/// A module under test with its in-memory host.
///
/// ```
/// use serde_json::json;
/// use switchyard_sdk::{testing::Kit, Ctx, Error, Module};
///
/// fn stamp(ctx: &Ctx, _: serde_json::Value) -> Result<serde_json::Value, Error> {
///     Ok(json!({"currency": ctx.config("currency"), "at": ctx.now_ms()}))
/// }
/// let kit = Kit::new(Module::new("m", "0.1.0").command("m", "stamp", stamp))
///     .config("currency", "EUR")
///     .clock(42);
/// assert_eq!(kit.command("m", "stamp", json!({})), Ok(json!({"currency": "EUR", "at": 42})));
/// ```
pub struct Kit {
    module: Module,
    host: FakeHost,
}

impl Kit {
    /// The module with an empty repository; its emit grants are the topics
    /// it declares with [`Module::emits`], as an unlisted module gets them.
    pub fn new(module: Module) -> Self {
        let host = FakeHost::for_module(module.name(), module.declared_emits().to_vec());
        Self { module, host }
    }

    /// Grants reading `owner`'s collections (the manifest's `reads`).
    pub fn reads(self, owner: &str) -> Self {
        self.host.0.borrow_mut().reads.push(owner.to_string());
        self
    }

    /// Replaces the emit grants (the manifest's `emits`), e.g. to test what
    /// the module does when a grant is missing.
    pub fn emit_grants(self, topics: &[&str]) -> Self {
        self.host.0.borrow_mut().emits = topics.iter().map(|t| t.to_string()).collect();
        self
    }

    /// Sets a key of the module's `config` table.
    pub fn config(self, key: &str, value: &str) -> Self {
        self.host
            .0
            .borrow_mut()
            .config
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Sets the clock (milliseconds since the Unix epoch).
    pub fn clock(self, now_ms: u64) -> Self {
        self.set_clock(now_ms);
        self
    }

    /// Sets the clock between messages.
    pub fn set_clock(&self, now_ms: u64) {
        self.host.0.borrow_mut().now_ms = now_ms;
    }

    /// Moves the clock on by `ms`.
    pub fn advance_clock(&self, ms: u64) {
        let mut w = self.host.0.borrow_mut();
        w.now_ms = w.now_ms.saturating_add(ms);
    }

    /// Handles a command as the host would; returns the handler's answer.
    pub fn command(
        &self,
        topic: &str,
        subtopic: &str,
        body: impl Serialize,
    ) -> Result<Value, Error> {
        self.handle(Message::new(topic, subtopic, body))
    }

    /// Delivers an event to the module's subscription; the same as
    /// [`Kit::command`], named for what the test means.
    pub fn event(&self, topic: &str, subtopic: &str, body: impl Serialize) -> Result<Value, Error> {
        self.handle(Message::new(topic, subtopic, body))
    }

    /// Delivers an event another module's kit emitted (same id and
    /// headers), to test a saga across modules natively.
    pub fn deliver(&self, event: &Event) -> Result<Value, Error> {
        let mut message = Message::new(&event.topic, &event.subtopic, &event.body).id(&event.id);
        message.headers = event
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.handle(message)
    }

    /// Handles one message in its own unit of work: on `Ok` its writes and
    /// events are kept, on `Err` all of them are discarded. A message id
    /// handled before is answered with the first answer and changes nothing.
    pub fn handle(&self, message: Message) -> Result<Value, Error> {
        let (id, headers) = {
            let mut w = self.host.0.borrow_mut();
            let id = match message.id {
                Some(id) => id,
                None => {
                    w.next_message += 1;
                    format!("msg-{}", w.next_message)
                }
            };
            if let Some(answer) = w.inbox.get(&id) {
                return Ok(parse_answer(answer));
            }
            let correlation_id = message
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("correlation-id"))
                .map_or_else(|| id.clone(), |(_, v)| v.clone());
            let mut headers = message.headers;
            if !headers.iter().any(|(k, _)| k == "correlation-id") {
                headers.push(("correlation-id".into(), correlation_id.clone()));
            }
            // The host tells the module which attempt this is.
            headers.push(("attempt".into(), "1".into()));
            w.uow = Some(Uow {
                message_id: id.clone(),
                correlation_id,
                before: w.docs.clone(),
                written: Vec::new(),
                events: Vec::new(),
                event_bytes: 0,
            });
            (id, headers)
        };
        let ctx = Ctx {
            id: id.clone(),
            topic: message.topic,
            subtopic: message.subtopic,
            headers,
            backend: self.host.clone(),
        };
        let result = self.module.dispatch(&ctx, &message.body);
        let mut w = self.host.0.borrow_mut();
        let Some(uow) = w.uow.take() else {
            return Err(Error::invalid("the unit of work vanished (a kit bug)"));
        };
        match result {
            Ok(answer) => {
                w.events.extend(uow.events);
                let value = parse_answer(&answer);
                w.inbox.insert(id, answer);
                Ok(value)
            }
            Err(e) => {
                w.docs = uow.before;
                Err(e)
            }
        }
    }

    /// Whether a handled message emitted `topic`/`subtopic` (since the last
    /// [`Kit::clear_events`]).
    pub fn emitted(&self, topic: &str, subtopic: &str) -> bool {
        self.host
            .0
            .borrow()
            .events
            .iter()
            .any(|e| e.topic == topic && e.subtopic == subtopic)
    }

    /// The body of the last `topic`/`subtopic` event emitted.
    ///
    /// # Panics
    /// If there is none; the message lists what was emitted.
    pub fn emitted_body(&self, topic: &str, subtopic: &str) -> Value {
        let w = self.host.0.borrow();
        match w
            .events
            .iter()
            .rev()
            .find(|e| e.topic == topic && e.subtopic == subtopic)
        {
            Some(e) => e.body.clone(),
            None => {
                let seen: Vec<String> = w
                    .events
                    .iter()
                    .map(|e| format!("{}/{}", e.topic, e.subtopic))
                    .collect();
                panic!(
                    "no {topic}/{subtopic} event was emitted (emitted: [{}])",
                    seen.join(", ")
                )
            }
        }
    }

    /// Every event emitted since the last [`Kit::clear_events`], in order.
    pub fn events(&self) -> Vec<Event> {
        self.host.0.borrow().events.clone()
    }

    /// Returns and forgets the emitted events (e.g. to [`Kit::deliver`]
    /// them to another module's kit).
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut self.host.0.borrow_mut().events)
    }

    /// Forgets the emitted events.
    pub fn clear_events(&self) {
        self.host.0.borrow_mut().events.clear();
    }

    /// One of the module's documents, decoded into `T` (e.g. `serde_json::Value`).
    ///
    /// # Panics
    /// If the stored document does not decode into `T`.
    pub fn doc<T: DeserializeOwned>(&self, collection: &str, key: &str) -> Option<T> {
        let module = self.module.name().to_string();
        self.doc_of(&module, collection, key).map(|d| d.value)
    }

    /// The current version of one of the module's documents (0 = absent).
    pub fn version(&self, collection: &str, key: &str) -> u64 {
        let w = self.host.0.borrow();
        w.docs.get(&w.own(collection, key)).map_or(0, |d| d.version)
    }

    /// Any module's document with its version.
    ///
    /// # Panics
    /// If the stored document does not decode into `T`.
    pub fn doc_of<T: DeserializeOwned>(
        &self,
        owner: &str,
        collection: &str,
        key: &str,
    ) -> Option<Versioned<T>> {
        let w = self.host.0.borrow();
        let id = (owner.to_string(), collection.to_string(), key.to_string());
        w.docs
            .get(&id)
            .map(|d| match serde_json::from_str(&d.value) {
                Ok(value) => Versioned {
                    value,
                    version: d.version,
                },
                Err(e) => panic!("{owner}/{collection}/{key} does not decode: {e}"),
            })
    }

    /// Writes one of the module's documents outside any message (state
    /// before the test, or another writer between messages); returns the
    /// new version.
    pub fn seed(&self, collection: &str, key: &str, value: &impl Serialize) -> u64 {
        let module = self.module.name().to_string();
        self.seed_for(&module, collection, key, value)
    }

    /// [`Kit::seed`] for another module's collection, for
    /// [`Ctx::read`] (grant it with [`Kit::reads`]).
    ///
    /// # Panics
    /// If `value` does not serialise.
    pub fn seed_for(
        &self,
        owner: &str,
        collection: &str,
        key: &str,
        value: &impl Serialize,
    ) -> u64 {
        let value = match serde_json::to_string(value) {
            Ok(v) => v,
            Err(e) => panic!("the seed {owner}/{collection}/{key} does not serialise: {e}"),
        };
        let mut w = self.host.0.borrow_mut();
        let id = (owner.to_string(), collection.to_string(), key.to_string());
        let version = w.docs.get(&id).map_or(0, |d| d.version) + 1;
        w.docs.insert(id, Stored { value, version });
        version
    }

    /// Whether the module logged a line containing `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.host
            .0
            .borrow()
            .logs
            .iter()
            .any(|l| l.message.contains(needle))
    }

    /// Every line the module logged.
    pub fn logs(&self) -> Vec<LogLine> {
        self.host.0.borrow().logs.clone()
    }

    /// The module's `describe`: name, version, topics, subscriptions, emits,
    /// and each message's schemas.
    pub fn describe(&self) -> crate::bindings::Descriptor {
        self.module.__describe()
    }
}

fn parse_answer(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}
