//! Kafka (SPEC §6): topic `T` is the Kafka topic `<prefix>T`, the value is
//! the envelope JSON, the key the partition key (or the id). Each module
//! consumes with its own group `<group>.<module>`; one partition's messages
//! are handled in order, different partitions concurrently; an offset is
//! stored (and later committed) only after the message's unit of work
//! committed or its failure was recorded.
//!
//! The consumer loop never waits for a worker: a partition whose worker's
//! queue is full is paused (and resumed once it has drained to half), so the
//! other partitions and the group's rebalances keep being served. Messages
//! carry the epoch of their partition's assignment; a worker drops those of
//! a partition revoked since, and never stores an offset for one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::Notify;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod group;
mod worker;

use super::consumer;
use crate::backoff::Backoff;
use crate::broker::kafka::KafkaBus;
use crate::dispatch::Dispatcher;
use group::{GroupConsumer, SharedOwnership};
use worker::PartitionWorker;

/// First pause before handling a message again after the store failed;
/// doubled up to `MAX_STORE_RETRY`.
const STORE_RETRY: Duration = Duration::from_millis(250);
const MAX_STORE_RETRY: Duration = Duration::from_secs(2);

/// Starts a consumer per loaded module, and more as modules appear.
pub async fn run(
    bus: Arc<KafkaBus>,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    consumer::for_each_module(&dispatcher.clone(), shutdown.clone(), |name| {
        tracker.spawn(consume(
            bus.clone(),
            dispatcher.clone(),
            name,
            shutdown.clone(),
            tracker.clone(),
        ));
    })
    .await;
}

