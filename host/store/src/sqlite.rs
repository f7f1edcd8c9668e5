//! The embedded default store: one SQLite file in WAL mode.
//!
//! SQLite has one writer, so writes go to one writer thread that owns the
//! write connection. It takes every unit of work queued while it was busy
//! and commits them in one transaction (group commit), each inside its own
//! savepoint: a unit that conflicts rolls back alone and the others commit.
//! Under load this turns N transactions into one; with one message in
//! flight the group is that one message and nothing waits.
//!
//! Reads run on a few reader connections, in the calling task: a point read
//! from SQLite's page cache takes a few microseconds, far less than handing
//! it to another thread and back (what a driver with a worker thread per
//! connection costs per statement). In WAL mode readers never wait for the
//! writer.
//!
//! The schema is migrated with sqlx's migrator when the store opens, so the
//! migration history is the same as PostgreSQL's.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio::sync::{mpsc, oneshot};

use super::{Commit, DeadLetter, Document, LogEntry, StoreError, Write};
use switchyard_model::envelope::{Envelope, now_rfc3339};

/// Reader connections when `host.max-connections` is not set. Reads run in
/// the calling task, so more than the runtime's worker threads never help.
const READERS: u32 = 4;
/// How long a statement waits for SQLite's lock before giving up (another
/// process holding the file, or a checkpoint).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most units of work committed in one transaction.
const MAX_GROUP: usize = 512;
/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    writer: mpsc::UnboundedSender<Job>,
    /// Dropped with the store: the checkpointer thread then ends.
    _checkpointer: std::sync::mpsc::Sender<()>,
}

/// Work for the writer thread.
enum Job {
    /// One unit of work, committed with whatever else is queued.
    Commit(Box<OwnedCommit>, Reply),
    /// Any other write, alone in its own transaction.
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// Where the writer thread tells a unit of work how its commit ended.
type Reply = oneshot::Sender<Result<(), StoreError>>;

/// [`Commit`] with its data owned, to cross to the writer thread.
struct OwnedCommit {
    module: String,
    message_id: String,
    answer: String,
    writes: Vec<Write>,
    events: Vec<Envelope>,
}

impl SqliteStore {
    pub async fn connect(url: &str, max_connections: Option<u32>) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let file = options.get_filename().to_path_buf();
        if file.as_os_str() == ":memory:" {
            return Err(StoreError::Unsupported(format!(
                "{url}: the SQLite store needs a file (its reader and writer connections share it)"
            )));
        }
        // Two hosts starting on one file would race to switch it to WAL and
        // to migrate it (sqlx takes no lock for SQLite migrations): an
        // exclusive file lock beside the database makes them take turns.
        let _turn = lock_beside(&file).await?;
        migrate(options).await?;
        let path = file.clone();
        let readers = max_connections.unwrap_or(READERS).max(1);
        let (readers, writer, checkpoints) = tokio::task::spawn_blocking(move || {
            let writer = open(&path, false)?;
            // Checkpoints run on a thread of their own (below), so a commit
            // never waits for one to copy pages and sync the file.
            writer.pragma_update(None, "wal_autocheckpoint", 0)?;
            let checkpoints = open(&path, false)?;
            let readers = (0..readers)
                .map(|_| open(&path, true).map(Mutex::new))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, StoreError>((readers, writer, checkpoints))
        })
        .await
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", file.display())))??;
        let (jobs, queue) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("switchyard-sqlite-writer".into())
            .spawn(move || write_loop(writer, queue))
            .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?;
        let (checkpointer, stop) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("switchyard-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoints, stop))
            .map_err(|e| StoreError::Backend(format!("starting the checkpoint thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                readers,
                next_reader: AtomicUsize::new(0),
                writer: jobs,
                _checkpointer: checkpointer,
            }),
        })
    }

    /// Runs `read` on a free reader connection, in this task.
    fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let readers = &self.inner.readers;
        let start = self.inner.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..readers.len() {
            if let Ok(conn) = readers[(start + i) % readers.len()].try_lock() {
                return read(&conn);
            }
        }
        // All busy (more threads than readers): wait for one. A panic in a
        // read leaves the connection usable, so a poisoned lock is fine.
        let conn = readers[start % readers.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        read(&conn)
    }

