//! Units of work: each one READ COMMITTED transaction of conditional
//! writes, and which database errors mean "retry" or "refused".

use super::PostgresStore;
use crate::{Commit, StoreError, Write};

impl PostgresStore {
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

fn version_param(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::Corrupt(format!("version {version} out of range")))
}
