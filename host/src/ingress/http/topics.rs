//! `GET /v1/topics`: each topic with its owner, subscribers and emitters,
//! the consumer lag per group, and the outbox backlog, as JSON (read-only,
//! open like `GET /v1/modules`; the same readings `/metrics` exposes).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::json;

use super::ApiState;
use crate::ingress::scrape;

/// One topic as the loaded modules declare it.
#[derive(Debug, Default, Serialize)]
struct Topic {
    /// The module that owns it as a command topic, if one does.
    owner: Option<String>,
    subscribers: Vec<String>,
    /// Modules whose `emits` name it.
    emitters: Vec<String>,
}

/// The topics the loaded modules own, subscribe to or emit, by name.
fn topics(routes: &crate::registry::Routes) -> BTreeMap<String, Topic> {
    let mut topics: BTreeMap<String, Topic> = BTreeMap::new();
    for module in routes.modules.values() {
        for t in &module.topics {
            topics.entry(t.clone()).or_default().owner = Some(module.name.clone());
        }
        for t in &module.subscribes {
            topics
                .entry(t.clone())
                .or_default()
                .subscribers
                .push(module.name.clone());
        }
        for t in &module.grants.emits {
            topics
                .entry(t.clone())
                .or_default()
                .emitters
                .push(module.name.clone());
        }
    }
    topics
}

pub(super) async fn list_topics(State(state): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    let routes = state.registry.routes();
    let topics: Vec<serde_json::Value> = topics(&routes)
        .into_iter()
        .map(|(name, t)| {
            json!({"name": name, "owner": t.owner, "subscribers": t.subscribers,
                   "emitters": t.emitters})
        })
        .collect();
    let consumers: Vec<serde_json::Value> =
        scrape::consumer_lags(&routes, &state.store, &state.brokers)
            .await
            .into_iter()
            .map(|l| {
                json!({"module": l.module, "topic": l.topic, "via": l.via,
                       "stream": l.stream, "group": l.group, "lag": l.lag})
            })
            .collect();
    let outbox = if state.brokers.is_empty() {
        json!({"relay": false, "unpublished": null, "oldest_unpublished_age_ms": null})
    } else {
        match scrape::outbox_backlog(&state.store, &state.brokers).await {
            Some(b) => json!({
                "relay": true,
                "unpublished": b.entries,
                "oldest_unpublished_age_ms": b.oldest_age.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
            }),
            None => json!({"relay": true, "unpublished": null, "oldest_unpublished_age_ms": null,
                           "error": "the store did not answer"}),
        }
    };
    Json(json!({"topics": topics, "consumers": consumers, "outbox": outbox}))
}