    /// Runs `write` on the writer thread, alone in its own transaction.
    async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Run(Box::new(move |conn: &mut Connection| {
            let result = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let value = write(&tx)?;
                tx.commit()?;
                Ok(value)
            })();
            let _ = reply.send(result);
        }));
        self.inner.writer.send(job).map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
    }

    pub async fn get(
        &self,
        module: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<Document>, StoreError> {
        self.read(|conn| {
            let row = conn
                .prepare_cached(
                    "SELECT value, version FROM documents
                     WHERE module = ?1 AND collection = ?2 AND key = ?3",
                )?
                .query_row(params![module, collection, key], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .optional()?;
            row.map(|(value, version)| document(value, version))
                .transpose()
        })
    }

    pub async fn scan(
        &self,
        module: &str,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<(String, Document)>, StoreError> {
        self.read(|conn| {
            // Keys sharing a prefix are contiguous in byte order, starting at
            // the prefix itself: read from there and stop at the first
            // non-match.
            let mut statement = conn.prepare_cached(
                "SELECT key, value, version FROM documents
                 WHERE module = ?1 AND collection = ?2 AND key >= ?3 ORDER BY key LIMIT ?4",
            )?;
            let mut rows = statement.query(params![module, collection, prefix, limit])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let key: String = row.get(0)?;
                if !key.starts_with(prefix) {
                    break;
                }
                out.push((key, document(row.get(1)?, row.get(2)?)?));
            }
            Ok(out)
        })
    }

    pub async fn inbox_answer(
        &self,
        module: &str,
        message_id: &str,
    ) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT answer FROM inbox WHERE module = ?1 AND message_id = ?2")?
                .query_row(params![module, message_id], |row| row.get(0))
                .optional()?)
        })
    }

    pub async fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let owned = Box::new(OwnedCommit {
            module: commit.module.to_string(),
            message_id: commit.message_id.to_string(),
            answer: commit.answer.to_string(),
            writes: commit.writes.to_vec(),
            events: commit.events.to_vec(),
        });
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(Job::Commit(owned, reply))
            .map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    pub async fn append(&self, envelopes: &[Envelope], source: &str) -> Result<(), StoreError> {
        let envelopes = envelopes.to_vec();
        let source = source.to_string();
        self.write(move |tx| {
            let now = now_rfc3339();
            for envelope in &envelopes {
                insert_log(tx, envelope, &source, &now)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn record_failure(
        &self,
        dead_letter: Option<&DeadLetter>,
        failure_event: Option<&Envelope>,
    ) -> Result<(), StoreError> {
        let dead_letter = dead_letter.cloned();
        let failure_event = failure_event.cloned();
        self.write(move |tx| {
            let now = now_rfc3339();
            if let Some(d) = &dead_letter {
                tx.prepare_cached(
                    "INSERT INTO dead_letters
                       (id, module, message_id, topic, subtopic, envelope, error_kind,
                        error_message, attempts, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (module, message_id) DO UPDATE SET
                       error_kind = excluded.error_kind, error_message = excluded.error_message,
                       attempts = excluded.attempts, created_at = excluded.created_at,
                       replayed_at = NULL",
                )?
                .execute(params![
                    d.id,
                    d.module,
                    d.message_id,
                    d.topic,
                    d.subtopic,
                    d.envelope.to_string(),
                    d.error_kind,
                    d.error_message,
                    d.attempts,
                    now
                ])?;
            }
            if let Some(event) = &failure_event {
                insert_log(tx, event, "switchyard", &now)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn read_log(
        &self,
        after: i64,
        topics: &[String],
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError> {
        if topics.is_empty() {
            return Ok(Vec::new());
        }
        let topics =
            serde_json::to_string(topics).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT seq, id, topic, subtopic, headers, body FROM outbox
                 WHERE seq > ?1 AND topic IN (SELECT value FROM json_each(?2))
                 ORDER BY seq LIMIT ?3",
            )?;
            let rows = statement.query(params![after, topics, limit])?;
            log_entries(rows)
        })
    }

    pub async fn unpublished(&self, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT seq, id, topic, subtopic, headers, body FROM outbox
                 WHERE published_at IS NULL ORDER BY seq LIMIT ?1",
            )?;
            let rows = statement.query(params![limit])?;
            log_entries(rows)
        })
    }

    pub async fn mark_published(&self, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs = serde_json::to_string(seqs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE outbox SET published_at = ?1 WHERE seq IN (SELECT value FROM json_each(?2))",
            )?
            .execute(params![now_rfc3339(), seqs])?;
            Ok(())
        })
        .await
    }

    pub async fn prune_inbox(&self, age: Duration, limit: u32) -> Result<u64, StoreError> {
        let cutoff = cutoff(age)?;
        self.write(move |tx| {
            let deleted = tx
                .prepare_cached(
                    "DELETE FROM inbox WHERE (module, message_id) IN
                       (SELECT module, message_id FROM inbox WHERE created_at < ?1 LIMIT ?2)",
                )?
                .execute(params![cutoff, limit])?;
            Ok(deleted as u64)
        })
        .await
    }

    pub async fn prune_outbox(
        &self,
        age: Duration,
        limit: u32,
        readers: &super::OutboxReaders,
    ) -> Result<u64, StoreError> {
        let cutoff = cutoff(age)?;
        let positions = readers.positions_json()?;
        self.write(move |tx| {
            let deleted = match positions {
                None => tx
                    .prepare_cached(
                        "DELETE FROM outbox WHERE seq IN
                           (SELECT seq FROM outbox
                            WHERE created_at < ?1 AND published_at IS NOT NULL
                            ORDER BY seq LIMIT ?2)",
                    )?
                    .execute(params![cutoff, limit])?,
                Some(positions) => tx
                    .prepare_cached(
                        "DELETE FROM outbox WHERE seq IN
                           (SELECT o.seq FROM outbox o
                            LEFT JOIN json_each(?3) r ON r.key = o.topic
                            WHERE o.created_at < ?1 AND (r.value IS NULL OR o.seq <= r.value)
                            ORDER BY o.seq LIMIT ?2)",
                    )?
                    .execute(params![cutoff, limit, positions])?,
            };
            Ok(deleted as u64)
        })
        .await
    }

    pub async fn cursor(&self, consumer: &str) -> Result<i64, StoreError> {
        let consumer = consumer.to_string();
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO log_cursors (consumer, position)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) FROM outbox)) ON CONFLICT DO NOTHING",
            )?
            .execute(params![consumer])?;
            Ok(tx
                .prepare_cached("SELECT position FROM log_cursors WHERE consumer = ?1")?
                .query_row(params![consumer], |row| row.get(0))?)
        })
        .await
    }

    pub async fn set_cursor(&self, consumer: &str, position: i64) -> Result<(), StoreError> {
        let consumer = consumer.to_string();
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO log_cursors (consumer, position) VALUES (?1, ?2)
                 ON CONFLICT (consumer) DO UPDATE SET position = MAX(position, excluded.position)",
            )?
            .execute(params![consumer, position])?;
            Ok(())
        })
        .await
    }

    pub async fn dead_letters(
        &self,
        topic: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT * FROM dead_letters WHERE (?1 IS NULL OR topic = ?1)
                 ORDER BY created_at DESC LIMIT ?2",
            )?;
            dead_letter_rows(statement.query(params![topic, limit])?)
        })
    }

    pub async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached("SELECT * FROM dead_letters WHERE id = ?1")?;
            let mut rows = statement.query(params![id])?;
            rows.next()?.map(dead_letter).transpose()
        })
    }

    pub async fn mark_replayed(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(move |tx| {
            tx.prepare_cached("UPDATE dead_letters SET replayed_at = ?1 WHERE id = ?2")?
                .execute(params![now_rfc3339(), id])?;
            Ok(())
        })
        .await
    }

    // Reads for operators (GET /v1/messages/{id}, /metrics, dlq replay).

    pub async fn inbox_records(
        &self,
        message_id: &str,
        modules: &[String],
    ) -> Result<Vec<super::InboxRecord>, StoreError> {
        let modules =
            serde_json::to_string(modules).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT module, answer, created_at FROM inbox
                 WHERE module IN (SELECT value FROM json_each(?1)) AND message_id = ?2
                 ORDER BY module",
            )?;
            let mut rows = statement.query(params![modules, message_id])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(super::InboxRecord {
                    module: row.get(0)?,
                    answer: row.get(1)?,
                    created_at: row.get(2)?,
                });
            }
            Ok(out)
        })
    }

    pub async fn dead_letters_of(
        &self,
        message_id: &str,
        modules: &[String],
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let modules =
            serde_json::to_string(modules).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT * FROM dead_letters
                 WHERE module IN (SELECT value FROM json_each(?1)) AND message_id = ?2
                 ORDER BY module",
            )?;
            dead_letter_rows(statement.query(params![modules, message_id])?)
        })
    }

    pub async fn outbox_records(
        &self,
        ids: &[String],
    ) -> Result<Vec<super::OutboxRecord>, StoreError> {
        let ids = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT seq, id, topic, subtopic, headers, body, source, created_at, published_at
                 FROM outbox WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY seq",
            )?;
            let mut rows = statement.query(params![ids])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(super::OutboxRecord {
                    envelope: log_entry(row)?.envelope,
                    seq: row.get(0)?,
                    source: row.get(6)?,
                    created_at: row.get(7)?,
                    published_at: row.get(8)?,
                });
            }
            Ok(out)
        })
    }

    pub async fn outbox_backlog(&self) -> Result<super::OutboxBacklog, StoreError> {
        let (entries, oldest) = self.read(|conn| {
            let entries: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")?
                .query_row([], |row| row.get(0))?;
            let oldest: Option<String> = conn
                .prepare_cached(
                    "SELECT created_at FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT 1",
                )?
                .query_row([], |row| row.get(0))
                .optional()?;
            Ok((entries, oldest))
        })?;
        let oldest_age = match oldest {
            Some(text) => {
                let at = time::OffsetDateTime::parse(
                    &text,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|e| StoreError::Corrupt(format!("outbox created_at {text:?}: {e}")))?;
                let age = time::OffsetDateTime::now_utc() - at;
                Some(std::time::Duration::try_from(age).unwrap_or_default())
            }
            None => None,
        };
        Ok(super::OutboxBacklog {
            entries: u64::try_from(entries).unwrap_or(0),
            oldest_age,
        })
    }

    pub async fn log_lag(
        &self,
        consumer: &str,
        topics: &[String],
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let list = serde_json::to_string(topics).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let counted = self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT topic, COUNT(*) FROM outbox
                 WHERE seq > COALESCE((SELECT position FROM log_cursors WHERE consumer = ?1),
                                      9223372036854775807)
                   AND topic IN (SELECT value FROM json_each(?2))
                 GROUP BY topic",
            )?;
            let mut rows = statement.query(params![consumer, list])?;
            let mut out: Vec<(String, i64)> = Vec::new();
            while let Some(row) = rows.next()? {
                out.push((row.get(0)?, row.get(1)?));
            }
            Ok(out)
        })?;
        Ok(super::lag_per_topic(topics, counted))
    }

    pub async fn unreplayed_dead_letters(
        &self,
        topic: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT * FROM dead_letters WHERE topic = ?1 AND replayed_at IS NULL
                 ORDER BY created_at, id LIMIT ?2",
            )?;
            dead_letter_rows(statement.query(params![topic, limit])?)
        })
    }
}

