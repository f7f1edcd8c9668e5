//! Units of work: the statements of one (inbox row, conditional writes,
//! events), committing one alone in its own READ COMMITTED transaction, and
//! which database errors mean "retry" or "refused". Several units in one
//! transaction is `group`'s business.

use sqlx::{PgConnection, PgPool};

use super::PostgresStore;
use super::outbox::{insert_log, lock_outbox};
use crate::{Commit, StoreError, Write};

impl PostgresStore {
    /// Commits one unit of work: queued for a committer (group commit), or in
    /// the caller's own transaction when groups are off (`max_group` 1).
    pub async fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        match &self.group {
            Some(group) => group.commit(commit).await,
            None => commit_alone(&self.pool, self.ordered_log, commit).await,
        }
    }
}

/// One unit of work in a transaction of its own.
pub(super) async fn commit_alone(
    pool: &PgPool,
    ordered_log: bool,
    commit: &Commit<'_>,
) -> Result<(), StoreError> {
    let once = async {
        let mut tx = pool.begin().await?;
        // The log lock before any row lock, as a group takes it: a unit
        // holding a document while waiting for the lock that a group holds
        // while waiting for that document would deadlock.
        if ordered_log && !commit.events.is_empty() {
            lock_outbox(&mut tx).await?;
        }
        apply(&mut tx, commit).await?;
        tx.commit().await?;
        Ok(())
    };
    once.await.map_err(classify)
}

/// The statements of one unit of work, in the connection's transaction:
/// the inbox row (a duplicate stops here, having written nothing), the
/// writes against their base versions, then the events (the caller holds
/// `OUTBOX_LOCK` when the outbox is the log). An `Err` may leave part of the unit
/// applied: the caller rolls back (the transaction or the unit's savepoint).
pub(super) async fn apply(conn: &mut PgConnection, commit: &Commit<'_>) -> Result<(), StoreError> {
    // A concurrent delivery of the same id (on any host) blocks here until
    // the first commits, then inserts nothing: a duplicate.
    let inserted = sqlx::query(
        "INSERT INTO inbox (module, message_id, answer, created_at) VALUES ($1, $2, $3, now())
         ON CONFLICT DO NOTHING",
    )
    .bind(commit.module)
    .bind(commit.message_id)
    .bind(commit.answer)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(StoreError::Duplicate);
    }
    for write in commit.writes {
        // Under READ COMMITTED an UPDATE that waited for a concurrent
        // writer re-checks `version = base` on the new row: 0 rows.
        let applied = match write {
            Write::Put {
                collection,
                key,
                value,
                base_version: 0,
            } => sqlx::query(
                "INSERT INTO documents (module, collection, key, value, version, updated_at)
                 VALUES ($1, $2, $3, $4::jsonb, 1, now()) ON CONFLICT DO NOTHING",
            )
            .bind(commit.module)
            .bind(collection)
            .bind(key)
            .bind(value)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
            Write::Put {
                collection,
                key,
                value,
                base_version,
            } => sqlx::query(
                "UPDATE documents SET value = $1::jsonb, version = version + 1, updated_at = now()
                 WHERE module = $2 AND collection = $3 AND key = $4 AND version = $5",
            )
            .bind(value)
            .bind(commit.module)
            .bind(collection)
            .bind(key)
            .bind(version_param(*base_version)?)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
            Write::Delete {
                collection,
                key,
                base_version,
            } => sqlx::query(
                "DELETE FROM documents
                 WHERE module = $1 AND collection = $2 AND key = $3 AND version = $4",
            )
            .bind(commit.module)
            .bind(collection)
            .bind(key)
            .bind(version_param(*base_version)?)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        };
        if applied != 1 {
            return Err(write.conflict());
        }
    }
    if !commit.events.is_empty() {
        insert_log(conn, commit.events, commit.module).await?;
    }
    Ok(())
}

/// Deadlocks (two units of work locking the same documents in opposite
/// orders) and serialisation failures are races between messages, like a
/// stale version: the message is retried on fresh state. Data exceptions
/// (class 22) come from what the module wrote, not from the database being
/// away: they must not leave the message for redelivery for ever.
pub(super) fn classify(error: StoreError) -> StoreError {
    if is_race(&error) {
        return StoreError::Conflict {
            collection: String::new(),
            key: String::new(),
        };
    }
    if let StoreError::Database(sqlx::Error::Database(db)) = &error {
        match db.code().as_deref() {
            Some(code) if code.starts_with("22") => {
                return StoreError::Refused(db.message().to_string());
            }
            _ => {}
        }
    }
    error
}

/// A deadlock (40P01) or serialisation failure (40001): transactions
/// racing, not a fault; what ran in the transaction can run again.
pub(super) fn is_race(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Database(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("40P01" | "40001"))
    )
}

pub(super) fn version_param(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::Corrupt(format!("version {version} out of range")))
}
