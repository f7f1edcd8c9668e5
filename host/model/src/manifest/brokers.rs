//! `[redis]` and `[kafka]`: the brokers the host reads messages from and
//! publishes events to. Both deserialize straight into their settings.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Invalid;

/// `[redis] concurrency` when the manifest does not set it.
pub const DEFAULT_REDIS_CONCURRENCY: usize = 128;
/// `[kafka] partition-queue` when the manifest does not set it. A full
/// queue pauses its partition until half of it is handled; each resume
/// waits out a fetch from the broker, so a short queue bounds a fast
/// partition: one partition of restocks did 2,147 msgs/s with 256, 8,489
/// with 1,024 and 11,048 with 4,096 (`cargo bench --bench kafka`,
/// 2026-12-02). 1,024 keeps the worst case (1,024 records of up to 1 MiB
/// per partition) within reason.
pub const DEFAULT_PARTITION_QUEUE: usize = 1024;

/// `[redis]`: Redis Streams as ingress and event transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RedisSettings {
    pub url: String,
    /// Consumer groups are `<group>.<module>`.
    #[serde(default = "default_group")]
    pub group: String,
    /// Prepended to every stream key (the stream of topic `T` is `<prefix>T`);
    /// lets several deployments or tests share one Redis.
    #[serde(default)]
    pub prefix: String,
    /// How long one XREADGROUP waits for new entries.
    #[serde(default = "default_block_ms")]
    pub block_ms: u64,
    /// Entries read per XREADGROUP.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Pending entries idle this long on another consumer are taken over.
    #[serde(default = "default_claim_idle_ms")]
    pub claim_idle_ms: u64,
    /// Approximate MAXLEN for streams the host appends to; unbounded when absent.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// Messages of one module handled at once (different partition keys).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// `[kafka]`: Kafka topics as ingress and event transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer groups are `<group>.<module>`.
    #[serde(default = "default_group")]
    pub group: String,
    /// Prepended to every topic name.
    #[serde(default)]
    pub prefix: String,
    /// Partitions of the topics the host creates.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Messages buffered per partition for its worker; a partition whose
    /// buffer is full is paused (the others keep being read) until its
    /// worker has handled half of them.
    #[serde(default = "default_partition_queue")]
    pub partition_queue: usize,
    /// librdkafka settings for every client (e.g. `security.protocol`).
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// librdkafka settings for consumers only (e.g. `session.timeout.ms`).
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka settings for the producer only (e.g. `linger.ms`).
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
}

impl KafkaSettings {
    pub(super) fn validate(self) -> Result<Self, Invalid> {
        if self.partition_queue == 0 {
            return Err(Invalid::new("kafka.partition-queue", "must be at least 1"));
        }
        Ok(self)
    }
}

fn default_group() -> String {
    "switchyard".to_string()
}
fn default_block_ms() -> u64 {
    1_000
}
fn default_batch() -> usize {
    100
}
fn default_claim_idle_ms() -> u64 {
    30_000
}
fn default_concurrency() -> usize {
    DEFAULT_REDIS_CONCURRENCY
}
fn default_partitions() -> u32 {
    3
}
fn default_partition_queue() -> usize {
    DEFAULT_PARTITION_QUEUE
}

#[cfg(test)]
mod tests {
    use super::super::parse_test_manifest as parse;
    use super::*;

    #[test]
    fn kafka_partition_queue_defaults_and_is_positive() {
        let kafka = |extra: &str| parse(&format!("[kafka]\nbrokers = \"b:9092\"\n{extra}"));
        let m = kafka("").unwrap();
        assert_eq!(
            m.kafka.map(|k| k.partition_queue),
            Some(DEFAULT_PARTITION_QUEUE)
        );
        let m = kafka("partition-queue = 4\n").unwrap();
        assert_eq!(m.kafka.map(|k| k.partition_queue), Some(4));
        let err = kafka("partition-queue = 0\n").expect_err("must be refused");
        assert!(err.to_string().contains("kafka.partition-queue"), "{err}");
    }
}
