//! The message endpoints: `POST /v1/messages` (an envelope) and
//! `POST /v1/topics/{topic}/{subtopic}` (a body, headers from
//! `X-Header-<name>`), answered after the unit of work commits, or with 202
//! once appended (`?wait=false`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, answer};
use switchyard_model::envelope::{self, Envelope};

#[derive(Deserialize)]
pub(super) struct SendParams {
    /// `false`: answer 202 once the message is durably appended.
    wait: Option<bool>,
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "too-large", "request body is over the size limit")
        } else {
            ApiError::new(status, "bad-request", rejection.body_text())
        }
    })
}

pub(super) async fn post_message(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<SendParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let mut envelope = Envelope::from_json(&body, envelope::new_id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed-envelope", e.to_string()))?;
    inherit_traceparent(&mut envelope, &headers);
    submit(&state, envelope, params.wait.unwrap_or(true)).await
}

pub(super) async fn post_topic(
    State(state): State<Arc<ApiState>>,
    Path((topic, subtopic)): Path<(String, String)>,
    Query(params): Query<SendParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-envelope",
            "body is not UTF-8",
        )
    })?;
    let mut message_headers = BTreeMap::new();
    for (name, value) in &headers {
        if let Some(h) = name.as_str().strip_prefix("x-header-") {
            let value = value.to_str().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed-envelope",
                    format!("header {name} is not text"),
                )
            })?;
            message_headers.insert(h.to_string(), value.to_string());
        }
    }
    let id = match headers.get("x-message-id") {
        Some(v) => v
            .to_str()
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed-envelope",
                    "X-Message-Id is not text",
                )
            })?
            .to_string(),
        None => envelope::new_id(),
    };
    let mut envelope = Envelope::new(id, topic, subtopic, message_headers, text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed-envelope", e.to_string()))?;
    inherit_traceparent(&mut envelope, &headers);
    submit(&state, envelope, params.wait.unwrap_or(true)).await
}

/// A caller's HTTP `traceparent` (as OpenTelemetry clients send it) becomes
/// the message's, unless the envelope carries its own; an invalid one is
/// ignored (the message then starts a trace).
fn inherit_traceparent(envelope: &mut Envelope, headers: &HeaderMap) {
    let given = headers
        .get(switchyard_model::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(switchyard_model::trace::TraceParent::parse);
    if let Some(parent) = given {
        envelope
            .headers
            .entry(switchyard_model::trace::TRACEPARENT.to_string())
            .or_insert_with(|| parent.header());
    }
}

/// Routes a command to its owner and answers as SPEC §5 says.
async fn submit(
    state: &ApiState,
    mut envelope: Envelope,
    wait: bool,
) -> Result<Response, ApiError> {
    let Some(module) = state.dispatcher.owner(&envelope.topic) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no-route",
            format!("no module owns topic '{}'", envelope.topic),
        ));
    };
    envelope
        .headers
        .entry(envelope::CORRELATION_ID.to_string())
        .or_insert_with(|| envelope.id.clone());
    if !wait {
        let one = std::slice::from_ref(&envelope);
        match state.brokers.first() {
            Some(broker) => broker
                .append(one)
                .await
                .map_err(|e| ApiError::internal("could not append to the broker", e))?,
            None => state
                .dispatcher
                .append_to_log(one, "http")
                .await
                .map_err(|e| ApiError::internal("could not append the message", e))?,
        }
        return Ok((StatusCode::ACCEPTED, Json(json!({"id": envelope.id}))).into_response());
    }
    answer(
        &envelope.id,
        state.dispatcher.call(&module, &envelope).await,
    )
}
