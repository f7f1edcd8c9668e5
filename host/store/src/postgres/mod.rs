//! The shared store: PostgreSQL, for several hosts on one database.
//!
//! Documents are JSONB with a version; a unit of work's conditional writes
//! (`WHERE version = base`, READ COMMITTED) turn a concurrent change into
//! [`StoreError::Conflict`], even when the racing writer runs in another
//! host. Units of work are committed in groups: several per transaction,
//! each in its own savepoint, so each stays all-or-nothing.
//!
//! By concern: this file has the store type, connecting and the reads of
//! documents and the inbox; `commit` the statements of a unit of work and
//! committing one alone; `group` the committer tasks that commit several
//! in one transaction; `outbox` appends (under
//! `OUTBOX_LOCK`), the embedded log, cursors and the relay's claims; `ops`
//! dead letters, operators' reads and pruning.

mod commit;
mod group;
mod ops;
mod outbox;

use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use crate::{Document, StoreError, StoreOptions};

pub use group::{DEFAULT_COMMITTERS, DEFAULT_MAX_GROUP};

/// Pool size when `host.max-connections` is not set. A connection is held
/// only for one statement or one commit, never across a module call, so a
/// few connections serve many concurrent handlers.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// How long a caller waits for a free connection (or for the server, when it
/// is down) before the message is left for a retry; short so a dead database
/// shows as "unavailable" quickly instead of stalling every handler.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Take [`OUTBOX_LOCK`](outbox::OUTBOX_LOCK) on appends (the outbox is the embedded log).
    ordered_log: bool,
    /// Where units of work go to be committed in groups; `None` when each
    /// commits alone in its caller's transaction (`max_group` 1).
    group: Option<group::Committers>,
}

impl PostgresStore {
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url)?.application_name("switchyard");
        let max_connections = options.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(connect)
            .await?;
        // sqlx takes an advisory lock around migrations, so hosts starting
        // together on a fresh database migrate it once.
        sqlx::migrate!("../../migrations/postgres")
            .run(&pool)
            .await?;
        // Each committer holds a connection while it commits: at most half
        // the pool, so reads, the relay and failures always find one.
        let group = (options.max_group > 1).then(|| {
            let count = options
                .committers
                .min(usize::try_from(max_connections / 2).unwrap_or(1))
                .max(1);
            group::Committers::start(pool.clone(), options.ordered_log, options.max_group, count)
        });
        Ok(Self {
            pool,
            ordered_log: options.ordered_log,
            group,
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
        max_bytes: usize,
    ) -> Result<Vec<(String, Document)>, StoreError> {
        // `key` is COLLATE "C": keys sharing a prefix are contiguous from the
        // prefix itself, so read from there and stop at the first non-match.
        // Rows are streamed, not fetched whole, so the host stops loading
        // once they pass the byte budget.
        let mut rows = sqlx::query(
            "SELECT key, value::text AS value, version FROM documents
             WHERE module = $1 AND collection = $2 AND key >= $3 ORDER BY key LIMIT $4",
        )
        .bind(module)
        .bind(collection)
        .bind(prefix)
        .bind(i64::from(limit))
        .fetch(&self.pool);
        let mut out = Vec::new();
        let mut loaded = 0usize;
        while let Some(row) = rows.try_next().await? {
            let key: String = row.try_get("key")?;
            if !key.starts_with(prefix) {
                break;
            }
            let doc = document(&row)?;
            loaded = loaded.saturating_add(crate::scan_size(&key, &doc));
            out.push((key, doc));
            if loaded > max_bytes {
                break;
            }
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

    pub async fn inbox_committed_at(
        &self,
        module: &str,
        message_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let at = sqlx::query_scalar(
            "SELECT (EXTRACT(EPOCH FROM created_at) * 1000)::bigint FROM inbox
             WHERE module = $1 AND message_id = $2",
        )
        .bind(module)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(at)
    }
}

fn document(row: &PgRow) -> Result<Document, StoreError> {
    let version: i64 = row.try_get("version")?;
    Ok(Document {
        value: row.try_get("value")?,
        version: u64::try_from(version)
            .map_err(|_| StoreError::Corrupt(format!("negative version {version}")))?,
    })
}
