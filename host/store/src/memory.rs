//! A [`MessageStore`] in memory, with the semantics of the database
//! backends where a unit of work can tell: versions start at 1 and grow by
//! one per write, a write against a stale version fails the whole commit
//! with `Conflict`, a second commit of one message id with `Duplicate`, and
//! nothing of a failed commit is kept. For tests of the unit of work and of
//! dispatch; it can also be told to fail, as a database that went away.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use switchyard_model::envelope::Envelope;

use crate::message::{MessageStore, StoreFuture};
use crate::{Commit, DeadLetter, Document, StoreError, Write};

type DocKey = (String, String, String);

#[derive(Default)]
struct State {
    documents: BTreeMap<DocKey, Document>,
    /// (module, message id) -> answer and when it was committed (Unix ms).
    inbox: HashMap<(String, String), (String, i64)>,
    /// The log: committed events, failure events and appended envelopes.
    log: Vec<Envelope>,
    dead_letters: Vec<DeadLetter>,
    commits: u64,
}

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// While set, every call fails as an unreachable database does.
    down: AtomicBool,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::Relaxed) {
            Err(StoreError::Backend("the in-memory store is down".into()))
        } else {
            Ok(())
        }
    }

    /// Makes every call fail (`true`) or work again (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// Writes a document directly, as another host's commit would.
    pub fn put(&self, module: &str, collection: &str, key: &str, value: &str) -> u64 {
        let mut state = self.state();
        let id = (module.into(), collection.into(), key.into());
        let version = state.documents.get(&id).map_or(0, |d| d.version) + 1;
        state.documents.insert(
            id,
            Document {
                value: value.into(),
                version,
            },
        );
        version
    }

    /// The document as stored now.
    pub fn document(&self, module: &str, collection: &str, key: &str) -> Option<Document> {
        let id = (module.into(), collection.into(), key.into());
        self.state().documents.get(&id).cloned()
    }

    /// Everything appended to the log so far, in order.
    pub fn log(&self) -> Vec<Envelope> {
        self.state().log.clone()
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.state().dead_letters.clone()
    }

    /// Units of work committed so far.
    pub fn commits(&self) -> u64 {
        self.state().commits
    }

    fn apply(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        self.check_up()?;
        let mut state = self.state();
        let inbox_key = (commit.module.to_string(), commit.message_id.to_string());
        if state.inbox.contains_key(&inbox_key) {
            return Err(StoreError::Duplicate);
        }
        // Check every write first: a conflict leaves nothing behind.
        for write in commit.writes {
            let (collection, key, base) = match write {
                Write::Put {
                    collection,
                    key,
                    base_version,
                    ..
                }
                | Write::Delete {
                    collection,
                    key,
                    base_version,
                } => (collection, key, *base_version),
            };
            let id = (commit.module.to_string(), collection.clone(), key.clone());
            let current = state.documents.get(&id).map_or(0, |d| d.version);
            let deleting_nothing = matches!(write, Write::Delete { .. }) && current == 0;
            if current != base || deleting_nothing {
                return Err(write.conflict());
            }
        }
        for write in commit.writes {
            match write {
                Write::Put {
                    collection,
                    key,
                    value,
                    base_version,
                } => {
                    let id = (commit.module.to_string(), collection.clone(), key.clone());
                    let document = Document {
                        value: value.clone(),
                        version: base_version + 1,
                    };
                    state.documents.insert(id, document);
                }
                Write::Delete {
                    collection, key, ..
                } => {
                    let id = (commit.module.to_string(), collection.clone(), key.clone());
                    state.documents.remove(&id);
                }
            }
        }
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        state
            .inbox
            .insert(inbox_key, (commit.answer.to_string(), now));
        state.log.extend(commit.events.iter().cloned());
        state.commits += 1;
        Ok(())
    }
}

