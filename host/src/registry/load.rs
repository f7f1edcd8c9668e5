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

use super::contract::Contract;
use super::module::{LoadedModule, ModuleLimits, Probation, Source};
use super::routes::resolve;
use super::{LoadProblem, Registry, Routes, locked};
use crate::sandbox::bindings::GuestPre;
use crate::sandbox::cache::ArtifactCache;
use crate::sandbox::engine::Engine;
use crate::sandbox::state::HostState;
use switchyard_model::contract::compat;
use switchyard_model::envelope::check_name;
use switchyard_model::grants::Grants;
use switchyard_model::manifest::{
    DEFAULT_BACKOFF_MS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_MEMORY_MB,
    DEFAULT_TIMEOUT_MS, Manifest, ModuleEntry,
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

/// What one load pass has gathered so far.
#[derive(Default)]
struct Gathered {
    modules: Vec<Arc<LoadedModule>>,
    problems: Vec<LoadProblem>,
    rolled_back: BTreeMap<String, String>,
}

impl Gathered {
    /// Records what loading `file` (known as `label`) gave, except the
    /// module itself (the caller decides whether it may be added).
    fn note(
        &mut self,
        label: &str,
        file: &Path,
        rolled_back: Option<String>,
        problem: Option<String>,
    ) {
        if let Some(sha) = rolled_back {
            self.rolled_back.insert(label.to_string(), sha);
        }
        if let Some(message) = problem {
            self.problems.push(LoadProblem {
                module: label.to_string(),
                file: file.to_path_buf(),
                message,
            });
        }
    }
}

/// One load pass: what every file load needs.
struct Loader<'a> {
    registry: &'a Registry,
    engine: &'a Arc<Engine>,
    cache: ArtifactCache,
    previous: Option<&'a Routes>,
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
        let loader = Loader {
            registry: self,
            engine,
            cache: ArtifactCache::new(&manifest.host.cache_dir, engine),
            previous,
        };
        let mut gathered = Gathered::default();
        loader.load_named(manifest, &mut gathered).await;
        loader.load_drop_ins(manifest, &mut gathered).await;
        let shadows = loader.load_shadows(manifest, &mut gathered).await;
        let Gathered {
            modules,
            mut problems,
            rolled_back,
        } = gathered;
        let mut routes = resolve(modules, previous, &mut problems);
        routes.shadows = shadows
            .into_iter()
            .filter(|(name, _)| routes.modules.contains_key(name))
            .collect();
        for p in &problems {
            tracing::error!(module = %p.module, file = %p.file.display(), "{}", p.message);
        }
        routes.problems = problems;
        routes.rolled_back = rolled_back;
        routes
    }
}

