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

use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::consumer::{self, Settle};
use crate::backoff::Backoff;
use crate::broker::kafka::{KafkaBus, base_config};
use crate::dispatch::{Dispatcher, Malformed};
use crate::registry::LoadedModule;
use switchyard_model::envelope::Envelope;

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
    let registry = dispatcher.registry.clone();
    consumer::for_each_module(&registry, shutdown.clone(), |name| {
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
    let Some(module) = consumer::loaded(&dispatcher.registry, &name, &shutdown).await else {
        return;
    };
    let mut topics = module.consumed_topics();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let consumer = loop {
        match subscribe(&bus, &name, &topics).await {
            Ok(c) => break Arc::new(c),
            Err(e) => {
                tracing::warn!(module = %name, error = %e, "kafka consumer: cannot subscribe");
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    };
    // A reload may change the topics the module consumes: follow them.
    let mut follow = tokio::time::interval(consumer::SUPERVISE_EVERY);
    follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let queue = bus.settings.partition_queue.max(1);
    let ownership = consumer.context().ownership.clone();
    // Workers say when their queue has drained, so held messages move on.
    let drained = Arc::new(Notify::new());
    let mut partitions: HashMap<Partition, Slot> = HashMap::new();
    // Rebalances seen by the loop (see `Ownership::changes`).
    let mut seen_changes = 0u64;
    'poll: loop {
        let holding = partitions.values().any(|s| !s.held.is_empty());
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = drained.notified(), if holding => {
                if !refill(&consumer, &ownership, &name, &mut partitions, queue) {
                    break;
                }
                continue;
            }
            _ = follow.tick() => {
                follow_topics(&bus, &consumer, &dispatcher, &name, &mut topics).await;
                continue;
            }
            m = consumer.recv() => m.map(|m| m.detach()),
        };
        // Rebalance callbacks run inside `recv`: forget what was held for
        // partitions that were revoked (they are read again by their owner).
        let changes = ownership.lock().changes;
        if changes != seen_changes {
            seen_changes = changes;
            forget_revoked(&ownership, &name, &mut partitions);
        }
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(module = %name, error = %e, "kafka consumer: receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        tracing::debug!(
            module = %name, topic = message.topic(), partition = message.partition(),
            offset = message.offset(), "kafka: received"
        );
        let key = (message.topic().to_string(), message.partition());
        let Some(epoch) = ownership.lock().epoch(&key) else {
            // Not ours (any more): whoever owns it reads it from the commit.
            tracing::debug!(
                module = %name, topic = message.topic(), partition = message.partition(),
                offset = message.offset(), "kafka: dropped, partition not assigned"
            );
            continue;
        };
        let slot = partitions.entry(key.clone()).or_insert_with(|| {
            // One worker per partition keeps that partition's order.
            let (tx, rx) = mpsc::channel(queue);
            let worker = PartitionWorker {
                bus: bus.clone(),
                dispatcher: dispatcher.clone(),
                consumer: consumer.clone(),
                ownership: ownership.clone(),
                drained: drained.clone(),
                module: name.clone(),
            };
            tracker.spawn(worker.run(rx, queue, shutdown.clone()));
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
        let job = Job { epoch, message };
        if !slot.held.is_empty() {
            // Paused, but fetched before the pause took effect: keep the order.
            slot.held.push_back(job);
            continue;
        }
        match slot.sender.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                // The worker is behind: stop fetching this partition and keep
                // polling for the others (and for the group's rebalances).
                slot.held.push_back(job);
                pause_or_resume(&consumer, &name, &key, true);
            }
            Err(TrySendError::Closed(_)) => break 'poll,
        }
    }
    drop(partitions);
    // Commit what was stored before leaving the group.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(module = %name, error = %e, "final offset commit");
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

/// The partitions this member owns, as the rebalance callbacks say, each
/// with the epoch of its assignment: messages carry the epoch they were read
/// under, and a worker neither handles nor stores the offset of a message of
/// an assignment that has ended (its partition is read again by the owner,
/// from the committed offset).
#[derive(Default)]
struct Ownership {
    epochs: HashMap<Partition, u64>,
    next_epoch: u64,
    /// Counts rebalances, so the consumer loop notices one cheaply.
    changes: u64,
}

impl Ownership {
    fn epoch(&self, key: &Partition) -> Option<u64> {
        self.epochs.get(key).copied()
    }
}

/// Shared by the rebalance callbacks (run inside `recv`, on the consumer
/// loop's task) and the workers; held only for map updates and for
/// `store_offsets` (which does not wait on the poll), never across an await.
#[derive(Clone, Default)]
struct SharedOwnership(Arc<std::sync::Mutex<Ownership>>);

impl SharedOwnership {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ownership> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tracks which partitions a module's consumer owns, and says in the log
/// which it gains and loses.
struct GroupLog {
    module: String,
    ownership: SharedOwnership,
}

impl ClientContext for GroupLog {}

impl ConsumerContext for GroupLog {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::debug!(module = %self.module, ?rebalance, "kafka: pre rebalance");
        // Before librdkafka unassigns (and commits what was stored): from
        // here on, workers store nothing more for these partitions.
        let mut owned = self.ownership.lock();
        owned.changes += 1;
        match rebalance {
            Rebalance::Revoke(list) => {
                for e in list.elements() {
                    owned.epochs.remove(&(e.topic().to_string(), e.partition()));
                }
            }
            // rdkafka unassigns everything after a failed rebalance.
            Rebalance::Error(_) => owned.epochs.clear(),
            Rebalance::Assign(_) => {}
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        let listed = offsets
            .elements()
            .iter()
            .map(|e| format!("{}[{}]@{:?}", e.topic(), e.partition(), e.offset()))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::debug!(module = %self.module, ?result, offsets = %listed, "kafka: committed");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let listed = |list: &TopicPartitionList| {
            list.elements()
                .iter()
                .map(|e| format!("{}[{}]", e.topic(), e.partition()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match rebalance {
            Rebalance::Assign(list) => {
                {
                    let mut owned = self.ownership.lock();
                    owned.changes += 1;
                    for e in list.elements() {
                        let epoch = owned.next_epoch;
                        owned.next_epoch += 1;
                        owned
                            .epochs
                            .insert((e.topic().to_string(), e.partition()), epoch);
                    }
                }
                // librdkafka keeps a pause across unassign and assign: a
                // partition paused under its last assignment starts afresh
                // (from the committed offset) under this one. Resuming one
                // that is not paused does nothing.
                if let Err(e) = consumer.resume(list) {
                    tracing::warn!(module = %self.module, error = %e, "kafka: cannot resume assigned partitions");
                }
                tracing::info!(module = %self.module, partitions = %listed(list), "kafka: partitions assigned");
            }
            Rebalance::Revoke(list) => {
                tracing::info!(module = %self.module, partitions = %listed(list), "kafka: partitions revoked");
            }
            Rebalance::Error(e) => {
                tracing::warn!(module = %self.module, error = %e, "kafka: rebalance failed");
            }
        }
    }
}

type GroupConsumer = StreamConsumer<GroupLog>;

async fn subscribe(
    bus: &KafkaBus,
    module: &str,
    topics: &[String],
) -> Result<GroupConsumer, KafkaError> {
    let mut config = base_config(&bus.settings);
    config
        .set("group.id", format!("{}.{module}", bus.settings.group))
        // Offsets are stored by hand after each message's commit, and the
        // stored ones committed in the background.
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.offset.reset", "earliest");
    for (k, v) in &bus.settings.consumer {
        config.set(k, v);
    }
    let consumer: GroupConsumer = config.create_with_context(GroupLog {
        module: module.to_string(),
        ownership: SharedOwnership::default(),
    })?;
    resubscribe(bus, &consumer, topics).await?;
    tracing::info!(module, ?topics, "kafka consumer subscribed");
    Ok(consumer)
}

/// Subscribes `consumer` to the topics its module consumes now, when a
/// reload changed them (the group rebalances; partitions of topics no longer
/// consumed are revoked like any other). A failure is retried at the next
/// look.
async fn follow_topics(
    bus: &KafkaBus,
    consumer: &GroupConsumer,
    dispatcher: &Dispatcher,
    name: &str,
    topics: &mut Vec<String>,
) {
    let Some(module) = consumer::current(&dispatcher.registry, name) else {
        return;
    };
    let now = module.consumed_topics();
    let same = now.len() == topics.len() && now.iter().all(|t| topics.contains(t));
    if same {
        return;
    }
    match resubscribe(bus, consumer, &now).await {
        Ok(()) => {
            tracing::info!(module = name, from = ?topics, to = ?now, "kafka consumer: topics changed; subscribed again");
            *topics = now;
        }
        Err(e) => {
            tracing::warn!(module = name, error = %e, "kafka consumer: cannot subscribe to the new topics; trying again");
        }
    }
}

async fn resubscribe(
    bus: &KafkaBus,
    consumer: &GroupConsumer,
    topics: &[String],
) -> Result<(), KafkaError> {
    if topics.is_empty() {
        consumer.unsubscribe();
        return Ok(());
    }
    bus.ensure_topics(topics).await?;
    let names: Vec<String> = topics.iter().map(|t| bus.topic(t)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)
}

/// A record's value as its dead letter keeps it: the JSON it holds, or else
/// its text.
fn raw_value(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(payload).into_owned())
    })
}

/// Stores the offset after `message` (the next one to read) for the next
/// commit. Not `Consumer::store_offset`: it calls librdkafka's legacy
/// `rd_kafka_offset_store`, which itself adds 1 to the offset it is given, so
/// passing `offset + 1` there committed one record too far and a member
/// resuming from that commit (after a kill, a rebalance or a restart)
/// skipped the record after the last one handled.
fn store_next(consumer: &GroupConsumer, message: &OwnedMessage) -> Result<(), KafkaError> {
    let mut next = TopicPartitionList::new();
    next.add_partition_offset(
        message.topic(),
        message.partition(),
        Offset::Offset(message.offset() + 1),
    )?;
    consumer.store_offsets(&next)
}

struct PartitionWorker {
    bus: Arc<KafkaBus>,
    dispatcher: Arc<Dispatcher>,
    consumer: Arc<GroupConsumer>,
    ownership: SharedOwnership,
    drained: Arc<Notify>,
    module: String,
}

impl PartitionWorker {
    async fn run(self, mut rx: mpsc::Receiver<Job>, queue: usize, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(STORE_RETRY, MAX_STORE_RETRY);
        'messages: while let Some(Job { epoch, message }) = rx.recv().await {
            backoff.reset();
            if rx.len() <= queue / 2 {
                // A paused partition may take more (see `refill`).
                self.drained.notify_one();
            }
            // The module may have been swapped since: use the current version.
            let Some(module) = consumer::current(&self.dispatcher.registry, &self.module) else {
                // Unloaded: stop storing offsets; the rest is redelivered when it returns.
                return;
            };
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                if !self.owns(&message, epoch) {
                    // Revoked: the partition's owner reads it again from
                    // the committed offset; handling it here would run it
                    // twice at once.
                    tracing::debug!(
                        module = %self.module, topic = message.topic(),
                        partition = message.partition(), offset = message.offset(),
                        "kafka: dropped, partition revoked"
                    );
                    continue 'messages;
                }
                if self.handle(&module, &message).await {
                    break;
                }
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
            let stored = {
                // Under the lock, so a revoke cannot slip in between the
                // check and the store.
                let owned = self.ownership.lock();
                if owned.epoch(&(message.topic().to_string(), message.partition())) == Some(epoch) {
                    store_next(&self.consumer, &message).map(|()| true)
                } else {
                    Ok(false)
                }
            };
            match stored {
                Ok(true) => tracing::debug!(
                    module = %self.module, topic = message.topic(),
                    partition = message.partition(), offset = message.offset() + 1,
                    "kafka: offset stored"
                ),
                // Handled while the partition was revoked: an older offset
                // than the new owner's must not be committed; it redelivers
                // this one, which the inbox answers as a duplicate.
                Ok(false) => tracing::debug!(
                    module = %self.module, topic = message.topic(),
                    partition = message.partition(), offset = message.offset() + 1,
                    "kafka: offset not stored, partition revoked"
                ),
                Err(e) => tracing::debug!(
                    module = %self.module, topic = message.topic(),
                    partition = message.partition(), offset = message.offset() + 1,
                    error = %e, "kafka: offset not stored"
                ),
            }
        }
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
        let derived = || {
            format!(
                "kafka:{}:{}:{}",
                message.topic(),
                message.partition(),
                message.offset()
            )
        };
        let parsed = match message.payload() {
            None => Err("message has no value".to_string()),
            Some(value) => Envelope::from_json(value, derived)
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
        let parsed = parsed.map_err(|reason| Malformed {
            topic: topic.to_string(),
            message_id: derived(),
            subtopic: String::new(),
            raw: raw_value(message.payload().unwrap_or_default()),
            reason,
        });
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
