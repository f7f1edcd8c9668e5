//! The embedded default store: one SQLite file in WAL mode.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{Commit, DeadLetter, Document, LogEntry, StoreError, Write};
use crate::envelope::{Envelope, now_rfc3339};

/// Pool size when `host.max-connections` is not set: readers run in
/// parallel in WAL mode; writes are serialised anyway.
const MAX_CONNECTIONS: u32 = 8;
/// How long a statement waits for SQLite's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite has one writer. Taking this before `BEGIN IMMEDIATE` queues
    /// writers in the host (fair, async) instead of in SQLite's busy loop.
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl SqliteStore {
    pub async fn connect(url: &str, max_connections: Option<u32>) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // Two hosts starting on one file would race to switch it to WAL and
        // to migrate it (sqlx takes no lock for SQLite migrations): an
        // exclusive file lock beside the database makes them take turns.
        let _turn = lock_beside(options.get_filename()).await?;
        // Another program holding the database may still answer "locked" at
        // once to these steps (they cannot wait on the busy timeout).
        let mut attempt = 0u32;
        let pool = loop {
            let opened = async {
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections.unwrap_or(MAX_CONNECTIONS))
                    // A local file does not drop connections; a ping per
                    // acquire would add a round trip to every statement.
                    .test_before_acquire(false)
                    .connect_with(options.clone())
                    .await?;
                sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
                Ok::<_, StoreError>(pool)
            };
            match opened.await {
                Ok(pool) => break pool,
                Err(e) if attempt < 50 && e.to_string().contains("database is locked") => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 + u64::from(attempt) * 10)).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Self {
            pool,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn get(
        &self,
        module: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<Document>, StoreError> {
        let row = sqlx::query(
            "SELECT value, version FROM documents WHERE module = ? AND collection = ? AND key = ?",
        )
        .bind(module)
        .bind(collection)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| document(&r)).transpose()
    }

    pub async fn scan(
        &self,
        module: &str,
        collection: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<(String, Document)>, StoreError> {
        // Keys sharing a prefix are contiguous in byte order, starting at the
        // prefix itself: read from there and stop at the first non-match.
        let rows = sqlx::query(
            "SELECT key, value, version FROM documents
             WHERE module = ? AND collection = ? AND key >= ? ORDER BY key LIMIT ?",
        )
        .bind(module)
        .bind(collection)
        .bind(prefix)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let key: String = row.try_get("key")?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key, document(&row)?));
        }
        Ok(out)
    }

    pub async fn inbox_answer(
        &self,
        module: &str,
        message_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let answer =
            sqlx::query_scalar("SELECT answer FROM inbox WHERE module = ? AND message_id = ?")
                .bind(module)
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(answer)
    }

    pub async fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_rfc3339();
        let inserted = sqlx::query(
            "INSERT INTO inbox (module, message_id, answer, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(commit.module)
        .bind(commit.message_id)
        .bind(commit.answer)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Duplicate);
        }
        for write in commit.writes {
            let applied = match write {
                Write::Put { collection, key, value, base_version: 0 } => sqlx::query(
                    "INSERT INTO documents (module, collection, key, value, version, updated_at)
                     VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT DO NOTHING",
                )
                .bind(commit.module)
                .bind(collection)
                .bind(key)
                .bind(value)
                .bind(&now)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Write::Put { collection, key, value, base_version } => sqlx::query(
                    "UPDATE documents SET value = ?, version = version + 1, updated_at = ?
                     WHERE module = ? AND collection = ? AND key = ? AND version = ?",
                )
                .bind(value)
                .bind(&now)
                .bind(commit.module)
                .bind(collection)
                .bind(key)
                .bind(version_param(*base_version)?)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Write::Delete { collection, key, base_version } => sqlx::query(
                    "DELETE FROM documents WHERE module = ? AND collection = ? AND key = ? AND version = ?",
                )
                .bind(commit.module)
                .bind(collection)
                .bind(key)
                .bind(version_param(*base_version)?)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            };
            if applied != 1 {
                let (collection, key) = match write {
                    Write::Put {
                        collection, key, ..
                    }
                    | Write::Delete {
                        collection, key, ..
                    } => (collection, key),
                };
                return Err(StoreError::Conflict {
                    collection: collection.clone(),
                    key: key.clone(),
                });
            }
        }
        for event in commit.events {
            insert_log(&mut tx, event, commit.module, &now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn append(&self, envelopes: &[Envelope], source: &str) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_rfc3339();
        for envelope in envelopes {
            insert_log(&mut tx, envelope, source, &now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn record_failure(
        &self,
        dead_letter: Option<&DeadLetter>,
        failure_event: Option<&Envelope>,
    ) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_rfc3339();
        if let Some(d) = dead_letter {
            sqlx::query(
                "INSERT INTO dead_letters
                   (id, module, message_id, topic, subtopic, envelope, error_kind, error_message, attempts, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (module, message_id) DO UPDATE SET
                   error_kind = excluded.error_kind, error_message = excluded.error_message,
                   attempts = excluded.attempts, created_at = excluded.created_at, replayed_at = NULL",
            )
            .bind(&d.id)
            .bind(&d.module)
            .bind(&d.message_id)
            .bind(&d.topic)
            .bind(&d.subtopic)
            .bind(d.envelope.to_string())
            .bind(&d.error_kind)
            .bind(&d.error_message)
            .bind(i64::from(d.attempts))
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(event) = failure_event {
            insert_log(&mut tx, event, "switchyard", &now).await?;
        }
        tx.commit().await?;
        Ok(())
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
        let rows = sqlx::query(
            "SELECT seq, id, topic, subtopic, headers, body FROM outbox
             WHERE seq > ? AND topic IN (SELECT value FROM json_each(?)) ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(topics)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(log_entry).collect()
    }

    pub async fn unpublished(&self, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, id, topic, subtopic, headers, body FROM outbox
             WHERE published_at IS NULL ORDER BY seq LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(log_entry).collect()
    }

    pub async fn mark_published(&self, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs = serde_json::to_string(seqs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let _writer = self.write_lock.lock().await;
        sqlx::query(
            "UPDATE outbox SET published_at = ? WHERE seq IN (SELECT value FROM json_each(?))",
        )
        .bind(now_rfc3339())
        .bind(seqs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn cursor(&self, consumer: &str) -> Result<i64, StoreError> {
        let _writer = self.write_lock.lock().await;
        sqlx::query(
            "INSERT INTO log_cursors (consumer, position)
             VALUES (?, (SELECT COALESCE(MAX(seq), 0) FROM outbox)) ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .execute(&self.pool)
        .await?;
        let position = sqlx::query_scalar("SELECT position FROM log_cursors WHERE consumer = ?")
            .bind(consumer)
            .fetch_one(&self.pool)
            .await?;
        Ok(position)
    }

    pub async fn set_cursor(&self, consumer: &str, position: i64) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().await;
        sqlx::query(
            "INSERT INTO log_cursors (consumer, position) VALUES (?, ?)
             ON CONFLICT (consumer) DO UPDATE SET position = MAX(position, excluded.position)",
        )
        .bind(consumer)
        .bind(position)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn dead_letters(
        &self,
        topic: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM dead_letters WHERE (?1 IS NULL OR topic = ?1) ORDER BY created_at DESC LIMIT ?2",
        )
        .bind(topic)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dead_letter).collect()
    }

    pub async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let row = sqlx::query("SELECT * FROM dead_letters WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(dead_letter).transpose()
    }

    pub async fn mark_replayed(&self, id: &str) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().await;
        sqlx::query("UPDATE dead_letters SET replayed_at = ? WHERE id = ?")
            .bind(now_rfc3339())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // Reads for operators (GET /v1/messages/{id}, /metrics, dlq replay).

    pub async fn inbox_records(
        &self,
        message_id: &str,
        modules: &[String],
    ) -> Result<Vec<super::InboxRecord>, StoreError> {
        let modules =
            serde_json::to_string(modules).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let rows = sqlx::query(
            "SELECT module, answer, created_at FROM inbox
             WHERE module IN (SELECT value FROM json_each(?)) AND message_id = ? ORDER BY module",
        )
        .bind(modules)
        .bind(message_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(super::InboxRecord {
                    module: r.try_get("module")?,
                    answer: r.try_get("answer")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    pub async fn dead_letters_of(
        &self,
        message_id: &str,
        modules: &[String],
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let modules =
            serde_json::to_string(modules).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let rows = sqlx::query(
            "SELECT * FROM dead_letters
             WHERE module IN (SELECT value FROM json_each(?)) AND message_id = ? ORDER BY module",
        )
        .bind(modules)
        .bind(message_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dead_letter).collect()
    }

    pub async fn outbox_records(
        &self,
        ids: &[String],
    ) -> Result<Vec<super::OutboxRecord>, StoreError> {
        let ids = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let rows = sqlx::query(
            "SELECT seq, id, topic, subtopic, headers, body, source, created_at, published_at
             FROM outbox WHERE id IN (SELECT value FROM json_each(?)) ORDER BY seq",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(super::OutboxRecord {
                    envelope: log_entry(r)?.envelope,
                    seq: r.try_get("seq")?,
                    source: r.try_get("source")?,
                    created_at: r.try_get("created_at")?,
                    published_at: r.try_get("published_at")?,
                })
            })
            .collect()
    }

    pub async fn outbox_backlog(&self) -> Result<super::OutboxBacklog, StoreError> {
        let entries: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        let oldest: Option<String> = sqlx::query_scalar(
            "SELECT created_at FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
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
        let counted: Vec<(String, i64)> = sqlx::query_as(
            "SELECT topic, COUNT(*) FROM outbox
             WHERE seq > COALESCE((SELECT position FROM log_cursors WHERE consumer = ?),
                                  9223372036854775807)
               AND topic IN (SELECT value FROM json_each(?))
             GROUP BY topic",
        )
        .bind(consumer)
        .bind(list)
        .fetch_all(&self.pool)
        .await?;
        Ok(super::lag_per_topic(topics, counted))
    }

    pub async fn unreplayed_dead_letters(
        &self,
        topic: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM dead_letters WHERE topic = ? AND replayed_at IS NULL
             ORDER BY created_at, id LIMIT ?",
        )
        .bind(topic)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dead_letter).collect()
    }
}

/// Holds an exclusive lock on `<database>.lock` until dropped.
async fn lock_beside(database: &std::path::Path) -> Result<Option<std::fs::File>, StoreError> {
    if database.as_os_str() == ":memory:" {
        return Ok(None);
    }
    let mut path = database.as_os_str().to_owned();
    path.push(".lock");
    let locked = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| StoreError::Corrupt(format!("lock task: {e}")))?;
    locked
        .map(Some)
        .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))
}

async fn insert_log(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    envelope: &Envelope,
    source: &str,
    now: &str,
) -> Result<(), StoreError> {
    let headers =
        serde_json::to_string(&envelope.headers).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO outbox (id, topic, subtopic, headers, body, source, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&envelope.id)
    .bind(&envelope.topic)
    .bind(&envelope.subtopic)
    .bind(headers)
    .bind(envelope.body_text())
    .bind(source)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn log_entry(row: &sqlx::sqlite::SqliteRow) -> Result<LogEntry, StoreError> {
    let headers: String = row.try_get("headers")?;
    let body: String = row.try_get("body")?;
    let headers = serde_json::from_str(&headers)
        .map_err(|e| StoreError::Corrupt(format!("outbox headers: {e}")))?;
    let envelope = Envelope::new(
        row.try_get("id")?,
        row.try_get("topic")?,
        row.try_get("subtopic")?,
        headers,
        &body,
    )
    .map_err(|e| StoreError::Corrupt(format!("outbox entry: {e}")))?;
    Ok(LogEntry {
        seq: row.try_get("seq")?,
        envelope,
    })
}

fn version_param(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::Corrupt(format!("version {version} out of range")))
}

fn document(row: &sqlx::sqlite::SqliteRow) -> Result<Document, StoreError> {
    let version: i64 = row.try_get("version")?;
    Ok(Document {
        value: row.try_get("value")?,
        version: u64::try_from(version)
            .map_err(|_| StoreError::Corrupt(format!("negative version {version}")))?,
    })
}

fn dead_letter(row: &sqlx::sqlite::SqliteRow) -> Result<DeadLetter, StoreError> {
    let envelope: String = row.try_get("envelope")?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(DeadLetter {
        id: row.try_get("id")?,
        module: row.try_get("module")?,
        message_id: row.try_get("message_id")?,
        topic: row.try_get("topic")?,
        subtopic: row.try_get("subtopic")?,
        envelope: serde_json::from_str(&envelope)
            .map_err(|e| StoreError::Corrupt(format!("dead letter: {e}")))?,
        error_kind: row.try_get("error_kind")?,
        error_message: row.try_get("error_message")?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        created_at: row.try_get("created_at")?,
        replayed_at: row.try_get("replayed_at")?,
    })
}
