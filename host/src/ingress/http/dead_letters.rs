//! Dead letters over HTTP (admin): list them, replay one, replay a topic's.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, answer, check_admin};
use switchyard_model::envelope::{self, Envelope};
use switchyard_model::outcome::Outcome;
use switchyard_store::DeadLetter;

/// Most dead letters one listing returns.
const MAX_DEAD_LETTERS: u32 = 1_000;

#[derive(Deserialize)]
pub(super) struct DeadLetterParams {
    topic: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<DeadLetterParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let limit = params.limit.unwrap_or(100).min(MAX_DEAD_LETTERS);
    let letters = state
        .store
        .dead_letters(params.topic.as_deref(), limit)
        .await
        .map_err(|e| ApiError::internal("could not read dead letters", e))?;
    Ok(Json(json!({"dead_letters": letters})).into_response())
}

pub(super) async fn replay_one(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let letter = state
        .store
        .dead_letter(&id)
        .await
        .map_err(|e| ApiError::internal("could not read the dead letter", e))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no dead letter '{id}'"),
            )
        })?;
    let outcome = replay(&state, &letter).await?;
    answer(&letter.message_id, outcome)
}

/// Hands a dead letter's envelope, with its id, to the module that failed
/// it, as a new attempt: the first attempts never committed, so the inbox
/// does not answer `duplicate` unless the message was processed since.
/// Marks the letter replayed when the message is processed.
async fn replay(state: &ApiState, letter: &DeadLetter) -> Result<Outcome, ApiError> {
    let envelope = Envelope::from_json(letter.envelope.to_string().as_bytes(), envelope::new_id)
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "malformed-envelope",
                e.to_string(),
            )
        })?;
    let module = state.dispatcher.module(&letter.module).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no-route",
            format!("module '{}' is not loaded", letter.module),
        )
    })?;
    let outcome = state.dispatcher.deliver(&module, &envelope).await;
    if matches!(outcome, Outcome::Processed(_) | Outcome::Duplicate(_)) {
        state
            .store
            .mark_replayed(&letter.id)
            .await
            .map_err(|e| ApiError::internal("could not mark the replay", e))?;
    }
    Ok(outcome)
}

#[derive(Deserialize)]
pub(super) struct ReplayParams {
    topic: String,
    limit: Option<u32>,
}

/// `POST /v1/dead-letters/replay?topic=T`: replays the dead letters of `T`
/// not replayed yet, oldest first, one at a time; answers with each result
/// and the counts (200 even when some failed again: they stay dead letters).
pub(super) async fn replay_topic(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<ReplayParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let limit = params
        .limit
        .unwrap_or(MAX_DEAD_LETTERS)
        .min(MAX_DEAD_LETTERS);
    let letters = state
        .store
        .unreplayed_dead_letters(&params.topic, limit)
        .await
        .map_err(|e| ApiError::internal("could not read dead letters", e))?;
    let (mut replayed, mut failed) = (0u32, 0u32);
    let mut results = Vec::with_capacity(letters.len());
    for letter in &letters {
        let mut result = json!({"dead_letter_id": letter.id, "message_id": letter.message_id, "module": letter.module});
        match replay(&state, letter).await {
            Ok(Outcome::Processed(_)) => {
                replayed += 1;
                result["status"] = json!("processed");
            }
            Ok(Outcome::Duplicate(_)) => {
                replayed += 1;
                result["status"] = json!("duplicate");
            }
            Ok(Outcome::Failed(f)) => {
                failed += 1;
                result["status"] = json!("failed");
                result["error"] = json!({"kind": f.kind.as_str(), "message": f.message});
            }
            Err(e) => {
                failed += 1;
                result["status"] = json!("failed");
                result["error"] = json!({"kind": e.kind, "message": e.message});
            }
        }
        results.push(result);
    }
    Ok(Json(json!({
        "topic": params.topic,
        "replayed": replayed,
        "failed": failed,
        "results": results,
    }))
    .into_response())
}
