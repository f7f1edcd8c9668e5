//! The HTTP API of SPEC §5 on axum: commands in, answers out, plus module
//! listing, dead letters, health and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::dispatch::{Dispatcher, FailureKind, Outcome, failure_event_id};
use crate::envelope::{self, Envelope};
use crate::registry::LoadedModule;
use crate::relay::Broker;
use crate::server::Reloader;
use crate::store::DeadLetter;

/// Most dead letters one listing returns.
const MAX_DEAD_LETTERS: u32 = 1_000;

pub struct ApiState {
    pub dispatcher: Arc<Dispatcher>,
    pub reloader: Arc<Reloader>,
    /// `None` turns the admin endpoints off (never open).
    pub admin_token: Option<String>,
    /// Configured brokers, the one events go to first: `wait=false` appends
    /// there; readiness checks them all.
    pub brokers: Vec<Broker>,
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
        .route("/v1/messages", post(post_message))
        .route("/v1/topics/{topic}/{subtopic}", post(post_topic))
        .route("/v1/modules", get(list_modules))
        .route("/v1/admin/reload", post(reload))
        .route("/v1/dead-letters", get(list_dead_letters))
        .route("/v1/dead-letters/{id}/replay", post(replay_dead_letter))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/messages/{id}", get(message_status))
        .route("/v1/dead-letters/replay", post(replay_topic))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

#[derive(Deserialize)]
struct SendParams {
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

async fn post_message(
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

async fn post_topic(
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
        .get(crate::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::trace::TraceParent::parse);
    if let Some(parent) = given {
        envelope
            .headers
            .entry(crate::trace::TRACEPARENT.to_string())
            .or_insert_with(|| parent.header());
    }
}

/// Routes a command to its owner and answers as SPEC §5 says.
async fn submit(
    state: &ApiState,
    mut envelope: Envelope,
    wait: bool,
) -> Result<Response, ApiError> {
    let routes = state.dispatcher.registry.routes();
    let Some(module) = routes.commands.get(&envelope.topic).cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no-route",
            format!("no module owns topic '{}'", envelope.topic),
        ));
    };
    drop(routes);
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
            None => {
                state
                    .dispatcher
                    .store
                    .append(one, "http")
                    .await
                    .map_err(|e| ApiError::internal("could not append the message", e))?;
                state.dispatcher.log_appended.notify_waiters();
            }
        }
        return Ok((StatusCode::ACCEPTED, Json(json!({"id": envelope.id}))).into_response());
    }
    answer(
        &envelope.id,
        state.dispatcher.deliver(&module, &envelope).await,
    )
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

fn module_json(
    m: &LoadedModule,
    last_error: Option<&str>,
    rolled_back_from: Option<&String>,
) -> serde_json::Value {
    json!({
        "name": m.name,
        "status": "loaded",
        "version": m.version,
        "sha256": m.sha256,
        "file": m.file,
        "source": m.source,
        "topics": m.topics,
        "subscribes": m.subscribes,
        "emits": m.grants.emits,
        "reads": m.grants.reads,
        "loaded_at": m.loaded_at,
        "handled": m.stats.handled.load(std::sync::atomic::Ordering::Relaxed),
        "failed": m.stats.failed.load(std::sync::atomic::Ordering::Relaxed),
        "peak_memory_bytes": m.stats.peak_memory.load(std::sync::atomic::Ordering::Relaxed),
        "last_error": last_error,
        "rolled_back_from": rolled_back_from,
    })
}

async fn list_modules(State(state): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    let routes = state.dispatcher.registry.routes();
    let problem_of = |name: &str| {
        routes
            .problems
            .iter()
            .find(|p| p.module == name)
            .map(|p| p.message.as_str())
    };
    let mut modules: Vec<serde_json::Value> = routes
        .modules
        .values()
        .map(|m| module_json(m, problem_of(&m.name), routes.rolled_back.get(&m.name)))
        .collect();
    for p in routes
        .problems
        .iter()
        .filter(|p| !routes.modules.contains_key(&p.module))
    {
        modules.push(
            json!({"name": p.module, "status": "failed", "file": p.file, "last_error": p.message}),
        );
    }
    Json(json!({
        "modules": modules,
        "manifest_error": state.dispatcher.registry.manifest_error(),
    }))
}

