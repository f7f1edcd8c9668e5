//! The compiled-component cache: Cranelift output kept on disk as
//! `<sha256 of the .wasm>-<engine compatibility key>.cwasm`, so a restart or a
//! module swapped back in skips compilation. Every failure here is a cache
//! miss, never a load failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use wasmtime::component::Component;

use crate::sandbox::engine::Engine;

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
            Ok(c) => {
                // Last use, for retention: an entry nobody loads ages out.
                let touched = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                if let Err(e) = touched {
                    tracing::debug!(file = %path.display(), error = %e, "cache entry: cannot note its use");
                }
                Some(c)
            }
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

/// A temporary file older than this was left by a writer that died.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// Deletes the entries of `dir` not written or loaded for `unused` (other
/// versions of a module, artifacts of an older wasmtime) and temporary
/// files left by a crash. Hosts read an entry into memory when loading it,
/// so deleting one under a running host is safe. Returns how many went.
pub fn prune(dir: &Path, unused: Duration) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let limit = if name.ends_with(".cwasm") {
            unused
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            STALE_TEMPORARY
        } else {
            continue;
        };
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if now.duration_since(modified).unwrap_or_default() > limit {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                // Another host pruned it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file(dir: &Path, name: &str, age: Duration) {
        let path = dir.join(name);
        std::fs::write(&path, b"x").unwrap();
        let f = std::fs::File::options().append(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn prune_removes_unused_entries_and_dead_temporaries_only() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(24 * 3600);
        file(dir.path(), "old-key.cwasm", day * 40);
        file(dir.path(), "recent-key.cwasm", day);
        file(
            dir.path(),
            ".crashed-key.1.2.tmp",
            Duration::from_secs(7200),
        );
        file(dir.path(), ".writing-key.1.3.tmp", Duration::from_secs(5));
        file(dir.path(), "notes.txt", day * 400);
        assert_eq!(prune(dir.path(), day * 30).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [".writing-key.1.3.tmp", "notes.txt", "recent-key.cwasm"]
        );
        assert_eq!(prune(&dir.path().join("absent"), day).unwrap(), 0);
    }
}