impl MessageStore for MemoryStore {
    fn get<'a>(
        &'a self,
        module: &'a str,
        collection: &'a str,
        key: &'a str,
    ) -> StoreFuture<'a, Option<Document>> {
        let result = self
            .check_up()
            .map(|()| self.document(module, collection, key));
        Box::pin(async move { result })
    }

    fn scan<'a>(
        &'a self,
        module: &'a str,
        collection: &'a str,
        prefix: &'a str,
        limit: u32,
        max_bytes: usize,
    ) -> StoreFuture<'a, Vec<(String, Document)>> {
        let result = self.check_up().map(|()| {
            let state = self.state();
            let from = (
                module.to_string(),
                collection.to_string(),
                prefix.to_string(),
            );
            let mut loaded = 0usize;
            let mut out = Vec::new();
            for ((m, c, k), d) in state.documents.range(from..).take(limit as usize) {
                if m != module || c != collection || !k.starts_with(prefix) {
                    break;
                }
                loaded = loaded.saturating_add(crate::scan_size(k, d));
                out.push((k.clone(), d.clone()));
                if loaded > max_bytes {
                    break;
                }
            }
            out
        });
        Box::pin(async move { result })
    }

    fn inbox_answer<'a>(
        &'a self,
        module: &'a str,
        message_id: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        let result = self.check_up().map(|()| {
            let key = (module.to_string(), message_id.to_string());
            self.state()
                .inbox
                .get(&key)
                .map(|(answer, _)| answer.clone())
        });
        Box::pin(async move { result })
    }

    fn inbox_committed_at<'a>(
        &'a self,
        module: &'a str,
        message_id: &'a str,
    ) -> StoreFuture<'a, Option<i64>> {
        let result = self.check_up().map(|()| {
            let key = (module.to_string(), message_id.to_string());
            self.state().inbox.get(&key).map(|(_, at)| *at)
        });
        Box::pin(async move { result })
    }

    fn commit<'a>(&'a self, commit: &'a Commit<'a>) -> StoreFuture<'a, ()> {
        let result = self.apply(commit);
        Box::pin(async move { result })
    }

    fn record_failure<'a>(
        &'a self,
        dead_letter: Option<&'a DeadLetter>,
        failure_event: Option<&'a Envelope>,
    ) -> StoreFuture<'a, ()> {
        let result = self.check_up().map(|()| {
            let mut state = self.state();
            if let Some(letter) = dead_letter {
                // One dead letter per module and message, as the databases keep it.
                state
                    .dead_letters
                    .retain(|l| !(l.module == letter.module && l.message_id == letter.message_id));
                state.dead_letters.push(letter.clone());
            }
            if let Some(event) = failure_event
                && !state.log.iter().any(|e| e.id == event.id)
            {
                state.log.push(event.clone());
            }
        });
        Box::pin(async move { result })
    }

    fn append<'a>(&'a self, envelopes: &'a [Envelope], _source: &'a str) -> StoreFuture<'a, ()> {
        let result = self.check_up().map(|()| {
            let mut state = self.state();
            for e in envelopes {
                if !state.log.iter().any(|l| l.id == e.id) {
                    state.log.push(e.clone());
                }
            }
        });
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(collection: &str, key: &str, value: &str, base_version: u64) -> Write {
        Write::Put {
            collection: collection.into(),
            key: key.into(),
            value: value.into(),
            base_version,
        }
    }

    fn commit<'a>(id: &'a str, writes: &'a [Write]) -> Commit<'a> {
        Commit {
            module: "m",
            message_id: id,
            answer: "{}",
            writes,
            events: &[],
        }
    }

    #[tokio::test]
    async fn versions_conflicts_and_duplicates_as_the_databases_do() {
        let store = MemoryStore::new();
        let first = [put("c", "k", "1", 0)];
        store.commit(&commit("a", &first)).await.unwrap();
        let doc = store.get("m", "c", "k").await.unwrap().unwrap();
        assert_eq!((doc.value.as_str(), doc.version), ("1", 1));

        // Based on a version that moved on: nothing of it is kept.
        let stale = [put("c", "other", "x", 0), put("c", "k", "2", 0)];
        let err = store.commit(&commit("b", &stale)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert_eq!(store.document("m", "c", "other"), None);
        assert_eq!(store.inbox_answer("m", "b").await.unwrap(), None);

        let err = store.commit(&commit("a", &[])).await.unwrap_err();
        assert!(matches!(err, StoreError::Duplicate), "{err}");
        assert_eq!(store.commits(), 1);
    }

    #[tokio::test]
    async fn scan_is_ordered_by_key_within_one_collection() {
        let store = MemoryStore::new();
        for key in ["b2", "a", "b1", "c"] {
            store.put("m", "c", key, "0");
        }
        store.put("m", "d", "b0", "0");
        store.put("other", "c", "b0", "0");
        let keys: Vec<String> = (store.scan("m", "c", "b", 10, usize::MAX).await.unwrap())
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["b1", "b2"]);
        assert_eq!(
            store.scan("m", "c", "", 2, usize::MAX).await.unwrap().len(),
            2
        );
        // Loading stops after the document that crosses the byte budget.
        let cut: Vec<String> = (store.scan("m", "c", "", 10, 2).await.unwrap())
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(cut, ["a", "b1"]);
    }

    #[tokio::test]
    async fn a_store_that_is_down_fails_every_call() {
        let store = MemoryStore::new();
        store.set_down(true);
        assert!(store.get("m", "c", "k").await.is_err());
        assert!(store.commit(&commit("a", &[])).await.is_err());
        store.set_down(false);
        assert!(store.get("m", "c", "k").await.is_ok());
    }
}
