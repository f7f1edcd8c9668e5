//! Retention (`[retention]`): the inbox and the outbox grow by a row or
//! more per message; this deletes rows once they are old enough and no
//! reader needs them, in small batches so message commits keep flowing. It
//! also clears compiled components nobody has loaded for a long time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ingress::embedded;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::sandbox::cache;
use switchyard_model::manifest::RetentionSettings;
use switchyard_store::{OutboxReaders, Store, StoreError};

/// Rows deleted per statement: a short transaction between message commits.
const BATCH: u32 = 1_000;
/// Pause between batches, so the writer serves commits in between.
const BETWEEN_BATCHES: Duration = Duration::from_millis(10);

#[derive(Clone, Copy)]
enum Table {
    Inbox,
    Outbox,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Inbox => "inbox",
            Table::Outbox => "outbox",
        }
    }
}

/// What pruning reads and writes.
pub struct Retention {
    pub store: Store,
    /// The modules loaded now: whose embedded-log cursors hold rows back.
    pub registry: Arc<Registry>,
    /// Where pruned rows are counted.
    pub metrics: Arc<Metrics>,
    /// A broker carries the events (else the outbox is the embedded log).
    pub relay: bool,
}

/// Prunes every `settings.every` (the first pass right away) until shutdown.
/// `cache_dir`: the compiled-component cache.
pub async fn run(
    retention: Retention,
    settings: RetentionSettings,
    cache_dir: PathBuf,
    shutdown: CancellationToken,
) {
    let tables = [
        (Table::Inbox, settings.inbox),
        (Table::Outbox, settings.outbox),
    ];
    if tables.iter().all(|(_, age)| age.is_none()) && settings.cache.is_none() {
        return;
    }
    let mut ticks = tokio::time::interval(settings.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for (table, age) in tables {
            let Some(age) = age else { continue };
            match prune(&retention, table, age, &shutdown).await {
                Ok(0) => {}
                Ok(rows) => {
                    retention.metrics.pruned(table.name(), rows);
                    tracing::info!(table = table.name(), rows, older_than = ?age, "retention: pruned");
                }
                // Tried again at the next tick; nothing is lost by waiting.
                Err(e) => {
                    tracing::warn!(table = table.name(), error = %e, "retention: pruning failed");
                }
            }
        }
        if let Some(unused) = settings.cache {
            let dir = cache_dir.clone();
            match tokio::task::spawn_blocking(move || cache::prune(&dir, unused)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(files)) => {
                    tracing::info!(dir = %cache_dir.display(), files, unused_for = ?unused, "retention: compiled components removed");
                }
                Ok(Err(e)) => {
                    tracing::warn!(dir = %cache_dir.display(), error = %e, "retention: cannot prune the compiled-component cache");
                }
                Err(e) => tracing::warn!(error = %e, "retention: cache pruning stopped"),
            }
        }
    }
}

/// Deletes batch after batch until a batch comes back short.
async fn prune(
    retention: &Retention,
    table: Table,
    age: Duration,
    shutdown: &CancellationToken,
) -> Result<u64, StoreError> {
    let store = &retention.store;
    let readers = match (table, retention.relay) {
        (Table::Inbox, _) | (Table::Outbox, true) => OutboxReaders::Relay,
        (Table::Outbox, false) => OutboxReaders::EmbeddedLog(read_positions(retention).await?),
    };
    let mut total = 0;
    loop {
        let deleted = match table {
            Table::Inbox => store.prune_inbox(age, BATCH).await?,
            Table::Outbox => store.prune_outbox(age, BATCH, &readers).await?,
        };
        total += deleted;
        if deleted < u64::from(BATCH) || shutdown.is_cancelled() {
            return Ok(total);
        }
        tokio::time::sleep(BETWEEN_BATCHES).await;
    }
}

/// For each topic a loaded module consumes, how far all of its consumers
/// have read the embedded log. A module's cursor only moves when it reads
/// one of its own topics, so one quiet consumer must not hold back the
/// pruning of every other topic: positions are per topic.
async fn read_positions(retention: &Retention) -> Result<BTreeMap<String, i64>, StoreError> {
    let mut positions: BTreeMap<String, i64> = BTreeMap::new();
    let modules = retention.registry.routes().modules.clone();
    for (name, module) in modules.iter() {
        let position = retention
            .store
            .cursor(&embedded::consumer_name(name))
            .await?;
        for topic in module.consumed_topics() {
            positions
                .entry(topic)
                .and_modify(|p| *p = (*p).min(position))
                .or_insert(position);
        }
    }
    Ok(positions)
}