/// `age` before now, as the RFC 3339 text the tables hold.
fn cutoff(age: Duration) -> Result<String, StoreError> {
    let at = time::OffsetDateTime::now_utc()
        .checked_sub(time::Duration::try_from(age).unwrap_or(time::Duration::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| StoreError::Corrupt(format!("cutoff time: {e}")))
}

fn writer_gone() -> StoreError {
    StoreError::Backend("the SQLite writer thread has stopped".into())
}

/// Creates or upgrades the schema, and switches the file to WAL, with sqlx's
/// migrator; then lets the connection go.
async fn migrate(options: SqliteConnectOptions) -> Result<(), StoreError> {
    // Another program holding the database may still answer "locked" at once
    // to these steps (they cannot wait on the busy timeout).
    let mut attempt = 0u32;
    loop {
        let migrated = async {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            sqlx::migrate!("../../migrations/sqlite").run(&pool).await?;
            pool.close().await;
            Ok::<_, StoreError>(())
        };
        match migrated.await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 50 && e.to_string().contains("database is locked") => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 + u64::from(attempt) * 10)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn open(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    // Readers open read-write too: a read-only connection cannot create the
    // WAL index if the writer has not yet, and only `read` ever uses them.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    if read_only {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // NORMAL in WAL mode: a commit survives a crash of the process; only a
    // power loss may take back the last commits (never corrupt the file).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Savepoints' sub-journals in memory, not in temporary files.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The checkpoint thread: every `CHECKPOINT_EVERY`, copies what the WAL holds
/// into the database file without waiting for readers or the writer
/// (PASSIVE), until the store is dropped.
fn checkpoint_loop(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY)
    {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "WAL checkpoint");
        }
    }
}

