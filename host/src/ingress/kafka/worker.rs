//! A partition's worker: handles its messages one at a time, in order,
//! settles each (ack by storing the offset, dead letter, or retry), and
//! never stores an offset for a partition it no longer owns.

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

pub(super) struct PartitionWorker {
    pub(super) bus: Arc<KafkaBus>,
    pub(super) dispatcher: Arc<Dispatcher>,
    pub(super) consumer: Arc<GroupConsumer>,
    pub(super) ownership: SharedOwnership,
    pub(super) drained: Arc<Notify>,
    pub(super) module: String,
}

impl PartitionWorker {
    pub(super) async fn run(
        self,
        mut rx: mpsc::Receiver<Job>,
        queue: usize,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::new(STORE_RETRY, MAX_STORE_RETRY);
        'messages: while let Some(Job { epoch, message }) = rx.recv().await {
            backoff.reset();
            if rx.len() <= queue / 2 {
                // A paused partition may take more (see `refill`).
                self.drained.notify_one();
            }
            // The module may have been swapped since: use the current
            // version. While it is unloaded the message waits here (its
            // offset is not stored, the queue fills and the partition is
            // paused), and is handled once the module is back.
            let Some(module) = consumer::loaded(&self.dispatcher, &self.module, &shutdown).await
            else {
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
