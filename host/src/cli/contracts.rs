//! `switchyard check --against URL` / `--previous NAME=FILE`: each loaded
//! module's declared schemas compared with the version a running host
//! serves, or with an earlier component file: the same comparison a
//! reload makes before it swaps a module in (see
//! [`switchyard_model::contract::compat`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::registry::LoadedModule;
use crate::registry::contract::Contract;
use crate::sandbox::engine::Engine;
use switchyard_model::contract::{ModuleContract, compat};
use switchyard_model::grants::Grants;

/// What to compare the modules being checked with.
pub enum Previous {
    /// A running host's base URL.
    Host(String),
    /// Earlier component files, by module name.
    Files(Vec<(String, PathBuf)>),
}

/// One module compared with its previous version.
pub struct Comparison {
    pub module: String,
    pub against: String,
    pub breaking: Vec<compat::Breaking>,
    /// The entry says `allow-breaking = true`.
    pub allowed: bool,
}

/// `--previous NAME=FILE`.
pub fn parse_previous(s: &str) -> Result<(String, PathBuf), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
        .ok_or_else(|| format!("{s:?} is not NAME=FILE"))
}

/// Compares every module of `modules` that `previous` knows.
pub async fn compare(
    engine: &Arc<Engine>,
    modules: &[Arc<LoadedModule>],
    previous: &Previous,
) -> anyhow::Result<Vec<Comparison>> {
    let mut out = Vec::new();
    for m in modules {
        let (old, source) = match previous {
            Previous::Host(url) => match served(url, &m.name).await? {
                Some(c) => (c, url.clone()),
                None => continue,
            },
            Previous::Files(files) => {
                let Some((_, file)) = files.iter().find(|(name, _)| *name == m.name) else {
                    continue;
                };
                (
                    described(engine, &m.name, file).await?,
                    file.display().to_string(),
                )
            }
        };
        out.push(Comparison {
            module: m.name.clone(),
            against: format!("{source} (version {})", old.version),
            breaking: compat::breaking_changes(&old, &m.contract.declared),
            allowed: m.entry.as_ref().is_some_and(|e| e.allow_breaking),
        });
    }
    Ok(out)
}

/// The contract `url` serves for `module`; `None` when it does not serve it.
async fn served(url: &str, module: &str) -> anyhow::Result<Option<ModuleContract>> {
    let url = format!("{}/v1/modules/{module}/contract", url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        anyhow::bail!("{url} answered {}", response.status());
    }
    Ok(Some(response.json().await.map_err(|e| {
        anyhow::anyhow!("{url} answered something that is not a module contract: {e}")
    })?))
}

/// What the component in `file` declares, by compiling it and calling
/// its `describe` as a load does.
async fn described(
    engine: &Arc<Engine>,
    module: &str,
    file: &Path,
) -> anyhow::Result<ModuleContract> {
    let bytes = tokio::fs::read(file)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let compiler = engine.clone();
    let component = tokio::task::spawn_blocking(move || compiler.compile(&bytes)).await??;
    let pre = engine.prepare(&component)?;
    let probe = Arc::new(Grants {
        name: module.to_string(),
        ..Grants::default()
    });
    let (descriptor, world) = engine
        .describe(&pre, probe, 64, Duration::from_secs(10))
        .await?;
    Contract::from_descriptor(&descriptor, world)
        .map(|c| c.declared)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}