/// The writer thread: takes jobs until every handle to the store is gone.
fn write_loop(mut conn: Connection, mut queue: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = queue.blocking_recv() {
        match job {
            Job::Run(write) => write(&mut conn),
            Job::Commit(first, reply) => {
                // Other writes queued among the units (a cursor, a relay's
                // marks) come from other callers, each waiting for its own
                // reply: they run after the group instead of splitting it.
                let mut group = vec![(first, reply)];
                let mut after = Vec::new();
                while group.len() < MAX_GROUP {
                    match queue.try_recv() {
                        Ok(Job::Commit(commit, reply)) => group.push((commit, reply)),
                        Ok(Job::Run(write)) => after.push(write),
                        Err(_) => break,
                    }
                }
                commit_group(&mut conn, group);
                for write in after {
                    write(&mut conn);
                }
            }
        }
    }
}

/// Commits a group of units of work in one transaction, each all-or-nothing,
/// and tells each waiter how its own unit ended.
fn commit_group(conn: &mut Connection, group: Vec<(Box<OwnedCommit>, Reply)>) {
    let now = now_rfc3339();
    let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(group.len());
    let committed = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let [(only, _)] = group.as_slice() {
            // Alone: the transaction itself is the unit; a failure rolls it back.
            let result = apply(&tx, only, &now);
            let ok = result.is_ok();
            results.push(result);
            if ok {
                tx.commit()?;
            }
            return Ok(());
        }
        // Most groups have no conflict and no duplicate: apply them all
        // without savepoints (a savepoint copies every page it touches to a
        // sub-journal). If one fails, roll the whole group back and apply it
        // again, each unit in its own savepoint.
        let failed = group
            .iter()
            .find_map(|(commit, _)| apply(&tx, commit, &now).err());
        let Some(failed) = failed else {
            results.resize_with(group.len(), || Ok(()));
            return tx.commit();
        };
        tracing::debug!(units = group.len(), first_failure = %failed, "group commit: a unit failed; applying each in a savepoint");
        tx.rollback()?;
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (commit, _) in &group {
            let savepoint = tx.savepoint()?;
            let result = apply(&savepoint, commit, &now);
            if result.is_ok() {
                savepoint.commit()?;
            }
            // Dropping an uncommitted savepoint rolls back to it.
            results.push(result);
        }
        tx.commit()
    })();
    if let Err(e) = committed {
        // The transaction as a whole failed: nothing of the group is stored.
        let message = e.to_string();
        tracing::warn!(error = %message, units = group.len(), "group commit failed");
        results.clear();
        results.resize_with(group.len(), || {
            Err(StoreError::Backend(format!("commit: {message}")))
        });
    }
    for ((_, reply), result) in group.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

