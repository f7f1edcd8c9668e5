//! `GET /v1/messages/{id}` (admin): where one message is, per module.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, check_admin};
use switchyard_model::outcome::failure_event_id;

#[derive(Deserialize)]
pub(super) struct MessageParams {
    /// Only this module's handling of the message.
    module: Option<String>,
}

/// `GET /v1/messages/{id}` (admin): where a message is, per module that
/// handled it or should: `processed` (with the stored answer), `dead-lettered`
/// (with the error), `failed` (rejected: failure event, no dead letter),
/// `pending` (in the log, not handled yet); 404 when nothing knows the id.
/// Looks at the modules loaded now (or `?module=`).
pub(super) async fn message_status(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(params): Query<MessageParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let routes = state.registry.routes();
    let modules: Vec<String> = match params.module {
        Some(m) => vec![m],
        None => routes.modules.keys().cloned().collect(),
    };
    let store = &state.store;
    let unavailable = |e| ApiError::internal("could not look the message up", e);
    let processed = store
        .inbox_records(&id, &modules)
        .await
        .map_err(unavailable)?;
    let letters = store
        .dead_letters_of(&id, &modules)
        .await
        .map_err(unavailable)?;
    let failure_ids: Vec<String> = modules.iter().map(|m| failure_event_id(m, &id)).collect();
    let mut lookup = failure_ids.clone();
    lookup.push(id.clone());
    let rows = store.outbox_records(&lookup).await.map_err(unavailable)?;
    let logged = rows.iter().find(|r| r.envelope.id == id);

    // Who should handle it, when the log says what it is.
    let expected: Vec<&String> = match logged {
        Some(r) => {
            let topic = &r.envelope.topic;
            let owner = routes.commands.get(topic).map(|m| &m.name);
            let subscribers = routes.subscribers.get(topic).into_iter().flatten();
            owner
                .into_iter()
                .chain(subscribers.map(|m| &m.name))
                .filter(|m| modules.contains(*m))
                .collect()
        }
        None => Vec::new(),
    };
    let mut handlings = Vec::new();
    for (module, failure_id) in modules.iter().zip(&failure_ids) {
        let inbox = processed.iter().find(|r| &r.module == module);
        let letter = letters.iter().find(|l| &l.module == module);
        let failure = rows.iter().find(|r| &r.envelope.id == failure_id);
        let dead_letter = letter.map(|l| {
            json!({"id": l.id, "error": {"kind": l.error_kind, "message": l.error_message},
                   "attempts": l.attempts, "created_at": l.created_at, "replayed_at": l.replayed_at})
        });
        let handling = if let Some(r) = inbox {
            let answer: serde_json::Value =
                serde_json::from_str(&r.answer).unwrap_or(serde_json::Value::Null);
            json!({"module": module, "status": "processed", "processed_at": r.created_at,
                   "output": answer["output"], "events": answer["events"], "dead_letter": dead_letter})
        } else if let Some(l) = letter {
            json!({"module": module, "status": "dead-lettered",
                   "error": {"kind": l.error_kind, "message": l.error_message},
                   "attempts": l.attempts, "dead_letter": dead_letter})
        } else if let Some(f) = failure {
            let body: serde_json::Value =
                serde_json::from_str(f.envelope.body_text()).unwrap_or(serde_json::Value::Null);
            json!({"module": module, "status": "failed",
                   "error": {"kind": body["kind"], "message": body["message"]},
                   "attempts": body["attempt"], "failed_at": f.created_at})
        } else if expected.contains(&module) {
            json!({"module": module, "status": "pending"})
        } else {
            continue;
        };
        handlings.push(handling);
    }
    if handlings.is_empty() && logged.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no module has processed, failed or been sent message '{id}'"),
        ));
    }
    let has = |status: &str| handlings.iter().any(|h| h["status"] == status);
    let status = if has("dead-lettered") {
        "dead-lettered"
    } else if has("failed") {
        "failed"
    } else if has("pending") || handlings.is_empty() {
        "pending"
    } else {
        "processed"
    };
    let mut body = json!({"id": id, "status": status, "modules": handlings});
    if let Some(r) = logged {
        body["topic"] = json!(r.envelope.topic);
        body["subtopic"] = json!(r.envelope.subtopic);
        body["log"] = json!({"seq": r.seq, "source": r.source, "created_at": r.created_at,
                             "published_at": r.published_at});
    }
    Ok(Json(body).into_response())
}
