//! The router with `oneshot`: a real dispatcher and registry over a SQLite
//! store in a temporary folder, no listener. Status codes and error kinds
//! are SPEC §5's.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use sha2::Digest;
use tower::ServiceExt;

use super::{ApiState, router};
use crate::dispatch::Dispatcher;
use crate::dispatch::tests::support::{FAULTY, INVENTORY, engine, project, registry, wasm};
use crate::metrics::Metrics;
use crate::registry::reload::Reloader;
use switchyard_store::Store;

const TOKEN: &str = "admin-secret";
/// SPEC §5's default body limit.
const MAX_BODY: usize = 1024 * 1024;

/// A router over `modules` (loaded from `entries`) and a fresh SQLite
/// store; the admin token is [`TOKEN`] unless `admin` is false.
struct Api {
    _dir: tempfile::TempDir,
    store: Store,
    router: axum::Router,
}

impl Api {
    async fn new(modules: &[&str], entries: &str) -> Self {
        Self::with(modules, entries, Some(TOKEN), MAX_BODY).await
    }

    async fn with(modules: &[&str], entries: &str, admin: Option<&str>, max_body: usize) -> Self {
        let (dir, manifest) = project(modules, entries);
        let store = Store::connect(&manifest.host.database).await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let registry = registry(&manifest, &metrics).await;
        let dispatcher = Dispatcher::new(
            engine(),
            Arc::new(store.clone()),
            registry.clone(),
            metrics.clone(),
        );
        let reloader = Reloader::new(engine(), registry.clone(), manifest.path.clone());
        let state = ApiState {
            dispatcher: Arc::new(dispatcher),
            registry,
            store: store.clone(),
            metrics,
            reloader: Arc::new(reloader),
            admin_token: admin.map(str::to_string),
            brokers: Vec::new(),
            servers: Default::default(),
        };
        Self {
            _dir: dir,
            store,
            router: router(Arc::new(state), max_body),
        }
    }

    /// Status and JSON body (or the text as a JSON string).
    async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        self.call(post(path).body(body.into()).unwrap()).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(get(path).body(Body::empty()).unwrap()).await
    }

    /// A request with `Authorization: Bearer <token>`.
    async fn admin(&self, method: &str, path: &str, token: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        self.call(request).await
    }
}

fn post(path: &str) -> axum::http::request::Builder {
    Request::builder()
        .method("POST")
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
}

fn get(path: &str) -> axum::http::request::Builder {
    Request::builder().method("GET").uri(path)
}

fn error_kind(body: &Value) -> &str {
    body["error"]["kind"].as_str().unwrap_or_default()
}