/// The statements of one unit of work: inbox row (a duplicate stops here),
/// the writes against their base versions, then the events.
fn apply(conn: &Connection, commit: &OwnedCommit, now: &str) -> Result<(), StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO inbox (module, message_id, answer, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            commit.module,
            commit.message_id,
            commit.answer,
            now
        ])?;
    if inserted == 0 {
        return Err(StoreError::Duplicate);
    }
    for write in &commit.writes {
        let applied = match write {
            Write::Put {
                collection,
                key,
                value,
                base_version: 0,
            } => conn
                .prepare_cached(
                    "INSERT INTO documents (module, collection, key, value, version, updated_at)
                     VALUES (?1, ?2, ?3, ?4, 1, ?5) ON CONFLICT DO NOTHING",
                )?
                .execute(params![commit.module, collection, key, value, now])?,
            Write::Put {
                collection,
                key,
                value,
                base_version,
            } => conn
                .prepare_cached(
                    "UPDATE documents SET value = ?1, version = version + 1, updated_at = ?2
                     WHERE module = ?3 AND collection = ?4 AND key = ?5 AND version = ?6",
                )?
                .execute(params![
                    value,
                    now,
                    commit.module,
                    collection,
                    key,
                    version_param(*base_version)?
                ])?,
            Write::Delete {
                collection,
                key,
                base_version,
            } => conn
                .prepare_cached(
                    "DELETE FROM documents
                     WHERE module = ?1 AND collection = ?2 AND key = ?3 AND version = ?4",
                )?
                .execute(params![
                    commit.module,
                    collection,
                    key,
                    version_param(*base_version)?
                ])?,
        };
        if applied != 1 {
            let (Write::Put {
                collection, key, ..
            }
            | Write::Delete {
                collection, key, ..
            }) = write;
            return Err(StoreError::Conflict {
                collection: collection.clone(),
                key: key.clone(),
            });
        }
    }
    for event in &commit.events {
        insert_log(conn, event, &commit.module, now)?;
    }
    Ok(())
}