async fn consume(
    bus: Arc<KafkaBus>,
    dispatcher: Arc<Dispatcher>,
    name: String,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    // Waits for the module to be loaded, then consumes until shutdown. A
    // module removed later keeps its group; its offsets wait for it.
    let Some(module) = consumer::loaded(&dispatcher, &name, &shutdown).await else {
        return;
    };
    let topics = module.consumed_topics();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let consumer = loop {
        match group::subscribe(&bus, &name, &topics).await {
            Ok(c) => break Arc::new(c),
            Err(e) => {
                tracing::warn!(module = %name, error = %e, "kafka consumer: cannot subscribe");
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    };
    let poller = Poller {
        queue: bus.settings.partition_queue.max(1),
        ownership: consumer.context().ownership.clone(),
        drained: Arc::new(Notify::new()),
        partitions: HashMap::new(),
        bus,
        dispatcher,
        consumer: consumer.clone(),
        name,
        shutdown,
        tracker,
    };
    let name = poller.name.clone();
    poller.run(topics).await;
    // Commit what was stored before leaving the group.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(module = %name, error = %e, "final offset commit");
    }
}

/// The consumer loop of one module: polls the group, hands each message to
/// its partition's worker, pauses partitions whose worker is behind, and
/// follows the module's topics through reloads.
struct Poller {
    bus: Arc<KafkaBus>,
    dispatcher: Arc<Dispatcher>,
    consumer: Arc<GroupConsumer>,
    name: String,
    /// Messages a partition's worker may have queued.
    queue: usize,
    ownership: SharedOwnership,
    /// Workers say when their queue has drained, so held messages move on.
    drained: Arc<Notify>,
    partitions: HashMap<Partition, Slot>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Poller {
    async fn run(mut self, mut topics: Vec<String>) {
        // A reload may change the topics the module consumes: follow them.
        let mut follow = tokio::time::interval(consumer::SUPERVISE_EVERY);
        follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Rebalances seen by the loop (see `Ownership::changes`).
        let mut seen_changes = 0u64;
        loop {
            let holding = self.partitions.values().any(|s| !s.held.is_empty());
            let message = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.drained.notified(), if holding => {
                    if !refill(&self.consumer, &self.ownership, &self.name, &mut self.partitions, self.queue) {
                        return;
                    }
                    continue;
                }
                _ = follow.tick() => {
                    group::follow_topics(&self.bus, &self.consumer, &self.dispatcher, &self.name, &mut topics).await;
                    continue;
                }
                m = self.consumer.recv() => m.map(|m| m.detach()),
            };
            // Rebalance callbacks run inside `recv`: forget what was held for
            // partitions that were revoked (they are read again by their owner).
            let changes = self.ownership.lock().changes;
            if changes != seen_changes {
                seen_changes = changes;
                forget_revoked(&self.ownership, &self.name, &mut self.partitions);
            }
            match message {
                Ok(message) => {
                    if !self.hand_over(message) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(module = %self.name, error = %e, "kafka consumer: receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Gives `message` to its partition's worker (started on first use), or
    /// holds it and pauses the partition when the worker is behind. False
    /// when the worker has stopped (its module was unloaded).
    fn hand_over(&mut self, message: OwnedMessage) -> bool {
        tracing::debug!(
            module = %self.name, topic = message.topic(), partition = message.partition(),
            offset = message.offset(), "kafka: received"
        );
        let key = (message.topic().to_string(), message.partition());
        let Some(epoch) = self.ownership.lock().epoch(&key) else {
            // Not ours (any more): whoever owns it reads it from the commit.
            tracing::debug!(
                module = %self.name, topic = message.topic(), partition = message.partition(),
                offset = message.offset(), "kafka: dropped, partition not assigned"
            );
            return true;
        };
        let slot = self.slot(&key, epoch);
        let job = Job { epoch, message };
        if !slot.held.is_empty() {
            // Paused, but fetched before the pause took effect: keep the order.
            slot.held.push_back(job);
            return true;
        }
        match slot.sender.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(job)) => {
                // The worker is behind: stop fetching this partition and keep
                // polling for the others (and for the group's rebalances).
                slot.held.push_back(job);
                pause_or_resume(&self.consumer, &self.name, &key, true);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// The slot of partition `key` under assignment `epoch`, its worker
    /// started if it has none yet.
    fn slot(&mut self, key: &Partition, epoch: u64) -> &mut Slot {
        let slot = self.partitions.entry(key.clone()).or_insert_with(|| {
            // One worker per partition keeps that partition's order.
            let (tx, rx) = mpsc::channel(self.queue);
            let worker = PartitionWorker {
                bus: self.bus.clone(),
                dispatcher: self.dispatcher.clone(),
                consumer: self.consumer.clone(),
                ownership: self.ownership.clone(),
                drained: self.drained.clone(),
                module: self.name.clone(),
            };
            self.tracker
                .spawn(worker.run(rx, self.queue, self.shutdown.clone()));
            Slot {
                sender: tx,
                epoch,
                held: VecDeque::new(),
            }
        });
        if slot.epoch != epoch {
            // Reassigned since: what was held belongs to the old assignment.
            slot.held.clear();
            slot.epoch = epoch;
        }
        slot
    }
}
/// A topic and partition.
type Partition = (String, i32);

/// A message and the assignment (epoch) of its partition it was read under.
struct Job {
    epoch: u64,
    message: OwnedMessage,
}

/// The consumer loop's side of one partition's worker.
struct Slot {
    sender: mpsc::Sender<Job>,
    /// The assignment the held messages were read under.
    epoch: u64,
    /// Read while the worker's queue was full, in order; while any is held,
    /// the partition is paused.
    held: VecDeque<Job>,
}

/// Moves held messages to workers whose queue drained to half or less, and
/// resumes the partitions with nothing held any more. False when a worker
/// stopped (its module was unloaded).
fn refill(
    consumer: &GroupConsumer,
    ownership: &SharedOwnership,
    module: &str,
    partitions: &mut HashMap<Partition, Slot>,
    queue: usize,
) -> bool {
    for (key, slot) in partitions.iter_mut() {
        if slot.held.is_empty() {
            continue;
        }
        if ownership.lock().epoch(key) != Some(slot.epoch) {
            // Revoked: the new owner (maybe this member again) reads these.
            slot.held.clear();
            continue;
        }
        let queued = slot.sender.max_capacity() - slot.sender.capacity();
        if queued > queue / 2 {
            continue;
        }
        while let Some(job) = slot.held.pop_front() {
            match slot.sender.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    slot.held.push_front(job);
                    break;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        if slot.held.is_empty() {
            pause_or_resume(consumer, module, key, false);
        }
    }
    true
}

/// Drops what is held for partitions no longer assigned under the same
/// epoch. Their pause needs no undoing: a partition assigned again is
/// resumed by `GroupLog::post_rebalance`.
fn forget_revoked(
    ownership: &SharedOwnership,
    module: &str,
    partitions: &mut HashMap<Partition, Slot>,
) {
    let owned = ownership.lock();
    for ((topic, partition), slot) in partitions.iter_mut() {
        let key = (topic.clone(), *partition);
        if !slot.held.is_empty() && owned.epoch(&key) != Some(slot.epoch) {
            tracing::debug!(
                module,
                topic,
                partition,
                held = slot.held.len(),
                "kafka: partition revoked while paused; held messages dropped"
            );
            slot.held.clear();
        }
    }
}

fn pause_or_resume(consumer: &GroupConsumer, module: &str, key: &Partition, pause: bool) {
    let mut list = TopicPartitionList::new();
    list.add_partition(&key.0, key.1);
    let result = if pause {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    match result {
        Ok(()) => tracing::debug!(
            module, topic = %key.0, partition = key.1, pause,
            "kafka: partition {}", if pause { "paused, its worker is behind" } else { "resumed" }
        ),
        Err(e) => tracing::warn!(
            module, topic = %key.0, partition = key.1, pause, error = %e,
            "kafka: cannot pause or resume a partition"
        ),
    }
}
