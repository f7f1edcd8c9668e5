//! What the benchmarks share: modules of `plugins/` built as components.

use std::path::{Path, PathBuf};

/// Builds `packages` of `plugins/` for wasm32-wasip2 in release (adding the
/// target first when it is missing); each component's path, in order.
pub fn modules_built(packages: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    switchyard::builder::ensure_wasm_target()?;
    let flags: Vec<String> = packages.iter().map(|p| format!("-p {p}")).collect();
    switchyard::builder::run_command(
        &format!(
            "cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml {}",
            flags.join(" ")
        ),
        &root,
        &packages.join(", "),
    )?;
    Ok(packages
        .iter()
        .map(|p| root.join(format!("plugins/target/wasm32-wasip2/release/{p}.wasm")))
        .collect())
}

/// [`modules_built`] for one package.
pub fn module_built(package: &str) -> anyhow::Result<PathBuf> {
    modules_built(&[package])?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("{package} was not built"))
}

/// One module loaded as a host loads it, from a project of its own: the
/// parts a dispatcher is made of.
#[allow(dead_code)] // Each bench uses the parts it needs.
pub struct Loaded {
    pub engine: std::sync::Arc<switchyard::sandbox::engine::Engine>,
    pub store: switchyard::store::Store,
    pub registry: std::sync::Arc<switchyard::registry::Registry>,
    pub metrics: std::sync::Arc<switchyard::metrics::Metrics>,
    pub module: std::sync::Arc<switchyard::registry::LoadedModule>,
    /// The project folder (plugins, database), kept as long as this is.
    pub dir: tempfile::TempDir,
}

/// Loads the component `wasm` as `plugins/<name>.wasm` under the manifest
/// `manifest` (which names it), with a store, engine and registry of its own.
#[allow(dead_code)] // Not every bench loads a module itself.
pub async fn load(wasm: &Path, name: &str, manifest: &str) -> anyhow::Result<Loaded> {
    use std::sync::Arc;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("plugins"))?;
    std::fs::copy(wasm, dir.path().join(format!("plugins/{name}.wasm")))?;
    let manifest =
        switchyard::manifest::Manifest::parse(&dir.path().join("plugins.toml"), manifest)?;
    let store = switchyard::store::Store::connect(&manifest.host.database).await?;
    let engine = Arc::new(switchyard::sandbox::engine::Engine::new()?);
    let metrics = Arc::new(switchyard::metrics::Metrics::new());
    let registry = Arc::new(switchyard::registry::Registry::new(metrics.clone()));
    let routes = registry.load(&engine, &manifest, None).await;
    anyhow::ensure!(
        routes.problems.is_empty(),
        "load problems: {:?}",
        routes.problems
    );
    let module = routes
        .modules
        .get(name)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{name} not loaded"))?;
    registry.replace(routes);
    Ok(Loaded {
        engine,
        store,
        registry,
        metrics,
        module,
        dir,
    })
}