/// Holds an exclusive lock on `<database>.lock` until dropped.
async fn lock_beside(database: &Path) -> Result<std::fs::File, StoreError> {
    let mut path = database.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| StoreError::Backend(format!("lock task: {e}")))?
    .map_err(|e| StoreError::Backend(format!("locking {shown}: {e}")))
}

fn insert_log(
    conn: &Connection,
    envelope: &Envelope,
    source: &str,
    now: &str,
) -> Result<(), StoreError> {
    let headers =
        serde_json::to_string(&envelope.headers).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO outbox (id, topic, subtopic, headers, body, source, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
    )?
    .execute(params![
        envelope.id,
        envelope.topic,
        envelope.subtopic,
        headers,
        envelope.body_text(),
        source,
        now
    ])?;
    Ok(())
}

fn log_entries(mut rows: rusqlite::Rows<'_>) -> Result<Vec<LogEntry>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(log_entry(row)?);
    }
    Ok(out)
}

/// An outbox row whose first six columns are seq, id, topic, subtopic,
/// headers and body.
fn log_entry(row: &rusqlite::Row<'_>) -> Result<LogEntry, StoreError> {
    let headers: String = row.get(4)?;
    let body: String = row.get(5)?;
    let headers = serde_json::from_str(&headers)
        .map_err(|e| StoreError::Corrupt(format!("outbox headers: {e}")))?;
    let envelope = Envelope::new(row.get(1)?, row.get(2)?, row.get(3)?, headers, &body)
        .map_err(|e| StoreError::Corrupt(format!("outbox entry: {e}")))?;
    Ok(LogEntry {
        seq: row.get(0)?,
        envelope,
    })
}

fn dead_letter_rows(mut rows: rusqlite::Rows<'_>) -> Result<Vec<DeadLetter>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(dead_letter(row)?);
    }
    Ok(out)
}

fn version_param(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::Corrupt(format!("version {version} out of range")))
}

fn document(value: String, version: i64) -> Result<Document, StoreError> {
    Ok(Document {
        value,
        version: u64::try_from(version)
            .map_err(|_| StoreError::Corrupt(format!("negative version {version}")))?,
    })
}

fn dead_letter(row: &rusqlite::Row<'_>) -> Result<DeadLetter, StoreError> {
    let envelope: String = row.get("envelope")?;
    let attempts: i64 = row.get("attempts")?;
    Ok(DeadLetter {
        id: row.get("id")?,
        module: row.get("module")?,
        message_id: row.get("message_id")?,
        topic: row.get("topic")?,
        subtopic: row.get("subtopic")?,
        envelope: serde_json::from_str(&envelope)
            .map_err(|e| StoreError::Corrupt(format!("dead letter: {e}")))?,
        error_kind: row.get("error_kind")?,
        error_message: row.get("error_message")?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        created_at: row.get("created_at")?,
        replayed_at: row.get("replayed_at")?,
    })
}
