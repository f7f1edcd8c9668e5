//! `GET /v1/asyncapi.json`, `GET /v1/openapi.json` and
//! `GET /v1/modules/{name}/contract`: what the loaded
//! modules take and send, with the schemas their `describe` declared
//! (WIT 0.2.0), built from the current routing table on each request, so
//! they change with every reload. Open like `GET /v1/modules`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};

use super::{ApiError, ApiState};
use axum::http::StatusCode;
use switchyard_model::contract::{ModuleContract, document};

/// Every loaded module's contract, under the name it serves as.
fn contracts(state: &ApiState) -> Vec<ModuleContract> {
    let routes = state.registry.routes();
    routes
        .modules
        .values()
        .map(|m| {
            let mut c = m.contract.declared.clone();
            // The manifest entry may grant other topics than `describe`
            // declared: the documents show what is routed.
            c.module = m.name.clone();
            c.version = m.version.clone();
            c.topics = m.topics.clone();
            c.subscribes = m.subscribes.clone();
            c.emits = m.grants.emits.clone();
            c
        })
        .collect()
}

/// The configured servers, with the HTTP one as the client reached it.
fn servers(state: &ApiState, headers: &HeaderMap) -> document::Servers {
    let mut servers = state.servers.clone();
    servers.http = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|host| format!("http://{host}"));
    servers
}

pub(super) async fn asyncapi(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    Json(document::asyncapi(
        &contracts(&state),
        &servers(&state, &headers),
        env!("CARGO_PKG_VERSION"),
    ))
}

pub(super) async fn openapi(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    Json(document::openapi(
        &contracts(&state),
        &servers(&state, &headers),
        env!("CARGO_PKG_VERSION"),
    ))
}

/// One module's contract as its `describe` declared it (schemas included):
/// what `switchyard check --against URL` compares a new build with.
pub(super) async fn contract(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<ModuleContract>, ApiError> {
    let routes = state.registry.routes();
    let module = routes.modules.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no module '{name}' is loaded"),
        )
    })?;
    let mut c = module.contract.declared.clone();
    c.module = module.name.clone();
    Ok(Json(c))
}
