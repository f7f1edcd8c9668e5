//! What the dispatcher's and the HTTP router's unit tests share: the
//! components of `plugins/` built once per process, one engine, and a
//! project folder whose manifest loads them.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::sandbox::engine::Engine;
use switchyard_model::manifest::Manifest;

/// Builds every module crate of `plugins/` once per test process (the
/// command a user's manifest would run) and returns the path of `name`.
pub(crate) fn wasm(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        crate::builder::ensure_wasm_target().map_err(|e| e.to_string())?;
        crate::builder::run_command(
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

/// One engine for the whole test process: each reserves a large pool of
/// address space and runs an epoch thread.
pub(crate) fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| Arc::new(Engine::new().unwrap()))
        .clone()
}

/// A temporary project: `plugins/` with the components of `modules`, and
/// `plugins.toml` with `entries` after a `[host]` table (SQLite `t.db` in
/// the folder; compiled components cached across tests and runs).
pub(crate) fn project(modules: &[&str], entries: &str) -> (tempfile::TempDir, Manifest) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    for m in modules {
        let to = dir.path().join("plugins").join(format!("{m}.wasm"));
        std::fs::copy(wasm(m), to).unwrap();
    }
    let cache = std::env::temp_dir().join("switchyard-unit-test-cache");
    let text = format!(
        "[host]\ndatabase = \"sqlite://t.db\"\ncache-dir = {:?}\n{entries}",
        cache.display().to_string()
    );
    let path = dir.path().join("plugins.toml");
    std::fs::write(&path, text).unwrap();
    let manifest = Manifest::load(&path).unwrap();
    (dir, manifest)
}

/// A registry serving the manifest's modules (every one must load).
pub(crate) async fn registry(manifest: &Manifest, metrics: &Arc<Metrics>) -> Arc<Registry> {
    let registry = Arc::new(Registry::new(metrics.clone()));
    let routes = registry.load(&engine(), manifest, None).await;
    assert!(routes.problems.is_empty(), "{:?}", routes.problems);
    registry.replace(routes);
    registry
}

pub(crate) const INVENTORY: &str = r#"
[modules.inventory]
file = "inventory.wasm"
topics = ["inventory"]
backoff-ms = 1
"#;

pub(crate) const FAULTY: &str = r#"
[modules.faulty]
file = "faulty.wasm"
max-attempts = 3
backoff-ms = 1
"#;
