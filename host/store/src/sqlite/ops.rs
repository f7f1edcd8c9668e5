//! Dead letters, operators' reads (where a message is, backlog, lag) and
//! retention pruning.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use switchyard_model::envelope::{Envelope, now_rfc3339};

use super::SqliteStore;
use super::outbox::{insert_log, log_entry};
use crate::{DeadLetter, StoreError};

impl SqliteStore {
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
        readers: &crate::OutboxReaders,
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

    // Reads for operators (GET /v1/messages/{id}, /metrics, dlq replay).

    pub async fn inbox_records(
        &self,
        message_id: &str,
        modules: &[String],
    ) -> Result<Vec<crate::InboxRecord>, StoreError> {
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
                out.push(crate::InboxRecord {
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
    ) -> Result<Vec<crate::OutboxRecord>, StoreError> {
        let ids = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT seq, id, topic, subtopic, headers, body, source, created_at, published_at
                 FROM outbox WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY seq",
            )?;
            let mut rows = statement.query(params![ids])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(crate::OutboxRecord {
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

    pub async fn outbox_backlog(&self) -> Result<crate::OutboxBacklog, StoreError> {
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
        Ok(crate::OutboxBacklog {
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
        Ok(crate::lag_per_topic(topics, counted))
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

fn dead_letter_rows(mut rows: rusqlite::Rows<'_>) -> Result<Vec<DeadLetter>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(dead_letter(row)?);
    }
    Ok(out)
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