/// Readiness per dependency: `{"ready", "checks": {"database", <broker>...,
/// "modules"}}`, 503 unless the database and every broker answer. Modules
/// are reported, not required: a host with none loaded still serves the
/// API that loads them.
async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    let database = match state.dispatcher.store.ping().await {
        Ok(()) => json!({"ok": true, "error": null}),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            ready = false;
            json!({"ok": false, "error": dependency_error(&e)})
        }
    };
    checks.insert("database".into(), database);
    for broker in &state.brokers {
        let up = broker.ping().await;
        if !up {
            tracing::warn!(broker = broker.name(), "readiness: broker unreachable");
        }
        ready &= up;
        let error = (!up).then_some("unreachable");
        checks.insert(broker.name().into(), json!({"ok": up, "error": error}));
    }
    let routes = state.dispatcher.registry.routes();
    checks.insert(
        "modules".into(),
        json!({"loaded": routes.modules.len(), "failed": routes.problems.len()}),
    );
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready, "checks": checks}))).into_response()
}

/// Why the database did not answer, without its own words (they may name
/// hosts, users or SQL; those go to the log).
fn dependency_error(e: &crate::store::StoreError) -> String {
    use crate::store::StoreError;
    match e {
        StoreError::Database(sqlx::Error::PoolTimedOut) => {
            "no connection within the acquire timeout".into()
        }
        StoreError::Database(sqlx::Error::Io(io)) => format!("cannot connect: {}", io.kind()),
        StoreError::Database(sqlx::Error::Database(db)) => format!(
            "the database answered with error {}",
            db.code().unwrap_or_default()
        ),
        _ => "unreachable".into(),
    }
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let text = crate::metrics::scrape(&state.dispatcher, &state.brokers).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn check_admin(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin API is off: set the variable named by `admin-token-env`",
        ));
    };
    if bearer_matches(headers, expected) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin bearer token",
        ))
    }
}

async fn reload(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let summary = state.reloader.reload().await.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-manifest",
            e.to_string(),
        )
    })?;
    Ok(Json(summary).into_response())
}

#[derive(Deserialize)]
struct DeadLetterParams {
    topic: Option<String>,
    limit: Option<u32>,
}

async fn list_dead_letters(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<DeadLetterParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let limit = params.limit.unwrap_or(100).min(MAX_DEAD_LETTERS);
    let letters = state
        .dispatcher
        .store
        .dead_letters(params.topic.as_deref(), limit)
        .await
        .map_err(|e| ApiError::internal("could not read dead letters", e))?;
    Ok(Json(json!({"dead_letters": letters})).into_response())
}

async fn replay_dead_letter(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let letter = state
        .dispatcher
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
    let module = state
        .dispatcher
        .registry
        .routes()
        .modules
        .get(&letter.module)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no-route",
                format!("module '{}' is not loaded", letter.module),
            )
        })?;
    let outcome = state.dispatcher.deliver(&module, &envelope).await;
    if matches!(outcome, Outcome::Processed(_) | Outcome::Duplicate(_)) {
        state
            .dispatcher
            .store
            .mark_replayed(&letter.id)
            .await
            .map_err(|e| ApiError::internal("could not mark the replay", e))?;
    }
    Ok(outcome)
}

#[derive(Deserialize)]
struct ReplayParams {
    topic: String,
    limit: Option<u32>,
}

/// `POST /v1/dead-letters/replay?topic=T`: replays the dead letters of `T`
/// not replayed yet, oldest first, one at a time; answers with each result
/// and the counts (200 even when some failed again: they stay dead letters).
async fn replay_topic(
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
        .dispatcher
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

#[derive(Deserialize)]
struct MessageParams {
    /// Only this module's handling of the message.
    module: Option<String>,
}

/// `GET /v1/messages/{id}` (admin): where a message is, per module that
/// handled it or should: `processed` (with the stored answer), `dead-lettered`
/// (with the error), `failed` (rejected: failure event, no dead letter),
/// `pending` (in the log, not handled yet); 404 when nothing knows the id.
/// Looks at the modules loaded now (or `?module=`).
async fn message_status(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(params): Query<MessageParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let routes = state.dispatcher.registry.routes();
    let modules: Vec<String> = match params.module {
        Some(m) => vec![m],
        None => routes.modules.keys().cloned().collect(),
    };
    let store = &state.dispatcher.store;
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
fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
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
