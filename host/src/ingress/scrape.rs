//! `GET /metrics`: refreshes the gauges read on scrape (modules, outbox
//! backlog, consumer lag per broker or embedded reader) and renders every
//! series of the host's [`Metrics`](crate::metrics::Metrics).

use crate::broker::Broker;
use crate::ingress::embedded;
use crate::metrics::Metrics;
use crate::registry::Registry;
use switchyard_store::Store;

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
    if brokers.is_empty() {
        // The embedded log: the outbox is the log itself (nothing is ever
        // "published"); what counts is how far each module's reader is.
        for module in routes.modules.values() {
            let consumer = embedded::consumer_name(&module.name);
            match store.log_lag(&consumer, &module.consumed_topics()).await {
                Ok(lags) => {
                    for (topic, lag) in lags {
                        metrics.set_lag(&topic, &consumer, lag);
                    }
                }
                Err(e) => {
                    tracing::warn!(module = %module.name, error = %e, "metrics: cannot read the log lag")
                }
            }
        }
        return metrics.render();
    }
    match store.outbox_backlog().await {
        Ok(b) => metrics.set_outbox(b.entries, b.oldest_age.unwrap_or_default()),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the outbox backlog"),
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
                    Ok(Some((stream, group, lag))) => metrics.set_lag(&stream, &group, lag),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(broker = broker.name(), %topic, error = %e, "metrics: cannot read the consumer lag");
                    }
                }
            }
        }
    }
    metrics.render()
}
