//! The brokers the host talks to (Redis Streams, Kafka): their clients as
//! producers and as the consumers' helpers (acks, dead-letter copies, lag).
//! Below ingress (whose consumers read through them) and the relay (which
//! appends committed events through them); knows only the model.

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod redis;

use std::sync::Arc;

use switchyard_model::envelope::Envelope;

#[cfg(feature = "kafka")]
use kafka::KafkaBus;
use redis::RedisBus;

/// Where committed events go when a broker is configured.
#[derive(Clone)]
pub enum Broker {
    Redis(Arc<RedisBus>),
    #[cfg(feature = "kafka")]
    Kafka(Arc<KafkaBus>),
}

impl Broker {
    pub fn name(&self) -> &'static str {
        match self {
            Broker::Redis(_) => "redis",
            #[cfg(feature = "kafka")]
            Broker::Kafka(_) => "kafka",
        }
    }

    /// Appends envelopes to their topics; returns once the broker has them.
    pub async fn append(&self, envelopes: &[Envelope]) -> Result<(), String> {
        match self {
            Broker::Redis(bus) => bus.append(envelopes).await.map_err(|e| e.to_string()),
            #[cfg(feature = "kafka")]
            Broker::Kafka(bus) => bus
                .append(envelopes)
                .await
                .map_err(|e| format!("kafka: {e}")),
        }
    }

    pub async fn ping(&self) -> bool {
        match self {
            Broker::Redis(bus) => bus.ping().await,
            #[cfg(feature = "kafka")]
            Broker::Kafka(bus) => bus.ping().await,
        }
    }
}