/// `POST /v1/topics/inventory/restock` with the message id `id`.
fn restock(id: &str, body: Value) -> Request<Body> {
    post("/v1/topics/inventory/restock")
        .header("x-message-id", id)
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let api = Api::new(&[], "").await;
    let (status, body) = api.get("/healthz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));

    let (status, body) = api.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["checks"]["database"]["ok"], true);
    assert_eq!(body["checks"]["modules"]["loaded"], 0);

    let response = api
        .router
        .clone()
        .oneshot(get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
}

#[tokio::test]
async fn a_malformed_envelope_is_400() {
    let api = Api::new(&[], "").await;
    for body in [
        "{",
        r#"{"topic": "inventory", "body": {}}"#,
        r#"{"topic": "inv entory", "subtopic": "restock", "body": {}}"#,
        r#"{"topic": "inventory", "subtopic": "restock", "body": {}, "extra": 1}"#,
    ] {
        let (status, answer) = api.post("/v1/messages", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(
            error_kind(&answer),
            "malformed-envelope",
            "{body}: {answer}"
        );
    }
    let (status, answer) = api.post("/v1/topics/inventory/restock", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(error_kind(&answer), "malformed-envelope");
}

#[tokio::test]
async fn a_topic_nobody_owns_is_404() {
    let api = Api::new(&[], "").await;
    let envelope = json!({"topic": "nobody", "subtopic": "x", "body": {}});
    let (status, answer) = api.post("/v1/messages", envelope.to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(error_kind(&answer), "no-route");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nobody")
    );
    let (status, answer) = api.post("/v1/topics/nobody/x", "{}").await;
    assert_eq!(
        (status, error_kind(&answer)),
        (StatusCode::NOT_FOUND, "no-route")
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let api = Api::with(&[], "", Some(TOKEN), 128).await;
    let envelope = json!({"topic": "nobody", "subtopic": "x", "body": "y".repeat(200)});
    let (status, answer) = api.post("/v1/messages", envelope.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(error_kind(&answer), "too-large");
    let (status, _) = api.post("/v1/topics/nobody/x", envelope.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Under the limit, the same route gets as far as routing.
    let small = json!({"topic": "nobody", "subtopic": "x", "body": {}});
    let (status, _) = api.post("/v1/messages", small.to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn admin_endpoints_want_the_bearer_token() {
    let api = Api::new(&[], "").await;
    for (method, path) in [
        ("GET", "/v1/dead-letters"),
        ("POST", "/v1/dead-letters/some-id/replay"),
        ("POST", "/v1/dead-letters/replay?topic=inventory"),
        ("POST", "/v1/admin/reload"),
        ("GET", "/v1/messages/some-id"),
    ] {
        let request = Request::builder().method(method).uri(path);
        let (status, answer) = api.call(request.body(Body::empty()).unwrap()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {answer}"
        );
        assert_eq!(error_kind(&answer), "unauthorized");
        let (status, _) = api.admin(method, path, "wrong").await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a wrong token"
        );
    }
    let (status, answer) = api.admin("GET", "/v1/dead-letters", TOKEN).await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({"dead_letters": []}))
    );
    let (status, answer) = api.admin("POST", "/v1/admin/reload", TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["modules"], json!([]));
    let (status, answer) = api
        .admin("POST", "/v1/dead-letters/nope/replay", TOKEN)
        .await;
    assert_eq!(
        (status, error_kind(&answer)),
        (StatusCode::NOT_FOUND, "not-found")
    );
}

#[tokio::test]
async fn without_an_admin_token_the_admin_endpoints_are_closed() {
    let api = Api::with(&[], "", None, MAX_BODY).await;
    for token in ["", "anything"] {
        let (status, answer) = api.admin("GET", "/v1/dead-letters", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains("off"));
    }
}

#[tokio::test]
async fn modules_lists_the_loaded_modules() {
    let api = Api::new(&["inventory"], INVENTORY).await;
    let (status, answer) = api.get("/v1/modules").await;
    assert_eq!(status, StatusCode::OK);
    let modules = answer["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 1, "{answer}");
    let inventory = &modules[0];
    assert_eq!(inventory["name"], "inventory");
    assert_eq!(inventory["status"], "loaded");
    assert_eq!(inventory["topics"], json!(["inventory"]));
    assert_eq!(inventory["emits"], json!(["inventory.events"]));
    assert_eq!(inventory["subscribes"], json!(["orders.events"]));
    let bytes = std::fs::read(wasm("inventory")).unwrap();
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(inventory["sha256"], json!(sha));
    assert!(inventory["loaded_at"].is_string());
    assert_eq!(inventory["handled"], 0);
    assert_eq!(inventory["failed"], 0);
}

#[tokio::test]
async fn a_command_is_processed_once_and_its_repeat_answers_duplicate() {
    let api = Api::new(&["inventory"], INVENTORY).await;
    let body = json!({"sku": "apple", "qty": 2});
    let (status, first) = api.call(restock("m-1", body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["id"], "m-1");
    assert_eq!(first["status"], "processed");
    assert_eq!(first["output"], json!({"sku": "apple", "available": 2}));
    assert_eq!(first["events"][0]["topic"], "inventory.events");
    assert_eq!(first["events"][0]["headers"]["causation-id"], "m-1");

    let (status, again) = api.call(restock("m-1", body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["status"], "duplicate");
    assert_eq!(
        (&again["output"], &again["events"]),
        (&first["output"], &first["events"])
    );
    let stock = api.store.get("inventory", "stock", "apple").await.unwrap();
    assert_eq!(stock.unwrap().version, 1, "applied once");

    // The committed stock is what the next message reads.
    let query =
        json!({"id": "q-1", "topic": "inventory", "subtopic": "get", "body": {"sku": "apple"}});
    let (status, answer) = api.post("/v1/messages", query.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["output"]["available"], 2);
    let (_, modules) = api.get("/v1/modules").await;
    assert_eq!(modules["modules"][0]["handled"], 2);
}

#[tokio::test]
async fn the_modules_refusals_are_422_and_409() {
    let api = Api::new(&["inventory"], INVENTORY).await;
    let (status, answer) = api.call(restock("bad-1", json!({"sku": "apple"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(error_kind(&answer), "invalid");
    assert!(answer["error"]["message"].as_str().unwrap().contains("qty"));

    let refused = json!({"sku": "apple", "qty": 0});
    let (status, answer) = api.call(restock("no-1", refused)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(error_kind(&answer), "rejected");

    // Invalid is dead-lettered, rejected is not.
    let path = "/v1/dead-letters?topic=inventory";
    let (status, answer) = api.admin("GET", path, TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    let letters = answer["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{answer}");
    assert_eq!(letters[0]["message_id"], "bad-1");
}

#[tokio::test]
async fn a_trap_is_500_after_its_retries() {
    let api = Api::new(&["faulty"], FAULTY).await;
    let body = json!({"key": "k", "then": "trap"});
    let (status, answer) = api
        .post("/v1/topics/faulty/write-then", body.to_string())
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(error_kind(&answer), "trap");
}

#[tokio::test]
async fn wait_false_answers_202_before_handling() {
    let api = Api::new(&["inventory"], INVENTORY).await;
    let envelope = json!({"id": "w-1", "topic": "inventory", "subtopic": "restock",
        "body": {"sku": "apple", "qty": 2}});
    let (status, answer) = api
        .post("/v1/messages?wait=false", envelope.to_string())
        .await;
    assert_eq!(
        (status, answer),
        (StatusCode::ACCEPTED, json!({"id": "w-1"}))
    );
    let topics = ["inventory".to_string()];
    let log = api.store.read_log(0, &topics, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].envelope.id, "w-1");
    assert_eq!(log[0].envelope.header("correlation-id"), Some("w-1"));
    // Appended, not handled: nothing consumes the log in this test.
    let stock = api.store.get("inventory", "stock", "apple").await.unwrap();
    assert_eq!(stock, None);
}

/// The whole response of a GET, headers included.
async fn get_response(api: &Api, path: &str, headers: &[(&str, &str)]) -> axum::response::Response {
    let mut request = get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    api.router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

fn header_of(response: &axum::response::Response, name: header::HeaderName) -> &str {
    response.headers()[name].to_str().unwrap()
}

#[tokio::test]
async fn the_console_is_served_with_its_content_types_and_a_strict_policy() {
    let api = Api::new(&[], "").await;
    for (path, content_type) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console/", "text/html; charset=utf-8"),
        ("/console/style.css", "text/css; charset=utf-8"),
        ("/console/js/app.js", "text/javascript; charset=utf-8"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let response = get_response(&api, path, &[]).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(header_of(&response, header::CONTENT_TYPE), content_type);
        let policy = header_of(&response, header::CONTENT_SECURITY_POLICY);
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(policy.contains("default-src 'none'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(
            header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
            "nosniff"
        );
        assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-cache");

        // Revalidation: the same tag answers 304 without a body.
        let etag = header_of(&response, header::ETAG).to_string();
        let again = get_response(&api, path, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
    for path in [
        "/console/nope.js",
        "/console/js/",
        "/console/../Cargo.toml",
        "/console/js/app.js/x",
    ] {
        let response = get_response(&api, path, &[]).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

/// Every file the page names is served, no script is inline, and no script
/// parses data as HTML.
#[tokio::test]
async fn the_console_page_names_only_served_files_and_never_parses_html() {
    let api = Api::new(&[], "").await;
    let (_, page) = api.get("/console").await;
    let page = page.as_str().unwrap().to_string();
    assert_eq!(page.matches("<script").count(), 1, "one script: the app");
    assert!(page.contains("<script type=\"module\" src=\"/console/js/app.js\"></script>"));
    assert!(
        !page.contains(" style="),
        "no inline style (the policy refuses it)"
    );
    let mut files: Vec<String> = page
        .split("\"/console/")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect();
    let (_, app) = api.get("/console/js/app.js").await;
    let app = app.as_str().unwrap().to_string();
    for line in app.lines().filter(|l| l.starts_with("import ")) {
        let module = line.split('\'').nth(1).unwrap().trim_start_matches("./");
        files.push(format!("js/{module}"));
    }
    assert!(files.len() >= 9, "{files:?}");
    for file in &files {
        let (status, body) = api.get(&format!("/console/{file}")).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        if file.ends_with(".js") {
            let source = body.as_str().unwrap();
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!source.contains(sink), "{file} uses {sink}");
            }
        }
    }
}

#[tokio::test]
async fn the_console_config_says_whether_the_admin_api_is_on_and_nothing_more() {
    let api = Api::new(&[], "").await;
    let response = get_response(&api, "/console/config.json", &[]).await;
    assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-store");
    let (status, config) = api.get("/console/config.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(config["admin_api"], true);
    assert!(!config.to_string().contains(TOKEN), "{config}");
    let off = Api::with(&[], "", None, MAX_BODY).await;
    let (_, config) = off.get("/console/config.json").await;
    assert_eq!(config["admin_api"], false);
}

#[tokio::test]
async fn topics_lists_owners_subscribers_lag_and_the_outbox() {
    let api = Api::new(&["inventory"], INVENTORY).await;
    let (status, answer) = api.get("/v1/topics").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let topic = |name: &str| {
        answer["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no topic {name} in {answer}"))
    };
    assert_eq!(
        topic("inventory"),
        json!({"name": "inventory", "owner": "inventory", "subscribers": [], "emitters": []})
    );
    assert_eq!(topic("orders.events")["subscribers"], json!(["inventory"]));
    assert_eq!(topic("orders.events")["owner"], Value::Null);
    assert_eq!(topic("inventory.events")["emitters"], json!(["inventory"]));
    // Without a broker the outbox is the log: lag per embedded reader.
    assert_eq!(answer["outbox"]["relay"], false);
    let consumers = answer["consumers"].as_array().unwrap();
    assert!(!consumers.is_empty(), "{answer}");
    for c in consumers {
        assert_eq!(c["group"], "embedded.inventory", "{c}");
        assert_eq!(c["via"], "embedded");
        assert_eq!(c["lag"], 0);
    }
}