impl Loader<'_> {
    /// The modules plugins.toml names.
    async fn load_named(&self, manifest: &Manifest, gathered: &mut Gathered) {
        let dir = &manifest.host.plugins_dir;
        for (name, entry) in &manifest.modules {
            let file = dir.join(&entry.file);
            let old = self.previous.and_then(|p| p.modules.get(name));
            let window = entry.rollback_after.unwrap_or(manifest.host.rollback_after);
            let result = self.load_file(name, Some(entry), window, &file, old).await;
            gathered.modules.extend(result.module);
            gathered.note(name, &file, result.rolled_back, result.problem);
        }
    }

    /// The `*.wasm` files of the plugins folder that no entry names: known
    /// by the name they declare; refused under `strict = true` or when that
    /// name is taken.
    async fn load_drop_ins(&self, manifest: &Manifest, gathered: &mut Gathered) {
        for file in drop_ins(&manifest.host.plugins_dir, manifest) {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if manifest.host.strict {
                gathered.note(
                    &stem,
                    &file,
                    None,
                    Some("not named in plugins.toml and `strict = true`: not loaded".into()),
                );
                continue;
            }
            let old = self
                .previous
                .and_then(|p| p.modules.values().find(|m| m.file == file));
            let result = self
                .load_file(&stem, None, manifest.host.rollback_after, &file, old)
                .await;
            let label = result
                .module
                .as_ref()
                .or(old)
                .map_or(stem, |m| m.name.clone());
            if let Some(m) = result.module {
                let taken = manifest.modules.contains_key(&m.name)
                    || gathered.modules.iter().any(|l| l.name == m.name);
                if taken {
                    let message = format!("a module named '{}' is already loaded", m.name);
                    gathered.note(&m.name, &file, None, Some(message));
                } else {
                    gathered.modules.push(m);
                }
            }
            gathered.note(&label, &file, result.rolled_back, result.problem);
        }
    }

    /// The candidates of the plugins folder, `NAME.shadow.wasm`: each goes
    /// through the checks of a reload (world, `describe`, limits: those of
    /// the module it shadows) and must declare the live module's name. A
    /// candidate claims no topic; routing never sees it.
    async fn load_shadows(
        &self,
        manifest: &Manifest,
        gathered: &mut Gathered,
    ) -> BTreeMap<String, Arc<LoadedModule>> {
        let mut shadows = BTreeMap::new();
        for (name, file) in shadow_files(&manifest.host.plugins_dir) {
            let label = format!("{name} (shadow)");
            let Some(live) = gathered.modules.iter().find(|m| m.name == name).cloned() else {
                let message = format!(
                    "{} is a shadow candidate of module '{name}', which is not loaded",
                    file.display()
                );
                gathered.note(&label, &file, None, Some(message));
                continue;
            };
            // The live module's limits and grants; never rolled back, and
            // compared with the live version rather than checked for
            // breaking changes (the comparison is the point).
            let entry = live.entry.clone().map(|mut e| {
                e.allow_breaking = true;
                e
            });
            let old = self.previous.and_then(|p| p.shadows.get(&name));
            let result = self.load_file(&name, entry.as_ref(), 0, &file, old).await;
            let candidate = match result.module {
                Some(c) if c.contract.declared.module != name => {
                    let message = format!(
                        "the candidate declares module '{}'; a shadow of '{name}' must declare '{name}'",
                        c.contract.declared.module
                    );
                    gathered.note(&label, &file, None, Some(message));
                    continue;
                }
                Some(c) => c,
                None => {
                    gathered.note(&label, &file, None, result.problem);
                    continue;
                }
            };
            gathered.note(&label, &file, None, result.problem);
            shadows.insert(name, candidate);
        }
        shadows
    }

    /// Loads one file unless it is unchanged; see [`Registry::load`].
    async fn load_file(
        &self,
        name: &str,
        entry: Option<&ModuleEntry>,
        rollback_after: u32,
        file: &Path,
        old: Option<&Arc<LoadedModule>>,
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
            let mut rejected = locked(&self.registry.rejected);
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
        let linked = self
            .previous
            .and_then(|p| p.modules.values().find(|m| m.sha256 == sha256))
            .map(|m| m.pre.clone());
        let code = Code {
            bytes,
            sha256,
            linked,
        };
        match self.load_one(name, entry, rollback_after, file, code).await {
            Ok(module) => {
                if let Some(old) = old
                    && let Err(refused) = compatible(old, &module, entry)
                {
                    return FileLoad::keep(Some(old), refused);
                }
                let module = Arc::new(module);
                if let Some(old) = old
                    && old.sha256 != module.sha256
                {
                    module.arm(old);
                    self.registry.metrics.reloaded(&module.name);
                }
                FileLoad {
                    module: Some(module),
                    ..FileLoad::default()
                }
            }
            Err(message) => FileLoad::keep(old, message),
        }
    }

    /// Compiles (or takes from the cache, or reuses the linked code of an
    /// unchanged file), links and describes one component.
    async fn load_one(
        &self,
        name: &str,
        entry: Option<&ModuleEntry>,
        rollback_after: u32,
        file: &Path,
        code: Code,
    ) -> Result<LoadedModule, String> {
        let Code {
            bytes,
            sha256,
            linked,
        } = code;
        let (pre, how) = match linked {
            Some(pre) => (pre, "reused"),
            None => self.link(bytes, &sha256).await?,
        };
        let limits = limits(entry);
        let probe = Arc::new(Grants {
            name: name.to_string(),
            ..Grants::default()
        });
        let (descriptor, world) = self
            .engine
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
        let name = module_name(name, entry, &descriptor.name)?;
        let contract = Arc::new(Contract::from_descriptor(&descriptor, world)?);
        let topics = entry
            .and_then(|e| e.topics.clone())
            .unwrap_or(descriptor.topics);
        let subscribes = entry
            .and_then(|e| e.subscribes.clone())
            .unwrap_or(descriptor.subscribes);
        let emits = entry
            .and_then(|e| e.emits.clone())
            .unwrap_or(descriptor.emits);
        let grants = Arc::new(Grants {
            name: name.clone(),
            emits,
            reads: entry.map(|e| e.reads.clone()).unwrap_or_default(),
            config: entry.map(config).unwrap_or_default(),
            log_limiter: Default::default(),
            budgets: entry.map(ModuleEntry::budgets).unwrap_or_default(),
        });
        tracing::info!(module = %name, version = %descriptor.version, %sha256, code = how, ?topics, ?subscribes, "module loaded");
        Ok(LoadedModule {
            stats: self.registry.stats_for(&name),
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
            contract,
            entry: entry.cloned(),
            rollback_after,
            ok: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            probation: Probation::new(rollback_after),
        })
    }

    /// Compiles `bytes` (off the async threads; or takes the compiled code
    /// from the cache) and links it: the code and how it was obtained.
    async fn link(
        &self,
        bytes: Vec<u8>,
        sha256: &str,
    ) -> Result<(GuestPre<HostState>, &'static str), String> {
        let compiler = self.engine.clone();
        let cache = self.cache.clone();
        let sha = sha256.to_string();
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
        let pre = self.engine.prepare(&component).map_err(|e| e.to_string())?;
        Ok((pre, how))
    }
}

