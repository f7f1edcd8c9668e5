//! The unit of work of one message: what the module read, the writes it
//! buffered and the events it emitted. Nothing reaches the store until the
//! dispatcher commits it whole (see `store::Commit`); a failed or trapped
//! handler simply drops it.
//!
//! Reads go to the store the first time and are remembered, so a handler
//! sees one consistent version of each document plus its own writes. Every
//! write carries the version it was based on; the commit refuses the whole
//! unit if any of those documents moved on meanwhile (optimistic concurrency).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use switchyard_model::envelope::{self, CAUSATION_ID, CORRELATION_ID, Envelope, TIMESTAMP};
use switchyard_model::grants::Grants;
use switchyard_model::trace::TRACEPARENT;
use switchyard_store::{Document, MessageStore, StoreError, Write};

/// Longest collection name a module may use, in bytes.
pub const MAX_COLLECTION_LEN: usize = 128;
/// Longest document key, in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// Largest document value, in bytes of JSON.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most documents one message may write.
pub const MAX_WRITES: usize = 1_000;
/// Most rows one scan returns, whatever the module asks for.
pub const MAX_SCAN_LIMIT: u32 = 1_000;
/// Most events one message may emit.
pub const MAX_EVENTS: usize = 1_000;
/// Largest total of event bodies one message may emit.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// A repository call refused or failed; mapped onto the WIT error variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoFailure {
    NotFound,
    VersionConflict(u64),
    NotPermitted(String),
    TooLarge(String),
    Invalid(String),
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitFailure {
    NotPermitted(String),
    TooLarge(String),
    Invalid(String),
}

/// The message being handled, as far as the unit of work needs it.
#[derive(Debug, Clone)]
pub struct MessageMeta {
    pub id: String,
    pub correlation_id: String,
    /// The `traceparent` of the events this message's handler emits.
    pub traceparent: String,
}

#[derive(Debug, Clone)]
struct Pending {
    /// `None` = deleted.
    value: Option<String>,
    /// The version the first write was based on (0 = absent).
    base_version: u64,
}

type DocKey = (String, String);

pub struct UnitOfWork {
    pub grants: Arc<Grants>,
    /// Where reads go: the host's store, or an in-memory one in tests.
    store: Option<Arc<dyn MessageStore>>,
    pub message: Option<MessageMeta>,
    /// First read of each document, so later reads and writes agree.
    seen: HashMap<DocKey, Option<Document>>,
    writes: BTreeMap<DocKey, Pending>,
    events: Vec<Envelope>,
    event_bytes: usize,
    /// A write found its expected version stale: a retry may succeed.
    pub conflicted: bool,
    /// The store failed under a call: the message must be retried later.
    pub store_error: Option<String>,
}

impl UnitOfWork {
    /// A unit of work for one message.
    pub fn new(grants: Arc<Grants>, store: Arc<dyn MessageStore>, message: MessageMeta) -> Self {
        Self::build(grants, Some(store), Some(message))
    }

    /// For `describe` and `check`: no message, every repository call refused.
    pub fn detached(grants: Arc<Grants>) -> Self {
        Self::build(grants, None, None)
    }

    fn build(
        grants: Arc<Grants>,
        store: Option<Arc<dyn MessageStore>>,
        message: Option<MessageMeta>,
    ) -> Self {
        Self {
            grants,
            store,
            message,
            seen: HashMap::new(),
            writes: BTreeMap::new(),
            events: Vec::new(),
            event_bytes: 0,
            conflicted: false,
            store_error: None,
        }
    }

    fn store(&self) -> Result<&dyn MessageStore, RepoFailure> {
        self.store
            .as_deref()
            .ok_or_else(|| RepoFailure::Unavailable("no message is being handled".into()))
    }

    fn store_failed(&mut self, e: StoreError) -> RepoFailure {
        tracing::warn!(module = %self.grants.name, error = %e, "store call failed");
        self.store_error = Some(e.to_string());
        RepoFailure::Unavailable("the store is unavailable; the message will be retried".into())
    }

