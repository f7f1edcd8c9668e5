//! A module's shadow over HTTP: `GET /v1/modules/{name}/shadow` (what the
//! candidate did so far), and with the admin token `PUT` (start: the
//! candidate's bytes), `DELETE` (drop) and `POST .../promote` (swap the
//! candidate in as the serving version, like a reload). The candidate is
//! the file `NAME.shadow.wasm` of the plugins folder, so a restart keeps
//! it; every change goes through a reload.

use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, check_admin};
use crate::registry::SHADOW_SUFFIX;
use switchyard_model::contract::compat;

/// Largest candidate component `PUT` accepts.
pub(super) const MAX_CANDIDATE_BYTES: usize = 256 << 20;

fn no_shadow(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("module '{name}' has no shadow candidate"),
    )
}

fn not_loaded(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no module '{name}' is loaded"),
    )
}

fn io(context: &str, path: &Path, e: std::io::Error) -> ApiError {
    ApiError::internal(&format!("{context} {}", path.display()), e)
}

pub(super) async fn status(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .dispatcher
        .shadow_status(&name)
        .map(Json)
        .ok_or_else(|| no_shadow(&name))
}

/// Reloads; a manifest that does not load is the operator's to fix.
async fn reload(state: &ApiState) -> Result<(), ApiError> {
    state.reloader.reload().await.map(|_| ()).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-manifest",
            e.to_string(),
        )
    })
}

/// Starts (or replaces) `name`'s candidate with the request's bytes.
pub(super) async fn start(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_admin(&state, &headers)?;
    if !state.registry.routes().modules.contains_key(&name) {
        return Err(not_loaded(&name));
    }
    let dir = state.reloader.plugins_dir().map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-manifest",
            e.to_string(),
        )
    })?;
    let file = dir.join(format!("{name}{SHADOW_SUFFIX}"));
    // Whole or not at all: the watcher never sees half a file.
    let partial = dir.join(format!(".{name}{SHADOW_SUFFIX}.partial"));
    tokio::fs::write(&partial, &body)
        .await
        .map_err(|e| io("cannot write", &partial, e))?;
    tokio::fs::rename(&partial, &file)
        .await
        .map_err(|e| io("cannot move the candidate to", &file, e))?;
    reload(&state).await?;
    match state.dispatcher.shadow_status(&name) {
        Some(status) => Ok(Json(status)),
        None => {
            // Refused: say why and leave no file that a restart would retry.
            let label = format!("{name} (shadow)");
            let why = state
                .registry
                .routes()
                .problems
                .iter()
                .find(|p| p.module == label)
                .map_or_else(|| "it did not load".to_string(), |p| p.message.clone());
            let _ = tokio::fs::remove_file(&file).await;
            reload(&state).await?;
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-candidate",
                format!("the candidate for '{name}' was refused: {why}"),
            ))
        }
    }
}

/// Drops `name`'s candidate; the serving version is untouched.
pub(super) async fn drop(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_admin(&state, &headers)?;
    let (candidate, _) = state
        .dispatcher
        .shadow(&name)
        .ok_or_else(|| no_shadow(&name))?;
    match tokio::fs::remove_file(&candidate.file).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot remove", &candidate.file, e)),
    }
    reload(&state).await?;
    Ok(Json(json!({
        "dropped": {"version": candidate.version, "sha256": candidate.sha256},
    })))
}

#[derive(Debug, Deserialize)]
pub(super) struct PromoteParams {
    /// Refuse when the candidate differed on more than this share of the
    /// messages compared (0.0 to 1.0).
    #[serde(rename = "max-diff-rate")]
    max_diff_rate: Option<f64>,
}

/// Makes the candidate the serving version: its file replaces the live
/// one (renamed, so a restart keeps it) and a reload swaps it in, in-flight
/// messages finishing on the version they started on.
pub(super) async fn promote(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    Query(params): Query<PromoteParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_admin(&state, &headers)?;
    let (candidate, rate) = state
        .dispatcher
        .shadow(&name)
        .ok_or_else(|| no_shadow(&name))?;
    let routes = state.registry.routes();
    let live = routes.modules.get(&name).ok_or_else(|| not_loaded(&name))?;
    if let Some(max) = params.max_diff_rate
        && rate > max
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "refused",
            format!(
                "the candidate differed on {rate:.4} of the messages compared; max-diff-rate is {max}"
            ),
        ));
    }
    // Checked here as the reload would: a refused reload after the rename
    // would leave the serving version without its file.
    let allowed = live.entry.as_ref().is_some_and(|e| e.allow_breaking);
    let breaking = compat::breaking_changes(&live.contract.declared, &candidate.contract.declared);
    if !allowed && !breaking.is_empty() {
        let list: Vec<String> = breaking.iter().map(ToString::to_string).collect();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "refused",
            format!(
                "the candidate would refuse messages the serving version accepts ({}); set allow-breaking = true in its plugins.toml entry to promote it",
                list.join("; ")
            ),
        ));
    }
    tokio::fs::rename(&candidate.file, &live.file)
        .await
        .map_err(|e| io("cannot move the candidate to", &live.file, e))?;
    reload(&state).await?;
    let now = state.registry.routes();
    match now.modules.get(&name) {
        Some(m) if m.sha256 == candidate.sha256 => Ok(Json(json!({
            "promoted": {"version": m.version, "sha256": m.sha256, "file": m.file},
            "replaced": {"version": live.version, "sha256": live.sha256},
        }))),
        _ => {
            let why = now.problems.iter().find(|p| p.module == name).map_or_else(
                || "the reload did not take it".to_string(),
                |p| p.message.clone(),
            );
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "not-promoted",
                format!("the candidate's file replaced the serving one, but: {why}"),
            ))
        }
    }
}
