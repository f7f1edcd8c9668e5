//! The HTTP API of SPEC §5 on axum: commands in, answers out, plus module
//! and topic listings, dead letters, health, metrics and the operator
//! console's page.

mod console;
mod dead_letters;
mod documents;
mod guard;
mod messages;
mod operations;
mod shadow;
mod status;
#[cfg(test)]
mod tests;
mod topics;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use guard::{Guard, MessageAccess, guarded};

use crate::broker::Broker;
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::registry::reload::Reloader;
use switchyard_model::outcome::{FailureKind, Outcome};
use switchyard_store::Store;

/// What the handlers work with: the bus for messages, and for operations
/// the registry (module listing), the store (dead letters, message status,
/// readiness), the metrics and the reloader.
pub struct ApiState {
    pub dispatcher: Arc<Dispatcher>,
    pub registry: Arc<Registry>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    /// `None` turns the admin endpoints off (never open).
    pub admin_token: Option<String>,
    /// Configured brokers, the one events go to first: `wait=false` appends
    /// there; readiness checks them all.
    pub brokers: Vec<Broker>,
    /// The brokers as the AsyncAPI document names them (no passwords).
    pub servers: switchyard_model::contract::document::Servers,
}

/// An error answer: `{"error":{"kind","message"}}`. Internal details are
/// logged, never sent.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{context}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{context}; try again"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"kind": self.kind, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

pub fn router(state: Arc<ApiState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/messages", post(messages::post_message))
        .route("/v1/topics/{topic}/{subtopic}", post(messages::post_topic))
        .route("/v1/modules", get(operations::list_modules))
        .route("/v1/modules/{name}/contract", get(documents::contract))
        .route("/v1/modules/{name}/shadow", get(shadow::status))
        .route(
            "/v1/admin/modules/{name}/shadow",
            // A component (a Python one is tens of MiB), not a message body.
            axum::routing::put(shadow::start)
                .layer(DefaultBodyLimit::max(shadow::MAX_CANDIDATE_BYTES))
                .delete(shadow::drop),
        )
        .route(
            "/v1/admin/modules/{name}/shadow/promote",
            post(shadow::promote),
        )
        .route("/v1/admin/reload", post(operations::reload))
        .route("/v1/dead-letters", get(dead_letters::list))
        .route(
            "/v1/dead-letters/{id}/replay",
            post(dead_letters::replay_one),
        )
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(operations::ready))
        .route("/metrics", get(operations::metrics))
        .route("/v1/messages/{id}", get(status::message_status))
        .route("/v1/dead-letters/replay", post(dead_letters::replay_topic))
        .route("/v1/topics", get(topics::list_topics))
        .route("/v1/asyncapi.json", get(documents::asyncapi))
        .route("/v1/openapi.json", get(documents::openapi))
        .route("/console", get(console::page))
        .route("/console/", get(console::page))
        .route("/console/config.json", get(console::config))
        .route("/console/{*path}", get(console::asset))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

fn answer(id: &str, outcome: Outcome) -> Result<Response, ApiError> {
    match outcome {
        Outcome::Processed(a) => Ok(Json(
            json!({"id": id, "status": "processed", "output": a.output, "events": a.events}),
        )
        .into_response()),
        Outcome::Duplicate(a) => Ok(Json(
            json!({"id": id, "status": "duplicate", "output": a.output, "events": a.events}),
        )
        .into_response()),
        Outcome::Failed(f) => {
            let status = match f.kind {
                FailureKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
                FailureKind::Rejected => StatusCode::CONFLICT,
                FailureKind::Trap => StatusCode::INTERNAL_SERVER_ERROR,
                FailureKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                FailureKind::Transient | FailureKind::Unavailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            Err(ApiError::new(status, f.kind.as_str(), f.message))
        }
    }
}

fn check_admin(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin API is off: set the variable named by `admin-token-env`",
        ));
    };
    if guard::bearer_matches(headers, expected) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin bearer token",
        ))
    }
}
