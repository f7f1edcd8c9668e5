//! Test harness: real components built from `plugins/`, a real SQLite file in
//! a temporary folder (or a fresh PostgreSQL database), a real host on an
//! ephemeral port.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::app::server::Host;
use switchyard::manifest::Manifest;

pub const ADMIN_TOKEN_ENV: &str = "SWITCHYARD_TEST_ADMIN_TOKEN";
pub const ADMIN_TOKEN: &str = "test-admin-token";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds every module crate of `plugins/` once per test run (the same
/// command a user's manifest would run) and returns the path of `name`.
pub fn wasm(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = repo_root();
        switchyard::builder::ensure_wasm_target().map_err(|e| e.to_string())?;
        switchyard::builder::run_command(
            "cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml --workspace",
            &root,
            "test fixtures",
        )
        .map_err(|e| e.to_string())?;
        Ok(root.join("plugins/target/wasm32-wasip2/release"))
    });
    match dir {
        Ok(dir) => dir.join(format!("{name}.wasm")),
        Err(e) => panic!("building the plugins failed: {e}"),
    }
}

/// The example modules' manifest entries (as in the repository's plugins.toml).
pub const EXAMPLES: &str = r#"
[modules.inventory]
file = "inventory.wasm"
topics = ["inventory"]
subscribes = ["orders.events"]
emits = ["inventory.events"]
backoff-ms = 5

[modules.orders]
file = "orders.wasm"
topics = ["orders"]
subscribes = ["inventory.events"]
emits = ["orders.events"]
reads = ["inventory"]
backoff-ms = 5
[modules.orders.config]
currency = "EUR"
"#;

/// The inventory example alone, subscribed to no event topic (the tests
/// that drive it directly from a stream, the log or Kafka).
pub const INVENTORY_ALONE: &str = r#"
[modules.inventory]
file = "inventory.wasm"
topics = ["inventory"]
subscribes = []
emits = ["inventory.events"]
backoff-ms = 5
"#;

pub const FAULTY: &str = r#"
[modules.faulty]
file = "faulty.wasm"
max-attempts = 3
backoff-ms = 1
"#;

/// A temporary project folder: plugins.toml, plugins/, the SQLite file.
pub struct Project {
    pub dir: tempfile::TempDir,
    /// The host's database URL, as the test reads it.
    database: String,
}

impl Project {
    /// `modules`: crate names whose components go into plugins/; `entries`:
    /// the `[modules.*]` part of the manifest.
    pub fn new(modules: &[&str], entries: &str) -> Self {
        Self::with_database(modules, entries, "sqlite://switchyard.db")
    }

    /// The same on a fresh PostgreSQL database (see [`postgres_database`]).
    pub async fn postgres(modules: &[&str], entries: &str) -> Self {
        Self::with_database(modules, entries, &postgres_database().await)
    }

    /// `database`: the manifest's `host.database`.
    pub fn with_database(modules: &[&str], entries: &str, database: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("plugins")).expect("plugins dir");
        for m in modules {
            std::fs::copy(
                wasm(m),
                dir.path().join("plugins").join(format!("{m}.wasm")),
            )
            .expect("copy component");
        }
        let manifest = format!(
            "[host]\nlisten = \"127.0.0.1:0\"\ndatabase = \"{database}\"\nmax-connections = 8\nadmin-token-env = \"{ADMIN_TOKEN_ENV}\"\n{entries}"
        );
        std::fs::write(dir.path().join("plugins.toml"), manifest).expect("write manifest");
        let database = if database.starts_with("sqlite:") {
            format!("sqlite://{}", dir.path().join("switchyard.db").display())
        } else {
            database.to_string()
        };
        Self { dir, database }
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("plugins.toml")
    }

    pub fn db_url(&self) -> String {
        self.database.clone()
    }

    pub async fn start(&self) -> TestHost {
        admin_token_env();
        let manifest = Manifest::load(&self.manifest_path()).expect("manifest");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let host = switchyard::app::server::start(manifest, listener)
            .await
            .expect("host starts");
        TestHost {
            base: format!("http://{}", host.addr()),
            host: Some(host),
            client: reqwest::Client::new(),
        }
    }
}

