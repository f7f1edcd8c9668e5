//! The unit of work of one message: what the module read, the writes it
//! buffered and the events it emitted. Nothing reaches the store until the
//! dispatcher commits it whole (see `store::Commit`); a failed or trapped
//! handler simply drops it.
//!
//! Reads go to the store the first time and are remembered, so a handler
//! sees one consistent version of each document plus its own writes. Every
//! write carries the version it was based on; the commit refuses the whole
//! unit if any of those documents moved on meanwhile (optimistic concurrency).
//!
//! What one message makes the host hold is bounded by the module's
//! [`Budgets`]: its buffered writes and events together (`max-write-bytes`),
//! one scan's documents, and what its reads leave remembered here (both
//! `max-scan-bytes`; past it a read keeps only the document's version). A
//! call over a budget returns `too-large`.
//!
//! By concern: this file has the unit, reads and writes; `scan.rs` the
//! scans and their byte budget; `emit.rs` events; `names.rs` the checks of
//! the collections, keys and prefixes a guest passes.

mod emit;
mod names;
mod scan;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use switchyard_model::envelope::Envelope;
use switchyard_model::grants::{Budgets, Grants, quote};
use switchyard_store::{Document, MessageStore, StoreError, Write};

pub use names::{MAX_COLLECTION_LEN, MAX_KEY_LEN};
use names::{check_collection, check_key};

/// Largest document value, in bytes of JSON.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most documents one message may write.
pub const MAX_WRITES: usize = 1_000;
/// Most rows one scan returns, whatever the module asks for.
pub const MAX_SCAN_LIMIT: u32 = 1_000;
/// Most events one message may emit.
pub const MAX_EVENTS: usize = 1_000;
/// What remembering one read costs beside its collection, key and value
/// (map entry, strings' headers): counted so that many small reads are
/// bounded too.
const SEEN_OVERHEAD: usize = 64;

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

impl Pending {
    fn document(&self) -> Option<Document> {
        self.value.clone().map(|value| Document {
            value,
            version: self.base_version + 1,
        })
    }
}

/// The first read of a document in this message.
#[derive(Debug, Clone)]
enum Seen {
    /// The document as read (`None`: absent).
    Kept(Option<Document>),
    /// Read once the remembered reads filled their budget: its version only.
    Version(u64),
}

type DocKey = (String, String);

/// What a buffered write holds: its collection, key and value.
fn write_size((collection, key): &DocKey, value: Option<&str>) -> usize {
    collection.len() + key.len() + value.map_or(0, str::len)
}

