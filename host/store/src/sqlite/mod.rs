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
//!
//! By concern: this file has the store type, opening the file and the
//! reads of documents and the inbox; `writer` the writer thread and group
//! commit; `outbox` appends, the embedded log, cursors and the relay's
//! queue; `ops` dead letters, operators' reads and pruning.

mod ops;
mod outbox;
mod writer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio::sync::mpsc;

use crate::{Document, StoreError};
use writer::{Job, write_loop};

/// Reader connections when `host.max-connections` is not set. Reads run in
/// the calling task, so more than the runtime's worker threads never help.
const READERS: u32 = 4;
/// How long a statement waits for SQLite's lock before giving up (another
/// process holding the file, or a checkpoint).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
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
        max_bytes: usize,
    ) -> Result<Vec<(String, Document)>, StoreError> {
        self.read(|conn| {
            // Keys sharing a prefix are contiguous in byte order, starting at
            // the prefix itself: read from there and stop at the first
            // non-match, or once the rows read pass the byte budget.
            let mut statement = conn.prepare_cached(
                "SELECT key, value, version FROM documents
                 WHERE module = ?1 AND collection = ?2 AND key >= ?3 ORDER BY key LIMIT ?4",
            )?;
            let mut rows = statement.query(params![module, collection, prefix, limit])?;
            let mut out = Vec::new();
            let mut loaded = 0usize;
            while let Some(row) = rows.next()? {
                let key: String = row.get(0)?;
                if !key.starts_with(prefix) {
                    break;
                }
                let doc = document(row.get(1)?, row.get(2)?)?;
                loaded = loaded.saturating_add(crate::scan_size(&key, &doc));
                out.push((key, doc));
                if loaded > max_bytes {
                    break;
                }
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

    pub async fn inbox_committed_at(
        &self,
        module: &str,
        message_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let text: Option<String> = self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT created_at FROM inbox WHERE module = ?1 AND message_id = ?2",
                )?
                .query_row(params![module, message_id], |row| row.get(0))
                .optional()?)
        })?;
        text.map(|text| {
            let at =
                time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| StoreError::Corrupt(format!("inbox time '{text}': {e}")))?;
            Ok((at.unix_timestamp_nanos() / 1_000_000) as i64)
        })
        .transpose()
    }
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

fn document(value: String, version: i64) -> Result<Document, StoreError> {
    Ok(Document {
        value,
        version: u64::try_from(version)
            .map_err(|_| StoreError::Corrupt(format!("negative version {version}")))?,
    })
}
