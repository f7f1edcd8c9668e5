//! Hot reload: re-read plugins.toml and the plugins folder, load what
//! changed, and swap the routing table, one reload at a time.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::{LoadProblem, Registry};
use crate::sandbox::engine::Engine;
use switchyard_model::manifest::{Manifest, ManifestError};

/// Re-reads the manifest and the plugins folder and swaps the routes.
pub struct Reloader {
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    manifest_path: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct ReloadSummary {
    pub modules: Vec<String>,
    pub problems: Vec<LoadProblem>,
}

impl Reloader {
    /// Reloads `registry` with `engine` from the manifest at `manifest_path`.
    pub fn new(engine: Arc<Engine>, registry: Arc<Registry>, manifest_path: PathBuf) -> Self {
        Self {
            engine,
            registry,
            manifest_path,
        }
    }

    /// The plugins folder plugins.toml names now.
    pub fn plugins_dir(&self) -> Result<PathBuf, ManifestError> {
        Manifest::load(&self.manifest_path).map(|m| m.host.plugins_dir)
    }

    /// One reload at a time (and never during a rollback); a manifest that
    /// does not load changes nothing and is reported on `/v1/modules`.
    pub async fn reload(&self) -> Result<ReloadSummary, ManifestError> {
        let _one = self.registry.lock_swaps().await;
        let manifest = match Manifest::load(&self.manifest_path) {
            Ok(m) => {
                self.registry.set_manifest_error(None);
                m
            }
            Err(e) => {
                tracing::error!(error = %e, "plugins.toml not reloaded; everything stays as it is");
                self.registry.set_manifest_error(Some(e.to_string()));
                return Err(e);
            }
        };
        let previous = self.registry.routes();
        let routes = self
            .registry
            .load(&self.engine, &manifest, Some(&previous))
            .await;
        let summary = ReloadSummary {
            modules: routes.modules.keys().cloned().collect(),
            problems: routes.problems.clone(),
        };
        self.registry.replace(routes);
        Ok(summary)
    }
}
