//! Group commit: committer tasks take the units of work waiting in a queue
//! and commit up to `max_group` of them in one transaction, each in a
//! savepoint of its own, so a unit that fails rolls back alone and the rest
//! commit. The whole group shares one WAL flush.
//!
//! The bound on a group is a bound on what one unit can hold up: a unit
//! whose write waits for a row lock (another host's transaction on the same
//! document) stalls every unit of its group until that lock is released.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use switchyard_model::envelope::Envelope;

use super::commit::{apply, classify, commit_alone};
use super::outbox::lock_outbox;
use crate::{Commit, StoreError, Write};

/// Most units of work one transaction commits. Every unit runs in a
/// savepoint, that is a subtransaction, and PostgreSQL keeps the ids of at
/// most 64 of them per backend in shared memory
/// (`PGPROC_MAX_CACHED_SUBXIDS`): past that, every other session's snapshot
/// overflows to `pg_subtrans` lookups while the group is open. 64 also
/// bounds what one lock wait stalls.
pub const DEFAULT_MAX_GROUP: usize = 64;

/// Committer tasks per store. One committer never waits on a row lock held
/// by another committer of the same host, so groups of one host cannot
/// deadlock each other (two would, on hot documents, stall both groups for
/// `deadlock_timeout`, 1 s by default); see the README for what two gave.
pub const DEFAULT_COMMITTERS: usize = 1;

/// The queue to the committers. Cloning shares it.
#[derive(Clone)]
pub(super) struct Committers {
    queue: mpsc::UnboundedSender<Queued>,
}

/// A unit of work waiting for a committer, and where its result goes.
struct Queued {
    commit: OwnedCommit,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// [`Commit`] with its data owned, to cross to a committer task.
struct OwnedCommit {
    module: String,
    message_id: String,
    answer: String,
    writes: Vec<Write>,
    events: Vec<Envelope>,
}

impl OwnedCommit {
    fn borrowed(&self) -> Commit<'_> {
        Commit {
            module: &self.module,
            message_id: &self.message_id,
            answer: &self.answer,
            writes: &self.writes,
            events: &self.events,
        }
    }
}

impl Committers {
    /// Starts `count` committer tasks (at least one) on the current tokio
    /// runtime. They end once every handle to the queue is dropped and what
    /// was queued is committed.
    pub(super) fn start(pool: PgPool, ordered_log: bool, max_group: usize, count: usize) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..count.max(1) {
            tokio::spawn(committer(
                pool.clone(),
                ordered_log,
                max_group.max(1),
                waiting.clone(),
            ));
        }
        Self { queue }
    }

    /// Queues one unit of work and waits for its own result. A caller that
    /// stops waiting does not withdraw its unit: once queued it commits or
    /// fails as if the caller were there, and a redelivery of the message
    /// then finds its inbox row (nothing is applied twice).
    pub(super) async fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let commit = OwnedCommit {
            module: commit.module.to_string(),
            message_id: commit.message_id.to_string(),
            answer: commit.answer.to_string(),
            writes: commit.writes.to_vec(),
            events: commit.events.to_vec(),
        };
        let (reply, result) = oneshot::channel();
        self.queue
            .send(Queued { commit, reply })
            .map_err(|_| committers_gone())?;
        result.await.map_err(|_| committers_gone())?
    }
}

fn committers_gone() -> StoreError {
    StoreError::Backend("the PostgreSQL committer tasks have stopped".into())
}

/// One committer: takes what is waiting (up to `max_group` units), commits
/// it, answers, again. While one committer holds the queue the others are
/// committing, so a group is whatever arrived during the previous commit.
async fn committer(
    pool: PgPool,
    ordered_log: bool,
    max_group: usize,
    waiting: Arc<Mutex<mpsc::UnboundedReceiver<Queued>>>,
) {
    let mut group = Vec::with_capacity(max_group);
    loop {
        let taken = waiting.lock().await.recv_many(&mut group, max_group).await;
        if taken == 0 {
            return; // every store handle is gone and the queue is empty
        }
        commit_group(&pool, ordered_log, &mut group).await;
    }
}

/// Commits `group` and answers each unit's caller, emptying `group`.
async fn commit_group(pool: &PgPool, ordered_log: bool, group: &mut Vec<Queued>) {
    if let [only] = group.as_slice() {
        // Alone: the transaction itself is the unit, no savepoint needed.
        let result = commit_alone(pool, ordered_log, &only.commit.borrowed()).await;
        if let Some(queued) = group.pop() {
            let _ = queued.reply.send(result);
        }
        return;
    }
    let units = group.len();
    let results = match apply_group(pool, ordered_log, group).await {
        Ok(results) => results,
        Err(e) => {
            // The transaction as a whole failed (the connection, the COMMIT):
            // nothing of the group is stored, and every unit says so.
            tracing::warn!(error = %e, units, "group commit failed");
            (0..units)
                .map(|_| {
                    Err(StoreError::Backend(format!(
                        "group commit of {units} units failed, none stored: {e}"
                    )))
                })
                .collect()
        }
    };
    for (queued, result) in group.drain(..).zip(results) {
        // The caller may have stopped waiting; its unit's fate is decided.
        let _ = queued.reply.send(result);
    }
}

/// Where the savepoint `unit` stands relative to the next unit's start.
#[derive(Clone, Copy, PartialEq)]
enum Mark {
    /// No savepoint yet.
    None,
    /// It marks exactly the current state (set, or rolled back to, with
    /// nothing written since): the next unit can start from it.
    Here,
    /// A unit was applied since: release it and set a new one.
    Behind,
}

/// One transaction for the whole group, a savepoint per unit. `Ok` holds
/// each unit's result, in order; `Err` means the transaction failed and
/// nothing was stored.
async fn apply_group(
    pool: &PgPool,
    ordered_log: bool,
    group: &[Queued],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut tx = pool.begin().await?;
    if ordered_log && group.iter().any(|q| !q.commit.events.is_empty()) {
        // Before any row lock: a committer waiting for the log lock then
        // holds no document another committer could be waiting for.
        lock_outbox(&mut tx).await?;
    }
    let mut results = Vec::with_capacity(group.len());
    let mut mark = Mark::None;
    for queued in group {
        let set = match mark {
            Mark::None => Some("SAVEPOINT unit"),
            // One round trip for both.
            Mark::Behind => Some("RELEASE SAVEPOINT unit; SAVEPOINT unit"),
            Mark::Here => None,
        };
        if let Some(set) = set {
            sqlx::raw_sql(set).execute(&mut *tx).await?;
        }
        mark = Mark::Here;
        match apply(&mut tx, &queued.commit.borrowed(), false).await {
            Ok(()) => {
                mark = Mark::Behind;
                results.push(Ok(()));
            }
            // Stopped at the inbox row, having written nothing.
            Err(StoreError::Duplicate) => results.push(Err(StoreError::Duplicate)),
            Err(e) if fails_alone(&e) => {
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT unit")
                    .execute(&mut *tx)
                    .await?;
                results.push(Err(classify(e)));
            }
            Err(e) => return Err(e),
        }
    }
    tx.commit().await?;
    Ok(results)
}

/// Errors of one unit that leave the transaction usable once rolled back to
/// the unit's savepoint: its own conflicts and data, anything the server
/// answered. A lost connection or a broken protocol fails the whole group.
fn fails_alone(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Conflict { .. }
            | StoreError::Refused(_)
            | StoreError::Corrupt(_)
            | StoreError::Database(sqlx::Error::Database(_))
    )
}
