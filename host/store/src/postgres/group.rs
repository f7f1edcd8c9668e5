//! Group commit: committer tasks take the units of work waiting in a queue
//! and commit up to `max_group` of them in one transaction, which shares
//! one WAL flush and a handful of round trips: the group's inbox rows, its
//! writes of each kind and its events each go in one statement. If a unit
//! would fail (a stale version, a value PostgreSQL refuses) that
//! transaction is rolled back and the group applied again unit by unit,
//! each in a savepoint of its own, so the failing unit rolls back alone and
//! the rest commit. Duplicates need no second pass: the inbox insert says
//! which ids were there, and their units are left out.
//!
//! The bound on a group is a bound on what one unit can hold up: a unit
//! whose write waits for a row lock (another host's transaction on the same
//! document) stalls every unit of its group until that lock is released.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};

use switchyard_model::envelope::Envelope;

use super::commit::{apply, classify, commit_alone, is_race, version_param};
use super::outbox::{insert_events, lock_outbox};
use crate::{Commit, StoreError, Write};

/// Most units of work one transaction commits. Every unit runs in a
/// savepoint, that is a subtransaction, and PostgreSQL keeps the ids of at
/// most 64 of them per backend in shared memory
/// (`PGPROC_MAX_CACHED_SUBXIDS`): past that, every other session's snapshot
/// overflows to `pg_subtrans` lookups while the group is open. 64 also
/// bounds what one lock wait stalls.
pub const DEFAULT_MAX_GROUP: usize = 64;

/// Committer tasks per store. Two: one commits while the other gathers
/// and sends its group, which the commit bench measured at about 1.4x one
/// committer with 128 units in flight (three gave no more on two cores).
/// Groups take their row locks in document order, so two committers (or
/// two hosts) do not deadlock on documents both groups write, except when
/// a group falls back to unit by unit and its units write several
/// documents each; a deadlock is then found after PostgreSQL's
/// `deadlock_timeout` (1 s) and its unit retried as a conflict.
pub const DEFAULT_COMMITTERS: usize = 2;

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
    let results = match apply_batched(pool, ordered_log, group).await {
        Ok(Some(results)) => Ok(results),
        // A unit failed: each unit again, in a savepoint of its own.
        Ok(None) => apply_group(pool, ordered_log, group).await,
        Err(e) => Err(e),
    };
    let results = match results {
        Ok(results) => results,
        Err(e) => {
            // The transaction as a whole failed (the connection, the COMMIT):
            // nothing of the group is stored, and every unit says so. A
            // deadlock or serialisation failure is a race like a stale
            // version: each unit reruns on fresh state.
            let race = is_race(&e);
            if !race {
                tracing::warn!(error = %e, units, "group commit failed");
            }
            (0..units)
                .map(|_| {
                    if race {
                        Err(StoreError::Conflict {
                            collection: String::new(),
                            key: String::new(),
                        })
                    } else {
                        Err(StoreError::Backend(format!(
                            "group commit of {units} units failed, none stored: {e}"
                        )))
                    }
                })
                .collect()
        }
    };
    for (queued, result) in group.drain(..).zip(results) {
        // The caller may have stopped waiting; its unit's fate is decided.
        let _ = queued.reply.send(result);
    }
}

