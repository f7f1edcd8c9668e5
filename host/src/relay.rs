//! The outbox relay: committed events (and failure events) go from the
//! outbox table to their topics on the broker (Redis streams or Kafka
//! topics), then are marked published.
//! At-least-once: a crash between the append and the mark publishes again,
//! and consumers' inboxes drop the repeat (the event id is kept). With
//! several hosts on one PostgreSQL, each entry is claimed by one relay at a
//! time (`Store::claim_unpublished`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::broker::Broker;
use switchyard_store::Store;

/// Events published per round trip.
const BATCH: u32 = 256;
/// Longest sleep when nothing wakes the relay (events written by another host).
const IDLE_POLL: Duration = Duration::from_millis(500);
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

pub async fn run(store: Store, broker: Broker, appended: Arc<Notify>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
    let mut failing = false;
    while !shutdown.is_cancelled() {
        let woken = appended.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let published = async {
            // Several hosts may share the outbox (PostgreSQL): the claim
            // keeps them from publishing the same entries at once, and is
            // released if this host fails or dies before marking them.
            let claim = store
                .claim_unpublished(BATCH)
                .await
                .map_err(|e| e.to_string())?;
            let count = claim.entries.len();
            if count == 0 {
                return Ok(0);
            }
            let envelopes: Vec<_> = claim.entries.iter().map(|e| e.envelope.clone()).collect();
            if let Err(e) = broker.append(&envelopes).await {
                claim.release().await;
                return Err(e);
            }
            claim.published().await.map_err(|e| e.to_string())?;
            Ok::<usize, String>(count)
        };
        match published.await {
            Ok(0) => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
            }
            Ok(n) => {
                if failing {
                    tracing::info!("outbox relay: publishing again");
                    failing = false;
                }
                backoff.reset();
                tracing::trace!(count = n, "outbox relay: published");
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: cannot publish; events stay in the outbox");
                failing = true;
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    }
}
