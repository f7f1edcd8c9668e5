//! The two views of the store a shadow needs: the live unit of work reads
//! through [`Recording`], which remembers every document and scan it was
//! answered; the candidate reads through [`Replay`], which answers from
//! that record, so it sees what the live version saw. A read the live
//! version did not make goes to the store and marks the run `diverged-read`.
//! Neither writes anything: the candidate's unit of work is never committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::registry::locked;
use switchyard_model::envelope::Envelope;
use switchyard_store::{Commit, DeadLetter, Document, MessageStore, StoreError, StoreFuture};

type DocKey = (String, String, String);
type ScanKey = (String, String, String, u32, usize);

/// What one live try read, as the store answered it.
#[derive(Debug, Default)]
pub struct Reads {
    docs: HashMap<DocKey, Option<Document>>,
    scans: HashMap<ScanKey, Vec<(String, Document)>>,
}

fn doc_key(module: &str, collection: &str, key: &str) -> DocKey {
    (module.to_string(), collection.to_string(), key.to_string())
}

fn scan_key(module: &str, collection: &str, prefix: &str, limit: u32, max: usize) -> ScanKey {
    (
        module.to_string(),
        collection.to_string(),
        prefix.to_string(),
        limit,
        max,
    )
}

/// The live store, remembering what it answered.
pub struct Recording {
    inner: Arc<dyn MessageStore>,
    reads: Arc<Mutex<Reads>>,
}

impl Recording {
    pub fn new(inner: Arc<dyn MessageStore>) -> Self {
        Self {
            inner,
            reads: Arc::default(),
        }
    }

    /// What was read, taken out (the try is over).
    pub fn reads(&self) -> Reads {
        std::mem::take(&mut *locked(&self.reads))
    }
}

impl MessageStore for Recording {
    fn get<'a>(
        &'a self,
        module: &'a str,
        collection: &'a str,
        key: &'a str,
    ) -> StoreFuture<'a, Option<Document>> {
        Box::pin(async move {
            let doc = self.inner.get(module, collection, key).await?;
            locked(&self.reads)
                .docs
                .insert(doc_key(module, collection, key), doc.clone());
            Ok(doc)
        })
    }

    fn scan<'a>(
        &'a self,
        module: &'a str,
        collection: &'a str,
        prefix: &'a str,
        limit: u32,
        max_bytes: usize,
    ) -> StoreFuture<'a, Vec<(String, Document)>> {
        Box::pin(async move {
            let rows = self
                .inner
                .scan(module, collection, prefix, limit, max_bytes)
                .await?;
            locked(&self.reads).scans.insert(
                scan_key(module, collection, prefix, limit, max_bytes),
                rows.clone(),
            );
            Ok(rows)
        })
    }

    fn inbox_answer<'a>(&'a self, module: &'a str, id: &'a str) -> StoreFuture<'a, Option<String>> {
        self.inner.inbox_answer(module, id)
    }

    fn inbox_committed_at<'a>(
        &'a self,
        module: &'a str,
        id: &'a str,
    ) -> StoreFuture<'a, Option<i64>> {
        self.inner.inbox_committed_at(module, id)
    }

    fn commit<'a>(&'a self, commit: &'a Commit<'a>) -> StoreFuture<'a, ()> {
        self.inner.commit(commit)
    }

    fn record_failure<'a>(
        &'a self,
        dead_letter: Option<&'a DeadLetter>,
        failure_event: Option<&'a Envelope>,
    ) -> StoreFuture<'a, ()> {
        self.inner.record_failure(dead_letter, failure_event)
    }

    fn append<'a>(&'a self, envelopes: &'a [Envelope], source: &'a str) -> StoreFuture<'a, ()> {
        self.inner.append(envelopes, source)
    }
}

/// The candidate's store: the live reads first, the real store (read only)
/// for anything else.
pub struct Replay {
    inner: Arc<dyn MessageStore>,
    reads: Reads,
    diverged: AtomicBool,
}

impl Replay {
    pub fn new(inner: Arc<dyn MessageStore>, reads: Reads) -> Self {
        Self {
            inner,
            reads,
            diverged: AtomicBool::new(false),
        }
    }

    /// Whether the candidate read something the live version did not.
    pub fn diverged(&self) -> bool {
        self.diverged.load(Ordering::Relaxed)
    }
}

fn never<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
    Box::pin(async {
        Err(StoreError::Refused(
            "a shadow run writes nothing to the store".into(),
        ))
    })
}

impl MessageStore for Replay {
    fn get<'a>(
        &'a self,
        module: &'a str,
        collection: &'a str,
        key: &'a str,
    ) -> StoreFuture<'a, Option<Document>> {
        if let Some(doc) = self.reads.docs.get(&doc_key(module, collection, key)) {
            let doc = doc.clone();
            return Box::pin(async move { Ok(doc) });
        }
        self.diverged.store(true, Ordering::Relaxed);
        self.inner.get(module, collection, key)
    }

    fn scan<'a>(
        &'a self,
        module: &'a str,
        collection: &'a str,
        prefix: &'a str,
        limit: u32,
        max_bytes: usize,
    ) -> StoreFuture<'a, Vec<(String, Document)>> {
        let key = scan_key(module, collection, prefix, limit, max_bytes);
        if let Some(rows) = self.reads.scans.get(&key) {
            let rows = rows.clone();
            return Box::pin(async move { Ok(rows) });
        }
        self.diverged.store(true, Ordering::Relaxed);
        self.inner
            .scan(module, collection, prefix, limit, max_bytes)
    }

    fn inbox_answer<'a>(&'a self, _: &'a str, _: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async { Ok(None) })
    }

    fn inbox_committed_at<'a>(&'a self, _: &'a str, _: &'a str) -> StoreFuture<'a, Option<i64>> {
        Box::pin(async { Ok(None) })
    }

    fn commit<'a>(&'a self, _: &'a Commit<'a>) -> StoreFuture<'a, ()> {
        never()
    }

    fn record_failure<'a>(
        &'a self,
        _: Option<&'a DeadLetter>,
        _: Option<&'a Envelope>,
    ) -> StoreFuture<'a, ()> {
        never()
    }

    fn append<'a>(&'a self, _: &'a [Envelope], _: &'a str) -> StoreFuture<'a, ()> {
        never()
    }
}