/// The fast way, for a group with no conflict and no refused value: the
/// inbox rows, the writes of each kind and the events each in one statement
/// for the whole group, a handful of round trips whatever its size.
/// `Ok(None)`: a unit would fail (a stale version, a value refused) or two
/// units write one document, so nothing is kept and the caller commits the
/// group unit by unit. Duplicates are found here and left out.
async fn apply_batched(
    pool: &PgPool,
    ordered_log: bool,
    group: &[Queued],
) -> Result<Option<Vec<Result<(), StoreError>>>, StoreError> {
    // With every document written once, the statements' order (inserts,
    // updates, deletes) cannot change any write's outcome.
    let mut documents = HashSet::new();
    for queued in group {
        for write in &queued.commit.writes {
            let (collection, key) = write.document();
            if !documents.insert((&queued.commit.module, collection, key)) {
                return Ok(None);
            }
        }
    }
    let mut tx = pool.begin().await?;
    if ordered_log && group.iter().any(|q| !q.commit.events.is_empty()) {
        lock_outbox(&mut tx).await?;
    }
    match batched(&mut tx, group).await {
        Ok(Some(results)) => {
            tx.commit().await?;
            Ok(Some(results))
        }
        Ok(None) | Err(StoreError::Database(sqlx::Error::Database(_)) | StoreError::Corrupt(_)) => {
            tx.rollback().await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The statements of [`apply_batched`]; `Ok(None)` when a write did not apply.
async fn batched(
    conn: &mut PgConnection,
    group: &[Queued],
) -> Result<Option<Vec<Result<(), StoreError>>>, StoreError> {
    let modules: Vec<&str> = group.iter().map(|q| q.commit.module.as_str()).collect();
    let ids: Vec<&str> = group.iter().map(|q| q.commit.message_id.as_str()).collect();
    let answers: Vec<&str> = group.iter().map(|q| q.commit.answer.as_str()).collect();
    // In input order, so of two units with one id the first is inserted.
    let inserted: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO inbox (module, message_id, answer, created_at)
         SELECT module, message_id, answer, now()
         FROM UNNEST($1::text[], $2::text[], $3::text[])
              WITH ORDINALITY AS u(module, message_id, answer, position)
         ORDER BY position
         ON CONFLICT DO NOTHING
         RETURNING module, message_id",
    )
    .bind(&modules)
    .bind(&ids)
    .bind(&answers)
    .fetch_all(&mut *conn)
    .await?;
    let mut inserted: HashSet<(String, String)> = inserted.into_iter().collect();
    let applies: Vec<bool> = group
        .iter()
        .map(|q| inserted.remove(&(q.commit.module.clone(), q.commit.message_id.clone())))
        .collect();

    let mut creates = Vec::new();
    let mut updates = Vec::new();
    let mut deletes = Vec::new();
    let mut events = Vec::new();
    for (queued, _) in group.iter().zip(&applies).filter(|(_, applies)| **applies) {
        let unit = &queued.commit;
        for write in &unit.writes {
            match write {
                Write::Put {
                    collection,
                    key,
                    value,
                    base_version: 0,
                } => creates.push((
                    unit.module.as_str(),
                    collection.as_str(),
                    key.as_str(),
                    value.as_str(),
                    0,
                )),
                Write::Put {
                    collection,
                    key,
                    value,
                    base_version,
                } => updates.push((
                    unit.module.as_str(),
                    collection.as_str(),
                    key.as_str(),
                    value.as_str(),
                    version_param(*base_version)?,
                )),
                Write::Delete {
                    collection,
                    key,
                    base_version,
                } => deletes.push((
                    unit.module.as_str(),
                    collection.as_str(),
                    key.as_str(),
                    "",
                    version_param(*base_version)?,
                )),
            }
        }
        events.extend(unit.events.iter().map(|e| (e, unit.module.as_str())));
    }
    let (creates, updates, deletes) = (
        Rows::sorted(creates),
        Rows::sorted(updates),
        Rows::sorted(deletes),
    );
    if !updates.is_empty() || !deletes.is_empty() {
        // Row locks in document order (see `Rows::sorted`); UPDATE and
        // DELETE joined with a list lock in whatever order the plan visits.
        let existing = [&updates, &deletes];
        let [modules, collections, keys]: [Vec<&str>; 3] = [
            existing
                .iter()
                .flat_map(|r| r.modules.iter().copied())
                .collect(),
            existing
                .iter()
                .flat_map(|r| r.collections.iter().copied())
                .collect(),
            existing
                .iter()
                .flat_map(|r| r.keys.iter().copied())
                .collect(),
        ];
        sqlx::query(
            "SELECT 1 FROM documents d
             JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS w(module, collection, key)
               ON d.module = w.module AND d.collection = w.collection AND d.key = w.key
             ORDER BY d.module, d.collection, d.key
             FOR UPDATE OF d",
        )
        .bind(&modules)
        .bind(&collections)
        .bind(&keys)
        .execute(&mut *conn)
        .await?;
    }
    if !creates.is_empty() {
        let created = sqlx::query(
            "INSERT INTO documents (module, collection, key, value, version, updated_at)
             SELECT module, collection, key, value::jsonb, 1, now()
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
                  WITH ORDINALITY AS w(module, collection, key, value, position)
             ORDER BY position
             ON CONFLICT DO NOTHING",
        )
        .bind(&creates.modules)
        .bind(&creates.collections)
        .bind(&creates.keys)
        .bind(&creates.values)
        .execute(&mut *conn)
        .await?;
        if created.rows_affected() != creates.len() {
            return Ok(None);
        }
    }
    if !updates.is_empty() {
        let updated = sqlx::query(
            "UPDATE documents d SET value = w.value::jsonb, version = d.version + 1, updated_at = now()
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                  AS w(module, collection, key, value, base)
             WHERE d.module = w.module AND d.collection = w.collection AND d.key = w.key
               AND d.version = w.base",
        )
        .bind(&updates.modules)
        .bind(&updates.collections)
        .bind(&updates.keys)
        .bind(&updates.values)
        .bind(&updates.bases)
        .execute(&mut *conn)
        .await?;
        if updated.rows_affected() != updates.len() {
            return Ok(None);
        }
    }
    if !deletes.is_empty() {
        let deleted = sqlx::query(
            "DELETE FROM documents d
             USING UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
                   AS w(module, collection, key, base)
             WHERE d.module = w.module AND d.collection = w.collection AND d.key = w.key
               AND d.version = w.base",
        )
        .bind(&deletes.modules)
        .bind(&deletes.collections)
        .bind(&deletes.keys)
        .bind(&deletes.bases)
        .execute(&mut *conn)
        .await?;
        if deleted.rows_affected() != deletes.len() {
            return Ok(None);
        }
    }
    insert_events(conn, &events).await?;
    Ok(Some(
        applies
            .into_iter()
            .map(|applies| {
                if applies {
                    Ok(())
                } else {
                    Err(StoreError::Duplicate)
                }
            })
            .collect(),
    ))
}

/// Document writes of one kind, as columns to bind as arrays.
#[derive(Default)]
struct Rows<'a> {
    modules: Vec<&'a str>,
    collections: Vec<&'a str>,
    keys: Vec<&'a str>,
    values: Vec<&'a str>,
    bases: Vec<i64>,
}

/// One document write: module, collection, key, value ("" for a delete),
/// base version.
type Row<'a> = (&'a str, &'a str, &'a str, &'a str, i64);

impl<'a> Rows<'a> {
    /// The rows in document order: every group then takes its row locks in
    /// one global order, so two groups (two committers, two hosts) never
    /// wait on each other in a cycle.
    fn sorted(mut rows: Vec<Row<'a>>) -> Self {
        rows.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        let mut out = Self::default();
        for (module, collection, key, value, base) in rows {
            out.modules.push(module);
            out.collections.push(collection);
            out.keys.push(key);
            out.values.push(value);
            out.bases.push(base);
        }
        out
    }

    fn len(&self) -> u64 {
        self.keys.len() as u64
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
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
    // Units in the order of their first document (a unit's writes come
    // sorted from the unit of work): groups of one-document units then take
    // their row locks in one global order here too.
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by(|&a, &b| first_document(&group[a].commit).cmp(&first_document(&group[b].commit)));
    let mut results: Vec<Option<Result<(), StoreError>>> = group.iter().map(|_| None).collect();
    let mut mark = Mark::None;
    for i in order {
        let Some(queued) = group.get(i) else { continue };
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
        let result = match apply(&mut tx, &queued.commit.borrowed()).await {
            Ok(()) => {
                mark = Mark::Behind;
                Ok(())
            }
            // Stopped at the inbox row, having written nothing.
            Err(StoreError::Duplicate) => Err(StoreError::Duplicate),
            Err(e) if fails_alone(&e) => {
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT unit")
                    .execute(&mut *tx)
                    .await?;
                Err(classify(e))
            }
            Err(e) => return Err(e),
        };
        if let Some(slot) = results.get_mut(i) {
            *slot = Some(result);
        }
    }
    tx.commit().await?;
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StoreError::Backend("unit not applied".into()))))
        .collect())
}

/// The first document a unit writes, to order units by.
fn first_document(commit: &OwnedCommit) -> Option<(&str, &str, &str)> {
    commit.writes.first().map(|write| {
        let (collection, key) = write.document();
        (commit.module.as_str(), collection, key)
    })
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
