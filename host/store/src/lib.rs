//! The host's own persistence: module documents, inbox, outbox (the embedded
//! log), log cursors and dead letters. Each backend commits a unit of work
//! (writes + events + inbox record) all-or-nothing, several units per
//! transaction (group commit, a savepoint each). SQLite serves one host;
//! PostgreSQL serves several hosts sharing one database.

pub mod memory;
pub mod message;
mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use std::time::Duration;

use switchyard_model::envelope::Envelope;

pub use memory::MemoryStore;
pub use message::{MessageStore, StoreFuture};
pub use postgres::{DEFAULT_COMMITTERS, DEFAULT_MAX_GROUP, PostgresStore};
pub use sqlite::SqliteStore;

/// A stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// JSON text.
    pub value: String,
    pub version: u64,
}

/// What a document counts against a scan's byte budget: its key and its
/// value (the JSON text), as the module receives them.
pub fn scan_size(key: &str, document: &Document) -> usize {
    key.len() + document.value.len()
}

/// One buffered change of a unit of work. `base_version` is the version the
/// handler saw (0 = absent); the commit fails if the document moved on.
#[derive(Debug, Clone)]
pub enum Write {
    Put {
        collection: String,
        key: String,
        value: String,
        base_version: u64,
    },
    Delete {
        collection: String,
        key: String,
        base_version: u64,
    },
}

impl Write {
    /// The document written: (collection, key).
    pub fn document(&self) -> (&str, &str) {
        let (Write::Put {
            collection, key, ..
        }
        | Write::Delete {
            collection, key, ..
        }) = self;
        (collection, key)
    }

    /// The error of this write finding its document at another version.
    pub fn conflict(&self) -> StoreError {
        let (collection, key) = self.document();
        StoreError::Conflict {
            collection: collection.to_string(),
            key: key.to_string(),
        }
    }
}

/// Everything one successfully handled message commits at once.
#[derive(Debug)]
pub struct Commit<'a> {
    pub module: &'a str,
    pub message_id: &'a str,
    /// The answer a duplicate of this message receives.
    pub answer: &'a str,
    pub writes: &'a [Write],
    pub events: &'a [Envelope],
}

/// A failed message, recorded for inspection and replay.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub module: String,
    pub message_id: String,
    pub topic: String,
    pub subtopic: String,
    pub envelope: serde_json::Value,
    pub error_kind: String,
    pub error_message: String,
    pub attempts: u32,
    pub created_at: String,
    pub replayed_at: Option<String>,
}

/// An entry of the embedded log (a row of the outbox).
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub seq: i64,
    pub envelope: Envelope,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A document changed since the handler read it: retry the message.
    #[error("document {collection}/{key} changed concurrently")]
    Conflict { collection: String, key: String },
    /// The message id was committed by a concurrent delivery.
    #[error("message already processed")]
    Duplicate,
    /// The database cannot store what the unit of work holds (PostgreSQL's
    /// JSONB refuses `\u0000`, for one): retrying as it is cannot succeed.
    #[error("the database refused the data: {0}")]
    Refused(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The backend itself failed (its thread stopped, a whole group commit
    /// failed): nothing of the affected work was stored.
    #[error("database: {0}")]
    Backend(String),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?}")]
    Unsupported(String),
}

/// The configured backend. An enum rather than a trait object: the set of
/// backends is closed and async trait objects would box every call.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

/// Connection settings from the manifest.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Pool size; the backend's default when `None`.
    pub max_connections: Option<u32>,
    /// In-process consumers follow the outbox by `seq` (no broker
    /// configured): PostgreSQL then makes seq order commit order, at a cost
    /// (see `postgres::outbox::OUTBOX_LOCK`). SQLite's single writer gives it for free.
    pub ordered_log: bool,
    /// PostgreSQL: most units of work committed in one transaction (group
    /// commit, see `postgres/group.rs`); 1 commits each unit in its own
    /// transaction, in the caller's task.
    pub max_group: usize,
    /// PostgreSQL: committer tasks, each holding one pooled connection
    /// while it commits a group; at most half of `max_connections`.
    pub committers: usize,
}

impl Default for StoreOptions {
    /// Safe for every reader of the log.
    fn default() -> Self {
        Self {
            max_connections: None,
            ordered_log: true,
            max_group: postgres::DEFAULT_MAX_GROUP,
            committers: postgres::DEFAULT_COMMITTERS,
        }
    }
}

/// Outbox entries this host is publishing. On PostgreSQL the rows stay
/// locked until [`OutboxClaim::published`] or until the claim is dropped (or
/// the host dies), so other hosts' relays skip them; on SQLite (one host)
/// it is a plain read.
pub struct OutboxClaim {
    pub entries: Vec<LogEntry>,
    hold: ClaimHold,
}

