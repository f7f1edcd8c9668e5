//! The compiled-component cache: Cranelift output kept on disk as
//! `<sha256 of the .wasm>-<engine compatibility key>.cwasm`, so a restart or a
//! module swapped back in skips compilation. Every failure here is a cache
//! miss, never a load failure.

use std::path::{Path, PathBuf};

use wasmtime::component::Component;

use crate::engine::Engine;

/// One engine's view of the cache folder.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    /// Artifacts of another wasmtime build or config get other names.
    key: String,
}

impl ArtifactCache {
    pub fn new(dir: &Path, engine: &Engine) -> Self {
        Self {
            dir: dir.to_path_buf(),
            key: engine.compatibility_key(),
        }
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.key))
    }

    /// The cached compilation of the component whose bytes hash to `sha256`,
    /// or `None` (absent, unreadable or refused by wasmtime).
    pub fn get(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        if !path.is_file() {
            return None;
        }
        match engine.load_compiled(&path) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "compiled-component cache entry refused; recompiling");
                // A bad entry would be refused on every load: replace it.
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compilation. Written to a temporary name and renamed, so a
    /// concurrent reader (another host on the same folder) never maps a
    /// half-written artifact.
    pub fn put(&self, engine: &Engine, sha256: &str, component: &Component) {
        let path = self.path(sha256);
        let stored = engine
            .serialize(component)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
                let tmp = self.dir.join(format!(
                    ".{sha256}-{}.{}.{}.tmp",
                    self.key,
                    std::process::id(),
                    fastrand::u64(..)
                ));
                std::fs::write(&tmp, &bytes)
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .map_err(|e| {
                        let _ = std::fs::remove_file(&tmp);
                        e.to_string()
                    })
            });
        if let Err(e) = stored {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compiled-component cache");
        }
    }
}
