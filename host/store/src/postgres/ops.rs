//! Dead letters, operators' reads (where a message is, backlog, lag) and
//! retention pruning.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgRow;

use switchyard_model::envelope::Envelope;

use super::PostgresStore;
use super::outbox::log_entry;
use crate::{DeadLetter, StoreError};

/// Renders a timestamp the way the SQLite store stores it (RFC 3339, UTC).
const RFC3339: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"#;

/// Whether PostgreSQL refused a value (SQLSTATE class 22, data exception:
/// e.g. a NUL character, which neither `text` nor `jsonb` can hold).
fn refused_value(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Database(sqlx::Error::Database(db))
            if db.code().is_some_and(|c| c.starts_with("22"))
    )
}

/// `text` with each NUL character replaced by U+FFFD.
fn nul_free(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// `value` with each NUL character in its strings and keys replaced by U+FFFD.
fn nul_free_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(nul_free(s)),
        Value::Array(items) => Value::Array(items.iter().map(nul_free_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (nul_free(k), nul_free_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl PostgresStore {
    /// Records a dead letter and a failure event together. A message that
    /// PostgreSQL cannot hold as it is (a NUL character in its envelope or
    /// error text) is recorded with each NUL replaced by U+FFFD: refusing it
    /// would leave the failure unrecorded and the message redelivered for
    /// ever.
    pub async fn record_failure(
        &self,
        dead_letter: Option<&DeadLetter>,
        failure_event: Option<&Envelope>,
    ) -> Result<(), StoreError> {
        match self.record_failure_as_is(dead_letter, failure_event).await {
            Err(e) if refused_value(&e) => {
                let letter = dead_letter.map(|d| DeadLetter {
                    envelope: nul_free_json(&d.envelope),
                    error_message: nul_free(&d.error_message),
                    ..d.clone()
                });
                let event = failure_event.map(|e| Envelope {
                    headers: e
                        .headers
                        .iter()
                        .map(|(k, v)| (nul_free(k), nul_free(v)))
                        .collect(),
                    ..e.clone()
                });
                self.record_failure_as_is(letter.as_ref(), event.as_ref())
                    .await
            }
            result => result,
        }
    }

    async fn record_failure_as_is(
        &self,
        dead_letter: Option<&DeadLetter>,
        failure_event: Option<&Envelope>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(d) = dead_letter {
            sqlx::query(
                "INSERT INTO dead_letters
                   (id, module, message_id, topic, subtopic, envelope, error_kind, error_message, attempts, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, now())
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
            .bind(i32::try_from(d.attempts).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        }
        if let Some(event) = failure_event {
            self.insert_log(&mut tx, std::slice::from_ref(event), "switchyard")
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn dead_letters(
        &self,
        topic: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let sql = format!(
            "{} WHERE ($1::text IS NULL OR topic = $1) ORDER BY created_at DESC LIMIT $2",
            dead_letter_select()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(topic)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(dead_letter).collect()
    }

    pub async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let sql = format!("{} WHERE id = $1", dead_letter_select());
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(dead_letter).transpose()
    }

    pub async fn mark_replayed(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE dead_letters SET replayed_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn prune_inbox(&self, age: Duration, limit: u32) -> Result<u64, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM inbox WHERE (module, message_id) IN
               (SELECT module, message_id FROM inbox
                WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
        )
        .bind(age.as_secs_f64())
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    pub async fn prune_outbox(
        &self,
        age: Duration,
        limit: u32,
        readers: &crate::OutboxReaders,
    ) -> Result<u64, StoreError> {
        // SKIP LOCKED: rows a relay holds in its claim are someone's work now.
        let positions = readers.positions_json()?;
        let sql = match positions {
            None => {
                "DELETE FROM outbox WHERE seq IN
                   (SELECT seq FROM outbox
                    WHERE created_at < now() - make_interval(secs => $1)
                      AND published_at IS NOT NULL
                    ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
            Some(_) => {
                "DELETE FROM outbox WHERE seq IN
                   (SELECT o.seq FROM outbox o
                    LEFT JOIN jsonb_each_text($3::jsonb) r ON r.key = o.topic
                    WHERE o.created_at < now() - make_interval(secs => $1)
                      AND (r.value IS NULL OR o.seq <= r.value::bigint)
                    ORDER BY o.seq LIMIT $2 FOR UPDATE OF o SKIP LOCKED)"
            }
        };
        let mut query = sqlx::query(sql)
            .bind(age.as_secs_f64())
            .bind(i64::from(limit));
        if let Some(positions) = positions {
            query = query.bind(positions);
        }
        let deleted = query.execute(&self.pool).await?;
        Ok(deleted.rows_affected())
    }

    // Reads for operators (GET /v1/messages/{id}, /metrics, dlq replay).

    pub async fn inbox_records(
        &self,
        message_id: &str,
        modules: &[String],
    ) -> Result<Vec<crate::InboxRecord>, StoreError> {
        let sql = format!(
            "SELECT module, answer, to_char(created_at AT TIME ZONE 'UTC', {RFC3339}) AS created_at
             FROM inbox WHERE module = ANY($1) AND message_id = $2 ORDER BY module"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(modules)
            .bind(message_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(crate::InboxRecord {
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
        let sql = format!(
            "{} WHERE module = ANY($1) AND message_id = $2 ORDER BY module",
            dead_letter_select()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(modules)
            .bind(message_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(dead_letter).collect()
    }

    pub async fn outbox_records(
        &self,
        ids: &[String],
    ) -> Result<Vec<crate::OutboxRecord>, StoreError> {
        let sql = format!(
            "SELECT seq, id, topic, subtopic, headers::text AS headers, body, source,
                    to_char(created_at AT TIME ZONE 'UTC', {RFC3339}) AS created_at,
                    to_char(published_at AT TIME ZONE 'UTC', {RFC3339}) AS published_at
             FROM outbox WHERE id = ANY($1) ORDER BY seq"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(crate::OutboxRecord {
                    envelope: log_entry(r)?.envelope,
                    seq: r.try_get("seq")?,
                    source: r.try_get("source")?,
                    created_at: r.try_get("created_at")?,
                    published_at: r.try_get("published_at")?,
                })
            })
            .collect()
    }

    pub async fn outbox_backlog(&self) -> Result<crate::OutboxBacklog, StoreError> {
        let (entries, oldest_seconds): (i64, Option<f64>) = sqlx::query_as(
            "SELECT COUNT(*), EXTRACT(EPOCH FROM now() - MIN(created_at))::float8
             FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(crate::OutboxBacklog {
            entries: u64::try_from(entries).unwrap_or(0),
            oldest_age: oldest_seconds
                .map(|s| std::time::Duration::try_from_secs_f64(s.max(0.0)).unwrap_or_default()),
        })
    }

    pub async fn log_lag(
        &self,
        consumer: &str,
        topics: &[String],
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let counted: Vec<(String, i64)> = sqlx::query_as(
            "SELECT topic, COUNT(*) FROM outbox
             WHERE seq > COALESCE((SELECT position FROM log_cursors WHERE consumer = $1),
                                  9223372036854775807)
               AND topic = ANY($2)
             GROUP BY topic",
        )
        .bind(consumer)
        .bind(topics)
        .fetch_all(&self.pool)
        .await?;
        Ok(crate::lag_per_topic(topics, counted))
    }

    pub async fn unreplayed_dead_letters(
        &self,
        topic: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let sql = format!(
            "{} WHERE topic = $1 AND replayed_at IS NULL ORDER BY created_at, id LIMIT $2",
            dead_letter_select()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(topic)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(dead_letter).collect()
    }
}

fn dead_letter_select() -> String {
    format!(
        "SELECT id, module, message_id, topic, subtopic, envelope::text AS envelope,
                error_kind, error_message, attempts,
                to_char(created_at AT TIME ZONE 'UTC', {RFC3339}) AS created_at,
                to_char(replayed_at AT TIME ZONE 'UTC', {RFC3339}) AS replayed_at
         FROM dead_letters"
    )
}

fn dead_letter(row: &PgRow) -> Result<DeadLetter, StoreError> {
    let envelope: String = row.try_get("envelope")?;
    let attempts: i32 = row.try_get("attempts")?;
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
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_at: row.try_get("created_at")?,
        replayed_at: row.try_get("replayed_at")?,
    })
}