    /// The document as this message sees it: its own write, else the store.
    pub async fn get(
        &mut self,
        collection: &str,
        key: &str,
    ) -> Result<Option<Document>, RepoFailure> {
        check_address(collection, key)?;
        let id = (collection.to_string(), key.to_string());
        if let Some(p) = self.writes.get(&id) {
            return Ok(p.value.clone().map(|value| Document {
                value,
                version: p.base_version + 1,
            }));
        }
        if let Some(doc) = self.seen.get(&id) {
            return Ok(doc.clone());
        }
        let module = self.grants.name.clone();
        let fetched = self.store()?.get(&module, collection, key).await;
        let doc = fetched.map_err(|e| self.store_failed(e))?;
        self.seen.insert(id, doc.clone());
        Ok(doc)
    }

    pub async fn put(
        &mut self,
        collection: &str,
        key: &str,
        value: String,
        expected: Option<u64>,
    ) -> Result<u64, RepoFailure> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(RepoFailure::TooLarge(format!(
                "value of {collection}/{key} is {} bytes; the limit is {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&value) {
            return Err(RepoFailure::Invalid(format!(
                "value of {collection}/{key} is not JSON: {e}"
            )));
        }
        let current = self.current_version(collection, key).await?;
        self.check_expected(expected, current)?;
        let id = (collection.to_string(), key.to_string());
        let base_version = match self.writes.get(&id) {
            Some(p) => p.base_version,
            None => {
                if self.writes.len() >= MAX_WRITES {
                    return Err(RepoFailure::TooLarge(format!(
                        "more than {MAX_WRITES} documents written by one message"
                    )));
                }
                current
            }
        };
        self.writes.insert(
            id,
            Pending {
                value: Some(value),
                base_version,
            },
        );
        Ok(base_version + 1)
    }

    pub async fn delete(
        &mut self,
        collection: &str,
        key: &str,
        expected: Option<u64>,
    ) -> Result<bool, RepoFailure> {
        let current = self.current_version(collection, key).await?;
        if current == 0 {
            return match expected {
                Some(v) if v != 0 => Err(RepoFailure::NotFound),
                _ => Ok(false),
            };
        }
        self.check_expected(expected, current)?;
        let id = (collection.to_string(), key.to_string());
        let base_version = self.writes.get(&id).map_or(current, |p| p.base_version);
        if base_version == 0 {
            // Created and deleted within this message: nothing to commit.
            self.writes.remove(&id);
        } else {
            self.writes.insert(
                id,
                Pending {
                    value: None,
                    base_version,
                },
            );
        }
        Ok(true)
    }

    /// This module's documents by key prefix, with this message's writes applied.
    pub async fn scan(
        &mut self,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<(String, Document)>, RepoFailure> {
        check_address(collection, prefix)?;
        // A guest-chosen limit: clamp it so one call cannot read the world.
        let limit = limit.min(MAX_SCAN_LIMIT);
        let pending: Vec<(&DocKey, &Pending)> = self
            .writes
            .iter()
            .filter(|((c, k), _)| c == collection && k.starts_with(prefix))
            .collect();
        let fetch = limit.saturating_add(u32::try_from(pending.len()).unwrap_or(u32::MAX));
        let module = self.grants.name.clone();
        let fetched = self.store()?.scan(&module, collection, prefix, fetch).await;
        let stored = fetched.map_err(|e| self.store_failed(e))?;
        let mut merged: BTreeMap<String, Document> = stored.into_iter().collect();
        for ((_, key), p) in self
            .writes
            .iter()
            .filter(|((c, k), _)| c == collection && k.starts_with(prefix))
        {
            match &p.value {
                Some(value) => {
                    merged.insert(
                        key.clone(),
                        Document {
                            value: value.clone(),
                            version: p.base_version + 1,
                        },
                    );
                }
                None => {
                    merged.remove(key);
                }
            }
        }
        Ok(merged.into_iter().take(limit as usize).collect())
    }

    /// Reads another module's document, if `reads` grants it.
    pub async fn read(
        &mut self,
        owner: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<Document>, RepoFailure> {
        if owner == self.grants.name {
            return self.get(collection, key).await;
        }
        self.check_read_grant(owner)?;
        check_address(collection, key)?;
        let fetched = self.store()?.get(owner, collection, key).await;
        fetched.map_err(|e| self.store_failed(e))
    }

    pub async fn read_scan(
        &mut self,
        owner: &str,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<(String, Document)>, RepoFailure> {
        if owner == self.grants.name {
            return self.scan(collection, prefix, limit).await;
        }
        self.check_read_grant(owner)?;
        check_address(collection, prefix)?;
        let fetched = self
            .store()?
            .scan(owner, collection, prefix, limit.min(MAX_SCAN_LIMIT))
            .await;
        fetched.map_err(|e| self.store_failed(e))
    }

    /// Buffers an event; returns its id.
    pub fn emit(
        &mut self,
        topic: String,
        subtopic: String,
        body: String,
        headers: Vec<(String, String)>,
    ) -> Result<String, EmitFailure> {
        let Some(message) = &self.message else {
            return Err(EmitFailure::Invalid("no message is being handled".into()));
        };
        if !self.grants.emits.contains(&topic) {
            return Err(EmitFailure::NotPermitted(format!(
                "module '{}' may not emit to '{topic}': add it to `emits` (declared: {})",
                self.grants.name,
                self.grants.emits.join(", ")
            )));
        }
        if self.events.len() >= MAX_EVENTS {
            return Err(EmitFailure::TooLarge(format!(
                "more than {MAX_EVENTS} events from one message"
            )));
        }
        let size = body.len()
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if self.event_bytes + size > MAX_EVENT_BYTES {
            return Err(EmitFailure::TooLarge(format!(
                "events of one message may total {MAX_EVENT_BYTES} bytes"
            )));
        }
        let mut map: BTreeMap<String, String> = headers.into_iter().collect();
        map.insert(CORRELATION_ID.into(), message.correlation_id.clone());
        map.insert(CAUSATION_ID.into(), message.id.clone());
        map.insert(TIMESTAMP.into(), envelope::now_rfc3339());
        map.insert(TRACEPARENT.into(), message.traceparent.clone());
        let event = Envelope::new(envelope::new_id(), topic, subtopic, map, &body)
            .map_err(|e| EmitFailure::Invalid(e.to_string()))?;
        let id = event.id.clone();
        self.event_bytes += size;
        self.events.push(event);
        Ok(id)
    }

    /// The buffered writes and events, ready to commit.
    pub fn into_parts(self) -> (Vec<Write>, Vec<Envelope>) {
        let writes = self
            .writes
            .into_iter()
            .map(|((collection, key), p)| match p.value {
                Some(value) => Write::Put {
                    collection,
                    key,
                    value,
                    base_version: p.base_version,
                },
                None => Write::Delete {
                    collection,
                    key,
                    base_version: p.base_version,
                },
            })
            .collect();
        (writes, self.events)
    }

    async fn current_version(&mut self, collection: &str, key: &str) -> Result<u64, RepoFailure> {
        Ok(self.get(collection, key).await?.map_or(0, |d| d.version))
    }

    fn check_expected(&mut self, expected: Option<u64>, current: u64) -> Result<(), RepoFailure> {
        match expected {
            Some(v) if v != current => {
                self.conflicted = true;
                Err(RepoFailure::VersionConflict(current))
            }
            _ => Ok(()),
        }
    }

    fn check_read_grant(&self, owner: &str) -> Result<(), RepoFailure> {
        if self.grants.reads.iter().any(|m| m == owner) {
            Ok(())
        } else {
            Err(RepoFailure::NotPermitted(format!(
                "module '{}' may not read module '{owner}': list it in `reads` in plugins.toml",
                self.grants.name
            )))
        }
    }
}

/// Guest-supplied names: bounded and non-empty where it matters.
fn check_address(collection: &str, key: &str) -> Result<(), RepoFailure> {
    if collection.is_empty()
        || !collection
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(RepoFailure::Invalid(format!(
            "collection {:?} must be non-empty [A-Za-z0-9._-]",
            collection.chars().take(64).collect::<String>()
        )));
    }
    if collection.len() > MAX_COLLECTION_LEN {
        return Err(RepoFailure::TooLarge(format!(
            "collection name over {MAX_COLLECTION_LEN} bytes"
        )));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(RepoFailure::TooLarge(format!(
            "key of {} bytes; the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
