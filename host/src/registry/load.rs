//! Loading: the manifest's modules and the plugins folder's drop-ins,
//! compiled (or taken from the cache), linked, described and resolved into a
//! new routing table; only what changed since the previous table is loaded
//! again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::module::{LoadedModule, ModuleLimits, Probation, Source};
use super::routes::resolve;
use super::{LoadProblem, Registry, Routes, locked};
use crate::sandbox::bindings::GuestPre;
use crate::sandbox::cache::ArtifactCache;
use crate::sandbox::engine::Engine;
use crate::sandbox::state::HostState;
use switchyard_model::envelope::check_name;
use switchyard_model::grants::Grants;
use switchyard_model::manifest::{
    DEFAULT_BACKOFF_MS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_MEMORY_MB, DEFAULT_TIMEOUT_MS, Manifest,
    ModuleEntry,
};

/// What loading one file gave.
#[derive(Default)]
struct FileLoad {
    /// The version to serve: new, kept from before, or none.
    module: Option<Arc<LoadedModule>>,
    problem: Option<String>,
    /// Set when the file holds a version that was rolled back: its sha256.
    rolled_back: Option<String>,
}

impl FileLoad {
    /// The new file failed: the version that served before keeps serving.
    fn keep(old: Option<&Arc<LoadedModule>>, problem: String) -> Self {
        Self {
            module: old.cloned(),
            problem: Some(problem),
            rolled_back: None,
        }
    }
}

impl Registry {
    /// Loads every module the manifest names and every drop-in `*.wasm` of
    /// the plugins folder, and resolves the routes. Against `previous`, only
    /// what changed is loaded again: a module whose file (sha256) and
    /// manifest entry are unchanged keeps its loaded version, and one that
    /// fails to load keeps its previous version serving. A removed file
    /// unloads its module.
    pub async fn load(
        &self,
        engine: &Arc<Engine>,
        manifest: &Manifest,
        previous: Option<&Routes>,
    ) -> Routes {
        let cache = ArtifactCache::new(&manifest.host.cache_dir, engine);
        let mut loaded: Vec<Arc<LoadedModule>> = Vec::new();
        let mut problems = Vec::new();
        let mut rolled_back = BTreeMap::new();
        let dir = &manifest.host.plugins_dir;

        for (name, entry) in &manifest.modules {
            let file = dir.join(&entry.file);
            let old = previous.and_then(|p| p.modules.get(name));
            let window = entry.rollback_after.unwrap_or(manifest.host.rollback_after);
            let result = self
                .load_file(
                    engine,
                    &cache,
                    name,
                    Some(entry),
                    window,
                    &file,
                    old,
                    previous,
                )
                .await;
            loaded.extend(result.module);
            if let Some(sha) = result.rolled_back {
                rolled_back.insert(name.clone(), sha);
            }
            if let Some(message) = result.problem {
                problems.push(LoadProblem {
                    module: name.clone(),
                    file,
                    message,
                });
            }
        }

        for file in drop_ins(dir, manifest) {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if manifest.host.strict {
                problems.push(LoadProblem {
                    module: stem,
                    file,
                    message: "not named in plugins.toml and `strict = true`: not loaded".into(),
                });
                continue;
            }
            let old = previous.and_then(|p| p.modules.values().find(|m| m.file == file));
            let result = self
                .load_file(
                    engine,
                    &cache,
                    &stem,
                    None,
                    manifest.host.rollback_after,
                    &file,
                    old,
                    previous,
                )
                .await;
            let label = result
                .module
                .as_ref()
                .or(old)
                .map_or(stem, |m| m.name.clone());
            if let Some(m) = result.module {
                if manifest.modules.contains_key(&m.name) || loaded.iter().any(|l| l.name == m.name)
                {
                    problems.push(LoadProblem {
                        module: m.name.clone(),
                        file: file.clone(),
                        message: format!("a module named '{}' is already loaded", m.name),
                    });
                } else {
                    loaded.push(m);
                }
            }
            if let Some(sha) = result.rolled_back {
                rolled_back.insert(label.clone(), sha);
            }
            if let Some(message) = result.problem {
                problems.push(LoadProblem {
                    module: label,
                    file,
                    message,
                });
            }
        }

        let mut routes = resolve(loaded, previous, &mut problems);
        for p in &problems {
            tracing::error!(module = %p.module, file = %p.file.display(), "{}", p.message);
        }
        routes.problems = problems;
        routes.rolled_back = rolled_back;
        routes
    }

