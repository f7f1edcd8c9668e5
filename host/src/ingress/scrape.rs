//! `GET /metrics`: refreshes the gauges read on scrape (modules, outbox
//! backlog, consumer lag per broker or embedded reader) and renders every
//! series of the host's [`Metrics`](crate::metrics::Metrics). The lag and
//! backlog readings are shared with `GET /v1/topics`.

use crate::broker::Broker;
use crate::ingress::embedded;
use crate::metrics::Metrics;
use crate::registry::{Registry, Routes};
use switchyard_store::{OutboxBacklog, Store};

/// How far one consumer group is behind on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerLag {
    /// The module that consumes.
    pub module: String,
    /// The topic as the module names it.
    pub topic: String,
    /// Where the lag was read: `embedded`, `redis` or `kafka`.
    pub via: &'static str,
    /// The stream (Redis key, Kafka topic or log topic) the lag is of.
    pub stream: String,
    /// The consumer group (`embedded.<module>` for the embedded log).
    pub group: String,
    /// Entries not consumed yet.
    pub lag: u64,
}

/// Refreshes the gauges read on scrape (modules, outbox backlog, consumer
/// lag) and renders every series. A store or broker that does not answer
/// leaves its gauges as they were (and says so in the log): a scrape never
/// fails because a dependency is down.
pub async fn scrape(
    registry: &Registry,
    store: &Store,
    metrics: &Metrics,
    brokers: &[Broker],
) -> String {
    let routes = registry.routes();
    metrics.set_modules(routes.modules.len(), routes.problems.len());
    for module in routes.modules.values() {
        let peak = module
            .stats
            .peak_memory
            .load(std::sync::atomic::Ordering::Relaxed);
        metrics.set_guest_memory(&module.name, peak);
    }
    if let Some(b) = outbox_backlog(store, brokers).await {
        metrics.set_outbox(b.entries, b.oldest_age.unwrap_or_default());
    }
    for lag in consumer_lags(&routes, store, brokers).await {
        metrics.set_lag(&lag.stream, &lag.group, lag.lag);
    }
    metrics.render()
}

/// Outbox entries the relay has not handed to a broker yet; `None` with
/// the embedded log (the outbox is the log itself: nothing is ever
/// "published") or when the store does not answer (logged).
pub async fn outbox_backlog(store: &Store, brokers: &[Broker]) -> Option<OutboxBacklog> {
    if brokers.is_empty() {
        return None;
    }
    match store.outbox_backlog().await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the outbox backlog");
            None
        }
    }
}

/// The lag of every loaded module on every topic it consumes: from each
/// broker's groups, or from the embedded log's cursors when there is no
/// broker. A reading that fails is logged and left out.
pub async fn consumer_lags(routes: &Routes, store: &Store, brokers: &[Broker]) -> Vec<ConsumerLag> {
    let mut lags = Vec::new();
    if brokers.is_empty() {
        for module in routes.modules.values() {
            let consumer = embedded::consumer_name(&module.name);
            match store.log_lag(&consumer, &module.consumed_topics()).await {
                Ok(found) => lags.extend(found.into_iter().map(|(topic, lag)| ConsumerLag {
                    module: module.name.clone(),
                    stream: topic.clone(),
                    topic,
                    via: "embedded",
                    group: consumer.clone(),
                    lag,
                })),
                Err(e) => {
                    tracing::warn!(module = %module.name, error = %e, "cannot read the log lag")
                }
            }
        }
        return lags;
    }
    for broker in brokers {
        for module in routes.modules.values() {
            for topic in module.consumed_topics() {
                let lag = match broker {
                    Broker::Redis(bus) => bus
                        .group_lag(&module.name, &topic)
                        .await
                        .map_err(|e| e.to_string()),
                    #[cfg(feature = "kafka")]
                    Broker::Kafka(bus) => bus
                        .group_lag(&module.name, &topic)
                        .await
                        .map_err(|e| e.to_string()),
                };
                match lag {
                    Ok(Some((stream, group, lag))) => lags.push(ConsumerLag {
                        module: module.name.clone(),
                        topic,
                        via: broker.name(),
                        stream,
                        group,
                        lag,
                    }),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(broker = broker.name(), %topic, error = %e, "cannot read the consumer lag");
                    }
                }
            }
        }
    }
    lags
}