fn admin_token_env() {
    static SET: OnceLock<()> = OnceLock::new();
    SET.get_or_init(|| {
        assert_eq!(
            std::env::var(ADMIN_TOKEN_ENV).ok().as_deref(),
            Some(ADMIN_TOKEN),
            "the e2e tests expect {ADMIN_TOKEN_ENV}={ADMIN_TOKEN} (set by .cargo/config.toml [env])"
        );
    });
}

pub struct TestHost {
    pub base: String,
    pub host: Option<Host>,
    pub client: reqwest::Client,
}

impl TestHost {
    /// POSTs a raw body to `path`; returns status and JSON (or the text as a JSON string).
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    pub async fn send(&self, envelope: Value) -> (u16, Value) {
        self.post_raw("/v1/messages", envelope.to_string()).await
    }

    /// Sends a command with a fresh id.
    pub async fn command(&self, topic: &str, subtopic: &str, body: Value) -> (u16, Value) {
        self.send(json!({"topic": topic, "subtopic": subtopic, "body": body}))
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    pub async fn stop(mut self) {
        if let Some(host) = self.host.take() {
            host.stop().await;
        }
    }
}

async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A new, empty PostgreSQL database on 127.0.0.1:5432 (or the server that
/// `SWITCHYARD_TEST_POSTGRES` names), so tests run in parallel and repeat
/// without cleanup. Returns its URL.
pub async fn postgres_database() -> String {
    use sqlx::Connection;
    let server = std::env::var("SWITCHYARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("switchyard_e2e_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .expect("PostgreSQL is running on 127.0.0.1:5432 (see .ci/run)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("CREATE DATABASE");
    let _ = admin.close().await;
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

/// Drops a database made by [`postgres_database`] (hosts still connected
/// are disconnected).
pub async fn drop_postgres_database(url: &str) {
    use sqlx::Connection;
    let (base, name) = url.rsplit_once('/').expect("database URL");
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("DROP DATABASE");
}

/// Rows of the host's database, read directly (what an operator would see).
pub async fn query_count(db_url: &str, sql: &str) -> i64 {
    match try_query_count(db_url, sql).await {
        Ok(n) => n,
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// [`query_count`], or the error (e.g. the host has not migrated yet).
pub async fn try_query_count(db_url: &str, sql: &str) -> Result<i64, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    if db_url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(db_url).await?;
        let n = sqlx::query_scalar(sql).fetch_one(&pool).await;
        pool.close().await;
        return n;
    }
    let pool = sqlx::SqlitePool::connect(db_url).await?;
    let n = sqlx::query_scalar(sql).fetch_one(&pool).await;
    pool.close().await;
    n
}

/// A host as a user runs it: the `switchyard` binary (`up --no-build`), its
/// log kept beside the test's database for a look when a test fails.
pub fn spawn_host(project: &Project, name: &str) -> std::process::Child {
    spawn_host_logging(project, name, "info")
}

/// [`spawn_host`] with `rust_log` as the host's `RUST_LOG`.
pub fn spawn_host_logging(project: &Project, name: &str, rust_log: &str) -> std::process::Child {
    let log =
        std::fs::File::create(project.dir.path().join(format!("{name}.log"))).expect("log file");
    std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(project.manifest_path())
        .args(["up", "--no-build", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", rust_log)
        // Plain text: the tests search the logs.
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start switchyard")
}

/// Runs the `switchyard` binary on the manifest `manifest` with `args`:
/// whether it succeeded, and its stdout and stderr together.
pub fn run_switchyard(manifest: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(manifest)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run switchyard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
