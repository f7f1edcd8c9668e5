//! The in-memory host behind a [`Ctx`](crate::Ctx) in native builds: one
//! module's documents, events, log and inbox, and the unit of work of the
//! message being handled, under the host's rules (see [`super::rules`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde_json::Value;

use super::rules::{
    MAX_EVENTS, MAX_SCAN_LIMIT, MAX_TOPIC_LEN, MAX_VALUE_BYTES, MAX_WRITES, check_collection,
    check_key, check_prefix, check_write_bytes, fit_scan, valid_name,
};
use super::{DEFAULT_NOW_MS, Event, LogLine};
use crate::imports::repository::Document;
use crate::{EmitError, Imports, Level, RepoError};

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Stored {
    pub(super) value: String,
    pub(super) version: u64,
}

/// (owner module, collection, key)
pub(super) type DocId = (String, String, String);

/// The message being handled: what commit or rollback needs.
pub(super) struct Uow {
    pub(super) message_id: String,
    pub(super) correlation_id: String,
    /// The documents as they were before the message: restored on an error,
    /// and the base of the versions its writes get.
    pub(super) before: BTreeMap<DocId, Stored>,
    pub(super) written: Vec<DocId>,
    pub(super) events: Vec<Event>,
    /// Bytes of the events' topics, subtopics, bodies and headers.
    pub(super) event_bytes: usize,
}

pub(super) struct World {
    pub(super) module: String,
    pub(super) reads: Vec<String>,
    pub(super) emits: Vec<String>,
    pub(super) config: BTreeMap<String, String>,
    pub(super) now_ms: u64,
    pub(super) docs: BTreeMap<DocId, Stored>,
    pub(super) events: Vec<Event>,
    pub(super) logs: Vec<LogLine>,
    /// Committed answers by message id.
    pub(super) inbox: HashMap<String, String>,
    pub(super) uow: Option<Uow>,
    pub(super) next_message: u64,
    pub(super) next_event: u64,
}

/// The in-memory host behind a [`Ctx`] in native builds; shared by a [`Kit`]
/// and the `Ctx` of the message it is running.
#[derive(Clone)]
pub struct FakeHost(pub(super) Rc<RefCell<World>>);

impl Default for FakeHost {
    fn default() -> Self {
        Self::for_module("module", Vec::new())
    }
}

impl FakeHost {
    pub(super) fn for_module(module: &str, emits: Vec<String>) -> Self {
        Self(Rc::new(RefCell::new(World {
            module: module.to_string(),
            reads: Vec::new(),
            emits,
            config: BTreeMap::new(),
            now_ms: DEFAULT_NOW_MS,
            docs: BTreeMap::new(),
            events: Vec::new(),
            logs: Vec::new(),
            inbox: HashMap::new(),
            uow: None,
            next_message: 0,
            next_event: 0,
        })))
    }
}

impl World {
    pub(super) fn own(&self, collection: &str, key: &str) -> DocId {
        (self.module.clone(), collection.to_string(), key.to_string())
    }

    fn document(&self, id: &DocId) -> Option<Document> {
        self.docs.get(id).map(|d| Document {
            key: id.2.clone(),
            value: d.value.clone(),
            version: d.version,
        })
    }

    fn check_read_grant(&self, owner: &str) -> Result<(), RepoError> {
        if owner == self.module || self.reads.iter().any(|m| m == owner) {
            Ok(())
        } else {
            Err(RepoError::NotPermitted(format!(
                "module '{}' may not read module '{owner}': list it in `reads` in plugins.toml (Kit::reads in a test)",
                self.module
            )))
        }
    }

    fn scan_of(
        &self,
        owner: &str,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<Document>, RepoError> {
        check_collection(collection)?;
        check_prefix(prefix)?;
        // A guest-chosen limit: capped as the host caps it.
        let limit = limit.min(MAX_SCAN_LIMIT) as usize;
        let docs = self
            .docs
            .iter()
            .filter(|((o, c, k), _)| o == owner && c == collection && k.starts_with(prefix))
            .take(limit)
            .map(|((_, _, k), d)| Document {
                key: k.clone(),
                value: d.value.clone(),
                version: d.version,
            })
            .collect();
        let what = if owner == self.module {
            collection.to_string()
        } else {
            format!("{owner}/{collection}")
        };
        fit_scan(docs, &what)
    }

    fn uow(&mut self) -> Result<&mut Uow, RepoError> {
        self.uow
            .as_mut()
            .ok_or_else(|| RepoError::Unavailable("no message is being handled".into()))
    }

    /// The version a write in this message produces: one past the version
    /// before the message, however often the message writes it (as the host).
    fn write(&mut self, id: DocId, value: Option<String>) -> Result<u64, RepoError> {
        let held = self.held(Some(&id)) + write_size(&id, value.as_deref().map_or(0, str::len));
        check_write_bytes(held).map_err(RepoError::TooLarge)?;
        let uow = self.uow()?;
        let base = uow.before.get(&id).map_or(0, |d| d.version);
        if !uow.written.contains(&id) {
            if uow.written.len() >= MAX_WRITES {
                return Err(RepoError::TooLarge(format!(
                    "more than {MAX_WRITES} documents written by one message"
                )));
            }
            uow.written.push(id.clone());
        }
        match value {
            Some(value) => {
                self.docs.insert(
                    id,
                    Stored {
                        value,
                        version: base + 1,
                    },
                );
            }
            None => {
                self.docs.remove(&id);
            }
        }
        Ok(base + 1)
    }
}

impl World {
    /// What this message's writes (collection, key and value each) and
    /// events hold, leaving out the write of `except`.
    fn held(&self, except: Option<&DocId>) -> usize {
        let Some(uow) = &self.uow else {
            return 0;
        };
        let writes: usize = (uow.written.iter())
            .filter(|w| Some(*w) != except)
            .map(|w| write_size(w, self.docs.get(w).map_or(0, |d| d.value.len())))
            .sum();
        writes + uow.event_bytes
    }
}

fn write_size((_, collection, key): &DocId, value_len: usize) -> usize {
    collection.len() + key.len() + value_len
}

fn check_expected(expected: Option<u64>, current: u64) -> Result<(), RepoError> {
    match expected {
        Some(v) if v != current => Err(RepoError::VersionConflict(current)),
        _ => Ok(()),
    }
}

impl Imports for FakeHost {
    fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, RepoError> {
        check_collection(collection)?;
        check_key(key)?;
        let w = self.0.borrow();
        Ok(w.document(&w.own(collection, key)))
    }