    /// Loads one file unless it is unchanged; see [`Registry::load`].
    #[allow(clippy::too_many_arguments)]
    async fn load_file(
        &self,
        engine: &Arc<Engine>,
        cache: &ArtifactCache,
        name: &str,
        entry: Option<&ModuleEntry>,
        rollback_after: u32,
        file: &Path,
        old: Option<&Arc<LoadedModule>>,
        previous: Option<&Routes>,
    ) -> FileLoad {
        let bytes = match tokio::fs::read(file).await {
            Ok(bytes) => bytes,
            // Removed: the module stops serving (its topics answer 404).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return FileLoad {
                    problem: Some(format!(
                        "{} not found (run `switchyard build`?)",
                        file.display()
                    )),
                    ..FileLoad::default()
                };
            }
            Err(e) => return FileLoad::keep(old, format!("cannot read {}: {e}", file.display())),
        };
        let sha256 = hex(&Sha256::digest(&bytes));
        {
            let mut rejected = locked(&self.rejected);
            match rejected.get(file) {
                Some(r) if r.sha256 == sha256 => {
                    return FileLoad {
                        module: old.cloned(),
                        problem: Some(r.message.clone()),
                        rolled_back: Some(sha256),
                    };
                }
                // A new file: it gets its own chance.
                Some(_) => {
                    rejected.remove(file);
                }
                None => {}
            }
        }
        if let Some(old) = old
            && old.sha256 == sha256
            && old.file == file
            && old.entry.as_ref() == entry
            && old.rollback_after == rollback_after
        {
            return FileLoad {
                module: Some(old.clone()),
                ..FileLoad::default()
            };
        }
        // Same bytes already compiled and linked (e.g. only the manifest
        // entry changed): no need to compile again.
        let linked = previous
            .and_then(|p| p.modules.values().find(|m| m.sha256 == sha256))
            .map(|m| m.pre.clone());
        match self
            .load_one(
                engine,
                cache,
                name,
                entry,
                rollback_after,
                file,
                bytes,
                sha256,
                linked,
            )
            .await
        {
            Ok(module) => {
                let module = Arc::new(module);
                if let Some(old) = old
                    && old.sha256 != module.sha256
                {
                    module.arm(old);
                    self.metrics.reloaded(&module.name);
                }
                FileLoad {
                    module: Some(module),
                    ..FileLoad::default()
                }
            }
            Err(message) => FileLoad::keep(old, message),
        }
    }

    /// Compiles (or takes from the cache, or reuses `linked`), links and
    /// describes one component.
    #[allow(clippy::too_many_arguments)]
    async fn load_one(
        &self,
        engine: &Arc<Engine>,
        cache: &ArtifactCache,
        name: &str,
        entry: Option<&ModuleEntry>,
        rollback_after: u32,
        file: &Path,
        bytes: Vec<u8>,
        sha256: String,
        linked: Option<GuestPre<HostState>>,
    ) -> Result<LoadedModule, String> {
        let (pre, how) = match linked {
            Some(pre) => (pre, "reused"),
            None => {
                let compiler = engine.clone();
                let cache = cache.clone();
                let sha = sha256.clone();
                let (component, how) = tokio::task::spawn_blocking(move || {
                    if let Some(c) = cache.get(&compiler, &sha) {
                        return Ok((c, "cache"));
                    }
                    let c = compiler.compile(&bytes)?;
                    cache.put(&compiler, &sha, &c);
                    Ok::<_, crate::sandbox::engine::EngineError>((c, "compiled"))
                })
                .await
                .map_err(|e| format!("compiler task failed: {e}"))?
                .map_err(|e| e.to_string())?;
                (engine.prepare(&component).map_err(|e| e.to_string())?, how)
            }
        };

        let limits = ModuleLimits {
            max_memory_mb: entry.map_or(DEFAULT_MAX_MEMORY_MB, |e| e.max_memory_mb),
            timeout: Duration::from_millis(entry.map_or(DEFAULT_TIMEOUT_MS, |e| e.timeout_ms)),
            max_attempts: entry.map_or(DEFAULT_MAX_ATTEMPTS, |e| e.max_attempts),
            backoff: Duration::from_millis(entry.map_or(DEFAULT_BACKOFF_MS, |e| e.backoff_ms)),
        };
        let probe = Arc::new(Grants {
            name: name.to_string(),
            ..Grants::default()
        });
        let descriptor = engine
            .describe(&pre, probe, limits.max_memory_mb, limits.timeout)
            .await
            .map_err(|e| e.to_string())?;
        for topic in descriptor
            .topics
            .iter()
            .chain(&descriptor.subscribes)
            .chain(&descriptor.emits)
        {
            check_name("topic", topic)
                .map_err(|e| format!("describe declares topic {topic:?}: {e}"))?;
        }
        // A drop-in is known by the name it declares; a manifest module by its key.
        let name = match entry {
            Some(_) => {
                if descriptor.name != name {
                    tracing::warn!(module = name, declared = %descriptor.name, "module declares another name; the manifest key wins");
                }
                name.to_string()
            }
            None => {
                check_name("name", &descriptor.name)
                    .map_err(|e| format!("describe declares name: {e}"))?;
                descriptor.name.clone()
            }
        };
        let topics = entry
            .and_then(|e| e.topics.clone())
            .unwrap_or(descriptor.topics);
        let subscribes = entry
            .and_then(|e| e.subscribes.clone())
            .unwrap_or(descriptor.subscribes);
        let emits = entry
            .and_then(|e| e.emits.clone())
            .unwrap_or(descriptor.emits);
        let config = entry
            .map(|e| {
                e.config
                    .iter()
                    .map(|(k, v)| {
                        let text = match v {
                            toml::Value::String(s) => s.clone(),
                            other => serde_json::to_string(other).unwrap_or_default(),
                        };
                        (k.clone(), text)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let grants = Arc::new(Grants {
            name: name.clone(),
            emits,
            reads: entry.map(|e| e.reads.clone()).unwrap_or_default(),
            config,
            log_limiter: Default::default(),
        });
        tracing::info!(module = %name, version = %descriptor.version, %sha256, code = how, ?topics, ?subscribes, "module loaded");
        Ok(LoadedModule {
            stats: self.stats_for(&name),
            name,
            version: descriptor.version,
            sha256,
            file: file.to_path_buf(),
            source: if entry.is_some() {
                Source::Manifest
            } else {
                Source::DropIn
            },
            topics,
            subscribes,
            loaded_at: switchyard_model::envelope::now_rfc3339(),
            limits,
            grants,
            pre,
            entry: entry.cloned(),
            rollback_after,
            ok: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            probation: Probation::new(rollback_after),
        })
    }
}

/// `*.wasm` files of the plugins folder that no manifest entry names.
fn drop_ins(dir: &Path, manifest: &Manifest) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let named: Vec<&str> = manifest.modules.values().map(|e| e.file.as_str()).collect();
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "wasm"))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !named.iter().any(|f| n == *f))
        })
        .collect();
    files.sort();
    files
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
