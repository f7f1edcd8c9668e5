//! Loaded modules and the routing table: each command topic to its one owner,
//! each event topic to its subscribers. Routes are resolved at load time (a
//! second owner of a command topic is refused then) and swapped as a whole;
//! a reload recompiles only what changed, and a new version that fails its
//! first messages is rolled back to the version it replaced.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cache::ArtifactCache;
use crate::engine::{Engine, GuestPre, HostState};
use crate::envelope::check_name;
use crate::manifest::{
    DEFAULT_BACKOFF_MS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_MEMORY_MB, DEFAULT_TIMEOUT_MS, Manifest,
    ModuleEntry,
};
use crate::metrics::Metrics;

/// What a module may touch, fixed when it loads.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub name: String,
    pub emits: Vec<String>,
    pub reads: Vec<String>,
    /// The `config` table: strings as they are, other values as JSON.
    pub config: BTreeMap<String, String>,
    /// The module's log rate (log import, stdout and stderr together).
    pub log_limiter: Arc<crate::capabilities::log::LogLimiter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Manifest,
    DropIn,
}

/// Counters that outlive reloads of a module.
#[derive(Debug, Default)]
pub struct ModuleStats {
    pub handled: AtomicU64,
    pub failed: AtomicU64,
    /// The largest linear memory one of its instances reached, in bytes.
    pub peak_memory: AtomicU64,
}

/// Per-message limits and retry policy.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_memory_mb: u64,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Duration,
}

/// What one message's outcome says about the version that handled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Committed: the version works.
    Healthy,
    /// Trapped, timed out or stayed transient through every attempt.
    Failed,
    /// Says nothing about the code (duplicate, bad input, store down).
    Neutral,
}

/// A freshly reloaded version on trial: until its first healthy message it
/// keeps the version it replaced, and gives it back if its first
/// `window` messages all fail.
pub struct Probation {
    /// True while on trial: the per-message cost after the trial is one
    /// relaxed load.
    armed: AtomicBool,
    window: u32,
    failures: AtomicU32,
    previous: Mutex<Option<Arc<LoadedModule>>>,
}

impl Probation {
    /// Not armed until [`LoadedModule::arm`].
    fn new(window: u32) -> Self {
        Self {
            armed: AtomicBool::new(false),
            window,
            failures: AtomicU32::new(0),
            previous: Mutex::new(None),
        }
    }

