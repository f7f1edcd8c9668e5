//! The embedded log (no broker configured): the outbox table is the log, and
//! each module reads the topics it consumes from it in order, with its own
//! cursor. The inbox makes a redelivery after a crash harmless.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::consumer::{self, Settle};
use crate::backoff::Backoff;
use crate::dispatch::Dispatcher;
use switchyard_store::{Store, StoreError};

/// Entries read per query.
const BATCH: u32 = 64;
/// Longest sleep between looks at the log when nothing wakes the reader.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// First pause after the store failed before reading again; doubled up to
/// `MAX_STORE_RETRY`.
const STORE_RETRY: Duration = Duration::from_millis(250);
const MAX_STORE_RETRY: Duration = Duration::from_secs(2);

/// Starts one reader per loaded module, and more as modules appear. The
/// readers keep their cursors in `store` (the log's own table).
pub async fn run(
    dispatcher: Arc<Dispatcher>,
    store: Store,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    consumer::for_each_module(&dispatcher.clone(), shutdown.clone(), |name| {
        tracker.spawn(consume(
            dispatcher.clone(),
            store.clone(),
            name,
            shutdown.clone(),
        ));
    })
    .await;
}

/// Prepares the cursors of the modules loaded now, so a module sees every
/// entry appended after the host started serving.
pub async fn init_cursors(dispatcher: &Dispatcher, store: &Store) -> Result<(), StoreError> {
    for name in dispatcher.module_names() {
        store.cursor(&consumer_name(&name)).await?;
    }
    Ok(())
}

/// The log cursor of `module`'s reader.
pub(crate) fn consumer_name(module: &str) -> String {
    format!("embedded.{module}")
}

async fn consume(
    dispatcher: Arc<Dispatcher>,
    store: Store,
    name: String,
    shutdown: CancellationToken,
) {
    let consumer = consumer_name(&name);
    let mut backoff = Backoff::new(STORE_RETRY, MAX_STORE_RETRY);
    while !shutdown.is_cancelled() {
        // Register for the wake-up before looking, so an append between the
        // read and the wait is not missed.
        let appended = dispatcher.log_appended().notified();
        tokio::pin!(appended);
        appended.as_mut().enable();

        let Some(module) = dispatcher.module(&name) else {
            // Unloaded for now; its cursor waits for it.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(IDLE_POLL) => continue,
            }
        };
        let entries = match store.cursor(&consumer).await {
            Ok(position) => {
                store
                    .read_log(position, &module.consumed_topics(), BATCH)
                    .await
            }
            Err(e) => Err(e),
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(module = %name, error = %e, "embedded log: cannot read; retrying");
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        if entries.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut appended => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        }
        // The cursor moves once per read, past the entries handled: after a
        // crash the rest of a read is delivered again and the inbox answers.
        let mut handled = None;
        for entry in entries {
            if shutdown.is_cancelled() {
                break;
            }
            // Entries of the log are envelopes the host wrote; a failure was
            // recorded (dead letter in the store) by the dispatcher, and
            // there is no broker copy to make.
            match consumer::handle(&dispatcher, &module, Ok(entry.envelope), 1).await {
                Settle::Ack | Settle::DeadLetter(_) => {
                    backoff.reset();
                    handled = Some(entry.seq);
                }
                Settle::Retry => {
                    // Nothing was recorded: read this entry again once the store is back.
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                    break;
                }
            }
        }
        if let Some(seq) = handled
            && let Err(e) = store.set_cursor(&consumer, seq).await
        {
            tracing::warn!(module = %name, error = %e, "embedded log: cannot advance the cursor");
        }
    }
}