    fn put(
        &self,
        collection: &str,
        key: &str,
        value: &str,
        expected: Option<u64>,
    ) -> Result<u64, RepoError> {
        check_collection(collection)?;
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(RepoError::TooLarge(format!(
                "value of {collection}/{key} is {} bytes; the limit is {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(value) {
            return Err(RepoError::Invalid(format!(
                "value of {collection}/{key} is not JSON: {e}"
            )));
        }
        let mut w = self.0.borrow_mut();
        let id = w.own(collection, key);
        let current = w.docs.get(&id).map_or(0, |d| d.version);
        check_expected(expected, current)?;
        w.write(id, Some(value.to_string()))
    }

    fn delete(
        &self,
        collection: &str,
        key: &str,
        expected: Option<u64>,
    ) -> Result<bool, RepoError> {
        check_collection(collection)?;
        check_key(key)?;
        let mut w = self.0.borrow_mut();
        let id = w.own(collection, key);
        let current = w.docs.get(&id).map_or(0, |d| d.version);
        if current == 0 {
            return match expected {
                Some(v) if v != 0 => Err(RepoError::NotFound),
                _ => Ok(false),
            };
        }
        check_expected(expected, current)?;
        w.write(id, None)?;
        Ok(true)
    }

    fn scan(&self, collection: &str, prefix: &str, limit: u32) -> Result<Vec<Document>, RepoError> {
        let w = self.0.borrow();
        w.scan_of(&w.module, collection, prefix, limit)
    }

    fn read(
        &self,
        owner: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<Document>, RepoError> {
        let w = self.0.borrow();
        w.check_read_grant(owner)?;
        check_collection(collection)?;
        check_key(key)?;
        Ok(w.document(&(owner.to_string(), collection.to_string(), key.to_string())))
    }

    fn read_scan(
        &self,
        owner: &str,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<Document>, RepoError> {
        let w = self.0.borrow();
        w.check_read_grant(owner)?;
        w.scan_of(owner, collection, prefix, limit)
    }

    fn emit(
        &self,
        topic: &str,
        subtopic: &str,
        body: &str,
        headers: &[(String, String)],
    ) -> Result<String, EmitError> {
        let mut w = self.0.borrow_mut();
        if !w.emits.iter().any(|t| t == topic) {
            return Err(EmitError::NotPermitted(format!(
                "module '{}' may not emit to '{topic}': add it to `emits` (declared: {})",
                w.module,
                w.emits.join(", ")
            )));
        }
        if !valid_name(topic) || !valid_name(subtopic) {
            return Err(EmitError::Invalid(format!(
                "topic and subtopic must be 1 to {MAX_TOPIC_LEN} of [A-Za-z0-9._-]: {topic:?}/{subtopic:?}"
            )));
        }
        let size = topic.len()
            + subtopic.len()
            + body.len()
            + (headers.iter())
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        check_write_bytes(w.held(None) + size).map_err(EmitError::TooLarge)?;
        let body: Value = serde_json::from_str(body)
            .map_err(|e| EmitError::Invalid(format!("event body is not JSON: {e}")))?;
        w.next_event += 1;
        let id = format!("evt-{}", w.next_event);
        let Some(uow) = w.uow.as_mut() else {
            return Err(EmitError::Invalid("no message is being handled".into()));
        };
        if uow.events.len() >= MAX_EVENTS {
            return Err(EmitError::TooLarge(format!(
                "more than {MAX_EVENTS} events from one message"
            )));
        }
        uow.event_bytes += size;
        let mut map: BTreeMap<String, String> = headers.iter().cloned().collect();
        map.insert("correlation-id".into(), uow.correlation_id.clone());
        map.insert("causation-id".into(), uow.message_id.clone());
        uow.events.push(Event {
            id: id.clone(),
            topic: topic.to_string(),
            subtopic: subtopic.to_string(),
            headers: map,
            body,
        });
        Ok(id)
    }

    fn config(&self, key: &str) -> Option<String> {
        self.0.borrow().config.get(key).cloned()
    }

    fn config_all(&self) -> Vec<(String, String)> {
        let w = self.0.borrow();
        w.config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn log(&self, level: Level, message: &str) {
        let mut w = self.0.borrow_mut();
        // Shown by the test harness when a test fails (or with --nocapture).
        eprintln!("[{} {level:?}] {message}", w.module);
        w.logs.push(LogLine {
            level,
            message: message.to_string(),
        });
    }

    fn now_ms(&self) -> u64 {
        self.0.borrow().now_ms
    }
}