    fn take_previous(&self) -> Option<Arc<LoadedModule>> {
        match self.previous.lock() {
            Ok(mut p) => p.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

pub struct LoadedModule {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub file: PathBuf,
    pub source: Source,
    pub topics: Vec<String>,
    pub subscribes: Vec<String>,
    pub loaded_at: String,
    pub limits: Limits,
    pub grants: Arc<Grants>,
    pub pre: GuestPre<HostState>,
    pub stats: Arc<ModuleStats>,
    /// The manifest entry it was loaded with: a reload keeps this module
    /// as it is when the entry and the file's sha256 are unchanged.
    pub entry: Option<ModuleEntry>,
    /// Messages a new version may fail in a row, from its first, before it is
    /// rolled back (0 = never).
    pub rollback_after: u32,
    /// Messages of this version (not of the module) that went well / badly.
    ok: AtomicU64,
    bad: AtomicU64,
    probation: Probation,
}

impl LoadedModule {
    /// Every topic this module consumes: owned commands, then subscriptions.
    pub fn consumed_topics(&self) -> Vec<String> {
        let mut topics = self.topics.clone();
        for t in &self.subscribes {
            if !topics.contains(t) {
                topics.push(t.clone());
            }
        }
        topics
    }

    /// A version is healthy unless every message it has seen failed.
    fn healthy(&self) -> bool {
        self.ok.load(Ordering::Relaxed) > 0 || self.bad.load(Ordering::Relaxed) == 0
    }

    /// Records one message's outcome. Returns the version to roll back to
    /// when this one has just failed the first `rollback_after` messages of
    /// its trial (only one caller ever gets it).
    pub fn judge(&self, verdict: Verdict) -> Option<Arc<LoadedModule>> {
        match verdict {
            Verdict::Neutral => return None,
            Verdict::Healthy => self.ok.fetch_add(1, Ordering::Relaxed),
            Verdict::Failed => self.bad.fetch_add(1, Ordering::Relaxed),
        };
        let trial = &self.probation;
        if !trial.armed.load(Ordering::Relaxed) {
            return None;
        }
        match verdict {
            Verdict::Healthy => {
                if trial.armed.swap(false, Ordering::AcqRel) {
                    // Trial passed: the old version is no longer needed.
                    drop(trial.take_previous());
                    tracing::info!(module = %self.name, sha256 = %self.sha256, "new version handled its first message");
                }
                None
            }
            Verdict::Failed => {
                let failures = trial.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= trial.window && trial.armed.swap(false, Ordering::AcqRel) {
                    trial.take_previous()
                } else {
                    None
                }
            }
            Verdict::Neutral => None,
        }
    }

    /// Puts this new version on trial against `previous` (the version it
    /// replaces), if rollback is on and `previous` was serving well.
    fn arm(&self, previous: &Arc<LoadedModule>) {
        if self.rollback_after == 0 || !previous.healthy() {
            return;
        }
        // One level only: the version being replaced gives up its own
        // predecessor, so chains of old versions are never kept alive.
        previous.probation.armed.store(false, Ordering::Release);
        drop(previous.probation.take_previous());
        match self.probation.previous.lock() {
            Ok(mut p) => *p = Some(previous.clone()),
            Err(poisoned) => *poisoned.into_inner() = Some(previous.clone()),
        }
        self.probation.armed.store(true, Ordering::Release);
    }
}

/// A module (or file) that could not be loaded, and why.
#[derive(Debug, Clone, Serialize)]
pub struct LoadProblem {
    pub module: String,
    pub file: PathBuf,
    pub message: String,
}

/// One immutable routing table.
#[derive(Default)]
pub struct Routes {
    pub modules: BTreeMap<String, Arc<LoadedModule>>,
    pub commands: HashMap<String, Arc<LoadedModule>>,
    pub subscribers: HashMap<String, Vec<Arc<LoadedModule>>>,
    pub problems: Vec<LoadProblem>,
    /// Module name -> sha256 of the version that was rolled back (and is
    /// not loaded again until its file changes).
    pub rolled_back: BTreeMap<String, String>,
}

/// A version that was rolled back, remembered so a later reload does not
/// bring the same bytes back.
#[derive(Debug, Clone)]
struct Rejected {
    sha256: String,
    message: String,
}

/// The live routing table, replaced whole on reload.
#[derive(Default)]
pub struct Registry {
    routes: RwLock<Arc<Routes>>,
    stats: Mutex<HashMap<String, Arc<ModuleStats>>>,
    /// One swap at a time: reloads and rollbacks are serialised, so neither
    /// overwrites the other's result with a stale table.
    swaps: tokio::sync::Mutex<()>,
    /// Rolled-back versions by file.
    rejected: Mutex<HashMap<PathBuf, Rejected>>,
    /// Why the last reload could not read plugins.toml (nothing changed then).
    manifest_error: Mutex<Option<String>>,
    /// This host's metrics; here because they, like `stats`, outlive reloads.
    pub metrics: Arc<Metrics>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

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
    pub fn routes(&self) -> Arc<Routes> {
        match self.routes.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, routes: Routes) {
        let routes = Arc::new(routes);
        match self.routes.write() {
            Ok(mut r) => *r = routes,
            Err(poisoned) => *poisoned.into_inner() = routes,
        }
    }

    /// Hold this from reading the current table until replacing it: reloads
    /// and rollbacks run one at a time.
    pub async fn lock_swaps(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.swaps.lock().await
    }

    /// Why the last reload could not use plugins.toml, if it could not.
    pub fn manifest_error(&self) -> Option<String> {
        locked(&self.manifest_error).clone()
    }

    pub fn set_manifest_error(&self, error: Option<String>) {
        *locked(&self.manifest_error) = error;
    }

    fn stats_for(&self, module: &str) -> Arc<ModuleStats> {
        locked(&self.stats)
            .entry(module.to_string())
            .or_default()
            .clone()
    }

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

    /// Gives `failing`'s module back to `to` (the version it replaced), and
    /// remembers `failing`'s bytes so later reloads leave them out until the
    /// file changes. Does nothing when `failing` is no longer serving.
    pub async fn roll_back(&self, failing: &Arc<LoadedModule>, to: Arc<LoadedModule>, why: &str) {
        let _one = self.lock_swaps().await;
        let current = self.routes();
        match current.modules.get(&failing.name) {
            Some(now) if Arc::ptr_eq(now, failing) => {}
            _ => return,
        }
        let message = format!(
            "version {} (sha256 {}) failed each of its first {} messages (last: {why}); rolled back to version {} (sha256 {}); replace the file to try again",
            failing.version, failing.sha256, failing.rollback_after, to.version, to.sha256
        );
        tracing::error!(module = %failing.name, file = %failing.file.display(), "{message}");
        self.metrics.rolled_back(&failing.name);
        locked(&self.rejected).insert(
            failing.file.clone(),
            Rejected {
                sha256: failing.sha256.clone(),
                message: message.clone(),
            },
        );
        let loaded = current
            .modules
            .values()
            .map(|m| {
                if Arc::ptr_eq(m, failing) {
                    to.clone()
                } else {
                    m.clone()
                }
            })
            .collect();
        let mut problems: Vec<LoadProblem> = current
            .problems
            .iter()
            .filter(|p| p.module != failing.name)
            .cloned()
            .collect();
        problems.push(LoadProblem {
            module: failing.name.clone(),
            file: failing.file.clone(),
            message,
        });
        let mut routes = resolve(loaded, Some(&current), &mut problems);
        routes.problems = problems;
        routes.rolled_back = current.rolled_back.clone();
        routes
            .rolled_back
            .insert(failing.name.clone(), failing.sha256.clone());
        self.replace(routes);
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
                    Ok::<_, crate::engine::EngineError>((c, "compiled"))
                })
                .await
                .map_err(|e| format!("compiler task failed: {e}"))?
                .map_err(|e| e.to_string())?;
                (engine.prepare(&component).map_err(|e| e.to_string())?, how)
            }
        };

