//! The writer thread: it owns the write connection, commits queued units of
//! work together (group commit) and runs every other write alone.

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use switchyard_model::envelope::{Envelope, now_rfc3339};

use super::SqliteStore;
use super::outbox::insert_log;
use crate::{Commit, StoreError, Write};

/// Most units of work committed in one transaction.
const MAX_GROUP: usize = 512;

/// Work for the writer thread.
pub(super) enum Job {
    /// One unit of work, committed with whatever else is queued.
    Commit(Box<OwnedCommit>, Reply),
    /// Any other write, alone in its own transaction.
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// Where the writer thread tells a unit of work how its commit ended.
pub(super) type Reply = oneshot::Sender<Result<(), StoreError>>;

/// [`Commit`] with its data owned, to cross to the writer thread.
pub(super) struct OwnedCommit {
    module: String,
    message_id: String,
    answer: String,
    writes: Vec<Write>,
    events: Vec<Envelope>,
}

impl SqliteStore {
    /// Runs `write` on the writer thread, alone in its own transaction.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Run(Box::new(move |conn: &mut Connection| {
            let result = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let value = write(&tx)?;
                tx.commit()?;
                Ok(value)
            })();
            let _ = reply.send(result);
        }));
        self.inner.writer.send(job).map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    pub async fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let owned = Box::new(OwnedCommit {
            module: commit.module.to_string(),
            message_id: commit.message_id.to_string(),
            answer: commit.answer.to_string(),
            writes: commit.writes.to_vec(),
            events: commit.events.to_vec(),
        });
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(Job::Commit(owned, reply))
            .map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }
}

fn writer_gone() -> StoreError {
    StoreError::Backend("the SQLite writer thread has stopped".into())
}

/// The writer thread: takes jobs until every handle to the store is gone.
pub(super) fn write_loop(mut conn: Connection, mut queue: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = queue.blocking_recv() {
        match job {
            Job::Run(write) => write(&mut conn),
            Job::Commit(first, reply) => {
                // Other writes queued among the units (a cursor, a relay's
                // marks) come from other callers, each waiting for its own
                // reply: they run after the group instead of splitting it.
                let mut group = vec![(first, reply)];
                let mut after = Vec::new();
                while group.len() < MAX_GROUP {
                    match queue.try_recv() {
                        Ok(Job::Commit(commit, reply)) => group.push((commit, reply)),
                        Ok(Job::Run(write)) => after.push(write),
                        Err(_) => break,
                    }
                }
                commit_group(&mut conn, group);
                for write in after {
                    write(&mut conn);
                }
            }
        }
    }
}

/// Commits a group of units of work in one transaction, each all-or-nothing,
/// and tells each waiter how its own unit ended.
fn commit_group(conn: &mut Connection, group: Vec<(Box<OwnedCommit>, Reply)>) {
    let now = now_rfc3339();
    let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(group.len());
    let committed = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let [(only, _)] = group.as_slice() {
            // Alone: the transaction itself is the unit; a failure rolls it back.
            let result = apply(&tx, only, &now);
            let ok = result.is_ok();
            results.push(result);
            if ok {
                tx.commit()?;
            }
            return Ok(());
        }
        // Most groups have no conflict and no duplicate: apply them all
        // without savepoints (a savepoint copies every page it touches to a
        // sub-journal). If one fails, roll the whole group back and apply it
        // again, each unit in its own savepoint.
        let failed = group
            .iter()
            .find_map(|(commit, _)| apply(&tx, commit, &now).err());
        let Some(failed) = failed else {
            results.resize_with(group.len(), || Ok(()));
            return tx.commit();
        };
        tracing::debug!(units = group.len(), first_failure = %failed, "group commit: a unit failed; applying each in a savepoint");
        tx.rollback()?;
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (commit, _) in &group {
            let savepoint = tx.savepoint()?;
            let result = apply(&savepoint, commit, &now);
            if result.is_ok() {
                savepoint.commit()?;
            }
            // Dropping an uncommitted savepoint rolls back to it.
            results.push(result);
        }
        tx.commit()
    })();
    if let Err(e) = committed {
        // The transaction as a whole failed: nothing of the group is stored.
        let message = e.to_string();
        tracing::warn!(error = %message, units = group.len(), "group commit failed");
        results.clear();
        results.resize_with(group.len(), || {
            Err(StoreError::Backend(format!("commit: {message}")))
        });
    }
    for ((_, reply), result) in group.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

/// The statements of one unit of work: inbox row (a duplicate stops here),
/// the writes against their base versions, then the events.
fn apply(conn: &Connection, commit: &OwnedCommit, now: &str) -> Result<(), StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO inbox (module, message_id, answer, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            commit.module,
            commit.message_id,
            commit.answer,
            now
        ])?;
    if inserted == 0 {
        return Err(StoreError::Duplicate);
    }
    for write in &commit.writes {
        let applied = match write {
            Write::Put {
                collection,
                key,
                value,
                base_version: 0,
            } => conn
                .prepare_cached(
                    "INSERT INTO documents (module, collection, key, value, version, updated_at)
                     VALUES (?1, ?2, ?3, ?4, 1, ?5) ON CONFLICT DO NOTHING",
                )?
                .execute(params![commit.module, collection, key, value, now])?,
            Write::Put {
                collection,
                key,
                value,
                base_version,
            } => conn
                .prepare_cached(
                    "UPDATE documents SET value = ?1, version = version + 1, updated_at = ?2
                     WHERE module = ?3 AND collection = ?4 AND key = ?5 AND version = ?6",
                )?
                .execute(params![
                    value,
                    now,
                    commit.module,
                    collection,
                    key,
                    version_param(*base_version)?
                ])?,
            Write::Delete {
                collection,
                key,
                base_version,
            } => conn
                .prepare_cached(
                    "DELETE FROM documents
                     WHERE module = ?1 AND collection = ?2 AND key = ?3 AND version = ?4",
                )?
                .execute(params![
                    commit.module,
                    collection,
                    key,
                    version_param(*base_version)?
                ])?,
        };
        if applied != 1 {
            return Err(write.conflict());
        }
    }
    for event in &commit.events {
        insert_log(conn, event, &commit.module, now)?;
    }
    Ok(())
}

fn version_param(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::Corrupt(format!("version {version} out of range")))
}
