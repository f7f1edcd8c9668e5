//! What operators look at and do: `GET /v1/modules`, `GET /readyz`,
//! `GET /metrics` and `POST /v1/admin/reload`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, ApiState, check_admin};
use crate::registry::LoadedModule;

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
        // WIT 0.2.0 modules declare their messages' schemas; 0.1.0 ones
        // are untyped (nothing validated, no payloads in the documents).
        "contract": if m.contract.declared.typed { "typed" } else { "untyped" },
        "messages": m.contract.declared.messages.iter().map(|c| json!({
            "direction": c.direction,
            "topic": c.topic,
            "subtopic": c.subtopic,
            "summary": c.summary,
            "schema": c.body.is_some(),
        })).collect::<Vec<_>>(),
    })
}

pub(super) async fn list_modules(State(state): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    let routes = state.registry.routes();
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
        "manifest_error": state.registry.manifest_error(),
    }))
}

/// Readiness per dependency: `{"ready", "checks": {"database", <broker>...,
/// "modules"}}`, 503 unless the database and every broker answer. Modules
/// are reported, not required: a host with none loaded still serves the
/// API that loads them.
pub(super) async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    let database = match state.store.ping().await {
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
    let routes = state.registry.routes();
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
fn dependency_error(e: &switchyard_store::StoreError) -> String {
    use switchyard_store::StoreError;
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

pub(super) async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let text = crate::ingress::scrape::scrape(
        &state.registry,
        &state.store,
        &state.metrics,
        &state.brokers,
    )
    .await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub(super) async fn reload(
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
