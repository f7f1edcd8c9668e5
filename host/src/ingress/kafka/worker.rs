//! A partition's worker: handles its records up to a window at once, one at
//! a time per key and in offset order within a key, settles each (ack,
//! dead letter, or retry), stores the lowest unfinished offset for commit,
//! and never stores an offset for a partition it no longer owns.

use std::sync::Arc;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::group::{GroupConsumer, SharedOwnership};
use super::{Job, MAX_STORE_RETRY, STORE_RETRY};
use crate::backoff::Backoff;
use crate::broker::kafka::KafkaBus;
use crate::dispatch::{Dispatcher, Malformed};
use crate::ingress::consumer::{self, Settle};
use crate::registry::LoadedModule;
use switchyard_model::envelope::Envelope;

/// A record's value as its dead letter keeps it: the JSON it holds, or else
/// its text.
fn raw_value(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(payload).into_owned())
    })
}

/// Stores `next` (the next offset to read) of a partition for the next
/// commit. Not `Consumer::store_offset`: it calls librdkafka's legacy
/// `rd_kafka_offset_store`, which itself adds 1 to the offset it is given, so
/// passing `offset + 1` there committed one record too far and a member
/// resuming from that commit (after a kill, a rebalance or a restart)
/// skipped the record after the last one handled.
fn store_offset(
    consumer: &GroupConsumer,
    topic: &str,
    partition: i32,
    next: i64,
) -> Result<(), KafkaError> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(next))?;
    consumer.store_offsets(&list)
}

/// How far the host's clock may be behind the clock that stamped a record
/// for [`RecordId::handled_under_legacy_id`] still to see the record as one
/// handled before it was stamped.
const CLOCK_SKEW_MS: i64 = 60_000;

/// The id the host gives a record whose envelope has none:
/// `kafka:<topic>:<partition>:<offset>:<timestamp-ms>`. The offset alone
/// repeats when a topic is deleted and created again (offsets start over);
/// with the record's timestamp a record of the new topic is not taken for a
/// duplicate of the old one's. A record without a timestamp (message format
/// v0) keeps the offset-only id.
#[derive(Debug, PartialEq, Eq)]
struct RecordId {
    id: String,
    /// The offset-only id earlier hosts gave (and the record's timestamp):
    /// what a record read again during an upgrade was committed under.
    legacy: Option<(String, i64)>,
}

impl RecordId {
    fn of(message: &OwnedMessage) -> Self {
        Self::new(
            message.topic(),
            message.partition(),
            message.offset(),
            message.timestamp().to_millis(),
        )
    }

    fn new(topic: &str, partition: i32, offset: i64, timestamp: Option<i64>) -> Self {
        let legacy = format!("kafka:{topic}:{partition}:{offset}");
        match timestamp {
            Some(ms) => Self {
                id: format!("{legacy}:{ms}"),
                legacy: Some((legacy, ms)),
            },
            None => Self {
                id: legacy,
                legacy: None,
            },
        }
    }

    /// The offset-only id, if `module` committed this very record under it
    /// (an earlier host handled it and its offset was not committed
    /// before the upgrade): an inbox row of that id written after the
    /// record was stamped. A row older than the record belongs to an
    /// earlier topic of the same name, and this record is new.
    async fn handled_under_legacy_id(
        &self,
        dispatcher: &Dispatcher,
        module: &str,
    ) -> Result<Option<String>, switchyard_store::StoreError> {
        let Some((legacy, stamped)) = &self.legacy else {
            return Ok(None);
        };
        let committed = dispatcher.committed_at(module, legacy).await?;
        Ok(committed
            .filter(|at| same_record(*at, *stamped))
            .map(|_| legacy.clone()))
    }
}

/// Whether an inbox row committed at `committed` (host clock) can be the
/// handling of a record stamped at `stamped` (producer or broker clock).
fn same_record(committed: i64, stamped: i64) -> bool {
    committed >= stamped.saturating_sub(CLOCK_SKEW_MS)
}

pub(super) struct PartitionWorker {
    pub(super) bus: Arc<KafkaBus>,
    pub(super) dispatcher: Arc<Dispatcher>,
    pub(super) consumer: Arc<GroupConsumer>,
    pub(super) ownership: SharedOwnership,
    pub(super) drained: Arc<Notify>,
    pub(super) module: String,
}

/// Records of one partition handled at once. Records with the same Kafka
/// key (the host's producer keys a record by its `partition-key` header, or
/// by its id) run one after another, in offset order; other keys overlap.
const WINDOW: usize = 32;

/// What the worker keeps of the records it took and has not finished.
#[derive(Default)]
struct Window {
    /// The assignment the records in flight were read under.
    epoch: Option<u64>,
    /// Offsets taken and not finished (running or waiting behind their key).
    open: std::collections::BTreeSet<i64>,
    /// Keys with a record running, and the records waiting behind it.
    keys: std::collections::HashMap<Vec<u8>, std::collections::VecDeque<Job>>,
    /// The highest offset taken so far.
    highest: Option<i64>,
    /// The offset last stored for commit.
    stored: Option<i64>,
}

