//! The shared store: PostgreSQL, for several hosts on one database.
//!
//! Documents are JSONB with a version; a unit of work is one READ COMMITTED
//! transaction whose conditional writes (`WHERE version = base`) turn a
//! concurrent change into [`StoreError::Conflict`], even when the racing
//! writer runs in another host.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::{Commit, DeadLetter, Document, LogEntry, StoreError, StoreOptions, Write};
use switchyard_model::envelope::Envelope;

/// Pool size when `host.max-connections` is not set. A connection is held
/// only for one statement or one commit, never across a module call, so a
/// few connections serve many concurrent handlers.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// How long a caller waits for a free connection (or for the server, when it
/// is down) before the message is left for a retry; short so a dead database
/// shows as "unavailable" quickly instead of stalling every handler.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Advisory lock taken by every transaction that appends to the outbox, held
/// until it commits (`pg_advisory_xact_lock`), when the outbox is read as the
/// embedded log.
///
/// Why: the embedded log's readers move a cursor along `seq`. A sequence hands
/// out values when rows are inserted, not when transactions commit, so without
/// this a transaction could take seq 10, commit after another took and
/// committed seq 11, and a reader that had already passed 11 would never see
/// 10. Holding one lock from the seq assignment to the commit makes seq order
/// commit order: a reader that sees seq N has every committed row below N.
///
/// Chosen over reading only below the oldest running transaction's xmin
/// because that needs a (xid, seq) cursor instead of the plain seq the log
/// API and the SQLite backend share, and it stalls all readers behind any long
/// transaction on the database. The cost: appends of events are serialised
/// from their insert through their commit's WAL flush, so they get no group
/// commit (about 370 commits/s on this machine's disk, 2.7 ms per flush;
/// documents and inbox writes, taken before the lock, still run in parallel).
/// With a broker the outbox is only drained by the relay, which selects
/// `published_at IS NULL` rather than following a cursor and so cannot skip a
/// late row: there the lock is not taken ([`StoreOptions::ordered_log`]).
/// Advisory locks are scoped to the database, so other databases do not contend.
const OUTBOX_LOCK: i64 = 0x5357_5944_4f42_5831; // "SWYDOBX1"

/// Longest a relay may sit in its claim between two statements (that is,
/// in the broker call) before PostgreSQL ends its session and other hosts
/// take the entries over: well above the broker's 5 s command timeout.
const CLAIM_IDLE_LIMIT_MS: u64 = 30_000;

/// Renders a timestamp the way the SQLite store stores it (RFC 3339, UTC).
const RFC3339: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"#;

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Take [`OUTBOX_LOCK`] on appends (the outbox is the embedded log).
    ordered_log: bool,
}

