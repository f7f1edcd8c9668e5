//! What every request passes before its route: a header size cap, the
//! message token on the message endpoints, and a deadline.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;

/// What every request passes before its route: a header size cap, the
/// message token on the message endpoints, and a deadline.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Who may use the message endpoints (`/v1/messages*`, `/v1/topics/*`).
    pub messages: MessageAccess,
    /// Longest a request may take, reading its body included.
    pub request_timeout: std::time::Duration,
    /// Cap of the request's header names and values together.
    pub max_header_bytes: usize,
}

/// Access to the message endpoints, from `host.message-token-env`.
#[derive(Clone)]
pub enum MessageAccess {
    /// No `message-token-env`: any client that reaches the port.
    Open,
    /// Requests must carry `Authorization: Bearer <token>`.
    Token(String),
    /// The manifest names this variable but it is unset or empty: the
    /// endpoints refuse every request (closed, never open by mistake).
    Unset(String),
}

impl std::fmt::Debug for MessageAccess {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageAccess::Open => f.write_str("Open"),
            MessageAccess::Token(_) => f.write_str("Token(..)"),
            MessageAccess::Unset(var) => write!(f, "Unset({var})"),
        }
    }
}

impl MessageAccess {
    /// From the manifest's `message-token-env` and the environment.
    pub fn from_env(var: Option<&str>) -> Self {
        match var {
            None => MessageAccess::Open,
            Some(var) => match std::env::var(var) {
                Ok(token) if !token.is_empty() => MessageAccess::Token(token),
                _ => MessageAccess::Unset(var.to_string()),
            },
        }
    }
}

/// Wraps `router` in the [`Guard`].
pub fn guarded(router: Router, guard: Guard) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        Arc::new(guard),
        guard_request,
    ))
}

fn is_message_endpoint(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/") || path.starts_with("/v1/topics/")
}

/// Compares a request's bearer token with `expected` in constant time.
pub(super) fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

async fn guard_request(
    State(guard): State<Arc<Guard>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > guard.max_header_bytes {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too-large",
            format!(
                "request headers are {header_bytes} bytes; at most {} (`max-header-bytes`)",
                guard.max_header_bytes
            ),
        )
        .into_response();
    }
    if is_message_endpoint(request.uri().path()) {
        let refused = match &guard.messages {
            MessageAccess::Open => None,
            MessageAccess::Token(token) => (!bearer_matches(request.headers(), token))
                .then(|| "missing or wrong message bearer token".to_string()),
            MessageAccess::Unset(var) => Some(format!(
                "the message endpoints are closed: `message-token-env` names {var}, which is not set"
            )),
        };
        if let Some(message) = refused {
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
                .into_response();
        }
    }
    match tokio::time::timeout(guard.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "no answer within {:?} (`request-timeout-ms`); sending the same message id again \
                 answers it once it is processed, and never applies it twice",
                guard.request_timeout
            ),
        )
        .into_response(),
    }
}