enum ClaimHold {
    Sqlite(SqliteStore),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl OutboxClaim {
    /// Gives the entries back unpublished (the broker refused them). Say so
    /// rather than drop the claim: a dropped transaction's rollback is only
    /// queued, and the rows stay locked until its connection is used again.
    pub async fn release(self) {
        if let ClaimHold::Postgres(tx) = self.hold
            && let Err(e) = tx.rollback().await
        {
            // The connection is broken, so the session and its locks end anyway.
            tracing::debug!(error = %e, "outbox claim: rollback failed");
        }
    }

    /// Marks the claimed entries as handed to the broker.
    pub async fn published(self) -> Result<(), StoreError> {
        let seqs: Vec<i64> = self.entries.iter().map(|e| e.seq).collect();
        match self.hold {
            ClaimHold::Sqlite(store) => store.mark_published(&seqs).await,
            ClaimHold::Postgres(tx) => PostgresStore::publish_claim(tx, &seqs).await,
        }
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, &StoreOptions::default()).await
    }

    /// Opens and migrates the database at `url` (a PostgreSQL database must
    /// exist; its tables are created).
    pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(
                SqliteStore::connect(url, options.max_connections).await?,
            ))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PostgresStore::connect(url, options).await?))
        } else {
            Err(StoreError::Unsupported(url.to_string()))
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        delegate!(self, s => s.ping().await)
    }

    pub async fn get(
        &self,
        module: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<Document>, StoreError> {
        delegate!(self, s => s.get(module, collection, key).await)
    }

    /// Documents whose key starts with `prefix`, in key order, at most
    /// `limit`, loading no more than `max_bytes` (see [`MessageStore::scan`]).
    pub async fn scan(
        &self,
        module: &str,
        collection: &str,
        prefix: &str,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<(String, Document)>, StoreError> {
        delegate!(self, s => s.scan(module, collection, prefix, limit, max_bytes).await)
    }

    /// The stored answer if `module` already processed `message_id`.
    pub async fn inbox_answer(
        &self,
        module: &str,
        message_id: &str,
    ) -> Result<Option<String>, StoreError> {
        delegate!(self, s => s.inbox_answer(module, message_id).await)
    }

    /// When `module` committed `message_id` (milliseconds since the Unix
    /// epoch, the store's clock), if it did.
    pub async fn inbox_committed_at(
        &self,
        module: &str,
        message_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        delegate!(self, s => s.inbox_committed_at(module, message_id).await)
    }

    /// Commits one unit of work; `Conflict` or `Duplicate` roll it all back.
    pub async fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        delegate!(self, s => s.commit(commit).await)
    }

    /// Appends envelopes to the log (the outbox) outside any unit of work.
    /// Envelopes whose id is already there are skipped.
    pub async fn append(&self, envelopes: &[Envelope], source: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.append(envelopes, source).await)
    }

    /// Records a dead letter (replacing an earlier one for the same message)
    /// and appends `failure_event`, in one transaction.
    pub async fn record_failure(
        &self,
        dead_letter: Option<&DeadLetter>,
        failure_event: Option<&Envelope>,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.record_failure(dead_letter, failure_event).await)
    }

    /// Log entries after `after` on any of `topics`, oldest first.
    pub async fn read_log(
        &self,
        after: i64,
        topics: &[String],
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError> {
        delegate!(self, s => s.read_log(after, topics, limit).await)
    }

    /// The consumer's position, created at the current end of the log the
    /// first time a consumer is seen (a new subscriber starts from now on).
    pub async fn cursor(&self, consumer: &str) -> Result<i64, StoreError> {
        delegate!(self, s => s.cursor(consumer).await)
    }

    pub async fn set_cursor(&self, consumer: &str, position: i64) -> Result<(), StoreError> {
        delegate!(self, s => s.set_cursor(consumer, position).await)
    }

    /// Claims up to `limit` outbox entries not yet handed to the broker,
    /// oldest first, that no other host is publishing right now.
    pub async fn claim_unpublished(&self, limit: u32) -> Result<OutboxClaim, StoreError> {
        match self {
            Store::Sqlite(s) => Ok(OutboxClaim {
                entries: s.unpublished(limit).await?,
                hold: ClaimHold::Sqlite(s.clone()),
            }),
            Store::Postgres(s) => {
                let (entries, tx) = s.claim_unpublished(limit).await?;
                Ok(OutboxClaim {
                    entries,
                    hold: ClaimHold::Postgres(tx),
                })
            }
        }
    }

    /// Outbox entries not yet handed to the broker, oldest first.
    pub async fn unpublished(&self, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        delegate!(self, s => s.unpublished(limit).await)
    }

    /// Marks outbox entries as handed to the broker.
    pub async fn mark_published(&self, seqs: &[i64]) -> Result<(), StoreError> {
        delegate!(self, s => s.mark_published(seqs).await)
    }

    pub async fn dead_letters(
        &self,
        topic: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        delegate!(self, s => s.dead_letters(topic, limit).await)
    }

    pub async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        delegate!(self, s => s.dead_letter(id).await)
    }

    pub async fn mark_replayed(&self, id: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.mark_replayed(id).await)
    }

    /// Deletes up to `limit` inbox records older than `age` (their messages
    /// are no longer recognised as duplicates); returns how many went.
    pub async fn prune_inbox(&self, age: Duration, limit: u32) -> Result<u64, StoreError> {
        delegate!(self, s => s.prune_inbox(age, limit).await)
    }

    /// Deletes up to `limit` outbox entries older than `age` that no reader
    /// needs any more (see [`OutboxReaders`]). Returns how many went.
    pub async fn prune_outbox(
        &self,
        age: Duration,
        limit: u32,
        readers: &OutboxReaders,
    ) -> Result<u64, StoreError> {
        delegate!(self, s => s.prune_outbox(age, limit, readers).await)
    }
}

