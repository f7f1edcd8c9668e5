//! The host's side of Kafka (SPEC §6): topic `T` is the Kafka topic
//! `<prefix>T`, the value the envelope JSON, the key the partition key (or
//! the id). Producing (the relay, `?wait=false`), topic creation,
//! dead-letter copies to `T.dlq`, consumer-group lag, health.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use switchyard_model::envelope::{Envelope, PARTITION_KEY};
use switchyard_model::manifest::KafkaSettings;

/// How long a produce may wait for its delivery report.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Metadata requests (readiness, topic creation) give up after this long.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The host's side of Kafka: producing, topic creation, health.
pub struct KafkaBus {
    pub settings: KafkaSettings,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist, so each is created once per process.
    created: std::sync::Mutex<HashSet<String>>,
    /// One client per consumer group for reading its committed offsets (for
    /// the lag metric). It never subscribes, so it never joins the group.
    offset_readers: std::sync::Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl KafkaBus {
    pub fn new(settings: KafkaSettings) -> Result<Arc<Self>, KafkaError> {
        let mut producer = base_config(&settings);
        // Idempotent, fully acknowledged: a retried send is never duplicated
        // in the log and never lost once reported delivered.
        producer
            .set("enable.idempotence", "true")
            .set("acks", "all");
        for (k, v) in &settings.producer {
            producer.set(k, v);
        }
        let producer: FutureProducer = producer.create()?;
        let admin: AdminClient<DefaultClientContext> = base_config(&settings).create()?;
        Ok(Arc::new(Self {
            settings,
            producer,
            admin,
            created: Default::default(),
            offset_readers: Default::default(),
        }))
    }

    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.settings.prefix)
    }

    /// Creates the topics that do not exist yet (with `partitions` partitions).
    pub async fn ensure_topics(&self, topics: &[String]) -> Result<(), KafkaError> {
        let missing: Vec<String> = {
            let created = self.created.lock().unwrap_or_else(|p| p.into_inner());
            topics
                .iter()
                .map(|t| self.topic(t))
                .filter(|t| !created.contains(t))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let partitions = i32::try_from(self.settings.partitions).unwrap_or(i32::MAX);
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
        for result in self.admin.create_topics(new.iter(), &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                        tracing::warn!(%topic, ?code, "cannot create Kafka topic");
                    });
                }
            }
        }
        let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
        created.extend(missing);
        Ok(())
    }

    /// Produces envelopes to their topics and waits for every delivery report.
    pub async fn append(&self, envelopes: &[Envelope]) -> Result<(), KafkaError> {
        let topics: Vec<String> = envelopes.iter().map(|e| e.topic.clone()).collect();
        self.ensure_topics(&topics).await?;
        let sends = envelopes.iter().map(|e| {
            let topic = self.topic(&e.topic);
            let key = e.header(PARTITION_KEY).unwrap_or(&e.id).to_string();
            let payload = e.to_json();
            async move {
                let record = FutureRecord::to(&topic).key(&key).payload(&payload);
                self.producer
                    .send(record, DELIVERY_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            }
        });
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }

    /// Whether a broker answers a metadata request.
    pub async fn ping(&self) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, METADATA_TIMEOUT)
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// How far `<group>.<module>` is behind on `topic`: over the topic's
    /// partitions, the high watermark minus the group's committed offset (from
    /// the low watermark where nothing is committed). `None` while the topic
    /// does not exist.
    pub async fn group_lag(
        &self,
        module: &str,
        topic: &str,
    ) -> Result<Option<(String, String, u64)>, KafkaError> {
        let group = format!("{}.{module}", self.settings.group);
        let reader = {
            let mut readers = self
                .offset_readers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match readers.get(&group) {
                Some(reader) => reader.clone(),
                None => {
                    let reader: Arc<BaseConsumer> = Arc::new(
                        base_config(&self.settings)
                            .set("group.id", &group)
                            .set("enable.auto.commit", "false")
                            .create()?,
                    );
                    readers.insert(group.clone(), reader.clone());
                    reader
                }
            }
        };
        let topic = self.topic(topic);
        let blocking = tokio::task::spawn_blocking(move || {
            let metadata = reader.fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Ok(None);
            }
            let mut wanted = TopicPartitionList::new();
            for p in &partitions {
                wanted.add_partition(&topic, *p);
            }
            let committed = reader.committed_offsets(wanted, METADATA_TIMEOUT)?;
            let mut lag = 0u64;
            for p in partitions {
                let (low, high) = reader.fetch_watermarks(&topic, p, METADATA_TIMEOUT)?;
                let from = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(n)) => n,
                    _ => low,
                };
                if from > high {
                    // A commit past the end skips records when a member
                    // resumes from it: never clamp that away silently.
                    tracing::warn!(
                        %topic, partition = p, committed = from, high_watermark = high,
                        %group, "kafka: committed offset is past the end of the partition"
                    );
                }
                lag += u64::try_from(high - from).unwrap_or(0);
            }
            Ok(Some((topic, group, lag)))
        });
        blocking.await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "kafka lag reader stopped");
            Ok(None)
        })
    }

    /// Writes a dead letter to `T.dlq`: the original value, why in headers.
    pub(crate) async fn dead_letter(
        &self,
        topic: &str,
        original: &OwnedMessage,
        why: &[(&str, String)],
    ) -> Result<(), KafkaError> {
        let dlq = format!("{topic}.dlq");
        self.ensure_topics(std::slice::from_ref(&dlq)).await?;
        let mut headers = OwnedHeaders::new();
        for (k, v) in why {
            headers = headers.insert(Header {
                key: &format!("dlq-{k}"),
                value: Some(v.as_bytes()),
            });
        }
        let payload = original.payload().unwrap_or_default();
        let key = original.key().unwrap_or_default();
        let target = self.topic(&dlq);
        let record = FutureRecord::to(&target)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.producer
            .send(record, DELIVERY_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

pub(crate) fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    for (k, v) in &settings.client {
        config.set(k, v);
    }
    config
}