impl Window {
    /// The next offset to read once the open ones are done: the lowest one
    /// still open, else the one after the highest taken.
    fn committable(&self) -> Option<i64> {
        self.open.first().copied().or(self.highest.map(|h| h + 1))
    }
}

/// How one record's handling ended.
struct Settled {
    key: Vec<u8>,
    job: Job,
    /// Applied, dead-lettered or dropped on revocation; false: stopped by
    /// the shutdown before that.
    settled: bool,
}

/// A record's ordering key: its Kafka key, or (none) its own offset.
fn key_of(message: &OwnedMessage) -> Vec<u8> {
    match message.key() {
        Some(k) => k.to_vec(),
        None => format!("offset:{}", message.offset()).into_bytes(),
    }
}

impl PartitionWorker {
    /// Takes the partition's records in order and handles up to [`WINDOW`]
    /// at once (one at a time per key); the offset stored for commit is the
    /// lowest one not finished, so a record is never committed past before
    /// it is applied, settled as a dead letter, or dropped on revocation.
    pub(super) async fn run(
        self,
        mut rx: mpsc::Receiver<Job>,
        queue: usize,
        shutdown: CancellationToken,
    ) {
        let worker = Arc::new(self);
        let mut window = Window::default();
        let mut running: tokio::task::JoinSet<Settled> = tokio::task::JoinSet::new();
        let mut closed = false;
        loop {
            let room = window.open.len() < WINDOW;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    // What runs sees the shutdown too and stops at once;
                    // a record it did not settle keeps its offset open.
                    while let Some(done) = running.join_next().await {
                        let Ok(done) = done else { return };
                        worker.finished(&mut window, &mut running, done, &shutdown);
                    }
                    return;
                }
                Some(done) = running.join_next(), if !running.is_empty() => {
                    let Ok(done) = done else { return };
                    worker.finished(&mut window, &mut running, done, &shutdown);
                }
                job = rx.recv(), if room && !closed => {
                    let Some(job) = job else {
                        closed = true;
                        continue;
                    };
                    if rx.len() <= queue / 2 {
                        // A paused partition may take more (see `refill`).
                        worker.drained.notify_one();
                    }
                    if window.epoch.is_some_and(|e| e != job.epoch) && !window.open.is_empty() {
                        // Reassigned since: finish what was taken under the
                        // old assignment before starting on the new one.
                        while let Some(done) = running.join_next().await {
                            let Ok(done) = done else { return };
                            worker.finished(&mut window, &mut running, done, &shutdown);
                        }
                    }
                    if window.epoch != Some(job.epoch) {
                        window = Window { epoch: Some(job.epoch), ..Window::default() };
                    }
                    let offset = job.message.offset();
                    window.open.insert(offset);
                    window.highest = Some(window.highest.map_or(offset, |h| h.max(offset)));
                    let key = key_of(&job.message);
                    match window.keys.get_mut(&key) {
                        Some(waiting) => waiting.push_back(job),
                        None => {
                            window.keys.insert(key.clone(), Default::default());
                            running.spawn(worker.clone().settle(key, job, shutdown.clone()));
                        }
                    }
                }
                // Nothing running and nothing more to take: the channel
                // closed (the partition's worker is done).
                else => return,
            }
        }
    }

    /// A record's handling ended: if it was settled, the next of its key
    /// starts and the lowest open offset is stored for commit. One that was
    /// not (shutdown) keeps its offset open, so nothing past it is
    /// committed and it is read again.
    fn finished(
        self: &Arc<Self>,
        window: &mut Window,
        running: &mut tokio::task::JoinSet<Settled>,
        done: Settled,
        shutdown: &CancellationToken,
    ) {
        let Settled { key, job, settled } = done;
        if !settled {
            return;
        }
        window.open.remove(&job.message.offset());
        let next = window
            .keys
            .get_mut(&key)
            .and_then(std::collections::VecDeque::pop_front);
        match next {
            Some(next) => {
                running.spawn(self.clone().settle(key, next, shutdown.clone()));
            }
            None => {
                window.keys.remove(&key);
            }
        }
        let Some(offset) = window.committable() else {
            return;
        };
        if window.stored.is_some_and(|s| s >= offset) {
            return;
        }
        let message = &job.message;
        let stored = {
            // Under the lock, so a revoke cannot slip in between the
            // check and the store.
            let owned = self.ownership.lock();
            if owned.epoch(&(message.topic().to_string(), message.partition())) == Some(job.epoch) {
                store_offset(&self.consumer, message.topic(), message.partition(), offset)
                    .map(|()| true)
            } else {
                Ok(false)
            }
        };
        match stored {
            Ok(true) => {
                window.stored = Some(offset);
                tracing::debug!(
                    module = %self.module, topic = message.topic(),
                    partition = message.partition(), offset, "kafka: offset stored"
                );
            }
            // Handled while the partition was revoked: an older offset
            // than the new owner's must not be committed; it redelivers
            // these, which the inbox answers as duplicates.
            Ok(false) => tracing::debug!(
                module = %self.module, topic = message.topic(),
                partition = message.partition(), offset,
                "kafka: offset not stored, partition revoked"
            ),
            Err(e) => tracing::debug!(
                module = %self.module, topic = message.topic(),
                partition = message.partition(), offset,
                error = %e, "kafka: offset not stored"
            ),
        }
    }

    /// Handles one record until it is settled (applied, dead-lettered, or
    /// dropped because the partition was revoked), retrying with backoff;
    /// not settled when the host shuts down first.
    async fn settle(
        self: Arc<Self>,
        key: Vec<u8>,
        job: Job,
        shutdown: CancellationToken,
    ) -> Settled {
        let mut backoff = Backoff::new(STORE_RETRY, MAX_STORE_RETRY);
        // The module may have been swapped since: use the current version.
        // While it is unloaded the record waits here (its offset stays
        // open, the queue fills and the partition is paused), and is
        // handled once the module is back.
        let Some(module) = consumer::loaded(&self.dispatcher, &self.module, &shutdown).await else {
            return Settled {
                key,
                job,
                settled: false,
            };
        };
        let settled = loop {
            if shutdown.is_cancelled() {
                break false;
            }
            if !self.owns(&job.message, job.epoch) {
                // Revoked: the partition's owner reads it again from the
                // committed offset; handling it here would run it twice at
                // once.
                tracing::debug!(
                    module = %self.module, topic = job.message.topic(),
                    partition = job.message.partition(), offset = job.message.offset(),
                    "kafka: dropped, partition revoked"
                );
                // Its offset is not stored: the epoch check refuses it.
                break true;
            }
            if self.handle(&module, &job.message).await {
                break true;
            }
            if !backoff.wait(&shutdown).await {
                break false;
            }
        };
        Settled { key, job, settled }
    }

    /// Whether the message's partition is still assigned as it was when read.
    fn owns(&self, message: &OwnedMessage, epoch: u64) -> bool {
        let key = (message.topic().to_string(), message.partition());
        self.ownership.lock().epoch(&key) == Some(epoch)
    }

    /// Handles one message; false when it must be tried again (nothing recorded).
    async fn handle(&self, module: &Arc<LoadedModule>, message: &OwnedMessage) -> bool {
        let topic = message
            .topic()
            .strip_prefix(&self.bus.settings.prefix)
            .unwrap_or(message.topic());
        let ids = RecordId::of(message);
        let derived = std::cell::Cell::new(false);
        let parsed = match message.payload() {
            None => Err("message has no value".to_string()),
            Some(value) => Envelope::from_json(value, || {
                derived.set(true);
                ids.id.clone()
            })
            .map_err(|e| e.to_string())
            .and_then(|e| {
                if e.topic == topic {
                    Ok(e)
                } else {
                    Err(format!(
                        "envelope topic '{}' does not match Kafka topic '{topic}'",
                        e.topic
                    ))
                }
            }),
        };
        let mut parsed = parsed.map_err(|reason| Malformed {
            topic: topic.to_string(),
            message_id: ids.id.clone(),
            subtopic: String::new(),
            raw: raw_value(message.payload().unwrap_or_default()),
            reason,
        });
        if let Ok(envelope) = &mut parsed
            && derived.get()
        {
            match ids
                .handled_under_legacy_id(&self.dispatcher, &module.name)
                .await
            {
                Ok(Some(legacy)) => envelope.id = legacy,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(module = %module.name, error = %e, "kafka: cannot read the inbox; retrying");
                    return false;
                }
            }
        }
        match consumer::handle(&self.dispatcher, module, parsed, 1).await {
            Settle::Ack => true,
            Settle::Retry => false,
            Settle::DeadLetter(reason) => {
                let mut why = reason.fields(&module.name);
                why.push((
                    "offset",
                    format!("{}:{}", message.partition(), message.offset()),
                ));
                self.dead_letter(topic, message, &why).await
            }
        }
    }

    async fn dead_letter(
        &self,
        topic: &str,
        message: &OwnedMessage,
        why: &[(&str, String)],
    ) -> bool {
        match self.bus.dead_letter(topic, message, why).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(module = %self.module, error = %e, "cannot write to the dlq topic; retrying");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_id_carries_its_timestamp() {
        let ids = RecordId::new("orders", 2, 41, Some(1_764_000_000_123));
        assert_eq!(ids.id, "kafka:orders:2:41:1764000000123");
        assert_eq!(
            ids.legacy,
            Some(("kafka:orders:2:41".to_string(), 1_764_000_000_123))
        );
    }

    #[test]
    fn a_record_without_timestamp_keeps_the_offset_id() {
        let ids = RecordId::new("orders", 0, 7, None);
        assert_eq!(ids.id, "kafka:orders:0:7");
        assert_eq!(ids.legacy, None);
    }

    #[test]
    fn a_legacy_row_counts_only_if_written_after_the_record_was_stamped() {
        // Handled by an older host after it was produced: the same record.
        assert!(same_record(1_000_500, 1_000_000));
        // Host clock a little behind the producer's: still the same record.
        assert!(same_record(1_000_000 - 30_000, 1_000_000));
        // Committed long before this record existed: an earlier topic's.
        assert!(!same_record(1_000_000 - 3_600_000, 1_000_000));
    }
}
