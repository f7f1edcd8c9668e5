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
