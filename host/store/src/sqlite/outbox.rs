//! The outbox: appends, reading it as the embedded log, consumers' cursors,
//! and the relay's queue of entries not yet handed to the broker.

use rusqlite::{Connection, params};

use switchyard_model::envelope::{Envelope, now_rfc3339};

use super::SqliteStore;
use crate::{LogEntry, StoreError};

impl SqliteStore {
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
}

pub(super) fn insert_log(
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
pub(super) fn log_entry(row: &rusqlite::Row<'_>) -> Result<LogEntry, StoreError> {
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