impl PostgresStore {
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url)?.application_name("switchyard");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(connect)
            .await?;
        // sqlx takes an advisory lock around migrations, so hosts starting
        // together on a fresh database migrate it once.
        sqlx::migrate!("../../migrations/postgres")
            .run(&pool)
            .await?;
        Ok(Self {
            pool,
            ordered_log: options.ordered_log,
        })
    }

    /// The pool, for tests that look at the database as an operator would.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
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
            "SELECT value::text AS value, version FROM documents
             WHERE module = $1 AND collection = $2 AND key = $3",
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
        // `key` is COLLATE "C": keys sharing a prefix are contiguous from the
        // prefix itself, so read from there and stop at the first non-match.
        let rows = sqlx::query(
            "SELECT key, value::text AS value, version FROM documents
             WHERE module = $1 AND collection = $2 AND key >= $3 ORDER BY key LIMIT $4",
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
            sqlx::query_scalar("SELECT answer FROM inbox WHERE module = $1 AND message_id = $2")
                .bind(module)
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(answer)
    }

    pub async fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        self.commit_once(commit).await.map_err(classify)
    }

    async fn commit_once(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // A concurrent delivery of the same id (on any host) blocks here until
        // the first commits, then inserts nothing: a duplicate.
        let inserted = sqlx::query(
            "INSERT INTO inbox (module, message_id, answer, created_at) VALUES ($1, $2, $3, now())
             ON CONFLICT DO NOTHING",
        )
        .bind(commit.module)
        .bind(commit.message_id)
        .bind(commit.answer)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Duplicate);
        }
        for write in commit.writes {
            // Under READ COMMITTED an UPDATE that waited for a concurrent
            // writer re-checks `version = base` on the new row: 0 rows.
            let applied = match write {
                Write::Put { collection, key, value, base_version: 0 } => sqlx::query(
                    "INSERT INTO documents (module, collection, key, value, version, updated_at)
                     VALUES ($1, $2, $3, $4::jsonb, 1, now()) ON CONFLICT DO NOTHING",
                )
                .bind(commit.module)
                .bind(collection)
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Write::Put { collection, key, value, base_version } => sqlx::query(
                    "UPDATE documents SET value = $1::jsonb, version = version + 1, updated_at = now()
                     WHERE module = $2 AND collection = $3 AND key = $4 AND version = $5",
                )
                .bind(value)
                .bind(commit.module)
                .bind(collection)
                .bind(key)
                .bind(version_param(*base_version)?)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Write::Delete { collection, key, base_version } => sqlx::query(
                    "DELETE FROM documents
                     WHERE module = $1 AND collection = $2 AND key = $3 AND version = $4",
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
        // Last, so the serialised part (see OUTBOX_LOCK) is as short as it can be.
        self.insert_log(&mut tx, commit.events, commit.module)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn append(&self, envelopes: &[Envelope], source: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        self.insert_log(&mut tx, envelopes, source).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn record_failure(
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

    pub async fn read_log(
        &self,
        after: i64,
        topics: &[String],
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError> {
        if topics.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT seq, id, topic, subtopic, headers::text AS headers, body FROM outbox
             WHERE seq > $1 AND topic = ANY($2) ORDER BY seq LIMIT $3",
        )
        .bind(after)
        .bind(topics)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(log_entry).collect()
    }

    /// Claims unpublished entries for this host until the claim is committed
    /// (published) or dropped: `FOR UPDATE SKIP LOCKED` makes other hosts'
    /// relays pass over them instead of publishing them too, and the row
    /// locks die with the connection, so entries claimed by a host that
    /// crashed are free again at once (no lease to expire).
    pub async fn claim_unpublished(
        &self,
        limit: u32,
    ) -> Result<(Vec<LogEntry>, Transaction<'static, Postgres>), StoreError> {
        let mut tx = self.pool.begin().await?;
        // A host that hangs mid-publish (or whose machine vanished without
        // closing the socket) would keep its claim for ever; the server ends
        // such a session after this long idle in the claim, freeing the rows.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL idle_in_transaction_session_timeout = '{CLAIM_IDLE_LIMIT_MS}ms'"
        )))
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT seq, id, topic, subtopic, headers::text AS headers, body FROM outbox
             WHERE published_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let entries = rows.iter().map(log_entry).collect::<Result<_, _>>()?;
        Ok((entries, tx))
    }

    /// Marks claimed entries published and releases the claim.
    pub async fn publish_claim(
        mut tx: Transaction<'static, Postgres>,
        seqs: &[i64],
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)")
            .bind(seqs)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn unpublished(&self, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, id, topic, subtopic, headers::text AS headers, body FROM outbox
             WHERE published_at IS NULL ORDER BY seq LIMIT $1",
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
        sqlx::query("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)")
            .bind(seqs)
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
        readers: &super::OutboxReaders,
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

    pub async fn cursor(&self, consumer: &str) -> Result<i64, StoreError> {
        // Read first: this runs on every poll of the embedded log, and an
        // upsert would write a row version each time.
        let select = "SELECT position FROM log_cursors WHERE consumer = $1";
        if let Some(position) = sqlx::query_scalar(select)
            .bind(consumer)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(position);
        }
        sqlx::query(
            "INSERT INTO log_cursors (consumer, position)
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) FROM outbox)) ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .execute(&self.pool)
        .await?;
        let position = sqlx::query_scalar(select)
            .bind(consumer)
            .fetch_one(&self.pool)
            .await?;
        Ok(position)
    }

    pub async fn set_cursor(&self, consumer: &str, position: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO log_cursors (consumer, position) VALUES ($1, $2)
             ON CONFLICT (consumer) DO UPDATE
             SET position = GREATEST(log_cursors.position, excluded.position)",
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

    /// Appends envelopes to the outbox in this transaction, in order, under
    /// [`OUTBOX_LOCK`] when the outbox is the log.
    async fn insert_log(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        envelopes: &[Envelope],
        source: &str,
    ) -> Result<(), StoreError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(envelopes.len());
        let mut topics = Vec::with_capacity(envelopes.len());
        let mut subtopics = Vec::with_capacity(envelopes.len());
        let mut headers = Vec::with_capacity(envelopes.len());
        let mut bodies = Vec::with_capacity(envelopes.len());
        for e in envelopes {
            ids.push(e.id.as_str());
            topics.push(e.topic.as_str());
            subtopics.push(e.subtopic.as_str());
            headers.push(
                serde_json::to_string(&e.headers)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
            bodies.push(e.body_text());
        }
        if self.ordered_log {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(OUTBOX_LOCK)
                .execute(&mut **tx)
                .await?;
        }
        // One statement for all events; ORDER BY the input position so their
        // seqs follow the order the module emitted them in.
        sqlx::query(
            "INSERT INTO outbox (id, topic, subtopic, headers, body, source, created_at)
             SELECT id, topic, subtopic, headers::jsonb, body, $6, now()
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                  WITH ORDINALITY AS e(id, topic, subtopic, headers, body, position)
             ORDER BY position
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&topics)
        .bind(&subtopics)
        .bind(&headers)
        .bind(&bodies)
        .bind(source)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    // Reads for operators (GET /v1/messages/{id}, /metrics, dlq replay).

    pub async fn inbox_records(
        &self,
        message_id: &str,
        modules: &[String],
    ) -> Result<Vec<super::InboxRecord>, StoreError> {
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
    ) -> Result<Vec<super::OutboxRecord>, StoreError> {
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
        let (entries, oldest_seconds): (i64, Option<f64>) = sqlx::query_as(
            "SELECT COUNT(*), EXTRACT(EPOCH FROM now() - MIN(created_at))::float8
             FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(super::OutboxBacklog {
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
        Ok(super::lag_per_topic(topics, counted))
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

/// Deadlocks (two units of work locking the same documents in opposite
/// orders) and serialisation failures are races between messages, like a
/// stale version: the message is retried on fresh state. Data exceptions
/// (class 22) come from what the module wrote, not from the database being
/// away: they must not leave the message for redelivery for ever.
fn classify(error: StoreError) -> StoreError {
    if let StoreError::Database(sqlx::Error::Database(db)) = &error {
        match db.code().as_deref() {
            Some("40P01" | "40001") => {
                return StoreError::Conflict {
                    collection: String::new(),
                    key: String::new(),
                };
            }
            Some(code) if code.starts_with("22") => {
                return StoreError::Refused(db.message().to_string());
            }
            _ => {}
        }
    }
    error
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

fn log_entry(row: &PgRow) -> Result<LogEntry, StoreError> {
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

fn document(row: &PgRow) -> Result<Document, StoreError> {
    let version: i64 = row.try_get("version")?;
    Ok(Document {
        value: row.try_get("value")?,
        version: u64::try_from(version)
            .map_err(|_| StoreError::Corrupt(format!("negative version {version}")))?,
    })
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