/// Who reads the outbox, which says when an entry is done with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxReaders {
    /// The relay: an entry is done once handed to the broker.
    Relay,
    /// In-process consumers of the embedded log: for each topic someone
    /// consumes, the position every one of them has read up to. An entry of
    /// a topic nobody consumes is done (a new consumer starts at the end).
    EmbeddedLog(std::collections::BTreeMap<String, i64>),
}

impl OutboxReaders {
    /// `EmbeddedLog`'s positions as a JSON object (topic -> seq), bound as
    /// one parameter; `None` for the relay.
    fn positions_json(&self) -> Result<Option<String>, StoreError> {
        match self {
            OutboxReaders::Relay => Ok(None),
            OutboxReaders::EmbeddedLog(read) => serde_json::to_string(read)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("log positions: {e}"))),
        }
    }
}

/// A module's inbox record of a message: it was processed, with this answer.
#[derive(Debug, Clone)]
pub struct InboxRecord {
    pub module: String,
    /// The answer a duplicate receives (JSON of `switchyard_model::outcome::Answer`).
    pub answer: String,
    pub created_at: String,
}

/// One outbox row, as an operator sees it.
#[derive(Debug, Clone)]
pub struct OutboxRecord {
    pub seq: i64,
    pub envelope: Envelope,
    /// The module that emitted it, `switchyard` (failure events) or the
    /// ingress that appended it (`http`).
    pub source: String,
    pub created_at: String,
    /// When the relay handed it to the broker (never, with the embedded log).
    pub published_at: Option<String>,
}

/// Outbox entries the relay has not handed to the broker yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxBacklog {
    pub entries: u64,
    /// Age of the oldest of them; `None` when there is none.
    pub oldest_age: Option<std::time::Duration>,
}

/// Reads for operators: where a message is, backlogs, dead letters to replay.
impl Store {
    /// The inbox records of `message_id` in any of `modules`.
    pub async fn inbox_records(
        &self,
        message_id: &str,
        modules: &[String],
    ) -> Result<Vec<InboxRecord>, StoreError> {
        delegate!(self, s => s.inbox_records(message_id, modules).await)
    }

    /// The dead letters of `message_id` written for any of `modules`.
    pub async fn dead_letters_of(
        &self,
        message_id: &str,
        modules: &[String],
    ) -> Result<Vec<DeadLetter>, StoreError> {
        delegate!(self, s => s.dead_letters_of(message_id, modules).await)
    }

    /// Outbox rows whose envelope id is one of `ids`, in seq order.
    pub async fn outbox_records(&self, ids: &[String]) -> Result<Vec<OutboxRecord>, StoreError> {
        delegate!(self, s => s.outbox_records(ids).await)
    }

    /// Entries not yet handed to the broker, and how old the oldest is.
    pub async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        delegate!(self, s => s.outbox_backlog().await)
    }

    /// For each of `topics`, the log entries after `consumer`'s cursor (0
    /// for a consumer that has no cursor yet: it starts at the end).
    pub async fn log_lag(
        &self,
        consumer: &str,
        topics: &[String],
    ) -> Result<Vec<(String, u64)>, StoreError> {
        delegate!(self, s => s.log_lag(consumer, topics).await)
    }

    /// Dead letters of `topic` not replayed yet, oldest first.
    pub async fn unreplayed_dead_letters(
        &self,
        topic: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        delegate!(self, s => s.unreplayed_dead_letters(topic, limit).await)
    }
}

/// `topics` with their counts from `counted`, 0 where absent.
fn lag_per_topic(topics: &[String], counted: Vec<(String, i64)>) -> Vec<(String, u64)> {
    let counted: std::collections::HashMap<String, i64> = counted.into_iter().collect();
    topics
        .iter()
        .map(|t| {
            let n = counted.get(t).copied().unwrap_or(0);
            (t.clone(), u64::try_from(n).unwrap_or(0))
        })
        .collect()
}
