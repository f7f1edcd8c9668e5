//! The operator console (`GET /console`): static HTML, CSS and JavaScript
//! embedded in the binary and served with a strict Content-Security-Policy,
//! plus `GET /console/config.json`, what the page needs to know of this host
//! (whether the admin API is on, never the token). The page reads and acts
//! through the same `/v1` API as any client, with the same tokens.

use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::Digest;

use super::{ApiError, ApiState};

/// Scripts, styles, images and requests from this origin only; no inline
/// script or style, no frames, no form posts (the page's forms are handled
/// by its script), no `<base>`.
pub(super) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file of the console.
struct Asset {
    /// Its path under `/console/`.
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Every file the console serves; the page is `index.html`.
static ASSETS: &[Asset] = &[
    Asset {
        path: "index.html",
        content_type: HTML,
        bytes: include_bytes!("console/index.html"),
    },
    Asset {
        path: "style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("console/style.css"),
    },
    Asset {
        path: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("console/favicon.svg"),
    },
    Asset {
        path: "js/app.js",
        content_type: JS,
        bytes: include_bytes!("console/js/app.js"),
    },
    Asset {
        path: "js/dom.js",
        content_type: JS,
        bytes: include_bytes!("console/js/dom.js"),
    },
    Asset {
        path: "js/api.js",
        content_type: JS,
        bytes: include_bytes!("console/js/api.js"),
    },
    Asset {
        path: "js/modules.js",
        content_type: JS,
        bytes: include_bytes!("console/js/modules.js"),
    },
    Asset {
        path: "js/topics.js",
        content_type: JS,
        bytes: include_bytes!("console/js/topics.js"),
    },
    Asset {
        path: "js/dead-letters.js",
        content_type: JS,
        bytes: include_bytes!("console/js/dead-letters.js"),
    },
    Asset {
        path: "js/messages.js",
        content_type: JS,
        bytes: include_bytes!("console/js/messages.js"),
    },
    Asset {
        path: "js/send.js",
        content_type: JS,
        bytes: include_bytes!("console/js/send.js"),
    },
];

/// The entity tag of each asset (same order as [`ASSETS`]): its sha256,
/// so a browser revalidates and gets 304 until the binary changes.
fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = sha2::Sha256::digest(a.bytes);
                let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

/// Headers every console answer carries.
fn hardened(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Serves the asset at `path`, 304 when `If-None-Match` names its tag.
fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.path == path) else {
        let missing = ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such file in the console",
        );
        return hardened(missing.into_response());
    };
    let (asset, etag) = (&ASSETS[index], &etags()[index]);
    let cached = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    // Revalidate every time: the files change with the binary, not by date.
    let cache = (header::CACHE_CONTROL, "no-cache");
    let response = if cached {
        (
            StatusCode::NOT_MODIFIED,
            [cache, (header::ETAG, etag.as_str())],
        )
            .into_response()
    } else {
        (
            [
                cache,
                (header::ETAG, etag.as_str()),
                (header::CONTENT_TYPE, asset.content_type),
            ],
            asset.bytes,
        )
            .into_response()
    };
    hardened(response)
}

/// `GET /console` and `GET /console/`: the page.
pub(super) async fn page(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /console/{*path}`: one of the page's files, or 404.
pub(super) async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// `GET /console/config.json`: whether the admin API is on (a token is
/// configured; the token itself never leaves the host), the host's version,
/// and which optional API parts exist, so the page renders only those.
pub(super) async fn config(State(state): State<Arc<ApiState>>) -> Response {
    let body = json!({
        "admin_api": state.admin_token.is_some(),
        "version": env!("CARGO_PKG_VERSION"),
        "features": {"shadow": false, "schemas": false},
    });
    let response = ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response();
    hardened(response)
}
