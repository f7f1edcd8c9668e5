//! The outbox: appends (in seq order under `OUTBOX_LOCK`), reading it as
//! the embedded log, consumers' cursors, and the relays' claims.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, Row, Transaction};

use switchyard_model::envelope::Envelope;

use super::PostgresStore;
use crate::{LogEntry, StoreError};

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
/// from their insert through their commit's WAL flush (2.7 ms on this
/// machine's disk). A unit committed alone takes it after its document and
/// inbox writes; a group (`group.rs`) takes it once, first, so groups with
/// events commit one after another but each flush carries the whole group.
/// With a broker the outbox is only drained by the relay, which selects
/// `published_at IS NULL` rather than following a cursor and so cannot skip a
/// late row: there the lock is not taken ([`StoreOptions::ordered_log`]).
/// Advisory locks are scoped to the database, so other databases do not contend.
///
/// [`StoreOptions::ordered_log`]: crate::StoreOptions::ordered_log
pub(super) const OUTBOX_LOCK: i64 = 0x5357_5944_4f42_5831; // "SWYDOBX1"

/// Longest a relay may sit in its claim between two statements (that is,
/// in the broker call) before PostgreSQL ends its session and other hosts
/// take the entries over: well above the broker's 5 s command timeout.
const CLAIM_IDLE_LIMIT_MS: u64 = 30_000;

impl PostgresStore {
    pub async fn append(&self, envelopes: &[Envelope], source: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        self.insert_log(&mut tx, envelopes, source).await?;
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

    /// Appends envelopes to the outbox in this transaction, in order, under
    /// [`OUTBOX_LOCK`] when the outbox is the log.
    pub(super) async fn insert_log(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        envelopes: &[Envelope],
        source: &str,
    ) -> Result<(), StoreError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        if self.ordered_log {
            lock_outbox(tx).await?;
        }
        insert_log(tx, envelopes, source).await
    }
}

/// Takes [`OUTBOX_LOCK`] until the end of the current transaction.
pub(super) async fn lock_outbox(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(OUTBOX_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// Appends envelopes to the outbox in the connection's transaction, in
/// order. The caller holds [`OUTBOX_LOCK`] when the outbox is the log.
pub(super) async fn insert_log(
    conn: &mut PgConnection,
    envelopes: &[Envelope],
    source: &str,
) -> Result<(), StoreError> {
    let rows: Vec<(&Envelope, &str)> = envelopes.iter().map(|e| (e, source)).collect();
    insert_events(conn, &rows).await
}

/// Appends `(envelope, source)` rows to the outbox in one statement, their
/// seqs in the order given. The caller holds [`OUTBOX_LOCK`] when the
/// outbox is the log.
pub(super) async fn insert_events(
    conn: &mut PgConnection,
    rows: &[(&Envelope, &str)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut topics = Vec::with_capacity(rows.len());
    let mut subtopics = Vec::with_capacity(rows.len());
    let mut headers = Vec::with_capacity(rows.len());
    let mut bodies = Vec::with_capacity(rows.len());
    let mut sources = Vec::with_capacity(rows.len());
    for (e, source) in rows {
        ids.push(e.id.as_str());
        topics.push(e.topic.as_str());
        subtopics.push(e.subtopic.as_str());
        headers.push(
            serde_json::to_string(&e.headers).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        bodies.push(e.body_text());
        sources.push(*source);
    }
    // ORDER BY the input position so the seqs follow the order given.
    sqlx::query(
        "INSERT INTO outbox (id, topic, subtopic, headers, body, source, created_at)
         SELECT id, topic, subtopic, headers::jsonb, body, source, now()
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
              WITH ORDINALITY AS e(id, topic, subtopic, headers, body, source, position)
         ORDER BY position
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&topics)
    .bind(&subtopics)
    .bind(&headers)
    .bind(&bodies)
    .bind(&sources)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) fn log_entry(row: &PgRow) -> Result<LogEntry, StoreError> {
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
