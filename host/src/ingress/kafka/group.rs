//! One module's consumer group: which partitions this member owns (with an
//! epoch per assignment), the rebalance callbacks that keep that, and the
//! subscription, followed through reloads.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;

use super::Partition;
use crate::broker::kafka::{KafkaBus, base_config};
use crate::dispatch::Dispatcher;

/// The partitions this member owns, as the rebalance callbacks say, each
/// with the epoch of its assignment: messages carry the epoch they were read
/// under, and a worker neither handles nor stores the offset of a message of
/// an assignment that has ended (its partition is read again by the owner,
/// from the committed offset).
#[derive(Default)]
pub(super) struct Ownership {
    epochs: HashMap<Partition, u64>,
    next_epoch: u64,
    /// Counts rebalances, so the consumer loop notices one cheaply.
    pub(super) changes: u64,
}

impl Ownership {
    pub(super) fn epoch(&self, key: &Partition) -> Option<u64> {
        self.epochs.get(key).copied()
    }
}

/// Shared by the rebalance callbacks (run inside `recv`, on the consumer
/// loop's task) and the workers; held only for map updates and for
/// `store_offsets` (which does not wait on the poll), never across an await.
#[derive(Clone, Default)]
pub(super) struct SharedOwnership(Arc<std::sync::Mutex<Ownership>>);

impl SharedOwnership {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Ownership> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tracks which partitions a module's consumer owns, and says in the log
/// which it gains and loses.
pub(super) struct GroupLog {
    module: String,
    pub(super) ownership: SharedOwnership,
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

pub(super) type GroupConsumer = StreamConsumer<GroupLog>;

pub(super) async fn subscribe(
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
pub(super) async fn follow_topics(
    bus: &KafkaBus,
    consumer: &GroupConsumer,
    dispatcher: &Dispatcher,
    name: &str,
    topics: &mut Vec<String>,
) {
    let Some(module) = dispatcher.module(name) else {
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