pub struct UnitOfWork {
    pub grants: Arc<Grants>,
    /// Where reads go: the host's store, or an in-memory one in tests.
    store: Option<Arc<dyn MessageStore>>,
    pub message: Option<MessageMeta>,
    /// First read of each document, so later reads and writes agree.
    seen: HashMap<DocKey, Seen>,
    /// What `seen` holds, against `max-scan-bytes`.
    seen_bytes: usize,
    writes: BTreeMap<DocKey, Pending>,
    events: Vec<Envelope>,
    /// What `writes` and `events` hold together, against `max-write-bytes`.
    buffered: usize,
    /// The document (collection, key) whose version moved under this
    /// message (a stale expected version, or two versions seen): a retry
    /// may succeed, and the dispatcher queues it behind that document.
    pub conflicted: Option<(String, String)>,
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
            seen_bytes: 0,
            writes: BTreeMap::new(),
            events: Vec::new(),
            buffered: 0,
            conflicted: None,
            store_error: None,
        }
    }

    fn budgets(&self) -> Budgets {
        self.grants.budgets
    }

    /// The store, unless there is none or it failed under this message
    /// already (the message is retried anyway: no more calls, no more lines
    /// about it in the log).
    fn store(&self) -> Result<&dyn MessageStore, RepoFailure> {
        if self.store_error.is_some() {
            return Err(RepoFailure::Unavailable(
                "the store is unavailable; the message will be retried".into(),
            ));
        }
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
        check_collection(collection)?;
        check_key(key)?;
        let id = (collection.to_string(), key.to_string());
        if let Some(p) = self.writes.get(&id) {
            return Ok(p.document());
        }
        match self.seen.get(&id) {
            Some(Seen::Kept(doc)) => Ok(doc.clone()),
            Some(Seen::Version(version)) => {
                let version = *version;
                self.read_again(&id, version).await
            }
            None => self.first_read(&id).await,
        }
    }

    /// Reads a document from the store and remembers it: whole while the
    /// remembered reads fit `max-scan-bytes`, then its version only.
    async fn first_read(&mut self, id: &DocKey) -> Result<Option<Document>, RepoFailure> {
        let entry = id.0.len() + id.1.len() + SEEN_OVERHEAD;
        let budget = self.budgets().scan_bytes;
        if self.seen_bytes + entry > budget {
            return Err(RepoFailure::TooLarge(format!(
                "this message read more distinct documents than it may remember \
                 ({budget} bytes, max-scan-bytes)"
            )));
        }
        let module = self.grants.name.clone();
        let fetched = self.store()?.get(&module, &id.0, &id.1).await;
        let doc = fetched.map_err(|e| self.store_failed(e))?;
        let value = doc.as_ref().map_or(0, |d| d.value.len());
        let seen = if self.seen_bytes + entry + value <= budget {
            self.seen_bytes += entry + value;
            Seen::Kept(doc.clone())
        } else {
            self.seen_bytes += entry;
            Seen::Version(doc.as_ref().map_or(0, |d| d.version))
        };
        self.seen.insert(id.clone(), seen);
        Ok(doc)
    }

    /// A document read before whose value was not kept: from the store
    /// again. If it moved on meanwhile, this message saw two versions of it:
    /// a conflict, and the message runs again on fresh state.
    async fn read_again(
        &mut self,
        id: &DocKey,
        version: u64,
    ) -> Result<Option<Document>, RepoFailure> {
        let module = self.grants.name.clone();
        let fetched = self.store()?.get(&module, &id.0, &id.1).await;
        let doc = fetched.map_err(|e| self.store_failed(e))?;
        let now = doc.as_ref().map_or(0, |d| d.version);
        if now == version {
            Ok(doc)
        } else {
            self.conflicted = Some(id.clone());
            Err(RepoFailure::VersionConflict(now))
        }
    }

    /// The version this message sees (0 = absent), without keeping the value.
    async fn version_of(&mut self, id: &DocKey) -> Result<u64, RepoFailure> {
        if let Some(p) = self.writes.get(id) {
            return Ok(p.document().map_or(0, |d| d.version));
        }
        match self.seen.get(id) {
            Some(Seen::Kept(doc)) => Ok(doc.as_ref().map_or(0, |d| d.version)),
            Some(Seen::Version(version)) => Ok(*version),
            None => Ok(self.first_read(id).await?.map_or(0, |d| d.version)),
        }
    }

    pub async fn put(
        &mut self,
        collection: &str,
        key: &str,
        value: String,
        expected: Option<u64>,
    ) -> Result<u64, RepoFailure> {
        check_collection(collection)?;
        check_key(key)?;
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
        let id = (collection.to_string(), key.to_string());
        self.check_write_budget(&id, Some(&value))?;
        let current = self.version_of(&id).await?;
        self.check_expected(&id, expected, current)?;
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
        self.buffer(
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
        check_collection(collection)?;
        check_key(key)?;
        let id = (collection.to_string(), key.to_string());
        let current = self.version_of(&id).await?;
        if current == 0 {
            return match expected {
                Some(v) if v != 0 => Err(RepoFailure::NotFound),
                _ => Ok(false),
            };
        }
        self.check_expected(&id, expected, current)?;
        let base_version = self.writes.get(&id).map_or(current, |p| p.base_version);
        if base_version == 0 {
            // Created and deleted within this message: nothing to commit.
            if let Some(p) = self.writes.remove(&id) {
                self.buffered -= write_size(&id, p.value.as_deref());
            }
        } else {
            self.check_write_budget(&id, None)?;
            self.buffer(
                id,
                Pending {
                    value: None,
                    base_version,
                },
            );
        }
        Ok(true)
    }

    /// Refuses a write that would take this message's writes and events
    /// past `max-write-bytes` (a write replacing one of the same document
    /// gives back what that one held).
    fn check_write_budget(&self, id: &DocKey, value: Option<&str>) -> Result<(), RepoFailure> {
        let replaced = self
            .writes
            .get(id)
            .map_or(0, |p| write_size(id, p.value.as_deref()));
        let total = self.buffered - replaced + write_size(id, value);
        if total > self.budgets().write_bytes {
            return Err(RepoFailure::TooLarge(self.over_write_budget(total)));
        }
        Ok(())
    }

    fn over_write_budget(&self, total: usize) -> String {
        format!(
            "this message's writes and events would hold {total} bytes; \
             its budget is {} (max-write-bytes)",
            self.budgets().write_bytes
        )
    }

    fn buffer(&mut self, id: DocKey, pending: Pending) {
        let replaced = self
            .writes
            .get(&id)
            .map_or(0, |p| write_size(&id, p.value.as_deref()));
        self.buffered = self.buffered - replaced + write_size(&id, pending.value.as_deref());
        self.writes.insert(id, pending);
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
        check_collection(collection)?;
        check_key(key)?;
        let fetched = self.store()?.get(owner, collection, key).await;
        fetched.map_err(|e| self.store_failed(e))
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

    fn check_expected(
        &mut self,
        id: &DocKey,
        expected: Option<u64>,
        current: u64,
    ) -> Result<(), RepoFailure> {
        match expected {
            Some(v) if v != current => {
                self.conflicted = Some(id.clone());
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
                "module '{}' may not read module '{}': list it in `reads` in plugins.toml",
                self.grants.name,
                quote(owner)
            )))
        }
    }
}

#[cfg(test)]
mod tests;