        let limits = Limits {
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
            loaded_at: crate::envelope::now_rfc3339(),
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

/// Builds the routing table. When two modules claim one command topic, the
/// module that owned it in `previous` keeps it; a refused module falls back
/// to its previous version if that still fits.
fn resolve(
    mut loaded: Vec<Arc<LoadedModule>>,
    previous: Option<&Routes>,
    problems: &mut Vec<LoadProblem>,
) -> Routes {
    let challenger = |m: &LoadedModule| {
        previous.is_some_and(|p| {
            m.topics
                .iter()
                .any(|t| p.commands.get(t).is_some_and(|owner| owner.name != m.name))
        })
    };
    // Stable: incumbents first, otherwise load order.
    loaded.sort_by_key(|m| challenger(m));
    let mut routes = Routes::default();
    for module in loaded {
        let Some((topic, owner)) = conflict(&routes, &module) else {
            insert(&mut routes, module);
            continue;
        };
        problems.push(LoadProblem {
            module: module.name.clone(),
            file: module.file.clone(),
            message: format!(
                "command topic '{topic}' is already owned by module '{owner}'; refused"
            ),
        });
        if let Some(old) = previous.and_then(|p| p.modules.get(&module.name))
            && !Arc::ptr_eq(old, &module)
            && !routes.modules.contains_key(&old.name)
            && conflict(&routes, old).is_none()
        {
            insert(&mut routes, old.clone());
        }
    }
    routes
}

/// The first command topic of `module` that another module owns already.
fn conflict(routes: &Routes, module: &LoadedModule) -> Option<(String, String)> {
    module.topics.iter().find_map(|t| {
        routes
            .commands
            .get(t)
            .map(|owner| (t.clone(), owner.name.clone()))
    })
}

fn insert(routes: &mut Routes, module: Arc<LoadedModule>) {
    for topic in &module.topics {
        routes.commands.insert(topic.clone(), module.clone());
    }
    for topic in &module.subscribes {
        routes
            .subscribers
            .entry(topic.clone())
            .or_default()
            .push(module.clone());
    }
    routes.modules.insert(module.name.clone(), module);
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

/// Counts a handled or failed message.
pub fn count(stats: &ModuleStats, ok: bool) {
    if ok {
        stats.handled.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
}