/// A file's code: its bytes and sha256, and the linked code of the same
/// bytes when a loaded version has it already.
struct Code {
    bytes: Vec<u8>,
    sha256: String,
    linked: Option<GuestPre<HostState>>,
}

/// A new version must accept every body the serving one accepts (its
/// declared schemas, WIT 0.2.0), unless its entry says `allow-breaking`:
/// the refusal names each difference.
fn compatible(
    old: &LoadedModule,
    new: &LoadedModule,
    entry: Option<&ModuleEntry>,
) -> Result<(), String> {
    if entry.is_some_and(|e| e.allow_breaking) {
        return Ok(());
    }
    let breaking = compat::breaking_changes(&old.contract.declared, &new.contract.declared);
    if breaking.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = breaking.iter().map(ToString::to_string).collect();
    Err(format!(
        "refused: version {} would refuse messages version {} accepts ({}); \
         set allow-breaking = true in its plugins.toml entry to load it anyway",
        new.version,
        old.version,
        list.join("; ")
    ))
}

/// Per-message limits and retry policy from the entry, or the defaults.
fn limits(entry: Option<&ModuleEntry>) -> ModuleLimits {
    ModuleLimits {
        max_memory_mb: entry.map_or(DEFAULT_MAX_MEMORY_MB, |e| e.max_memory_mb),
        timeout: Duration::from_millis(entry.map_or(DEFAULT_TIMEOUT_MS, |e| e.timeout_ms)),
        max_attempts: entry.map_or(DEFAULT_MAX_ATTEMPTS, |e| e.max_attempts),
        backoff: Duration::from_millis(entry.map_or(DEFAULT_BACKOFF_MS, |e| e.backoff_ms)),
        max_concurrency: entry.map_or(DEFAULT_MAX_CONCURRENCY, |e| e.max_concurrency),
    }
}

/// A drop-in is known by the name it declares; a manifest module by its key.
fn module_name(key: &str, entry: Option<&ModuleEntry>, declared: &str) -> Result<String, String> {
    match entry {
        Some(_) => {
            if declared != key {
                tracing::warn!(
                    module = key,
                    declared,
                    "module declares another name; the manifest key wins"
                );
            }
            Ok(key.to_string())
        }
        None => {
            check_name("name", declared).map_err(|e| format!("describe declares name: {e}"))?;
            Ok(declared.to_string())
        }
    }
}

/// The entry's `config` table: strings as they are, other values as JSON.
fn config(entry: &ModuleEntry) -> BTreeMap<String, String> {
    entry
        .config
        .iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            (k.clone(), text)
        })
        .collect()
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
            p.file_name().is_some_and(|n| {
                !named.iter().any(|f| n == *f) && !n.to_string_lossy().ends_with(SHADOW_SUFFIX)
            })
        })
        .collect();
    files.sort();
    files
}

/// A candidate's file name: `NAME.shadow.wasm` beside the live module's.
pub const SHADOW_SUFFIX: &str = ".shadow.wasm";

/// The shadow candidates of the plugins folder, by the module they shadow.
fn shadow_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter_map(|p| {
            let name = p
                .file_name()?
                .to_str()?
                .strip_suffix(SHADOW_SUFFIX)?
                .to_string();
            (!name.is_empty()).then_some((name, p))
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
