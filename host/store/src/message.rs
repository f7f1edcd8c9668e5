//! The part of the store that handling one message touches: the unit of
//! work reads documents through it, and dispatch checks the inbox, commits
//! and records failures through it. [`Store`] implements it for SQLite and
//! PostgreSQL, [`MemoryStore`](crate::memory::MemoryStore) in memory, so the
//! unit of work and dispatch can be tested without a database.
//!
//! A trait object (one boxed future per call, well under a microsecond
//! against a database round trip) rather than a generic parameter: the
//! sandbox's per-message state stays one concrete type.

use std::future::Future;
use std::pin::Pin;

use switchyard_model::envelope::Envelope;

use crate::{Commit, DeadLetter, Document, Store, StoreError};

/// A boxed future of a store call.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

pub trait MessageStore: Send + Sync + 'static {
    /// The document `key` of `module`'s `collection`.
    fn get<'a>(
        &'a self,
        module: &'a str,
        collection: &'a str,
        key: &'a str,
    ) -> StoreFuture<'a, Option<Document>>;

    /// Documents whose key starts with `prefix`, in key order, at most
    /// `limit`. Loading stops after the document that takes the total
    /// [`scan_size`](crate::scan_size) past `max_bytes`: a scan cut short
    /// shows as one whose documents total more than `max_bytes`, and what
    /// the store loaded for it stays within `max_bytes` plus one document.
    fn scan<'a>(
        &'a self,
        module: &'a str,
        collection: &'a str,
        prefix: &'a str,
        limit: u32,
        max_bytes: usize,
    ) -> StoreFuture<'a, Vec<(String, Document)>>;

    /// The stored answer if `module` already processed `message_id`.
    fn inbox_answer<'a>(
        &'a self,
        module: &'a str,
        message_id: &'a str,
    ) -> StoreFuture<'a, Option<String>>;

    /// When `module` committed `message_id` (milliseconds since the Unix
    /// epoch, the store's clock), if it did.
    fn inbox_committed_at<'a>(
        &'a self,
        module: &'a str,
        message_id: &'a str,
    ) -> StoreFuture<'a, Option<i64>>;

    /// Commits one unit of work: the inbox row, the writes (each against
    /// its base version) and the events, or nothing (`Duplicate`,
    /// `Conflict`).
    fn commit<'a>(&'a self, commit: &'a Commit<'a>) -> StoreFuture<'a, ()>;

    /// Records a dead letter and appends a failure event, together.
    fn record_failure<'a>(
        &'a self,
        dead_letter: Option<&'a DeadLetter>,
        failure_event: Option<&'a Envelope>,
    ) -> StoreFuture<'a, ()>;

    /// Appends envelopes to the log (the outbox) outside any unit of work.
    fn append<'a>(&'a self, envelopes: &'a [Envelope], source: &'a str) -> StoreFuture<'a, ()>;
}

impl MessageStore for Store {
    fn get<'a>(
        &'a self,
        module: &'a str,
        collection: &'a str,
        key: &'a str,
    ) -> StoreFuture<'a, Option<Document>> {
        Box::pin(Store::get(self, module, collection, key))
    }

    fn scan<'a>(
        &'a self,
        module: &'a str,
        collection: &'a str,
        prefix: &'a str,
        limit: u32,
        max_bytes: usize,
    ) -> StoreFuture<'a, Vec<(String, Document)>> {
        Box::pin(Store::scan(
            self, module, collection, prefix, limit, max_bytes,
        ))
    }

    fn inbox_answer<'a>(
        &'a self,
        module: &'a str,
        message_id: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(Store::inbox_answer(self, module, message_id))
    }

    fn inbox_committed_at<'a>(
        &'a self,
        module: &'a str,
        message_id: &'a str,
    ) -> StoreFuture<'a, Option<i64>> {
        Box::pin(Store::inbox_committed_at(self, module, message_id))
    }

    fn commit<'a>(&'a self, commit: &'a Commit<'a>) -> StoreFuture<'a, ()> {
        Box::pin(Store::commit(self, commit))
    }

    fn record_failure<'a>(
        &'a self,
        dead_letter: Option<&'a DeadLetter>,
        failure_event: Option<&'a Envelope>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(Store::record_failure(self, dead_letter, failure_event))
    }

    fn append<'a>(&'a self, envelopes: &'a [Envelope], source: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(Store::append(self, envelopes, source))
    }
}
